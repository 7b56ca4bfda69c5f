"""gcnn rescore: n-best lists rescored with LM log-probabilities and a word bonus, re-ranked, tuned on WER."""

import json

import pytest

from gcnn.asr.rescore import add_lm_scores, read_nbest, rerank, tune
from gcnn.cli import main
from gcnn.errors import DataError
from gcnn.evaluate import score_texts
from gcnn.io import load
from test_evaluate import make_run, word_vocab

PAIRS = [  # two hypotheses per utterance
    ("the cat sat on a mat", "the cat sat on mat"),
    ("a dog ran far", "a dog ran far far away"),
    ("the mat sat", "a cat on the mat"),
    ("dog dog", "the dog"),
    ("a cat ran", "the cat ran"),
]


@pytest.fixture
def setup(tmp_path):
    run = make_run(tmp_path / "run", word_vocab(True), adaptive_cutoffs=())
    model = load(run)
    lines, refs = [], []
    for i, (a, b) in enumerate(PAIRS):
        la, lb = (s.logprob for s in score_texts(model, model.vocab, [a, b]))
        # the acoustics slightly prefer the hypothesis the LM likes less; the reference is the one the LM likes
        worse, better = (a, b) if la < lb else (b, a)
        lines += [f"utt{i}\t-10.0\t{better}", f"utt{i}\t-9.99\t{worse}"]
        refs.append(f"utt{i}\t{better}")
    nbest = tmp_path / "dev.nbest"
    nbest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ref = tmp_path / "dev.ref"
    ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
    return run, model, nbest, ref


def test_scores_are_acoustic_plus_weighted_lm_plus_word_bonus(setup, tmp_path, capsys):
    run, model, nbest, ref = setup
    out = tmp_path / "rescored"
    assert main(["rescore", str(run), str(nbest), "--lm-weight", "0.7", "--word-bonus", "0.25",
                 "--output", str(out)]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(rows) == 2 * len(PAIRS)
    for row in rows:
        utt, score, acoustic, lm, text = row
        expected_lm = next(score_texts(model, model.vocab, [text])).logprob
        assert float(lm) == pytest.approx(expected_lm, abs=1e-3)
        assert float(score) == pytest.approx(float(acoustic) + 0.7 * expected_lm + 0.25 * len(text.split()), abs=2e-3)
    for i in range(0, len(rows), 2):  # best first within each utterance, utterances in input order
        assert rows[i][0] == rows[i + 1][0] == f"utt{i // 2}" and float(rows[i][1]) >= float(rows[i + 1][1])
    # weight 0: the acoustic order; --best writes one line per utterance
    assert main(["rescore", str(run), str(nbest), "--lm-weight", "0", "--best", "--refs", str(ref)]) == 0
    captured = capsys.readouterr()
    best = [line.split("\t") for line in captured.out.splitlines()]
    assert [b[1] for b in best] == [l.split("\t")[2] for l in nbest.read_text().splitlines()[1::2]]
    assert json.loads(captured.err)["wer"] > 0


def test_tune_picks_the_weights_with_the_lowest_wer(setup, capsys):
    run, model, nbest, ref = setup
    assert main(["rescore", str(run), str(nbest), "--refs", str(ref), "--tune", "--best"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.err)
    assert report["acoustic_only_wer"] > 0 and report["wer"] == 0.0 and report["lm_weight"] > 0
    assert report["oracle_wer"] == 0.0
    refs = dict(line.split("\t") for line in ref.read_text().splitlines())
    assert dict(line.split("\t") for line in captured.out.splitlines()) == refs
    # the library's grid: its choice is the grid's minimum
    hyps = read_nbest(nbest)
    add_lm_scores(model, hyps)
    tuning = tune(hyps, refs, lm_weights=[0.0, 0.5, 1.0], word_bonuses=[0.0])
    assert tuning.wer == min(g[2] for g in tuning.grid)
    ranked = rerank(hyps, tuning.lm_weight, tuning.word_bonus)
    assert all(ranked[u][0].text == refs[u] for u in ranked)


def test_bad_input_is_named(setup, tmp_path, capsys):
    run, _, nbest, ref = setup
    bad = tmp_path / "bad.nbest"
    for content, message in [
        ("utt1\t-1.0\tthe cat\nutt1 -2.0 the dog\n", "bad.nbest, line 2: expected 3 tab-separated fields"),
        ("utt1\tlow\tthe cat\n", "line 1: acoustic_score 'low' is not a number"),
        ("utt1\tnan\tthe cat\n", "line 1: needs an utt_id and a finite acoustic_score"),
        ("\n\n", "bad.nbest: no hypotheses"),
    ]:
        bad.write_text(content)
        assert main(["rescore", str(run), str(bad)]) == 2
        assert message in capsys.readouterr().err
    bad.write_bytes(b"utt1\t-1\tok\nutt2\t-1\t\xff\n")
    assert main(["rescore", str(run), str(bad)]) == 2
    assert "bad.nbest, line 2: not valid UTF-8" in capsys.readouterr().err
    assert main(["rescore", str(run), str(nbest), "--tune"]) == 2
    assert "--tune needs --refs" in capsys.readouterr().err
    partial = tmp_path / "partial.ref"
    partial.write_text("utt0\tthe cat\n")
    assert main(["rescore", str(run), str(nbest), "--tune", "--refs", str(partial)]) == 2
    assert "--refs: no reference for utterance(s) 'utt1'" in capsys.readouterr().err
    out = tmp_path / "never"
    assert main(["rescore", str(run), str(nbest), "--tune", "--refs", str(partial), "--output", str(out)]) == 2
    assert not out.exists()  # nothing half-written
