"""What every benchmark shares: the machine it ran on, timing, the matmul peak, WikiText-2 token ids, and the dated
report (JSON + PNG + Markdown) it leaves in ``benchmarks/results``.

A result is a JSON object with at least ``benchmark`` (the short name), ``title``, ``date``, ``machine``,
``command`` and ``table_markdown``; :func:`render_markdown` turns it into the Markdown used both for the dated
report and for docs/benchmarks.md (``benchmarks/make_docs.py``), so the numbers in the docs are those of the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from gcnn.fs import atomic_write

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
WIKITEXT2 = REPO.parent / "shared" / "data" / "wikitext-2"
_IMPORTED_AT = time.perf_counter()  # about when the benchmark script started


# ------------------------------------------------------------------------------------------------ the machine
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict[str, Any]:
    """The commit of the working tree, and which tracked files under src/ or benchmarks/ differ from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    changed = [
        line[3:]
        for line in git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks").splitlines()
    ]
    return {"commit": git("rev-parse", "HEAD").strip() or "unknown", "uncommitted_changes": changed}


def machine_info(note: str = "") -> dict[str, Any]:
    """CPU model, cores, threads torch uses, versions, the commit, and the load average when the run started
    (a load above the thread count means other processes competed for the CPU)."""
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        **git_state(),
        "note": note,
    }


# ------------------------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class MatmulPeak:
    """This machine's matmul speed for a given shape and dtype: ``torch.mm`` of (m, k) x (k, n), timed as one more
    contender in a benchmark's round-robin so that it sees the same competition for the CPU as the models."""

    def __init__(self, m: int, k: int, n: int, dtype: torch.dtype) -> None:
        generator = torch.Generator().manual_seed(0)
        self.shape = (m, k, n)
        self.a = torch.randn(m, k, generator=generator).to(dtype)
        self.b = torch.randn(k, n, generator=generator).to(dtype)
        self.samples: list[float] = []  # FLOP/s

    def run_once(self) -> None:
        m, k, n = self.shape
        self.samples.append(2 * m * k * n / timed(lambda: torch.mm(self.a, self.b)))

    def result(self) -> dict[str, Any]:
        return {"flops_per_s": median(self.samples), "shape_mkn": list(self.shape), "samples_flops_per_s": self.samples}


PRECISIONS = ("fp32", "bf16")


def autocast(precision: str):
    """The context a step runs in: bf16 autocast on the CPU, or nothing for fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def dtype_of(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


# ------------------------------------------------------------------------------------------------ data
def wikitext2_ids(split: str = "train") -> torch.Tensor | None:
    """WikiText-2 ``split`` as word ids sorted by training-set frequency (one ``<eos>`` per line, as the standard
    word-level counting), or None where ../shared/data is absent. Vocabulary: the 33,278 types of the training set."""
    if not WIKITEXT2.is_dir():
        return None

    def words(name: str) -> list[str]:
        with open(WIKITEXT2 / f"wiki.{name}.tokens", encoding="utf-8") as fh:
            return [w for line in fh for w in (*line.split(), "<eos>")]

    train = words("train")
    counts = Counter(train)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    index = {w: i for i, w in enumerate(ranked)}
    text = train if split == "train" else words(split)
    return torch.tensor([index[w] for w in text], dtype=torch.long)


WIKITEXT2_VOCAB = 33278


def token_stream(num_tokens: int, vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """At least ``num_tokens`` ids: WikiText-2 training ids when present (repeated if too short), else uniform
    random ids. Returns the ids and a description of where they came from (written into the result)."""
    ids = wikitext2_ids("train") if vocab_size == WIKITEXT2_VOCAB else None
    if ids is None:
        why = (
            f"WikiText-2 not found at {WIKITEXT2}" if vocab_size == WIKITEXT2_VOCAB else f"a vocabulary of {vocab_size}"
        )
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab_size, (num_tokens,), generator=generator), f"uniform random ids ({why})"
    repeats = -(-num_tokens // ids.numel())
    return ids.repeat(repeats)[:num_tokens], "WikiText-2 training ids (frequency-sorted word vocabulary of 33,278)"


# ------------------------------------------------------------------------------------------------ command line
def add_common_arguments(parser: argparse.ArgumentParser, *, repeats: int) -> None:
    parser.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help=f"timed repeats per measurement (default: {repeats}); medians are reported",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--out-dir", type=Path, default=RESULTS, help="where the dated report goes (default: benchmarks/results)"
    )
    parser.add_argument(
        "--note", default="", help="a remark stored with the machine info, e.g. that the machine was shared"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models and sizes: checks that the benchmark runs, in seconds"
    )


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Exit with a usage error naming the option if any of ``names`` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def start(args: argparse.Namespace) -> dict[str, Any]:
    """Apply --threads, and return the fields every result starts with."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = str(script)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(args.note),
        "command": shlex.join(["python", script_text, *sys.argv[1:]]),
        "smoke": bool(args.smoke),
    }


# ------------------------------------------------------------------------------------------------ reports
def render_markdown(result: dict[str, Any], image: str | None) -> str:
    """The report of one result: title, when and where it ran, the command, the table, the plot and the notes."""
    m = result["machine"]
    dirty = (
        f" (plus uncommitted changes to {', '.join(m['uncommitted_changes'])})" if m.get("uncommitted_changes") else ""
    )
    lines = [
        f"### {result['title']}",
        "",
        f"Run {result['date']} on {m['cpu']} ({m['logical_cores']} logical cores, torch {m['torch']} with "
        f"{m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''}), commit `{m['commit'][:10]}`{dirty}. "
        "Load average when it started: "
        f"{m['load_average_1m_at_start']}"
        + (f"; the run took {result['wall_seconds']:,.0f} s." if "wall_seconds" in result else ".")
        + (f" {m['note']}" if m.get("note") else ""),
        "",
        "```bash",
        result["command"],
        "```",
        "",
        result["table_markdown"],
    ]
    if image:
        lines += ["", f"![{result['title']}]({image})"]
    for note in result.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_report(name: str, result: dict[str, Any], figure: Any | None, out_dir: Path) -> Path:
    """Add ``benchmark`` and ``plot`` to ``result``, print it as JSON and write
    ``<out_dir>/YYYY-MM-DD-<name>.{json,png,md}`` (each file atomically). Returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{name}"
    result.update(
        benchmark=name,
        plot=f"{stem}.png" if figure is not None else None,
        wall_seconds=round(time.perf_counter() - _IMPORTED_AT, 1),
    )
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    if figure is not None:
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
        atomic_write(out_dir / f"{stem}.png", png.getvalue())
    atomic_write(out_dir / f"{stem}.md", render_markdown(result, result["plot"]).encode())
    atomic_write(out_dir / f"{stem}.json", text.encode())
    print(f"report: {out_dir / stem}.{{json,md{',png' if figure is not None else ''}}}", file=sys.stderr)
    return out_dir / f"{stem}.json"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bar_chart(title: str, ylabel: str, groups: Sequence[str], series: dict[str, Sequence[float]]):
    """A grouped bar chart: one group per entry of ``groups``, one bar per series; values written on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(series)) / 2), 4.2))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [v if v == v else 0 for v in values], width, label=label)  # NaN (not measured) -> no bar
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v == v else "n/a" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
