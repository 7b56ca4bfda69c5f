"""Import language models trained with fairseq's ``fconv_lm`` (the paper authors' implementation).

A fairseq checkpoint is a pickle holding the training options (``args``, or ``cfg["model"]`` in newer fairseq) and
the weights (``model``, keys ``decoder.*``). It is read with ``torch.load(weights_only=True)``, which rebuilds only
tensors and plain containers, with ``argparse.Namespace``, numpy scalars and placeholders for fairseq's training meters
as the only extra classes allowed: no code from the file runs.

What fairseq's ``FConvDecoder`` computes (time-major, T x B x C), and where each piece goes in gcnn:

* ``embed_tokens`` -> ``embed``; ``fc1`` (a weight-normalized linear layer, always present) -> ``input_proj``, or,
  where the embedding is as wide as the first convolution (gcnn has no projection then), folded into the embedding
  table: ``E' = E W^T + b`` (the same function at inference; dropout sits before fc1 in training only).
* layer spec ``(out_channels, kernel, residual)``: ``convolutions.{i}`` is a ``ConvTBC`` with weight (k, C_in, 2n)
  and weight norm over dim 2 (dim 0 in checkpoints older than decoder version 2), causal by cutting the k-1 future
  frames, then GLU. ``residual = r > 0`` adds the output of layer i-r (fc1's output for the first layers), through
  ``projections.{i}`` where the widths differ, and scales the sum by sqrt(0.5); ``r = 0`` adds nothing. A layer with
  r > 0 therefore closes a gcnn residual block of its last r layers, whose other layers must have r = 0.
* ``adaptive_softmax`` (head: ``cutoff[0]`` words then one entry per cluster; tails: ``Linear(d, d / 4^(i+1))``,
  ``Linear(., cluster size)``) -> ``softmax``; or ``fc2`` then ``fc3`` (two linear maps) folded into one full softmax.
* ``DICT.txt``: ``word count`` lines; fairseq puts ``<s>``, ``<pad>``, ``</s>``, ``<unk>`` at ids 0-3 before them.
  wav2letter's ConvLM ``.vocab`` files (``<fairseq_style>``, the specials, one word per line) are read too.

Checkpoints of fairseq 0.5-0.9 carry training meters (``fairseq.meters.AverageMeter`` and kin) in
``extra_state["train_meters"]``: they are unpickled as :class:`FairseqMeter` placeholders. A stale
``_linearized_weight`` entry of a convolution (an inference cache some versions saved) is dropped, as fairseq does.
wav2letter's word-level ConvLMs for Librispeech and WSJ are such fairseq checkpoints.
"""

from __future__ import annotations

import argparse
import ast
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy
import torch
from torch import Tensor

from gcnn.config import Block, ModelConfig
from gcnn.data.vocab import Vocabulary
from gcnn.errors import CheckpointError, DataError
from gcnn.card import ModelCard
from gcnn.fs import sha256_file
from gcnn.model import GatedConvLM

try:  # numpy >= 2
    from numpy._core import multiarray as numpy_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as numpy_multiarray

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary ids 0..3
OVERWRITE_FLAG = "#fairseq:overwrite"
WAV2LETTER_HEADER = "<fairseq_style>"  # first line of wav2letter's ConvLM .vocab files (in the place of <s>)
# fairseq's registered fconv_lm architectures, for checkpoints whose options leave the layer spec at its default
ARCH_LAYERS = {
    "fconv_lm": "[(1268, 4)] * 13",
    "fconv_lm_dauphin_wikitext103": "[(850, 6)] * 3 + [(850, 1)] * 1 + [(850, 5)] * 4 + [(850, 1)] * 1"
    " + [(850, 4)] * 3 + [(1024, 4)] * 1 + [(2048, 4)] * 1",
    "fconv_lm_dauphin_gbw": "[(512, 5)] + [(128, 1, 0), (128, 5, 0), (512, 1, 3)] * 3"
    " + [(512, 1, 0), (512, 5, 0), (1024, 1, 3)] * 3 + [(1024, 1, 0), (1024, 5, 0), (2048, 1, 3)] * 6"
    " + [(1024, 1, 0), (1024, 5, 0), (4096, 1, 3)]",
}
MAX_LAYERS = 10_000
CFG_SECTIONS = ("common", "task", "criterion", "optimizer", "lr_scheduler", "optimization", "model")
# training options shown in the model card of a converted model
RECIPE_OPTIONS = (
    "arch", "task", "sample_break_mode", "tokens_per_sample", "max_tokens", "update_freq", "criterion", "optimizer",
    "lr", "momentum", "clip_norm", "weight_decay", "lr_scheduler", "lr_shrink", "dropout", "adaptive_softmax_cutoff",
    "adaptive_softmax_dropout", "max_epoch", "max_update", "seed", "fp16",
)


