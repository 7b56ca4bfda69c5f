"""benchmarks/bench_quality.py: every run it would start is a valid recipe, and its reports rank and plot what the
run folders hold. (The hour-long runs themselves are benchmarks, not tests; see docs/benchmarks.md.)"""

import argparse
import json
import math
import sys
from pathlib import Path

import pytest

from gcnn.train import build_config, resolve_model_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bq():
    sys.path.insert(0, str(BENCHMARKS))
    import bench_quality

    yield bench_quality
    sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("base_name", ["paper", "adamw"])
def test_every_job_is_a_valid_run_and_changes_what_it_says(bq, base_name):
    base = build_config(recipe=bq.ABLATION_BASES[base_name], flags={"data": "d", "out": "o"})
    base_model = resolve_model_config(base.model, 33278)
    assert (base.optimizer, base.lr) == (("nesterov", 1.0) if base_name == "paper" else ("adamw", 5e-3))
    jobs = bq.recipe_jobs() + bq.ablation_jobs(list(bq.ABLATIONS), base_name)
    assert len({j.name for j in jobs}) == len(jobs)
    for job in jobs:
        config = build_config(recipe=job.recipe, sets=job.sets, flags={"data": "d", "out": "o"})
        model = resolve_model_config(config.model, 33278)
        assert config.schedule == "cosine", job.name
        if job.recipe == bq.ABLATION_BASES[base_name]:  # an update budget: the same tokens for every variant
            assert config.max_updates > 0, job.name
        else:  # the recipe comparison: an hour of wall-clock, the cosine decaying over it
            assert config.max_minutes == 60 and config.max_updates == 0 and config.max_epochs == 0, job.name
        if job.recipe == bq.ABLATION_BASES[base_name]:  # one change from the base, and the same tokens per update
            assert config.batch_size * config.context == base.batch_size * base.context, job.name
            changed = {k for k, v in vars(model).items() if getattr(base_model, k) != v}
            changed |= {k for k, v in config.to_dict().items() if k not in ("model",) and getattr(base, k) != v}
            expected = {s.split("=")[0].removeprefix("model.") for s in job.sets}
            if job.name.startswith("context-"):
                expected = {"context", "batch_size"}
            assert changed == expected, (job.name, changed)
            if job.group == "placement":  # blocks of two convolutions, where gating per layer or per block differ
                assert all(len(b.layers) == 2 for b in model.blocks[1:]) and model.gate_placement == (
                    "block" if "block-gate" in job.name else "layer")
    gates = {resolve_model_config(build_config(recipe=j.recipe, sets=j.sets, flags={"data": "d", "out": "o"}).model,
                                  33278).gate for j in bq.ablation_jobs(["gates", "linear"])}
    assert gates == {"glu", "gtu", "relu", "tanh", "bilinear", "linear"}


