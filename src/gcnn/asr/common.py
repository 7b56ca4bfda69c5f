"""What both decoder plug-ins share: a scorer over a word-level model, and the word lookups."""

from __future__ import annotations

from typing import Any

from gcnn.errors import ConfigError, option
from gcnn.lm import LanguageModel
from gcnn.scorer import Scorer

DEFAULT_UNK_OFFSET = -10.0  # natural-log penalty for a word outside the LM's vocabulary (pyctcdecode's default)


def word_scorer(model: LanguageModel | Scorer, cache_mb: float, what: str) -> Scorer:
    """A :class:`Scorer` over ``model`` (or ``model`` itself), checked to have a word-level vocabulary."""
    scorer = model if isinstance(model, Scorer) else Scorer(model, cache_mb=cache_mb)
    vocab = getattr(scorer.model, "vocab", None)
    if vocab is None:
        raise ConfigError(f"{what} needs a model with its vocabulary (gcnn.load gives one; or set model.vocab)")
    if vocab.splitter == "bpe":
        raise ConfigError(f"{what} scores words: this model's vocabulary is BPE pieces; use a word-level model")
    return scorer


def word_id(vocab: Any, word: str) -> int | None:
    """The id of a decoded word in ``vocab`` (lowercased first where the vocabulary is), or None when unknown."""
    return vocab.stoi.get(word.lower() if vocab.lowercase else word)


def prefixes(words: Any) -> frozenset[str]:
    """Every non-empty prefix of every word: a partial word outside this set can no longer become a known word."""
    out: set[str] = set()
    for word in words:
        for end in range(1, len(word) + 1):
            out.add(word[:end])
    return frozenset(out)


def check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{option(name)} must be a number, got {value!r}")
    return float(value)