class FairseqMeter:
    """Stands in for the training meters fairseq 0.5-0.9 pickles into ``extra_state["train_meters"]``
    (``fairseq.meters.AverageMeter``, ``TimeMeter``, ``StopwatchMeter``; ``fairseq.logging.meters`` from 0.10): the
    unpickler builds one of these instead, holding the meter's fields as a plain dict. No fairseq code is needed or
    run, and the meters are not used (they are training statistics)."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.fields = dict(state) if isinstance(state, dict) else {"state": state}

    def __repr__(self) -> str:
        return f"FairseqMeter({self.fields!r})"


METER_NAMES = tuple(
    f"{module}.{name}"
    for module in ("fairseq.meters", "fairseq.logging.meters")
    for name in ("AverageMeter", "TimeMeter", "StopwatchMeter")
)
# what fairseq checkpoints hold besides tensors and containers; none of these runs code when unpickled
_SAFE_GLOBALS: list[Any] = [
    *((FairseqMeter, name) for name in METER_NAMES),
    argparse.Namespace,
    numpy.dtype,
    numpy_multiarray.scalar,
    (numpy_multiarray.scalar, "numpy.core.multiarray.scalar"),  # the name numpy < 2 pickled it under
    *{type(numpy.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"},  # numpy.dtypes.Float64DType and its kin
]


@dataclass(frozen=True)
class FairseqLayer:
    """One entry of fairseq's decoder layer spec."""

    out_channels: int
    kernel: int
    residual: int  # how many layers back the residual comes from; 0: none


@dataclass
class FairseqImport:
    """A converted model with its vocabulary and the facts about the source, for the model card."""

    model: GatedConvLM
    vocab: Vocabulary
    arch: str
    layers: list[FairseqLayer]
    options: dict[str, Any]


# ----------------------------------------------------------------------------------------------- the layer spec
def parse_layer_spec(spec: str) -> list[FairseqLayer]:
    """Parse a spec such as ``"[(850, 6)] * 3 + [(128, 1, 0), (512, 1, 3)] * 2"`` without evaluating code.

    Only list and tuple literals of integers, ``+`` between lists and ``*`` by an integer are accepted.
    """
    try:
        value = _spec_value(ast.parse(spec.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"decoder_layers {spec!r}: not a layer list of (channels, kernel[, residual]): {exc}"
        ) from None
    if not isinstance(value, (list, tuple)) or not value:
        raise CheckpointError(f"decoder_layers {spec!r}: expected a non-empty list of layers")
    layers = []
    for entry in value:
        if not isinstance(entry, tuple) or len(entry) not in (2, 3) or not all(isinstance(v, int) for v in entry):
            raise CheckpointError(f"decoder_layers {spec!r}: layer {entry!r} is not (channels, kernel[, residual])")
        channels, kernel, residual = (*entry, 1) if len(entry) == 2 else entry
        if channels < 1 or kernel < 1 or residual < 0:
            raise CheckpointError(f"decoder_layers {spec!r}: layer {entry!r} has a negative or zero size")
        layers.append(FairseqLayer(channels, kernel, residual))
    return layers


def _spec_value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_spec_value(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _spec_value(node.left), _spec_value(node.right)
        if isinstance(node.op, ast.Mult):
            count = right if isinstance(right, int) else left
            if not 0 <= count <= MAX_LAYERS:
                raise ValueError(f"repeat count {count} out of range")
        value = left + right if isinstance(node.op, ast.Add) else left * right
        if len(value) > MAX_LAYERS:
            raise ValueError(f"more than {MAX_LAYERS} layers")
        return value
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def layers_to_blocks(layers: list[FairseqLayer]) -> tuple[Block, ...]:
    """gcnn blocks computing what fairseq's layers compute: a layer with residual r > 0 closes a residual block of
    its last r layers; layers with r = 0 that no later layer closes are plain blocks. Equal neighbours are merged
    into one block with ``repeat``."""
    expanded: list[Block] = []
    open_layers: list[tuple[int, int]] = []  # layers (kernel, channels) since the last residual connection
    for i, layer in enumerate(layers):
        open_layers.append((layer.kernel, layer.out_channels))
        if layer.residual == 0:
            continue
        if layer.residual > len(open_layers):
            raise CheckpointError(
                f"decoder layer {i} takes its residual from {layer.residual} layers back, across the residual "
                f"connection of an earlier layer: gcnn blocks cannot overlap"
            )
        cut = len(open_layers) - layer.residual
        expanded += [Block(layers=(plain,), residual=False) for plain in open_layers[:cut]]
        expanded.append(Block(layers=tuple(open_layers[cut:]), residual=True))
        open_layers = []
    expanded += [Block(layers=(plain,), residual=False) for plain in open_layers]
    merged: list[Block] = []
    for block in expanded:
        if merged and (merged[-1].layers, merged[-1].residual) == (block.layers, block.residual):
            merged[-1] = Block(layers=block.layers, repeat=merged[-1].repeat + 1, residual=block.residual)
        else:
            merged.append(block)
    return tuple(merged)


# ----------------------------------------------------------------------------------------------- reading files
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Unpickle a fairseq checkpoint without running code from it: tensors, plain containers, and the option and
    number types fairseq stores beside them (argparse.Namespace, numpy scalars)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch's message suggests weights_only=False, which would run code from the file: it is not repeated
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused is None:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (damaged, or it holds something other than tensors and "
                "plain containers)"
            ) from None
        raise CheckpointError(
            f"{path}: refused to unpickle a {refused.group(1)} object; only tensors, plain containers, "
            "argparse.Namespace, numpy scalars and fairseq's training meters (as placeholders) are read, so that "
            "no code from the file runs"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged or truncated?): {exc}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), Mapping):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return checkpoint


