"""Baseline language models on the same interface as the GCNN: an LSTM and a decoder-only Transformer.

Both subclass :class:`gcnn.lm.LanguageModel`, so training, evaluation, scoring and generation use them unchanged, and
both end in the same output layer as the GCNN (the adaptive softmax, or a full softmax with ``adaptive_cutoffs=()``).
They exist so that the paper's claims against recurrent models can be checked on the same data and code.

Named architectures (``gcnn archs`` lists them; any config field can be overridden by keyword)::

    lstm-medium        2 x 650 LSTM, dropout 0.5 (Zaremba et al., 2014, "medium")
    lstm-large         2 x 1500 LSTM, dropout 0.65 (Zaremba et al., 2014, "large")
    lstm-2048          1 x 2048 LSTM projected to 512 (Jozefowicz et al., 2016, LSTM-2048-512): the paper's Table 4
    transformer-small  6 pre-LN layers, width 512, 8 heads, learned positions up to 512 tokens
    lstm-tiny, transformer-tiny   test presets: seconds per step

Incremental decoding: the LSTM's cache is its (h, c) state; the Transformer's is a key-value cache holding at most
``max_len`` positions. Shapes: B = batch, T = time, D = width, H = heads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnn import registry
from gcnn.config import _check_int, check_cutoffs, fit_cutoffs
from gcnn.errors import ConfigError, GcnnError
from gcnn.lm import LanguageModel
from gcnn.softmax import build_softmax

C = TypeVar("C", bound="_BaselineConfig")


class SequenceTooLongError(GcnnError, ValueError):
    """A Transformer was given more positions than its positional embeddings cover (``max_len``)."""


# ---------------------------------------------------------------------------------------------------- configs
class _BaselineConfig:
    """Validation and (de)serialisation shared by the baseline configs (dataclasses with ``vocab_size``,
    ``embed_dim``, ``dropout``, ``adaptive_cutoffs``, ``adaptive_div``, ``arch`` and ``model_type``)."""

    vocab_size: int
    embed_dim: int
    dropout: float
    adaptive_cutoffs: tuple[int, ...]
    adaptive_div: float

    def __post_init__(self) -> None:
        self.adaptive_cutoffs = tuple(self.adaptive_cutoffs or ())
        self.validate()

    def validate(self) -> None:
        _check_int("vocab_size", self.vocab_size, minimum=2)
        _check_int("embed_dim", self.embed_dim, minimum=1)
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.adaptive_div, (int, float)) or self.adaptive_div < 1:
            raise ConfigError(f"adaptive_div must be a number >= 1, got {self.adaptive_div!r}")
        check_cutoffs(self.adaptive_cutoffs, self.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adaptive_cutoffs"] = list(self.adaptive_cutoffs)
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str = "config") -> C:
        """Rebuild from :meth:`to_dict` output; unknown or missing keys raise ConfigError naming ``source``."""
        data = dict(data)
        expected = cls.__dataclass_fields__["model_type"].default
        model_type = data.pop("model_type", None)
        if model_type != expected:
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected {expected!r}")
        known = _init_fields(cls)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown model key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        if "vocab_size" not in data:
            raise ConfigError(f"{source}: missing required model key 'vocab_size'")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some fields changed (validated again). Unknown field names raise ConfigError."""
        unknown = sorted(set(overrides) - _init_fields(type(self)))
        if unknown:
            raise ConfigError(
                f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(_init_fields(type(self))))}"
            )
        return dataclasses.replace(self, **overrides)

    def _softmax_text(self) -> str:
        return f"adaptive softmax {list(self.adaptive_cutoffs)}" if self.adaptive_cutoffs else "full softmax"


@dataclass
class LSTMConfig(_BaselineConfig):
    """An LSTM language model: embedding -> ``num_layers`` LSTM layers of ``hidden_dim`` units -> softmax.

    ``proj_size`` > 0 projects each layer's output to that width (an LSTMP, as LSTM-2048-512); dropout is applied
    to the embedding, between layers and to the output, as in Zaremba et al. (2014).
    """

    vocab_size: int
    embed_dim: int = 650
    hidden_dim: int = 650
    num_layers: int = 2
    proj_size: int = 0
    dropout: float = 0.5
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: float = 4.0
    arch: str | None = None
    model_type: str = field(default="lstm", init=False)

    def validate(self) -> None:
        super().validate()
        _check_int("hidden_dim", self.hidden_dim, minimum=1)
        _check_int("num_layers", self.num_layers, minimum=1)
        _check_int("proj_size", self.proj_size, minimum=0)
        if self.proj_size >= self.hidden_dim:
            raise ConfigError(
                f"proj_size ({self.proj_size}) must be smaller than hidden_dim ({self.hidden_dim}), or 0 for none"
            )

    @property
    def output_dim(self) -> int:
        return self.proj_size or self.hidden_dim

    def describe(self) -> str:
        proj = f" projected to {self.proj_size}" if self.proj_size else ""
        return f"LSTM {self.num_layers} x {self.hidden_dim}{proj}, dropout {self.dropout}, {self._softmax_text()}"


