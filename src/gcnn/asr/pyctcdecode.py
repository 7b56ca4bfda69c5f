"""A gcnn language model for pyctcdecode's CTC beam search (PyPI ``pyctcdecode``, tested with 0.5.0)::

    from pyctcdecode import BeamSearchDecoderCTC, Alphabet
    from gcnn.asr.pyctcdecode import GcnnLanguageModel

    lm = GcnnLanguageModel(gcnn.load("models/wt2-words"), alpha=0.5, beta=1.0)
    decoder = BeamSearchDecoderCTC(Alphabet.build_alphabet(labels), language_model=lm)
    text = decoder.decode(log_probs)                         # (time, labels) CTC log-posteriors

It implements pyctcdecode's ``AbstractLanguageModel`` as its KenLM wrapper does, with the same parameters and
meaning, in natural logs: a word scores ``alpha * log p(word | history) + beta``; a word outside the model's
vocabulary scores ``log p(<unk> | history) + unk_score_offset``; a partial word that is no longer the prefix of any
known word costs ``unk_score_offset`` (scaled by length past 6 characters); with ``score_boundary`` a sentence is
predicted from the start marker and its end adds ``log p(</s>)``. Histories are :class:`gcnn.scorer.State` objects,
so equal histories share the computed state.
"""

from __future__ import annotations

import logging
from typing import Any

# pyctcdecode warns at import that kenlm is not installed: not about this language model, so not shown
_logs = [logging.getLogger(f"pyctcdecode.{name}") for name in ("decoder", "language_model")]
_levels = [log.level for log in _logs]
for _log in _logs:
    _log.setLevel(logging.ERROR)
try:
    from pyctcdecode.constants import AVG_TOKEN_LEN, DEFAULT_ALPHA, DEFAULT_BETA
    from pyctcdecode.language_model import AbstractLanguageModel
finally:
    for _log, _level in zip(_logs, _levels):
        _log.setLevel(_level)

from gcnn.asr.common import DEFAULT_UNK_OFFSET, check_weight, prefixes, word_id, word_scorer
from gcnn.lm import LanguageModel
from gcnn.scorer import Scorer, State

UNBOUNDED_ORDER = 1_000_000  # the "n-gram order" of a model that sees its whole history (LSTM, Transformer)


class GcnnLanguageModel(AbstractLanguageModel):
    """pyctcdecode language model over a word-level gcnn model (any architecture) or a :class:`Scorer`."""

    def __init__(
        self,
        model: LanguageModel | Scorer,
        *,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        unk_score_offset: float = DEFAULT_UNK_OFFSET,
        score_boundary: bool = True,
        cache_mb: float = 256.0,
    ) -> None:
        self.scorer = word_scorer(model, cache_mb, "GcnnLanguageModel")
        self.vocab = self.scorer.model.vocab
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.unk_score_offset = check_weight("unk_score_offset", unk_score_offset)
        self.score_boundary = bool(score_boundary)
        specials = {self.vocab.unk, self.vocab.eos, self.vocab.bos}
        self._prefixes = prefixes(w for w in self.vocab.itos if w not in specials)

    @property
    def order(self) -> int:
        """The n-gram order pyctcdecode's history pruning keys on (it keeps order - 1 words of history): a GCNN's
        next word depends on its last ``receptive_field`` tokens, so it is a (receptive_field + 1)-gram model."""
        return self.scorer.window + 1 if self.scorer.window else UNBOUNDED_ORDER

    def get_start_state(self) -> State:
        return self.scorer.start()

    def score_partial_token(self, partial_token: str) -> float:
        text = partial_token.lower() if self.vocab.lowercase else partial_token
        if text in self._prefixes:
            return 0.0
        score = self.unk_score_offset
        if len(partial_token) > AVG_TOKEN_LEN:
            score = score * len(partial_token) / AVG_TOKEN_LEN
        return score

    def score(self, prev_state: State, word: str, is_last_word: bool = False) -> tuple[float, State]:
        """(alpha * log p(word [, </s>] | prev_state) + beta, the state after the word). ``word`` may be empty
        at the end of an utterance: then only the end of the sentence is scored, with no word bonus."""
        state, log_prob, bonus = prev_state, 0.0, 0.0
        if word:
            token = word_id(self.vocab, word)
            if token is None:
                token = self.vocab.unk_id
                log_prob += self.unk_score_offset
            log_prob += self.scorer.log_prob(prev_state, token)
            state = self.scorer.child(prev_state, token)
            bonus = self.beta
        if is_last_word and self.score_boundary:
            log_prob += self.scorer.end_score(state)
        return self.alpha * log_prob + bonus, state

    def reset_params(self, **params: Any) -> None:
        """Change alpha, beta, unk_score_offset or score_boundary (what ``BeamSearchDecoderCTC.reset_params`` passes)."""
        for name in ("alpha", "beta", "unk_score_offset"):
            if params.get(name) is not None:
                setattr(self, name, check_weight(name, params[name]))
        if params.get("score_boundary") is not None:
            self.score_boundary = bool(params["score_boundary"])
