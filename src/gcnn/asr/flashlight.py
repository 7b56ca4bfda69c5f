"""A gcnn language model for flashlight-text's beam-search decoders (PyPI ``flashlight-text``, tested with 0.0.7).

:class:`GcnnFlashlightLM` is a ``flashlight.lib.text.decoder.LM``: ``start``, ``score`` and ``finish``, with
flashlight's own ``LMState`` objects (made with ``LMState.child``, so a hypothesis' state is the node of its history
in flashlight's state trie) mapped to :class:`gcnn.scorer.State`. Two ways of feeding it:

* ``LexiconDecoder`` (``tokens=None``): the decoder scores whole words; their labels in the lexicon trie are the
  model's vocabulary ids (:func:`lexicon_trie` builds the trie from spellings, with unigram scores for smearing).
* ``LexiconFreeDecoder`` (``tokens=`` the acoustic model's token list, ``separator=`` the word-boundary token): the
  decoder scores every emitted token; the LM spells words out of them and scores a word when its separator (or the
  end) comes, 0 for the tokens inside a word, and ``unk_score_offset`` once when a partial word stops being the
  prefix of any known word.

Scores are natural-log probabilities; the decoder applies its ``lm_weight`` (alpha) and ``word_score`` (beta)::

    lm = GcnnFlashlightLM(gcnn.load("models/wt2-words"))
    trie = lexicon_trie(lm, spellings, len(tokens), sil_index)  # spellings: {word: [token ids]}
    options = LexiconDecoderOptions(beam_size=50, beam_size_token=30, beam_threshold=25, lm_weight=0.8,
                                    word_score=1.0, unk_score=-inf, sil_score=0, log_add=False,
                                    criterion_type=CriterionType.CTC)
    decoder = LexiconDecoder(options, trie, lm, sil_index, blank_index, lm.vocab.unk_id, [], False)
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from flashlight.lib.text.decoder import LM, LMState, SmearingMode, Trie

from gcnn.asr.common import DEFAULT_UNK_OFFSET, check_weight, prefixes, word_id, word_scorer
from gcnn.errors import ConfigError, option
from gcnn.lm import LanguageModel
from gcnn.scorer import Scorer, State

AVG_WORD_CHARS = 6  # each character of an unknown word past its first non-prefix one costs unk_score_offset / this


class GcnnFlashlightLM(LM):
    """flashlight-text LM over a word-level gcnn model (any architecture) or a :class:`Scorer`."""

    def __init__(
        self,
        model: LanguageModel | Scorer,
        *,
        tokens: Sequence[str] | None = None,
        separator: int | None = None,
        unk_score_offset: float = DEFAULT_UNK_OFFSET,
        cache_mb: float = 256.0,
    ) -> None:
        LM.__init__(self)
        self.scorer = word_scorer(model, cache_mb, "GcnnFlashlightLM")
        self.vocab = self.scorer.model.vocab
        self.unk_score_offset = check_weight("unk_score_offset", unk_score_offset)
        self.tokens = None if tokens is None else list(tokens)
        if self.tokens is not None:
            if separator is None or not 0 <= separator < len(self.tokens):
                raise ConfigError(f"{option('separator')}: the index of the word-boundary token in tokens, got {separator!r}")
            specials = {self.vocab.unk, self.vocab.eos, self.vocab.bos}
            self._prefixes = prefixes(w for w in self.vocab.itos if w not in specials)
        self.separator = separator
        self._states: dict[LMState, tuple[State, str]] = {}

    # ---- flashlight's interface
    def start(self, start_with_nothing: bool) -> LMState:
        """A fresh root state (the decoder calls this once per utterance; the scorer's cache is kept)."""
        self._states.clear()
        root = LMState()
        self._states[root] = (self.scorer.start(), "")
        return root

    def score(self, state: LMState, token: int) -> tuple[LMState, float]:
        context, partial = self._states[state]
        child = state.child(token)
        if self.tokens is None:  # a word id
            log_prob = self.scorer.log_prob(context, token)
            self._states.setdefault(child, (self.scorer.child(context, token), ""))
            return child, log_prob
        if token == self.separator:
            if not partial:  # a boundary after a boundary (or at the start): nothing to score
                self._states.setdefault(child, (context, ""))
                return child, 0.0
            log_prob, after = self._word(context, partial)
            self._states.setdefault(child, (after, ""))
            return child, log_prob
        spelled = partial + self.tokens[token]
        self._states.setdefault(child, (context, spelled))
        if not partial or self._is_prefix(partial):
            return child, (0.0 if self._is_prefix(spelled) else self.unk_score_offset)
        return child, self.unk_score_offset / AVG_WORD_CHARS  # an unknown word grows: it costs by its length

    def finish(self, state: LMState) -> tuple[LMState, float]:
        """The end of the utterance: the last partial word (lexicon-free decoding), then </s>."""
        context, partial = self._states[state]
        log_prob = 0.0
        if partial:
            log_prob, context = self._word(context, partial)
        return state, log_prob + self.scorer.end_score(context)

    # ---- helpers
    def _is_prefix(self, text: str) -> bool:
        return (text.lower() if self.vocab.lowercase else text) in self._prefixes

    def _word(self, context: State, word: str) -> tuple[float, State]:
        token = word_id(self.vocab, word)
        penalty = 0.0
        if token is None:  # unknown: penalized here unless it was when it stopped being a prefix
            token = self.vocab.unk_id
            penalty = self.unk_score_offset if self._is_prefix(word) else 0.0
        log_prob = self.scorer.log_prob(context, token) + penalty
        return log_prob, self.scorer.child(context, token)


def lexicon_trie(
    lm: GcnnFlashlightLM,
    spellings: Mapping[str, Sequence[int]],
    num_tokens: int,
    sil_index: int,
    *,
    smearing: str = "max",
) -> Trie:
    """flashlight's lexicon trie for ``LexiconDecoder`` over ``num_tokens`` acoustic tokens: each word of
    ``spellings`` (word -> its token ids, e.g. its letters then the word separator) under its
    vocabulary id, scored by its unigram log-probability after the start marker, then smeared (``max``, ``logadd`` or
    ``none``). Words outside the model's vocabulary are refused: give the decoder only words the LM knows."""
    modes = {"max": SmearingMode.MAX, "logadd": SmearingMode.LOGADD, "none": SmearingMode.NONE}
    if smearing not in modes:
        raise ConfigError(f"{option('smearing')} must be one of {', '.join(modes)}, got {smearing!r}")
    unknown = [w for w in spellings if word_id(lm.vocab, w) is None]
    if unknown:
        raise ConfigError(f"lexicon words outside the model's vocabulary: {', '.join(map(repr, unknown[:5]))}")
    root = lm.scorer.start()
    unigrams = lm.scorer.log_probs([root])[0].tolist()
    trie = Trie(num_tokens, sil_index)
    for word, spelling in spellings.items():
        if not spelling:
            raise ConfigError(f"lexicon word {word!r} has an empty spelling")
        token = word_id(lm.vocab, word)
        trie.insert(list(spelling), token, unigrams[token] if math.isfinite(unigrams[token]) else -1e9)
    trie.smear(modes[smearing])
    return trie
