"""The inference runtime (gcnn.runtime.optimize): the same function as the model's own path, the textbook
convolution with folded weights, oneDNN's packed bf16 kernel and int8 weights; a snapshot that training never sees."""

import copy

import pytest
import torch
import torch.nn.functional as F

import gcnn
from gcnn import runtime
from gcnn.errors import ConfigError
from gcnn.model import CausalConv, ConvCache, GatedConvLM
from convs import CONV_CASES, close, random_conv, textbook_conv_and_grads
from test_model import V, small_config


def optimized_conv(conv: CausalConv, dtype: str, **options) -> CausalConv:
    """A copy of ``conv`` prepared by runtime.optimize (which takes any module holding convolutions)."""
    twin = copy.deepcopy(conv)
    runtime.optimize(torch.nn.Sequential(twin), dtype, **options)
    return twin


def steps_with_cache(conv: CausalConv, x: torch.Tensor) -> torch.Tensor:
    cache = ConvCache(x.shape[0])
    out = []
    for t in range(x.shape[1]):
        step = x[:, t : t + 1]
        cache.start(step[..., 0])
        out.append(conv(step, cache))
    return torch.cat(out, 1)


@pytest.mark.parametrize("cin,cout,k,groups", CONV_CASES)
def test_optimized_conv_equals_textbook_conv(cin, cout, k, groups):
    """fp32 (folded matrix) and bf16 weights (oneDNN's prepacked bf16 linear where available), whole sequences (the
    convolution with the folded weight) and one step at a time (window x matrix) with the cache."""
    torch.manual_seed(12)
    conv = random_conv(cin, cout, k, groups)
    x = torch.randn(2, 9, cin)
    r = torch.zeros(2, 9, cout)
    expected = textbook_conv_and_grads(conv, x, r)[0]
    expected_bf16 = textbook_conv_and_grads(conv, x.bfloat16(), r)[0]
    fp32, bf16 = optimized_conv(conv, "fp32"), optimized_conv(conv, "bf16")
    assert type(fp32) is runtime.InferenceConv and fp32.state_dict().keys() == conv.state_dict().keys()
    with torch.inference_mode():
        assert close(fp32(x), expected, "fp32")
        assert close(steps_with_cache(fp32, x), expected, "fp32")
        full = bf16(x.bfloat16())
        assert full.dtype == torch.bfloat16
        # v and g rounded to bf16 separately, then the folded weight once more: twice the tolerance
        assert close(full, expected_bf16, "bf16", share=2e-2)
        assert close(steps_with_cache(bf16, x.bfloat16()), full, "bf16")


def test_onednn_bf16_path_equals_plain_bf16_linear():
    """The prepacked oneDNN bf16 linear against F.linear on the same bf16 matrix: the same function."""
    torch.manual_seed(13)
    model = GatedConvLM(small_config()).eval()
    fast = runtime.optimize(copy.deepcopy(model), "bf16")
    plain = runtime.optimize(copy.deepcopy(model), "bf16", onednn=False)
    packed = [c._folded.packed for c in fast.modules() if isinstance(c, runtime.InferenceConv)]
    assert all(p is not None for p in packed) == runtime.onednn_bf16_linear_available()
    assert all(c._folded.packed is None for c in plain.modules() if isinstance(c, runtime.InferenceConv))
    tokens = torch.randint(0, V, (2, 10))
    with torch.inference_mode():
        a, b = (steps_of(m, tokens) for m in (fast, plain))
    assert torch.allclose(a, b, atol=2e-2)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def steps_of(model, tokens):
    cache = model.new_cache(tokens.shape[0])
    return torch.cat([model.next_token_log_probs(tokens[:, t : t + 1], cache=cache) for t in range(tokens.shape[1])], 1)


