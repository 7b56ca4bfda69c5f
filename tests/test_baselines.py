"""The LSTM and Transformer baselines: the same guarantees as the GCNN (causality, normalised distributions, cached
decoding equal to the full pass, gradients everywhere, save/load), their named architectures and their errors."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import gcnn
from gcnn.baselines import LSTMLM, SequenceTooLongError, TransformerLM
from gcnn.config import LSTMConfig, TransformerConfig
from gcnn.cli import main as cli_main
from gcnn.config import Block
from gcnn.errors import CheckpointError, ConfigError
from gcnn.softmax import AdaptiveSoftmax, FullSoftmax

V = 50


def lstm(**kw):
    fields = dict(vocab_size=V, embed_dim=8, hidden_dim=12, num_layers=2, dropout=0.0, adaptive_cutoffs=(10, 30))
    fields.update(kw)
    return LSTMLM(LSTMConfig(**fields))


def transformer(**kw):
    fields = dict(
        vocab_size=V,
        embed_dim=16,
        num_layers=2,
        num_heads=4,
        ff_dim=24,
        max_len=32,
        dropout=0.0,
        adaptive_cutoffs=(10, 30),
    )
    fields.update(kw)
    return TransformerLM(TransformerConfig(**fields))


BUILDERS = {"lstm": lstm, "lstm-proj": lambda **kw: lstm(proj_size=6, **kw), "transformer": transformer}
KINDS = list(BUILDERS)


@pytest.mark.parametrize("kind", KINDS)
def test_causality_bit_for_bit(kind):
    torch.manual_seed(0)
    model = BUILDERS[kind]().eval()
    tokens = torch.randint(0, V, (3, 17))
    base = model.next_token_log_probs(tokens)
    for t in (0, 5, 15):
        changed = tokens.clone()
        changed[:, t + 1 :] = torch.randint(0, V, changed[:, t + 1 :].shape)
        assert not torch.equal(changed, tokens)
        out = model.next_token_log_probs(changed)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"future tokens leaked into position <= {t}"
        assert not torch.equal(out[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cutoffs", [(10, 30), ()])
def test_distribution_sums_to_one_and_loss_is_mean_nll(kind, cutoffs):
    torch.manual_seed(1)
    model = BUILDERS[kind](adaptive_cutoffs=cutoffs).eval()
    assert isinstance(model.softmax, AdaptiveSoftmax if cutoffs else FullSoftmax)
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


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_decoding_matches_full_forward(kind):
    """A prompt, single tokens, then a chunk of several tokens after a prefix (the Transformer's masked path)."""
    torch.manual_seed(2)
    model = BUILDERS[kind]().eval()
    tokens = torch.randint(0, V, (2, 14))
    full = model.next_token_log_probs(tokens)
    cache = model.new_cache(2)
    steps = [model.next_token_log_probs(tokens[:, :4], cache=cache)]
    for t in range(4, 9):
        steps.append(model.next_token_log_probs(tokens[:, t : t + 1], cache=cache))
    steps.append(model.next_token_log_probs(tokens[:, 9:], cache=cache))
    assert cache.length == 14
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_reorder_keeps_the_chosen_rows(kind):
    torch.manual_seed(3)
    model = BUILDERS[kind]().eval()
    tokens = torch.randint(0, V, (3, 8))
    cache = model.new_cache(3)
    model.next_token_log_probs(tokens[:, :5], cache=cache)
    index = torch.tensor([2, 0])
    cache.reorder(index)
    assert cache.batch_size == 2
    step = model.next_token_log_probs(tokens[index, 5:], cache=cache)
    assert torch.allclose(step, model.next_token_log_probs(tokens[index])[:, 5:], atol=1e-5)
    with pytest.raises(ValueError, match="cache holds 2 sequences"):
        model.next_token_log_probs(tokens[:, 5:6], cache=cache)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_reaches_every_parameter(kind):
    torch.manual_seed(4)
    model = BUILDERS[kind](dropout=0.1)
    tokens = torch.randint(0, V, (4, 12))
    targets = torch.arange(48).reshape(4, 12) % V  # targets in every softmax cluster so every tail gets a gradient
    model(tokens, targets).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize(
    "kind", ["lstm", "transformer"]
)  # the projected LSTM trains alike, through torch's slower path
def test_training_steps_lower_the_loss(kind):
    torch.manual_seed(5)
    model = BUILDERS[kind]()
    tokens = torch.arange(16).repeat(2, 2) % V  # a repeating pattern that is easy to learn
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(40):
        loss = model(tokens[:, :-1], tokens[:, 1:]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_lstm_state_carried_across_batches_is_truncated_backprop():
    torch.manual_seed(6)
    model = lstm()
    cache = model.new_cache(2)
    stream = torch.randint(0, V, (2, 21))
    for start in (0, 10):  # two consecutive segments; the second backward must not reach the first graph
        chunk = stream[:, start : start + 11]
        model(chunk[:, :-1], chunk[:, 1:], cache=cache).loss.backward()
    assert cache.length == 20 and not cache.state[0].requires_grad


def test_transformer_cache_with_gradients_matches_full_pass_and_reaches_the_weights():
    torch.manual_seed(9)
    model = transformer()
    tokens = torch.randint(0, V, (2, 10))
    full = model.next_token_log_probs(tokens)
    cache = model.new_cache(2)
    model.next_token_log_probs(tokens[:, :6], cache=cache)
    rest = model.next_token_log_probs(tokens[:, 6:], cache=cache)  # keys of the new positions keep their graph
    assert torch.allclose(rest, full[:, 6:], atol=1e-5)
    rest[..., 0].sum().backward()
    qkv = model.blocks[0].attention.qkv.weight  # rows: queries, keys, values (16 each)
    assert qkv.grad[16:32].abs().sum() > 0 and qkv.grad[32:].abs().sum() > 0
    assert cache.length == 10 and not cache.keys[0].requires_grad


def test_bf16_autocast_gives_normalised_distributions():
    for model in (lstm().eval(), transformer().eval()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_probs = model.next_token_log_probs(torch.randint(0, V, (2, 6)))
        assert log_probs.dtype == torch.float32
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 6), atol=1e-4)


def test_transformer_positions_beyond_max_len_are_a_clear_error():
    model = transformer(max_len=8).eval()
    assert model.receptive_field == 8
    model.next_token_log_probs(torch.randint(0, V, (1, 8)))  # exactly max_len is fine
    with pytest.raises(SequenceTooLongError, match="max_len=8.*position 9"):
        model.next_token_log_probs(torch.randint(0, V, (1, 9)))
    cache = model.new_cache(1)
    model.next_token_log_probs(torch.randint(0, V, (1, 6)), cache=cache)
    with pytest.raises(gcnn.GcnnError, match="cached 6 \\+ 3 tokens"):
        model.next_token_log_probs(torch.randint(0, V, (1, 3)), cache=cache)
    assert cache.length == 6  # the failed call left the cache as it was


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip(kind, tmp_path):
    torch.manual_seed(7)
    model = BUILDERS[kind]().eval()
    gcnn.io.write_model(model, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["model_type"] == model.config.model_type
    loaded = gcnn.load(tmp_path / "m").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    tokens = torch.randint(0, V, (1, 6))
    assert torch.equal(loaded.next_token_log_probs(tokens), model.next_token_log_probs(tokens))


def test_damaged_baseline_config_names_the_file(tmp_path):
    gcnn.io.write_model(lstm(), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, hidden_units=3)))
    with pytest.raises(CheckpointError, match=r"config.json: unknown model key\(s\) hidden_units"):
        gcnn.load(tmp_path / "m")
    path.write_text(json.dumps(dict(data, proj_size=99)))
    with pytest.raises(CheckpointError, match=r"config.json: proj_size \(99\) must be smaller than hidden_dim \(12\)"):
        gcnn.load(tmp_path / "m")


