"""Word and character error rates: Levenshtein distance over words or characters, summed over a corpus."""

from __future__ import annotations

from typing import Sequence


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_rate(refs: Sequence[str], hyps: Sequence[str], *, unit: str = "word") -> float:
    """Corpus error rate: the summed edit distances over the summed reference lengths, in words (WER) or in
    characters of the space-normalized texts (CER)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = total = 0
    for ref, hyp in zip(refs, hyps):
        if unit == "word":
            r, h = ref.split(), hyp.split()
        elif unit == "char":
            r, h = " ".join(ref.split()), " ".join(hyp.split())
        else:
            raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
        errors += edit_distance(r, h)
        total += len(r)
    return errors / max(total, 1)


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, unit="word")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, unit="char")
