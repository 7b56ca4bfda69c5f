"""Checkpoints as they exist in the wild: fairseq 0.5-0.9 checkpoints with training meters in extra_state, stale
``_linearized_weight`` entries, and wav2letter's ConvLM layout (a fairseq .pt next to a ``<fairseq_style>`` .vocab).

The checkpoints are built here with torch.save of the same structures; the meters are pickled from stand-in classes
under fairseq's module and class names, which are removed again before loading, so fairseq is never importable."""

import argparse
import os
import sys
import types

import pytest
import torch

from gcnn.cli import main
from gcnn.errors import CheckpointError, DataError
from gcnn.fairseq import FairseqMeter, import_fairseq, read_checkpoint, read_dictionary
from gcnn.io import load
from test_fairseq import SPEC, WORDS, fairseq_log_probs, fairseq_state, write_dictionary


def meter_classes(module_name):
    """Classes named as fairseq's meters (fields as fairseq 0.6-0.9 sets them in __init__/reset)."""

    class AverageMeter:
        def __init__(self):
            self.val, self.avg, self.sum, self.count = 2.5, 3.1, 310.0, 100

    class TimeMeter:
        def __init__(self):
            self.init, self.start, self.n = 0, 1577836800.0, 4096

    class StopwatchMeter:
        def __init__(self):
            self.sum, self.n, self.start = 812.5, 100, None

    for cls in (AverageMeter, TimeMeter, StopwatchMeter):
        cls.__module__ = module_name
        cls.__qualname__ = cls.__name__
    return AverageMeter, TimeMeter, StopwatchMeter


def save_with_fake_modules(monkeypatch, path, build, module_name="fairseq.meters", extra=None):
    """torch.save(build(classes)) while a fake ``module_name`` exists; gone again afterwards."""
    parent = types.ModuleType("fairseq")
    module = types.ModuleType(module_name)
    classes = meter_classes(module_name)
    for cls in classes:
        setattr(module, cls.__name__, cls)
    for name, cls in (extra or {}).items():
        cls.__module__, cls.__qualname__ = module_name, name
        setattr(module, name, cls)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "fairseq", parent)
        patch.setitem(sys.modules, module_name, module)
        torch.save(build(*classes), path)
    assert "fairseq" not in sys.modules and module_name not in sys.modules
    return path


def old_checkpoint(average, time_meter, stopwatch, state, arch="fconv_lm"):
    """fairseq 0.6-0.9's save_state layout."""
    args = argparse.Namespace(arch=arch, decoder_layers=SPEC, dropout=0.1, criterion="adaptive_loss",
                              data="/data/librispeech-lm", adaptive_softmax_cutoff="10,30")
    meters = {"train_loss": average(), "train_nll_loss": average(), "wps": time_meter(), "ups": time_meter(),
              "wall": stopwatch(), "train_wall": stopwatch(), "gnorm": average()}
    return {
        "args": args,
        "model": state,
        "optimizer_history": [{"criterion_name": "AdaptiveLoss", "optimizer_name": "NAG",
                               "lr_scheduler_state": {"best": 4.2}, "num_updates": 1000}],
        "extra_state": {"epoch": 3, "batch_offset": 0, "val_loss": 4.2, "train_meters": meters},
        "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1.0, "momentum": 0.99}]},
    }


