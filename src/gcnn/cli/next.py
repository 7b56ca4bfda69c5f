"""``gcnn next``: the most probable next tokens after a prompt, with their probabilities."""

from __future__ import annotations

import argparse
import json

from gcnn.cli.common import add_model_arguments, load_model

HELP = "the K most probable next tokens after a prompt, with their probabilities"
DESCRIPTION = """Print the --top-k most probable next tokens after --prompt, most probable first, one a line: the token,
a tab, its probability. The prompt is conditioned as `gcnn generate` conditions it (<s>, or <eos> for stream
corpora, then its tokens). What KenLM's query cannot tell: the next-word distribution.

example:  gcnn next runs/shakespeare-demo --prompt "KING HENRY :" --top-k 5"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", default="", metavar="TEXT", help="the text so far (default: empty, a text's start)")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="how many tokens (default: 10)")
    p.add_argument("--json", action="store_true", help="one JSON object: prompt, next: [[token, probability], ...]")


def run(args: argparse.Namespace) -> int:
    from gcnn.decoding import top_next

    model = load_model(args, needs_vocab="gcnn next")
    ranked = top_next(model, model.vocab, args.prompt, args.top_k)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "next": [[t, p] for t, p in ranked]}, ensure_ascii=False))
        return 0
    for token, probability in ranked:
        print(f"{token}\t{probability:.6f}")
    return 0
