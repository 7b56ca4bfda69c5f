"""Output layers behind one interface: the log-probability of given targets, and full log-distributions.

* :class:`FullSoftmax`: one linear layer over the whole vocabulary, for small vocabularies.
* :class:`AdaptiveSoftmax` (Grave et al., 2016): a head over the ``cutoffs[0]`` most frequent words plus one entry
  per tail cluster; tail cluster ``i`` projects the hidden state down to ``dim / div**(i+1)`` before its own softmax.
  Word ids must be sorted by frequency. Tails are only evaluated for the tokens that fall in them.

Target log-probabilities (the loss, evaluation, scoring) never store a tokens x cluster matrix: each target's
log-probability is its logit minus the log-sum-exp of its cluster's logits, and :func:`chunked_logsumexp` takes that
sum over blocks of at most ``CHUNK_ELEMENTS`` logits at a time (its backward pass recomputes each block), so memory
is bounded by the block size whatever the vocabulary and the number of tokens. (In training, a cluster whose
tokens x cluster logits fit in ``MATERIALIZE_ELEMENTS`` keeps them for the backward pass instead, which saves the
recomputation; that is the usual small-vocabulary case.) The full next-token distribution
(``log_probs``, for generation) is the usual log-softmax.

Log-softmaxes and log-sum-exps are computed in float32 whatever the input dtype, so bf16 autocast keeps normalised
distributions.

Input embeddings that go with them (beyond the paper, :class:`gcnn.config.ModelConfig`'s options):

* tied embeddings: ``softmax.embed(tokens)`` reads the output layer's own word matrices (the full softmax's weight;
  the adaptive softmax's head rows and, for a tail word, its cluster's word matrix times the cluster's projection,
  transposed), so the weights exist once in the model and once in a saved state dict.
* :class:`AdaptiveInput` (Baevski & Auli 2019), untied: the same clusters, each with its own smaller table and
  projection to the embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnn.config import check_cutoffs

CHUNK_ELEMENTS = 1 << 20  # logits per block of chunked_logsumexp at most (4 MB in float32)
# narrow products (a hidden size up to NARROW_DIM: the exp passes cost more than the product) take smaller blocks,
# which stay in a core's L2 cache (1 MB in float32); wider ones keep the large blocks the matrix product prefers
NARROW_DIM, NARROW_CHUNK_ELEMENTS = 128, 1 << 18
# With gradients on, a cluster's logits up to this many elements are kept for the backward pass as usual (one
# matrix product less than recomputing them); larger ones go through the recomputing chunked path.
MATERIALIZE_ELEMENTS = 1 << 24  # 64 MB of float32 logits
BLOCK_COLUMNS = 1024  # vocabulary entries per block (rows of the weight), more only when there are few tokens


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _blocks(rows: int, columns: int, chunk_elements: int) -> tuple[int, int]:
    """(row block, column block) sizes with row_block * column_block <= chunk_elements (at least 1 x 1): blocks of
    ``BLOCK_COLUMNS`` vocabulary entries, wider when the rows are too few to fill ``chunk_elements`` (fewer, larger
    products for a handful of tokens)."""
    wide = max(BLOCK_COLUMNS, chunk_elements // max(rows, 1))
    column_block = max(1, min(columns, chunk_elements, wide))
    row_block = max(1, min(rows, chunk_elements // column_block))
    return row_block, column_block


def _block_logits(h: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
    """h @ weight.T + bias written into ``out`` (a preallocated block: no allocation per block)."""
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias, h, weight.t(), out=out)


def _logsumexp_one_pass(hidden: Tensor, weight: Tensor, bias: Tensor | None, chunk_elements: int) -> Tensor:
    """The forward log-sum-exp, one product per block. Each row's offset is the largest logit of its first block, so
    that every later block takes one subtract, exp and sum in place, in two preallocated buffers the size of a block
    (no max pass after the first block, no log-softmax output): the sum is then at least 1 (the first block's
    largest term is exp(0)), so terms lost to underflow are below the accumulator's resolution of it. A row whose
    first block has no finite maximum (masked or infinite logits, NaN: no such guarantee), whose sum overflows (a
    later logit more than ~88 above the offset in float32) or whose result is not finite is recomputed by
    :func:`_logsumexp_two_pass`."""
    n, s = hidden.shape[0], weight.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
    out = torch.empty(n, dtype=acc, device=hidden.device)
    if n == 0 or s == 0:  # no rows, or an empty cluster: the log of an empty sum
        return out.fill_(float("-inf"))
    unanchored = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    row_block, column_block = _blocks(n, s, chunk_elements)
    size = row_block * min(column_block, s)
    logits_buffer = torch.empty(size, dtype=hidden.dtype, device=hidden.device)
    exp_buffer = logits_buffer if hidden.dtype == acc else torch.empty(size, dtype=acc, device=hidden.device)
    for r0 in range(0, n, row_block):
        h = hidden[r0 : r0 + row_block]
        r = h.shape[0]
        total = offset = None
        for c0 in range(0, s, column_block):
            c = min(column_block, s - c0)
            b = None if bias is None else bias[c0 : c0 + c]
            logits = _block_logits(h, weight[c0 : c0 + c], b, logits_buffer[: r * c].view(r, c))
            terms = exp_buffer[: r * c].view(r, c)
            if terms.data_ptr() != logits.data_ptr():
                terms.copy_(logits)
            if offset is None:
                offset = terms.amax(dim=-1, keepdim=True)
                finite = torch.isfinite(offset)
                unanchored[r0 : r0 + r] = ~finite.squeeze(1)
                offset = torch.where(finite, offset, torch.zeros_like(offset))
                total = terms.sub_(offset).exp_().sum(dim=-1)
            else:
                total += terms.sub_(offset).exp_().sum(dim=-1)
        out[r0 : r0 + r] = total.log_().add_(offset.squeeze(1))
    bad = torch.nonzero(~torch.isfinite(out) | unanchored, as_tuple=True)[0]
    if bad.numel():
        out[bad] = _logsumexp_two_pass(hidden.index_select(0, bad), weight, bias, chunk_elements)
    return out


def _logsumexp_two_pass(hidden: Tensor, weight: Tensor, bias: Tensor | None, chunk_elements: int) -> Tensor:
    """torch.logsumexp per block, the blocks combined with logaddexp: exact for any logits (infinite, masked or
    far apart), slower than :func:`_logsumexp_one_pass`."""
    n, s = hidden.shape[0], weight.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)
    out = torch.empty(n, dtype=acc, device=hidden.device)
    row_block, column_block = _blocks(n, s, chunk_elements)
    for r0 in range(0, n, row_block):
        h = hidden[r0 : r0 + row_block]
        total = None
        for c0 in range(0, s, column_block):
            b = None if bias is None else bias[c0 : c0 + column_block]
            part = torch.logsumexp(F.linear(h, weight[c0 : c0 + column_block], b).to(acc), dim=-1)
            total = part if total is None else torch.logaddexp(total, part)
        out[r0 : r0 + row_block] = total
    return out


class _ChunkedLogSumExp(torch.autograd.Function):
    """logsumexp over j of (hidden @ weight.T + bias)[:, j], block by block; float32 result and accumulation
    (float64 for float64 inputs)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, chunk_elements: int) -> Tensor:  # type: ignore[override]
        with torch.autocast(hidden.device.type, enabled=False):
            out = _logsumexp_one_pass(hidden, weight, bias, chunk_elements)
        ctx.save_for_backward(hidden, weight, bias, out)
        ctx.chunk_elements = chunk_elements
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        hidden, weight, bias, lse = ctx.saved_tensors
        n, s = hidden.shape[0], weight.shape[0]
        row_block, column_block = _blocks(n, s, ctx.chunk_elements)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = lse.dtype
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(s, dtype=acc, device=weight.device) if need_b and bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for r0 in range(0, n, row_block):
                h = hidden[r0 : r0 + row_block]
                g = grad[r0 : r0 + row_block].to(acc).unsqueeze(1)
                m = lse[r0 : r0 + row_block].unsqueeze(1)
                for c0 in range(0, s, column_block):
                    w = weight[c0 : c0 + column_block]
                    b = None if bias is None else bias[c0 : c0 + column_block]
                    p = (F.linear(h, w, b).to(acc) - m).exp_().mul_(g)  # d lse / d logit = softmax, times grad
                    if grad_h is not None:
                        grad_h[r0 : r0 + row_block] += p.to(w.dtype).matmul(w).to(acc)
                    if grad_w is not None:
                        grad_w[c0 : c0 + column_block] += p.t().to(h.dtype).matmul(h).to(acc)
                    if grad_b is not None:
                        grad_b[c0 : c0 + column_block] += p.sum(0)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
        )