def read_dictionary(path: str | Path) -> Vocabulary:
    """A fairseq model's vocabulary as a gcnn vocabulary: ``<s> <pad> </s> <unk>`` at ids 0-3, then the file's words.
    Two formats are read (told apart by the first line):

    * fairseq's ``dict.txt`` (also wav2letter's ``.dict``): ``word count`` lines, the four specials implied;
    * wav2letter's ``.vocab`` (written by their ConvLM conversion recipe for the Librispeech and WSJ ConvLMs): a
      first line ``<fairseq_style>``, then ``<pad>``, ``</s>``, ``<unk>``, then one word per line (dict.txt's first
      column), so that line i is id i.

    fairseq's language-modeling task feeds ``</s>`` as the context before a text's first word, so it is also the
    vocabulary's begin-of-sentence token.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: dictionary not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    if lines and lines[0].strip() == WAV2LETTER_HEADER:
        return _wav2letter_vocab(path, lines)
    words, counts = list(SPECIALS), [0] * len(SPECIALS)
    seen = {w: 0 for w in SPECIALS}
    for number, line in enumerate(lines, start=1):
        word, count = _dictionary_line(path, number, line)
        if word in seen:
            where = f"line {seen[word]}" if seen[word] else "fairseq's special symbols"
            raise DataError(f"{path}, line {number}: {word!r} is already in the dictionary ({where})")
        seen[word] = number
        words.append(word)
        counts.append(count)
    return Vocabulary(words, unk="<unk>", eos="</s>", bos="</s>", counts=counts)


def _wav2letter_vocab(path: Path, lines: list[str]) -> Vocabulary:
    """wav2letter's ``.vocab``: ``<fairseq_style>``, ``<pad>``, ``</s>``, ``<unk>``, then a word per line."""
    for number, expected in enumerate(SPECIALS[1:], start=2):
        if number > len(lines) or lines[number - 1].strip() != expected:
            got = lines[number - 1] if number <= len(lines) else "the end of the file"
            raise DataError(
                f"{path}, line {number}: a wav2letter vocabulary (first line {WAV2LETTER_HEADER}) has "
                f"{', '.join(SPECIALS[1:])} on lines 2-4; got {got!r}"
            )
    words = list(SPECIALS)
    seen = {w: 0 for w in SPECIALS}
    for number, line in enumerate(lines[4:], start=5):
        word = line.strip()
        if not word or len(word.split()) != 1:
            raise DataError(f"{path}, line {number}: expected one word per line, got {line!r}")
        if word in seen:
            where = f"line {seen[word]}" if seen[word] else "the special symbols"
            raise DataError(f"{path}, line {number}: {word!r} is already in the vocabulary ({where})")
        seen[word] = number
        words.append(word)
    return Vocabulary(words, unk="<unk>", eos="</s>", bos="</s>")


