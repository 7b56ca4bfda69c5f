"""What a person sees of a run: the progress bar (or periodic log lines), the metrics log and the learning curve.

``RUN/metrics.jsonl`` has one JSON object per line: ``{"kind": "train", "update", "epoch", "tokens", "loss",
"ppl", "lr", "grad_norm", "tokens_per_s", "skipped", "time"}`` every ``log_every`` updates and ``{"kind": "valid",
"update", "epoch", "tokens", "loss", "ppl", "time"}`` at each validation; ``time`` is wall-clock seconds since the run
started, earlier invocations of a resumed run included. TensorBoard events go to ``RUN/tensorboard/``
when the ``tensorboard`` package is installed. ``RUN/learning_curve.png`` is redrawn after every validation.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gcnn.fs import atomic_write, write_atomically
from gcnn.layout import CURVE_FILE, METRICS_FILE


def perplexity(loss: float) -> float:
    """exp(loss), or inf where that overflows."""
    return math.exp(loss) if loss < 700 else math.inf


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (flushed at once) and, if available, TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._file: TextIO = open(self.path, "a", encoding="utf-8")
        self._writer = _tensorboard_writer(Path(run_dir) / "tensorboard") if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("kind", "update", "epoch", "time") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{record['kind']}/{key}", value, record["update"])

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a line cut short by a kill is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run_dir: Path, update: int) -> None:
    """Drop records after ``update`` (written after the checkpoint a run resumes from), atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("update", 0) <= update]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_learning_curve(run_dir: Path) -> None:
    """Draw train and validation perplexity against updates into ``learning_curve.png`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for kind, style in (("train", "-"), ("valid", "o-")):
        points = [(r["update"], r["ppl"]) for r in records if r.get("kind") == kind and math.isfinite(r["ppl"])]
        if points:
            ax.plot(*zip(*points), style, label=kind, markersize=3)
    ax.set_xlabel("updates")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(Path(run_dir).resolve().name)
    fig.tight_layout()
    try:
        write_atomically(Path(run_dir) / CURVE_FILE, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


class Progress:
    """A tqdm bar on stderr (tokens/s, loss, perplexity, time left) when stderr is a terminal; otherwise, or with
    ``quiet``, one log line every ``every`` updates (none at all with ``silent``).

    ``total`` is the number of updates the run will reach (0 if only a time limit bounds it); ``minutes`` is that
    time limit (0: none). Time left is the sooner of the two estimates."""

    def __init__(self, total: int, done: int, *, every: int, quiet: bool, silent: bool = False,
                 minutes: float = 0.0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.every, self.silent = total, every, silent
        self._start, self._start_done = time.monotonic(), done
        self._deadline = self._start + 60 * minutes if minutes else math.inf
        self._bar = None
        if not (quiet or silent) and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, initial=done, file=self.stream, dynamic_ncols=True,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} updates [{elapsed}{postfix}]")

    def update(self, done: int, *, loss: float, tokens_per_s: float, lr: float) -> None:
        stats = f"loss {loss:.3f}, ppl {perplexity(loss):.1f}, lr {lr:.3g}, {tokens_per_s:,.0f} tok/s"
        if self._bar is not None and not self.silent:
            try:
                self._bar.update(done - self._bar.n)
                self._bar.set_postfix_str(f"{self._time_left(done)} left, {stats}", refresh=True)
            except OSError:
                self.silent = True
        elif not self.silent and done % self.every == 0:
            of = f"/{self.total}" if self.total else ""
            self.log(f"update {done}{of}: {stats}, {self._time_left(done)} left")

    def log(self, message: str) -> None:
        if self.silent:
            return
        try:
            if self._bar is not None:
                self._bar.write(message, file=self.stream)
            else:
                print(message, file=self.stream, flush=True)
        except OSError:  # a closed pipe or a full disk behind stderr: go on training, silently
            self.silent = True

    def _time_left(self, done: int) -> str:
        now = time.monotonic()
        left = self._deadline - now
        rate = (done - self._start_done) / (now - self._start) if now > self._start else 0.0
        if self.total and rate > 0:
            left = min(left, (self.total - done) / rate)
        if not math.isfinite(left):
            return "?"
        seconds = max(0, int(left))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
