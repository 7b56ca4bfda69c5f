"""A hyper-parameter search for the WikiText-2 recipe with Optuna: short proxy runs, pruned by successive halving or
Hyperband on their validation perplexity, then the few best at the full budget.

    python benchmarks/search_quality.py --trials 40 --proxy-minutes 8          # the search (validation data only)
    python benchmarks/search_quality.py --final 3 --final-minutes 60           # the 3 best, an hour each, test once
    python benchmarks/search_quality.py --report                               # redraw the table from the study

``--enqueue NAME=VALUE,...`` (every setting of the space) runs given settings first, e.g. the base recipe's own as a
reference row in the table (the 2026-12-04 search enqueued configs/wikitext2-cpu-hour.toml's).

Every trial is a real ``gcnn train`` run (in this process, through :func:`gcnn.train.train`) from the base recipe
(``--base``, default configs/wikitext2-cpu.toml) with the sampled settings: width, depth, kernel, dilation, bottleneck
blocks, the embedding (a table, adaptive input, adaptive input tied to the adaptive softmax), dropout, word dropout,
weight decay and learning rate. Its budget is ``--proxy-minutes`` of wall-clock (the cosine decays over it) or
``--proxy-updates``; after every validation (``--valid-every`` updates) the trial reports its validation perplexity
and the pruner may stop it (the trainer's ``on_validation`` hook). Only the validation split is read while searching.

``--final N`` takes the N best finished trials of the study, trains each for ``--final-minutes`` with ``--threads``
threads (one after another: the runs do not share the machine), and reads the test split once per recipe (``gcnn
eval``'s stream mode, cached in the run folder as test_eval.json). The study is kept in ``RUNS/study.sqlite3``, so a
search can be stopped and continued; each trial's run folder is ``RUNS/trial-NNN``.

Reports: ``benchmarks/results/DATE-quality-search.{json,md,png}`` (every trial: settings, proxy validation
perplexity, pruned or not) and ``DATE-quality-search-final.*`` (the final runs' validation and test perplexity and
their learning curves). ``--final`` also writes ``RUNS/best-recipe.toml``: the base recipe with the settings of the
final run of best *validation* perplexity (the test split plays no part in the choice), the GCNN recipe that
``benchmarks/run_quality_hour.sh`` takes to the hour.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import common

RUNS = common.REPO / "runs" / "search"
BASE = common.REPO / "configs" / "wikitext2-cpu.toml"

# the search spaces: "wikitext2" for the real search, "tiny" for tests and --smoke (seconds per trial)
SPACES: dict[str, dict[str, list]] = {
    "wikitext2": {
        "width": [192, 256, 320, 384, 512],
        "depth": [4, 5, 6, 8, 10],           # residual blocks after the first (plain) convolution
        "kernel": [3, 4, 5, 6],
        "dilation": [1, 2],                  # every other residual block dilated by this
        "bottleneck": [False, True],         # blocks [1, w/4], [k, w/4], [1, w] instead of [k, w]
        "embed_dim": [128, 256],
        "embedding": ["table", "adaptive-input", "adaptive-input-tied"],
        "dropout": [0.0, 0.4],               # ranges: [low, high]
        "embed_dropout": [0.0, 0.2],
        "weight_decay": [1e-3, 0.1],         # log-uniform
        "lr": [1e-3, 1e-2],                  # log-uniform
    },
    "tiny": {
        "width": [8, 16],
        "depth": [1, 2],
        "kernel": [2, 3],
        "dilation": [1, 2],
        "bottleneck": [False, True],
        "embed_dim": [8, 16],
        "embedding": ["table", "adaptive-input", "adaptive-input-tied"],
        "dropout": [0.0, 0.3],
        "embed_dropout": [0.0, 0.2],
        "weight_decay": [1e-3, 0.1],
        "lr": [1e-3, 2e-2],
    },
}


# ------------------------------------------------------------------------------------------------ the space
DROPOUT_STEP = 0.05  # the dropout rates are drawn on this grid
DROPOUT_STEPPED = ("dropout", "embed_dropout")


def suggest(trial: Any, space: dict[str, list], cutoffs: list[int]) -> dict[str, Any]:
    """The settings of one trial, drawn from ``space``. Without adaptive-softmax cutoffs (a small vocabulary) the
    embedding choices are a table or a table tied to the full softmax."""
    embeddings = space["embedding"] if cutoffs else ["table", "tied"]
    return {
        "width": trial.suggest_categorical("width", space["width"]),
        "depth": trial.suggest_categorical("depth", space["depth"]),
        "kernel": trial.suggest_categorical("kernel", space["kernel"]),
        "dilation": trial.suggest_categorical("dilation", space["dilation"]),
        "bottleneck": trial.suggest_categorical("bottleneck", space["bottleneck"]),
        "embed_dim": trial.suggest_categorical("embed_dim", space["embed_dim"]),
        "embedding": trial.suggest_categorical("embedding" if cutoffs else "embedding_full", embeddings),
        "dropout": trial.suggest_float("dropout", *space["dropout"], step=DROPOUT_STEP),
        "embed_dropout": trial.suggest_float("embed_dropout", *space["embed_dropout"], step=DROPOUT_STEP),
        "weight_decay": trial.suggest_float("weight_decay", *space["weight_decay"], log=True),
        "lr": trial.suggest_float("lr", *space["lr"], log=True),
    }


def model_table(settings: dict[str, Any], cutoffs: list[int]) -> dict[str, Any]:
    """A custom [model] table for the settings: a plain [k, w] convolution, then ``depth`` residual blocks."""
    w, k = settings["width"], settings["kernel"]
    layers = [[1, max(1, w // 4)], [k, max(1, w // 4)], [1, w]] if settings["bottleneck"] else [[k, w]]
    blocks = [{"layers": [[k, w]], "residual": False}]
    for i in range(settings["depth"]):
        blocks.append({"layers": layers, "dilation": settings["dilation"] if i % 2 else 1})
    embedding = settings["embedding"]
    return {
        "blocks": blocks,
        "embed_dim": settings["embed_dim"],
        "adaptive_cutoffs": list(cutoffs),
        "adaptive_input": embedding.startswith("adaptive-input"),
        "tie_embeddings": embedding in ("tied", "adaptive-input-tied"),
        "dropout": settings["dropout"],
        "embed_dropout": settings["embed_dropout"],
    }


def train_sets(settings: dict[str, Any]) -> list[str]:
    return [f"weight_decay={settings['weight_decay']!r}", f"lr={settings['lr']!r}"]


def base_cutoffs(base: Path, vocab_size: int) -> list[int]:
    """The base recipe's adaptive-softmax cutoffs that fit the data's vocabulary."""
    from gcnn.config import fit_cutoffs
    from gcnn.train import build_config, resolve_model_config

    config = build_config(recipe=base, flags={"data": "-", "out": "-"})
    return list(fit_cutoffs(getattr(resolve_model_config(config.model, vocab_size), "adaptive_cutoffs", ()), vocab_size))


# ------------------------------------------------------------------------------------------------ running
def build_run_config(args: argparse.Namespace, settings: dict[str, Any], cutoffs: list[int], run: Path, *,
                     minutes: float, updates: int, threads: int) -> Any:
    from gcnn.train import build_config

    flags = {"data": str(args.data), "out": str(run), "max_minutes": minutes or None, "max_updates": updates or None}
    sets = [*args.set, *train_sets(settings), f"threads={threads}", f"valid_every={args.valid_every}",
            "tensorboard=false"]
    config = build_config(recipe=args.base, sets=sets, flags=flags)
    if not minutes:
        config.max_minutes = 0.0
    if not updates:
        config.max_updates = 0
    config.model = model_table(settings, cutoffs)  # the whole table: the base's arch does not apply
    config.validate()
    return config


def objective_for(args: argparse.Namespace, cutoffs: list[int]):
    import optuna
    from gcnn.train import train

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial, SPACES[args.space], cutoffs)
        run = args.runs / f"trial-{trial.number:03d}"
        if run.exists():  # a trial number is never reused by a study: a leftover of a killed search
            shutil.rmtree(run)
        config = build_run_config(args, settings, cutoffs, run, minutes=args.proxy_minutes,
                                  updates=args.proxy_updates, threads=args.threads)
        trial.set_user_attr("run", str(run))

        def report(event) -> bool:
            trial.report(event.ppl, step=event.update)
            return trial.should_prune()

        started = time.monotonic()
        result = train(config, silent=True, on_validation=report)
        info = json.loads((run / "run.json").read_text())
        trial.set_user_attr("updates", result.updates)
        trial.set_user_attr("epochs", round(result.epochs, 3))
        trial.set_user_attr("minutes", round((time.monotonic() - started) / 60, 2))
        trial.set_user_attr("parameters", info["parameters"])
        trial.set_user_attr("best_valid_ppl", result.best_valid_ppl)
        print(f"[trial {trial.number}] {settings} -> valid ppl {result.best_valid_ppl:.2f} after {result.updates} "
              f"updates ({result.stop_reason})", file=sys.stderr, flush=True)
        if result.stop_reason == "on_validation":
            raise optuna.TrialPruned(f"pruned at update {result.updates}")
        return result.best_valid_ppl

    return objective


def make_pruner(name: str, args: argparse.Namespace):
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=args.valid_every, reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=args.valid_every, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(args: argparse.Namespace, *, create: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{args.runs / 'study.sqlite3'}"
    if not create:
        if not (args.runs / "study.sqlite3").is_file():
            sys.exit(f"search_quality: no study in {args.runs} (run the search first, or give --runs)")
        return optuna.load_study(study_name=args.study, storage=storage)
    args.runs.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(study_name=args.study, storage=storage, direction="minimize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=args.seed),
                               pruner=make_pruner(args.pruner, args))


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study as a plain record: settings, proxy validation perplexity, state, pruned or not."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        reported = t.intermediate_values
        last_step = max(reported) if reported else None
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else t.user_attrs.get("best_valid_ppl")
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "pruned": t.state == optuna.trial.TrialState.PRUNED,
            "valid_ppl": value,
            "last_reported_ppl": reported[last_step] if last_step is not None else None,
            "updates": t.user_attrs.get("updates", last_step),
            "minutes": t.user_attrs.get("minutes"),
            "parameters": t.user_attrs.get("parameters"),
            "settings": {k.replace("embedding_full", "embedding"): v for k, v in t.params.items()},
            "run": t.user_attrs.get("run"),
        })
    return rows


def best_finished(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["valid_ppl"] is not None and math.isfinite(r["valid_ppl"])]
    return sorted(done, key=lambda r: r["valid_ppl"])[:n]


def fmt(value: Any, spec: str = ",.1f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def settings_text(settings: dict[str, Any]) -> str:
    s = settings
    if not s:
        return "-"
    shape = (f"{s['depth']} x {'bottleneck ' if s['bottleneck'] else ''}[{s['kernel']},{s['width']}]"
             + (f" dil {s['dilation']}" if s["dilation"] != 1 and s["depth"] > 1 else ""))
    return (f"{shape}, emb {s['embed_dim']} {s['embedding']}, dropout {s['dropout']:.2f}/{s['embed_dropout']:.2f}, "
            f"wd {s['weight_decay']:.2g}, lr {s['lr']:.2g}")


def search_table(rows: list[dict[str, Any]]) -> str:
    ordered = sorted(rows, key=lambda r: (r["valid_ppl"] is None, r["valid_ppl"] or 0.0, r["number"]))
    return common.markdown_table(
        ["trial", "settings", "parameters", "updates", "minutes", "proxy valid ppl", "pruned"],
        [[r["number"], settings_text(r["settings"]), fmt(r["parameters"], ",d"), fmt(r["updates"], "d"),
          fmt(r["minutes"], ".1f"), fmt(r["valid_ppl"]), "pruned" if r["pruned"] else r["state"].lower()]
         for r in ordered])


# ------------------------------------------------------------------------------------------------ the two modes
def parse_enqueue(text: str, space: dict[str, list]) -> dict[str, Any]:
    """``NAME=VALUE,...`` (every setting of the space) as Optuna parameters, each checked against the space."""
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in space:
            raise ValueError(f"--enqueue: {item!r} is not NAME=VALUE with NAME one of {', '.join(space)}")
        choices = [*space[name], "tied"] if name == "embedding" else space[name]  # "tied": full softmax
        value = value.strip()
        if name in ("dropout", "embed_dropout", "weight_decay", "lr"):
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"--enqueue: {name}={value!r} is not a number") from None
            if not choices[0] <= number <= choices[1]:
                raise ValueError(f"--enqueue: {name}={value} is outside the space's range {choices}")
            if name in DROPOUT_STEPPED and abs(number / DROPOUT_STEP - round(number / DROPOUT_STEP)) > 1e-9:
                raise ValueError(f"--enqueue: {name}={value} is not a multiple of {DROPOUT_STEP} (the space's step)")
            settings[name] = number
            continue
        match = [c for c in choices if str(c).lower() == value.lower()]
        if not match:
            raise ValueError(f"--enqueue: {name}={value!r} is not one of {choices}")
        settings[name] = match[0]
    missing = [name for name in space if name not in settings]
    if missing:
        raise ValueError(f"--enqueue: {text!r} lacks {', '.join(missing)}")
    return settings


def enqueue_params(settings: dict[str, Any], cutoffs: list[int], space: dict[str, list]) -> dict[str, Any]:
    """Settings as the parameters suggest() draws: without cutoffs the embedding is ``embedding_full``."""
    embedding = settings["embedding"]
    allowed = space["embedding"] if cutoffs else ["table", "tied"]
    if embedding not in allowed:
        sys.exit(f"search_quality: --enqueue embedding={embedding} does not apply "
                 f"{'with' if cutoffs else 'without'} adaptive-softmax cutoffs (one of {', '.join(allowed)})")
    params = dict(settings)
    if not cutoffs:
        params["embedding_full"] = params.pop("embedding")
    return params


def run_search(args: argparse.Namespace, head: dict[str, Any]) -> Path:
    from gcnn.data import PreparedData
    from gcnn.errors import GcnnError

    cutoffs = base_cutoffs(args.base, PreparedData.open(args.data).vocab_size)
    study = open_study(args, create=True)
    if not args.report:
        for settings in args.enqueue:  # reference points first, e.g. the current hour recipe's settings
            study.enqueue_trial(enqueue_params(settings, cutoffs, SPACES[args.space]), skip_if_exists=True)
        study.optimize(objective_for(args, cutoffs), n_trials=args.trials, catch=(GcnnError,))
    return report_search(study, args, head)


def report_search(study: Any, args: argparse.Namespace, head: dict[str, Any]) -> Path:
    rows = trial_rows(study)
    pruned = sum(r["pruned"] for r in rows)
    budget = f"{args.proxy_minutes:g} minutes" if args.proxy_minutes else f"{args.proxy_updates} updates"
    notes = [
        f"{len(rows)} trials from `{_rel(args.base)}`, each a proxy run of {budget} with {args.threads} torch "
        f"thread{'s' if args.threads != 1 else ''}, validated every {args.valid_every} updates; {pruned} pruned by "
        f"the {args.pruner} pruner on their validation perplexity (Optuna's TPE sampler, seed {args.seed}). Only the "
        "validation split was read; 'proxy valid ppl' is a trial's best validation perplexity (for a pruned trial, "
        "when it was stopped).",
    ]
    best = best_finished(rows, 1)
    if best:
        notes.append(f"Best finished trial: {best[0]['number']} ({settings_text(best[0]['settings'])}), proxy valid "
                     f"ppl {fmt(best[0]['valid_ppl'])}.")
    corpus = "WikiText-2" if args.space == "wikitext2" else Path(args.data).name
    result = dict(head, title=f"Hyper-parameter search on {corpus}: every trial", trials=rows,
                  table_markdown=search_table(rows), notes=notes, proxy_minutes=args.proxy_minutes,
                  proxy_updates=args.proxy_updates, pruner=args.pruner, space=SPACES[args.space])
    figure = search_plot(study, rows)
    return common.write_report("quality-search", result, figure, args.out_dir)


def search_plot(study: Any, rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in study.get_trials(deepcopy=False):
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            style = ":" if t.state.name == "PRUNED" else "-"
            ax.plot(steps, [t.intermediate_values[s] for s in steps], style, marker="o", markersize=2, linewidth=1)
    finite = [v for t in study.get_trials(deepcopy=False) for v in t.intermediate_values.values() if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.95, min(max(finite), min(finite) * 3))
    ax.set_xlabel("update")
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"{len(rows)} trials (dotted: pruned)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_final(args: argparse.Namespace, head: dict[str, Any]) -> Path:
    from gcnn.data import PreparedData
    from gcnn.train import train

    study = open_study(args, create=False)
    chosen = best_finished(trial_rows(study), args.final)
    if not chosen:
        sys.exit("search_quality: the study has no finished trial to take to the full budget")
    cutoffs = base_cutoffs(args.base, PreparedData.open(args.data).vocab_size)
    finals = []
    for row in chosen:
        settings = _settings(row)
        run = args.runs / f"final-{row['number']:03d}"
        if not _finished(run) or args.force:
            if run.exists():
                shutil.rmtree(run)
            config = build_run_config(args, settings, cutoffs, run, minutes=args.final_minutes, updates=0,
                                      threads=args.threads)
            config.valid_every = args.final_valid_every
            print(f"[final {row['number']}] {settings_text(settings)}: {args.final_minutes:g} minutes", file=sys.stderr)
            train(config, quiet=True)
        finals.append(summarize_final(run, row, args))
    best = min(finals, key=lambda f: f["best_valid_ppl"] if f["best_valid_ppl"] is not None else math.inf)
    path = write_recipe(args, _settings(next(r for r in chosen if r["number"] == best["trial"])), cutoffs,
                        args.runs / "best-recipe.toml", trial=best["trial"])
    print(f"search_quality: the best final run by validation is trial {best['trial']}: {path}", file=sys.stderr)
    return report_final(finals, args, head)


def toml_value(value: Any) -> str:
    """A TOML value for the plain data of a recipe (strings, booleans, numbers, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def write_recipe(args: argparse.Namespace, settings: dict[str, Any], cutoffs: list[int], path: Path, *,
                 trial: int) -> Path:
    """The base recipe's [train] table with the trial's settings, and the trial's whole [model] table."""
    from gcnn.train import load_recipe

    base = load_recipe(args.base)
    train_table = dict(base["train"])
    from gcnn.train.config import parse_set

    for item in [*args.set, *train_sets(settings)]:
        _, key, value = parse_set(item)
        train_table[key] = value
    train_table["valid_every"] = args.final_valid_every
    train_table["max_minutes"] = args.final_minutes
    lines = [f"# Trial {trial} of the search in {_rel(args.runs)} (benchmarks/search_quality.py), chosen among the "
             "final runs by validation perplexity.", f"# Base recipe: {_rel(args.base)}.", "", "[model]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in model_table(settings, cutoffs).items()]
    lines += ["", "[train]"] + [f"{k} = {toml_value(v)}" for k, v in train_table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    return dict(row["settings"])


def _finished(run: Path) -> bool:
    try:
        return json.loads((run / "run.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def test_once(run: Path, data: Path) -> dict[str, Any]:
    """The test split's perplexity of a final run's best model, read once: cached in the run folder."""
    cached = run / "test_eval.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    import gcnn
    from gcnn.evaluate import evaluate_split

    model = gcnn.load(run)
    result = evaluate_split(model, data, "test")
    record = result.to_dict()
    cached.write_text(json.dumps(record, indent=2) + "\n")
    return record


def summarize_final(run: Path, row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    info = json.loads((run / "run.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "trial": row["number"], "settings": row["settings"], "proxy_valid_ppl": row["valid_ppl"], "run": str(run),
        "parameters": info["parameters"], "updates": info["updates"], "epochs": round(info["epochs"], 2),
        "tokens_per_s": info["tokens_per_s"], "best_valid_ppl": info["best_valid_ppl"],
        "stop_reason": info["stop_reason"], "test": test_once(run, args.data),
        "valid_curve_minutes_ppl": [(r["time"] / 60, r["ppl"]) for r in records if r.get("kind") == "valid"],
    }


def report_final(finals: list[dict[str, Any]], args: argparse.Namespace, head: dict[str, Any]) -> Path:
    rows = [[f["trial"], settings_text(f["settings"]), f"{f['parameters']:,}", fmt(f["proxy_valid_ppl"]),
             f"{f['epochs']:.2f}", fmt(f["best_valid_ppl"]), fmt(f["test"]["perplexity"]), f["stop_reason"]]
            for f in finals]
    table = common.markdown_table(["trial", "settings", "parameters", "proxy valid ppl", "epochs", "valid ppl",
                                   "test ppl", "stopped by"], rows)
    notes = [f"The {len(finals)} best finished trials of the search, each trained again from scratch for "
             f"{args.final_minutes:g} minutes of wall-clock with {args.threads} torch threads, one run at a time; "
             "the test split was read once per recipe, after its run (stream mode, the best checkpoint by "
             "validation)."]
    from bench_quality import curve_plot

    figure = curve_plot(f"Final runs, {args.final_minutes:g} minutes", [
        (f"trial {f['trial']}", f["valid_curve_minutes_ppl"]) for f in finals])
    result = dict(head, title=f"The search's best recipes at the full budget ({args.final_minutes:g} minutes)",
                  finals=finals, table_markdown=table, notes=notes, final_minutes=args.final_minutes)
    return common.write_report("quality-search-final", result, figure, args.out_dir)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(common.REPO))
    except ValueError:
        return str(path)


def prepare_data(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    data = common.REPO / "runs" / "quality" / "wikitext-2"  # shared with bench_quality.py
    if not (data / "manifest.json").is_file():
        if not args.corpus.is_dir():
            sys.exit(f"search_quality: WikiText-2 not found at {args.corpus} (give --corpus or --data)")
        from gcnn.data import find_corpus, prepare

        prepare(find_corpus(args.corpus), data)
    return data


# ------------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="a prepared-data folder (default: WikiText-2, "
                        "prepared into runs/quality/wikitext-2 from --corpus)")
    parser.add_argument("--corpus", type=Path, default=common.WIKITEXT2)
    parser.add_argument("--base", type=Path, default=BASE, help="the base recipe (default: configs/wikitext2-cpu.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="train keys for every run, on top of the base recipe (repeatable)")
    parser.add_argument("--space", choices=list(SPACES), default="wikitext2")
    parser.add_argument("--trials", type=int, default=40, help="trials to add to the study (default: 40)")
    parser.add_argument("--proxy-minutes", type=float, default=8.0, help="wall-clock budget of a trial (default: 8)")
    parser.add_argument("--proxy-updates", type=int, default=0, help="an update budget instead of --proxy-minutes")
    parser.add_argument("--valid-every", type=int, default=250, help="updates between a trial's validations, where "
                        "the pruner decides (default: 250)")
    parser.add_argument("--enqueue", action="append", default=[], metavar="NAME=VALUE,...",
                        help="a trial to run first with these settings (every setting of the space; repeatable), "
                        "e.g. the base recipe's own, as a reference point in the table")
    parser.add_argument("--pruner", choices=("hyperband", "halving", "none"), default="hyperband")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--study", default="wikitext2-gcnn", help="the study's name in RUNS/study.sqlite3")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where the study and run folders go (runs/search)")
    parser.add_argument("--final", type=int, default=0, metavar="N", help="train the N best trials at the full budget")
    parser.add_argument("--final-minutes", type=float, default=60.0)
    parser.add_argument("--final-valid-every", type=int, default=500)
    parser.add_argument("--force", action="store_true", help="--final: retrain final runs that have finished")
    parser.add_argument("--report", action="store_true", help="only write the search report from the study")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if args.proxy_updates:
        args.proxy_minutes = 0.0
    common.check_positive(parser, args, "trials", "threads", "valid_every")
    try:
        args.enqueue = [parse_enqueue(text, SPACES[args.space]) for text in args.enqueue]
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        sys.exit("search_quality: needs Optuna: pip install -e '.[bench]'")
    head = common.start(argparse.Namespace(threads=None, note=args.note, smoke=args.space == "tiny"))
    args.data = prepare_data(args)
    if args.final:
        return run_final(args, head)
    return run_search(args, head)


if __name__ == "__main__":
    main()