@dataclass
class TransformerConfig(_BaselineConfig):
    """A decoder-only Transformer: token + learned position embeddings, ``num_layers`` pre-LayerNorm blocks
    (causal self-attention, then a GELU feed-forward of ``ff_dim``), a final LayerNorm, softmax.

    ``embed_dim`` is the model width; ``max_len`` the most positions a sequence (or a cache) can hold.
    """

    vocab_size: int
    embed_dim: int = 512
    num_layers: int = 6
    num_heads: int = 8
    ff_dim: int = 2048
    max_len: int = 512
    dropout: float = 0.1
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: float = 4.0
    arch: str | None = None
    model_type: str = field(default="transformer", init=False)

    def validate(self) -> None:
        super().validate()
        for name in ("num_layers", "num_heads", "ff_dim", "max_len"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")

    @property
    def output_dim(self) -> int:
        return self.embed_dim

    def describe(self) -> str:
        return (
            f"Transformer {self.num_layers} x (width {self.embed_dim}, {self.num_heads} heads, ff {self.ff_dim}), "
            f"pre-LN, learned positions up to {self.max_len}, dropout {self.dropout}, {self._softmax_text()}"
        )


def _init_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


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
            _check_batch(cache.batch_size, tokens)
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
            _check_batch(cache.batch_size, tokens)
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


def _check_batch(cache_batch: int, tokens: Tensor) -> None:
    if tokens.shape[0] != cache_batch:
        raise ValueError(f"the cache holds {cache_batch} sequences but the tokens have batch size {tokens.shape[0]}")


# ---------------------------------------------------------------------------------------------------- registry
def _arch_factory(name: str, config_cls: type[C], fields: dict[str, Any]) -> Callable[..., C]:
    """A config factory ``(vocab_size, **overrides)`` for a named architecture. As for the GCNN's named
    architectures, the default cutoffs at or above the vocabulary size are dropped; explicit ones must fit."""

    def factory(vocab_size: int, **overrides: Any) -> C:
        allowed = _init_fields(config_cls) - {"vocab_size", "arch"}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown model option(s) {', '.join(unknown)} for {name}; known: {', '.join(sorted(allowed))}"
            )
        values = dict(fields)
        if "adaptive_cutoffs" not in overrides:
            values["adaptive_cutoffs"] = fit_cutoffs(values.get("adaptive_cutoffs", ()), vocab_size)
        values.update(overrides)
        return config_cls(vocab_size=vocab_size, arch=name, **values)

    return factory


WIKITEXT_CUTOFFS = (2000, 10000)  # the GCNN presets' cutoffs, so comparisons share the output layer
GBW_CUTOFFS = (4000, 40000, 200000)  # GCNN-9 and GCNN-8B's, for the paper's Table 4

# name -> (description, config class, fields)
BASELINES: dict[str, tuple[str, type, dict[str, Any]]] = {
    "lstm-medium": (
        "LSTM baseline: Zaremba et al. 2014 medium, 2 x 650, dropout 0.5",
        LSTMConfig,
        dict(embed_dim=650, hidden_dim=650, num_layers=2, dropout=0.5, adaptive_cutoffs=WIKITEXT_CUTOFFS),
    ),
    "lstm-large": (
        "LSTM baseline: Zaremba et al. 2014 large, 2 x 1500, dropout 0.65",
        LSTMConfig,
        dict(embed_dim=1500, hidden_dim=1500, num_layers=2, dropout=0.65, adaptive_cutoffs=WIKITEXT_CUTOFFS),
    ),
    "lstm-2048": (
        "LSTM baseline for the paper's Table 4: 1 x 2048 projected to 512 (Jozefowicz et al. 2016 LSTM-2048-512)",
        LSTMConfig,
        dict(embed_dim=512, hidden_dim=2048, num_layers=1, proj_size=512, dropout=0.0, adaptive_cutoffs=GBW_CUTOFFS),
    ),
    "transformer-small": (
        "Transformer baseline: 6 pre-LN layers, width 512, 8 heads, ff 2048, 512 positions",
        TransformerConfig,
        dict(
            embed_dim=512,
            num_layers=6,
            num_heads=8,
            ff_dim=2048,
            max_len=512,
            dropout=0.1,
            adaptive_cutoffs=WIKITEXT_CUTOFFS,
        ),
    ),
    "lstm-tiny": (
        "LSTM test preset: seconds per step",
        LSTMConfig,
        dict(embed_dim=16, hidden_dim=32, num_layers=2, dropout=0.0, adaptive_cutoffs=(20, 60)),
    ),
    "transformer-tiny": (
        "Transformer test preset: seconds per step",
        TransformerConfig,
        dict(embed_dim=32, num_layers=2, num_heads=4, ff_dim=64, max_len=64, dropout=0.0, adaptive_cutoffs=(20, 60)),
    ),
}

registry.register_type("lstm", LSTMConfig, LSTMLM)
registry.register_type("transformer", TransformerConfig, TransformerLM)
for _name, (_description, _cls, _fields) in BASELINES.items():
    registry.register_arch(_name, _description, _arch_factory(_name, _cls, _fields))