def chunked_logsumexp(hidden: Tensor, weight: Tensor, bias: Tensor | None = None, *, chunk_elements: int | None = None) -> Tensor:
    """hidden (N, d), weight (S, d), bias (S,) -> (N,) float32 log-sum-exp of each row of ``hidden @ weight.T + bias``
    without storing the (N, S) logits: blocks of at most ``chunk_elements`` logits (default ``CHUNK_ELEMENTS``, or
    ``NARROW_CHUNK_ELEMENTS`` for a hidden size up to ``NARROW_DIM``), in the autocast dtype where autocast is on
    (as ``F.linear`` would), summed in float32. Differentiable; the backward pass recomputes each block."""
    dtype = _compute_dtype(hidden)
    weight_c = weight.to(dtype)
    bias_c = None if bias is None else bias.to(dtype)
    if chunk_elements is None:
        narrow = hidden.shape[-1] <= NARROW_DIM
        chunk_elements = min(CHUNK_ELEMENTS, NARROW_CHUNK_ELEMENTS) if narrow else CHUNK_ELEMENTS
    return _ChunkedLogSumExp.apply(hidden.to(dtype), weight_c, bias_c, chunk_elements)


def cluster_log_probs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None) -> Tensor:
    """log p(target | cluster) (N,) float32 for a softmax over ``hidden @ weight.T + bias``: the target's logit minus
    the chunked log-sum-exp. In training, a cluster small enough (``MATERIALIZE_ELEMENTS``) takes the plain
    log-softmax, whose logits autograd keeps, instead of recomputing them in the backward pass."""
    if torch.is_grad_enabled() and hidden.shape[0] * weight.shape[0] <= MATERIALIZE_ELEMENTS:
        logits = F.linear(hidden, weight, bias).float()
        return torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return target_logits(hidden, weight, targets, bias) - chunked_logsumexp(hidden, weight, bias)


