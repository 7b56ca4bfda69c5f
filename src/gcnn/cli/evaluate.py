"""``gcnn eval``: perplexity of a trained model on a split of a prepared-data folder."""

from __future__ import annotations

import argparse
import json

HELP = "perplexity, cross-entropy and bits per token of a run on a prepared split"
DESCRIPTION = """Evaluate a run folder (or any saved model with a vocabulary) on a split of a prepared-data folder.

stream mode (document corpora; the default for data prepared as a stream): the split is one stream preceded by
  <eos>; every token counts and is predicted from at least min(i+1, --context) input tokens (default context: the
  model's receptive field, so no token but the first few is scored with a truncated context; 512 for models without
  one). Windows advance by --stride targets (default max(context, 512)); a larger stride is faster.
sentence mode (the default for sentence corpora): each sentence alone, <s> prepended; its words and </s> count.
<unk> targets count by default (the WikiText convention) and their number is reported; --exclude-unk drops them.

example:  gcnn eval runs/shakespeare-demo --data data/shakespeare --split test --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run", metavar="RUN_DIR", help="run folder written by `gcnn train` (config.json, model.safetensors, vocab)"
    )
    p.add_argument("--data", required=True, metavar="PREPARED", help="prepared-data folder written by `gcnn prepare`")
    p.add_argument("--split", default="test", help="train, valid or test (default: test)")
    p.add_argument("--mode", choices=("stream", "sentence"), help="default: the prepared data's mode")
    p.add_argument("--context", type=int, metavar="N", help="stream mode: input tokens each prediction sees at least")
    p.add_argument("--stride", type=int, metavar="N", help="stream mode: targets scored per window")
    p.add_argument("--exclude-unk", action="store_true", help="leave <unk> targets out of the perplexity")
    add_inference_arguments(p)
    p.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from gcnn.data import PreparedData
    from gcnn.evaluate import evaluate_split, load_run

    data = PreparedData.open(args.data)
    model, vocab = load_run(args.run, vocab=args.vocab, device=default_device(args.device))
    data.check_vocab(vocab)
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


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """The options `gcnn eval` and `gcnn score` share: batch size, precision, device, vocabulary."""
    p.add_argument(
        "--batch-tokens", type=int, default=16384, metavar="N", help="input tokens per forward pass (default: 16384)"
    )
    p.add_argument(
        "--bf16", action="store_true", help="bf16 autocast (faster on GPUs and on CPUs with bf16 instructions; default fp32)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--vocab", metavar="FILE", help="vocabulary file, if the run folder has none")


def default_device(device: str | None) -> str:
    """The device to run on: the one asked for, else cuda when available, else cpu."""
    import torch

    from gcnn.errors import ConfigError

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return device