def _dictionary_line(path: Path, number: int, line: str) -> tuple[str, int]:
    parts = line.rstrip().rsplit(" ", 1)
    if len(parts) == 2 and parts[1] == OVERWRITE_FLAG:
        raise DataError(f"{path}, line {number}: {OVERWRITE_FLAG} entries (a word listed twice) are not supported")
    if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
        raise DataError(
            f"{path}, line {number}: expected '<word> <count>' (fairseq dict.txt), got {line!r}; a wav2letter "
            f".vocab starts with a line {WAV2LETTER_HEADER}"
        )
    return parts[0], int(parts[1])


def checkpoint_options(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The training options: ``args`` (fairseq < 0.10), or the sections of ``cfg`` merged, ``cfg["model"]`` last
    (each a Namespace or a dict)."""
    if checkpoint.get("args") is not None:
        return _as_dict(checkpoint["args"])
    cfg = checkpoint.get("cfg")
    if not isinstance(cfg, Mapping):
        return {}
    options: dict[str, Any] = {}
    for section in CFG_SECTIONS:
        options.update(_as_dict(cfg.get(section)))
    return options


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, argparse.Namespace):
        return dict(vars(value))
    return dict(value) if isinstance(value, Mapping) else {}


# ----------------------------------------------------------------------------------------------- conversion
def import_fairseq(checkpoint_path: str | Path, dictionary_path: str | Path) -> FairseqImport:
    """Convert a fairseq ``fconv_lm`` checkpoint and its ``dict.txt`` into a gcnn model (in eval mode)."""
    checkpoint = read_checkpoint(checkpoint_path)
    options = checkpoint_options(checkpoint)
    arch = str(options.get("arch") or options.get("_name") or "fconv_lm")
    if not arch.startswith("fconv_lm"):
        raise CheckpointError(f"{checkpoint_path}: architecture {arch!r} is not an fconv_lm language model")
    layers = parse_layer_spec(_layer_spec(options, arch, checkpoint_path))
    _check_options(options, checkpoint_path)
    state = _decoder_state(checkpoint["model"], checkpoint_path)
    vocab = read_dictionary(dictionary_path)
    rows = state["embed_tokens.weight"].shape[0]
    if rows != len(vocab):
        raise CheckpointError(
            f"{dictionary_path} gives {len(SPECIALS)} special symbols + {len(vocab) - len(SPECIALS)} words = "
            f"{len(vocab)} tokens, but the embedding in {checkpoint_path} has {rows} rows: is it the model's dict.txt?"
        )
    converter = _Converter(state, layers, str(checkpoint_path))
    config = converter.config(options)
    model = GatedConvLM(config).eval()
    converted = converter.state_dict(model)
    _check_shapes(model.state_dict(), converted, checkpoint_path)
    model.load_state_dict(converted)
    return FairseqImport(model=model, vocab=vocab, arch=arch, layers=layers, options=options)


def _layer_spec(options: dict[str, Any], arch: str, path: str | Path) -> str:
    spec = options.get("decoder_layers") or ARCH_LAYERS.get(arch)
    if spec is None:
        raise CheckpointError(f"{path}: the options have no decoder_layers and {arch!r} has no known default")
    return str(spec)


def _check_options(options: dict[str, Any], path: str | Path) -> None:
    constant = options.get("normalization_constant", 0.5)
    if constant != 0.5:
        raise CheckpointError(f"{path}: normalization_constant {constant} (gcnn scales residual sums by sqrt(0.5))")
    attention = str(options.get("decoder_attention", "False"))
    if "True" in attention:
        raise CheckpointError(f"{path}: decoder attention ({attention}) is not part of a language model gcnn can run")


def _decoder_state(model_state: Mapping[str, Any], path: str | Path) -> dict[str, Tensor]:
    prefix = "decoder."
    state = {k[len(prefix):]: v for k, v in model_state.items() if isinstance(k, str) and k.startswith(prefix)}
    # LinearizedConvolution's cached inference weight, saved by some old fairseq versions: fairseq drops it on load
    state = {k: v for k, v in state.items() if not k.endswith("._linearized_weight")}
    if "embed_tokens.weight" not in state:
        raise CheckpointError(f"{path}: no decoder.embed_tokens.weight: not a fairseq language model")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: decoder entries that are not tensors: {', '.join(bad[:5])}")
    return {k: v.detach().to(torch.float32) for k, v in state.items()}


def _check_shapes(expected: dict[str, Tensor], converted: dict[str, Tensor], path: str | Path) -> None:
    for name, tensor in expected.items():  # the converter fills every gcnn parameter
        if tuple(converted[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: {name} converts to shape {tuple(converted[name].shape)}, "
                f"the layer spec needs {tuple(tensor.shape)}"
            )


def _weight_norm(v: Tensor, g: Tensor, dim: int) -> Tensor:
    """``g * v / ||v||`` with the norm over every dimension but ``dim`` (torch.nn.utils.weight_norm's rule)."""
    others = [d for d in range(v.dim()) if d != dim]
    return v * (g / v.norm(dim=others, keepdim=True))


class _Converter:
    """Maps fairseq decoder tensors (without the ``decoder.`` prefix) to a gcnn state dict; folds are computed in
    float64."""

    def __init__(self, state: dict[str, Tensor], layers: list[FairseqLayer], source: str) -> None:
        self.state, self.layers, self.source = state, layers, source
        self.used: set[str] = set()
        version = state.get("version", torch.ones(1))
        self.conv_norm_dim = 2 if float(version.flatten()[0]) >= 2 else 0  # older decoders normalised over dim 0
        self.used.add("version")

    def take(self, name: str) -> Tensor:
        if name not in self.state:
            raise CheckpointError(f"{self.source}: decoder.{name} is missing (the layer spec or options do not match)")
        self.used.add(name)
        return self.state[name]

    def linear_as_conv(self, name: str, target: str) -> dict[str, Tensor]:
        """A fairseq Linear as a weight-normalized gcnn k=1 convolution, keeping weight norm's v and g as they are."""
        if f"{name}.weight_v" not in self.state:
            return _as_causal_conv(target, *self.linear(name))
        v, g = self.take(f"{name}.weight_v"), self.take(f"{name}.weight_g")
        bias = self.take(f"{name}.bias")
        return {f"{target}.weight_v": v.unsqueeze(-1), f"{target}.weight_g": g.reshape(-1), f"{target}.bias": bias}

    def linear(self, name: str) -> tuple[Tensor, Tensor]:
        """A (weight-normalized) fairseq Linear as its effective (out, in) weight and bias, in float64."""
        if f"{name}.weight_v" in self.state:
            weight = _weight_norm(self.take(f"{name}.weight_v").double(), self.take(f"{name}.weight_g").double(), 0)
        else:
            weight = self.take(f"{name}.weight").double()
        return weight, self.take(f"{name}.bias").double()

    # ---- config
    def config(self, options: dict[str, Any]) -> ModelConfig:
        if "adaptive_softmax.head.weight" in self.state:
            cutoffs = self.adaptive_cutoffs()
        elif "fc3.bias" in self.state:
            cutoffs = ()
        else:
            raise CheckpointError(f"{self.source}: no output layer (neither decoder.adaptive_softmax nor fc2/fc3)")
        factor = options.get("adaptive_softmax_factor", 4)
        return ModelConfig(
            vocab_size=self.state["embed_tokens.weight"].shape[0],
            blocks=layers_to_blocks(self.layers),
            embed_dim=self.state["embed_tokens.weight"].shape[1],
            gate="glu",
            gate_placement="layer",
            weight_norm=True,
            residual_scale=True,
            dropout=float(options.get("dropout", 0.0)),
            adaptive_cutoffs=cutoffs,
            adaptive_div=float(factor),
            init="fairseq",
        )

    def adaptive_cutoffs(self) -> tuple[int, ...]:
        if "adaptive_softmax.version" not in self.state:
            raise CheckpointError(
                f"{self.source}: the adaptive softmax has no version entry: it predates fairseq's fix of the head "
                "layout (cluster entries shifted by one), which fairseq itself no longer loads"
            )
        self.used.add("adaptive_softmax.version")
        tails = sum(1 for k in self.state if re.fullmatch(r"adaptive_softmax\.tail\.\d+\.2\.weight", k))
        shortlist = self.state["adaptive_softmax.head.weight"].shape[0] - tails
        cutoffs = [shortlist]
        for i in range(tails - 1):
            cutoffs.append(cutoffs[-1] + self.state[f"adaptive_softmax.tail.{i}.2.weight"].shape[0])
        return tuple(cutoffs)

    # ---- weights
    def state_dict(self, model: GatedConvLM) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        self.input_layers(model, out)
        for i, (block_index, conv_index, proj) in enumerate(self.layer_places(model)):
            prefix = f"blocks.{block_index}"
            out.update(self.convolution(i, f"{prefix}.convs.{conv_index}"))
            if proj:
                out.update(self.linear_as_conv(f"projections.{i}", f"{prefix}.proj"))
        self.output_layer(model, out)
        unused = sorted(set(self.state) - self.used)
        if unused:
            raise CheckpointError(
                f"{self.source}: decoder entries gcnn has no place for: {', '.join(unused[:5])}"
                " (positional embeddings and attention are not supported)"
            )
        return {k: v.to(torch.float32).contiguous() for k, v in out.items()}

    def layer_places(self, model: GatedConvLM) -> list[tuple[int, int, bool]]:
        """For each fairseq layer: (gcnn block index, conv index in it, whether its residual is projected)."""
        places = []
        for b, block in enumerate(model.blocks):
            for c in range(len(block.convs)):
                places.append((b, c, c == len(block.convs) - 1 and block.proj is not None))
        return places

    def input_layers(self, model: GatedConvLM, out: dict[str, Tensor]) -> None:
        embed = self.take("embed_tokens.weight")
        if model.input_proj is None:  # as wide as the first convolution: fold fc1 into the table
            weight, bias = self.linear("fc1")
            out["embed.weight"] = embed.double() @ weight.T + bias
        else:
            out["embed.weight"] = embed
            out.update(self.linear_as_conv("fc1", "input_proj"))

    def convolution(self, i: int, name: str) -> dict[str, Tensor]:
        """ConvTBC (k, C_in, C_out) -> gcnn (C_out, C_in, k), keeping weight norm's direction and gain."""
        v, g, bias = (self.take(f"convolutions.{i}.{part}") for part in ("weight_v", "weight_g", "bias"))
        layer = self.layers[i]
        if v.dim() != 3 or v.shape[0] != layer.kernel or v.shape[2] != 2 * layer.out_channels:
            raise CheckpointError(
                f"{self.source}: decoder.convolutions.{i}.weight_v has shape {tuple(v.shape)}, the layer spec "
                f"({layer.out_channels}, {layer.kernel}, {layer.residual}) needs "
                f"({layer.kernel}, C_in, {2 * layer.out_channels})"
            )
        if self.conv_norm_dim == 2:
            return {f"{name}.weight_v": v.permute(2, 1, 0), f"{name}.weight_g": g.reshape(-1), f"{name}.bias": bias}
        weight = _weight_norm(v.double(), g.double(), 0).permute(2, 1, 0)  # norm per kernel tap: refactor per channel
        return {f"{name}.weight_v": weight, f"{name}.weight_g": weight.flatten(1).norm(dim=1), f"{name}.bias": bias}

    def output_layer(self, model: GatedConvLM, out: dict[str, Tensor]) -> None:
        if model.config.adaptive_cutoffs:
            out["softmax.head.weight"] = self.take("adaptive_softmax.head.weight")
            for i in range(len(model.softmax.tails)):
                for j in (0, 2):
                    out[f"softmax.tails.{i}.{j}.weight"] = self.take(f"adaptive_softmax.tail.{i}.{j}.weight")
            return
        w2, b2 = self.linear("fc2")  # fc3(fc2(x)) is one linear map at inference
        w3, b3 = self.linear("fc3")
        out["softmax.proj.weight"] = w3 @ w2
        out["softmax.proj.bias"] = w3 @ b2 + b3


def _as_causal_conv(name: str, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """A linear map (out, in) as a weight-normalized gcnn k=1 convolution."""
    return {f"{name}.weight_v": weight.unsqueeze(-1), f"{name}.weight_g": weight.norm(dim=1), f"{name}.bias": bias}


def model_card(imported: FairseqImport, checkpoint_path: str | Path) -> ModelCard:
    """The model card of a converted checkpoint: fairseq's recorded data and recipe; perplexity not measured."""
    options = imported.options
    data = options.get("data")
    card = ModelCard(
        source=f"converted by `gcnn import-fairseq` from the fairseq checkpoint `{Path(checkpoint_path).name}` "
        f"(sha256 {sha256_file(checkpoint_path)}), architecture {imported.arch}",
        training_data=f"fairseq data folder `{data}` (as recorded in the checkpoint)" if data else "not recorded",
        recipe={k: options[k] for k in RECIPE_OPTIONS if options.get(k) is not None},
    )
    card.notes += [
        "layer spec: " + ", ".join(f"({l.out_channels}, {l.kernel}, {l.residual})" for l in imported.layers),
        "</s> (id 2) is the context before a text's first word, as in fairseq's language-modeling task",
        "dropout is applied as gcnn places it (also on the adaptive-softmax tails): this matters for further training",
    ]
    return card
