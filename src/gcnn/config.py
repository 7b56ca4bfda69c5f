"""Model configuration: the architecture of a Gated Convolutional Network as plain, validated data.

A model is a stack of *blocks*. A block is a short list of causal convolution layers, each written ``[k, n]`` as in
the paper's Table 1 (kernel width k, n output channels), repeated ``repeat`` times. A residual block adds its input
to its output (through a projection where the widths differ); a plain block (``residual = false``) does not.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

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

    def describe(self) -> str:
        inner = ", ".join(f"[{k},{n}]" for k, n in self.layers)
        if len(self.layers) > 1:
            inner = f"({inner})"
        kind = "" if self.residual else " plain"
        return f"{inner} x{self.repeat}{kind}"


@dataclass
class ModelConfig:
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
        dropout: dropout on the embedding, before every convolution and before the output layer.
        adaptive_cutoffs: word-id cutoffs of the adaptive softmax clusters; empty means a full softmax.
        adaptive_div: each tail cluster projects the hidden state down by this factor more than the last.
        init: ``kaiming`` (He normal, the paper) or ``fairseq`` (N(0, sqrt(4(1-p)/fan_in)), fairseq's).
        arch: the name of the architecture this config was built from, if any (informational).
    """

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
    model_type: str = field(default="gcnn", init=False)

    def __post_init__(self) -> None:
        self.blocks = tuple(b if isinstance(b, Block) else _block_from_dict(b) for b in self.blocks)
        self.adaptive_cutoffs = tuple(self.adaptive_cutoffs or ())
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        _check_int("vocab_size", self.vocab_size, minimum=2)
        _check_int("embed_dim", self.embed_dim, minimum=1)
        if not self.blocks:
            raise ConfigError("blocks: a model needs at least one block")
        _check_choice("gate", self.gate, GATES)
        _check_choice("gate_placement", self.gate_placement, GATE_PLACEMENTS)
        _check_choice("init", self.init, INITS)
        for name in ("weight_norm", "residual_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.adaptive_div, (int, float)) or self.adaptive_div < 1:
            raise ConfigError(f"adaptive_div must be a number >= 1, got {self.adaptive_div!r}")
        check_cutoffs(self.adaptive_cutoffs, self.vocab_size)

    # ------------------------------------------------------------------ derived structure
    @property
    def num_layers(self) -> int:
        return sum(len(b.layers) * b.repeat for b in self.blocks)

    @property
    def receptive_field(self) -> int:
        """How many tokens (the current one included) can influence a prediction."""
        return 1 + sum((k - 1) * b.repeat for b in self.blocks for k, _ in b.layers)

    @property
    def output_dim(self) -> int:
        return self.blocks[-1].layers[-1][1]

    def describe(self) -> str:
        return ", ".join(b.describe() for b in self.blocks)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["blocks"] = [
            {"layers": [list(layer) for layer in b.layers], "repeat": b.repeat, "residual": b.residual}
            for b in self.blocks
        ]
        out["adaptive_cutoffs"] = list(self.adaptive_cutoffs)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "ModelConfig":
        data = dict(data)
        model_type = data.pop("model_type", "gcnn")
        if model_type != "gcnn":
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected 'gcnn'")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        for key in ("vocab_size", "blocks"):
            if key not in data:
                raise ConfigError(f"{source}: missing required model key {key!r}")
        if not isinstance(data["blocks"], (list, tuple)):
            raise ConfigError(f"{source}: blocks must be a list of blocks")
        try:
            return cls(**data)
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise ConfigError(f"{source}: {exc}") from None

    def replace(self, **overrides: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again). Unknown field names raise ConfigError."""
        known = {f.name for f in dataclasses.fields(self) if f.init}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)


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
        unknown = sorted(set(data) - {"layers", "repeat", "residual"})
        if unknown:
            raise ConfigError(f"unknown block key(s) {', '.join(unknown)}; a block has layers, repeat, residual")
        if "layers" not in data:
            raise ConfigError(f"block {dict(data)} has no 'layers'")
        residual = data.get("residual", True)
        if not isinstance(residual, bool):
            raise ConfigError(f"block residual must be true or false, got {residual!r}")
        return Block(layers=tuple(tuple(x) for x in data["layers"]), repeat=data.get("repeat", 1), residual=residual)
    raise ConfigError(f"a block must be a table with 'layers' (and optionally 'repeat', 'residual'), got {data!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


SQRT_HALF = math.sqrt(0.5)