def fake_run(folder: Path, curve: list[tuple[float, float]], params: int = 1000) -> None:
    folder.mkdir(parents=True)
    folder.joinpath("run.json").write_text(json.dumps({
        "status": "finished", "model_config": {"arch": "gcnn-small"}, "parameters": params, "updates": 10,
        "epochs": 0.5, "tokens": 40960, "tokens_per_s": 1234.5, "best_valid_ppl": min(p for _, p in curve),
        "train_config": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 32, "context": 128, "clip_norm": 1.0,
                         "precision": "bf16", "max_minutes": 1.0},
    }))
    lines = [{"kind": "valid", "update": i, "time": 60 * t, "ppl": p, "loss": math.log(p)}
             for i, (t, p) in enumerate(curve)]
    folder.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_reports_rank_the_runs_and_draw_the_curves(bq, tmp_path):
    runs = tmp_path / "runs"
    for name, final in (("glu", 200.0), ("gtu", 260.0), ("relu", 230.0), ("tanh", 400.0)):
        fake_run(runs / "ablations" / name, [(1.0, 900.0), (2.0, final)])
    args = argparse.Namespace(runs=runs, kind="ablations", kind_dir="ablations", base="paper", report=True, force=False, minutes=20.0, updates=300, threads=1, jobs=1,
                              out_dir=tmp_path / "out")
    jobs = bq.ablation_jobs(["gates"])
    results = bq.run_all(jobs, runs / "wikitext-2", args, test=False)
    assert set(results) == {"glu", "gtu", "relu", "tanh"}
    assert [list(p) for p in results["glu"]["valid_curve_minutes_ppl"]] == [[1.0, 900.0], [2.0, 200.0]]
    head = {"date": "d", "machine": {"logical_cores": 2, "cpu": "c", "torch": "t", "torch_threads": 1,
                                     "commit": "0" * 40, "load_average_1m_at_start": 0.0}, "command": "c"}
    bq.report_ablations(results, ["gates"], head, args)
    report = json.loads(next((tmp_path / "out").glob("*-quality-ablations.json")).read_text())
    rows = {line.split(" | ")[1]: line for line in report["table_markdown"].splitlines()[2:]}
    assert " | 200.0 | 1 | 0.50 | 2.0 | " in rows["GLU"] and " | 400.0 | 4 | " in rows["Tanh"] and "67.2" in rows["Tanh"]
    assert "the ranking agrees with the paper's (GLU < ReLU < GTU < Tanh" in " ".join(report["notes"])
    assert next((tmp_path / "out").glob("*-quality-ablations.png")).read_bytes()[:4] == b"\x89PNG"

    swapped = dict(results, gtu=dict(results["gtu"], best_valid_ppl=220.0))
    verdict = bq.ranking_verdict("Gates", [(n, n, p) for n, _, _, p in bq.ABLATIONS["gates"][1]], swapped)
    assert "differs" in verdict and "pairs in the other order: gtu / relu" in verdict

    # a run that diverged (gcnn train stopped on non-finite losses) is a result: ranked last, said so
    fake_run(runs / "ablations" / "no-clipping", [(0.1, 5000.0)])
    (runs / "ablations" / "no-clipping" / bq.DIVERGED).write_text(json.dumps(
        {"message": "gcnn train: error: 5 updates in a row had a non-finite loss or gradient (update 9, loss nan"}))
    regular = bq.run_all(bq.ablation_jobs(["regularization"]), runs / "wikitext-2", args, test=False)
    assert regular["no-clipping"]["best_valid_ppl"] is None and regular["no-clipping"]["diverged"]
    bq.report_ablations(dict(results, **regular), ["regularization"], head, args)
    report = json.loads(next((tmp_path / "out").glob("*-quality-ablations.json")).read_text())
    clip_row = next(line for line in report["table_markdown"].splitlines() if "without clipping" in line)
    assert "| diverged at update 9 | 2 |" in clip_row  # glu is 1st, no-weight-norm has no run

    # the recipe report: test perplexities come from each run's cached `gcnn eval` result
    for name, ppl in (("gcnn", 120.0), ("lstm", 150.0)):
        fake_run(runs / "recipe" / name, [(30.0, ppl + 10), (60.0, ppl)])
        (runs / "recipe" / name / "test_eval.json").write_text(json.dumps({"perplexity": ppl - 5}))
    args.kind = args.kind_dir = "recipe"
    args.minutes = 60.0
    results = bq.run_all(bq.recipe_jobs(), runs / "wikitext-2", args, test=True)
    assert set(results) == {"gcnn", "lstm"} and results["gcnn"]["test"]["perplexity"] == 115.0
    bq.report_recipe(results, bq.recipe_jobs(), head, args)
    report = json.loads(next((tmp_path / "out").glob("*-quality-recipe.json")).read_text())
    assert "| 115.0 |" in report["table_markdown"] and "does not reach the target of test perplexity 100: 115.0" in \
        " ".join(report["notes"])
    assert "one run at a time" in report["notes"][0]  # --jobs 1: each run had the machine

    # --earlier: a model not trained in this run stands in from an earlier report, marked as such, dashed
    earlier = tmp_path / "2026-01-01-quality-recipe.json"
    transformer = dict(results["lstm"], arch="transformer-small", test={"perplexity": 141.2})
    earlier.write_text(json.dumps({"benchmark": "quality-recipe", "date": "2026-01-01 10:00 UTC", "threads": 1,
                                   "jobs": 2, "machine": {"cpu": "Old CPU"},
                                   "runs": {"transformer": transformer, "gcnn": dict(results["gcnn"], test={})}}))
    args.earlier = [earlier]
    bq.report_recipe(results, bq.recipe_jobs(), head, args)
    report = json.loads(next((tmp_path / "out").glob("*-quality-recipe.json")).read_text())
    rows = report["table_markdown"].splitlines()[2:]
    assert len(rows) == 3 and "[earlier: 2026-01-01, 1 thread, side by side with another run]" in rows[2]
    assert "| 141.2 |" in rows[2] and "earlier" not in rows[0]  # this run's GCNN is not replaced by the earlier one
    assert any(n.startswith("Transformer: not trained in this run") and "Old CPU" in n
               and "a different amount of compute" in n for n in report["notes"])
    # the same machine, threads and runs at a time: said so, not called a different budget
    same = tmp_path / "2026-01-02-quality-recipe.json"
    same.write_text(json.dumps({"benchmark": "quality-recipe", "date": "2026-01-02 10:00 UTC", "threads": 1,
                                "jobs": 1, "machine": {"cpu": "c"}, "runs": {"transformer": transformer}}))
    args.earlier = [earlier, same]  # the newer report wins
    bq.report_recipe(results, bq.recipe_jobs(), head, args)
    report = json.loads(next((tmp_path / "out").glob("*-quality-recipe.json")).read_text())
    assert "[earlier: 2026-01-02, 1 thread, one run at a time]" in report["table_markdown"].splitlines()[-1]
    assert any(n.startswith("Transformer: not trained") and "the same machine and protocol" in n
               for n in report["notes"])
    # a newer report whose transformer row was itself a stand-in does not pass for the report that trained it
    relay = tmp_path / "2026-01-03-quality-recipe.json"
    relay.write_text(json.dumps({"benchmark": "quality-recipe", "date": "2026-01-03 10:00 UTC", "threads": 2,
                                 "jobs": 1, "machine": {"cpu": "c"},
                                 "runs": {"transformer": dict(transformer, earlier={"how": "x"})}}))
    args.earlier = [earlier, same, relay]
    bq.report_recipe(results, bq.recipe_jobs(), head, args)
    report = json.loads(next((tmp_path / "out").glob("*-quality-recipe.json")).read_text())
    assert "[earlier: 2026-01-02, 1 thread, one run at a time]" in report["table_markdown"].splitlines()[-1]
    (tmp_path / "bad.json").write_text("{}")
    args.earlier = [tmp_path / "bad.json"]
    with pytest.raises(SystemExit, match="bad.json: not a quality-recipe report"):
        bq.report_recipe(results, bq.recipe_jobs(), head, args)


