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
