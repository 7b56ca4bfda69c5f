"""Synthetic CTC emissions: what an acoustic model's character posteriors look like, without an acoustic model.

:func:`emissions` turns a sentence into a (frames, labels) matrix of log-posteriors over :data:`LABELS` (blank, the
word separator, a-z, apostrophe): every character lasts 1-3 frames, blanks come between characters (always
between two equal ones, as CTC needs), and the acoustics are imperfect in the ways real ones are: a character is
often confused with one that sounds or looks alike (:data:`CONFUSIONS`; the model is then less sure, and the true
character keeps part of the mass), sometimes nearly lost in blanks, and every frame carries noise. Decoding the
argmax path gives word error rates like a weak acoustic model's; a language model has to bring them down.
"""

from __future__ import annotations

import re

import numpy as np

BLANK, SEPARATOR = "", " "
LETTERS = "abcdefghijklmnopqrstuvwxyz'"
LABELS = [BLANK, SEPARATOR, *LETTERS]  # index 0: CTC blank, 1: the word separator
INDEX = {c: i for i, c in enumerate(LABELS)}
CONFUSIONS = {  # characters an acoustic model mixes up: similar sounds
    "b": "pdv", "p": "bt", "d": "tb", "t": "dp", "g": "kc", "k": "gc", "c": "ksg", "s": "zc", "z": "s",
    "f": "vp", "v": "fb", "m": "n", "n": "m", "i": "ey", "e": "ia", "a": "eo", "o": "ua", "u": "o", "y": "ie",
    "l": "r", "r": "l", "w": "v", "j": "g", "q": "k", "x": "ks", "h": "e", "'": "s",
}
WORD = re.compile(r"^[a-z']+$")


def normalize(text: str) -> str:
    """Lowercase, and keep only the words made of letters and apostrophes (as :data:`LABELS` can spell)."""
    return " ".join(w for w in text.lower().split() if WORD.match(w))


def emissions(
    sentence: str,
    rng: np.random.Generator,
    *,
    confusion: float = 0.15,
    weak: float = 0.04,
    noise: float = 1.0,
    final_separator: bool = True,
) -> np.ndarray:
    """(frames, len(LABELS)) float32 CTC log-posteriors for ``sentence`` (normalized text: words of LABELS). With
    ``final_separator`` the last word ends with the separator too, as every word does in the letter lexicons of
    wav2letter's acoustic models (spellings "c a t |")."""
    frames: list[np.ndarray] = []
    size = len(LABELS)

    def frame(peaks: dict[int, float]) -> None:
        logits = rng.normal(0.0, noise, size)
        for index, logit in peaks.items():
            logits[index] += logit
        frames.append(logits)

    previous = None
    for char in sentence.strip() + (SEPARATOR if final_separator else ""):
        if char not in INDEX:
            raise ValueError(f"{char!r} is not one of the synthetic labels (normalize the text first)")
        true = INDEX[char]
        if previous == true or rng.random() < 0.5:  # blanks between characters
            for _ in range(int(rng.integers(1, 3))):
                frame({0: 8.0})
        duration = int(rng.integers(1, 4))
        roll = rng.random()
        if char != SEPARATOR and roll < confusion and char in CONFUSIONS:
            other = INDEX[rng.choice(list(CONFUSIONS[char]))]
            lead = float(rng.uniform(0.3, 1.5))  # the wrong character leads by a margin
            for _ in range(duration):
                frame({other: 6.0 + lead, true: 6.0})
        elif roll < confusion + weak:  # nearly lost in blanks
            for _ in range(duration):
                frame({0: 6.0, true: 5.0})
        else:
            for _ in range(duration):
                frame({true: 8.0})
        previous = true
    for _ in range(2):
        frame({0: 8.0})
    logits = np.stack(frames)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return log_probs.astype(np.float32)


def greedy(log_probs: np.ndarray) -> str:
    """The best path: argmax per frame, repeats merged, blanks removed."""
    out, previous = [], -1
    for index in log_probs.argmax(axis=1):
        if index != previous and index != 0:
            out.append(LABELS[index])
        previous = index
    return " ".join("".join(out).split())
