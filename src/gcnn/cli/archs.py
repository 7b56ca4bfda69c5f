"""``gcnn archs``: list the named architectures with their structure and parameter counts."""

from __future__ import annotations

import argparse
import json

import torch

HELP = "list the named architectures with their structure and parameter counts"
DESCRIPTION = """List every named architecture (the paper's Table 1 and the CPU presets, plus the baselines) built for
a vocabulary of --vocab-size words: embedding size, convolution blocks ([kernel, channels] x repeats), receptive
field, adaptive-softmax cutoffs (those at or above the vocabulary size are dropped) and parameter count."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab-size", type=int, default=33278, metavar="N", help="vocabulary size (default: 33278, WikiText-2)")
    p.add_argument("--arch", action="append", metavar="NAME", help="only these architectures (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    from gcnn.architectures import describe, get_config, list_architectures, model_from_config
    from gcnn.errors import ConfigError, option

    if args.vocab_size < 2:
        raise ConfigError(f"{option('vocab_size')} must be at least 2, got {args.vocab_size}")
    names = list_architectures()
    if args.arch:
        unknown = [a for a in args.arch if a.lower() not in names]
        if unknown:
            raise ConfigError(f"{option('arch')}: unknown architecture(s) {', '.join(unknown)}; known: {', '.join(names)}")
        names = [a.lower() for a in args.arch]
    rows = []
    with torch.device("meta"):  # count parameters without allocating them
        for name in names:
            config = get_config(name, args.vocab_size)
            model = model_from_config(config)
            rows.append(
                {
                    "name": name,
                    "description": describe(name),
                    "model_type": config.model_type,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "embed_dim": config.embed_dim,
                    "structure": config.describe(),
                    "receptive_field": model.receptive_field,
                    "adaptive_cutoffs": list(config.adaptive_cutoffs),
                }
            )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"Architectures for a vocabulary of {args.vocab_size:,} words\n")
    for row in rows:
        cut = ", ".join(str(c) for c in row["adaptive_cutoffs"]) or "full softmax"
        rf = row["receptive_field"] if row["receptive_field"] is not None else "unbounded"
        print(f"{row['name']:<18} {row['parameters'] / 1e6:9.2f}M params   {row['description']}")
        print(f"{'':<18} embed {row['embed_dim']}, receptive field {rf}, softmax cutoffs: {cut}")
        print(f"{'':<18} {row['structure']}\n")
    return 0
