"""Quality under a wall-clock budget on WikiText-2: the CPU recipe against the LSTM and Transformer baselines, and
the paper's ablations at small scale. Every run is a real ``gcnn train`` (a subprocess, one torch thread each, up
to ``--jobs`` at once), so what is reported is what a user of the recipes gets.

    python benchmarks/bench_quality.py recipe              # configs/wikitext2-*.toml, 60 minutes each, test ppl
    python benchmarks/bench_quality.py ablations           # gates, gating, weight norm, clipping, context (300 updates)
    python benchmarks/bench_quality.py ablations --seeds 3 --updates 1500 --minutes 60   # 3 seeds, ~3 epochs
    python benchmarks/bench_quality.py recipe --report     # redraw the report from the finished run folders

Run folders go under ``runs/quality/`` (``--runs``); a finished run is reused, not retrained (``--force`` retrains),
an unfinished one is started again. WikiText-2 is read from ../shared/data/wikitext-2 (``--corpus``) and prepared
once into ``runs/quality/wikitext-2``. The recipe comparison's budget is wall-clock (``max_minutes``, validation
included; the cosine schedules decay over that time), the same for the three models running side by side. The
ablations' budget is a number of updates (``--updates``, the same tokens for every variant), as runs of a few minutes
one after another would otherwise get different shares of a shared machine; their curves are still drawn against the
wall-clock each run took. Runs that share the machine (``--jobs 2`` on 2 cores) each get one core.

``--seeds N`` trains every ablation variant with seeds 1..N (``train.seed``: initialisation, data order, dropout;
seed 1's run folder is the variant's name, so single-seed runs are reused); the report gives each variant's mean
best validation perplexity with its seed-to-seed spread (standard deviation, and the range), error bars in the plot,
and says for each pair of a group whether the difference of the means exceeds the spread: ``|mean_a - mean_b| >
sd_a + sd_b`` (their one-sd error bars do not overlap).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

RUNS = common.REPO / "runs" / "quality"
DIVERGED = "diverged.json"  # left in a run folder whose training gcnn train stopped on non-finite losses
CONFIGS = common.REPO / "configs"


@dataclass
class Job:
    """One training run: a recipe file plus ``--set`` overrides."""

    name: str
    label: str
    recipe: Path
    sets: list[str] = field(default_factory=list)
    group: str = ""
    paper: str = ""  # the paper's number for this variant, as text ("" if it has none)
    variant: str = ""  # the ablation variant (several seeds share it); "" means the job's name
    seed: int = 1


# ------------------------------------------------------------------------------------------------ the comparisons
def recipe_jobs(gcnn_recipe: Path | None = None) -> list[Job]:
    """The comparison's three runs; ``gcnn_recipe`` replaces the GCNN's (e.g. the search's best-recipe.toml)."""
    gcnn = Path(gcnn_recipe) if gcnn_recipe is not None else CONFIGS / "wikitext2-cpu.toml"
    shown = f"configs/{gcnn.name}" if gcnn.parent.resolve() == CONFIGS.resolve() else str(gcnn)
    return [
        Job("gcnn", f"GCNN ({shown})", gcnn),
        Job("lstm", "LSTM (configs/wikitext2-lstm-cpu.toml)", CONFIGS / "wikitext2-lstm-cpu.toml"),
        Job("transformer", "Transformer (configs/wikitext2-transformer-cpu.toml)",
            CONFIGS / "wikitext2-transformer-cpu.toml"),
    ]


ABLATION_RECIPE = CONFIGS / "wikitext2-ablation.toml"
# --base: the paper's optimiser (Nesterov 0.99, lr 1, clip 0.1), or the AdamW of the CPU recipe, which trains much
# further in a few minutes, so that a ranking can be checked under both
ABLATION_BASES = {"paper": ABLATION_RECIPE, "adamw": CONFIGS / "wikitext2-ablation-adamw.toml"}

# group -> (title, [(name, label, sets, the paper's number)]); "glu" is the shared base run
PAPER_NOTE = {
    "gates": "WikiText-103, ~35 epochs: GLU 47.1, ReLU 51.2, GTU 51.4, Tanh 67.2",
    "linear": "Google Billion Word, 100 h: GLU 42.1, bilinear 62.0, linear 111.9",
    "placement": "not in the paper's figures (the seed's pseudo-code gates once per block)",
    "regularization": "Google Billion Word, one pass: with both 51.3, without weight norm 59.6, without clipping 79.8",
    "context": "returns fall off sharply beyond ~40 tokens of context",
}
PAIR_BLOCKS = "model.blocks=[{layers=[[4,256]],residual=false},{layers=[[4,256],[4,256]],repeat=3}]"
ABLATIONS: dict[str, tuple[str, list[tuple[str, str, list[str], str]]]] = {
    "gates": ("GLU against GTU, ReLU and Tanh", [
        ("glu", "GLU", [], "47.1"),
        ("gtu", "GTU", ["model.gate=gtu"], "51.4"),
        ("relu", "ReLU", ["model.gate=relu"], "51.2"),
        ("tanh", "Tanh", ["model.gate=tanh"], "67.2"),
    ]),
    "linear": ("GLU against bilinear and linear", [
        ("glu", "GLU", [], "42.1"),
        ("bilinear", "bilinear", ["model.gate=bilinear"], "62.0"),
        ("linear", "linear", ["model.gate=linear"], "111.9"),
    ]),
    # gcnn-small's residual blocks hold one convolution each, where the two placements are the same function: this
    # pair uses blocks of two convolutions (GCNN-9's shape: a plain layer, then 3 residual blocks of two [4, 256])
    "placement": ("Gate after every convolution against once per block", [
        ("pairs-layer-gate", "after every convolution", [PAIR_BLOCKS], ""),
        ("pairs-block-gate", "once per block", [PAIR_BLOCKS, "model.gate_placement=block"], ""),
    ]),
    "regularization": ("Weight normalization and gradient clipping", [
        ("glu", "both", [], "51.3"),
        ("no-weight-norm", "without weight norm", ["model.weight_norm=false"], "59.6"),
        ("no-clipping", "without clipping", ["clip_norm=0"], "79.8"),
    ]),
    "context": ("Training context length", [
        ("context-8", "8 tokens", ["context=8", "batch_size=512"], ""),
        ("context-16", "16 tokens", ["context=16", "batch_size=256"], ""),
        ("context-32", "32 tokens", ["context=32", "batch_size=128"], ""),
        ("context-64", "64 tokens", ["context=64", "batch_size=64"], ""),
        ("glu", "128 tokens", [], ""),
    ]),
}


def seed_run_name(variant: str, seed: int) -> str:
    """The run folder of a variant's seed: seed 1 keeps the variant's name (the single-seed runs of before)."""
    return variant if seed == 1 else f"{variant}-seed{seed}"


def ablation_jobs(groups: list[str], base: str = "paper", seeds: int = 1) -> list[Job]:
    jobs: dict[str, Job] = {}
    for group in groups:
        for name, label, sets, paper in ABLATIONS[group][1]:
            for seed in range(1, seeds + 1):
                extra = [] if seed == 1 else [f"seed={seed}"]
                run = seed_run_name(name, seed)
                jobs.setdefault(run, Job(run, label, ABLATION_BASES[base], [*sets, *extra], group, paper, name, seed))
    return list(jobs.values())


# ------------------------------------------------------------------------------------------------ seeds
def aggregate(values: list[float | None]) -> dict[str, Any]:
    """Mean and spread of one variant's best validation perplexities over its seeds (None: a diverged seed, which
    makes the variant diverged). ``sd`` is the sample standard deviation (0 for one seed)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    diverged = len(values) - len(finite)
    if not finite or diverged:
        return {"n": len(values), "diverged": diverged, "mean": None, "sd": None, "min": None, "max": None,
                "values": values}
    return {"n": len(finite), "diverged": 0, "mean": statistics.fmean(finite),
            "sd": statistics.stdev(finite) if len(finite) > 1 else 0.0, "min": min(finite), "max": max(finite),
            "values": finite}


def separated(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """Whether two variants' means differ by more than their seed spreads (``|mean_a - mean_b| > sd_a + sd_b``);
    None where it cannot be told (fewer than 2 seeds, or a diverged variant)."""
    if a["mean"] is None or b["mean"] is None or min(a["n"], b["n"]) < 2:
        return None
    return abs(a["mean"] - b["mean"]) > a["sd"] + b["sd"]


def pair_verdicts(title: str, present: list[tuple[str, str]], seeds: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per pair of a group's variants: which is better, by how much, and whether that exceeds the
    seed-to-seed spread."""
    out = []
    for i, (name_a, label_a) in enumerate(present):
        for name_b, label_b in present[i + 1:]:
            a, b = seeds[name_a], seeds[name_b]
            if a["mean"] is None or b["mean"] is None:
                bad = [label for label, agg in ((label_a, a), (label_b, b)) if agg["mean"] is None]
                out.append(f"{title}: {label_a} vs {label_b}: {' and '.join(bad)} diverged on "
                           f"{'some seeds' if len(bad) == 1 else 'some seeds each'}; no spread to compare.")
                continue
            (better, good), (worse, bad) = sorted(((label_a, a), (label_b, b)), key=lambda x: x[1]["mean"])
            verdict = separated(a, b)
            how = ("larger than the seed spread" if verdict else
                   "within the seed spread: not settled" if verdict is False else "with one seed: spread unknown")
            out.append(f"{title}: {better} {fmt(good['mean'])} ± {fmt(good['sd'])} vs {worse} {fmt(bad['mean'])} ± "
                       f"{fmt(bad['sd'])}: {better} better by {fmt(bad['mean'] - good['mean'])}, {how}.")
    return out


def by_variant(results: dict[str, dict[str, Any]], groups: list[str], seeds: int) -> dict[str, dict[str, Any]]:
    """The runs of each variant's seeds merged: the first seed's summary, with ``best_valid_ppl`` the seeds' mean,
    ``seeds`` the aggregate (see :func:`aggregate`) and ``seed_runs`` every seed's summary."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for name, *_ in ABLATIONS[group][1]:
            runs = [results[r] for r in (seed_run_name(name, s) for s in range(1, seeds + 1)) if r in results]
            if not runs or name in merged:
                continue
            agg = aggregate([score(r) if math.isfinite(score(r)) else None for r in runs])
            first = dict(runs[0])
            diverged = next((r["diverged"] for r in runs if r.get("diverged")), None)
            first.update(best_valid_ppl=agg["mean"], diverged=diverged, seeds=agg, seed_runs=runs,
                         epochs=statistics.fmean(r["epochs"] for r in runs),
                         tokens_per_s=statistics.fmean(r["tokens_per_s"] or 0.0 for r in runs) or None)
            merged[name] = first
    return merged


# ------------------------------------------------------------------------------------------------ running
def prepare_data(args: argparse.Namespace) -> Path:
    data = args.runs / "wikitext-2"
    if (data / "manifest.json").is_file():
        return data
    if not args.corpus.is_dir():
        sys.exit(f"bench_quality: WikiText-2 not found at {args.corpus} (give --corpus FOLDER); nothing was run")
    subprocess.run([sys.executable, "-m", "gcnn", "prepare", "--data", str(args.corpus), "--out", str(data)],
                   check=True)
    return data


def finished(run: Path) -> bool:
    """A run that ended: at its budget, or diverged (gcnn train stopped it on non-finite losses)."""
    if (run / DIVERGED).is_file():
        return True
    try:
        return json.loads((run / "run.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def train(job: Job, data: Path, args: argparse.Namespace) -> Path:
    run = args.runs / args.kind_dir / job.name
    if finished(run) and not args.force:
        print(f"[{job.name}] reusing the finished run in {run}", file=sys.stderr, flush=True)
        return run
    if run.exists():
        print(f"[{job.name}] {run} holds an unfinished or --force'd run: starting it again", file=sys.stderr)
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "gcnn", "train", "--data", str(data), "--config", str(job.recipe),
               "--out", str(run), "--quiet", "--set", f"threads={args.threads}", "--set", f"max_minutes={args.minutes}"]
    if args.updates:  # an update budget; the minutes are then only a guard against a run that crawls
        command += ["--set", f"max_updates={args.updates}"]
    for item in job.sets:
        command += ["--set", item]
    print(f"[{job.name}] {' '.join(command[2:])}", file=sys.stderr, flush=True)
    with open(args.runs / args.kind_dir / f"{job.name}.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        message = [line for line in Path(log.name).read_text().splitlines() if "non-finite" in line]
        if not message:
            raise RuntimeError(f"[{job.name}] gcnn train exited with {code}; see {log.name}")
        # divergence is a result of the comparison (the paper's lr 1 without clipping), not a failure of the benchmark
        (run / DIVERGED).write_text(json.dumps({"message": message[-1]}) + "\n")
        print(f"[{job.name}] diverged: {message[-1]}", file=sys.stderr, flush=True)
    return run


def test_perplexity(run: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    cached = run / "test_eval.json"
    if cached.is_file() and not args.force:
        return json.loads(cached.read_text())
    out = subprocess.run(
        [sys.executable, "-m", "gcnn", "eval", str(run), "--data", str(data), "--split", "test", "--json"],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
    )
    if out.returncode != 0:
        raise RuntimeError(f"gcnn eval {run} failed: {out.stderr.strip()}")
    result = json.loads(out.stdout)
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_all(jobs: list[Job], data: Path, args: argparse.Namespace, *, test: bool) -> dict[str, dict[str, Any]]:
    def one(job: Job) -> tuple[str, dict[str, Any]]:
        run = train(job, data, args)
        summary = summarize(run)
        if test:
            summary["test"] = test_perplexity(run, data, args)
        return job.name, summary

    if args.report:
        results = {}
        for job in jobs:
            run = args.runs / args.kind_dir / job.name
            if finished(run):
                results[job.name] = summarize(run)
                if test and (run / "test_eval.json").is_file():
                    results[job.name]["test"] = json.loads((run / "test_eval.json").read_text())
        return results
    def guarded(job: Job) -> tuple[str, dict[str, Any] | None]:
        try:
            return one(job)
        except Exception as exc:  # one broken run must not cost the others: report it and go on
            print(f"[{job.name}] FAILED: {exc}", file=sys.stderr, flush=True)
            return job.name, None

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = dict(pool.map(guarded, jobs))
    failed = [name for name, result in done.items() if result is None]
    if failed:
        print(f"bench_quality: {len(failed)} run(s) failed: {', '.join(failed)} (see their logs); the report "
              "leaves them out", file=sys.stderr)
    return {name: result for name, result in done.items() if result is not None}


def summarize(run: Path) -> dict[str, Any]:
    info = json.loads((run / "run.json").read_text())
    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    diverged = json.loads((run / DIVERGED).read_text())["message"] if (run / DIVERGED).is_file() else None
    valid = [(r["time"] / 60, r["ppl"]) for r in records if r.get("kind") == "valid"]
    train_ppl = [r["ppl"] for r in records if r.get("kind") == "train"]
    return {
        "run": str(run.relative_to(common.REPO)) if run.is_relative_to(common.REPO) else str(run),
        "arch": info["model_config"].get("arch") or "custom",
        "parameters": info["parameters"],
        "updates": info["updates"],
        "started": str(info.get("started", "?")).replace("T", " ")[:16],
        "epochs": round(info["epochs"], 2),
        "tokens": info["tokens"],
        "tokens_per_s": info["tokens_per_s"],
        "best_valid_ppl": None if diverged else info["best_valid_ppl"],
        "diverged": diverged,
        "final_valid_ppl": valid[-1][1] if valid else None,
        "final_train_ppl": train_ppl[-1] if train_ppl else None,  # the last logging window's, with dropout on
        "valid_curve_minutes_ppl": valid,
        "train_config": {k: info["train_config"][k] for k in ("optimizer", "lr", "batch_size", "context",
                                                                "clip_norm", "precision", "max_minutes")},
    }


# ------------------------------------------------------------------------------------------------ reports
def curve_plot(title: str, series: list[tuple[str, list]], *, ylim: float | None = None,
               dashed: frozenset[str] = frozenset()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series:
        if points:
            ax.plot(*zip(*points), "o--" if label in dashed else "o-", markersize=3, label=label)
    ax.set_xlabel("wall-clock minutes")
    ax.set_ylabel("validation perplexity")
    finite = [p for _, pts in series for _, p in pts if math.isfinite(p)]
    if finite:
        low = min(finite)
        ax.set_ylim(low * 0.9, ylim or min(max(finite), low * 4))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def score(result: dict[str, Any]) -> float:
    """A run's best validation perplexity for ranking; a diverged run ranks last."""
    return math.inf if result.get("diverged") or result["best_valid_ppl"] is None else result["best_valid_ppl"]


def fmt(value: float | None) -> str:
    """A perplexity for a table: one decimal, or powers of ten for the astronomic values of a blown-up run."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.1f}" if abs(value) < 1e7 else f"{value:.2e}"


def earlier_runs(paths: list[Path], missing: set[str]) -> dict[str, dict[str, Any]]:
    """The runs of earlier recipe reports (``--earlier``) for the models not trained in this one, each marked with
    how it was run (``earlier``: the report's file, date, threads and runs at a time). Newer reports win; rows that
    stood in for a model in an earlier report are not that report's runs and are skipped (name their own report)."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench_quality: --earlier {path}: cannot read the report: {exc}") from None
        if report.get("benchmark") != "quality-recipe" or not isinstance(report.get("runs"), dict):
            raise SystemExit(f"bench_quality: --earlier {path}: not a quality-recipe report (no 'runs')")
        threads, jobs = report.get("threads", "?"), report.get("jobs", "?")
        how = (f"{report.get('date', '?')[:10]}, {threads} thread{'s' if threads != 1 else ''}"
               + (", side by side with another run" if jobs != 1 else ", one run at a time"))
        for name, run in report["runs"].items():
            if "earlier" in run:  # that report's own stand-in: not trained there, taken from its own report
                continue
            if name in missing and (name not in found or found[name]["earlier"]["date"] < report.get("date", "")):
                found[name] = dict(run, earlier={"report": Path(path).name, "date": report.get("date", ""),
                                                 "how": how, "machine": report.get("machine", {}).get("cpu", "?"),
                                                 "threads": threads, "jobs": jobs})
    return found


def report_recipe(results: dict[str, dict[str, Any]], jobs: list[Job], head: dict[str, Any],
                  args: argparse.Namespace) -> None:
    stand_in = earlier_runs(getattr(args, "earlier", []), {j.name for j in jobs} - set(results))
    results = {**results, **stand_in}
    labels = {j.name: j.label.split(" (")[0] + (f" [{stand_in[j.name]['earlier']['how']}]" if j.name in stand_in
                                                else "") for j in jobs}
    rows = []
    for job in jobs:
        r = results.get(job.name)
        if r is None:
            continue
        test = r.get("test", {})
        label = job.label + (f" [earlier: {r['earlier']['how']}]" if "earlier" in r else "")
        rows.append([label, r["arch"], f"{r['parameters']:,}", r.get("started", "?"), f"{r['tokens_per_s']:,.0f}",
                     f"{r['epochs']:.2f}", fmt(r["best_valid_ppl"]), fmt(test.get("perplexity"))])
    table = common.markdown_table(
        ["model", "architecture", "parameters", "started", "train tokens/s", "epochs", "best valid ppl", "test ppl"],
        rows)
    gcnn = results.get("gcnn", {}).get("test", {}).get("perplexity")
    sharing = ("each while another run of the same length used the other core (see when each started), so every "
               "model gets the same budget and the same share of the CPU" if args.jobs > 1 else
               "one run at a time (nothing else of the benchmark running beside it), so every model gets the same "
               "budget and the whole machine")
    notes = [
        f"Each run trains for {args.minutes:g} minutes of wall-clock (validation included) with {args.threads} "
        f"torch thread{'s' if args.threads != 1 else ''} on this {head['machine']['logical_cores']}-core machine, "
        f"{sharing}. Test perplexity: `gcnn eval RUN --data {args.runs.as_posix()}/wikitext-2 --split test` on the "
        "best checkpoint by validation (stream mode: every test token scored once with the model's full context).",
    ]
    for name, r in stand_in.items():
        same = (r["earlier"]["machine"] == head["machine"]["cpu"] and r["earlier"]["threads"] == args.threads
                and r["earlier"]["jobs"] == args.jobs)
        notes.append(f"{labels[name].split(' [')[0]}: not trained in this run; its row and dashed curve are from "
                     f"{r['earlier']['report']} ({r['earlier']['how']}, on {r['earlier']['machine']}), "
                     + ("the same machine and protocol at another time." if same
                        else "so its budget bought a different amount of compute."))
    if gcnn is not None:
        verdict = "reaches" if gcnn <= 100 else "does not reach"
        notes.append(f"The GCNN recipe {verdict} the target of test perplexity 100: {gcnn:.1f}.")
    for job in jobs:  # what limits each run: still improving at the end (compute), or a train/valid gap (data)
        r = results.get(job.name)
        curve = r["valid_curve_minutes_ppl"] if r else []
        if len(curve) < 3:
            continue
        end = curve[-1][0]
        earlier = [p for t, p in curve if t <= 0.75 * end]
        if earlier:
            notes.append(
                f"{job.label.split(' (')[0]}: validation perplexity {earlier[-1]:.1f} at {0.75 * end:.0f} minutes, "
                f"{curve[-1][1]:.1f} at the end ({100 * (1 - curve[-1][1] / earlier[-1]):.0f}% lower in the last "
                f"quarter); training perplexity in the last logging window {fmt(r.get('final_train_ppl'))} "
                f"(dropout on), {r['epochs']:.1f} epochs at {r['tokens_per_s']:,.0f} tokens/s."
            )
    result = dict(head, title=f"WikiText-2 in {args.minutes:g} minutes on a CPU: GCNN against LSTM and Transformer",
                  minutes=args.minutes, threads=args.threads, jobs=args.jobs, runs=results, table_markdown=table,
                  notes=notes)
    figure = curve_plot(result["title"], [(labels[j.name], results[j.name]["valid_curve_minutes_ppl"])
                                          for j in jobs if j.name in results],
                        dashed=frozenset(labels[name] for name in stand_in))
    common.write_report("quality-recipe", result, figure, args.out_dir)


def report_ablations(results: dict[str, dict[str, Any]], groups: list[str], head: dict[str, Any],
                     args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = getattr(args, "seeds", 1)
    runs = results
    results = by_variant(runs, groups, seeds)
    rows, figures, verdicts, bars = [], [], [], []
    for group in groups:
        title, variants = ABLATIONS[group]
        present = [(n, label, paper) for n, label, _, paper in variants if n in results]
        ranked = sorted(present, key=lambda v: score(results[v[0]]))
        for name, label, paper in present:
            r = results[name]
            rank = 1 + [v[0] for v in ranked].index(name)
            minutes = r["valid_curve_minutes_ppl"][-1][0] if r["valid_curve_minutes_ppl"] else math.nan
            where = re.search(r"\(update \d+", r.get("diverged") or "")
            ppl = (f"diverged{' at ' + where.group(0)[1:] if where else ''}" if r.get("diverged")
                   else fmt(r["best_valid_ppl"]))
            agg = r["seeds"]
            if agg["n"] > 1 and agg["mean"] is not None:
                ppl = f"{fmt(agg['mean'])} ± {fmt(agg['sd'])}"
            spread = (f"{agg['n']}: {fmt(agg['min'])}-{fmt(agg['max'])}" if agg["mean"] is not None and agg["n"] > 1
                      else f"{agg['n']}" + (f" ({agg['diverged']} diverged)" if agg["diverged"] else ""))
            rows.append([title, label, ppl, str(rank), f"{r['epochs']:.2f}", f"{minutes:.1f}",
                         f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "n/a", paper or "-", spread])
        figures.append((title, [(label, results[n]["valid_curve_minutes_ppl"]) for n, label, _ in present]))
        bars.append((title, [(label, results[n]["seeds"]) for n, label, _ in present]))
        verdicts.append(ranking_verdict(title, present, results))
        if seeds > 1:
            verdicts.extend(pair_verdicts(title, [(n, label) for n, label, _ in present],
                                          {n: results[n]["seeds"] for n, _, _ in present}))
    table = common.markdown_table(
        ["ablation", "variant", "best valid ppl" + (" (mean ± sd)" if seeds > 1 else ""), "rank", "epochs",
         "minutes", "train tokens/s", "paper (test ppl)", "seeds" + (" (range)" if seeds > 1 else "")],
        rows)
    rows_of_plots = 2 if seeds > 1 else 1
    fig, axes = plt.subplots(rows_of_plots, len(figures), figsize=(5 * len(figures), 4.2 * rows_of_plots),
                             squeeze=False)
    if seeds > 1:  # error bars: each variant's mean ± sd, every seed a dot
        for ax, (title, variants) in zip(axes[1], bars):
            for x, (label, agg) in enumerate(variants):
                if agg["mean"] is None:
                    continue
                ax.errorbar([x], [agg["mean"]], yerr=[agg["sd"]], fmt="o", capsize=4)
                ax.plot([x] * len(agg["values"]), agg["values"], ".", color="grey", alpha=0.7)
            ax.set_xticks(range(len(variants)), [label for label, _ in variants], rotation=20, fontsize=8)
            ax.set_ylabel(f"best valid ppl, mean ± sd of {seeds} seeds")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
    for ax, (title, series) in zip(axes[0], figures):
        for label, points in series:
            if points:
                ax.plot(*zip(*points), "o-", markersize=3, label=label)
        finite = [p for _, pts in series for _, p in pts if math.isfinite(p)]
        if finite:
            ax.set_ylim(min(finite) * 0.9, min(max(finite), min(finite) * 3))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("wall-clock minutes")
        ax.set_ylabel("validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    notes = [
        f"Every variant trains `configs/{ABLATION_BASES[args.base].name}` with one change, for {args.updates} updates of "
        f"4,096 tokens (the cosine decays over them) with {args.threads} torch thread{'s' if args.threads != 1 else ''},"
        f" {args.jobs} run{'s' if args.jobs != 1 else ''} at a time; 'minutes' is the wall-clock each took. "
        "Valid perplexity is on the whole validation split in blocks of the training context; rank 1 is the best "
        "of its group. The paper's numbers are test perplexities of full-size models trained for days on "
        "WikiText-103 or Google Billion Word: compare rankings, not values.",
    ] + [f"Paper, {ABLATIONS[g][0]}: {PAPER_NOTE[g]}." for g in groups] + [v for v in verdicts if v]
    if seeds > 1:
        notes.append(f"{seeds} seeds per variant (train.seed 1..{seeds}: initialisation, data order, dropout); ± is "
                     "the sample standard deviation over the seeds, 'seeds' gives their range. A pair's difference "
                     "'exceeds the seed spread' when |mean_a - mean_b| > sd_a + sd_b; the curves in the first row "
                     "are seed 1's.")
    else:
        notes.append("One seed per variant: differences of a few percent may be run-to-run noise (not measured here).")
    if "context" in groups:
        from gcnn import build_model
        from gcnn.train import build_config, resolve_model_config

        base = build_config(recipe=ABLATION_BASES[args.base], flags={"data": "-", "out": "-"})
        field = build_model(resolve_model_config(base.model, 100)).receptive_field
        notes.append(f"The base model's receptive field is {field} tokens: a training context beyond it only changes "
                     "how many positions of each block see a full window, so this group cannot show returns beyond "
                     f"{field} tokens; the paper's claim is about models that see up to ~50.")
    optimiser = "the paper's optimiser" if args.base == "paper" else "AdamW"
    seeded = f", {seeds} seeds" if seeds > 1 else ""
    result = dict(head, title=f"Ablations on WikiText-2, {args.updates} updates each{seeded}, {optimiser}",
                  updates=args.updates, base=args.base, seeds=seeds,
                  threads=args.threads, jobs=args.jobs, runs=results, table_markdown=table, notes=notes)
    # several seeds are a report of their own: the single-seed reports (every group, a shorter budget) stay beside them
    name = "quality-ablations" + ("-seeds" if seeds > 1 else "") + ("" if args.base == "paper" else f"-{args.base}")
    common.write_report(name, result, fig, args.out_dir)


def ranking_verdict(title: str, present: list[tuple[str, str, str]], results: dict[str, dict[str, Any]]) -> str:
    """Whether this run's order of the variants (best valid ppl) is the paper's (its test ppl), in words."""
    with_paper = [(label, float(paper), score(results[name])) for name, label, paper in present if paper]
    if len(with_paper) < 2:
        ours = " < ".join(label for _, label, _ in sorted(present, key=lambda v: score(results[v[0]])))
        return f"{title}: here {ours} (best first); the paper gives no numbers to rank against." if ours else ""
    ours = [label for label, _, mine in sorted(with_paper, key=lambda v: v[2])]
    paper = [label for label, theirs, _ in sorted(with_paper, key=lambda v: v[1])]
    if ours == paper:
        return f"{title}: the ranking agrees with the paper's ({' < '.join(ours)}, best first)."
    swapped = [f"{a} / {b}" for i, a in enumerate(ours) for b in ours[i + 1:] if paper.index(a) > paper.index(b)]
    return (f"{title}: the ranking differs from the paper's: here {' < '.join(ours)}, in the paper "
            f"{' < '.join(paper)} (best first); pairs in the other order: {', '.join(swapped)}.")


# ------------------------------------------------------------------------------------------------ command line
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["recipe", "ablations"])
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock budget per run (default: 60 for recipe; for ablations a guard of 20, as "
                        "their budget is --updates)")
    parser.add_argument("--updates", type=int, default=None,
                        help="update budget per run (ablations only; default 300 = 1.2M tokens, about 4 minutes of "
                        "one core here); the cosine decays over it")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2, one per core here)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="ablations: train every variant with seeds 1..N and report mean ± spread (default: 1)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="recipe: model names (gcnn lstm transformer); ablations: groups (" +
                        " ".join(ABLATIONS) + ")")
    parser.add_argument("--gcnn-recipe", type=Path, default=None,
                        help="recipe: the GCNN's recipe (default: configs/wikitext2-cpu.toml), e.g. the search's "
                        "runs/search/best-recipe.toml")
    parser.add_argument("--base", choices=list(ABLATION_BASES), default="paper",
                        help="ablations: the base recipe's optimiser, the paper's (configs/wikitext2-ablation.toml, "
                        "default) or AdamW (configs/wikitext2-ablation-adamw.toml)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where run folders go (default: runs/quality)")
    parser.add_argument("--corpus", type=Path, default=common.WIKITEXT2, help="the WikiText-2 folder")
    parser.add_argument("--force", action="store_true", help="retrain runs that have finished")
    parser.add_argument("--report", action="store_true", help="only write the report from finished runs")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS)
    parser.add_argument("--note", default="")
    parser.add_argument("--earlier", type=Path, nargs="+", default=[],
                        help="recipe: earlier quality-recipe reports (JSON) whose runs stand in, marked as such, for "
                        "the models not trained in this one")
    args = parser.parse_args()
    if args.earlier and args.kind != "recipe":
        parser.error("--earlier is for recipe reports")
    args.minutes = args.minutes or (60.0 if args.kind == "recipe" else 20.0)
    if args.kind == "recipe" and args.updates:
        parser.error("--updates is for ablations: the recipe comparison's budget is --minutes of wall-clock")
    args.updates = 0 if args.kind == "recipe" else (args.updates or 300)
    common.check_positive(parser, args, "jobs", "threads", "seeds")
    if args.kind == "recipe" and args.seeds != 1:
        parser.error("--seeds is for ablations")
    if args.kind == "recipe":
        jobs = all_jobs = recipe_jobs(args.gcnn_recipe)
        names = args.only or [j.name for j in jobs]
        unknown = set(names) - {j.name for j in jobs}
        if unknown:
            parser.error(f"--only: unknown model(s) {', '.join(sorted(unknown))}; choose from gcnn lstm transformer")
        jobs = [j for j in jobs if j.name in names]
    else:
        groups = args.only or list(ABLATIONS)
        unknown = set(groups) - set(ABLATIONS)
        if unknown:
            parser.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}; choose from {' '.join(ABLATIONS)}")
        jobs = ablation_jobs(groups, args.base, args.seeds)
    args.kind_dir = args.kind if args.kind == "recipe" or args.base == "paper" else f"ablations-{args.base}"
    # the runs set their own threads (a train key); this process only orchestrates
    head = common.start(argparse.Namespace(threads=None, note=args.note, smoke=False))
    data = prepare_data(args)
    started = time.time()
    results = run_all(jobs, data, args, test=args.kind == "recipe")
    print(f"bench_quality: {len(results)} runs in {time.time() - started:,.0f} s", file=sys.stderr)
    if args.kind == "recipe":
        # models left out by --only still get their rows where an --earlier report has them
        report_recipe(results, all_jobs if args.earlier else jobs, head, args)
    else:
        report_ablations(results, groups, head, args)


if __name__ == "__main__":
    main()
