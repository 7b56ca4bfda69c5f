"""Evaluation: stream and sentence perplexity against direct computations on a tiny model; `gcnn eval`."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import gcnn
from gcnn.cli import main
from gcnn.data import Corpus, Vocabulary, prepare
from gcnn.errors import CheckpointError, ConfigError
from gcnn.evaluate import evaluate_split, perplexity, sentence_spans, stream_windows

V = 80  # gcnn-tiny's cutoffs (20, 60) fit
WORDS = "the cat sat on a mat and dog ran far away from big red house".split()


def tiny_model(seed: int = 0, vocab_size: int = V, **overrides) -> gcnn.LanguageModel:
    torch.manual_seed(seed)
    return gcnn.build_model("gcnn-tiny", vocab_size=vocab_size, **overrides).eval()


def word_vocab(sentences: bool = False) -> Vocabulary:
    """A word vocabulary of WORDS (+ specials): `<s>`/`</s>` when ``sentences``, else `<eos>`."""
    counts = {w: 100 - i for i, w in enumerate(WORDS)}
    if sentences:
        return Vocabulary.from_counts(counts, eos="</s>", bos="<s>")
    return Vocabulary.from_counts(counts)


def make_run(folder: Path, vocab: Vocabulary, seed: int = 0, arch: str = "gcnn-tiny", **overrides) -> Path:
    """A model folder as `gcnn train` writes it: config.json, model.safetensors and vocab.json."""
    torch.manual_seed(seed)
    model = gcnn.build_model(arch, vocab_size=len(vocab), **overrides)
    gcnn.io.write_model(model, folder, vocab=vocab)
    return folder


def direct_log_prob(model, inputs: list[int], target: int) -> float:
    """log p(target | inputs) from one forward pass over exactly ``inputs``."""
    with torch.no_grad():
        lp = model.next_token_log_probs(torch.tensor([inputs]), positions=[len(inputs) - 1])
    return float(lp[0, 0, target])


def random_ids(n: int, seed: int = 0, vocab_size: int = V) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, n).astype(np.uint16)


# --------------------------------------------------------------------------------------------- stream mode
@pytest.mark.parametrize("context,stride", [(3, 1), (4, 1), (3, 5), (5, 4)])
def test_stream_nll_equals_each_token_scored_with_its_own_window(context, stride):
    """Context below the receptive field (7), so the windows matter: every token is scored once, with the inputs
    the docstring promises: z[first - context + 1 .. i] where z = [<eos>] + x and first starts its run."""
    model = tiny_model()
    assert model.receptive_field > context
    ids = random_ids(23)
    eos = 5
    z = [eos] + ids.tolist()
    expected = 0.0
    for i in range(len(ids)):
        first = i // stride * stride
        begin = max(0, first - context + 1)
        window = z[begin : i + 1]
        assert len(window) >= min(i + 1, context)
        if stride == 1:
            assert len(window) == min(i + 1, context)
        expected -= direct_log_prob(model, window, int(ids[i]))
    result = perplexity(model, ids, eos_id=eos, context=context, stride=stride, batch_tokens=20)
    assert result.tokens == len(ids)
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected / len(ids)), rel=1e-5)
    assert result.bits_per_token == pytest.approx(expected / len(ids) / math.log(2), rel=1e-5)


@pytest.mark.parametrize("stride,batch_tokens", [(1, 7), (4, 50), (10, 1000), (512, 16384)])
def test_stream_with_full_context_equals_one_forward_pass(stride, batch_tokens):
    model = tiny_model(1)
    ids = random_ids(97, seed=1)
    eos = 3
    inputs = torch.tensor([[eos] + ids[:-1].tolist()])
    with torch.no_grad():
        full = model(inputs, torch.tensor([ids.tolist()]).long())
    full_nll = -float(full.target_log_probs.double().sum())
    for context in (model.receptive_field, model.receptive_field + 3):
        result = perplexity(model, ids, eos_id=eos, context=context, stride=stride, batch_tokens=batch_tokens)
        assert result.tokens == len(ids) == full.num_tokens
        assert result.nll == pytest.approx(full_nll, abs=1e-5 * len(ids))
    # a context shorter than the receptive field truncates (unless one window holds everything): the test could fail
    short = perplexity(model, ids, eos_id=eos, context=2, stride=stride, batch_tokens=batch_tokens)
    assert (abs(short.nll - full_nll) > 1e-3) == (stride < len(ids))


def test_stream_defaults_to_the_receptive_field():
    model = tiny_model()
    result = perplexity(model, random_ids(30), eos_id=0)
    assert result.context == model.receptive_field == 7
    assert result.stride == 512


def test_stream_windows_cover_every_target_once():
    for n, c, s in [(1, 1, 1), (10, 3, 4), (100, 25, 512), (57, 9, 8)]:
        covered = [t for _, first, end in stream_windows(n, c, s) for t in range(first, end)]
        assert covered == list(range(n))
        for begin, first, end in stream_windows(n, c, s):
            assert begin == max(0, first - c + 1) and end - first <= s


# --------------------------------------------------------------------------------------------- sentence mode
def test_sentence_mode_scores_each_sentence_alone_with_bos():
    model = tiny_model(2)
    bos, eos = 79, 1
    sentences = [[4, 9, 10, eos], [eos], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, eos], [7, 8]]  # last lacks </s>
    ids = np.array([t for s in sentences for t in s])
    expected = 0.0
    for sentence in sentences:
        inputs = [bos]
        for target in sentence:
            expected -= direct_log_prob(model, inputs, target)
            inputs = inputs + [target]
    result = perplexity(model, ids, mode="sentence", eos_id=eos, bos_id=bos, batch_tokens=12)
    assert result.tokens == len(ids)  # every word and every </s>; <s> never
    assert result.nll == pytest.approx(expected, rel=1e-5)
    # the same ids as one stream give a different number: sentences really are independent
    stream = perplexity(model, ids, eos_id=eos)
    assert abs(stream.nll - expected) > 1e-3


def test_sentence_spans():
    assert sentence_spans(np.array([3, 4, 1, 1, 5, 1, 6]), 1) == [(0, 3), (3, 4), (4, 6), (6, 7)]
    assert sentence_spans(np.array([3, 4]), 1) == [(0, 2)]


def test_sentence_mode_rejects_stream_options():
    with pytest.raises(ConfigError, match="stream mode only"):
        perplexity(tiny_model(), random_ids(10), mode="sentence", eos_id=1, bos_id=2, context=5)
    with pytest.raises(ConfigError, match="mode"):
        perplexity(tiny_model(), random_ids(10), mode="document", eos_id=1)


# --------------------------------------------------------------------------------------------- counting <unk>
def test_unk_is_counted_by_default_and_can_be_excluded():
    model = tiny_model(3)
    ids = random_ids(40, seed=3)
    unk = int(ids[5])
    n_unk = int((ids == unk).sum())
    counted = perplexity(model, ids, eos_id=0, unk_id=unk)
    assert counted.unk == n_unk and counted.tokens == len(ids)
    excluded = perplexity(model, ids, eos_id=0, unk_id=unk, exclude_unk=True)
    assert excluded.unk == n_unk and excluded.tokens == len(ids) - n_unk
    # the excluded tokens' NLL is exactly what is missing
    eos_z = [0] + ids.tolist()
    missing = -sum(direct_log_prob(model, eos_z[max(0, i - 6) : i + 1], unk) for i in np.flatnonzero(ids == unk))
    assert counted.nll - excluded.nll == pytest.approx(missing, rel=1e-4)


def test_evaluation_uses_eval_mode_and_restores_training_mode():
    model = tiny_model(4, dropout=0.5).train()
    ids = random_ids(50)
    a = perplexity(model, ids, eos_id=0)
    b = perplexity(model, ids, eos_id=0)
    assert a.nll == b.nll  # no dropout noise
    assert model.training


def test_bf16_autocast_is_close_to_fp32():
    model = tiny_model(5)
    ids = random_ids(200, seed=5)
    fp32 = perplexity(model, ids, eos_id=0)
    bf16 = perplexity(model, ids, eos_id=0, bf16=True)
    assert bf16.perplexity == pytest.approx(fp32.perplexity, rel=0.05)


# --------------------------------------------------------------------------------------------- prepared data and CLI
def prepared_corpus(tmp_path: Path, fmt: str = "wikitext") -> Path:
    rng = np.random.default_rng(0)
    files = {}
    for split, lines in (("train", 60), ("valid", 10), ("test", 12)):
        text = "".join(" ".join(rng.choice(WORDS, rng.integers(3, 12))) + "\n" for _ in range(lines))
        if split == "test":
            text += "zebra the quokka\n"  # out-of-vocabulary words -> <unk>
        files[split] = (tmp_path / f"{split}.txt",)
        files[split][0].write_text(text)
    out = tmp_path / f"prepared-{fmt}"
    prepare(Corpus(files, format=fmt), out)
    return out


@pytest.mark.parametrize("fmt", ["wikitext", "sentences"])
def test_evaluate_split_matches_perplexity_on_the_ids(tmp_path, fmt):
    from gcnn.data import PreparedData

    folder = prepared_corpus(tmp_path, fmt)
    data = PreparedData.open(folder)
    model = tiny_model(vocab_size=data.vocab_size, adaptive_cutoffs=())
    result = evaluate_split(model, folder, "test")
    assert result.mode == data.mode == ("sentence" if fmt == "sentences" else "stream")
    assert result.tokens == data.num_tokens("test")
    assert result.unk == int((data.split("test") == data.vocab.unk_id).sum()) == 2
    direct = perplexity(model, data.split("test"), mode=data.mode, eos_id=data.vocab.eos_id, bos_id=data.vocab.bos_id)
    assert result.nll == pytest.approx(direct.nll, rel=1e-6)


def test_cli_eval_json_and_text(tmp_path, capsys):
    from gcnn.data import PreparedData

    folder = prepared_corpus(tmp_path)
    data = PreparedData.open(folder)
    run = make_run(tmp_path / "run", data.vocab, adaptive_cutoffs=())
    assert main(["eval", str(run), "--data", str(folder), "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = gcnn.load(run)
    expected = evaluate_split(model, data, "test")
    assert report["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert report["tokens"] == data.num_tokens("test") and report["unk"] == 2
    assert report["bits_per_token"] == pytest.approx(report["cross_entropy"] / math.log(2))
    assert report["split"] == "test" and report["mode"] == "stream"

    assert main(["eval", str(run), "--data", str(folder), "--split", "valid", "--context", "3", "--stride", "2"]) == 0
    text = capsys.readouterr().out
    valid = perplexity(model, data.split("valid"), eos_id=data.vocab.eos_id, context=3, stride=2)
    assert f"{valid.perplexity:.2f}" in text and "<unk>" in text


def test_cli_eval_refuses_a_different_vocabulary(tmp_path, capsys):
    folder = prepared_corpus(tmp_path)
    other = Vocabulary.from_counts({w: 10 for w in WORDS + ["extra"]})
    run = make_run(tmp_path / "run", other, adaptive_cutoffs=())
    assert main(["eval", str(run), "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    from gcnn.data import PreparedData

    size = PreparedData.open(folder).vocab_size
    assert f"{len(other)}" in err and f"{size}" in err


def test_cli_eval_refuses_same_size_but_different_tokens(tmp_path, capsys):
    from gcnn.data import PreparedData

    folder = prepared_corpus(tmp_path)
    vocab = PreparedData.open(folder).vocab
    shuffled = Vocabulary(list(reversed(vocab.itos)), unk=vocab.unk, eos=vocab.eos, splitter=vocab.splitter)
    run = make_run(tmp_path / "run", shuffled, adaptive_cutoffs=())
    assert main(["eval", str(run), "--data", str(folder)]) == 2
    assert "different tokens" in capsys.readouterr().err


def test_cli_eval_bad_options(tmp_path, capsys):
    folder = prepared_corpus(tmp_path)
    from gcnn.data import PreparedData

    run = make_run(tmp_path / "run", PreparedData.open(folder).vocab, adaptive_cutoffs=())
    assert main(["eval", str(run), "--data", str(folder), "--context", "0"]) == 2
    assert "context" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), "--data", str(folder)]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_model_folder_without_its_vocabulary(tmp_path, capsys):
    """It loads (model.vocab is None); what needs a vocabulary asks for --vocab, which must be the model's."""
    vocab = word_vocab()
    run = make_run(tmp_path / "run", vocab)
    (run / "vocab.json").unlink()
    assert gcnn.load(run).vocab is None
    lines = tmp_path / "lines.txt"
    lines.write_text("the cat\n")
    assert main(["score", str(run), "--input", str(lines)]) == 2
    err = capsys.readouterr().err
    assert "gcnn score needs the model's vocabulary" in err and "pass --vocab" in err
    assert main(["score", str(run), "--input", str(lines), "--vocab", str(vocab.save(tmp_path / "v.json"))]) == 0
    with pytest.raises(CheckpointError, match=rf"has 3 tokens but the model in .* has vocab_size {len(vocab)}"):
        gcnn.load(run, vocab=Vocabulary.from_counts({"a": 1}).save(tmp_path / "small.json"))


