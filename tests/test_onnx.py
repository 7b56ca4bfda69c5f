"""ONNX export (`gcnn export --onnx`), checked with onnxruntime against PyTorch on gcnn-tiny.

Needs the optional packages of the ``onnx`` extra (pip install 'gcnn[onnx]'); skipped with a message without them."""

import importlib.util
import json

import numpy as np
import pytest
import torch

import gcnn
from gcnn.cli import main
from gcnn.data import Vocabulary
from gcnn.errors import GcnnError
from gcnn.onnx_export import decoder_state_shapes, export_onnx

MISSING = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed (pip install 'gcnn[onnx]')")
V = 100


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """gcnn-tiny (adaptive softmax) exported once through the command line: (model, output folder)."""
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed (pip install 'gcnn[onnx]')")
    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = gcnn.build_model("gcnn-tiny", vocab_size=V).eval()
    run = tmp / "run"
    gcnn.io.write_model(model, run)
    Vocabulary([f"w{i}" for i in range(V - 2)] + ["<unk>", "<eos>"]).save(run / "vocab.json")
    (run / "run.json").write_text(json.dumps({"format": "gcnn-run", "best_valid_ppl": 99.0}))
    assert main(["export", str(run), str(tmp / "out"), "--onnx"]) == 0
    return model, tmp / "out"


def session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@needs_onnx
def test_scoring_graph_matches_pytorch_for_any_batch_and_length(exported):
    model, out = exported
    scorer = session(out / "model.onnx")
    gen = torch.Generator().manual_seed(1)
    for batch, time in [(2, 3), (1, 1), (5, 40)]:  # the graph was traced with (2, 3)
        tokens = torch.randint(0, V, (batch, time), generator=gen)
        targets = torch.randint(0, V, (batch, time), generator=gen)
        (log_probs,) = scorer.run(None, {"tokens": tokens.numpy()})
        with torch.no_grad():
            expected = model.next_token_log_probs(tokens).numpy()
            expected_targets = model(tokens, targets).target_log_probs.numpy()
        assert log_probs.shape == (batch, time, V)
        np.testing.assert_allclose(log_probs, expected, atol=1e-5)
        gathered = np.take_along_axis(log_probs, targets.numpy()[..., None], axis=2)[..., 0]
        np.testing.assert_allclose(gathered, expected_targets, atol=1e-5)


@needs_onnx
def test_decoder_step_graph_continues_sequences_like_the_full_pass(exported):
    model, out = exported
    step = session(out / "decoder_step.onnx")
    names = [i.name for i in step.get_inputs()]
    shapes = decoder_state_shapes(model)
    assert names == ["token"] + [f"state_{i}" for i in range(len(shapes))]
    batch, time = 3, 12
    tokens = torch.randint(0, V, (batch, time), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model.next_token_log_probs(tokens).numpy()
    states = [np.zeros((batch, frames, channels), np.float32) for frames, channels in shapes]
    for t in range(time):
        log_probs, *states = step.run(None, {"token": tokens[:, t : t + 1].numpy(), **dict(zip(names[1:], states))})
        np.testing.assert_allclose(log_probs, full[:, t], atol=1e-5, err_msg=f"step {t}")


@needs_onnx
def test_exported_folder_lists_the_graphs_in_its_checksums(exported):
    _, out = exported
    listed = {line.split("  ")[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    graphs = {"model.onnx", "model.onnx.data", "decoder_step.onnx", "decoder_step.onnx.data"}
    assert graphs | {"model.safetensors"} <= listed
    assert "in training-time blocks; each block starts without context, unlike `gcnn eval`), best checkpoint | 99.00 |" in (
        out / "README.md"
    ).read_text()


def test_export_refuses_models_without_a_convolution_cache(tmp_path):
    class NotAGcnn(gcnn.LanguageModel):
        pass

    with pytest.raises(GcnnError, match="ONNX export supports GCNN models; this is a NotAGcnn"):
        export_onnx(NotAGcnn(), tmp_path)


def test_missing_exporter_packages_are_reported_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import gcnn.onnx_export as onnx_export

    real = importlib.util.find_spec

    def hide_onnxscript(name):
        return None if name == "onnxscript" else real(name)

    monkeypatch.setattr(onnx_export.importlib.util, "find_spec", hide_onnxscript)
    run = tmp_path / "run"
    gcnn.io.write_model(gcnn.build_model("gcnn-tiny", vocab_size=V), run)
    Vocabulary([f"w{i}" for i in range(V - 2)] + ["<unk>", "<eos>"]).save(run / "vocab.json")
    assert main(["export", str(run), str(tmp_path / "out"), "--onnx"]) == 2
    assert "ONNX export needs onnxscript: pip install 'gcnn[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
