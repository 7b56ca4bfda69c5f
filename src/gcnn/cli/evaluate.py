"""``gcnn eval``: perplexity of a trained model on a split of a prepared-data folder."""

from __future__ import annotations

import argparse
import json

from gcnn.cli.common import add_inference_arguments, load_model

HELP = "perplexity, cross-entropy and bits per token of a run on a prepared split"
DESCRIPTION = """Evaluate a model (a run folder, an exported folder or a checkpoint) on a split of a prepared-data folder, which must
have been prepared with the model's own vocabulary.

stream mode (document corpora; the default for data prepared as a stream): the split is one stream preceded by
  <eos>; every token counts and is predicted from at least min(i+1, --context) input tokens (default context: the
  model's receptive field, so no token but the first few is scored with a truncated context; 512 for models without
  one). Windows advance by --stride targets (default max(context, 512)); a larger stride is faster.
sentence mode (the default for sentence corpora): each sentence alone, <s> prepended; its words and </s> count.
--disjoint N: lm-evaluation-harness's windowing (its loglikelihood_rolling): disjoint windows of N tokens, the
  first predicted from the start marker, each later one from the one token before it, the last one right-aligned
  to keep N inputs (the same as --context 1 --stride N with the last window aligned); docs/evaluation.md.
<unk> targets count by default (the WikiText convention) and their number is reported; --exclude-unk drops them.

example:  gcnn eval runs/shakespeare-demo --data data/shakespeare --split test --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="PREPARED", help="prepared-data folder written by `gcnn prepare`")
    p.add_argument("--split", default="test", help="train, valid or test (default: test)")
    p.add_argument("--mode", choices=("stream", "sentence"), help="default: the prepared data's mode")
    p.add_argument("--context", type=int, metavar="N", help="stream mode: input tokens each prediction sees at least")
    p.add_argument("--stride", type=int, metavar="N", help="stream mode: targets scored per window")
    p.add_argument("--disjoint", type=int, metavar="N",
                   help="stream mode: lm-evaluation-harness's disjoint windows of N tokens (N: its max_length)")
    p.add_argument("--exclude-unk", action="store_true", help="leave <unk> targets out of the perplexity")
    add_inference_arguments(p)
    p.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from gcnn.data import PreparedData
    from gcnn.evaluate import evaluate_split

    from gcnn.errors import ConfigError

    if args.disjoint is not None and (args.context is not None or args.stride is not None):
        raise ConfigError("--disjoint N sets the windows (context 1, stride N): give it without --context/--stride")
    if args.disjoint is not None:
        if args.disjoint < 1:
            raise ConfigError(f"--disjoint must be a positive integer, got {args.disjoint}")
        args.context, args.stride = 1, args.disjoint
    data = PreparedData.open(args.data)
    model = load_model(args)
    import warnings

    if args.disjoint is not None:  # context 1 is what --disjoint means: no warning about it
        warnings.filterwarnings("ignore", message=r".*1: every token is predicted from one input token")
    result = evaluate_split(
        model,
        data,
        args.split,
        mode=args.mode,
        context=args.context,
        stride=args.stride,
        exclude_unk=args.exclude_unk,
        batch_tokens=args.batch_tokens,
        bf16=args.bf16,
        progress=args.progress,
        align_last=args.disjoint is not None,
    )
    report = {"run": args.run, "data": args.data, "split": args.split, **result.to_dict()}
    if args.json:
        print(json.dumps(report))
        return 0
    window = f", context {result.context}, stride {result.stride}" if result.mode == "stream" else ""
    unk_share = result.unk / (result.tokens + (result.unk if result.unk_excluded else 0))
    print(f"{args.run} on {args.data} ({args.split} split, {result.mode} mode{window})")
    print(f"tokens         {result.tokens:,}")
    print(f"<unk> targets  {result.unk:,} ({unk_share:.2%}), {'excluded' if result.unk_excluded else 'counted'}")
    print(f"cross-entropy  {result.cross_entropy:.4f} nats/token, {result.bits_per_token:.4f} bits/token")
    print(f"perplexity     {result.perplexity:.2f}")
    print(f"time           {result.seconds:.1f} s ({result.tokens / max(result.seconds, 1e-9):,.0f} tokens/s)")
    return 0
