"""Generation with incremental decoding, and the sampling filters as small pure functions.

:func:`generate` feeds the prompts once (the part all prompts share in length, in one call) and then one token per
call, passing the model's cache along: a GCNN's convolutions keep their last k-1 inputs, so a new token costs work
proportional to layers x k, not to the length of the context. Prompts of different lengths share a batch: while a
row is still inside its prompt, its next prompt token is fed instead of a generated one.

Filters act on (batch, vocab) logits or log-probabilities and return new tensors; removed entries become -inf.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor

from gcnn.errors import ConfigError, GcnnWarning, option
from gcnn.lm import LanguageModel, inference

if TYPE_CHECKING:
    from gcnn.data import Vocabulary


class UnknownWordWarning(GcnnWarning):
    """Words of a prompt that are not in the vocabulary (they are fed as ``<unk>``)."""


# ---------------------------------------------------------------------------------------------------- filters
def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide by ``temperature`` (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of each row (ties at the k-th value are all kept)."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the most probable entries whose probabilities sum to at least ``p`` (0 < p <= 1);
    the most probable entry is always kept."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the entries ranked above each one
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_next(
    log_probs: Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(batch, vocab) log-probabilities -> (batch,) next token ids: the argmax when ``greedy``, else a sample after
    temperature, top-k and top-p (in that order)."""
    if greedy:
        return log_probs.argmax(dim=-1)
    logits = apply_temperature(log_probs.float(), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_tokens: int) -> None:
    """ConfigError naming the option whose value cannot be used."""
    if not temperature > 0:
        raise ConfigError(f"{option('temperature')} must be > 0 (use greedy decoding for the argmax), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"{option('top_k')} must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{option('top_p')} must be in (0, 1], got {top_p}")
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ConfigError(f"{option('max_tokens')} must be a non-negative integer, got {max_tokens!r}")


# ---------------------------------------------------------------------------------------------------- generation
def generate_steps(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    banned_ids: Sequence[int] = (),
    seed: int | None = None,
) -> Iterator[list[int | None]]:
    """Continue each prompt (a non-empty list of token ids, its first usually the start marker) by up to
    ``max_tokens`` tokens, all prompts in one batch, yielding after every decoding step each row's new token (None
    for a row still reading its prompt or already finished), so that callers can show tokens as they come.

    A row stops early when it generates ``eos_id`` (included in its output). ``banned_ids`` are never generated.
    ``seed`` makes sampling reproducible; greedy decoding is deterministic anyway.
    """
    check_sampling(temperature, top_k, top_p, max_tokens)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token (the start marker)")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    lengths = [len(p) for p in prompts]
    common = min(lengths)
    produced = [0] * len(prompts)
    done = [max_tokens == 0] * len(prompts)
    with inference(model):
        cache = model.new_cache(len(prompts))
        prefix = torch.tensor([list(p[:common]) for p in prompts], dtype=torch.long, device=device)
        log_probs = model.next_token_log_probs(prefix, positions=[common - 1], cache=cache)[:, 0]
        position = common  # sequence index of the token chosen next
        while not all(done):
            if banned_ids:
                log_probs[:, list(banned_ids)] = float("-inf")
            chosen = choose_next(
                log_probs, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            ).tolist()
            column, new = [], []
            for row, prompt in enumerate(prompts):
                if position < lengths[row]:
                    column.append(int(prompt[position]))
                    new.append(None)
                    continue
                if done[row]:
                    new.append(None)
                else:
                    new.append(chosen[row])
                    produced[row] += 1
                    done[row] = produced[row] == max_tokens or chosen[row] == eos_id
                column.append(chosen[row])  # finished rows keep being fed something; their outputs are final
            yield new
            if all(done):
                break
            step = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)
            log_probs = model.next_token_log_probs(step, cache=cache)[:, 0]
            position += 1


def generate(model: LanguageModel, prompts: Sequence[Sequence[int]], *, max_tokens: int, **options) -> list[list[int]]:
    """The generated ids of each prompt: :func:`generate_steps` (same options) collected."""
    outputs: list[list[int]] = [[] for _ in prompts]
    for new in generate_steps(model, prompts, max_tokens=max_tokens, **options):
        for row, token in enumerate(new):
            if token is not None:
                outputs[row].append(token)
    return outputs


