"""Batches of (inputs, targets) from an id array, deterministic from a seed and the epoch.

An epoch is a list of *rows*, each a window of the split given by the position ``s`` of its first target and its
length ``n``: ``targets = ids[s : s+n]`` and ``inputs = ids[s-1 : s-1+n]``, except that a row that begins a sentence
has ``<s>`` as its first input.

- ``stream`` mode: rows are the contiguous blocks ``ids[i*T : i*T+T+1]`` (T = ``context``) of the split, documents
  concatenated: ``inputs[:, t] = ids[i*T + t]``, ``targets[:, t] = ids[i*T + t + 1]``; every position counts.
- ``sentence`` mode: rows are sentences (ids up to and including ``</s>``); ``inputs`` start with ``<s>``, targets
  end with ``</s>``. A sentence longer than T targets is cut into rows of T targets, the later ones continuing
  from its previous token (no ``<s>``). Rows of a batch are padded to the batch's longest row: padded targets are
  ``IGNORE_INDEX``, padded inputs are ``</s>`` (after the row's end, so a causal model never sees them).

Global batches: with ``shuffle`` the rows are permuted by ``numpy.random.default_rng([seed, epoch])``; in sentence
mode they are then sorted by length within windows of 100 batches and the batches shuffled, so a batch holds rows
of similar length. Without ``shuffle`` rows keep the order of the split. Each global batch has ``batch_size`` rows.

Ranks: for a given ``(seed, epoch)`` the global batches do not depend on ``world_size``. Rank ``r`` of ``world_size``
``W`` gets rows ``[r*B/W, (r+1)*B/W)`` of every global batch (B = ``batch_size``, which W must divide), padded to the
global batch's longest row. So in an epoch no two ranks see the same row (and rows do not overlap in targets), the
ranks' batches together are exactly the batches of ``world_size=1``, and DDP over W ranks computes what one
process computes over the global batch.

Resume: ``start=k`` skips the first k batches of the epoch; the batches that follow are identical to those of an
uninterrupted epoch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from gcnn.data.prepared import MODES, PreparedData
from gcnn.errors import ConfigError, DataError, option
from gcnn.lm import IGNORE_INDEX
_BUCKET_BATCHES = 100  # sentence mode: rows are length-sorted within windows of this many batches


class Batches:
    """The batches of one epoch of one split, for one rank; iterate for ``(inputs, targets)`` LongTensors of shape
    (batch, time). See the module docstring for what each mode yields and what holds across ranks.

    ``data`` is a PreparedData (its ``split``, mode, ``<s>`` and ``</s>`` ids are used) or an array of ids (then give
    ``mode``, and ``bos_id``/``eos_id`` for sentence mode). ``drop_last`` (default: ``shuffle``) drops an incomplete
    last batch; without it the last batch may be smaller, and in stream mode the split's last tokens (fewer than T)
    form a shorter final row, so an unshuffled pass yields every target of the split exactly once, in order.
    """

    def __init__(
        self,
        data: PreparedData | np.ndarray | Sequence[int],
        *,
        batch_size: int,
        context: int,
        mode: str | None = None,
        split: str = "train",
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
        drop_last: bool | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
    ):
        self.vocab_size: int | None = None
        if isinstance(data, PreparedData):
            ids = data.split(split)
            mode = mode or data.mode
            bos_id = data.vocab.bos_id if bos_id is None else bos_id
            eos_id = data.vocab.eos_id if eos_id is None else eos_id
            self.vocab_size = data.vocab_size
            self.where = f"{data.path} ({split})"
            cache = data._cache
        else:
            ids = np.asarray(data)
            if ids.dtype.kind not in "iu":
                raise ConfigError(f"ids must be integers, not {ids.dtype}")
            self.where = "the ids given"
            cache = {}
        _check_options(mode, batch_size, context, seed, epoch, rank, world_size, bos_id, eos_id)
        self.ids = ids
        self.mode = mode
        self.batch_size, self.context = batch_size, context
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle
        self.drop_last = shuffle if drop_last is None else drop_last
        if not self.drop_last and world_size > 1:
            raise ConfigError("drop_last=False needs world_size=1 (ranks must all get full batches)")
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pad_id = eos_id if eos_id is not None else 0

        with_tail = not self.drop_last  # stream mode: the last, shorter block only in complete passes
        key = (split, mode, context, with_tail, len(ids))
        if key not in cache:
            cache[key] = _rows(ids, mode, context, eos_id, with_tail, self.where)
        self.row_start, self.row_len, self.row_bos = cache[key]
        self.num_batches = _count_batches(len(self.row_start), batch_size, self.drop_last)
        if self.num_batches == 0:
            if mode == "stream" and len(ids) <= context:
                raise DataError(
                    f"{self.where}: {len(ids):,} tokens, shorter than one block of context {context} "
                    f"(which needs {context + 1}); use a smaller {option('context')}"
                )
            raise DataError(
                f"{self.where}: {len(ids):,} tokens make {len(self.row_start):,} {mode} rows of at most {context} "
                f"tokens, fewer than one batch of {batch_size}; use a smaller {option('batch_size', 'batch size')} or "
                f"{option('context')}"
            )
        if not 0 <= start <= self.num_batches:
            raise ConfigError(f"start={start} is outside the epoch's {self.num_batches} batches")
        self.start = start

    def __len__(self) -> int:
        """Number of batches still to come: ``num_batches - start``."""
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        per_rank = self.batch_size // self.world_size
        for b in range(self.start, self.num_batches):
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            width = int(self.row_len[rows].max())
            mine = rows[self.rank * per_rank : (self.rank + 1) * per_rank] if self.world_size > 1 else rows
            yield self._make(mine, width)

    def _order(self) -> np.ndarray:
        """Row indices in the order of the epoch; global batch b is ``order[b*B : (b+1)*B]``."""
        n = len(self.row_start)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if self.mode == "sentence":
            window = self.batch_size * _BUCKET_BATCHES
            for w in range(0, n, window):
                chunk = order[w : w + window]
                order[w : w + window] = chunk[np.argsort(self.row_len[chunk], kind="stable")]
            full = n // self.batch_size
            batches = order[: full * self.batch_size].reshape(full, self.batch_size)
            order = np.concatenate([batches[rng.permutation(full)].ravel(), order[full * self.batch_size :]])
        return order

    def _make(self, rows: np.ndarray, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps = np.arange(width)
        starts = self.row_start[rows][:, None]
        valid = steps < self.row_len[rows][:, None]  # (batch, time)
        last = len(self.ids) - 1
        targets = self.ids[np.minimum(starts + steps, last)].astype(np.int64)
        inputs = self.ids[np.clip(starts + steps - 1, 0, last)].astype(np.int64)
        targets[~valid] = IGNORE_INDEX
        inputs[~valid] = self.pad_id
        begins = self.row_bos[rows]
        if begins.any():
            inputs[begins, 0] = self.bos_id
        if self.vocab_size is not None and inputs.size and int(inputs.max()) >= self.vocab_size:
            raise DataError(
                f"{self.where}: id {int(inputs.max())} is out of range for the vocabulary of {self.vocab_size} "
                "(damaged folder; run `gcnn prepare` again)"
            )
        return torch.from_numpy(inputs), torch.from_numpy(targets)


def batches(data: PreparedData | np.ndarray | Sequence[int], **options) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``(inputs, targets)`` for one epoch: ``iter(Batches(data, **options))``; see :class:`Batches`."""
    return iter(Batches(data, **options))


