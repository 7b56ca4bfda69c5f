"""Baseline language models on the same interface as the GCNN: an LSTM and a decoder-only Transformer.

Both subclass :class:`gcnn.lm.LanguageModel`, so training, evaluation, scoring and generation use them unchanged, and
both end in the same output layer as the GCNN (the adaptive softmax, or a full softmax with ``adaptive_cutoffs=()``).
They exist so that the paper's claims against recurrent models can be checked on the same data and code.

Their configs are :class:`gcnn.config.LSTMConfig` and :class:`gcnn.config.TransformerConfig`; named architectures
(in :mod:`gcnn.architectures`; ``gcnn archs`` lists them, any config field can be overridden by keyword)::

    lstm-medium        2 x 650 LSTM, dropout 0.5 (Zaremba et al., 2014, "medium")
    lstm-large         2 x 1500 LSTM, dropout 0.65 (Zaremba et al., 2014, "large")
    lstm-2048          1 x 2048 LSTM projected to 512 (Jozefowicz et al., 2016, LSTM-2048-512): the paper's Table 4
    transformer-small  6 pre-LN layers, width 512, 8 heads, learned positions up to 512 tokens
    lstm-tiny, transformer-tiny   test presets: seconds per step

Incremental decoding: the LSTM's cache is its (h, c) state; the Transformer's is a key-value cache holding at most
``max_len`` positions. Shapes: B = batch, T = time, D = width, H = heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnn.config import LSTMConfig, TransformerConfig
from gcnn.errors import GcnnError
from gcnn.lm import LanguageModel, check_cache_batch
from gcnn.softmax import build_softmax


class SequenceTooLongError(GcnnError, ValueError):
    """A Transformer was given more positions than its positional embeddings cover (``max_len``)."""


# ---------------------------------------------------------------------------------------------------- LSTM
class LSTMState:
    """Incremental-decoding state of an LSTM: (h, c), each (layers, B, ·), or None before the first call.

    The state is detached from the graph, so carrying it across training batches is truncated backpropagation.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.state: tuple[Tensor, Tensor] | None = None
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows in ``index`` (for beam search or dropping finished sequences)."""
        if self.state is not None:
            self.state = (self.state[0].index_select(1, index), self.state[1].index_select(1, index))
        self.batch_size = int(index.numel())

    def select(self, index: Tensor) -> "LSTMState":
        """A new state holding the rows in ``index`` of this one (this one is left as it is)."""
        out = LSTMState(int(index.numel()))
        if self.state is not None:
            out.state = (self.state[0].index_select(1, index), self.state[1].index_select(1, index))
        out.length = self.length
        return out

    @staticmethod
    def can_stack(a: "LSTMState", b: "LSTMState") -> bool:
        """Rows of any lengths can share a state: (h, c) is per row."""
        return (a.state is None) == (b.state is None)

    @classmethod
    def stack(cls, states: "list[LSTMState]") -> "LSTMState":
        """One state holding the rows of ``states`` in order; ``length`` becomes the longest row's."""
        if not states or any(not cls.can_stack(states[0], s) for s in states):
            raise ValueError("states to stack must all have run (or all not yet)")
        out = cls(sum(s.batch_size for s in states))
        if states[0].state is not None:
            out.state = (torch.cat([s.state[0] for s in states], dim=1), torch.cat([s.state[1] for s in states], dim=1))
        out.length = max(s.length for s in states)
        return out


SMALL_CALL_TOKENS = 16  # batch x time at or below which the LSTM uses torch's native CPU kernel, see LSTMLM._run_lstm


class LSTMLM(LanguageModel):
    """Embedding -> dropout -> multi-layer LSTM (dropout between layers) -> dropout -> softmax."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embed_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            proj_size=config.proj_size,
        )
        self.softmax = build_softmax(
            config.output_dim, config.vocab_size, config.adaptive_cutoffs, config.adaptive_div, config.dropout
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-0.05, 0.05) for the embedding and the LSTM, as Zaremba et al.'s medium model."""
        nn.init.uniform_(self.embed.weight, -0.05, 0.05)
        for p in self.lstm.parameters():
            nn.init.uniform_(p, -0.05, 0.05)

    def new_cache(self, batch_size: int) -> LSTMState:
        return LSTMState(batch_size)

    def hidden_states(self, tokens: Tensor, cache: LSTMState | None = None) -> Tensor:
        """tokens (B, T) -> (B, T, output_dim)."""
        x = self.dropout(self.embed(tokens))  # (B, T, E)
        if cache is not None:
            check_cache_batch(cache.batch_size, tokens)
        x, (h, c) = self._run_lstm(x, None if cache is None else cache.state)
        if cache is not None:
            cache.state = (h.detach(), c.detach())
            cache.length += tokens.shape[1]
        return self.dropout(x)

    def _run_lstm(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """torch's LSTM. On the CPU, its oneDNN kernel repacks the weights at every call, which costs far more than a
        small call itself (measured with 2 x 1150 units: 117 ms against 18 ms with torch's native kernel for one
        token at batch 1; faster from about 100 tokens on, and in training): small calls without gradients, such as
        the steps of incremental decoding, use the native kernel."""
        if x.device.type == "cpu" and not torch.is_grad_enabled() and x.shape[0] * x.shape[1] <= SMALL_CALL_TOKENS:
            with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None):
                return self.lstm(x, state)
        return self.lstm(x, state)