def test_seed_aggregation_and_pair_verdicts(bq):
    agg = bq.aggregate([100.0, 102.0, 104.0])
    assert agg["n"] == 3 and agg["mean"] == 102.0 and agg["sd"] == 2.0 and (agg["min"], agg["max"]) == (100.0, 104.0)
    assert bq.aggregate([100.0])["sd"] == 0.0
    diverged = bq.aggregate([100.0, None, 104.0])
    assert diverged["mean"] is None and diverged["diverged"] == 1
    far, near = bq.aggregate([110.0, 111.0, 112.0]), bq.aggregate([103.0, 104.0, 105.0])
    assert bq.separated(agg, far) is True  # 8 apart, spreads 2 + 1
    assert bq.separated(agg, near) is False  # 2 apart, spreads 2 + 1
    assert bq.separated(agg, bq.aggregate([200.0])) is None and bq.separated(agg, diverged) is None
    verdicts = bq.pair_verdicts("Gates", [("a", "GLU"), ("b", "ReLU"), ("c", "GTU"), ("d", "Tanh")],
                                {"a": agg, "b": far, "c": near, "d": diverged})
    assert len(verdicts) == 6
    assert verdicts[0] == "Gates: GLU 102.0 ± 2.0 vs ReLU 111.0 ± 1.0: GLU better by 9.0, larger than the seed spread."
    assert verdicts[1].endswith("GLU better by 2.0, within the seed spread: not settled.")
    assert verdicts[3].startswith("Gates: GTU 104.0 ± 1.0 vs ReLU 111.0 ± 1.0: GTU better by 7.0, larger")
    assert "Tanh diverged" in verdicts[2]
    # a run that blew up without diverging (a finite but astronomic perplexity) is written in powers of ten
    huge = bq.aggregate([6.4e203, 1.2e205])
    assert bq.fmt(huge["mean"]) == "6.32e+204" and bq.fmt(1234567.0) == "1,234,567.0"
    assert bq.pair_verdicts("G", [("a", "ReLU"), ("b", "x")], {"a": far, "b": huge}) == [
        "G: ReLU 111.0 ± 1.0 vs x 6.32e+204 ± 8.03e+204: ReLU better by 6.32e+204, within the seed spread: not settled."]


