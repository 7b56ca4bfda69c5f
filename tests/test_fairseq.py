"""Import of fairseq fconv_lm checkpoints, checked against a reference forward pass written here with plain torch ops
in fairseq's time-major layout (torch.conv_tbc, torch._weight_norm: the ops fairseq's ConvTBC and weight norm call).

The synthetic checkpoints use fairseq's key names and shapes with random weights."""

import argparse
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcnn.architectures import get_config
from gcnn.cli import main
from gcnn.errors import CheckpointError, DataError
from gcnn.fairseq import (
    ARCH_LAYERS,
    FairseqLayer,
    import_fairseq,
    layers_to_blocks,
    parse_layer_spec,
    read_checkpoint,
    read_dictionary,
)
from gcnn.io import load

# residual from fc1 (first two layers), bottleneck blocks with r=3 (the first one widens 12 -> 20 through a
# projection), a plain layer (r=0), then a layer whose residual comes from the plain layer's output (20 -> 16)
SPEC = "[(12, 3)] * 2 + [(6, 1, 0), (6, 3, 0), (20, 1, 3)] * 2 + [(20, 2, 0)] + [(16, 2)]"
WORDS = 46  # + 4 specials = 50 tokens


def spec_layers(spec):
    return [(c, k, r) for c, k, r in ((l.out_channels, l.kernel, l.residual) for l in parse_layer_spec(spec))]


