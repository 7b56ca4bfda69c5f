"""Output layers behind one interface: the log-probability of given targets, and full log-distributions.

* :class:`FullSoftmax`: one linear layer over the whole vocabulary, for small vocabularies.
* :class:`AdaptiveSoftmax` (Grave et al., 2016): a head over the ``cutoffs[0]`` most frequent words plus one entry
  per tail cluster; tail cluster ``i`` projects the hidden state down to ``dim / div**(i+1)`` before its own softmax.
  Word ids must be sorted by frequency. Tails are only evaluated for the tokens that fall in them.

Log-softmaxes are computed in float32 whatever the input dtype, so bf16 autocast keeps normalised distributions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnn.config import check_cutoffs


class FullSoftmax(nn.Module):
    def __init__(self, dim: int, vocab_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.proj = nn.Linear(dim, vocab_size)

    def target_log_probs(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """hidden (N, d), targets (N,) -> log p(target) (N,) in float32."""
        logits = self.proj(hidden).float()
        return -F.cross_entropy(logits, targets, reduction="none")

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden (..., d) -> log-distribution (..., V) in float32."""
        return torch.log_softmax(self.proj(hidden).float(), dim=-1)


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
        """hidden (N, d), targets (N,) -> log p(target) (N,) in float32."""
        head_lp = torch.log_softmax(self.head(hidden).float(), dim=-1)
        in_head = targets < self.shortlist
        # head words: their own entry; tail words: start from the entry of their cluster
        cluster = torch.bucketize(targets, self.cutoffs, right=True)  # 0: head, i: tail cluster i
        head_index = torch.where(in_head, targets, self.shortlist + cluster - 1)
        out = head_lp.gather(1, head_index.unsqueeze(1)).squeeze(1)
        for i, tail in enumerate(self.tails):
            rows = torch.nonzero(cluster == i + 1, as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            tail_lp = torch.log_softmax(tail(hidden.index_select(0, rows)).float(), dim=-1)
            local = (targets.index_select(0, rows) - self.bounds[i]).unsqueeze(1)
            out = out.index_add(0, rows, tail_lp.gather(1, local).squeeze(1))
        return out

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden (..., d) -> log-distribution (..., V) in float32."""
        head_lp = torch.log_softmax(self.head(hidden).float(), dim=-1)
        parts = [head_lp[..., : self.shortlist]]
        for i, tail in enumerate(self.tails):
            cluster_lp = head_lp[..., self.shortlist + i : self.shortlist + i + 1]
            parts.append(cluster_lp + torch.log_softmax(tail(hidden).float(), dim=-1))
        return torch.cat(parts, dim=-1)


def build_softmax(dim: int, vocab_size: int, cutoffs: tuple[int, ...], div: float, dropout: float) -> nn.Module:
    if cutoffs:
        return AdaptiveSoftmax(dim, vocab_size, tuple(cutoffs), div=div, dropout=dropout)
    return FullSoftmax(dim, vocab_size, dropout=dropout)
