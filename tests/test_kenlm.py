"""KenLM's interfaces on gcnn models: gcnn.kenlm.Model side by side with the real kenlm module (same fields, types,
<s>/</s> conventions), `gcnn score --format kenlm` as KenLM's query prints, `gcnn next` / top_next."""

import io
import math
import re
import sys

import pytest
import torch

import gcnn
import gcnn.kenlm
from gcnn.cli import main
from gcnn.decoding import top_next
from gcnn.evaluate import score_texts
from gcnn.io import load
from test_evaluate import make_run, word_vocab

ARPA = """\\data\\
ngram 1=8
ngram 2=3

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.5
-0.7\t</s>\t0
-0.6\tthe\t-0.3
-0.8\tcat\t-0.2
-0.9\tsat\t-0.1
-1.1\tmat\t-0.1
-1.2\ton\t-0.1

\\2-grams:
-0.2\t<s> the
-0.3\tthe cat
-0.4\tcat sat

\\end\\
"""
SENTENCES = ["the cat sat", "the zebra sat on the mat", "cat", "", "mat <unk> the"]


@pytest.fixture
def model_folder(tmp_path):
    return make_run(tmp_path / "run", word_vocab(sentences=True), adaptive_cutoffs=())


def check_like_kenlm(model, sentence, words):
    scores = list(model.full_scores(sentence))
    assert len(scores) == len(words) + 1  # every word, then </s>
    for log10p, length, oov in scores:
        assert type(log10p) is float and type(length) is int and type(oov) is bool
        assert log10p <= 0 and length >= 1
    assert scores[-1][2] is False  # </s> is never an OOV
    assert [oov for _, _, oov in scores[:-1]] == [w not in model for w in words]
    assert len(list(model.full_scores(sentence, eos=False))) == len(words)
    total = model.score(sentence)
    assert type(total) is float and total == pytest.approx(sum(s[0] for s in scores), abs=1e-4)
    assert model.score(sentence, bos=False, eos=False) == pytest.approx(
        sum(s[0] for s in model.full_scores(sentence, bos=False, eos=False)), abs=1e-4)
    assert model.perplexity(sentence) == pytest.approx(10 ** (-total / (len(words) + 1)), rel=1e-6)
    return scores


def test_side_by_side_with_kenlm(tmp_path, model_folder):
    kenlm = pytest.importorskip("kenlm")
    arpa = tmp_path / "tiny.arpa"
    arpa.write_text(ARPA)
    theirs = kenlm.Model(str(arpa))
    ours = gcnn.kenlm.Model(model_folder)
    for sentence in SENTENCES:
        words = sentence.split()
        a = check_like_kenlm(theirs, sentence, words)
        b = check_like_kenlm(ours, sentence, words)
        assert [oov for _, _, oov in a] == [oov for _, _, oov in b]  # same OOV words in both vocabularies
        assert a[0][1] >= 2 if words and words[0] == "the" else True  # KenLM: <s> the is a bigram
        if words:
            assert b[0][1] == 2  # the first word depends on <s> and itself
    for word in ("<s>", "</s>", "the", "cat"):
        assert (word in theirs) and (word in ours)
    for word in ("<unk>", "zebra"):
        assert not (word in theirs) and not (word in ours)
    assert isinstance(ours.order, int) and isinstance(theirs.order, int)


def test_scores_are_gcnns(model_folder):
    ours = gcnn.kenlm.Model(model_folder)
    model = load(model_folder)
    for sentence, score in zip(SENTENCES, score_texts(model, model.vocab, SENTENCES)):
        assert ours.score(sentence) == pytest.approx(score.log10prob, rel=1e-5, abs=1e-6)
    field = model.receptive_field
    lengths = [length for _, length, _ in ours.full_scores(" ".join(["the"] * (field + 3)))]
    assert lengths == [min(i + 1, field) + 1 for i in range(field + 4)]  # capped by the receptive field


def test_score_format_kenlm_prints_what_query_prints(model_folder, capsys, monkeypatch):
    data = ("\n".join(SENTENCES) + "\n").encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["score", str(model_folder), "--format", "kenlm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(SENTENCES) + 4
    ours = gcnn.kenlm.Model(model_folder)
    vocab = ours.vocab
    field = re.compile(r"^(\S+)=(\d+) (\d+) (-?[0-9.e+-]+)$")
    total_all, oov_all, tokens = 0.0, 0, 0
    for sentence, line in zip(SENTENCES, lines):
        *fields, total = line.split("\t")
        parsed = [field.match(f).groups() for f in fields]
        words = sentence.split()
        assert [p[0] for p in parsed] == words + ["</s>"]
        assert [int(p[1]) for p in parsed] == [0 if w not in ours else vocab.stoi[w] + 1 for w in words] + [
            vocab.eos_id + 1]
        expected = list(ours.full_scores(sentence))
        assert [int(p[2]) for p in parsed] == [length for _, length, _ in expected]
        assert [float(p[3]) for p in parsed] == pytest.approx([lp for lp, _, _ in expected], rel=1e-5, abs=1e-5)
        oov = sum(1 for w in words if w not in ours)
        assert re.fullmatch(r"Total: (-?[0-9.e+-]+) OOV: (\d+)", total)
        assert float(total.split()[1]) == pytest.approx(ours.score(sentence), rel=1e-5)
        assert int(total.split()[3]) == oov
        total_all += ours.score(sentence)
        oov_all += oov
        tokens += len(words) + 1
    assert lines[-4].startswith("Perplexity including OOVs:\t")
    assert float(lines[-4].split("\t")[1]) == pytest.approx(10 ** (-total_all / tokens), rel=1e-5)
    assert lines[-3].startswith("Perplexity excluding OOVs:\t")
    assert lines[-2] == f"OOVs:\t{oov_all}" and lines[-1] == f"Tokens:\t{tokens}"


def test_top_next_and_gcnn_next(model_folder, capsys):
    model = load(model_folder)
    ranked = top_next(model, model.vocab, "the cat", 5)
    assert len(ranked) == 5 and [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    start = model.vocab.bos_id
    with torch.no_grad():
        probs = model.next_token_log_probs(torch.tensor([[start] + model.vocab.encode(["the", "cat"])]))[0, -1].exp()
    best = probs.topk(5)
    assert [t for t, _ in ranked] == [model.vocab.itos[i] for i in best.indices.tolist()]
    assert [p for _, p in ranked] == pytest.approx(best.values.tolist(), rel=1e-6)
    assert gcnn.kenlm.Model(model_folder).top_next("the cat", 5) == ranked
    assert main(["next", str(model_folder), "--prompt", "the cat", "--top-k", "3"]) == 0
    out = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [t for t, _ in out] == [t for t, _ in ranked[:3]]
    assert sum(math.isclose(float(p), q, rel_tol=1e-5) for (_, p), (_, q) in zip(out, ranked)) == 3
    assert main(["next", str(model_folder), "--top-k", "0"]) == 2
