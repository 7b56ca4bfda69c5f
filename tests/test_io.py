"""The one loader and the one saver (gcnn.load, gcnn.save_pretrained): round trips, the model card, `gcnn export`,
and the checks that reject damaged, truncated, mismatched, oversized or incomplete folders before allocating."""

import json
import subprocess
import sys

import pytest
import torch

import gcnn
from gcnn import io
from gcnn.card import ModelCard
from gcnn.cli import main
from gcnn.data import Vocabulary
from gcnn.errors import CheckpointError
from gcnn.fs import write_checksums

V = 100


def vocabulary(size=V, prefix="w"):
    return Vocabulary([f"{prefix}{i}" for i in range(size - 2)] + ["<unk>", "<eos>"], counts=list(range(size, 0, -1)))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return gcnn.build_model("gcnn-tiny", vocab_size=V).eval()


def make_run(tmp_path, model, vocab, *, best_ppl=123.456, context=64):
    """A run folder as `gcnn train` writes it (config.json, model.safetensors, vocab.json, run.json)."""
    run = tmp_path / "run"
    io.write_model(model, run, vocab=vocab)
    (run / "run.json").write_text(json.dumps({
        "format": "gcnn-run", "status": "finished",
        "train_config": {"model": {"arch": "gcnn-tiny"}, "optimizer": "nesterov", "lr": 1.0, "context": context,
                         "valid_max_tokens": 4096},
        "data": {"path": "/data/tiny", "mode": "stream", "vocab_size": V, "vocab_sha256": "ab" * 32},
        "updates": 40, "tokens": 10240, "best_valid_ppl": best_ppl,
    }))
    return run


def outputs(model, tokens):
    with torch.no_grad():
        return model.next_token_log_probs(tokens)


