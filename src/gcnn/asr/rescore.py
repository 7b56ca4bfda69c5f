"""N-best rescoring: add a weighted LM log-probability and a word bonus to each hypothesis' acoustic score.

The n-best format (what most toolkits can write; Kaldi's ``nbest-to-linear`` + text, ESPnet's or NeMo's n-best
dumps reshaped with one ``awk``): UTF-8 text, one hypothesis per line, three tab-separated fields::

    utt_id <TAB> acoustic_score <TAB> text

``acoustic_score`` is a log-score (higher is better, e.g. the decoder's total score without its LM, natural log);
the hypotheses of an utterance need not be adjacent, their order is kept for ties. Reference files for tuning are
``utt_id <TAB> text``. Rescored output has five fields, best first within each utterance, utterances in the order
they first appear::

    utt_id <TAB> score <TAB> acoustic_score <TAB> lm_logprob <TAB> text

with ``score = acoustic_score + lm_weight * lm_logprob + word_bonus * words``; ``lm_logprob`` is the natural-log
probability of the text and its end (:func:`gcnn.evaluate.score_texts`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from gcnn.asr.metrics import wer
from gcnn.errors import DataError, option
from gcnn.evaluate import score_texts
from gcnn.lm import LanguageModel

DEFAULT_LM_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
DEFAULT_WORD_BONUSES = (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


@dataclass
class Hypothesis:
    utt_id: str
    acoustic: float
    text: str
    lm_logprob: float = 0.0

    @property
    def words(self) -> int:
        return len(self.text.split())

    def score(self, lm_weight: float, word_bonus: float) -> float:
        return self.acoustic + lm_weight * self.lm_logprob + word_bonus * self.words


def _lines(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8") from None
    return text.lstrip("\ufeff").splitlines()


def read_nbest(path: str | os.PathLike) -> list[Hypothesis]:
    """The hypotheses of an n-best file (format in the module docstring); DataError naming the line at fault."""
    out = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(
                f"{path}, line {number}: expected 3 tab-separated fields 'utt_id, acoustic_score, text', "
                f"got {len(fields)}"
            )
        utt, score, text = fields
        try:
            acoustic = float(score)
        except ValueError:
            raise DataError(f"{path}, line {number}: acoustic_score {score!r} is not a number") from None
        if not math.isfinite(acoustic) or not utt.strip():
            raise DataError(f"{path}, line {number}: needs an utt_id and a finite acoustic_score, got {line!r}")
        out.append(Hypothesis(utt.strip(), acoustic, " ".join(text.split())))
    if not out:
        raise DataError(f"{path}: no hypotheses")
    return out


def read_references(path: str | os.PathLike) -> dict[str, str]:
    refs: dict[str, str] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip():
            raise DataError(f"{path}, line {number}: expected 'utt_id <TAB> text'")
        if fields[0].strip() in refs:
            raise DataError(f"{path}, line {number}: utterance {fields[0].strip()!r} listed twice")
        refs[fields[0].strip()] = " ".join(fields[1].split())
    return refs


def add_lm_scores(model: LanguageModel, hypotheses: Sequence[Hypothesis], *, batch_tokens: int = 16384) -> None:
    """Fill each hypothesis' ``lm_logprob`` (each distinct text scored once)."""
    texts = list(dict.fromkeys(h.text for h in hypotheses))
    scores = {t: s.logprob for t, s in zip(texts, score_texts(model, model.vocab, texts, batch_tokens=batch_tokens))}
    for h in hypotheses:
        h.lm_logprob = scores[h.text]


def rerank(hypotheses: Iterable[Hypothesis], lm_weight: float, word_bonus: float) -> dict[str, list[Hypothesis]]:
    """utt_id -> its hypotheses, best first (stable: ties keep the input order)."""
    groups: dict[str, list[Hypothesis]] = {}
    for h in hypotheses:
        groups.setdefault(h.utt_id, []).append(h)
    return {u: sorted(hs, key=lambda h: -h.score(lm_weight, word_bonus)) for u, hs in groups.items()}


def format_ranked(ranked: dict[str, list[Hypothesis]], lm_weight: float, word_bonus: float) -> str:
    lines = [
        f"{h.utt_id}\t{h.score(lm_weight, word_bonus):.4f}\t{h.acoustic:.4f}\t{h.lm_logprob:.4f}\t{h.text}"
        for hs in ranked.values() for h in hs
    ]
    return "\n".join(lines) + "\n"


def best_wer(ranked: dict[str, list[Hypothesis]], refs: dict[str, str]) -> float:
    utts = list(ranked)
    return wer([refs[u] for u in utts], [ranked[u][0].text for u in utts])


@dataclass
class Tuning:
    lm_weight: float
    word_bonus: float
    wer: float
    acoustic_only_wer: float
    oracle_wer: float
    grid: list[tuple[float, float, float]]  # (lm_weight, word_bonus, wer)


def tune(
    hypotheses: Sequence[Hypothesis],
    refs: dict[str, str],
    *,
    lm_weights: Sequence[float] = DEFAULT_LM_WEIGHTS,
    word_bonuses: Sequence[float] = DEFAULT_WORD_BONUSES,
) -> Tuning:
    """Grid search of (lm_weight, word_bonus) minimizing the 1-best WER against ``refs`` (ties: the first in grid
    order, smaller weights first). Needs ``lm_logprob`` filled (:func:`add_lm_scores`)."""
    missing = sorted({h.utt_id for h in hypotheses} - set(refs))
    if missing:
        raise DataError(f"{option('refs')}: no reference for utterance(s) {', '.join(map(repr, missing[:5]))}")
    grid = []
    for lw in lm_weights:
        for wb in word_bonuses:
            grid.append((lw, wb, best_wer(rerank(hypotheses, lw, wb), refs)))
    lw, wb, best = min(grid, key=lambda g: g[2])
    groups = rerank(hypotheses, 0.0, 0.0)
    oracle = {u: [min(hs, key=lambda h: wer([refs[u]], [h.text]))] for u, hs in groups.items()}
    return Tuning(lw, wb, best, best_wer(groups, refs), best_wer(oracle, refs), grid)