@pytest.mark.parametrize("module_name", ["fairseq.meters", "fairseq.logging.meters"])
def test_checkpoint_with_training_meters_and_linearized_weights_imports(tmp_path, monkeypatch, module_name):
    state = fairseq_state(SPEC, 4 + WORDS, 8, cutoffs=(10, 30))
    for i in (0, 3):  # stale LinearizedConvolution caches: (out, k * in)
        v = state[f"decoder.convolutions.{i}.weight_v"]
        state[f"decoder.convolutions.{i}._linearized_weight"] = torch.randn(v.shape[2], v.shape[0] * v.shape[1])
    ckpt = save_with_fake_modules(monkeypatch, tmp_path / "checkpoint_best.pt",
                                  lambda *classes: old_checkpoint(*classes, state), module_name)
    checkpoint = read_checkpoint(ckpt)
    meters = checkpoint["extra_state"]["train_meters"]
    assert isinstance(meters["train_loss"], FairseqMeter) and meters["train_loss"].fields["avg"] == 3.1
    assert meters["wps"].fields["n"] == 4096 and meters["wall"].fields == {"sum": 812.5, "n": 100, "start": None}
    imported = import_fairseq(ckpt, write_dictionary(tmp_path / "dict.txt"))
    tokens = torch.randint(0, 4 + WORDS, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = fairseq_log_probs(state, SPEC, tokens, (10, 30))
        assert torch.allclose(imported.model.next_token_log_probs(tokens), expected, atol=1e-5)
    assert "fairseq" not in sys.modules  # nothing of fairseq was imported to read it


def test_other_fairseq_classes_are_still_refused_without_running_code(tmp_path, monkeypatch):
    marker = tmp_path / "ran"

    class Trainer:  # a class that is not a meter, under fairseq's name, whose unpickling would run a command
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Sneaky:  # a class named like a meter module's but not a meter
        pass

    state = fairseq_state(SPEC, 4 + WORDS, 8, cutoffs=(10,))
    evil = save_with_fake_modules(
        monkeypatch, tmp_path / "evil.pt",
        lambda *classes: {**old_checkpoint(*classes, state), "trainer": Trainer()}, extra={"Trainer": Trainer})
    with pytest.raises(CheckpointError, match="refused to unpickle a .*system"):
        read_checkpoint(evil)
    assert not marker.exists()
    sneaky = save_with_fake_modules(
        monkeypatch, tmp_path / "sneaky.pt",
        lambda *classes: {**old_checkpoint(*classes, state), "x": Sneaky()}, extra={"Sneaky": Sneaky})
    with pytest.raises(CheckpointError, match="refused to unpickle a fairseq.meters.Sneaky"):
        read_checkpoint(sneaky)


def write_wav2letter_vocab(path, words=WORDS):
    """As wav2letter's ConvLM recipe writes it: the header and specials, then dict.txt's first column."""
    path.write_text("<fairseq_style>\n<pad>\n</s>\n<unk>\n" + "".join(f"w{i}\n" for i in range(words)), encoding="utf-8")
    return path


def test_wav2letter_convlm_layout_imports_through_the_cli(tmp_path, monkeypatch, capsys):
    state = fairseq_state(SPEC, 4 + WORDS, 8, cutoffs=(10, 30))
    ckpt = save_with_fake_modules(monkeypatch, tmp_path / "lm_librispeech_convlm_word_14B.pt",
                                  lambda *classes: old_checkpoint(*classes, state))
    vocab_file = write_wav2letter_vocab(tmp_path / "lm_librispeech_convlm_word_14B.vocab")
    out = tmp_path / "converted"
    assert main(["import-fairseq", str(ckpt), str(vocab_file), str(out)]) == 0
    assert "10 convolution layers" in capsys.readouterr().out
    model = load(out)
    assert model.vocab.itos[:6] == ["<s>", "<pad>", "</s>", "<unk>", "w0", "w1"]
    assert model.vocab.bos_id == model.vocab.eos_id == 2
    # the same ids as fairseq's dict.txt of the same words
    assert model.vocab.itos == read_dictionary(write_dictionary(tmp_path / "dict.txt")).itos
    tokens = torch.randint(0, 4 + WORDS, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(model.next_token_log_probs(tokens), fairseq_log_probs(state, SPEC, tokens, (10, 30)),
                              atol=1e-5)


def test_bad_wav2letter_vocabularies_name_the_line(tmp_path):
    path = tmp_path / "lm.vocab"
    path.write_text("<fairseq_style>\n<pad>\n<unk>\n</s>\nthe\n")
    with pytest.raises(DataError, match=r"lm.vocab, line 3: .*<pad>, </s>, <unk> on lines 2-4; got '<unk>'"):
        read_dictionary(path)
    path.write_text("<fairseq_style>\n<pad>\n</s>\n<unk>\nthe\nof\nthe\n")
    with pytest.raises(DataError, match="line 7: 'the' is already in the vocabulary \\(line 5\\)"):
        read_dictionary(path)
    path.write_text("<fairseq_style>\n<pad>\n</s>\n<unk>\nthe 10\n")
    with pytest.raises(DataError, match="line 5: expected one word per line"):
        read_dictionary(path)
    path.write_text("<fairseq_style>\n<pad>\n")
    with pytest.raises(DataError, match="line 3: .*got 'the end of the file'"):
        read_dictionary(path)
    path.write_text("the\nof\n")  # a bare word list: neither format, and the message names both
    with pytest.raises(DataError, match="line 1: expected '<word> <count>' \\(fairseq dict.txt\\).*<fairseq_style>"):
        read_dictionary(path)
    ckpt = tmp_path / "c.pt"
    torch.save({"args": argparse.Namespace(arch="fconv_lm", decoder_layers=SPEC),
                "model": fairseq_state(SPEC, 4 + WORDS, 8, cutoffs=(10,))}, ckpt)
    with pytest.raises(CheckpointError, match="40 words = 44 tokens, but the embedding .* has 50 rows"):
        import_fairseq(ckpt, write_wav2letter_vocab(tmp_path / "short.vocab", words=40))
