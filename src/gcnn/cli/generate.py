"""``gcnn generate``: continue prompts with a trained model, greedy or sampled, with incremental decoding."""

from __future__ import annotations

import argparse
import json
import sys

from gcnn.cli.common import add_model_arguments, load_model

HELP = "continue prompts (greedy, or sampling with temperature, top-k, top-p) with incremental decoding"
DESCRIPTION = """Continue each --prompt (repeatable) by up to --max-tokens tokens. One text is printed word by word as it is
generated; several are generated --batch-size at a time, each printed as soon as its batch is done.

Sampling by default (temperature 1); --greedy takes the most probable token. --top-k K keeps the K most probable
tokens, --top-p P the most probable ones up to probability P; they combine, after --temperature. --seed makes
sampling reproducible. Prompts are split into tokens as the corpus was; words outside the vocabulary are fed as
<unk> with a warning. Each prompt starts from <s> (sentence corpora) or <eos> (stream corpora). Generation stops at
</s> for sentence corpora; in stream corpora <eos> ends a line and is printed as a line break (--stop-at-eos to stop).

example:  gcnn generate runs/shakespeare-demo --prompt "KING HENRY :" --max-tokens 40 --top-k 40 --seed 1"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable; default: one empty prompt)")
    p.add_argument(
        "--max-tokens", type=int, default=50, metavar="N", help="tokens to generate per prompt (default: 50)"
    )
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="continuations per prompt (default: 1)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="sequences generated together; each batch's texts are printed as soon as it is done (default: 16)")
    p.add_argument("--greedy", action="store_true", help="always take the most probable token")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default: 1.0)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most probable tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample among the most probable tokens up to probability P")
    p.add_argument("--seed", type=int, help="random seed for sampling")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--stop-at-eos",
        dest="stop_at_eos",
        action="store_true",
        default=None,
        help="stop a sample at the end-of-line token",
    )
    stop.add_argument("--no-stop-at-eos", dest="stop_at_eos", action="store_false", help="continue past it")
    p.add_argument("--no-unk", action="store_true", help="never generate <unk>")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "int8"),
        default="fp32",
        help="weights for decoding: bf16 halves the bytes read per token (generation at batch 1 is bound by them); "
        "int8 (CPU) also rounds each convolution's weights to 255 levels per output channel, a quarter of fp32's "
        "bytes, with outputs within about 1%% of bf16's; log-probabilities are still computed in fp32 (default: fp32)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per sample: prompt, text")


def run(args: argparse.Namespace) -> int:
    from gcnn import runtime
    from gcnn.decoding import check_sampling, generate_text, stream_text
    from gcnn.errors import ConfigError, option

    check_sampling(args.temperature, args.top_k, args.top_p, args.max_tokens)
    for name in ("num_samples", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"{option(name)} must be a positive integer, got {getattr(args, name)}")
    model = load_model(args, needs_vocab="gcnn generate")
    vocab = model.vocab
    runtime.optimize(model, args.dtype)
    prompts = [p for p in (args.prompt or [""]) for _ in range(args.num_samples)]
    options = dict(max_tokens=args.max_tokens, stop_at_eos=args.stop_at_eos, allow_unk=not args.no_unk,
                   greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if len(prompts) == 1 and not args.json:  # one text: its words as they are generated
        sys.stdout.write(prompts[0])
        sys.stdout.flush()
        started = False
        for piece in stream_text(model, vocab, prompts[0], seed=args.seed, **options):
            if not started and prompts[0] and not piece.startswith("\n"):
                piece = " " + piece.lstrip(" ")
            started = True
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n\n")
        return 0
    for start in range(0, len(prompts), args.batch_size):  # several: each batch's texts as soon as it is done
        batch = prompts[start : start + args.batch_size]
        seed = None if args.seed is None else args.seed + start // args.batch_size
        for prompt, text in zip(batch, generate_text(model, vocab, batch, seed=seed, **options)):
            if args.json:
                print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False), flush=True)
            else:
                print(f"{prompt} {text}".strip() + "\n", flush=True)
    return 0
