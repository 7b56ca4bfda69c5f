"""Batch-1 generation speed: incremental decoding against re-running the context at every step.

    python benchmarks/bench_generate.py --threads 1 > benchmarks/results/bench_generate.json

For each model and each context length L, the model first reads L tokens; then it produces --new-tokens tokens one at
a time (greedy), in three ways:

- ``incremental``: one call per token with the model's cache (a GCNN's convolutions keep their last k-1 inputs);
- ``full``: every step runs the model over the whole sequence so far (what generation without a cache does);
- ``window``: every step runs the model over the last receptive-field tokens (the least a cache-free GCNN can do).

Weights are random (speed does not depend on them); the vocabulary is WikiText-2's 33,278 words. Prints JSON (the
median tokens/s over --repeats, the methods interleaved, per method, context and model, plus the machine) and draws
a PNG (--plot).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import gcnn
from gcnn import runtime

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("incremental", "window", "full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--archs", nargs="+", default=["gcnn-small", "gcnn-8"], help="architectures (default: gcnn-small gcnn-8)"
    )
    p.add_argument("--vocab-size", type=int, default=33278)
    p.add_argument(
        "--contexts", type=int, nargs="+", default=[32, 128, 512], help="context lengths L before generating"
    )
    p.add_argument("--new-tokens", type=int, default=8, help="tokens generated per measurement (default: 8)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per point; the median is reported (default: 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--plot", type=Path, default=RESULTS / "bench_generate.png", help="where to draw the plot")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model: gcnn.LanguageModel, context: torch.Tensor, new_tokens: int, method: str) -> float:
    """Seconds to produce ``new_tokens`` greedy tokens after ``context`` (1, L) with ``method``; the first read
    of the context is not timed."""
    device = context.device
    window = model.receptive_field
    with torch.inference_mode():
        cache = model.new_cache(1) if method == "incremental" else None
        log_probs = model.next_token_log_probs(context, positions=[context.shape[1] - 1], cache=cache)[:, 0]
        sequence = context
        _sync(device)
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = log_probs.argmax(dim=-1, keepdim=True)  # (1, 1)
            if method == "incremental":
                log_probs = model.next_token_log_probs(token, cache=cache)[:, 0]
                continue
            sequence = torch.cat([sequence, token], dim=1)
            visible = sequence if method == "full" else sequence[:, -window:]
            log_probs = model.next_token_log_probs(visible, positions=[visible.shape[1] - 1])[:, 0]
        _sync(device)
        return time.perf_counter() - start


def measure_point(
    model: gcnn.LanguageModel, context: torch.Tensor, new_tokens: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per measurement for each method; the repeats interleave the methods, so that a slow spell of a
    shared machine hits all of them alike."""
    time_generation(model, context, 2, "incremental")  # warm-up
    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(repeats):
        for method in METHODS:
            seconds[method].append(time_generation(model, context, new_tokens, method))
    return seconds


def measure(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for arch in args.archs:
        torch.manual_seed(0)
        model = gcnn.build_model(arch, vocab_size=args.vocab_size, dropout=0.0).to(device)
        runtime.optimize(model, "fp32")  # as `gcnn generate` runs it
        for length in args.contexts:
            context = torch.randint(0, args.vocab_size, (1, length), device=device)
            for method, seconds in measure_point(model, context, args.new_tokens, args.repeats).items():
                speed = args.new_tokens / statistics.median(seconds)
                rows.append(
                    {
                        "arch": arch,
                        "parameters": model.num_parameters(),
                        "receptive_field": model.receptive_field,
                        "context": length,
                        "method": method,
                        "tokens_per_second": speed,
                        "seconds": seconds,
                    }
                )
                print(f"{arch:<12} L={length:<5} {method:<12} {speed:9.1f} tokens/s", file=sys.stderr)
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for method in METHODS:
            points = [
                (r["context"], r["tokens_per_second"]) for r in rows if r["arch"] == arch and r["method"] == method
            ]
            ax.plot(*zip(*points), marker="o", label=method)
        ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="tokens/s (batch 1)", title=arch)
        contexts = sorted({r["context"] for r in rows})
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args)
    machine = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    speedups = {}
    for r in rows:
        if r["method"] == "incremental":
            for other in ("full", "window"):
                base = next(
                    o for o in rows if o["arch"] == r["arch"] and o["context"] == r["context"] and o["method"] == other
                )
                speedups[f"{r['arch']} L={r['context']} vs {other}"] = (
                    r["tokens_per_second"] / base["tokens_per_second"]
                )
    report = {
        "machine": machine,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "results": rows,
        "speedup": speedups,
    }
    print(json.dumps(report, indent=2))
    plot(
        rows,
        args.plot,
        f"batch-1 greedy generation, {machine['device']}, threads: {args.threads}, {machine['date']} (shared machine)",
    )
    print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