def test_optimized_model_gives_the_models_own_results_and_training_is_unaffected():
    """fp32: the same log-probabilities as the plain model (1e-5), whole and step by step; with gradients the model's
    own path runs, so a training step of an optimized model equals a plain one's."""
    torch.manual_seed(14)
    model = GatedConvLM(small_config()).eval()
    fast = runtime.optimize(copy.deepcopy(model), "fp32")
    tokens, targets = torch.randint(0, V, (3, 12)), torch.randint(0, V, (3, 12))
    with torch.inference_mode():
        assert torch.allclose(fast.next_token_log_probs(tokens), model.next_token_log_probs(tokens), atol=1e-5)
        assert torch.allclose(steps_of(fast, tokens), model.next_token_log_probs(tokens), atol=1e-5)
    fast.train(), model.train()
    loss_fast, loss_plain = fast(tokens, targets).loss, model(tokens, targets).loss
    loss_fast.backward(), loss_plain.backward()
    assert loss_fast.requires_grad and torch.equal(loss_fast, loss_plain)
    for (name, p), q in zip(fast.named_parameters(), model.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_folded_weights_are_a_snapshot_until_optimized_again_or_restored():
    torch.manual_seed(9)
    model = runtime.optimize(GatedConvLM(small_config()), "fp32")
    tokens = torch.randint(0, V, (1, 6))
    with torch.inference_mode():
        before = model.next_token_log_probs(tokens)
    convs = [m for m in model.modules() if isinstance(m, CausalConv)]
    with torch.no_grad():
        for conv in convs:
            conv.bias.add_(0.5)
    with torch.inference_mode():
        assert torch.equal(model.next_token_log_probs(tokens), before)  # the snapshot
        runtime.optimize(model, "fp32")
        again = model.next_token_log_probs(tokens)
        assert not torch.allclose(again, before, atol=1e-3)
        runtime.restore(model)
        assert runtime.optimized_dtype(model) is None
        assert not any(isinstance(m, runtime.InferenceConv) for m in model.modules())
        assert torch.allclose(model.next_token_log_probs(tokens), again, atol=1e-5)


def test_optimized_model_can_be_copied_and_pickled(tmp_path):
    """oneDNN's packed tensors cannot be copied: copies and pickles fold the weights again, and stay optimized."""
    model = runtime.optimize(GatedConvLM(small_config()), "bf16")
    tokens = torch.randint(0, V, (1, 6))
    with torch.inference_mode():
        expected = steps_of(model, tokens)
    twin = copy.deepcopy(model)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    for other in (twin, loaded):
        assert runtime.optimized_dtype(other) == "bf16"
        with torch.inference_mode():
            assert torch.equal(steps_of(other, tokens), expected)


def test_optimize_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="dtype must be one of fp32, bf16, int8; got 'fp16'"):
        runtime.optimize(GatedConvLM(small_config()), "fp16")
    lstm = gcnn.build_model("lstm-tiny", vocab_size=100)
    with pytest.raises(ConfigError, match="int8 is for GCNN models.*LSTMLM: use bf16"):
        runtime.optimize(lstm, "int8")
    assert next(runtime.optimize(lstm, "bf16").parameters()).dtype == torch.bfloat16


def test_int8_rows_round_trip():
    torch.manual_seed(15)
    w = torch.randn(5, 32) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 0.0]).unsqueeze(1)
    q, scale = runtime.quantize_rows_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16 and q.abs().max() <= 127
    error = (q.float() * scale.float().unsqueeze(1) - w).abs()
    assert (error <= 0.5 * scale.float().unsqueeze(1) + 1e-12).all()  # round to nearest level
    assert (q[:4].abs().amax(dim=1) >= 126).all() and (q[4] == 0).all()  # each row uses the full range


