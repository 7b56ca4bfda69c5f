"""Model configurations as plain, validated data: the GCNN's (:class:`ModelConfig`) and the baselines'
(:class:`LSTMConfig`, :class:`TransformerConfig`), all built on :class:`ConfigBase`.

A GCNN is a stack of *blocks*.
 A block is a short list of causal convolution layers, each written ``[k, n]`` as in
the paper's Table 1 (kernel width k, n output channels), repeated ``repeat`` times. A residual block adds its input
to its output (through a projection where the widths differ); a plain block (``residual = false``) does not. A block
may dilate its convolutions (``dilation = d``: a kernel of width k then spans (k-1)d+1 positions; beyond the paper).

The same structure is written in TOML, for custom architectures::

    [model]
    embed_dim = 128
    adaptive_cutoffs = [2000, 10000]
    blocks = [
      { layers = [[4, 512]], residual = false },
      { layers = [[1, 128], [5, 128], [1, 512]], repeat = 3 },
    ]
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, TypeVar

from gcnn.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GATES = ("glu", "gtu", "relu", "tanh", "linear", "bilinear")
# gates that combine two halves of a convolution's output (so the convolution has 2n output channels)
TWO_BRANCH_GATES = ("glu", "gtu", "bilinear")
GATE_PLACEMENTS = ("layer", "block")
INITS = ("kaiming", "fairseq")


@dataclass(frozen=True)
class Block:
    """``layers`` = ((kernel, channels), ...), repeated ``repeat`` times; ``residual`` adds the block's input."""

    layers: tuple[tuple[int, int], ...]
    repeat: int = 1
    residual: bool = True
    dilation: int = 1

    def __post_init__(self) -> None:
        layers = tuple(tuple(layer) for layer in self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ConfigError("a block needs at least one layer [kernel, channels]")
        for layer in layers:
            if len(layer) != 2 or not all(_is_int(v) and v > 0 for v in layer):
                raise ConfigError(f"block layer {list(layer)} must be [kernel, channels] with positive integers")
        if not _is_int(self.repeat) or self.repeat < 1:
            raise ConfigError(f"block repeat must be a positive integer, got {self.repeat!r}")
        if not _is_int(self.dilation) or self.dilation < 1:
            raise ConfigError(f"block dilation must be a positive integer, got {self.dilation!r}")

    def describe(self) -> str:
        inner = ", ".join(f"[{k},{n}]" for k, n in self.layers)
        if len(self.layers) > 1:
            inner = f"({inner})"
        kind = "" if self.residual else " plain"
        dilated = f" dilation {self.dilation}" if self.dilation != 1 else ""
        return f"{inner} x{self.repeat}{kind}{dilated}"


C = TypeVar("C", bound="ConfigBase")


class ConfigBase:
    """What every model config shares: validation of the common fields, and (de)serialisation.

    A model config is a dataclass subclassing this with at least ``vocab_size``, ``embed_dim``, ``dropout``,
    ``adaptive_cutoffs``, ``adaptive_div`` and ``arch`` fields, and a ``model_type`` class attribute naming its model
    in the registry (:mod:`gcnn.architectures`). ``to_dict``/``from_dict`` round-trip through JSON (config.json).
    """

    model_type: ClassVar[str]
    vocab_size: int
    embed_dim: int
    dropout: float
    adaptive_cutoffs: tuple[int, ...]
    adaptive_div: float
    arch: str | None

    def __post_init__(self) -> None:
        self.adaptive_cutoffs = tuple(self.adaptive_cutoffs or ())
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field that is out of range or of the wrong type."""
        _check_int("vocab_size", self.vocab_size, minimum=2)
        _check_int("embed_dim", self.embed_dim, minimum=1)
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not _is_number(self.adaptive_div) or self.adaptive_div < 1:
            raise ConfigError(f"adaptive_div must be a number >= 1, got {self.adaptive_div!r}")
        if self.arch is not None and not isinstance(self.arch, str):
            raise ConfigError(f"arch must be a name or null, got {self.arch!r}")
        check_cutoffs(self.adaptive_cutoffs, self.vocab_size)

    @classmethod
    def field_names(cls) -> set[str]:
        """The keys ``from_dict`` and ``replace`` accept."""
        return {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]

    @property
    def output_dim(self) -> int:  # pragma: no cover - every config defines it
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - every config defines it
        raise NotImplementedError

    def softmax_text(self) -> str:
        return f"adaptive softmax {list(self.adaptive_cutoffs)}" if self.adaptive_cutoffs else "full softmax"

    def to_dict(self) -> dict[str, Any]:
        out = {"model_type": self.model_type, **dataclasses.asdict(self)}  # type: ignore[call-overload]
        out["adaptive_cutoffs"] = list(self.adaptive_cutoffs)
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str = "config") -> C:
        """Rebuild from :meth:`to_dict` output; unknown, missing or bad keys raise ConfigError naming ``source``."""
        data = dict(data)
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected {cls.model_type!r}")
        known = cls.field_names()
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING  # type: ignore[arg-type]
                    and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{source}: missing required model key(s) {', '.join(missing)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.template}") from None

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some fields changed (validated again). Unknown field names raise ConfigError."""
        known = self.field_names()
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]


