"""Portable pretrained folders: save_pretrained / from_pretrained, the model card, `gcnn export`, and the checks that
reject damaged, truncated, mismatched or incomplete folders."""

import json
import subprocess
import sys

import pytest
import torch

import gcnn
from gcnn.cli import main
from gcnn.data import Vocabulary
from gcnn.errors import CheckpointError
from gcnn.hub import ModelCard, from_pretrained, load_pretrained, save_pretrained, write_checksums

V = 100


def vocabulary(size=V):
    return Vocabulary([f"w{i}" for i in range(size - 2)] + ["<unk>", "<eos>"], counts=list(range(size, 0, -1)))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return gcnn.build_model("gcnn-tiny", vocab_size=V).eval()


def make_run(tmp_path, model, vocab, *, best_ppl=123.456):
    """A run folder as `gcnn train` writes it (config.json, model.safetensors, vocab.json, run.json)."""
    run = tmp_path / "run"
    gcnn.save_model(model, run)
    vocab.save(run / "vocab.json")
    (run / "run.json").write_text(json.dumps({
        "format": "gcnn-run", "status": "finished",
        "train_config": {"model": {"arch": "gcnn-tiny"}, "optimizer": "nesterov", "lr": 1.0, "context": 64},
        "data": {"path": "/data/tiny", "mode": "stream", "vocab_size": V, "vocab_sha256": "ab" * 32},
        "updates": 40, "tokens": 10240, "best_valid_ppl": best_ppl,
    }))
    return run


def test_round_trip_gives_the_same_model_and_vocabulary(tmp_path, model):
    vocab = vocabulary()
    out = model.save_pretrained(tmp_path / "pretrained", vocab)
    files = ["README.md", "SHA256SUMS", "config.json", "model.safetensors", "vocab.json"]
    assert sorted(p.name for p in out.iterdir()) == files
    loaded = gcnn.GatedConvLM.from_pretrained(out)
    _, loaded_vocab = load_pretrained(out)
    assert loaded_vocab == vocab and not loaded.training
    tokens = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        assert torch.equal(loaded.next_token_log_probs(tokens), model.next_token_log_probs(tokens))
    card = (out / "README.md").read_text()
    assert "not measured" in card and "gcnn-tiny" in card and f"{model.num_parameters():,}" in card
    # sha256sum understands the checksum file
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_loading_does_not_need_the_training_code(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())
    code = (
        "import sys; sys.modules['gcnn.train'] = None\n"  # any import of the training package now fails
        "from gcnn.hub import load_pretrained\n"
        f"model, vocab = load_pretrained({str(out)!r})\n"
        "assert 'gcnn.train' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(model.vocab_size, len(vocab))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(V), str(V)]


def test_missing_files_are_named(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())
    (out / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="missing vocab.json"):
        from_pretrained(out)
    with pytest.raises(CheckpointError, match="no such model folder"):
        from_pretrained(tmp_path / "nothing")


def test_truncated_weights_are_reported(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())
    (out / "SHA256SUMS").unlink()  # without checksums, safetensors itself notices the truncation
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        from_pretrained(out)


def test_damaged_weights_fail_their_checksum(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor: still a valid safetensors file
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: damaged or changed since it was saved"):
        from_pretrained(out)


def test_vocabulary_of_another_size_names_both_sizes(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())
    vocabulary(V + 7).save(out / "vocab.json")
    write_checksums(out)
    with pytest.raises(CheckpointError, match=r"vocab.json: the vocabulary has 107 tokens but .*json has vocab_size 100"):
        from_pretrained(out)
    with pytest.raises(CheckpointError, match="107 tokens but the model was built for vocab_size 100"):
        save_pretrained(model, tmp_path / "q", vocabulary(V + 7))
    assert not (tmp_path / "q").exists()  # nothing half-written


def test_weights_of_another_model_are_refused(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())
    other = gcnn.build_model("gcnn-tiny", vocab_size=V, embed_dim=24)
    gcnn.save_model(other, tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(out / "model.safetensors")
    write_checksums(out)
    with pytest.raises(CheckpointError, match=r"embed.weight has shape \(100, 24\), the config needs \(100, 16\)"):
        from_pretrained(out)


def test_from_pretrained_checks_the_model_class(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())

    class OtherModel(gcnn.LanguageModel):
        pass

    with pytest.raises(CheckpointError, match="holds a GatedConvLM, not a OtherModel"):
        OtherModel.from_pretrained(out)


def test_saving_over_an_existing_folder_replaces_its_files(tmp_path, model):
    out = save_pretrained(model, tmp_path / "p", vocabulary())
    torch.manual_seed(3)
    newer = gcnn.build_model("gcnn-tiny", vocab_size=V).eval()
    save_pretrained(newer, out, vocabulary(), card=ModelCard(perplexity={"test": 42.0}))
    loaded = from_pretrained(out)
    assert torch.equal(loaded.embed.weight, newer.embed.weight)
    assert "| test | 42.00 |" in (out / "README.md").read_text()


def test_export_command_writes_a_model_card_from_the_run(tmp_path, model, capsys):
    run = make_run(tmp_path, model, vocabulary())
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "| validation, best checkpoint | 123.46 |" in card
    assert "/data/tiny" in card and "- optimizer: nesterov" in card and '- model: {"arch": "gcnn-tiny"}' in card
    loaded = from_pretrained(out)
    assert torch.equal(loaded.softmax.head.weight, model.softmax.head.weight)


def test_export_command_errors(tmp_path, model, capsys):
    run = make_run(tmp_path, model, vocabulary())
    assert main(["export", str(run), str(run)]) == 2
    assert "is RUN_DIR itself" in capsys.readouterr().err
    (run / "vocab.json").unlink()
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    assert "missing vocab.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_measures_perplexity_on_prepared_data_for_the_card(tmp_path, capsys):
    from gcnn.data import PreparedData
    from gcnn.evaluate import evaluate_split

    for split, lines in (("train", 60), ("valid", 10), ("test", 10)):
        (tmp_path / f"{split}.txt").write_text("".join(f"a b c d{i % 7} e\n" for i in range(lines)))
    data = tmp_path / "prepared"
    args = ["prepare", "--train", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt")]
    assert main([*args, "--test", str(tmp_path / "test.txt"), "--out", str(data), "--quiet"]) == 0
    vocab = PreparedData.open(data).vocab
    torch.manual_seed(0)
    model = gcnn.build_model("gcnn-tiny", vocab_size=len(vocab)).eval()
    run = make_run(tmp_path, model, vocab)
    assert main(["export", str(run), str(tmp_path / "out"), "--eval-data", str(data)]) == 0
    expected = evaluate_split(model, data, "test").perplexity
    assert f"test perplexity on {data}: {expected:.2f}" in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"| test split of `{data}` (stream mode, 60 tokens) | {expected:.2f} |" in card
    # data prepared with another vocabulary is refused, naming both sizes
    run2 = make_run(tmp_path / "other", gcnn.build_model("gcnn-tiny", vocab_size=V), vocabulary())
    assert main(["export", str(run2), str(tmp_path / "out2"), "--eval-data", str(data)]) == 2
    assert f"its vocabulary ({len(vocab)} tokens) is not the model's (100 tokens)" in capsys.readouterr().err
