"""KenLM's Python interface on a gcnn model: scripts written for ``kenlm.Model`` run unchanged.

    import gcnn.kenlm as kenlm
    model = kenlm.Model("models/wt2")          # any gcnn model folder (an ARPA/binary path is not accepted)
    model.score("the cat sat", bos=True, eos=True)            # log10 probability of the words and </s>
    for log10p, ngram_length, oov in model.full_scores("the cat sat"): ...
    model.perplexity("the cat sat"); "cat" in model; model.order

Conventions, as KenLM's: log10 probabilities (float); ``full_scores`` yields one ``(log10p, ngram_length, oov)``
(float, int, bool) per word and then one for ``</s>`` (with ``eos``; its ``oov`` is False); ``score`` is their sum;
``perplexity(s) = 10 ** (-score(s) / (words + 1))``; ``word in model`` is False for OOV words and for ``<unk>``,
True for ``<s>``/``</s>`` where the vocabulary has them. ``bos=True`` conditions the first word on the start of a
sentence: gcnn's start marker (``<s>``, or ``<eos>`` for stream vocabularies, where a line follows a line end).

What differs, because the model is not an n-gram model: ``ngram_length`` is the number of tokens the prediction
depends on, the word included: min(history, receptive field) + 1, where the history counts the start marker (KenLM's
``<s>``) and the words before; OOV words are read as ``<unk>`` and stay in the context. ``bos=False`` (KenLM's null
context) has no exact counterpart: the first word is predicted from ``<unk>`` (an unknown preceding word), which
does not count in ``ngram_length``. Sentences are split into tokens as the corpus was (``str.split`` for whitespace
vocabularies, as KenLM does; punctuation/lower-casing/BPE rules otherwise).

:meth:`Model.top_next` gives what KenLM cannot: the most probable next tokens after a prompt.
:func:`query_lines` formats scores as KenLM's ``query`` program prints them (``gcnn score --format kenlm``).
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Iterator

import torch

from gcnn.decoding import top_next
from gcnn.evaluate import score_texts
from gcnn.io import load, require_vocab
from gcnn.lm import inference

LOG10 = math.log(10)


class Model:
    """A gcnn model with ``kenlm.Model``'s methods (module docstring)."""

    def __init__(self, path: str | os.PathLike, config: object = None, *, device: str | torch.device = "cpu"):
        self.path = os.fspath(path)
        self.model = load(path, device=device)
        self.vocab = require_vocab(self.model, "gcnn.kenlm.Model")

    @property
    def order(self) -> int | None:
        """The n-gram order of the model's context: receptive field + 1 (None for unbounded recurrent models)."""
        field = self.model.receptive_field
        return None if field is None else field + 1

    def __contains__(self, word: str) -> bool:
        return word in self.vocab.stoi and word != self.vocab.unk

    def __repr__(self) -> str:
        return f"<gcnn.kenlm.Model from {self.path}>"

    def full_scores(self, sentence: str, bos: bool = True, eos: bool = True) -> Iterator[tuple[float, int, bool]]:
        """``(log10 probability, ngram_length, oov)`` of each word, then of ``</s>`` when ``eos``."""
        vocab = self.vocab
        words = vocab.tokenize(sentence)
        ids = vocab.encode(words)
        targets = ids + ([vocab.eos_id] if eos else [])
        if not targets:
            return
        start = (vocab.eos_id if vocab.bos_id is None else vocab.bos_id) if bos else vocab.unk_id
        inputs = [start] + targets[:-1]
        device = next(self.model.parameters()).device
        with inference(self.model):
            log_probs = self.model.next_token_log_probs(torch.tensor([inputs], device=device))[0]
        chosen = log_probs.gather(1, torch.tensor(targets, device=device).unsqueeze(1))[:, 0].double().cpu().tolist()
        field = self.model.receptive_field
        for i, lp in enumerate(chosen):
            history = i + 1 if bos else i
            length = (history if field is None else min(history, field)) + 1
            oov = i < len(words) and not words[i] in self  # <unk> itself counts, as KenLM's id 0
            yield float(lp / LOG10), int(length), bool(oov)

    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """log10 probability of the sentence's words (and of ``</s>`` with ``eos``)."""
        return float(sum(lp for lp, _, _ in self.full_scores(sentence, bos=bos, eos=eos)))

    def perplexity(self, sentence: str) -> float:
        words = len(self.vocab.tokenize(sentence)) + 1  # </s> counts
        return 10.0 ** (-self.score(sentence) / words)

    def top_next(self, prompt: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` most probable next tokens after ``prompt`` with their probabilities (:func:`gcnn.decoding.top_next`)."""
        return top_next(self.model, self.vocab, prompt, k)


LanguageModel = Model  # kenlm's other name for it


def kenlm_id(vocab, word: str) -> int:
    """The id printed for ``word`` in KenLM's format: 0 for words outside the vocabulary and for ``<unk>`` (as
    KenLM's <unk>), else gcnn's id + 1."""
    return 0 if word == vocab.unk or word not in vocab.stoi else vocab.stoi[word] + 1


def query_lines(model, vocab, texts: Iterable[str], **options) -> Iterator[str]:
    """What KenLM's ``query`` prints for ``texts`` (one sentence each): per sentence one line of
    ``word=id ngram_length log10p`` fields, tab-separated, ending with ``</s>`` and ``Total: <log10> OOV: <n>``; then
    the summary lines (perplexity including and excluding OOVs, OOV count, token count)."""
    field = model.receptive_field
    total_all = total_oov = 0.0
    oov_all = tokens_all = 0
    for score in score_texts(model, vocab, texts, per_token=True, **options):
        parts = []
        total, oov = 0.0, 0
        for i, (word, lp) in enumerate(score.token_logprobs):
            log10p = lp / LOG10
            length = min(i + 1, field) + 1 if field is not None else i + 2
            last = i == len(score.token_logprobs) - 1
            is_oov = not last and (word not in vocab.stoi or word == vocab.unk)
            if is_oov:
                oov += 1
                total_oov += log10p
            total += log10p
            shown = "</s>" if last else word
            parts.append(f"{shown}={kenlm_id(vocab, vocab.eos if last else word)} {length} {log10p:.6g}\t")
        tokens_all += len(score.token_logprobs)
        total_all += total
        oov_all += oov
        yield "".join(parts) + f"Total: {total:.6g} OOV: {oov}"
    if tokens_all:
        including = 10.0 ** (-total_all / tokens_all)
        excluding = 10.0 ** (-(total_all - total_oov) / (tokens_all - oov_all)) if tokens_all > oov_all else float("nan")
        yield f"Perplexity including OOVs:\t{including:.6g}"
        yield f"Perplexity excluding OOVs:\t{excluding:.6g}"
        yield f"OOVs:\t{oov_all}"
        yield f"Tokens:\t{tokens_all}"


__all__ = ["LanguageModel", "Model", "kenlm_id", "query_lines"]