def encode_prompt(vocab: "Vocabulary", text: str) -> list[int]:
    """The ids of a prompt as the model is conditioned on it: the start marker (``<s>``, or ``<eos>`` for stream
    corpora, where every line follows an ``<eos>``) and then the text's tokens. Words outside the vocabulary become
    ``<unk>`` with an :class:`UnknownWordWarning`."""
    tokens = vocab.tokenize(text)
    unknown = [t for t in tokens if t not in vocab.stoi]
    if unknown:
        shown = ", ".join(repr(t) for t in dict.fromkeys(unknown[:10]))
        warnings.warn(
            f"prompt words not in the vocabulary, fed as {vocab.unk}: {shown}", UnknownWordWarning, stacklevel=2
        )
    start = vocab.eos_id if vocab.bos_id is None else vocab.bos_id
    return [start] + vocab.encode(tokens)


def _text_options(vocab: "Vocabulary", stop_at_eos: bool | None, allow_unk: bool) -> tuple[int | None, list[int]]:
    """(the id that ends generation, or None; the ids never generated) for text generation with ``vocab``."""
    if stop_at_eos is None:
        stop_at_eos = vocab.bos_id is not None
    banned = [i for i in (vocab.bos_id, None if allow_unk else vocab.unk_id) if i is not None]
    return (vocab.eos_id if stop_at_eos else None), banned


def generate_text(
    model: LanguageModel,
    vocab: "Vocabulary",
    prompts: str | Sequence[str],
    *,
    max_tokens: int,
    stop_at_eos: bool | None = None,
    allow_unk: bool = True,
    **sampling,
) -> list[str]:
    """Continue each text prompt (or the one prompt given as a string); returns the continuations as text
    (``sampling``: ``greedy``, ``temperature``, ``top_k``, ``top_p``, ``seed`` as for :func:`generate_steps`).

    ``stop_at_eos`` defaults to True for sentence vocabularies (``</s>`` ends the sentence, and is not printed) and
    to False for stream ones, where ``<eos>`` only ends a line and is written as a line break. ``<s>`` is never
    generated; ``<unk>`` only when ``allow_unk``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    eos_id, banned = _text_options(vocab, stop_at_eos, allow_unk)
    ids = [encode_prompt(vocab, text) for text in prompts]
    outputs = generate(model, ids, max_tokens=max_tokens, eos_id=eos_id, banned_ids=banned, **sampling)
    return [ids_to_text(vocab, out) for out in outputs]


def stream_text(
    model: LanguageModel,
    vocab: "Vocabulary",
    prompt: str,
    *,
    max_tokens: int,
    stop_at_eos: bool | None = None,
    allow_unk: bool = True,
    **sampling,
) -> Iterator[str]:
    """The continuation of one prompt as pieces of text, each yielded as soon as it is settled: a word as soon as it
    is generated (for BPE pieces, a word once the next one starts), a line break once the line after it begins.
    Joined, the pieces are exactly :func:`generate_text`'s text for the same options."""
    eos_id, banned = _text_options(vocab, stop_at_eos, allow_unk)
    ids = [encode_prompt(vocab, prompt)]
    words_in_line, word, pending_break = 0, [], False
    bpe = vocab.splitter == "bpe"

    def flush() -> str:
        nonlocal words_in_line, word
        text = ("" if words_in_line == 0 else " ") + vocab.detokenize(vocab.decode(word)) if word else ""
        words_in_line += bool(word)
        word = []
        return text

    for (token,) in generate_steps(model, ids, max_tokens=max_tokens, eos_id=eos_id, banned_ids=banned, **sampling):
        if token is None:
            continue
        if token == vocab.eos_id:
            if piece := flush():
                yield piece
            if pending_break:
                yield "\n"
            pending_break, words_in_line = True, 0  # a final eos is dropped, as ids_to_text drops it
            continue
        if pending_break:
            yield "\n"
            pending_break = False
        if word and (not bpe or vocab.itos[token].startswith("\u2581")):  # a new word starts: the last one is settled
            yield flush()
        word.append(token)
    if piece := flush():
        yield piece


def ids_to_text(vocab: "Vocabulary", ids: Sequence[int]) -> str:
    """Generated ids as text: a final eos dropped, every other eos a line break."""
    ids = list(ids)
    if ids and ids[-1] == vocab.eos_id:
        ids.pop()
    lines: list[list[int]] = [[]]
    for i in ids:
        if i == vocab.eos_id:
            lines.append([])
        else:
            lines[-1].append(i)
    return "\n".join(vocab.detokenize(vocab.decode(line)) for line in lines)