# ---------------------------------------------------------------------------------------------------- Transformer
class KVCache:
    """Keys and values of every layer for the positions seen so far, in buffers of ``max_len`` positions.

    ``length`` counts the positions seen; a call that would go past ``max_len`` raises SequenceTooLongError.
    """

    def __init__(self, batch_size: int, num_layers: int, max_len: int) -> None:
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers

    def extend(self, layer: int, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, T, D/H) at positions start.. and return the keys and values of positions 0..start+T."""
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys[layer], self.values[layer] = k.new_zeros(shape), v.new_zeros(shape)
        keys, values = self.keys[layer], self.values[layer]
        end = start + k.shape[2]
        keys[:, :, start:end] = k.detach()
        values[:, :, start:end] = v.detach()
        if start == 0:
            return k, v
        if not (k.requires_grad or v.requires_grad):  # inference: attend over the buffers themselves, no copy
            return keys[:, :, :end], values[:, :, :end]
        # with gradients, the new positions come from k, v themselves so that gradients reach them
        return torch.cat([keys[:, :, :start], k], dim=2), torch.cat([values[:, :, :start], v], dim=2)

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows in ``index`` (for beam search or dropping finished sequences)."""
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        self.batch_size = int(index.numel())

    def select(self, index: Tensor) -> "KVCache":
        """A new cache holding the rows in ``index`` of this one (this one is left as it is)."""
        out = KVCache(int(index.numel()), len(self.keys), self.max_len)
        out.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        out.values = [None if v is None else v.index_select(0, index) for v in self.values]
        out.length = self.length
        return out

    @staticmethod
    def can_stack(a: "KVCache", b: "KVCache") -> bool:
        """Rows share a cache only at the same position: the cache has one ``length`` (and one position) for all."""
        return a.length == b.length and a.max_len == b.max_len and len(a.keys) == len(b.keys)

    @classmethod
    def stack(cls, caches: "list[KVCache]") -> "KVCache":
        """One cache holding the rows of ``caches`` in order; all must be at the same position (:meth:`can_stack`)."""
        if not caches or any(not cls.can_stack(caches[0], c) for c in caches):
            raise ValueError("key-value caches can be stacked only at the same position (length) and shape")
        first = caches[0]
        out = cls(sum(c.batch_size for c in caches), len(first.keys), first.max_len)
        for layer in range(len(first.keys)):
            if all(c.keys[layer] is not None for c in caches):
                out.keys[layer] = torch.cat([c.keys[layer] for c in caches], dim=0)
                out.values[layer] = torch.cat([c.values[layer] for c in caches], dim=0)
        out.length = first.length
        return out


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.out = nn.Linear(config.embed_dim, config.embed_dim)
        self.dropout = config.dropout

    def forward(self, x: Tensor, cache: KVCache | None, layer: int, start: int) -> Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # q, k, v: (B, H, T, D/H)
            k, v = cache.extend(layer, k, v, start)
        p = self.dropout if self.training else 0.0
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif time == 1:  # one new position after the cached ones: it sees every key
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # queries at positions start.., keys at 0..start+T-1: query i sees keys <= start + i
            mask = torch.ones(time, start + time, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(batch, time, width))


class TransformerBlock(nn.Module):
    """Pre-LN: x + attention(LN(x)), then x + feed-forward(LN(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim)
        self.attention = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim)
        self.ff = nn.Sequential(
            nn.Linear(config.embed_dim, config.ff_dim), nn.GELU(), nn.Linear(config.ff_dim, config.embed_dim)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int, start: int) -> Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), cache, layer, start))
        return x + self.dropout(self.ff(self.norm2(x)))


class TransformerLM(LanguageModel):
    """Token + position embeddings -> pre-LN Transformer blocks -> LayerNorm -> softmax."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.positions = nn.Embedding(config.max_len, config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.embed_dim)
        self.softmax = build_softmax(
            config.output_dim, config.vocab_size, config.adaptive_cutoffs, config.adaptive_div, config.dropout
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) for embeddings and the blocks' linear layers; the layers that write into the residual stream
        are scaled down by sqrt(2 * layers) so the residual sum keeps its scale (GPT-2)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for embedding in (self.embed, self.positions):
            nn.init.normal_(embedding.weight, 0.0, 0.02)
        for block in self.blocks:
            for linear, std in (
                (block.attention.qkv, 0.02),
                (block.attention.out, residual_std),
                (block.ff[0], 0.02),
                (block.ff[2], residual_std),
            ):
                nn.init.normal_(linear.weight, 0.0, std)
                nn.init.zeros_(linear.bias)

    @property
    def receptive_field(self) -> int:
        """The longest context the model can take: ``max_len`` positions."""
        return self.config.max_len

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache(batch_size, self.config.num_layers, self.config.max_len)

    def hidden_states(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens (B, T) -> (B, T, D). Raises SequenceTooLongError past ``max_len`` positions."""
        start = 0
        if cache is not None:
            check_cache_batch(cache.batch_size, tokens)
            start = cache.length
        end = start + tokens.shape[1]
        if end > self.config.max_len:
            raise SequenceTooLongError(
                f"the Transformer's positions end at max_len={self.config.max_len}, but this input reaches position {end} "
                f"({'cached ' + str(start) + ' + ' if start else ''}{tokens.shape[1]} tokens): use a context of at most "
                f"{self.config.max_len} tokens, or build the model with a larger max_len"
            )
        positions = torch.arange(start, end, device=tokens.device)
        x = self.dropout(self.embed(tokens) + self.positions(positions))  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, start)
        if cache is not None:
            cache.length = end
        return self.dropout(self.norm(x))