def test_seeded_ablations_report_means_spreads_and_error_bars(bq, tmp_path):
    jobs = bq.ablation_jobs(["gates"], "paper", seeds=3)
    assert [j.name for j in jobs[:3]] == ["glu", "glu-seed2", "glu-seed3"]
    assert jobs[1].sets == ["seed=2"] and jobs[1].variant == "glu" and jobs[4].sets == ["model.gate=gtu", "seed=2"]
    for job in jobs:  # each seed is a valid run of the base with its one change and its seed
        config = build_config(recipe=job.recipe, sets=job.sets, flags={"data": "d", "out": "o"})
        assert config.seed == job.seed
    runs = tmp_path / "runs"
    finals = {"glu": [200.0, 204.0, 202.0], "gtu": [240.0, 250.0, 245.0], "relu": [203.0, 199.0, 207.0],
              "tanh": [400.0, 380.0, 390.0]}
    for name, values in finals.items():
        for seed, final in enumerate(values, 1):
            fake_run(runs / "ablations" / bq.seed_run_name(name, seed), [(1.0, 900.0), (2.0, final)])
    args = argparse.Namespace(runs=runs, kind="ablations", kind_dir="ablations", base="paper", report=True,
                              force=False, minutes=20.0, updates=1500, threads=1, jobs=2, seeds=3,
                              out_dir=tmp_path / "out")
    results = bq.run_all(jobs, runs / "wikitext-2", args, test=False)
    assert len(results) == 12
    head = {"date": "d", "machine": {"logical_cores": 2, "cpu": "c", "torch": "t", "torch_threads": 1,
                                     "commit": "0" * 40, "load_average_1m_at_start": 0.0}, "command": "c"}
    bq.report_ablations(results, ["gates"], head, args)
    report = json.loads(next((tmp_path / "out").glob("*-quality-ablations-seeds.json")).read_text())
    rows = {line.split(" | ")[1]: line for line in report["table_markdown"].splitlines()[2:]}
    assert "(mean ± sd)" in report["table_markdown"].splitlines()[0]
    assert " | 202.0 ± 2.0 | 1 | " in rows["GLU"] and rows["GLU"].endswith("| 3: 200.0-204.0 |")
    assert " | 203.0 ± 4.0 | 2 | " in rows["ReLU"] and " | 390.0 ± 10.0 | 4 | " in rows["Tanh"]
    notes = " ".join(report["notes"])
    assert "GLU 202.0 ± 2.0 vs ReLU 203.0 ± 4.0: GLU better by 1.0, within the seed spread: not settled." in notes
    assert "GLU 202.0 ± 2.0 vs GTU 245.0 ± 5.0: GLU better by 43.0, larger than the seed spread." in notes
    assert "3 seeds per variant" in notes and "One seed per variant" not in notes
    assert report["runs"]["glu"]["seeds"]["values"] == [200.0, 204.0, 202.0]
    assert next((tmp_path / "out").glob("*-quality-ablations-seeds.png")).read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "out").glob("*-quality-ablations.json"))  # the single-seed report is left alone


def test_run_quality_hour_runs_the_three_runs_one_at_a_time_with_both_cores(bq, tmp_path):
    """The script's commands, through a stand-in Python that records them (the hour-long runs are not tests)."""
    import os
    import subprocess

    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    script = BENCHMARKS / "run_quality_hour.sh"
    env = dict(os.environ, PYTHON=str(fake), ALLOW_LOAD="1", OUT_DIR=str(tmp_path / "out"),
               GCNN_RECIPE="configs/wikitext2-cpu.toml")
    subprocess.run([str(script)], env=env, check=True, capture_output=True)
    calls = log.read_text().splitlines()
    assert len(calls) == 1  # make_docs only when the reports go to benchmarks/results
    assert calls[0].startswith("benchmarks/bench_quality.py recipe --jobs 1 --threads 2 --minutes 60 --gcnn-recipe "
                               "configs/wikitext2-cpu.toml --runs runs/quality-hour")
    bad = subprocess.run([str(script)], env=dict(env, GCNN_RECIPE=str(tmp_path / "none.toml")), capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "no recipe" in bad.stderr
    # the GCNN job takes the recipe given, and the report says the runs did not share the machine
    jobs = bq.recipe_jobs(tmp_path / "best-recipe.toml")
    assert jobs[0].recipe == tmp_path / "best-recipe.toml" and str(tmp_path) in jobs[0].label
    assert [j.name for j in jobs] == ["gcnn", "lstm", "transformer"]