def fairseq_state(spec, vocab_size, embed_dim, *, cutoffs=None, conv_version=2, seed=0):
    """A decoder state dict with fairseq fconv_lm's key names and shapes (the 'model' entry of a checkpoint)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.5):
        return torch.randn(*shape, generator=gen) * scale

    state = {"decoder.version": torch.tensor([float(conv_version)])}
    state["decoder.embed_tokens.weight"] = rand(vocab_size, embed_dim)

    def linear(name, fan_in, fan_out):  # nn.utils.weight_norm(nn.Linear): weight_g (out, 1), weight_v (out, in)
        state[f"decoder.{name}.weight_v"] = rand(fan_out, fan_in)
        state[f"decoder.{name}.weight_g"] = rand(fan_out, 1).abs() + 0.5
        state[f"decoder.{name}.bias"] = rand(fan_out, scale=0.1)

    layers = spec_layers(spec)
    width = layers[0][0]
    linear("fc1", embed_dim, width)
    layer_in = [width]
    for i, (out, k, r) in enumerate(layers):
        residual_dim = out if r == 0 else layer_in[-r]
        if residual_dim != out:
            linear(f"projections.{i}", residual_dim, out)
        # LinearizedConvolution (ConvTBC): weight (k, in, 2*out); weight norm dim=2 (dim=0 before decoder version 2)
        state[f"decoder.convolutions.{i}.weight_v"] = rand(k, width, 2 * out)
        g_shape = (1, 1, 2 * out) if conv_version >= 2 else (k, 1, 1)
        state[f"decoder.convolutions.{i}.weight_g"] = rand(*g_shape).abs() + 0.5
        state[f"decoder.convolutions.{i}.bias"] = rand(2 * out, scale=0.1)
        width = out
        layer_in.append(out)
    if cutoffs:
        bounds = list(cutoffs) + [vocab_size]
        state["decoder.adaptive_softmax.head.weight"] = rand(cutoffs[0] + len(cutoffs), width)
        for i in range(len(cutoffs)):
            reduced = width // 4 ** (i + 1)
            state[f"decoder.adaptive_softmax.tail.{i}.0.weight"] = rand(reduced, width)
            state[f"decoder.adaptive_softmax.tail.{i}.2.weight"] = rand(bounds[i + 1] - bounds[i], reduced)
        state["decoder.adaptive_softmax.version"] = torch.LongTensor([1])
    else:
        linear("fc2", width, embed_dim)
        linear("fc3", embed_dim, vocab_size)
    return state


def fairseq_log_probs(state, spec, tokens, cutoffs=None):
    """fairseq FConvDecoder (eval mode, no positional embeddings, no attention) + get_normalized_probs."""
    d = {k[len("decoder."):]: v for k, v in state.items()}

    def weight(name, dim):
        return torch._weight_norm(d[f"{name}.weight_v"], d[f"{name}.weight_g"], dim)

    def linear(name, x):
        return F.linear(x, weight(name, 0), d[f"{name}.bias"])

    conv_dim = 2 if d["version"][0] >= 2 else 0
    x = linear("fc1", F.embedding(tokens, d["embed_tokens.weight"])).transpose(0, 1)  # (T, B, C)
    residuals = [x]
    for i, (out, k, r) in enumerate(spec_layers(spec)):
        residual = None
        if r > 0:
            residual = residuals[-r]
            if f"projections.{i}.weight_v" in d:
                residual = linear(f"projections.{i}", residual)
        x = torch.conv_tbc(x.contiguous(), weight(f"convolutions.{i}", conv_dim), d[f"convolutions.{i}.bias"], k - 1)
        if k > 1:
            x = x[: -(k - 1)]  # remove_future_timesteps
        x = F.glu(x, dim=2)
        if residual is not None:
            x = (x + residual) * math.sqrt(0.5)
        residuals.append(x)
    x = x.transpose(0, 1)  # (B, T, C)
    if not cutoffs:
        return torch.log_softmax(linear("fc3", linear("fc2", x)), dim=-1)
    head = torch.log_softmax(x @ d["adaptive_softmax.head.weight"].T, dim=-1)
    parts = [head[..., : cutoffs[0]]]
    for i in range(len(cutoffs)):
        tail = x @ d[f"adaptive_softmax.tail.{i}.0.weight"].T @ d[f"adaptive_softmax.tail.{i}.2.weight"].T
        parts.append(torch.log_softmax(tail, dim=-1) + head[..., cutoffs[0] + i : cutoffs[0] + i + 1])
    return torch.cat(parts, dim=-1)


def write_dictionary(path, words=WORDS):
    path.write_text("".join(f"w{i} {words - i}\n" for i in range(words)), encoding="utf-8")
    return path


def write_checkpoint(path, state, *, cfg_style=False, **options):
    fields = dict(arch="fconv_lm", decoder_layers=SPEC, dropout=0.1, criterion="adaptive_loss", data="/data/wiki103")
    args = argparse.Namespace(**{**fields, **options})
    if cfg_style:  # fairseq >= 0.10: args None, cfg sections (model may stay a Namespace), numpy scalars around
        checkpoint = {"args": None, "cfg": {"model": args, "optimization": {"lr": [1.0]}}, "model": state,
                      "extra_state": {"val_loss": np.float64(5.5)}}
    else:
        checkpoint = {"args": args, "model": state, "optimizer_history": [{"num_updates": 10}]}
    torch.save(checkpoint, path)
    return path


CASES = {
    # name: (embed_dim, cutoffs, conv_version, cfg_style)
    "adaptive softmax, fc1 -> input projection": (8, (10, 30), 2, False),
    "full softmax (fc2, fc3 folded), fc1 folded into the embedding, old conv weight norm": (12, None, 1, False),
    "cfg-style checkpoint with numpy scalars": (8, (20,), 2, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_gives_fairseqs_log_probs(tmp_path, case):
    embed_dim, cutoffs, conv_version, cfg_style = CASES[case]
    state = fairseq_state(SPEC, 4 + WORDS, embed_dim, cutoffs=cutoffs, conv_version=conv_version)
    ckpt = write_checkpoint(tmp_path / "checkpoint.pt", state, cfg_style=cfg_style)
    imported = import_fairseq(ckpt, write_dictionary(tmp_path / "dict.txt"))
    model = imported.model
    assert (model.input_proj is None) == (embed_dim == 12)
    assert model.config.adaptive_cutoffs == (cutoffs or ())
    assert model.config.residual_scale and model.config.gate_placement == "layer"
    tokens = torch.randint(0, 4 + WORDS, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = fairseq_log_probs(state, SPEC, tokens, cutoffs)
        got = model.next_token_log_probs(tokens)
    assert got.shape == expected.shape == (3, 17, 4 + WORDS)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # the test could fail: a different checkpoint gives different log-probabilities
    other = fairseq_state(SPEC, 4 + WORDS, embed_dim, cutoffs=cutoffs, conv_version=conv_version, seed=5)
    assert (fairseq_log_probs(other, SPEC, tokens, cutoffs) - got).abs().max() > 1e-2


def test_cli_writes_a_pretrained_folder_with_the_same_log_probs(tmp_path, capsys):
    state = fairseq_state(SPEC, 4 + WORDS, 8, cutoffs=(10, 30))
    ckpt = write_checkpoint(tmp_path / "checkpoint.pt", state)
    out = tmp_path / "converted"
    assert main(["import-fairseq", str(ckpt), str(write_dictionary(tmp_path / "dict.txt")), str(out)]) == 0
    assert "10 convolution layers" in capsys.readouterr().out
    model = load(out)
    vocab = model.vocab
    assert vocab.itos[:6] == ["<s>", "<pad>", "</s>", "<unk>", "w0", "w1"] and vocab.bos_id == vocab.eos_id == 2
    card = (out / "README.md").read_text()
    assert "fconv_lm" in card and "/data/wiki103" in card and "not measured" in card
    tokens = torch.randint(0, 4 + WORDS, (2, 9))
    with torch.no_grad():
        expected = fairseq_log_probs(state, SPEC, tokens, (10, 30))
        assert torch.allclose(model.next_token_log_probs(tokens), expected, atol=1e-5)


def test_paper_layer_specs_map_to_the_named_architectures():
    wiki = layers_to_blocks(parse_layer_spec(ARCH_LAYERS["fconv_lm_dauphin_wikitext103"]))
    assert wiki == get_config("gcnn-14", vocab_size=300000).blocks
    gbw = layers_to_blocks(parse_layer_spec(ARCH_LAYERS["fconv_lm_dauphin_gbw"]))
    paper = get_config("gcnn-14b", vocab_size=800000).blocks
    # fairseq's first layer (512, 5) takes its residual from fc1's output; the paper's table lists it as plain
    assert gbw[0].residual and not paper[0].residual and gbw[0].layers == paper[0].layers
    assert gbw[1:] == paper[1:]


def test_layer_spec_parser_accepts_only_literals():
    expected = [FairseqLayer(4, 3, 1), FairseqLayer(4, 3, 1), FairseqLayer(8, 1, 0)]
    assert parse_layer_spec("[(4, 3)] * 2 + [(8, 1, 0)]") == expected
    bad_specs = ("__import__('os').system('true')", "[(4, 3)] * 10**9", "[(4, 3, -1)]", "[]", "[(4,)]", "[(4, 3)] * 99999")
    for bad in bad_specs:
        with pytest.raises(CheckpointError, match="decoder_layers"):
            parse_layer_spec(bad)


def test_overlapping_residuals_are_refused():
    with pytest.raises(CheckpointError, match="layer 2 takes its residual from 3 layers back"):
        layers_to_blocks([FairseqLayer(8, 3, 1), FairseqLayer(8, 3, 0), FairseqLayer(8, 3, 3)])


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "args": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle a .*system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_damaged_and_truncated_checkpoints(tmp_path):
    path = write_checkpoint(tmp_path / "ok.pt", fairseq_state(SPEC, 50, 8, cutoffs=(10,)))
    data = path.read_bytes()
    (tmp_path / "short.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name in ("short.pt", "text.pt"):
        with pytest.raises(CheckpointError, match=f"{name}: not a readable PyTorch checkpoint"):
            read_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_dictionary_of_another_size_names_both_sizes(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c.pt", fairseq_state(SPEC, 4 + WORDS, 8, cutoffs=(10,)))
    message = r"4 special symbols \+ 40 words = 44 tokens, but the embedding .* has 50 rows"
    with pytest.raises(CheckpointError, match=message):
        import_fairseq(ckpt, write_dictionary(tmp_path / "dict.txt", words=40))


def test_bad_dictionary_lines_are_named(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("the 10\nof ten\n")
    with pytest.raises(DataError, match="dict.txt, line 2: expected '<word> <count>'"):
        read_dictionary(path)
    path.write_text("the 10\n<unk> 3\n")
    with pytest.raises(DataError, match="line 2: '<unk>' is already in the dictionary"):
        read_dictionary(path)
    path.write_text("the 10\nthe 3 #fairseq:overwrite\n")
    with pytest.raises(DataError, match="line 2: #fairseq:overwrite"):
        read_dictionary(path)
    path.write_text("new york 10\n")  # fairseq splits at the last space
    assert read_dictionary(path).itos[4] == "new york"


def test_old_adaptive_softmax_layout_and_mismatched_spec_are_refused(tmp_path):
    state = fairseq_state(SPEC, 50, 8, cutoffs=(10,))
    del state["decoder.adaptive_softmax.version"]
    with pytest.raises(CheckpointError, match="predates fairseq's fix of the head"):
        import_fairseq(write_checkpoint(tmp_path / "old.pt", state), write_dictionary(tmp_path / "dict.txt"))
    state = fairseq_state(SPEC, 50, 8, cutoffs=(10,))
    ckpt = write_checkpoint(tmp_path / "spec.pt", state, decoder_layers=SPEC.replace("(12, 3)", "(12, 5)"))
    with pytest.raises(CheckpointError, match=r"convolutions.0.weight_v has shape \(3, 12, 24\), the layer spec"):
        import_fairseq(ckpt, tmp_path / "dict.txt")


def test_positional_embeddings_are_not_silently_dropped(tmp_path):
    state = fairseq_state(SPEC, 50, 8, cutoffs=(10,))
    state["decoder.embed_positions.weight"] = torch.zeros(10, 8)
    with pytest.raises(CheckpointError, match="embed_positions.weight"):
        import_fairseq(write_checkpoint(tmp_path / "c.pt", state), write_dictionary(tmp_path / "dict.txt"))