# --------------------------------------------------------------------------------------------- baselines
def baseline(name: str, seed: int = 0) -> gcnn.LanguageModel:
    torch.manual_seed(seed)
    return gcnn.build_model(name, vocab_size=V).eval()


def test_stream_mode_on_an_lstm_defaults_to_512_tokens_of_context():
    model = baseline("lstm-tiny")
    assert model.receptive_field is None
    ids = random_ids(60, seed=6)
    result = perplexity(model, ids, eos_id=0)
    assert (result.context, result.stride) == (512, 512)
    with torch.no_grad():  # 60 tokens fit one window: the same as one pass over the stream
        full = model(torch.tensor([[0] + ids[:-1].tolist()]), torch.tensor([ids.tolist()]).long())
    assert result.nll == pytest.approx(-float(full.target_log_probs.sum()), rel=1e-5)
    windowed = perplexity(model, ids, eos_id=0, context=4, stride=1)
    z = [0] + ids.tolist()
    expected = -sum(direct_log_prob(model, z[max(0, i - 3) : i + 1], int(ids[i])) for i in range(len(ids)))
    assert windowed.nll == pytest.approx(expected, rel=1e-5)


def test_stream_windows_fit_a_transformers_positions():
    model = baseline("transformer-tiny")  # max_len 64
    ids = random_ids(150, seed=7)
    result = perplexity(model, ids, eos_id=0)
    assert result.context + result.stride - 1 <= 64 and result.context == 32
    assert result.tokens == 150
    with pytest.raises(ConfigError, match="max_len"):
        perplexity(model, ids, eos_id=0, context=40, stride=30)


def test_stream_windows_stay_within_a_transformers_training_context(tmp_path):
    """Positions past the training context were never trained: a run trained on 16 tokens with max_len 64 is
    evaluated in windows of at most 16 positions (its run.json says so), and refuses longer explicit windows."""
    run = make_run(tmp_path / "tf", word_vocab(), arch="transformer-tiny")
    (run / "run.json").write_text(json.dumps({"train_config": {"context": 16}}))
    model = gcnn.load(run)
    assert model.trained_positions == 16
    result = perplexity(model, random_ids(100, seed=3, vocab_size=model.vocab_size), eos_id=0)
    assert result.context + result.stride - 1 <= 16 and result.tokens == 100
    with pytest.raises(ConfigError, match="positions past 16 were never trained"):
        perplexity(model, random_ids(100, vocab_size=model.vocab_size), eos_id=0, context=10, stride=10)
    (run / "run.json").write_text(json.dumps({"train_config": {"context": 64}}))  # trained on all its positions
    assert gcnn.load(run).trained_positions is None