def test_int8_conv_equals_textbook_conv_with_the_rounded_weights(monkeypatch):
    """int8: one step (the int8 kernel, where PyTorch has it) and whole sequences (bf16 with the same rounded
    weights) equal the textbook convolution with weights q * scale, within the bf16 tolerance."""
    calls = []
    kernel = runtime._int8_linear
    monkeypatch.setattr(runtime, "_int8_linear", lambda *a: calls.append(1) or kernel(*a))
    for cin, cout, k, groups in [(16, 24, 3, 1), (32, 8, 2, 2), (6, 8, 3, 1)]:  # the last: K % 16 != 0
        torch.manual_seed(16)
        conv = random_conv(cin, cout, k, groups)
        q, scale = runtime.quantize_rows_int8(conv.effective_weight().reshape(cout, -1))
        rounded = CausalConv(cin, cout, k, groups=groups, weight_norm=False)
        with torch.no_grad():
            rounded.weight.copy_((q.float() * scale.float().unsqueeze(1)).view(cout, -1, k))
            rounded.bias.copy_(conv.bias)
        x = torch.randn(2, 9, cin).bfloat16()
        expected = textbook_conv_and_grads(rounded, x, torch.zeros(2, 9, cout))[0]
        int8 = optimized_conv(conv, "int8")
        bf16 = optimized_conv(conv, "bf16")
        calls.clear()
        with torch.inference_mode():
            full = int8(x)
            assert not calls  # 9 positions: the convolution with the rounded weights, not the kernel
            assert close(full, expected, "bf16", share=2e-2)
            assert close(steps_with_cache(int8, x[:1]), expected[:1], "bf16", share=2e-2)
            assert not close(bf16(x), full, "fp32")  # bf16 keeps the weights themselves
        if runtime.int8_activation_kernel_available():  # any K: int8 activations through fbgemm
            assert len(calls) == 9 * groups
        else:  # the int8-weight kernel: K % 16 == 0 only
            assert len(calls) == (9 * groups if runtime.int8_linear_available() and cin * k % (16 * groups) == 0 else 0)


def test_int8_generation_stays_close_to_fp32():
    torch.manual_seed(17)
    model = gcnn.build_model("gcnn-tiny", vocab_size=100).eval()
    int8 = runtime.optimize(copy.deepcopy(model), "int8")
    tokens = torch.randint(0, 100, (1, 12))
    with torch.inference_mode():
        expected = model.next_token_log_probs(tokens)
        cache = int8.new_cache(1)
        steps = [int8.next_token_log_probs(tokens[:, :4], cache=cache)]
        for t in range(4, 12):
            steps.append(int8.next_token_log_probs(tokens[:, t : t + 1], cache=cache))
    got = torch.cat(steps, 1)
    assert got.dtype == torch.float32 and torch.allclose(got.exp().sum(-1), torch.ones(1, 12), atol=1e-3)
    assert (got - expected).abs().max() < 0.05