def test_named_baselines_build_by_name_with_overrides():
    with torch.device("meta"):
        medium = gcnn.build_model("lstm-medium", vocab_size=33278)
        small = gcnn.build_model("transformer-small", vocab_size=33278, num_layers=4, max_len=1024)
        table4 = gcnn.build_model("lstm-2048", vocab_size=800_000)
    c = medium.config
    assert (c.embed_dim, c.hidden_dim, c.num_layers, c.dropout, c.adaptive_cutoffs) == (650, 650, 2, 0.5, (2000, 10000))
    assert isinstance(medium.lstm, torch.nn.LSTM) and medium.lstm.dropout == 0.5
    # Zaremba et al.'s medium LSTM: 2 layers of 4 gates x 650 x (650 + 650) weights and two biases per gate
    lstm_weights = sum(p.numel() for p in medium.lstm.parameters())
    assert lstm_weights == 2 * (4 * 650 * (650 + 650) + 2 * 4 * 650)
    assert (small.config.num_layers, small.config.max_len, len(small.blocks)) == (4, 1024, 4)
    assert (table4.config.hidden_dim, table4.config.proj_size, table4.config.adaptive_cutoffs) == (
        2048,
        512,
        (4000, 40000, 200000),
    )
    assert gcnn.build_model("lstm-tiny", vocab_size=30).config.adaptive_cutoffs == (20,)  # cutoffs >= vocab dropped