def target_logits(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None) -> Tensor:
    """(N,) float32 logits of ``targets`` (N,) under ``hidden @ weight.T + bias``, one dot product per row, with the
    operands and the result rounded to the autocast dtype as the matrix product would round them."""
    dtype = _compute_dtype(hidden)
    n, d = hidden.shape
    step = max(1, CHUNK_ELEMENTS // max(1, d))  # rows at a time: no (N, d) float32 copies of the operands
    parts = []
    for r0 in range(0, max(n, 1), step):  # one (empty) part for no rows
        rows = weight.index_select(0, targets[r0 : r0 + step]).to(dtype).float()
        parts.append((hidden[r0 : r0 + step].to(dtype).float() * rows).sum(-1))
    out = torch.cat(parts) if len(parts) != 1 else parts[0]
    if bias is not None:
        out = out + bias.index_select(0, targets).to(dtype).float()
    return out.to(dtype).float()  # rounded as the product's output would be


class FullSoftmax(nn.Module):
    def __init__(self, dim: int, vocab_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.proj = nn.Linear(dim, vocab_size)

    def target_log_probs(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """hidden (N, d), targets (N,) -> log p(target) (N,) in float32, without an (N, V) matrix."""
        return cluster_log_probs(hidden, self.proj.weight, targets, self.proj.bias)

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden (..., d) -> log-distribution (..., V) in float32."""
        return torch.log_softmax(self.proj(hidden).float(), dim=-1)

    def embed(self, tokens: Tensor) -> Tensor:
        """Tied input embeddings: tokens (...) -> the rows of the output weight (..., d)."""
        return F.embedding(tokens, self.proj.weight)

    def word_matrices(self) -> list[Tensor]:
        """The weights that are word embeddings when tied (initialised as an embedding is)."""
        return [self.proj.weight]


class AdaptiveSoftmax(nn.Module):
    def __init__(self, dim: int, vocab_size: int, cutoffs: tuple[int, ...], div: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        check_cutoffs(cutoffs, vocab_size)
        if not cutoffs:
            raise ValueError("AdaptiveSoftmax needs at least one cutoff; use FullSoftmax otherwise")
        self.vocab_size = vocab_size
        self.bounds = list(cutoffs) + [vocab_size]  # cluster i covers ids [bounds[i], bounds[i+1])
        self.shortlist = cutoffs[0]
        self.register_buffer("cutoffs", torch.tensor(list(cutoffs), dtype=torch.long), persistent=False)
        n_clusters = len(cutoffs)
        self.head = nn.Linear(dim, self.shortlist + n_clusters, bias=False)
        self.tails = nn.ModuleList()
        for i in range(n_clusters):
            reduced = max(1, int(dim // div ** (i + 1)))
            size = self.bounds[i + 1] - self.bounds[i]
            self.tails.append(
                nn.Sequential(nn.Linear(dim, reduced, bias=False), nn.Dropout(dropout), nn.Linear(reduced, size, bias=False))
            )

    def target_log_probs(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """hidden (N, d), targets (N,) -> log p(target) (N,) in float32, without a tokens x cluster matrix."""
        in_head = targets < self.shortlist
        # head words: their own entry; tail words: start from the entry of their cluster
        cluster = torch.bucketize(targets, self.cutoffs, right=True)  # 0: head, i: tail cluster i
        head_index = torch.where(in_head, targets, self.shortlist + cluster - 1)
        out = cluster_log_probs(hidden, self.head.weight, head_index)
        for i, tail in enumerate(self.tails):
            rows = torch.nonzero(cluster == i + 1, as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            projected = tail[1](tail[0](hidden.index_select(0, rows)))  # (n_i, reduced): down-projection, dropout
            local = targets.index_select(0, rows) - self.bounds[i]
            out = out.index_add(0, rows, cluster_log_probs(projected, tail[2].weight, local))
        return out

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden (..., d) -> log-distribution (..., V) in float32."""
        head_lp = torch.log_softmax(self.head(hidden).float(), dim=-1)
        parts = [head_lp[..., : self.shortlist]]
        for i, tail in enumerate(self.tails):
            cluster_lp = head_lp[..., self.shortlist + i : self.shortlist + i + 1]
            parts.append(cluster_lp + torch.log_softmax(tail(hidden).float(), dim=-1))
        return torch.cat(parts, dim=-1)

    def embed(self, tokens: Tensor) -> Tensor:
        """Tied adaptive input: tokens (...) -> (..., d). A head word's vector is its row of the head's weight; a word
        of tail cluster i is its row of the cluster's word matrix (size, d / div**(i+1)) times the cluster's
        projection (d / div**(i+1), d), the transposes of what the output side computes."""
        tables = [self.head.weight[: self.shortlist]] + [tail[2].weight for tail in self.tails]
        projections = [None] + [tail[0].weight for tail in self.tails]
        return clustered_embedding(tokens, self.bounds, tables, projections)

    def word_matrices(self) -> list[Tensor]:
        return [self.head.weight] + [tail[2].weight for tail in self.tails]


class AdaptiveInput(nn.Module):
    """Adaptive input representations (Baevski & Auli 2019): the words of cluster i (the adaptive softmax's: the
    head's ``cutoffs[0]`` words, then each tail) have ``dim / div**i``-dimensional embeddings, projected to ``dim``
    (the head's need no projection). Word ids must be sorted by frequency."""

    def __init__(self, dim: int, vocab_size: int, cutoffs: tuple[int, ...], div: float = 4.0) -> None:
        super().__init__()
        check_cutoffs(cutoffs, vocab_size)
        if not cutoffs:
            raise ValueError("AdaptiveInput needs at least one cutoff; use nn.Embedding otherwise")
        self.dim, self.vocab_size = dim, vocab_size
        self.bounds = [0] + list(cutoffs) + [vocab_size]
        self.tables = nn.ParameterList()
        self.projs = nn.ParameterList()  # (dim_i, dim) for each tail cluster
        for i in range(len(self.bounds) - 1):
            width = dim if i == 0 else max(1, int(dim // div**i))
            self.tables.append(nn.Parameter(torch.empty(self.bounds[i + 1] - self.bounds[i], width)))
            if i:
                self.projs.append(nn.Parameter(torch.empty(width, dim)))
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.1) -> None:
        with torch.no_grad():
            for table in self.tables:
                table.normal_(0.0, std)
            for proj in self.projs:  # variance-preserving: a projected vector has the table's scale
                proj.normal_(0.0, (1.0 / proj.shape[0]) ** 0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        return clustered_embedding(tokens, self.bounds[1:], list(self.tables), [None, *self.projs])


def clustered_embedding(tokens: Tensor, bounds: list[int], tables: list[Tensor],
                        projections: list[Tensor | None]) -> Tensor:
    """tokens (...) -> (..., d): cluster c covers ids [bounds[c-1], bounds[c]) (from 0 for c = 0); a word's vector is
    its row of ``tables[c]``, times ``projections[c]`` (dim_c, d) where there is one."""
    flat = tokens.reshape(-1)
    dim = tables[0].shape[1]
    out = tables[0].new_zeros(flat.shape[0], dim)
    start = 0
    for table, projection, end in zip(tables, projections, bounds):
        rows = torch.nonzero((flat >= start) & (flat < end), as_tuple=True)[0]
        if rows.numel():
            vectors = F.embedding(flat.index_select(0, rows) - start, table)
            if projection is not None:
                vectors = vectors @ projection
            out = out.index_copy(0, rows, vectors.to(out.dtype))
        start = end
    return out.view(*tokens.shape, dim)


def build_softmax(dim: int, vocab_size: int, cutoffs: tuple[int, ...], div: float, dropout: float) -> nn.Module:
    if cutoffs:
        return AdaptiveSoftmax(dim, vocab_size, tuple(cutoffs), div=div, dropout=dropout)
    return FullSoftmax(dim, vocab_size, dropout=dropout)