@pytest.mark.parametrize("arch", ["gcnn-tiny", "lstm-tiny", "transformer-tiny"])
def test_packed_linear_layers_give_the_plain_bf16_results(arch):
    """bf16: every nn.Linear (the adaptive softmax's head and cluster matrices, a baseline's projections) becomes an
    InferenceLinear over oneDNN's packed weight; the log-distributions equal the plain bf16 model's, the state dict
    is unchanged, gradients take the module's own path, and restore() gives nn.Linear back."""
    torch.manual_seed(18)
    model = gcnn.build_model(arch, vocab_size=100, dropout=0.0).eval()
    linears = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    assert any(name.startswith("softmax.") for name in linears)
    keys = model.state_dict().keys()
    fast = runtime.optimize(copy.deepcopy(model), "bf16")
    plain = runtime.restore(runtime.optimize(copy.deepcopy(model), "bf16", onednn=False))
    modules = dict(fast.named_modules())
    assert all(type(modules[name]) is runtime.InferenceLinear for name in linears)
    assert all((modules[name]._packed is not None) == runtime.onednn_bf16_linear_available() for name in linears)
    assert fast.state_dict().keys() == keys and runtime.optimized_dtype(fast) == "bf16"
    tokens = torch.randint(0, 100, (2, 10))
    with torch.inference_mode():
        got, expected = fast.next_token_log_probs(tokens), plain.next_token_log_probs(tokens)
        step = fast.next_token_log_probs(tokens[:, :1], cache=fast.new_cache(2))
    assert got.dtype == torch.float32 and torch.allclose(got.exp().sum(-1), torch.ones(2, 10), atol=1e-2)
    assert torch.allclose(got, expected, atol=2e-2) and (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9
    assert torch.allclose(step[:, 0], got[:, 0], atol=2e-2)
    head = modules[linears[-1]]
    x = torch.randn(3, head.in_features, dtype=torch.bfloat16, requires_grad=True)
    head(x).float().sum().backward()  # the module's own path: gradients reach the input and the weight
    assert x.grad is not None and head.weight.grad is not None
    runtime.restore(fast)
    assert all(type(m) is not runtime.InferenceLinear for m in fast.modules())
    with torch.inference_mode():
        assert torch.allclose(fast.next_token_log_probs(tokens), expected, atol=1e-6)


def test_packed_linear_weight_is_a_snapshot_and_survives_copies(tmp_path):
    torch.manual_seed(19)
    model = runtime.optimize(gcnn.build_model("gcnn-tiny", vocab_size=100), "bf16")
    tokens = torch.randint(0, 100, (1, 6))
    with torch.inference_mode():
        before = model.next_token_log_probs(tokens)
    twin = copy.deepcopy(model)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        model.softmax.head.weight.mul_(3.0)
    with torch.inference_mode():
        for other in (twin, loaded):
            assert type(other.softmax.head) is runtime.InferenceLinear and torch.equal(other.next_token_log_probs(tokens), before)
        if runtime.onednn_bf16_linear_available():
            assert torch.equal(model.next_token_log_probs(tokens), before)  # the snapshot
        runtime.optimize(model, "bf16")
        assert not torch.allclose(model.next_token_log_probs(tokens), before, atol=1e-2)


@pytest.mark.parametrize("dynamic", [True, False])
def test_both_int8_kernels_stay_within_their_rounding(dynamic, monkeypatch):
    """int8 decoding steps take fbgemm's dynamically quantized kernel (int8 weights and 8-bit inputs) where PyTorch
    has it, else the int8-weight kernel: each within about 1% of the product with the rounded weights, the softmax's
    matrices (int8 too under dynamic) included, and the distributions still normalised."""
    if dynamic and not runtime.int8_activation_kernel_available():
        pytest.skip("this PyTorch has no fbgemm dynamic quantized linear")
    monkeypatch.setitem(runtime._AVAILABLE, "int8_activations", dynamic)
    torch.manual_seed(20)
    model = gcnn.build_model("gcnn-tiny", vocab_size=100, dropout=0.0).eval()
    int8 = runtime.optimize(copy.deepcopy(model), "int8")
    kinds = {c._folded.int8[0].kind for c in int8.modules() if isinstance(c, runtime.InferenceConv) and c._folded.int8}
    assert kinds == ({"dynamic"} if dynamic else {"w8"} if runtime.int8_linear_available() else set())
    assert (int8.softmax.head._int8 is not None) == dynamic
    conv = next(c for c in int8.modules() if isinstance(c, runtime.InferenceConv) and c._folded.int8)
    rows = torch.randn(1, conv._folded.matrix.shape[1]).bfloat16()
    got = runtime._int8_linear(rows, conv._folded.int8[0], conv._folded.bias).float()
    expected = rows.float() @ conv._folded.matrix.float().t() + conv._folded.bias.float()
    assert ((got - expected).norm() / expected.norm()) < 0.02
    tokens = torch.randint(0, 100, (1, 10))
    with torch.inference_mode():
        whole = model.next_token_log_probs(tokens)
        steps = steps_of(int8, tokens)
    assert torch.allclose(steps.exp().sum(-1), torch.ones(1, 10), atol=1e-3)
    assert (steps - whole).abs().max() < 0.1


@pytest.mark.parametrize("k,dilation", [(3, 2), (4, 3), (1, 1)])
def test_long_inputs_are_the_window_matrix_product_also_dilated_and_in_slices(k, dilation, monkeypatch):
    """Long inputs (more than WINDOW_STEPS positions) of an ungrouped convolution: one matrix product over the window
    rows, equal to the plain convolution in fp32 (1e-5), dilated or not, whole or in slices of positions (a tiny
    IM2COL_ELEMENTS), after a prompt with the cache too; an empty batch gives an empty output of the right shape; a
    single sequence takes the sum of per-tap products, equal too (and within bf16's rounding in bf16)."""
    torch.manual_seed(21)
    conv = CausalConv(6, 8, k, dilation=dilation)
    with torch.no_grad():
        conv.bias.normal_()
    fast = optimized_conv(conv, "fp32")
    x = torch.randn(2, 13, 6)
    with torch.inference_mode():
        expected = conv(x)
        assert close(fast(x), expected, "fp32")
        monkeypatch.setattr(runtime, "IM2COL_ELEMENTS", 50)
        assert close(fast(x), expected, "fp32")
        cache = ConvCache(2)
        cache.start(x[:, :9, 0])
        got = torch.cat([fast(x[:, :9], cache), steps_with_cache_from(fast, x[:, 9:], cache)], 1)
        assert close(got, expected, "fp32")
        assert fast(torch.randn(0, 9, 6)).shape == (0, 9, 8)
        assert fast(torch.randn(0, 1, 6)).shape == (0, 1, 8)
        # one sequence: a product per tap over shifted views (no window copy), also after a prompt with the cache
        assert close(fast(x[:1]), expected[:1], "fp32")
        cache = ConvCache(1)
        cache.start(x[:1, :6, 0])
        first = fast(x[:1, :6], cache)
        cache.start(x[:1, 6:, 0])
        got = torch.cat([first, fast(x[:1, 6:], cache)], 1)
        assert close(got, expected[:1], "fp32")
        bf16 = optimized_conv(conv, "bf16")
        expected_bf16 = conv.bfloat16()(x[:1].bfloat16())
        assert close(bf16(x[:1].bfloat16()), expected_bf16, "bf16", share=2e-2)


def steps_with_cache_from(conv, x, cache):
    out = []
    for t in range(x.shape[1]):
        cache.start(x[:, t : t + 1, 0])
        out.append(conv(x[:, t : t + 1], cache))
    return torch.cat(out, 1)


def test_packed_linear_paths_agree_and_keep_the_bias_gradient():
    """InferenceLinear: a few rows (oneDNN's packed weight), many rows (past PACKED_MAX_ROWS: the plain product) and,
    under int8, one row (fbgemm's int8 kernel) give the same function; other inputs never see int8 weights; with a
    frozen weight and a trainable bias the module's own path runs and the bias gets its gradient; no rows, no
    crash."""
    torch.manual_seed(22)
    for dtype in ("bf16", "int8"):
        model = runtime.optimize(gcnn.build_model("gcnn-tiny", vocab_size=100, dropout=0.0), dtype)
        head = model.softmax.head
        x = torch.randn(runtime.PACKED_MAX_ROWS + 44, head.in_features).bfloat16()
        with torch.inference_mode():
            many, few, one = head(x), head(x[:3]), head(x[:1])
            plain = F.linear(x, head.weight)
            assert head(x[:0]).shape == (0, head.out_features)
        assert close(many, plain, "bf16") and close(few, plain[:3], "bf16")  # the bf16 weight, both paths
        assert close(one, plain[:1], "bf16", share=3e-2)  # int8: within the rounding
        assert (head._int8 is not None) == (dtype == "int8" and runtime.int8_activation_kernel_available())
    head.weight.requires_grad_(False)
    head.bias = torch.nn.Parameter(torch.zeros(head.out_features, dtype=torch.bfloat16))
    head(x[:1]).float().sum().backward()
    assert head.bias.grad is not None and torch.equal(head.bias.grad, torch.ones_like(head.bias))