@dataclass
class ModelConfig(ConfigBase):
    """Everything needed to build a :class:`gcnn.model.GatedConvLM`.

    Fields:
        vocab_size: number of word types (ids must be sorted by frequency for the adaptive softmax).
        blocks: the convolution stack, see :class:`Block`.
        embed_dim: embedding size; projected to the first convolution's width where they differ.
        gate: ``glu`` (default), ``gtu``, ``relu``, ``tanh``, ``linear`` or ``bilinear``.
        gate_placement: ``layer`` gates after every convolution (the authors' fairseq implementation);
            ``block`` runs two linear stacks of convolutions per block and gates once, ``A * sigmoid(B)``.
        weight_norm: weight normalization (Salimans & Kingma) on convolutions and projections.
        residual_scale: multiply each residual sum by sqrt(0.5), as fairseq does.
        dropout: dropout on the embedding, before every convolution (between layers) and before the output layer.
        adaptive_cutoffs: word-id cutoffs of the adaptive softmax clusters; empty means a full softmax.
        adaptive_div: each tail cluster projects the hidden state down by this factor more than the last.
        init: ``kaiming`` (He normal, the paper) or ``fairseq`` (N(0, sqrt(4(1-p)/fan_in)), fairseq's).
        arch: the name of the architecture this config was built from, if any (informational).

    Beyond the paper (all off by default; a config.json leaves them out while they are off):
        tie_embeddings: the input embedding and the output layer share their word matrices (Press & Wolf 2017;
            Inan et al. 2017). With a full softmax the embedding is the softmax's weight; with an adaptive softmax
            it needs ``adaptive_input`` and shares every cluster's words and projection. Where the last block's
            width differs from ``embed_dim``, a linear projection maps the hidden state to ``embed_dim`` first.
        adaptive_input: adaptive input representations (Baevski & Auli 2019): the words of the adaptive softmax's
            clusters get embeddings of ``embed_dim / adaptive_div**i`` dimensions (the head's full width),
            projected to ``embed_dim``; needs ``adaptive_cutoffs``.
        embed_dropout: drop whole word types from the embedding with this probability in each forward pass
            (Gal & Ghahramani 2016, as in Merity et al.'s AWD-LSTM), rescaling the kept ones.
    """

    model_type: ClassVar[str] = "gcnn"
    vocab_size: int
    blocks: tuple[Block, ...]
    embed_dim: int = 280
    gate: str = "glu"
    gate_placement: str = "layer"
    weight_norm: bool = True
    residual_scale: bool = False
    dropout: float = 0.0
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: float = 4.0
    init: str = "kaiming"
    arch: str | None = None
    tie_embeddings: bool = False
    adaptive_input: bool = False
    embed_dropout: float = 0.0

    # fields added after the first release: to_dict leaves them out at these values, so that the config.json of a
    # model that does not use them is what earlier versions wrote (and resumes of their runs see the same config)
    OPTIONAL_FIELDS: ClassVar[dict[str, Any]] = {"tie_embeddings": False, "adaptive_input": False, "embed_dropout": 0.0}

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, (list, tuple)):
            raise ConfigError("blocks must be a list of blocks")
        self.blocks = tuple(b if isinstance(b, Block) else _block_from_dict(b) for b in self.blocks)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if not self.blocks:
            raise ConfigError("blocks: a model needs at least one block")
        _check_choice("gate", self.gate, GATES)
        _check_choice("gate_placement", self.gate_placement, GATE_PLACEMENTS)
        _check_choice("init", self.init, INITS)
        for name in ("weight_norm", "residual_scale", "tie_embeddings", "adaptive_input"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not _is_number(self.embed_dropout) or not 0 <= self.embed_dropout < 1:
            raise ConfigError(f"embed_dropout must be a number in [0, 1), got {self.embed_dropout!r}")
        if self.adaptive_input and not self.adaptive_cutoffs:
            raise ConfigError("adaptive_input needs adaptive_cutoffs (its clusters are the adaptive softmax's)")
        if self.tie_embeddings and self.adaptive_cutoffs and not self.adaptive_input:
            raise ConfigError(
                "tie_embeddings with an adaptive softmax needs adaptive_input = true (the tail clusters' words have "
                "smaller dimensions than a plain embedding's), or adaptive_cutoffs = [] for a full softmax"
            )

    # ------------------------------------------------------------------ derived structure
    @property
    def num_layers(self) -> int:
        return sum(len(b.layers) * b.repeat for b in self.blocks)

    @property
    def receptive_field(self) -> int:
        """How many tokens (the current one included) can influence a prediction."""
        return 1 + sum((k - 1) * b.dilation * b.repeat for b in self.blocks for k, _ in b.layers)

    @property
    def output_dim(self) -> int:
        return self.blocks[-1].layers[-1][1]

    def describe(self) -> str:
        return ", ".join(b.describe() for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["blocks"] = [
            {"layers": [list(layer) for layer in b.layers], "repeat": b.repeat, "residual": b.residual,
             **({"dilation": b.dilation} if b.dilation != 1 else {})}
            for b in self.blocks
        ]
        for name, default in self.OPTIONAL_FIELDS.items():
            if out[name] == default:
                del out[name]
        return out


@dataclass
class LSTMConfig(ConfigBase):
    """An LSTM language model: embedding -> ``num_layers`` LSTM layers of ``hidden_dim`` units -> softmax.

    ``proj_size`` > 0 projects each layer's output to that width (an LSTMP, as LSTM-2048-512); dropout is applied
    to the embedding, between layers and to the output, as in Zaremba et al. (2014).
    """

    model_type: ClassVar[str] = "lstm"
    vocab_size: int
    embed_dim: int = 650
    hidden_dim: int = 650
    num_layers: int = 2
    proj_size: int = 0
    dropout: float = 0.5
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: float = 4.0
    arch: str | None = None

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
        return f"LSTM {self.num_layers} x {self.hidden_dim}{proj}, dropout {self.dropout}, {self.softmax_text()}"


@dataclass
class TransformerConfig(ConfigBase):
    """A decoder-only Transformer: token + learned position embeddings, ``num_layers`` pre-LayerNorm blocks
    (causal self-attention, then a GELU feed-forward of ``ff_dim``), a final LayerNorm, softmax.

    ``embed_dim`` is the model width; ``max_len`` the most positions a sequence (or a cache) can hold.
    """

    model_type: ClassVar[str] = "transformer"
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
            f"pre-LN, learned positions up to {self.max_len}, dropout {self.dropout}, {self.softmax_text()}"
        )


def check_cutoffs(cutoffs: Iterable[int], vocab_size: int) -> None:
    """Adaptive-softmax cutoffs must be increasing positive integers below the vocabulary size."""
    cutoffs = list(cutoffs)
    previous = 0
    for c in cutoffs:
        if not _is_int(c) or c <= previous:
            raise ConfigError(f"adaptive_cutoffs {cutoffs} must be strictly increasing positive integers")
        previous = c
    if cutoffs and cutoffs[-1] >= vocab_size:
        raise ConfigError(
            f"adaptive_cutoffs {cutoffs} reach the vocabulary size {vocab_size}: every cutoff must be below it "
            f"(drop the cutoffs >= {vocab_size}, or use adaptive_cutoffs = [] for a full softmax)"
        )


def fit_cutoffs(cutoffs: Iterable[int], vocab_size: int) -> tuple[int, ...]:
    """The documented automatic adjustment for named architectures: drop cutoffs at or above the vocabulary size.

    If none remain, the model uses a full softmax.
    """
    return tuple(c for c in cutoffs if c < vocab_size)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing file, a folder or invalid TOML is a ConfigError naming the path."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a TOML config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _block_from_dict(data: Any) -> Block:
    if isinstance(data, Mapping):
        unknown = sorted(set(data) - {"layers", "repeat", "residual", "dilation"})
        if unknown:
            raise ConfigError(
                f"unknown block key(s) {', '.join(unknown)}; a block has layers, repeat, residual, dilation"
            )
        if "layers" not in data:
            raise ConfigError(f"block {dict(data)} has no 'layers'")
        residual = data.get("residual", True)
        if not isinstance(residual, bool):
            raise ConfigError(f"block residual must be true or false, got {residual!r}")
        return Block(layers=tuple(tuple(x) for x in data["layers"]), repeat=data.get("repeat", 1), residual=residual,
                     dilation=data.get("dilation", 1))
    raise ConfigError(
        f"a block must be a table with 'layers' (and optionally 'repeat', 'residual', 'dilation'), got {data!r}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


SQRT_HALF = math.sqrt(0.5)
