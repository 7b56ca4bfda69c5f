"""``gcnn demo``: the quickstart, end to end on the CPU."""

from __future__ import annotations

import argparse

HELP = "the quickstart: build a small GCNN and run it (grows into prepare, train, evaluate, generate)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="gcnn-small", help="architecture (default: gcnn-small)")


def run(args: argparse.Namespace) -> int:
    import torch

    import gcnn

    model = gcnn.build_model(args.arch, vocab_size=10000).eval()
    print(f"{args.arch}: {model.num_parameters():,} parameters, receptive field {model.receptive_field} tokens")
    print(f"structure: {model.config.describe()}")
    tokens = torch.randint(0, 10000, (2, 64))
    with torch.no_grad():
        out = model(tokens[:, :-1], tokens[:, 1:])
    print(f"untrained loss on random tokens: {out.loss.item():.3f} nats (log V = {torch.log(torch.tensor(10000.)).item():.3f})")
    return 0
