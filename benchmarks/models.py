"""The models the speed benchmarks put side by side, at about equal parameter counts.

* ``gcnn``: gcnn's own model with the GCNN-8 shape (``gcnn.build_model("gcnn-8")``).
* ``reference``: the plain PyTorch GCNN-8 of ``reference_gcnn.py``, the fixed yardstick.
* ``lstm``: a 2-layer LSTM (embedding = hidden width) whose width is chosen so its total parameter count is
  closest to the GCNN's.
* ``transformer``: a 6-layer pre-LN Transformer (heads of 64, feed-forward 4x width) sized the same way.

All use the adaptive softmax with the GCNN's cutoffs, and no dropout. ``--smoke`` runs use tiny versions.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

import gcnn
from gcnn.baselines import LSTMConfig, LSTMLM, TransformerConfig, TransformerLM
from reference_gcnn import ReferenceGCNN

MODEL_NAMES = ("gcnn", "reference", "lstm", "transformer")


def _sizes(smoke: bool) -> dict:
    if smoke:
        return dict(
            arch="gcnn-tiny",
            ref=dict(embed_dim=16, width=32, kernel=3, num_layers=3, cutoffs=(20, 60)),
            cutoffs=(20, 60),
            lstm_widths=range(4, 257, 4),
            head_dim=8,
            layers=2,
            max_len=128,
        )
    return dict(
        arch="gcnn-8",
        ref=dict(embed_dim=280, width=900, kernel=4, num_layers=8, cutoffs=(2000, 10000)),
        cutoffs=(2000, 10000),
        lstm_widths=range(50, 4001, 50),
        head_dim=64,
        layers=6,
        max_len=512,
    )


def closest_width(build: Callable[[int], nn.Module], widths: Iterable[int], target: int) -> int:
    """The width whose model (built on the meta device, so nothing is allocated) has the parameter count closest to
    ``target``."""

    def distance(width: int) -> int:
        with torch.device("meta"):
            return abs(sum(p.numel() for p in build(width).parameters()) - target)

    return min(widths, key=distance)


def build_models(
    vocab_size: int, *, smoke: bool = False, names: Iterable[str] = MODEL_NAMES, max_len: int = 0
) -> dict[str, nn.Module]:
    """The compared models for ``vocab_size`` words, in training mode, name -> model. The Transformer holds at least
    ``max_len`` positions."""
    s = _sizes(smoke)
    s["max_len"] = max(s["max_len"], max_len)
    cutoffs = tuple(c for c in s["cutoffs"] if c < vocab_size)
    target = gcnn.build_model(s["arch"], vocab_size=vocab_size, adaptive_cutoffs=cutoffs).num_parameters()

    def lstm(width: int) -> nn.Module:
        return LSTMLM(
            LSTMConfig(
                vocab_size, embed_dim=width, hidden_dim=width, num_layers=2, dropout=0.0, adaptive_cutoffs=cutoffs
            )
        )

    def transformer(width: int) -> nn.Module:
        return TransformerLM(
            TransformerConfig(
                vocab_size,
                embed_dim=width,
                num_layers=s["layers"],
                num_heads=width // s["head_dim"],
                ff_dim=4 * width,
                max_len=s["max_len"],
                dropout=0.0,
                adaptive_cutoffs=cutoffs,
            )
        )

    builders: dict[str, Callable[[], nn.Module]] = {
        "gcnn": lambda: gcnn.build_model(s["arch"], vocab_size=vocab_size, adaptive_cutoffs=cutoffs),
        "reference": lambda: ReferenceGCNN(vocab_size, **dict(s["ref"], cutoffs=cutoffs)),
        "lstm": lambda: lstm(closest_width(lstm, s["lstm_widths"], target)),
        "transformer": lambda: transformer(
            closest_width(transformer, range(s["head_dim"], 33 * s["head_dim"], s["head_dim"]), target)
        ),
    }
    return {name: builders[name]() for name in names}


def describe(model: nn.Module) -> str:
    if isinstance(model, ReferenceGCNN):
        conv = model.convs[0]
        return (
            f"plain PyTorch GCNN: embed {model.embed.embedding_dim}, [{model.kernel},{conv.out_channels // 2}] "
            f"x{len(model.convs)}, torch AdaptiveLogSoftmaxWithLoss {model.softmax.cutoffs[:-1]}"
        )
    config = model.config
    prefix = f"{config.arch}: embed {config.embed_dim}, " if config.model_type == "gcnn" else ""
    return prefix + config.describe()


def loss_of(model: nn.Module, tokens: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``targets``, for gcnn's models and the reference alike."""
    out = model(tokens, targets)
    return out if isinstance(out, Tensor) else out.loss


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
