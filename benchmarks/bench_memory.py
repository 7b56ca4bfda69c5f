"""Benchmark 4 (training half): peak memory of training each model of bench_train.py, fp32 and bf16.

    python benchmarks/bench_memory.py                    # batch 16 x 256, 2 training steps per model

Each (model, precision) trains in a fresh Python process, which reports its resident memory after importing torch,
after building the model, and its peak (``ru_maxrss``) after the steps: torch allocates outside Python's heap, so
tracemalloc would not see it. Ids are random (reading a corpus would add its own memory). The data half of
benchmark 4 (preparation speed and memory) is ``benchmarks/bench_prepare.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any

import torch

import common
import models

MB = 1024 * 1024


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc), 0 where unavailable."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def child(name: str, precision: str, batch_size: int, seq_len: int, steps: int, smoke: bool) -> dict[str, float]:
    """Train one model for ``steps`` steps in this process; its memory in MiB."""
    from bench_train import Trainer

    after_import = rss_bytes()
    vocab = 200 if smoke else common.WIKITEXT2_VOCAB
    model = models.build_models(vocab, smoke=smoke, names=[name], max_len=seq_len)[name]
    after_build = rss_bytes()
    trainer = Trainer(model, precision)
    ids = torch.randint(0, vocab, (batch_size, seq_len + 1))
    for _ in range(steps):
        trainer.step(ids[:, :-1], ids[:, 1:])
    return {
        "rss_after_import_mb": round(after_import / MB, 1),
        "rss_after_build_mb": round(after_build / MB, 1),
        "peak_rss_mb": round(peak_rss_bytes() / MB, 1),
        "parameters": models.num_parameters(model),
    }


def measure(name: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter and return what it reports."""
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        precision,
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
    ] + (["--smoke"] if args.smoke else [])
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_memory: measuring {name} {precision} failed:\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["training_mb"] = round(report["peak_rss_mb"] - report["rss_after_import_mb"], 1)
    return report


def table(result: dict[str, Any], precisions: list[str]) -> str:
    header = (
        ["model", "params (M)", "weights fp32 (MiB)"]
        + [f"{p} peak RSS (MiB)" for p in precisions]
        + [f"{p} above torch import (MiB)" for p in precisions]
    )
    rows = []
    for name, m in result["models"].items():
        rows.append(
            [name, f"{m['parameters'] / 1e6:.1f}", f"{m['parameters'] * 4 / MB:,.0f}"]
            + [f"{m[p]['peak_rss_mb']:,.0f}" for p in precisions]
            + [f"{m[p]['training_mb']:,.0f}" for p in precisions]
        )
    return common.markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="training steps per model (default: 2)")
    parser.add_argument("--precision", nargs="+", choices=common.PRECISIONS, default=list(common.PRECISIONS))
    parser.add_argument("--models", nargs="+", choices=models.MODEL_NAMES, default=list(models.MODEL_NAMES))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    common.add_common_arguments(parser, repeats=1)
    args = parser.parse_args(argv)
    common.check_positive(parser, args, "batch_size", "seq_len", "steps")
    if args.smoke:
        args.batch_size, args.seq_len = min(args.batch_size, 2), min(args.seq_len, 16)
    if args.child:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        print(json.dumps(child(*args.child, args.batch_size, args.seq_len, args.steps, args.smoke)))
        return None
    result = common.start(args)
    measured = {name: {p: measure(name, p, args) for p in args.precision} for name in args.models}
    result.update(
        title="Peak training memory (benchmark 4)",
        settings={
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "steps": args.steps,
            "optimizer": "as bench_train.py",
        },
        models={name: {"parameters": next(iter(m.values()))["parameters"], **m} for name, m in measured.items()},
    )
    result["table_markdown"] = table(result, args.precision)
    result["notes"] = [
        "Peak RSS: the process's maximum resident memory (ru_maxrss) over import, model building and "
        f"{args.steps} training steps (forward, backward, SGD with momentum); 'above torch import' subtracts the "
        "resident memory right after importing torch and gcnn. bf16 is autocast: weights, gradients and momentum stay fp32."
    ]
    figure = common.bar_chart(
        f"Peak resident memory while training, batch {args.batch_size} x {args.seq_len}",
        "MiB",
        list(measured),
        {p: [measured[n][p]["peak_rss_mb"] for n in measured] for p in args.precision},
    )
    common.write_report("memory", result, figure, args.out_dir)
    return result


if __name__ == "__main__":
    main()
