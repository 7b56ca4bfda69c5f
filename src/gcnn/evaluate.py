"""Perplexity of a split (stream and sentence modes) and per-sentence scoring, for any :class:`LanguageModel`.

What is counted, exactly (``docs/evaluation.md`` has the long version):

* **Stream mode** (document corpora: WikiText, Shakespeare). The split's ids x_0 .. x_{N-1} are read as one stream
  preceded by one start marker (``<eos>``, the token that ends every line, so a document starts as it does in
  training). All N tokens count. With ``context`` C, token x_i is predicted from at least min(i+1, C) input tokens
  (the start marker counts as one): targets are scored in consecutive runs of ``stride`` S tokens, and the window of
  the run starting at t0 begins C-1 tokens before t0, so the last target of a run sees C+S-1 inputs. A model with a
  receptive field R <= C therefore gives exactly the result of one forward pass over the whole stream, whatever S;
  with S = 1 every token sees exactly min(i+1, C) inputs.
* **Sentence mode** (Billion Word, Penn Treebank). Each sentence (the ids up to and including each ``</s>``) is scored
  on its own with ``<s>`` prepended: ``<s>`` is an input only, every word and the final ``</s>`` count.
* ``<unk>`` targets count, as usual for WikiText, and their number is reported; ``exclude_unk`` drops them.

Perplexity = exp(sum of -log p over the counted tokens / their number).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from gcnn.errors import ConfigError, DataError, GcnnWarning, option
from gcnn.lm import IGNORE_INDEX, LanguageModel, inference

from gcnn.data.prepared import PreparedData

if TYPE_CHECKING:
    from gcnn.data.vocab import Vocabulary

DEFAULT_UNBOUNDED_CONTEXT = 512  # stream-mode context for models without a receptive field (recurrent ones)
MIN_DEFAULT_STRIDE = 512  # default stride = max(context, this): windows cost at most 2x a single pass
DEFAULT_BATCH_TOKENS = 16384  # input tokens per forward pass (windows or padded sentences)


@dataclass
class Perplexity:
    """The result of evaluating a split. ``nll`` is the summed negative log-likelihood (nats) of the ``tokens``
    that count; ``unk`` is how many targets were ``<unk>`` (counted, or excluded when ``unk_excluded``)."""

    nll: float
    tokens: int
    unk: int
    mode: str
    context: int | None
    stride: int | None
    unk_excluded: bool
    seconds: float

    @property
    def cross_entropy(self) -> float:
        """Mean negative log-likelihood per counted token, in nats."""
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def bits_per_token(self) -> float:
        return self.cross_entropy / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.cross_entropy)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(perplexity=self.perplexity, cross_entropy=self.cross_entropy, bits_per_token=self.bits_per_token)
        return out


@dataclass
class SentenceScore:
    """The score of one line: total natural-log probability of its ``tokens`` (the words and the final eos),
    how many words were out of the vocabulary, and optionally each token with its log-probability."""

    logprob: float
    tokens: int
    oov: int
    token_logprobs: list[tuple[str, float]] | None = None

    @property
    def log10prob(self) -> float:
        return self.logprob / math.log(10)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / self.tokens)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "logprob": self.logprob,
            "log10prob": self.log10prob,
            "tokens": self.tokens,
            "oov": self.oov,
            "perplexity": self.perplexity,
        }
        if self.token_logprobs is not None:
            out["token_logprobs"] = [[token, lp] for token, lp in self.token_logprobs]
        return out


# ---------------------------------------------------------------------------------------------------- shared core
def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _device(model: LanguageModel) -> torch.device:
    return next(model.parameters()).device


def target_log_probs(
    model: LanguageModel, inputs: np.ndarray, targets: np.ndarray, *, bf16: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> Tensor:
    """(B, T) inputs and targets (IGNORE_INDEX where a position does not count) -> (B, T) float32 log-probabilities
    of the targets on the CPU, 0 where ignored. Call inside :func:`inference`.

    At most ``batch_tokens`` positions go through the model at once: longer inputs are cut along time into pieces of
    ``batch_tokens // B`` positions, each continuing the previous through the model's cache (the same results as one
    pass), so memory is bounded whatever the length of a sequence."""
    device = _device(model)
    tokens = torch.from_numpy(inputs).to(device)
    wanted = torch.from_numpy(targets).to(device)
    piece = max(1, batch_tokens // max(1, tokens.shape[0]))
    with _autocast(device, bf16):
        if tokens.shape[1] <= piece:
            return model(tokens, wanted).target_log_probs.float().cpu()
        cache = model.new_cache(tokens.shape[0])
        parts = [
            model(tokens[:, start : start + piece], wanted[:, start : start + piece], cache=cache).target_log_probs.float().cpu()
            for start in range(0, tokens.shape[1], piece)
        ]
    return torch.cat(parts, dim=1)


def _padded(sequences: Sequence[np.ndarray], start_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets = each sequence; inputs = the start id then the sequence shifted right. Right-padded to one length
    (padding never influences earlier positions of a causal model; padded targets are IGNORE_INDEX)."""
    length = max(len(s) for s in sequences)
    inputs = np.full((len(sequences), length), start_id, dtype=np.int64)
    targets = np.full((len(sequences), length), IGNORE_INDEX, dtype=np.int64)
    for row, seq in enumerate(sequences):
        targets[row, : len(seq)] = seq
        inputs[row, 1 : len(seq)] = seq[:-1]
    return inputs, targets