# ---------------------------------------------------------------------------------------------------- running batch
@dataclass(eq=False)
class BatchRow:
    """One sequence of a :class:`RunningBatch`: its prompt, options and what it has generated so far.

    ``tokens``/``logprobs``: the generated ids and each one's natural-log probability under the model (before
    temperature and filters); ``top``: for each, the ``top_logprobs`` most probable ids with their log-probabilities.
    ``prompt_logprobs`` (when asked for): for each prompt token after the first, its log-probability given the ones
    before and the top alternatives there. ``finish_reason`` is None while the row runs, then ``"length"`` (max_tokens
    reached), ``"stop"`` (generated ``eos_id``, or stopped by the caller with that reason) or the caller's reason.
    ``tag`` is the caller's, untouched.
    """

    prompt: list[int]
    max_tokens: int
    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_id: int | None = None
    banned_ids: tuple[int, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0
    want_prompt_logprobs: bool = False
    tag: Any = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None
    finish_reason: str | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class _Group:
    """Rows that share one cache (and so one forward call per step)."""

    def __init__(self, rows: list[BatchRow], cache: Any) -> None:
        self.rows = rows
        self.cache = cache


class RunningBatch:
    """Sequences that decode together while rows join and leave between steps (continuous batching).

    :meth:`add` queues a row; every :meth:`step` first reads the prompts of the rows added since the last step (rows
    whose prompts have the same length in one call), then feeds every running row its last token, and gives every
    row one new token; rows that are done leave the batch at the end of the step. Rows share a forward pass when
    their caches can be stacked (``cache.can_stack``): always for the GCNN (each row's convolution state is its own
    last k-1 inputs) and the LSTM, only at the same position for the Transformer's key-value cache. Each row keeps
    its own sampling options and random generator, so a row's tokens do not depend on which others share its steps
    (up to floating-point summation order in batched matrix products). Greedy rows get :func:`generate`'s tokens;
    sampled rows draw with :func:`sample_row` (the same distribution as :func:`choose_next`, another random stream).

    Not thread-safe: one thread owns a batch.
    """

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.groups: list[_Group] = []
        self.pending: list[BatchRow] = []
        self.steps = 0
        self.forward_calls = 0

    @property
    def rows(self) -> list[BatchRow]:
        """The running rows, then the ones waiting for their first step."""
        return [row for group in self.groups for row in group.rows] + list(self.pending)

    def __len__(self) -> int:
        return sum(len(g.rows) for g in self.groups) + len(self.pending)

    def add(self, prompt: Sequence[int], *, max_tokens: int, **options: Any) -> BatchRow:
        """Queue a row (``options``: the fields of :class:`BatchRow`); it is read and gets its first token at the
        next :meth:`step`. ConfigError naming a bad option."""
        row = BatchRow(list(map(int, prompt)), max_tokens, **options)
        check_sampling(row.temperature, row.top_k, row.top_p, row.max_tokens)
        if not row.prompt:
            raise ConfigError("every prompt needs at least one token (the start marker)")
        if not isinstance(row.top_logprobs, int) or row.top_logprobs < 0:
            raise ConfigError(f"{option('top_logprobs')} must be a non-negative integer, got {row.top_logprobs!r}")
        vocab_size = self.model.vocab_size
        bad = next((t for t in row.prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ConfigError(f"prompt token id {bad} is outside the model's vocabulary of {vocab_size}")
        row.generator = torch.Generator(device=self.device)
        if row.seed is None:
            row.generator.seed()
        else:
            row.generator.manual_seed(row.seed)
        self.pending.append(row)
        return row

    def finish(self, row: BatchRow, reason: str = "stop") -> None:
        """End a row now (a stop string, a client that left, a timeout): it leaves the batch at the next step."""
        if row.finish_reason is None:
            row.finish_reason = reason

    def step(self) -> list[BatchRow]:
        """One decoding step for every row; returns the rows that got a new token (or, for rows with max_tokens 0,
        their prompt log-probabilities) in this step. Rows finished by :meth:`finish` leave without one."""
        with inference(self.model):
            updated: list[BatchRow] = []
            for group in self.groups:
                self._drop_finished(group)
            self.groups = [g for g in self.groups if g.rows]
            distributions: list[tuple[list[BatchRow], Tensor]] = []
            for group in self.groups:
                last = torch.tensor([[row.tokens[-1]] for row in group.rows], dtype=torch.long, device=self.device)
                distributions.append((group.rows, self.model.next_token_log_probs(last, cache=group.cache)[:, 0]))
                self.forward_calls += 1
            new_groups = self._read_prompts(distributions)
            for rows, log_probs in distributions:
                updated.extend(self._choose(rows, log_probs))
            for group in new_groups:
                self._merge(group)
            for group in self.groups:
                self._drop_finished(group)
            self.groups = [g for g in self.groups if g.rows]
            self.steps += 1
            return updated

    # ---- internals
    def _read_prompts(self, distributions: list[tuple[list[BatchRow], Tensor]]) -> list[_Group]:
        pending = [row for row in self.pending if not row.done]
        self.pending = []
        by_length: dict[int, list[BatchRow]] = {}
        for row in pending:
            by_length.setdefault(len(row.prompt), []).append(row)
        groups = []
        for rows in by_length.values():
            tokens = torch.tensor([row.prompt for row in rows], dtype=torch.long, device=self.device)
            cache = self.model.new_cache(len(rows))
            hidden = self.model.hidden_states(tokens, cache)
            self.forward_calls += 1
            for i, row in enumerate(rows):
                if row.want_prompt_logprobs:
                    row.prompt_logprobs = self._prompt_logprobs(hidden[i, :-1], tokens[i, 1:], row.top_logprobs)
            log_probs = self.model.softmax.log_probs(hidden[:, -1]).float()
            distributions.append((rows, log_probs))
            groups.append(_Group(rows, cache))
        return groups

    def _prompt_logprobs(self, hidden: Tensor, targets: Tensor, top: int, chunk: int = 256):
        out: list[tuple[float, list[tuple[int, float]]]] = []
        for begin in range(0, hidden.shape[0], chunk):
            lp = self.model.softmax.log_probs(hidden[begin : begin + chunk]).float()
            target = targets[begin : begin + chunk]
            chosen = lp.gather(1, target.unsqueeze(1))[:, 0].tolist()
            alternatives = _top(lp, top)
            out.extend(zip(chosen, alternatives))
        return out

    def _choose(self, rows: list[BatchRow], log_probs: Tensor) -> list[BatchRow]:
        updated = []
        alternatives = _top(log_probs, max((row.top_logprobs for row in rows), default=0))
        for i, row in enumerate(rows):
            if row.done:
                continue
            if row.max_tokens == 0:  # prompt log-probabilities only
                row.finish_reason = "length"
                updated.append(row)
                continue
            scores = log_probs[i]
            if row.banned_ids:
                scores = scores.clone()
                scores[list(row.banned_ids)] = float("-inf")
            if row.greedy:
                token = int(scores.argmax())
            else:
                token = sample_row(scores, row.generator, row.temperature, row.top_k, row.top_p)
            row.tokens.append(token)
            row.logprobs.append(float(log_probs[i, token]))
            row.top.append(alternatives[i][: row.top_logprobs])
            if token == row.eos_id:
                row.finish_reason = "stop"
            elif len(row.tokens) >= row.max_tokens:
                row.finish_reason = "length"
            updated.append(row)
        return updated

    def _merge(self, group: _Group) -> None:
        for existing in self.groups:
            if existing.rows and type(existing.cache).can_stack(existing.cache, group.cache):
                existing.cache = type(existing.cache).stack([existing.cache, group.cache])
                existing.rows = existing.rows + group.rows
                return
        self.groups.append(group)

    def _drop_finished(self, group: _Group) -> None:
        keep = [i for i, row in enumerate(group.rows) if not row.done]
        if len(keep) == len(group.rows):
            return
        group.rows = [group.rows[i] for i in keep]
        if keep:
            group.cache = group.cache.select(torch.tensor(keep, dtype=torch.long, device=self.device))


def sample_row(
    log_probs: Tensor, generator: torch.Generator | None, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None,
) -> int:
    """One id drawn from a (vocab,) row of log-probabilities after temperature, top-k and top-p (as
    :func:`choose_next`), by inverting the cumulative distribution at one uniform draw of ``generator``: the same
    distribution as ``torch.multinomial``, at a small part of its cost on a large vocabulary (what a running batch
    pays once per row and step)."""
    logits = apply_temperature(log_probs.float().unsqueeze(0), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    cdf = torch.softmax(logits[0], dim=-1).cumsum(dim=-1)
    u = torch.rand((), generator=generator, device=cdf.device) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u.unsqueeze(0), right=True)[0]), cdf.numel() - 1)


def _top(log_probs: Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Each row's ``k`` most probable ids with their log-probabilities, most probable first."""
    if k <= 0:
        return [[] for _ in range(log_probs.shape[0])]
    values, ids = torch.topk(log_probs, min(k, log_probs.shape[-1]), dim=-1)
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


def top_next(model: LanguageModel, vocab: "Vocabulary", prompt: str, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` most probable next tokens after ``prompt`` (conditioned as :func:`generate_text` conditions it: the
    start marker, then the prompt's tokens), most probable first, each with its probability. What an n-gram
    toolkit's query cannot give: the whole next-token distribution, ranked."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"{option('top_k')} must be a positive integer, got {k!r}")
    ids = encode_prompt(vocab, prompt)
    device = next(model.parameters()).device
    with inference(model):
        log_probs = model.next_token_log_probs(torch.tensor([ids], device=device), positions=[-1])[0, 0]
    values, indices = log_probs.float().exp().topk(min(k, log_probs.shape[-1]))
    return [(vocab.itos[int(i)], float(p)) for p, i in zip(values.tolist(), indices.tolist())]
