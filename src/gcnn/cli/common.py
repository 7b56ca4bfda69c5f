"""What several commands share: the options of inference commands, and loading the model they run."""

from __future__ import annotations

import argparse

from gcnn.errors import option


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model folder and its overrides, for every command that runs a trained model."""
    p.add_argument("run", metavar="MODEL_DIR",
                   help="a run folder written by `gcnn train`, a folder written by `gcnn export`, or a checkpoint folder")
    p.add_argument("--vocab", metavar="FILE", help="vocabulary file, if the folder has none (it must be the model's own)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """The options `gcnn eval` and `gcnn score` share: the model, batch size, precision."""
    add_model_arguments(p)
    p.add_argument(
        "--batch-tokens", type=int, default=16384, metavar="N", help="input tokens per forward pass (default: 16384)"
    )
    p.add_argument(
        "--bf16", action="store_true", help="bf16 autocast (faster on GPUs and on CPUs with bf16 instructions; default fp32)"
    )


def load_model(args: argparse.Namespace, *, needs_vocab: str | None = None):
    """The model of ``args.run`` (with ``args.vocab`` and ``args.device``), checked by :func:`gcnn.io.load`;
    ``needs_vocab`` names the command that cannot run without a vocabulary."""
    from gcnn.io import load, require_vocab
    from gcnn.runtime import resolve_device

    model = load(args.run, vocab=args.vocab, device=resolve_device(args.device))
    if needs_vocab:
        require_vocab(model, needs_vocab)
    return model


__all__ = ["add_inference_arguments", "add_model_arguments", "load_model", "option"]