def num_batches(data: PreparedData | np.ndarray | Sequence[int], **options) -> int:
    """Batches in a whole epoch (ignoring ``start``) for the same options as :func:`batches`."""
    options.pop("start", None)
    return Batches(data, **options).num_batches


def _check_options(mode, batch_size, context, seed, epoch, rank, world_size, bos_id, eos_id) -> None:
    if mode not in MODES:
        raise ConfigError(f"batching mode must be one of {', '.join(MODES)}, not {mode!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("context", context, 1), ("seed", seed, 0),
                             ("epoch", epoch, 0), ("world_size", world_size, 1), ("rank", rank, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if rank >= world_size:
        raise ConfigError(f"rank {rank} is not below world_size {world_size}")
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} (global) is not divisible by world_size {world_size}")
    if mode == "sentence" and (bos_id is None or eos_id is None):
        raise ConfigError("sentence mode needs bos_id and eos_id (a PreparedData of a sentence corpus has them)")


def _count_batches(rows: int, batch_size: int, drop_last: bool) -> int:
    return rows // batch_size if drop_last else -(-rows // batch_size)


def _rows(ids: np.ndarray, mode: str, context: int, eos_id: int | None, with_tail: bool, where: str):
    """``(start, length, begins_sentence)`` arrays of every row of the split, in split order."""
    n = len(ids)
    if mode == "stream":
        if n < 2:
            raise DataError(f"{where}: {n} token(s); at least 2 are needed to predict anything")
        full, rest = divmod(n - 1, context)
        rest = rest if with_tail else 0
        starts = 1 + context * np.arange(full + (rest > 0), dtype=np.int64)
        lengths = np.full(len(starts), context, dtype=np.int32)
        if rest:
            lengths[-1] = rest
        return starts, lengths, np.zeros(len(starts), dtype=bool)
    ends = _eos_positions(ids, eos_id)
    if len(ends) == 0 or ends[-1] != n - 1:
        raise DataError(f"{where}: sentence-mode ids must end with </s> (id {eos_id})")
    sentence_starts = np.concatenate([[0], ends[:-1] + 1])
    sentence_lengths = ends - sentence_starts + 1
    pieces = -(-sentence_lengths // context)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    k = np.arange(int(pieces.sum()), dtype=np.int64) - first  # piece number within its sentence
    owner = np.repeat(np.arange(len(ends)), pieces)
    starts = sentence_starts[owner] + k * context
    lengths = np.minimum(context, sentence_lengths[owner] - k * context).astype(np.int32)
    return starts, lengths, k == 0


def _eos_positions(ids: np.ndarray, eos_id: int, chunk: int = 1 << 24) -> np.ndarray:
    parts = [np.flatnonzero(ids[i : i + chunk] == eos_id) + i for i in range(0, len(ids), chunk)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
