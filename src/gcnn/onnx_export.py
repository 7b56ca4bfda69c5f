"""ONNX export of a GCNN: the scoring forward pass and the single-step incremental decoder.

Two graphs, written with PyTorch's ``torch.export``-based exporter (needs the ``onnx`` extra: onnx, onnxscript;
onnxruntime to run them):

* ``model.onnx``: ``tokens`` (batch, time) int64 -> ``log_probs`` (batch, time, vocab) float32, the log-distribution
  of the next token at every position (the log-probability of given targets is a gather from it). Batch and time
  are dynamic.
* ``decoder_step.onnx``: ``token`` (batch, 1) int64 and ``state_0 ... state_{n-1}`` -> ``log_probs`` (batch, vocab)
  and ``new_state_0 ...``. State i is the last k-1 inputs of the i-th convolution with kernel k > 1, shape
  (batch, k-1, channels); start a sequence with zeros and feed each step's new states to the next. Batch is dynamic.

Weights go to ``<graph>.onnx.data`` beside each graph (ONNX's external-data format, needed above 2 GB).
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from gcnn.errors import GcnnError
from gcnn.model import ConvCache, GatedConvLM

SCORER_NAME = "model.onnx"
DECODER_STEP_NAME = "decoder_step.onnx"
EXPORT_MODULES = ("onnx", "onnxscript")


class ScoringGraph(nn.Module):
    """tokens (B, T) -> next-token log-probs (B, T, V)."""

    def __init__(self, model: GatedConvLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model.next_token_log_probs(tokens)


class DecoderStepGraph(nn.Module):
    """One step of incremental decoding with the convolution buffers as explicit tensors:
    (token (B, 1), state_0, ...) -> (log-probs (B, V), new_state_0, ...)."""

    def __init__(self, model: GatedConvLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        cache = ConvCache(token.shape[0])
        cache.buffers = list(states)
        log_probs = self.model.next_token_log_probs(token, cache=cache)  # (B, 1, V)
        return (log_probs[:, 0], *cache.buffers)


def decoder_state_shapes(model: GatedConvLM) -> list[tuple[int, int]]:
    """(frames, channels) of each decoder state tensor, in the order the step graph takes them."""
    cache = model.new_cache(1)
    with torch.no_grad():
        model.next_token_log_probs(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    return [(b.shape[1], b.shape[2]) for b in cache.buffers]


def initial_states(model: GatedConvLM, batch_size: int) -> list[Tensor]:
    """The decoder states at the start of a sequence: zeros."""
    return [torch.zeros(batch_size, frames, channels) for frames, channels in decoder_state_shapes(model)]


def check_exporter() -> None:
    """Raise a clear error when the packages the exporter needs are not installed."""
    missing = [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise GcnnError(
            f"ONNX export needs {', '.join(missing)}: pip install 'gcnn[onnx]' (or pip install {' '.join(missing)})"
        )


def export_onnx(model: GatedConvLM, directory: str | Path) -> dict[str, Path]:
    """Write ``model.onnx`` (scoring) and ``decoder_step.onnx`` (one decoding step) into ``directory``."""
    if not isinstance(model, GatedConvLM):
        raise GcnnError(f"ONNX export supports GCNN models; this is a {type(model).__name__}")
    check_exporter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=1)
    example = torch.zeros(2, 3, dtype=torch.long)  # sizes > 1, so that neither axis is taken as a constant
    states = initial_states(model, 2)
    names = [f"state_{i}" for i in range(len(states))]
    scorer = directory / SCORER_NAME
    step = directory / DECODER_STEP_NAME
    _export(ScoringGraph(model), (example,), scorer, ["tokens"], ["log_probs"], ({0: batch, 1: time},))
    _export(
        DecoderStepGraph(model),
        (example[:, :1], *states),
        step,
        ["token", *names],
        ["log_probs", *[f"new_{n}" for n in names]],
        ({0: batch}, tuple({0: batch} for _ in states)),
    )
    return {"scorer": scorer, "decoder_step": step}


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], shapes: tuple) -> None:
    """One graph, saved in a staging folder and then moved in (its external-data file first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes,
            verbose=False,
        )
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as staging:
        staged = Path(staging) / path.name
        program.save(str(staged), external_data=True)
        data = staged.with_name(staged.name + ".data")
        if data.exists():
            data.replace(path.with_name(data.name))
        staged.replace(path)
