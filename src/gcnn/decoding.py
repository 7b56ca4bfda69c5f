"""Generation with incremental decoding, and the sampling filters as small pure functions.

:func:`generate` feeds the prompts once (the part all prompts share in length, in one call) and then one token per
call, passing the model's cache along: a GCNN's convolutions keep their last k-1 inputs, so a new token costs work
proportional to layers x k, not to the length of the context. Prompts of different lengths share a batch: while a
row is still inside its prompt, its next prompt token is fed instead of a generated one.

Filters act on (batch, vocab) logits or log-probabilities and return new tensors; removed entries become -inf.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Iterator, Sequence

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
