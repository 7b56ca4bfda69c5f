"""A stateful, batched language-model scorer for beam-search decoders (speech, OCR, translation).

A decoder keeps many hypotheses, extends each by one token at a time and needs, for every hypothesis, the
log-probability of the next token. :class:`Scorer` gives it that over any gcnn model (the GCNN, and the LSTM and
Transformer baselines)::

    scorer = gcnn.Scorer(gcnn.load("models/wt2"), cache_mb=512)
    root = scorer.start()                                   # the state after the start marker (<s>, or <eos>)
    states, log_probs = scorer.advance([root, root], [the_id, a_id])   # (2, V) next-token log-distributions
    scorer.end_score(states[0])                             # log p(</s> | state)

States (:class:`State`) are hashable and compare equal exactly when they predict the same futures: a GCNN sees only
its last ``receptive_field`` tokens, so a GCNN state is the tuple of the last ``receptive_field`` tokens of its history
(two hypotheses that differ only further back are one state, which lets decoders merge them); an LSTM's or
Transformer's state is its whole history. A state is light (the token tuple and its parent); what the model computed
for it lives in the scorer's cache, a least-recently-used map bounded by ``cache_mb`` megabytes:

* a GCNN entry: the last k-1 inputs of every convolution (O(layers x k) numbers: the whole decoding state of a
  convolutional model) and the next-token log-distribution;
* an LSTM entry: (h, c) of every layer; a Transformer entry: the keys and values of every position.

Advancing a batch of states stacks their cached rows into one model cache and runs one incremental step of one token
for all of them, so a new GCNN state costs one step over k inputs per convolution, never a re-run of its history. A
state whose entry was evicted is recomputed from its tokens (for a GCNN at most ``receptive_field`` tokens), so the
bound on memory never changes a score. Log-probabilities are natural logs in float32, equal to a full forward pass
over the history (tests/test_scorer.py).

On a CPU, give the scorer a GCNN prepared by ``gcnn.runtime.optimize(model, "fp32")`` (or ``"bf16"``): a step is
then one matrix product per convolution over its window of k inputs, several times faster than ``F.conv1d`` on a
one-frame input, with the same scores up to float rounding.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from gcnn.baselines import KVCache, LSTMLM, LSTMState, TransformerLM
from gcnn.errors import ConfigError, option
from gcnn.lm import LanguageModel, inference
from gcnn.model import ConvCache, GatedConvLM

ENTRY_OVERHEAD = 256  # bytes counted per cache entry beyond its tensors (the Python objects around them)


class State:
    """A scorer state: the tokens that determine the model's predictions (see the module docstring). Hashable; two
    states are equal when their tokens are. ``parent`` is the state it was advanced from (None for the start)."""

    __slots__ = ("tokens", "parent", "_hash")

    def __init__(self, tokens: tuple[int, ...], parent: "State | None" = None) -> None:
        self.tokens = tokens
        self.parent = parent
        self._hash = hash(tokens)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and self._hash == other._hash and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"State({self.tokens!r})"


@dataclass
class _Entry:
    row: Tensor  # the model's decoding state for this history, flattened (one row of a batched cache)
    log_probs: Tensor  # (V,) float32: the next-token log-distribution
    nbytes: int


class _Codec:
    """How one model's incremental cache is cut into per-history rows and stacked back."""

    def group(self, tokens: tuple[int, ...]) -> Any:  # rows of one group can be stacked together
        return None

    def pack(self, cache: Any, batch: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unpack(self, rows: Tensor, length: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class _ConvCodec(_Codec):
    """GCNN: the last k-1 inputs of every convolution with k > 1, concatenated."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] | None = None

    def pack(self, cache: ConvCache, batch: int) -> Tensor:
        if self.shapes is None:
            self.shapes = [tuple(b.shape[1:]) for b in cache.buffers]
        return torch.cat([b.reshape(batch, -1) for b in cache.buffers], dim=1)

    def unpack(self, rows: Tensor, length: int) -> ConvCache:
        batch = rows.shape[0]
        cache = ConvCache(batch)
        offset = 0
        for shape in self.shapes or ():
            size = shape[0] * shape[1]
            cache.buffers.append(rows[:, offset : offset + size].view(batch, *shape))
            offset += size
        cache.length = length
        return cache


class _LSTMCodec(_Codec):
    """LSTM: (h, c) of every layer."""

    def __init__(self) -> None:
        self.shapes: tuple[tuple[int, int], tuple[int, int]] | None = None

    def pack(self, cache: LSTMState, batch: int) -> Tensor:
        h, c = cache.state
        if self.shapes is None:
            self.shapes = ((h.shape[0], h.shape[2]), (c.shape[0], c.shape[2]))
        return torch.cat([h.transpose(0, 1).reshape(batch, -1), c.transpose(0, 1).reshape(batch, -1)], dim=1)

    def unpack(self, rows: Tensor, length: int) -> LSTMState:
        batch = rows.shape[0]
        (hl, hd), (cl, cd) = self.shapes
        h = rows[:, : hl * hd].reshape(batch, hl, hd).transpose(0, 1).contiguous()
        c = rows[:, hl * hd :].reshape(batch, cl, cd).transpose(0, 1).contiguous()
        cache = LSTMState(batch)
        cache.state = (h, c)
        cache.length = length
        return cache


class _KVCodec(_Codec):
    """Transformer: keys and values of every layer at every position; rows stack only with rows of their length."""

    def __init__(self, model: TransformerLM) -> None:
        self.layers = model.config.num_layers
        self.heads = model.config.num_heads
        self.head_dim = model.config.embed_dim // model.config.num_heads

    def group(self, tokens: tuple[int, ...]) -> Any:
        return len(tokens)

    def pack(self, cache: KVCache, batch: int) -> Tensor:
        end = cache.length
        parts = [t[:, :, :end].reshape(batch, -1) for pair in zip(cache.keys, cache.values) for t in pair]
        return torch.cat(parts, dim=1)

    def unpack(self, rows: Tensor, length: int) -> KVCache:
        batch = rows.shape[0]
        cache = KVCache(batch, self.layers, length + 1)
        size = self.heads * length * self.head_dim
        for layer in range(self.layers):
            for which, store in enumerate((cache.keys, cache.values)):
                offset = (2 * layer + which) * size
                buffer = rows.new_zeros(batch, self.heads, length + 1, self.head_dim)
                buffer[:, :, :length] = rows[:, offset : offset + size].view(batch, self.heads, length, self.head_dim)
                store[layer] = buffer
        cache.length = length
        return cache


class Scorer:
    """Next-token log-distributions for batches of hypotheses, over any gcnn :class:`~gcnn.lm.LanguageModel`.

    ``start_id`` is the token a history starts with (default: the vocabulary's ``<s>``, else its ``<eos>``, as
    :func:`gcnn.evaluate.score_texts` scores a line); ``eos_id`` the end-of-sentence token of :meth:`end_score`
    (default: the vocabulary's). ``cache_mb`` bounds the memory of computed states (tensors counted exactly, plus
    :data:`ENTRY_OVERHEAD` bytes each). The model is used in eval mode, on its own device and dtype.
    """

    def __init__(
        self,
        model: LanguageModel,
        *,
        cache_mb: float = 256.0,
        start_id: int | None = None,
        eos_id: int | None = None,
    ) -> None:
        if not isinstance(cache_mb, (int, float)) or isinstance(cache_mb, bool) or cache_mb < 0:
            raise ConfigError(f"{option('cache_mb')} must be a number of megabytes >= 0, got {cache_mb!r}")
        vocab = getattr(model, "vocab", None)
        if start_id is None or eos_id is None:
            if vocab is None:
                raise ConfigError(
                    f"the model has no vocabulary: give {option('start_id')} and {option('eos_id')} to the Scorer"
                )
            if start_id is None:
                start_id = vocab.eos_id if vocab.bos_id is None else vocab.bos_id
            if eos_id is None:
                eos_id = vocab.eos_id
        for name, value in (("start_id", start_id), ("eos_id", eos_id)):
            if not 0 <= int(value) < model.vocab_size:
                raise ConfigError(f"{option(name)} {value} is outside the model's vocabulary of {model.vocab_size}")
        self.model = model
        self.start_id, self.eos_id = int(start_id), int(eos_id)
        self.vocab_size = model.vocab_size
        self.limit_bytes = int(cache_mb * 1024 * 1024)
        if isinstance(model, GatedConvLM):
            self.codec: _Codec = _ConvCodec()
            self.window: int | None = model.receptive_field
        elif isinstance(model, LSTMLM):
            self.codec, self.window = _LSTMCodec(), None
        elif isinstance(model, TransformerLM):
            self.codec, self.window = _KVCodec(model), None
        else:
            raise ConfigError(f"the Scorer knows the caches of GatedConvLM, LSTMLM and TransformerLM, not {type(model).__name__}")
        self.device = next(model.parameters()).device
        self._cache: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self.cache_bytes = 0
        self.stats = {"hits": 0, "steps": 0, "recomputed": 0, "evicted": 0}

    # ---------------------------------------------------------------------------------------------- states
    def start(self) -> State:
        """The state after the start token (no word yet)."""
        return State((self.start_id,))

    def child(self, state: State, token: int) -> State:
        """The state after ``state`` and ``token``, without computing anything yet."""
        tokens = state.tokens + (int(token),)
        if self.window is not None and len(tokens) > self.window:
            tokens = tokens[-self.window :]
        return State(tokens, state)

    # ---------------------------------------------------------------------------------------------- scores
    def advance(self, states: Sequence[State], tokens: Sequence[int] | Tensor) -> tuple[list[State], Tensor]:
        """Advance each state by its token: the new states and their next-token log-distributions (N, V) float32."""
        if isinstance(tokens, Tensor):
            tokens = tokens.tolist()
        if len(states) != len(tokens):
            raise ValueError(f"{len(states)} states but {len(tokens)} tokens")
        children = [self.child(s, t) for s, t in zip(states, tokens)]
        return children, self.log_probs(children)

    def log_probs(self, states: Sequence[State]) -> Tensor:
        """(N, V) float32 next-token log-distributions of ``states`` (cached, or computed in batches)."""
        found: dict[State, Tensor] = {}
        missing: list[State] = []
        for state in states:
            if state in found:
                continue
            entry = self._cache.get(state.tokens)
            if entry is not None:
                self._cache.move_to_end(state.tokens)
                self.stats["hits"] += 1
                found[state] = entry.log_probs
            else:
                found[state] = None  # type: ignore[assignment]
                missing.append(state)
        if not states:
            return torch.empty(0, self.vocab_size, device=self.device)
        batches: list[Tensor] = []
        if missing:
            found.update(self._compute(missing, batches))
            if len(batches) == 1 and len(missing) == len(states) and all(a is b for a, b in zip(missing, states)):
                return batches[0]  # the common beam step: every state new, computed in one batch in this order
        return torch.stack([found[s] for s in states])

    def score(self, states: Sequence[State], tokens: Sequence[int]) -> Tensor:
        """(N,) log p(token | state) for each pair."""
        lp = self.log_probs(states)
        index = torch.as_tensor(list(tokens), dtype=torch.long, device=lp.device).view(-1, 1)
        return lp.gather(1, index).squeeze(1)

    def log_prob(self, state: State, token: int) -> float:
        """log p(token | state) for one state (the decoders' one-call-per-word interfaces)."""
        entry = self._cache.get(state.tokens)
        if entry is not None:
            self._cache.move_to_end(state.tokens)
            self.stats["hits"] += 1
            return float(entry.log_probs[token])
        return float(self.log_probs([state])[0, token])

    def end_score(self, state: State) -> float:
        """log p(</s> | state): the cost of ending the sentence here."""
        return self.log_prob(state, self.eos_id)

    # ---------------------------------------------------------------------------------------------- the cache
    def clear(self) -> None:
        """Forget every computed state (e.g. between utterances)."""
        self._cache.clear()
        self.cache_bytes = 0

    def __len__(self) -> int:
        return len(self._cache)

    def _store(self, tokens: tuple[int, ...], row: Tensor, log_probs: Tensor) -> None:
        nbytes = row.numel() * row.element_size() + log_probs.numel() * log_probs.element_size() + ENTRY_OVERHEAD
        old = self._cache.pop(tokens, None)
        if old is not None:
            self.cache_bytes -= old.nbytes
        if nbytes > self.limit_bytes:
            return
        self._cache[tokens] = _Entry(row, log_probs, nbytes)
        self.cache_bytes += nbytes
        while self.cache_bytes > self.limit_bytes:
            _, evicted = self._cache.popitem(last=False)
            self.cache_bytes -= evicted.nbytes
            self.stats["evicted"] += 1

    # ---------------------------------------------------------------------------------------------- computing
    def _compute(self, states: list[State], batches: list[Tensor]) -> dict[State, Tensor]:
        """Log-distributions of states not in the cache: one incremental step from a cached parent where there is
        one (batched by group), else a forward pass over the state's tokens (batched by length)."""
        steps: dict[Any, list[tuple[State, _Entry]]] = {}
        fresh: dict[int, list[State]] = {}
        for state in states:
            parent = state.parent
            entry = None if parent is None else self._cache.get(parent.tokens)
            if entry is not None:
                self._cache.move_to_end(parent.tokens)
                steps.setdefault(self.codec.group(parent.tokens), []).append((state, entry))
            else:
                fresh.setdefault(len(state.tokens), []).append(state)
        out: dict[State, Tensor] = {}
        # a model already in eval mode needs only inference mode (model.eval() walks every module at each call)
        with inference(self.model) if self.model.training else torch.inference_mode():
            for group in steps.values():
                self.stats["steps"] += len(group)
                rows = torch.stack([entry.row for _, entry in group])
                cache = self.codec.unpack(rows, len(group[0][0].parent.tokens))
                last = torch.tensor([[s.tokens[-1]] for s, _ in group], dtype=torch.long, device=self.device)
                self._finish([s for s, _ in group], last, cache, out, batches)
            for length, group in fresh.items():
                self.stats["recomputed"] += len(group)
                tokens = torch.tensor([s.tokens for s in group], dtype=torch.long, device=self.device)
                self._finish(group, tokens, self.model.new_cache(len(group)), out, batches)
        return out

    def _finish(
        self, group: list[State], tokens: Tensor, cache: Any, out: dict[State, Tensor], batches: list[Tensor]
    ) -> None:
        """Run the model over ``tokens`` with ``cache``; the group's log-distributions go to ``out`` (and their
        batch to ``batches``), each state's row and distribution into the cache (own copies: an entry never keeps
        a whole batch alive)."""
        log_probs = self.model.next_token_log_probs(tokens, positions=[-1], cache=cache)[:, 0].float()
        batches.append(log_probs)
        rows = self.codec.pack(cache, len(group))
        for i, state in enumerate(group):
            out[state] = log_probs[i]
            self._store(state.tokens, rows[i].clone(), log_probs[i].clone())


def states_of(scorer: Scorer, histories: Iterable[Sequence[int]]) -> list[State]:
    """The states after each history of token ids (each without the start token), e.g. to resume hypotheses."""
    out = []
    for history in histories:
        state = scorer.start()
        for token in history:
            state = scorer.child(state, token)
        out.append(state)
    return out
