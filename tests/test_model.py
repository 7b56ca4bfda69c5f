"""The GCNN model: causality, normalisation, the gates' formulas, the paper's architectures, gradients."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import gcnn
from gcnn.config import GATES, Block, ModelConfig
from gcnn.errors import ConfigError
from gcnn.model import CausalConv, ConvBlock, GatedConvLM
from gcnn.runtime import optimize
from convs import CONV_CASES, close, random_conv, textbook_conv_and_grads

V = 50


def small_config(**kw):
    fields = dict(
        vocab_size=V,
        embed_dim=8,
        blocks=(Block(((3, 12),), residual=False), Block(((2, 12), (3, 12)), repeat=2), Block(((1, 6), (3, 6), (1, 16)))),
        adaptive_cutoffs=(10, 30),
    )
    fields.update(kw)
    return ModelConfig(**fields)


ALL_VARIANTS = [(g, p) for g in GATES for p in ("layer", "block")]


@pytest.mark.parametrize("gate,placement", ALL_VARIANTS)
@pytest.mark.parametrize("cutoffs", [(10, 30), ()])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_causality_bit_for_bit(gate, placement, cutoffs, mode):
    """Changing tokens after position t changes nothing at or before t, bit for bit: without gradients (eval) and in
    the training path (train mode with gradients, dropout off, so that the outputs are deterministic)."""
    torch.manual_seed(0)
    model = GatedConvLM(small_config(gate=gate, gate_placement=placement, adaptive_cutoffs=cutoffs))
    model.train(mode == "train")
    grad = torch.enable_grad() if mode == "train" else torch.no_grad()
    tokens = torch.randint(0, V, (3, 17))
    with grad:
        base = model.next_token_log_probs(tokens)
        assert base.requires_grad == (mode == "train")
        for t in (0, 5, 15):
            changed = tokens.clone()
            changed[:, t + 1 :] = torch.randint(0, V, changed[:, t + 1 :].shape)
            assert not torch.equal(changed, tokens)
            out = model.next_token_log_probs(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"future tokens leaked into position <= {t}"
            # and the future positions do depend on the changed tokens (the test could fail)
            assert not torch.equal(out[:, t + 1 :], base[:, t + 1 :])


def test_a_cache_refuses_a_batch_of_another_size():
    """A GCNN's cache holds the state of a fixed number of sequences, as the baselines' caches do."""
    model = GatedConvLM(small_config()).eval()
    cache = model.new_cache(2)
    model.next_token_log_probs(torch.randint(0, V, (2, 3)), cache=cache)
    with pytest.raises(ValueError, match="the cache holds 2 sequences but the tokens have batch size 3"):
        model.next_token_log_probs(torch.randint(0, V, (3, 1)), cache=cache)
    assert cache.length == 3  # the refused call left the cache as it was


@pytest.mark.parametrize("cutoffs", [(10, 30), (5,), ()])
def test_distribution_sums_to_one_and_loss_is_mean_nll(cutoffs):
    torch.manual_seed(1)
    model = GatedConvLM(small_config(adaptive_cutoffs=cutoffs)).eval()
    tokens = torch.randint(0, V, (4, 9))
    targets = torch.randint(0, V, (4, 9))
    log_probs = model.next_token_log_probs(tokens)
    assert log_probs.shape == (4, 9, V)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(4, 9), atol=1e-5)
    out = model(tokens, targets)
    direct = log_probs.gather(2, targets.unsqueeze(2)).squeeze(2)
    assert torch.allclose(out.target_log_probs, direct, atol=1e-5)
    assert math.isclose(out.loss.item(), -direct.mean().item(), rel_tol=1e-5)
    assert out.num_tokens == 36


def test_ignored_targets_do_not_count():
    torch.manual_seed(2)
    model = GatedConvLM(small_config()).eval()
    tokens = torch.randint(0, V, (2, 7))
    targets = torch.randint(0, V, (2, 7))
    masked = targets.clone()
    masked[0, 4:] = gcnn.IGNORE_INDEX
    full = model(tokens, targets)
    out = model(tokens, masked)
    keep = masked != gcnn.IGNORE_INDEX
    assert out.num_tokens == int(keep.sum())
    assert torch.equal(out.target_log_probs[~keep], torch.zeros(int((~keep).sum())))
    assert torch.allclose(out.target_log_probs[keep], full.target_log_probs[keep], atol=1e-6)
    assert math.isclose(out.loss.item(), -full.target_log_probs[keep].mean().item(), rel_tol=1e-5)


def test_next_token_log_probs_at_chosen_positions():
    model = GatedConvLM(small_config()).eval()
    tokens = torch.randint(0, V, (2, 8))
    full = model.next_token_log_probs(tokens)
    some = model.next_token_log_probs(tokens, positions=[0, 7, 3])
    assert torch.allclose(some, full[:, [0, 7, 3]], atol=1e-6)
    last = model.next_token_log_probs(tokens, positions=[-1, -8])
    assert torch.allclose(last, full[:, [7, 0]], atol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        model.next_token_log_probs(tokens, positions=[8])


def reference_causal_conv(x, weight, bias):
    """Textbook causal convolution: nn.functional.conv1d over (B, C, T) with k-1 zeros on the left."""
    k = weight.shape[-1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), weight, bias)
    return y.transpose(1, 2)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("weight_norm", [True, False])
def test_each_gate_equals_its_formula(gate, weight_norm):
    torch.manual_seed(3)
    config = small_config(gate=gate, weight_norm=weight_norm)
    block = ConvBlock(6, ((3, 5),), residual=True, config=config).eval()
    conv = block.convs[0]
    with torch.no_grad():
        conv.bias.normal_()
        if weight_norm:
            conv.weight_g.uniform_(0.5, 2.0)
            v = conv.weight_v
            weight = conv.weight_g.view(-1, 1, 1) * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
        else:
            weight = conv.weight
    x = torch.randn(2, 7, 6)
    pre = reference_causal_conv(x, weight, conv.bias)
    n = 5
    if gate == "glu":
        expected = pre[..., :n] * torch.sigmoid(pre[..., n:])
    elif gate == "gtu":
        expected = torch.tanh(pre[..., :n]) * torch.sigmoid(pre[..., n:])
    elif gate == "bilinear":
        expected = pre[..., :n] * pre[..., n:]
    elif gate == "relu":
        expected = torch.relu(pre)
    elif gate == "tanh":
        expected = torch.tanh(pre)
    else:
        expected = pre
    # residual from 6 to 5 channels goes through the block's projection
    expected = expected + block.proj(x)
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_block_gating_is_two_linear_stacks_then_one_gate():
    """gate_placement=block: A = conv_a2(conv_a1(X)), B likewise, G = A * sigmoid(B), output G + X."""
    torch.manual_seed(4)
    config = small_config(gate_placement="block")
    block = ConvBlock(4, ((2, 4), (3, 4)), residual=True, config=config).eval()
    c1, c2 = block.convs
    assert c1.out_channels == 8 and c2.groups == 2
    w1, w2 = c1.effective_weight(), c2.effective_weight()
    x = torch.randn(2, 6, 4)
    a = reference_causal_conv(reference_causal_conv(x, w1[:4], c1.bias[:4]), w2[:4], c2.bias[:4])
    b = reference_causal_conv(reference_causal_conv(x, w1[4:], c1.bias[4:]), w2[4:], c2.bias[4:])
    assert torch.allclose(block(x), a * torch.sigmoid(b) + x, atol=1e-5)


def test_residual_scale_sqrt_half():
    torch.manual_seed(5)
    plain = ConvBlock(4, ((2, 4),), True, small_config()).eval()
    scaled = ConvBlock(4, ((2, 4),), True, small_config(residual_scale=True)).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(1, 5, 4)
    assert torch.allclose(scaled(x), plain(x) * math.sqrt(0.5), atol=1e-6)


# --- the paper's architectures, written down from its appendix Table 1 (not read back from the code) ---------------
# each entry: embed dim, list of (residual?, [(kernel, channels), ...]) per block instance, cutoffs
def rep(n, layers):
    return [(True, layers)] * n


PAPER_TABLE = {
    "gcnn-8": (280, [(False, [(4, 900)])] + rep(7, [(4, 900)]), (2000, 10000, 50000)),
    "gcnn-14": (
        280,
        rep(3, [(6, 850)]) + rep(1, [(1, 850)]) + rep(4, [(5, 850)]) + rep(1, [(1, 850)]) + rep(3, [(4, 850)])
        + rep(1, [(4, 1024)]) + rep(1, [(4, 2048)]),
        (10000, 20000, 200000),
    ),
    "gcnn-9": (128, [(False, [(4, 807)])] + rep(4, [(4, 807), (4, 807)]), (4000, 40000, 200000)),
    "gcnn-8b": (
        128,
        [(False, [(1, 512)])] + rep(3, [(1, 128), (5, 128), (1, 512)]) + rep(3, [(1, 256), (5, 256), (1, 512)])
        + rep(1, [(1, 1024), (1, 1024), (1, 2048)]),
        (4000, 40000, 200000),
    ),
    "gcnn-13": (128, [(False, [(4, 1268)])] + rep(12, [(4, 1268), (4, 1268)]), (10000, 40000, 200000)),
    "gcnn-14b": (
        128,
        [(False, [(5, 512)])] + rep(3, [(1, 128), (5, 128), (1, 512)]) + rep(3, [(1, 512), (5, 512), (1, 1024)])
        + rep(6, [(1, 1024), (5, 1024), (1, 2048)]) + rep(1, [(1, 1024), (5, 1024), (1, 4096)]),
        (10000, 40000, 200000),
    ),
}


def independent_parameter_count(vocab, embed, blocks, cutoffs):
    """GLU after every conv, weight norm (one g per output channel) and a bias everywhere but the softmax."""
    total = vocab * embed
    width = blocks[0][1][0][1]
    if embed != width:
        total += embed * width + 2 * width  # input projection: weight, bias, g
    for residual, layers in blocks:
        block_in = width
        for k, n in layers:
            total += width * 2 * n * k + 2 * (2 * n)  # conv to 2n channels: weight, bias, g
            width = n
        if residual and block_in != width:
            total += block_in * width + 2 * width
    d = width
    if cutoffs:
        bounds = list(cutoffs) + [vocab]
        total += d * (cutoffs[0] + len(cutoffs))
        for i in range(len(cutoffs)):
            h = int(d // 4 ** (i + 1))
            total += d * h + h * (bounds[i + 1] - bounds[i])
    else:
        total += d * vocab + vocab
    return total


@pytest.mark.parametrize("name", list(PAPER_TABLE))
def test_named_architecture_matches_paper_table(name):
    embed, blocks, cutoffs = PAPER_TABLE[name]
    vocab = 800_000  # large enough that every cutoff of the paper is kept
    with torch.device("meta"):
        model = gcnn.build_model(name, vocab_size=vocab)
    assert model.config.embed_dim == embed
    assert model.config.adaptive_cutoffs == cutoffs
    assert len(model.blocks) == len(blocks)
    for block, (residual, layers) in zip(model.blocks, blocks):
        assert block.residual == residual
        assert [(c.kernel, c.out_channels // 2) for c in block.convs] == layers
    assert model.num_parameters() == independent_parameter_count(vocab, embed, blocks, cutoffs)


def test_cutoffs_at_or_above_vocab_are_dropped_for_named_archs_and_rejected_when_explicit():
    model = gcnn.build_model("gcnn-8", vocab_size=33278, embed_dim=16, blocks=[Block(((2, 8),))])
    assert model.config.adaptive_cutoffs == (2000, 10000)
    tiny = gcnn.build_model("gcnn-tiny", vocab_size=15)
    assert tiny.config.adaptive_cutoffs == ()  # full softmax
    with pytest.raises(ConfigError, match=r"adaptive_cutoffs \[20, 60\].*vocabulary size 50"):
        gcnn.build_model("gcnn-tiny", vocab_size=50, adaptive_cutoffs=(20, 60))
    with pytest.raises(ConfigError, match="strictly increasing"):
        gcnn.build_model("gcnn-tiny", vocab_size=500, adaptive_cutoffs=(60, 20))


def test_overrides_by_keyword_and_bad_values():
    model = gcnn.build_model("gcnn-tiny", vocab_size=100, embed_dim=24, dropout=0.3, gate="gtu", weight_norm=False)
    cfg = model.config
    assert (cfg.embed_dim, cfg.dropout, cfg.gate, cfg.weight_norm) == (24, 0.3, "gtu", False)
    assert model.embed.weight.shape == (100, 24)
    assert not any("weight_g" in n for n, _ in model.named_parameters())
    with pytest.raises(ConfigError, match="gate must be one of"):
        gcnn.build_model("gcnn-tiny", vocab_size=100, gate="swish")
    with pytest.raises(ConfigError, match="unknown model option.*colour"):
        gcnn.build_model("gcnn-tiny", vocab_size=100, colour="red")
    with pytest.raises(ConfigError, match="unknown architecture 'gcnn-99'"):
        gcnn.build_model("gcnn-99", vocab_size=100)
    with pytest.raises(ConfigError, match="dropout"):
        gcnn.build_model("gcnn-tiny", vocab_size=100, dropout=1.5)


def test_custom_architecture_from_toml(tmp_path):
    path = tmp_path / "arch.toml"
    path.write_text(
        "[model]\nembed_dim = 12\nadaptive_cutoffs = [10]\ngate = 'gtu'\n"
        "blocks = [ { layers = [[3, 16]], residual = false }, { layers = [[1, 4], [3, 4], [1, 16]], repeat = 2 } ]\n"
    )
    config = gcnn.config_from_file(path, vocab_size=40)
    assert config.describe() == "[3,16] x1 plain, ([1,4], [3,4], [1,16]) x2"
    model = gcnn.build_model(config)
    assert model(torch.randint(0, 40, (1, 5)), torch.randint(0, 40, (1, 5))).loss.isfinite()
    based = tmp_path / "based.toml"
    based.write_text("[model]\narch = 'gcnn-tiny'\ndropout = 0.25\n")
    assert gcnn.config_from_file(based, vocab_size=40).dropout == 0.25
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nembed_dim = 12\nwidth = 3\nblocks = [ { layers = [[3, 16]] } ]\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown model key\(s\) width"):
        gcnn.config_from_file(bad, vocab_size=40)
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        gcnn.config_from_file(broken, vocab_size=40)


@pytest.mark.parametrize("gate,placement", [("glu", "layer"), ("relu", "block"), ("bilinear", "block")])
def test_backward_reaches_every_parameter(gate, placement):
    torch.manual_seed(6)
    model = GatedConvLM(small_config(gate=gate, gate_placement=placement, dropout=0.1))
    tokens = torch.randint(0, V, (4, 12))
    # targets in every softmax cluster so every tail gets a gradient
    targets = torch.arange(48).reshape(4, 12) % V
    model(tokens, targets).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("gate,placement", ALL_VARIANTS)
def test_incremental_decoding_matches_full_forward(gate, placement):
    torch.manual_seed(7)
    model = GatedConvLM(small_config(gate=gate, gate_placement=placement)).eval()
    tokens = torch.randint(0, V, (2, 11))
    full = model.next_token_log_probs(tokens)
    cache = model.new_cache(2)
    steps = [model.next_token_log_probs(tokens[:, :4], cache=cache)]  # a prompt, then one token at a time
    for t in range(4, 11):
        steps.append(model.next_token_log_probs(tokens[:, t : t + 1], cache=cache))
    assert cache.length == 11
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_causal_conv_matches_conv1d_with_groups():
    torch.manual_seed(8)
    conv = CausalConv(6, 8, 3, groups=2)
    x = torch.randn(2, 5, 6)
    w = conv.effective_weight()
    expected = F.conv1d(F.pad(x.transpose(1, 2), (2, 0)), w, conv.bias, groups=2).transpose(1, 2)
    assert torch.allclose(conv(x), expected, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = gcnn.build_model("gcnn-tiny", vocab_size=100, gate="gtu").eval()
    gcnn.io.write_model(model, tmp_path / "m")
    loaded = gcnn.load(tmp_path / "m").eval()
    assert loaded.config == model.config
    tokens = torch.randint(0, 100, (1, 6))
    assert torch.equal(loaded.next_token_log_probs(tokens), model.next_token_log_probs(tokens))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(gcnn.GcnnError, match="damaged or truncated"):
        gcnn.load(tmp_path / "m")


def test_model_follows_parameter_updates():
    """The model keeps no weights derived from its parameters: an optimizer step or load_state_dict shows at once."""
    torch.manual_seed(9)
    model = GatedConvLM(small_config()).eval()
    tokens = torch.randint(0, V, (2, 6))
    targets = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        before = model(tokens, targets).loss.item()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(tokens, targets).loss.backward()
    opt.step()
    with torch.no_grad():
        after = model(tokens, targets).loss.item()
        fresh = GatedConvLM(small_config()).eval()
        fresh.load_state_dict(model.state_dict())
        assert fresh(tokens, targets).loss.item() == pytest.approx(after, abs=1e-6)
        fresh.load_state_dict(GatedConvLM(small_config()).state_dict())
        assert fresh(tokens, targets).loss.item() != pytest.approx(after, abs=1e-6)
    assert after < before


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(10)
    model = GatedConvLM(small_config()).eval()
    tokens = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        ref = model.next_token_log_probs(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model.next_token_log_probs(tokens)
    assert fast.dtype == torch.float32
    assert torch.allclose(fast.exp().sum(-1), torch.ones(2, 16), atol=1e-4)
    assert (fast - ref).abs().max() < 0.1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("weight_norm", [True, False])
@pytest.mark.parametrize("cin,cout,k,groups", CONV_CASES)
def test_training_conv_equals_textbook_conv_forward_and_gradients(cin, cout, k, groups, weight_norm, precision):
    """The path with gradients (F.conv1d over the padded input, torch's fused weight norm), fp32 and bf16 autocast."""
    torch.manual_seed(11)
    conv = random_conv(cin, cout, k, groups, weight_norm)
    x = torch.randn(2, 9, cin)
    if precision == "bf16":
        x = x.bfloat16().float()  # what autocast feeds the convolution
    x.requires_grad_()
    r = torch.randn(2, 9, cout)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = conv(x)
    assert y.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    (y.float() * r).sum().backward()
    expected, grads = textbook_conv_and_grads(conv, x, r)
    assert close(y, expected, precision)
    names = ["x"] + [n for n, _ in conv.named_parameters()]
    for name, got, want in zip(names, [x.grad] + [p.grad for p in conv.parameters()], grads):
        assert got.shape == want.shape and close(got, want, precision, share=2e-2), f"gradient of {name}"


@pytest.mark.parametrize("cin,cout,k,groups", CONV_CASES)
def test_conv_without_gradients_equals_textbook_conv(cin, cout, k, groups):
    """Without gradients (the same single code path): fp32, bf16 autocast and bf16 weights, whole sequences and one
    step at a time with the cache."""
    from gcnn.model import ConvCache

    torch.manual_seed(12)
    conv = random_conv(cin, cout, k, groups)
    x = torch.randn(2, 9, cin)
    r = torch.zeros(2, 9, cout)
    expected = textbook_conv_and_grads(conv, x, r)[0]
    expected_bf16 = textbook_conv_and_grads(conv, x.bfloat16(), r)[0]
    as_bf16 = random_conv(cin, cout, k, groups)
    as_bf16.load_state_dict(conv.state_dict())
    as_bf16.to(torch.bfloat16)
    with torch.inference_mode():
        assert close(conv(x), expected, "fp32")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert close(conv(x), expected_bf16, "bf16")
        full = as_bf16(x.bfloat16())
        assert full.dtype == torch.bfloat16
        # v and g rounded to bf16 separately, then the folded weight once more: twice the tolerance
        assert close(full, expected_bf16, "bf16", share=2e-2)
        cache = ConvCache(2)
        steps = []
        for t in range(9):
            step = x[:, t : t + 1].bfloat16()
            cache.start(step[..., 0])
            steps.append(as_bf16(step, cache))
        assert close(torch.cat(steps, 1), full, "bf16")


def test_loss_with_and_without_gradients_is_the_same():
    """With gradients (training) and without (evaluation): the same loss, fp32 and bf16 autocast."""
    torch.manual_seed(14)
    model = GatedConvLM(small_config()).eval()
    tokens, targets = torch.randint(0, V, (3, 12)), torch.randint(0, V, (3, 12))
    for precision, tolerance in (("fp32", 1e-5), ("bf16", 2e-2)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            with_grad = model(tokens, targets).loss
            with torch.no_grad():
                without = model(tokens, targets).loss
        assert with_grad.requires_grad
        assert abs(with_grad.item() - without.item()) < tolerance * max(1.0, abs(without.item()))


# ------------------------------------------------------------------------------------------------ beyond the paper
# dilated blocks, tied embeddings (full softmax, with and without the projection to embed_dim; adaptive), adaptive
# input representations: the same exactness properties as the paper's models
DILATED = (Block(((3, 12),), residual=False), Block(((2, 12), (3, 12)), repeat=2, dilation=2),
           Block(((1, 6), (3, 6), (1, 16)), dilation=3))
OPTION_VARIANTS = {
    "dilated": dict(blocks=DILATED),
    "dilated-block-gate": dict(blocks=DILATED, gate_placement="block"),
    "tied-full": dict(adaptive_cutoffs=(), tie_embeddings=True),  # last width 16 != embed 8: output_proj
    "tied-full-same-width": dict(adaptive_cutoffs=(), tie_embeddings=True, embed_dim=16),
    "adaptive-input": dict(adaptive_input=True, embed_dim=16),
    "adaptive-input-tied": dict(adaptive_input=True, tie_embeddings=True, embed_dim=16),
    "adaptive-input-tied-dilated": dict(adaptive_input=True, tie_embeddings=True, blocks=DILATED),
}


@pytest.mark.parametrize("variant", list(OPTION_VARIANTS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_causality_bit_for_bit_with_the_options(variant, mode):
    torch.manual_seed(0)
    model = GatedConvLM(small_config(**OPTION_VARIANTS[variant]))
    model.train(mode == "train")
    grad = torch.enable_grad() if mode == "train" else torch.no_grad()
    tokens = torch.randint(0, V, (3, 40))
    with grad:
        base = model.next_token_log_probs(tokens)
        for t in (0, 5, 30):
            changed = tokens.clone()
            changed[:, t + 1 :] = torch.randint(0, V, changed[:, t + 1 :].shape)
            out = model.next_token_log_probs(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"future tokens leaked into position <= {t}"
            assert not torch.equal(out[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("variant", ["paper", *OPTION_VARIANTS])
def test_receptive_field_is_exact(variant):
    """The prediction at t depends on the token at t - receptive_field + 1 and on none before it."""
    torch.manual_seed(11)
    model = GatedConvLM(small_config(**OPTION_VARIANTS.get(variant, {}))).eval()
    field = model.receptive_field
    assert field == (1 + 2 + (1 + 2) * 2 * 2 + 2 * 3 if "dilated" in variant else 1 + 2 + (1 + 2) * 2 + 2)
    tokens = torch.randint(0, V, (2, field + 6))
    last = tokens.shape[1] - 1
    with torch.no_grad():
        base = model.next_token_log_probs(tokens)[:, last]
        for position, matters in ((last - field + 1, True), (last - field, False), (0, False)):
            changed = tokens.clone()
            changed[:, position] = (changed[:, position] + 1 + torch.arange(2)) % V
            out = model.next_token_log_probs(changed)[:, last]
            assert torch.equal(out, base) != matters, f"position {position} (receptive field {field})"


@pytest.mark.parametrize("variant", list(OPTION_VARIANTS))
def test_incremental_decoding_matches_full_forward_with_the_options(variant):
    torch.manual_seed(7)
    model = GatedConvLM(small_config(**OPTION_VARIANTS[variant])).eval()
    tokens = torch.randint(0, V, (2, 30))
    full = model.next_token_log_probs(tokens)
    cache = model.new_cache(2)
    steps = [model.next_token_log_probs(tokens[:, :4], cache=cache)]  # a prompt, one token at a time, then a chunk
    for t in range(4, 20):
        steps.append(model.next_token_log_probs(tokens[:, t : t + 1], cache=cache))
    steps.append(model.next_token_log_probs(tokens[:, 20:], cache=cache))
    assert cache.length == 30
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    optimized = optimize(copy.deepcopy(model), "fp32")
    cache = optimized.new_cache(2)
    with torch.no_grad():
        fast = [optimized.next_token_log_probs(tokens[:, t : t + 1], cache=cache) for t in range(30)]
    assert torch.allclose(torch.cat(fast, 1), full, atol=1e-4)  # the decoding kernels read dilated windows too


@pytest.mark.parametrize("variant", ["tied-full", "adaptive-input", "adaptive-input-tied"])
def test_distribution_sums_to_one_and_backward_reaches_every_parameter_with_the_options(variant):
    torch.manual_seed(6)
    model = GatedConvLM(small_config(dropout=0.1, **OPTION_VARIANTS[variant]))
    tokens = torch.arange(48).reshape(4, 12) % V  # every cluster's words as inputs and as targets
    targets = (torch.arange(48).reshape(4, 12) * 7) % V
    with torch.no_grad():
        model.eval()
        assert torch.allclose(model.next_token_log_probs(tokens).exp().sum(-1), torch.ones(4, 12), atol=1e-5)
        model.train()
    model(tokens, targets).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_tied_embeddings_are_the_softmax_weights_and_exist_once():
    torch.manual_seed(12)
    plain = GatedConvLM(small_config(adaptive_cutoffs=()))
    tied = GatedConvLM(small_config(adaptive_cutoffs=(), tie_embeddings=True, embed_dim=16))
    assert tied.embed is None and tied.output_proj is None
    assert tied.num_parameters() < plain.num_parameters()
    assert "embed.weight" not in tied.state_dict() and "softmax.proj.weight" in tied.state_dict()
    tokens = torch.tensor([[0, 5, 49]])
    assert torch.equal(tied.embed_tokens(tokens)[0], tied.softmax.proj.weight[[0, 5, 49]])
    # an output-layer step moves the input embedding too
    before = tied.embed_tokens(tokens).detach().clone()
    with torch.no_grad():
        tied.softmax.proj.weight.add_(1.0)
    assert torch.equal(tied.embed_tokens(tokens), before + 1.0)

    adaptive = GatedConvLM(small_config(adaptive_input=True, tie_embeddings=True, embed_dim=16))
    soft = adaptive.softmax
    head, tail = torch.tensor([[3]]), torch.tensor([[35]])  # a head word; a word of the second tail cluster
    assert torch.equal(adaptive.embed_tokens(head)[0, 0], soft.head.weight[3])
    expected = soft.tails[1][2].weight[35 - 30] @ soft.tails[1][0].weight
    assert torch.allclose(adaptive.embed_tokens(tail)[0, 0], expected, atol=1e-6)
    untied = GatedConvLM(small_config(adaptive_input=True, embed_dim=16))
    assert [tuple(t.shape) for t in untied.embed.tables] == [(10, 16), (20, 4), (20, 1)]
    assert adaptive.num_parameters() < untied.num_parameters() < plain.num_parameters() + 16 * 50


@pytest.mark.parametrize("variant", list(OPTION_VARIANTS))
def test_save_and_load_round_trip_with_the_options(tmp_path, variant):
    """safetensors refuses tensors that share memory: tied weights are saved once, and the loader's shape checks
    (gcnn.io.expected_tensors, from the config alone) agree with what is saved."""
    torch.manual_seed(13)
    model = GatedConvLM(small_config(**OPTION_VARIANTS[variant])).eval()
    gcnn.io.write_model(model, tmp_path / "m")
    assert set(gcnn.io.expected_tensors(model.config)) == set(model.state_dict())
    loaded = gcnn.load(tmp_path / "m")
    assert loaded.config == model.config
    tokens = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded.next_token_log_probs(tokens), model.next_token_log_probs(tokens))


def test_embed_dropout_drops_whole_word_types_in_training_only():
    torch.manual_seed(14)
    model = GatedConvLM(small_config(embed_dropout=0.5))
    tokens = torch.randint(0, V, (4, 30))
    plain = model.embed.weight[tokens]
    dropped = model.embed_tokens(tokens)
    zero = (dropped == 0).all(-1)
    assert 0 < zero.float().mean() < 1
    for word in tokens.unique():  # a word is dropped everywhere or nowhere; the kept ones are scaled by 1 / (1 - p)
        at = tokens == word
        assert zero[at].all() or not zero[at].any()
    assert torch.allclose(dropped[~zero], plain[~zero] * 2)
    model.eval()
    assert torch.equal(model.embed_tokens(tokens), plain)


def test_new_options_leave_the_config_and_weights_of_default_models_as_they_were():
    """A model that uses none of the options has the config.json keys and tensor names of earlier versions, so that
    their saved models load and their runs resume; a config.json with the options round-trips."""
    config = gcnn.get_config("gcnn-small", vocab_size=3000)
    keys = set(config.to_dict())
    assert keys == {"model_type", "vocab_size", "blocks", "embed_dim", "gate", "gate_placement", "weight_norm",
                    "residual_scale", "dropout", "adaptive_cutoffs", "adaptive_div", "init", "arch"}
    assert all(set(b) == {"layers", "repeat", "residual"} for b in config.to_dict()["blocks"])
    names = set(gcnn.io.expected_tensors(config))
    assert "embed.weight" in names and not any(n.startswith(("output_proj", "embed.tables")) for n in names)
    options = small_config(blocks=DILATED, tie_embeddings=True, adaptive_input=True, embed_dropout=0.1)
    data = options.to_dict()
    assert data["tie_embeddings"] and data["adaptive_input"] and data["blocks"][1]["dilation"] == 2
    assert ModelConfig.from_dict(data) == options
    assert "dilation 3" in options.describe()


@pytest.mark.parametrize("fields,message", [
    (dict(adaptive_input=True, adaptive_cutoffs=()), "adaptive_input needs adaptive_cutoffs"),
    (dict(tie_embeddings=True), "tie_embeddings with an adaptive softmax needs adaptive_input"),
    (dict(embed_dropout=1.0), "embed_dropout must be a number in"),
    (dict(tie_embeddings="yes"), "tie_embeddings must be true or false"),
    (dict(blocks=[{"layers": [[3, 8]], "dilation": 0}]), "block dilation must be a positive integer"),
    (dict(blocks=[{"layers": [[3, 8]], "dilate": 2}]), "unknown block key"),
])
def test_bad_option_values_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**fields)
