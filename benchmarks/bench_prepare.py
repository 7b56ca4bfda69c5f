"""Throughput and peak memory of `prepare` (word level) on WikiText-2 and on a ~1 GB corpus made by repeating it.

    python benchmarks/bench_prepare.py                     # WikiText-2, then ~1 GB (a few minutes)
    python benchmarks/bench_prepare.py --size-gb 0.2       # a smaller repeated corpus
    python benchmarks/bench_prepare.py --skip-large        # WikiText-2 only

Prints one JSON object. Each case runs in a fresh process that does nothing but one prepare; `mb_per_s` is the
corpus size (all three splits, 1 MB = 1e6 bytes) over the wall time of the whole prepare (which reads the training
file twice), `mb_per_cpu_s` the same per second of this process's CPU time (what it would be on an idle
core), `rss_before_mib` the process's memory after imports (Python, numpy, torch) and `peak_rss_mib` its
high-water mark. Streaming shows as a peak that does not grow with the corpus. Needs ../shared/data/wikitext-2
(or --wikitext DIR); the large corpus is written to a temporary folder (--tmp) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKITEXT2 = REPO.parent / "shared" / "data" / "wikitext-2"
SPLITS = ("train", "valid", "test")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(corpus: Path, out: Path) -> None:
    """Run one prepare in this process and print its measurements as JSON."""
    from gcnn.data import find_corpus, prepare

    before = _rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    data = prepare(find_corpus(corpus), out)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    corpus_bytes = sum(source["bytes"] for s in data.splits for source in data.manifest["splits"][s]["sources"])
    tokens = sum(data.num_tokens(s) for s in data.splits)
    print(
        json.dumps(
            {
                "corpus_bytes": corpus_bytes,
                "tokens": tokens,
                "vocab_size": data.vocab_size,
                "seconds": round(seconds, 2),
                "mb_per_s": round(corpus_bytes / seconds / 1e6, 2),
                "cpu_seconds": round(cpu_seconds, 2),
                "mb_per_cpu_s": round(corpus_bytes / cpu_seconds / 1e6, 2),
                "tokens_per_s": round(tokens / seconds),
                "rss_before_mib": round(before, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def run_case(corpus: Path, work: Path) -> dict:
    out = work / f"prepared-{corpus.name}"
    command = [sys.executable, __file__, "--child", str(corpus), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    shutil.rmtree(out, ignore_errors=True)
    if result.returncode != 0:
        raise SystemExit(f"prepare failed on {corpus}:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def repeated_corpus(source: Path, folder: Path, size_bytes: int) -> tuple[Path, int]:
    """A WikiText folder whose train file is ``source``'s repeated to about ``size_bytes``; valid/test unchanged.
    Returns the folder and the number of copies."""
    folder.mkdir(parents=True)
    train = (source / "wiki.train.tokens").read_bytes()
    copies = max(1, round(size_bytes / len(train)))
    with open(folder / "wiki.train.tokens", "wb") as f:
        for _ in range(copies):
            f.write(train)
    for split in ("valid", "test"):
        shutil.copyfile(source / f"wiki.{split}.tokens", folder / f"wiki.{split}.tokens")
    return folder, copies


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wikitext", type=Path, default=WIKITEXT2, help="WikiText-2 folder")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the repeated corpus (GB)")
    parser.add_argument("--skip-large", action="store_true", help="only WikiText-2")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the large corpus")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if not (args.wikitext / "wiki.train.tokens").is_file():
        raise SystemExit(f"WikiText-2 not found at {args.wikitext}; pass --wikitext DIR")

    report = {
        "benchmark": "prepare (word level, two passes, streaming)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="gcnn-bench-", dir=args.tmp) as tmp:
        work = Path(tmp)
        report["cases"]["wikitext-2"] = run_case(args.wikitext, work)
        if not args.skip_large:
            big, copies = repeated_corpus(args.wikitext, work / "wikitext-2-repeated", int(args.size_gb * 1e9))
            report["cases"][f"wikitext-2, train x{copies}"] = run_case(big, work)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