def _length_batches(lengths: Sequence[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped by similar length (longest first), each group's padded size within ``batch_tokens``
    (a sequence longer than the budget gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[batch[0]] > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------------- perplexity
def stream_windows(
    num_tokens: int, context: int, stride: int, *, align_last: bool = False
) -> Iterator[tuple[int, int, int]]:
    """The windows of stream mode as ``(input_start, first_target, end)``, in target indices.

    The window's inputs are the stream z = [start marker, x_0, ..., x_{N-2}] at ``[input_start, end)``, its targets
    x at the same indices; only targets in ``[first_target, end)`` are scored, so each is scored exactly once.
    ``align_last``: the last window, when shorter, starts earlier so that it has the full context + stride - 1
    inputs (lm-evaluation-harness's rolling windows: ``context=1, stride=N`` gives exactly its windows of N).
    """
    _check_positive("context", context)
    _check_positive("stride", stride)
    for first in range(0, num_tokens, stride):
        end = min(first + stride, num_tokens)
        begin = max(0, first - context + 1)
        if align_last and end == num_tokens:
            begin = max(0, min(begin, end - (context + stride - 1)))
        yield begin, first, end


def stream_settings(model: LanguageModel, context: int | None, stride: int | None) -> tuple[int, int]:
    """Stream mode's ``(context, stride)`` with defaults filled in.

    Defaults: context = the model's receptive field (512 when it has none), stride = max(context, 512). A model
    that takes at most ``config.max_len`` positions at once (the Transformer) needs windows context + stride - 1
    <= max_len: its defaults split max_len between the two (context (max_len+1)//2, stride the rest). When the model
    was trained on shorter sequences (``model.trained_positions``, which :func:`gcnn.load` sets), that length
    replaces max_len: the positions past it were never trained.
    """
    limit = getattr(model.config, "max_len", None)
    trained = model.trained_positions
    if limit is not None and trained is not None and trained < limit:
        limit = trained
    if context is None:
        context = model.receptive_field or DEFAULT_UNBOUNDED_CONTEXT
        if limit is not None:
            context = min(context, (limit + 1) // 2)
    _check_positive("context", context)
    if context == 1 and model.receptive_field != 1:
        warnings.warn(
            f"{option('context')} 1: every token is predicted from one input token only (the one before it), not from "
            f"the {model.receptive_field or 'unbounded'} tokens the model can use", GcnnWarning, stacklevel=3,
        )
    if stride is None:
        stride = max(context, MIN_DEFAULT_STRIDE) if limit is None else max(1, limit - context + 1)
    _check_positive("stride", stride)
    if limit is not None and context + stride - 1 > limit:
        raise ConfigError(
            f"context {context} + stride {stride} - 1 exceeds the {limit} positions this model takes at once "
            + ("(max_len)" if limit == model.config.max_len else f"(its training context; max_len is "
               f"{model.config.max_len} but positions past {limit} were never trained)")
            + f"; lower {option('context')} or {option('stride')}"
        )
    return context, stride


def _stream_batch(ids: np.ndarray, windows: list[tuple[int, int, int]], start_id: int) -> tuple[np.ndarray, np.ndarray]:
    length = max(end - begin for begin, _, end in windows)
    inputs = np.full((len(windows), length), start_id, dtype=np.int64)
    targets = np.full((len(windows), length), IGNORE_INDEX, dtype=np.int64)
    for row, (begin, first, end) in enumerate(windows):
        n = end - begin
        if begin == 0:
            inputs[row, 1:n] = ids[: end - 1]  # inputs[row, 0] is the start marker
        else:
            inputs[row, :n] = ids[begin - 1 : end - 1]
        targets[row, first - begin : n] = ids[first:end]
    return inputs, targets


def _stream_batches(
    ids: np.ndarray, start_id: int, context: int, stride: int, batch_tokens: int, align_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    per_batch = max(1, batch_tokens // (context + stride - 1))
    windows: list[tuple[int, int, int]] = []
    for window in stream_windows(len(ids), context, stride, align_last=align_last):
        windows.append(window)
        if len(windows) == per_batch:
            yield _stream_batch(ids, windows, start_id)
            windows = []
    if windows:
        yield _stream_batch(ids, windows, start_id)


def sentence_spans(ids: np.ndarray, eos_id: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence: the ids up to and including each eos (and any tokens after the last)."""
    ends = np.flatnonzero(np.asarray(ids) == eos_id) + 1
    starts = np.concatenate([[0], ends[:-1]])
    spans = list(zip(starts.tolist(), ends.tolist()))
    last = int(ends[-1]) if len(ends) else 0
    if last < len(ids):
        spans.append((last, len(ids)))
    return spans


def _sentence_batches(
    ids: np.ndarray, start_id: int, eos_id: int, batch_tokens: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    spans = sentence_spans(ids, eos_id)
    lengths = [end - start for start, end in spans]
    for batch in _length_batches(lengths, batch_tokens):
        yield _padded([np.asarray(ids[spans[i][0] : spans[i][1]], dtype=np.int64) for i in batch], start_id)


def perplexity(
    model: LanguageModel,
    ids: np.ndarray | Sequence[int],
    *,
    mode: str = "stream",
    eos_id: int,
    bos_id: int | None = None,
    unk_id: int | None = None,
    exclude_unk: bool = False,
    context: int | None = None,
    stride: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    bf16: bool = False,
    progress: bool = False,
    align_last: bool = False,
) -> Perplexity:
    """Perplexity of ``model`` on the token ids ``ids`` (see the module docstring for what counts).

    ``align_last`` (stream mode): the last window keeps its full length (:func:`stream_windows`); with
    ``context=1, stride=N`` these are lm-evaluation-harness's disjoint windows of N tokens (docs/evaluation.md).

    ``mode`` is ``stream`` or ``sentence``. Stream mode: defaults for ``context`` and ``stride`` as in
    :func:`stream_settings`. Sentence mode: sentences end at ``eos_id`` and
    start with ``bos_id`` (``eos_id`` when the vocabulary has no ``<s>``). ``bf16`` runs under bf16 autocast.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) == 0:
        raise DataError("nothing to evaluate: the ids are empty")
    _check_positive("batch_tokens", batch_tokens)
    if mode == "stream":
        context, stride = stream_settings(model, context, stride)
        batches = _stream_batches(ids, eos_id, context, stride, batch_tokens, align_last)
        total = -(-len(ids) // stride)
    elif mode == "sentence":
        if context is not None or stride is not None:
            raise ConfigError(
                f"{option('context')} and {option('stride')} apply to stream mode only; sentence mode scores whole "
                "sentences"
            )
        batches = _sentence_batches(ids, eos_id if bos_id is None else bos_id, eos_id, batch_tokens)
        total = None
    else:
        raise ConfigError(f"mode must be 'stream' or 'sentence', got {mode!r}")
    began = time.perf_counter()
    nll, tokens, unk = _sum_nll(model, batches, unk_id, exclude_unk, bf16, progress, total, batch_tokens)
    return Perplexity(nll, tokens, unk, mode, context, stride, exclude_unk, time.perf_counter() - began)


def _sum_nll(
    model: LanguageModel,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    unk_id: int | None,
    exclude_unk: bool,
    bf16: bool,
    progress: bool,
    total: int | None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> tuple[float, int, int]:
    from tqdm import tqdm

    nll, tokens, unk = 0.0, 0, 0
    bar = tqdm(total=total, unit="window" if total else "batch", disable=not progress, leave=False)
    with inference(model), bar:
        for inputs, targets in batches:
            if unk_id is not None:
                is_unk = targets == unk_id
                unk += int(is_unk.sum())
                if exclude_unk:
                    targets[is_unk] = IGNORE_INDEX
            log_probs = target_log_probs(model, inputs, targets, bf16=bf16, batch_tokens=batch_tokens)
            nll -= float(log_probs.double().sum())
            tokens += int((targets != IGNORE_INDEX).sum())
            bar.update(len(inputs) if total else 1)
    return nll, tokens, unk


def evaluate_split(
    model: LanguageModel,
    data: "PreparedData | str | Path",
    split: str = "test",
    *,
    mode: str | None = None,
    **options: Any,
) -> Perplexity:
    """Perplexity on a split of a prepared-data folder, in its own mode unless ``mode`` is given; ``options`` as for
    :func:`perplexity`. Refuses data prepared with another vocabulary than the model's (``model.vocab``; where the
    model has none, data whose vocabulary has another size)."""
    if not isinstance(data, PreparedData):
        data = PreparedData.open(data)
    if model.vocab is not None:
        data.check_vocab(model.vocab)
    else:
        data.check_vocab_size(model.vocab_size)
    vocab = data.vocab
    return perplexity(
        model,
        data.split(split),
        mode=mode or data.mode,
        eos_id=vocab.eos_id,
        bos_id=vocab.bos_id,
        unk_id=vocab.unk_id,
        **options,
    )


# ---------------------------------------------------------------------------------------------------- scoring
def score_texts(
    model: LanguageModel,
    vocab: "Vocabulary",
    texts: Iterable[str],
    *,
    per_token: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    chunk_lines: int = 1024,
    bf16: bool = False,
) -> Iterator[SentenceScore]:
    """Score each text as an independent sentence, lazily and in input order (any number of texts, in chunks of
    ``chunk_lines``).

    A text is split into tokens as the corpus was (``vocab.tokenize``); words outside the vocabulary become
    ``<unk>`` and are counted as ``oov``. The tokens and a final eos are predicted from a start marker: ``<s>`` when
    the vocabulary has one (sentence corpora), else ``<eos>``, i.e. the text is scored as a line that follows the end
    of another line, as every line is in a stream corpus.
    """
    _check_positive("batch_tokens", batch_tokens)
    start_id = vocab.eos_id if vocab.bos_id is None else vocab.bos_id
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == chunk_lines:
            yield from _score_chunk(model, vocab, chunk, start_id, per_token, batch_tokens, bf16)
            chunk = []
    if chunk:
        yield from _score_chunk(model, vocab, chunk, start_id, per_token, batch_tokens, bf16)


def _score_chunk(
    model: LanguageModel,
    vocab: "Vocabulary",
    texts: list[str],
    start_id: int,
    per_token: bool,
    batch_tokens: int,
    bf16: bool,
) -> list[SentenceScore]:
    words = [vocab.tokenize(text) for text in texts]
    sequences = [np.asarray(vocab.encode(w) + [vocab.eos_id], dtype=np.int64) for w in words]
    scores: list[SentenceScore | None] = [None] * len(texts)
    with inference(model):
        for batch in _length_batches([len(s) for s in sequences], batch_tokens):
            inputs, targets = _padded([sequences[i] for i in batch], start_id)
            log_probs = target_log_probs(model, inputs, targets, bf16=bf16, batch_tokens=batch_tokens)
            for row, i in enumerate(batch):
                lps = log_probs[row, : len(sequences[i])].double()
                oov = sum(1 for w in words[i] if w not in vocab.stoi)
                detail = list(zip(words[i] + [vocab.eos], lps.tolist())) if per_token else None
                scores[i] = SentenceScore(float(lps.sum()), len(sequences[i]), oov, detail)
    return scores  # type: ignore[return-value]


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
