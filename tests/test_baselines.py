"""The LSTM and Transformer baselines: the same guarantees as the GCNN (causality, normalised distributions, cached
decoding equal to the full pass, gradients everywhere, save/load), their named architectures and their errors."""

import json
import math

import pytest
import torch

import gcnn
from gcnn import registry
from gcnn.baselines import LSTMConfig, LSTMLM, SequenceTooLongError, TransformerConfig, TransformerLM
from gcnn.cli import main as cli_main
from gcnn.errors import CheckpointError, ConfigError
from gcnn.softmax import AdaptiveSoftmax, FullSoftmax

V = 50


def lstm(**kw):
    fields = dict(vocab_size=V, embed_dim=8, hidden_dim=12, num_layers=2, dropout=0.0, adaptive_cutoffs=(10, 30))
    fields.update(kw)
    return LSTMLM(LSTMConfig(**fields))


def transformer(**kw):
    fields = dict(vocab_size=V, embed_dim=16, num_layers=2, num_heads=4, ff_dim=24, max_len=32, dropout=0.0, adaptive_cutoffs=(10, 30))
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


@pytest.mark.parametrize("kind", KINDS)
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
    gcnn.save_model(model, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["model_type"] == model.config.model_type
    loaded = gcnn.load_model(tmp_path / "m").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    tokens = torch.randint(0, V, (1, 6))
    assert torch.equal(loaded.next_token_log_probs(tokens), model.next_token_log_probs(tokens))


def test_damaged_baseline_config_names_the_file(tmp_path):
    gcnn.save_model(lstm(), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, hidden_units=3)))
    with pytest.raises(CheckpointError, match=r"config.json: unknown model key\(s\) hidden_units"):
        gcnn.load_model(tmp_path / "m")
    path.write_text(json.dumps(dict(data, proj_size=99)))
    with pytest.raises(CheckpointError, match=r"config.json: proj_size \(99\) must be smaller than hidden_dim \(12\)"):
        gcnn.load_model(tmp_path / "m")


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
    assert (table4.config.hidden_dim, table4.config.proj_size, table4.config.adaptive_cutoffs) == (2048, 512, (4000, 40000, 200000))
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
    assert {"lstm-medium", "lstm-2048", "transformer-small"} <= set(registry.extra_architectures())
    assert cli_main(["archs", "--vocab-size", "1000", "--json", "--arch", "lstm-medium", "--arch", "transformer-small"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["lstm-medium", "transformer-small"]
    lstm_row, transformer_row = rows
    assert lstm_row["receptive_field"] is None and "LSTM 2 x 650" in lstm_row["structure"]
    assert transformer_row["receptive_field"] == 512 and "6 x (width 512, 8 heads" in transformer_row["structure"]
    with torch.device("meta"):
        assert lstm_row["parameters"] == gcnn.build_model("lstm-medium", vocab_size=1000).num_parameters()
