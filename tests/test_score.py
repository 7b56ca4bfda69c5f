"""Scoring sentences: log-probabilities against a direct computation, OOV counts, streaming, `gcnn score`."""

import io
import json
import math
import sys

import pytest
import torch

from gcnn.cli import main
from gcnn.evaluate import score_texts
from gcnn.io import load
from test_evaluate import direct_log_prob, make_run, word_vocab

LINES = ["the cat sat on a mat", "", "a zebra ran far , far away", "dog   dog dog"]


def expected_logprobs(model, vocab, text: str) -> list[float]:
    start = vocab.eos_id if vocab.bos_id is None else vocab.bos_id
    targets = vocab.encode(text.split()) + [vocab.eos_id]
    inputs = [start]
    out = []
    for target in targets:
        out.append(direct_log_prob(model, inputs, target))
        inputs = inputs + [target]
    return out


@pytest.mark.parametrize("sentences", [False, True])
def test_score_matches_direct_computation(tmp_path, sentences):
    vocab = word_vocab(sentences)
    model = load(make_run(tmp_path / "run", vocab, adaptive_cutoffs=()))
    vocab = model.vocab
    scores = list(score_texts(model, vocab, LINES, per_token=True, batch_tokens=9))
    assert len(scores) == len(LINES)
    for text, score in zip(LINES, scores):
        lps = expected_logprobs(model, vocab, text)
        assert score.tokens == len(text.split()) + 1  # the words and the end-of-line token
        assert score.logprob == pytest.approx(sum(lps), rel=1e-5)
        assert score.log10prob == pytest.approx(sum(lps) / math.log(10), rel=1e-5)
        assert score.perplexity == pytest.approx(math.exp(-sum(lps) / len(lps)), rel=1e-5)
        assert [t for t, _ in score.token_logprobs] == text.split() + [vocab.eos]
        assert [lp for _, lp in score.token_logprobs] == pytest.approx(lps, rel=1e-5)
    assert [s.oov for s in scores] == [0, 0, 2, 0]  # "zebra" and ","


def test_score_is_lazy_and_chunked(tmp_path):
    model = load(make_run(tmp_path / "run", word_vocab(), adaptive_cutoffs=()))
    vocab = model.vocab
    consumed = []

    def lines():
        for i in range(10):
            consumed.append(i)
            yield LINES[i % len(LINES)]

    scores = score_texts(model, vocab, lines(), chunk_lines=3)
    first = next(scores)
    assert consumed == [0, 1, 2]  # only the first chunk was read
    rest = list(scores)
    assert len(rest) == 9 and consumed == list(range(10))
    single = score_texts(model, vocab, [LINES[0]])
    assert first.logprob == pytest.approx(next(single).logprob, rel=1e-6)


def test_cli_score_stdin_and_file(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "run", word_vocab(sentences=True), adaptive_cutoffs=())
    model = load(run)
    vocab = model.vocab
    data = ("\n".join(LINES) + "\n").encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["score", str(run)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    expected = list(score_texts(model, vocab, LINES))
    for row, score in zip(rows, expected):
        assert row["logprob"] == pytest.approx(score.logprob, rel=1e-6)
        assert set(row) == {"line", "logprob", "log10prob", "tokens", "oov", "perplexity"}
    assert rows[2]["oov"] == 2

    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"))  # BOM and CRLF
    assert main(["score", str(run), "--input", str(path), "--per-token"]) == 0
    rows2 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["logprob"] for r in rows2] == pytest.approx([r["logprob"] for r in rows], rel=1e-6)
    assert rows2[0]["token_logprobs"][0][0] == "the" and rows2[0]["token_logprobs"][-1][0] == "</s>"


def test_cli_score_bad_input(tmp_path, capsys):
    run = make_run(tmp_path / "run", word_vocab(), adaptive_cutoffs=())
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the cat\nthe \xff dog\n")
    assert main(["score", str(run), "--input", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "line 2" in captured.err and "UTF-8" in captured.err
    assert main(["score", str(run), "--input", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err


def test_score_uses_the_model_state_not_training_noise(tmp_path):
    model = load(make_run(tmp_path / "run", word_vocab(), dropout=0.5, adaptive_cutoffs=()))
    vocab = model.vocab
    model.train()
    a = list(score_texts(model, vocab, LINES))
    b = list(score_texts(model, vocab, LINES))
    assert [s.logprob for s in a] == [s.logprob for s in b]
    assert model.training
    with torch.no_grad():
        assert a[0].logprob == pytest.approx(sum(expected_logprobs(model.eval(), vocab, LINES[0])), rel=1e-5)