def test_round_trip_gives_the_same_model_and_vocabulary(tmp_path, model):
    vocab = vocabulary()
    out = gcnn.save_pretrained(model, tmp_path / "pretrained", vocab)
    files = ["README.md", "SHA256SUMS", "config.json", "model.safetensors", "vocab.json",
             # the Hugging Face files (gcnn.hf_files): a transformers model folder too
             "generation_config.json", "modeling_gcnn.py", "special_tokens_map.json", "tokenizer.json",
             "tokenizer_config.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    loaded = gcnn.load(out)
    assert type(loaded) is gcnn.GatedConvLM and loaded.vocab == vocab and not loaded.training
    tokens = torch.randint(0, V, (2, 11))
    assert torch.equal(outputs(loaded, tokens), outputs(model, tokens))
    card = (out / "README.md").read_text()
    assert "not measured" in card and "gcnn-tiny" in card and f"{model.num_parameters():,}" in card
    assert 'gcnn.load("THIS_FOLDER")' in card
    # sha256sum understands the checksum file, and files are readable by others (0644, not mkstemp's 0600)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o644"}


def test_a_model_saves_and_loads_without_a_vocabulary(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p")
    assert not (out / "vocab.json").exists()
    loaded = gcnn.load(out)
    assert loaded.vocab is None
    assert "| vocabulary | not saved with the model |" in (out / "README.md").read_text()
    # the vocabulary a loaded model carries is saved with it again
    again = gcnn.save_pretrained(gcnn.load(gcnn.save_pretrained(model, tmp_path / "q", vocabulary())), tmp_path / "r")
    assert gcnn.load(again).vocab == vocabulary()


def test_run_exported_and_checkpoint_folders_load_the_same_way(tmp_path):
    """The one loader reads what `gcnn train` writes: the run folder, and each of its checkpoints."""
    from gcnn.data import find_corpus, prepare
    from gcnn.train import train
    from test_train import make_config, write_corpus

    files = write_corpus(tmp_path)
    prepare(find_corpus(train=files["train"], valid=files["valid"], test=files["test"]), tmp_path / "prepared")
    run = tmp_path / "run"
    train(make_config(tmp_path / "prepared", run, max_updates=4, valid_every=2), silent=True)
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert checkpoints
    for folder in [run, *checkpoints]:
        model = gcnn.load(folder)
        assert model.vocab is not None and model.vocab == gcnn.load(run).vocab


def test_loading_does_not_need_the_training_code(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    code = (
        "import sys; sys.modules['gcnn.train'] = None; sys.modules['gcnn.cli'] = None\n"  # their imports now fail
        "import gcnn\n"
        f"model = gcnn.load({str(out)!r})\n"
        "assert not [m for m in sys.modules if m.startswith(('gcnn.train', 'gcnn.cli')) and sys.modules[m]]\n"
        "print(model.vocab_size, len(model.vocab))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(V), str(V)]


def test_missing_files_are_named(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    (out / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="vocab.json: listed in .*SHA256SUMS but missing"):
        gcnn.load(out)
    (out / "SHA256SUMS").unlink()
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: weights file not found"):
        gcnn.load(out)
    with pytest.raises(CheckpointError, match="no such model, run or checkpoint folder"):
        gcnn.load(tmp_path / "nothing")


def test_truncated_weights_are_reported(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    (out / "SHA256SUMS").unlink()  # without checksums, safetensors itself notices the truncation
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        gcnn.load(out)


def test_damaged_weights_fail_their_checksum(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor: still a valid safetensors file
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: damaged or changed since it was written"):
        gcnn.load(out)


def test_checksum_entries_must_be_file_names_of_the_folder(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    for name in ("../secret", "/etc/passwd", "sub/vocab.json", ".."):
        (out / "SHA256SUMS").write_text(f"{'0' * 64}  {name}\n")
        with pytest.raises(CheckpointError, match="is not a plain file name of this folder"):
            gcnn.load(out)


def test_vocabulary_of_another_size_names_both_sizes(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    vocabulary(V + 7).save(out / "vocab.json")
    write_checksums(out)
    with pytest.raises(CheckpointError, match=r"vocab.json: the vocabulary has 107 tokens but the model in .* has vocab_size 100"):
        gcnn.load(out)
    with pytest.raises(CheckpointError, match="107 tokens but the model was built for vocab_size 100"):
        gcnn.save_pretrained(model, tmp_path / "q", vocabulary(V + 7))
    assert not (tmp_path / "q").exists()  # nothing half-written


def test_a_vocabulary_of_the_same_size_but_other_tokens_is_refused(tmp_path, model):
    """The weights record the fingerprint of the vocabulary the model was trained with; the size is not enough."""
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    other = vocabulary(prefix="x")
    with pytest.raises(CheckpointError, match="not the vocabulary the model in .* was trained with"):
        gcnn.load(out, vocab=other)
    other.save(out / "vocab.json")
    write_checksums(out)
    with pytest.raises(CheckpointError, match="vocab.json: not the vocabulary .* fingerprint differs"):
        gcnn.load(out)


def test_weights_of_another_model_are_refused(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    other = gcnn.build_model("gcnn-tiny", vocab_size=V, embed_dim=24)
    io.write_model(other, tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(out / "model.safetensors")
    write_checksums(out)
    with pytest.raises(CheckpointError, match=r"embed.weight has shape \(100, 24\), the config in .* needs \(100, 16\)"):
        gcnn.load(out)


def test_sizes_in_a_config_are_checked_against_the_weights_before_allocating(tmp_path, model, monkeypatch):
    """A config.json claiming 10^9 channels or 10^12 words is refused from the weights' header alone; weights that
    need more memory than the machine has are refused before they are read."""
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    (out / "SHA256SUMS").unlink()
    config = json.loads((out / "config.json").read_text())
    built = []
    monkeypatch.setattr(
        io, "model_class", lambda c, real=io.model_class: built.append((c, torch.get_default_device().type)) or real(c)
    )
    for change in ({"vocab_size": 10**12}, {"embed_dim": 10**9}):  # gcnn's config is nested in an exported folder's
        (out / "config.json").write_text(json.dumps(dict(config, gcnn_config=dict(config["gcnn_config"], **change))))
        with pytest.raises(CheckpointError, match="has shape .* the config in .* needs"):
            gcnn.load(out)
    (out / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(io, "available_memory", lambda: 1000)
    with pytest.raises(CheckpointError, match=r"needs 0.0 GiB for its weights but this machine has 0.0 GiB"):
        gcnn.load(out)
    # the claimed sizes were only ever built on the meta device (shapes, no memory)
    assert [device for c, device in built if c.vocab_size > 10**6 or c.embed_dim > 10**6] == ["meta", "meta"]


def test_saving_replaces_an_earlier_export_and_refuses_anything_else(tmp_path, model):
    out = gcnn.save_pretrained(model, tmp_path / "p", vocabulary())
    torch.manual_seed(3)
    newer = gcnn.build_model("gcnn-tiny", vocab_size=V).eval()
    card = ModelCard()
    card.add_evaluation("test", 42.0)
    gcnn.save_pretrained(newer, out, vocabulary(), card=card)
    loaded = gcnn.load(out)
    assert torch.equal(loaded.embed.weight, newer.embed.weight)
    assert "| test | 42.00 |" in (out / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    run = make_run(tmp_path, model, vocabulary())
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(CheckpointError, match=r"is a training run folder \(it has run.json\)"):
        gcnn.save_pretrained(newer, run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="is a folder that is not empty .*todo.txt"):
        gcnn.save_pretrained(newer, notes)
    assert (notes / "todo.txt").read_text() == "precious"


def test_export_command_writes_a_model_card_from_the_run(tmp_path, model, capsys):
    run = make_run(tmp_path, model, vocabulary())
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert ("| validation split during training (its first 4,096 tokens, in training-time blocks of 64 tokens; each "
            "block starts without context, unlike `gcnn eval`), best checkpoint | 123.46 |") in card
    assert "/data/tiny" in card and "- optimizer: nesterov" in card and '- model: {"arch": "gcnn-tiny"}' in card
    loaded = gcnn.load(out)
    assert torch.equal(loaded.softmax.head.weight, model.softmax.head.weight)
    assert main(["export", str(run), str(out)]) == 0  # an earlier export is replaced
    assert main(["export", str(out), str(run)]) == 2  # a run folder is not
    assert "is a training run folder" in capsys.readouterr().err


def test_export_command_errors(tmp_path, model, capsys):
    run = make_run(tmp_path, model, vocabulary())
    assert main(["export", str(run), str(run)]) == 2
    assert "is RUN_DIR itself" in capsys.readouterr().err
    (run / "model.safetensors").unlink()
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    assert "model.safetensors: weights file not found" in capsys.readouterr().err
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
    expected = evaluate_split(model, data, "test")
    assert f"test perplexity on {data}: {expected.perplexity:.2f}" in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    assert (f"| test split of `{data}`, measured by `gcnn eval` (stream mode, 60 tokens, context "
            f"{expected.context}, stride {expected.stride}) | {expected.perplexity:.2f} |") in card
    # data prepared with another vocabulary is refused, naming both sizes
    run2 = make_run(tmp_path / "other", gcnn.build_model("gcnn-tiny", vocab_size=V), vocabulary())
    assert main(["export", str(run2), str(tmp_path / "out2"), "--eval-data", str(data)]) == 2
    assert f"vocabulary of {V:,} tokens but the data in {data} has {len(vocab):,}" in capsys.readouterr().err


def test_an_exported_transformer_keeps_its_trained_positions(tmp_path, capsys):
    """A Transformer trained on 16 of its 64 positions: the exported folder still knows, so its card's perplexity
    and `gcnn eval` on the export keep their windows within the trained positions."""
    torch.manual_seed(0)
    model = gcnn.build_model("transformer-tiny", vocab_size=V).eval()
    run = make_run(tmp_path, model, vocabulary(), context=16)
    assert gcnn.load(run).trained_positions == 16
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    exported = gcnn.load(out)
    assert exported.trained_positions == 16
    from gcnn.evaluate import perplexity

    result = perplexity(exported, torch.randint(0, V, (100,)).numpy(), eos_id=exported.vocab.eos_id)
    assert result.context + result.stride - 1 <= 16