def test_bad_baseline_options_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown model option.*colour.*lstm-medium"):
        gcnn.build_model("lstm-medium", vocab_size=100, colour="red")
    with pytest.raises(ConfigError, match=r"embed_dim \(30\) must be divisible by num_heads \(4\)"):
        gcnn.build_model("transformer-tiny", vocab_size=100, embed_dim=30)
    with pytest.raises(ConfigError, match="adaptive_cutoffs.*vocabulary size 50"):
        gcnn.build_model("lstm-tiny", vocab_size=50, adaptive_cutoffs=(20, 60))
    with pytest.raises(ConfigError, match="dropout"):
        gcnn.build_model("transformer-tiny", vocab_size=100, dropout=1.0)
    with pytest.raises(ConfigError, match="model_type is 'gcnn', expected 'lstm'"):
        LSTMConfig.from_dict({"vocab_size": 10, "model_type": "gcnn"})
    assert lstm().config.replace(hidden_dim=20).hidden_dim == 20


def test_archs_lists_the_baselines(capsys):
    assert {"lstm-medium", "lstm-2048", "transformer-small"} <= set(gcnn.list_architectures())
    assert (
        cli_main(["archs", "--vocab-size", "1000", "--json", "--arch", "lstm-medium", "--arch", "transformer-small"])
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["lstm-medium", "transformer-small"]
    lstm_row, transformer_row = rows
    assert lstm_row["receptive_field"] is None and "LSTM 2 x 650" in lstm_row["structure"]
    assert transformer_row["receptive_field"] == 512 and "6 x (width 512, 8 heads" in transformer_row["structure"]
    with torch.device("meta"):
        assert lstm_row["parameters"] == gcnn.build_model("lstm-medium", vocab_size=1000).num_parameters()


# ---------------------------------------------------------------------------------------------------- benchmarks
# benchmarks/ is a folder of scripts, not a package: its modules are imported from the folder itself.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


def test_reference_gcnn_computes_the_same_function_as_gcnn(bench):
    """The yardstick and gcnn's model are the same network: copy the weights across and compare."""
    from bench_train import matmul_parameters
    from models import num_parameters
    from reference_gcnn import ReferenceGCNN

    torch.manual_seed(8)
    blocks = [Block(((3, 16),), residual=False), Block(((3, 16),), repeat=3)]
    ours = gcnn.build_model("gcnn-8", vocab_size=120, embed_dim=12, blocks=blocks, adaptive_cutoffs=(20, 60)).eval()
    ref = ReferenceGCNN(120, embed_dim=12, width=16, kernel=3, num_layers=4, cutoffs=(20, 60)).eval()
    assert num_parameters(ref) == ours.num_parameters()
    assert matmul_parameters(ref) == matmul_parameters(ours)
    convs = [(ref.input_proj, ours.input_proj)] + [(r, block.convs[0]) for r, block in zip(ref.convs, ours.blocks)]
    with torch.no_grad():
        ref.embed.weight.copy_(ours.embed.weight)
        for r, o in convs:
            o.weight_g.uniform_(0.5, 2.0)  # a gain unlike the norm of v, so the test sees whether g is used
            o.bias.normal_()
            r.parametrizations.weight.original0.copy_(o.weight_g.view(-1, 1, 1))
            r.parametrizations.weight.original1.copy_(o.weight_v)
            r.bias.copy_(o.bias)
        ref.softmax.head.weight.copy_(ours.softmax.head.weight)
        for r, o in zip(ref.softmax.tail, ours.softmax.tails):
            r[0].weight.copy_(o[0].weight)
            r[1].weight.copy_(o[2].weight)
    tokens, targets = torch.randint(0, 120, (2, 9)), torch.arange(18).view(2, 9) * 7 % 120
    assert torch.allclose(ref(tokens, targets), ours(tokens, targets).loss, atol=1e-5)
    assert torch.allclose(ref.next_token_log_probs(tokens), ours.next_token_log_probs(tokens)[:, -1], atol=1e-5)


def test_flops_count_every_matmul_weight_and_only_the_tails_targets_reach(bench):
    from bench_train import flops_per_token

    model = lstm(adaptive_cutoffs=(10, 30))  # hidden 12, embed 8, 2 layers; tails of width 12//4 = 3 and 1
    lstm_weights = 4 * 12 * (8 + 12) + 4 * 12 * (12 + 12)
    head = 12 * (10 + 2)
    tail0, tail1 = 12 * 3 + 3 * 20, 12 * 1 + 1 * 20
    targets = torch.tensor([[0, 5, 15, 40]])  # two in the head, one in each tail
    counted = flops_per_token(model, targets, seq_len=4)
    assert counted["matmul_parameters"] == lstm_weights + head
    assert counted["flops_per_token"] == pytest.approx(6 * (lstm_weights + head + tail0 / 4 + tail1 / 4))
    small = transformer(adaptive_cutoffs=())  # width 16, 2 layers, full softmax
    blocks = 2 * (16 * 48 + 16 * 16 + 2 * 16 * 24)
    attention = 6 * 2 * 16 * 10
    assert flops_per_token(small, targets, seq_len=10)["flops_per_token"] == 6 * (blocks + 16 * V) + attention


@pytest.fixture(scope="module")
def smoke_reports(bench, tmp_path_factory):
    """Every benchmark of this issue run with --smoke (tiny models, seconds), into a temporary results folder."""
    import bench_generate_compare
    import bench_memory
    import bench_table4
    import bench_train

    out = tmp_path_factory.mktemp("results")
    common = ["--smoke", "--repeats", "1", "--out-dir", str(out)]
    return out, {
        "train": bench_train.main(common + ["--warmup", "0"]),
        "table4": bench_table4.main(common),
        "generate-compare": bench_generate_compare.main(common),
        "memory": bench_memory.main(common + ["--models", "lstm", "--precision", "fp32", "--steps", "1"]),
    }


def test_each_benchmark_writes_a_dated_report_naming_machine_and_commit(smoke_reports):
    out, results = smoke_reports
    for name, result in results.items():
        stem = sorted(out.glob(f"*-{name}.json"))[-1].with_suffix("")
        assert json.loads(stem.with_suffix(".json").read_text()) == result
        assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
        markdown = stem.with_suffix(".md").read_text()
        assert result["command"] in markdown and result["machine"]["cpu"] in markdown
        assert len(result["machine"]["commit"]) == 40 and result["machine"]["torch"] == torch.__version__


def test_train_benchmark_reports_speed_peak_fraction_and_ratio_to_reference(smoke_reports):
    train = smoke_reports[1]["train"]
    assert set(train["models"]) == {"gcnn", "reference", "lstm", "transformer"}
    for name, m in train["models"].items():
        for precision in ("fp32", "bf16"):
            r = m[precision]
            assert r["tokens_per_s"] > 0 and r["fraction_of_peak"] > 0 and r["ratio_to_reference"] > 0
    assert train["models"]["reference"]["fp32"]["ratio_to_reference"] == 1.0
    params = [m["parameters"] for m in train["models"].values()]
    assert max(params) < 1.5 * min(params)  # the baselines are sized to the GCNN's parameter count


def test_generation_benchmark_modes_give_the_same_tokens(smoke_reports):
    generated = smoke_reports[1]["generate-compare"]["models"]
    assert set(generated["gcnn"]["modes"]) == {"cache", "window", "full"}
    assert set(generated["transformer"]["modes"]) == {"cache", "full"}
    for name, m in generated.items():
        for mode, r in m["modes"].items():
            assert r["same_tokens_as_full"], f"{name} {mode} generated other tokens than re-running the context"


def test_table4_and_memory_benchmarks(smoke_reports):
    results = smoke_reports[1]
    table4 = results["table4"]
    assert set(table4["models"]) == {"lstm-2048", "gcnn-9", "gcnn-8b"}
    assert {(r["precision"], r["threads"]) for r in table4["runs"]} == {("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)}
    for run in table4["runs"]:
        assert set(run["models"]) == set(table4["models"])
        for name, m in run["models"].items():
            assert m["throughput_tokens_per_s"] > 0 and m["responsiveness_tokens_per_s"] > 0
            share = m.get("fraction_of_read_bandwidth" if name == "lstm-2048" else "fraction_of_matmul_peak")
            assert share is not None and share > 0
            for protocol in ("throughput", "responsiveness"):  # the rate over the two-term floor
                bound = m[f"{protocol}_bound_tokens_per_s"]
                assert bound > 0
                assert m[f"{protocol}_share_of_bound"] == pytest.approx(m[f"{protocol}_tokens_per_s"] / bound, rel=1e-2)
            if name != "lstm-2048":
                assert m["throughput_vs_lstm"] == pytest.approx(
                    m["throughput_tokens_per_s"] / run["models"]["lstm-2048"]["throughput_tokens_per_s"], rel=1e-2, abs=1e-3)
                assert m["throughput_parity_needs_bound_share"] == pytest.approx(
                    run["models"]["lstm-2048"]["throughput_tokens_per_s"] / m["throughput_bound_tokens_per_s"], rel=1e-2)
        assert run["exp_elements_per_s"] > 0
    assert all(m["flops_per_token"] > 0 for m in table4["models"].values())
    assert table4["models"]["lstm-2048"]["recurrent_bytes_per_step_fp32"] > 0
    assert sum(table4["settings"]["target_share_per_cluster"]) == pytest.approx(1.0)
    assert table4["settings"]["softmax_logits_per_token"] == {"throughput": 200.0, "responsiveness": 200.0}
    memory = results["memory"]["models"]["lstm"]["fp32"]
    assert memory["peak_rss_mb"] >= memory["rss_after_build_mb"] >= memory["rss_after_import_mb"] > 0


def test_table4_counts_the_logits_each_target_normalizes():
    """The head (shortlist plus one entry per tail cluster) for every target, plus the whole cluster of a tail target."""
    import bench_table4

    ids = torch.tensor([0, 3, 10, 12, 29])  # head, head, cluster [10, 12), cluster [12, 30), cluster [12, 30)
    head = 10 + 2
    assert bench_table4.logits_per_token(ids, (10, 12), 30) == pytest.approx(head + (2 + 18 + 18) / 5)
    assert bench_table4.logits_per_token(ids, (), 30) == 30


def test_docs_are_generated_from_the_reports(smoke_reports):
    import make_docs

    out, results = smoke_reports
    for result in results.values():  # make_docs skips smoke runs: mark these as real to render them
        path = sorted(out.glob(f"*-{result['benchmark']}.json"))[-1]
        path.write_text(json.dumps(dict(result, smoke=False)))
    text = make_docs.render(out)
    for name, heading, _ in make_docs.SECTIONS:
        assert f"## {heading}" in text
    assert results["train"]["table_markdown"] in text and results["train"]["command"] in text
    assert f"{results['memory']['plot']})" in text
    assert "No report yet: no `benchmarks/results/*-prepare.json`" in text


def test_benchmark_options_are_checked(bench, capsys):
    import bench_train

    with pytest.raises(SystemExit) as exit_info:
        bench_train.main(["--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
