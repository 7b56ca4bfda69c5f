"""benchmarks/search_quality.py on a tiny corpus: the search runs its trials, prunes some, writes a table of every
trial; --final trains the best at the full budget and reads the test split once per recipe."""

import json
import sys
from pathlib import Path

import pytest

from test_train import prepared  # noqa: F401  (the tiny prepared corpus)

optuna = pytest.importorskip("optuna")  # CI installs it (.ci/run: the bench extra)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def sq():
    sys.path.insert(0, str(BENCHMARKS))
    import search_quality

    yield search_quality
    sys.path.remove(str(BENCHMARKS))


class FixedTrial:
    """Enough of optuna.Trial for suggest(): the first choice, or the low end of a range."""

    def __init__(self, **fixed):
        self.fixed = fixed

    def suggest_categorical(self, name, choices):
        return self.fixed.get(name, choices[0])

    def suggest_float(self, name, low, high, **kw):
        return self.fixed.get(name, low)


@pytest.mark.parametrize("embedding,cutoffs", [("table", [20]), ("adaptive-input-tied", [20]), ("tied", [])])
def test_every_setting_builds_a_valid_model(sq, embedding, cutoffs):
    from gcnn.architectures import config_from_table

    name = "embedding" if cutoffs else "embedding_full"
    for bottleneck in (False, True):
        settings = sq.suggest(FixedTrial(**{name: embedding, "bottleneck": bottleneck, "dilation": 2, "depth": 3}),
                              sq.SPACES["wikitext2"], cutoffs)
        config = config_from_table(sq.model_table(settings, cutoffs), 64)
        assert config.tie_embeddings == (embedding != "table") and config.adaptive_input == embedding.startswith("adaptive")
        assert len(config.blocks) == 4 and [b.dilation for b in config.blocks] == [1, 1, 2, 1]
        assert len(config.blocks[1].layers) == (3 if bottleneck else 1)
        assert "lr=0.001" in sq.train_sets(settings)


def test_search_prunes_and_reports_every_trial_then_final_reads_test_once(sq, prepared, tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "out"
    common = ["--data", str(prepared), "--base", "configs/shakespeare-cpu.toml", "--space", "tiny", "--runs",
              str(runs), "--out-dir", str(out), "--set", "batch_size=8", "--set", "context=16", "--set",
              "warmup_updates=0", "--set", "log_every=1", "--valid-every", "1"]
    report = sq.main([*common, "--trials", "6", "--proxy-updates", "6", "--pruner", "halving", "--seed", "3"])
    result = json.loads(Path(report).read_text())
    rows = result["trials"]
    assert len(rows) == 6 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert any(r["pruned"] for r in rows) and any(r["state"] == "COMPLETE" for r in rows)
    for r in rows:  # a pruned trial stopped before the budget; a finished one reached it
        assert (r["updates"] < 6) if r["pruned"] else (r["updates"] == 6), r
        assert r["valid_ppl"] > 1 and set(r["settings"]) >= {"width", "depth", "kernel", "lr", "embedding"}
        assert not (Path(r["run"]) / "test_eval.json").exists()  # the search reads no test data
    table = result["table_markdown"].splitlines()
    assert len(table) == 2 + 6 and "proxy valid ppl" in table[0] and sum("pruned" in line for line in table[2:]) == \
        sum(r["pruned"] for r in rows)
    assert (out / Path(report).name.replace(".json", ".md")).is_file()

    # the study persists: a second invocation adds trials to it
    report = sq.main([*common, "--trials", "1", "--proxy-updates", "6", "--pruner", "halving"])
    assert len(json.loads(Path(report).read_text())["trials"]) == 7

    # --final: the 2 best finished trials at a longer budget, the test split read once each
    import gcnn.evaluate

    calls = []
    original = gcnn.evaluate.evaluate_split
    monkeypatch.setattr(gcnn.evaluate, "evaluate_split", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    final_args = [*common, "--final", "2", "--final-minutes", "0.05", "--final-valid-every", "3"]
    final = json.loads(Path(sq.main(final_args)).read_text())
    finished = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["valid_ppl"])
    assert [f["trial"] for f in final["finals"]] == [r["number"] for r in finished[:2]]
    assert calls == ["test"] * len(final["finals"])
    for f in final["finals"]:
        assert f["stop_reason"] == "max_minutes" and f["test"]["perplexity"] > 1
    from gcnn.train import build_config, resolve_model_config

    best = min(final["finals"], key=lambda f: f["best_valid_ppl"])  # chosen by validation, not test
    recipe = runs / "best-recipe.toml"
    assert f"Trial {best['trial']} " in recipe.read_text()
    config = build_config(recipe=recipe, flags={"data": str(prepared), "out": str(tmp_path / "o")})
    model = resolve_model_config(config.model, 64)
    assert config.lr == best["settings"]["lr"] and config.max_minutes == 0.05 and config.valid_every == 3
    assert model.embed_dim == best["settings"]["embed_dim"] and len(model.blocks) == 1 + best["settings"]["depth"]
    sq.main(final_args)  # finished runs are reused and their test result is cached: the test split is not read again
    assert calls == ["test"] * len(final["finals"])


def test_enqueue_runs_the_given_settings_first_and_rejects_bad_ones(sq, prepared, tmp_path):
    text = ("width=16,depth=2,kernel=3,dilation=2,bottleneck=true,embed_dim=8,embedding=tied,"
            "dropout=0.1,embed_dropout=0.05,weight_decay=0.01,lr=0.005")
    settings = sq.parse_enqueue(text, sq.SPACES["tiny"])
    assert settings["bottleneck"] is True and settings["width"] == 16 and settings["lr"] == 0.005
    for bad, says in [(text.replace("width=16", "width=17"), "width='17' is not one of"),
                      (text.replace("lr=0.005", "lr=0.5"), "outside the space's range"),
                      (text.replace(",lr=0.005", ""), "lacks lr"),
                      (text.replace("dropout=0.1,", "dropout=0.12,"), "not a multiple of 0.05"),
                      (text + ",colour=red", "'colour=red' is not NAME=VALUE")]:
        with pytest.raises(ValueError, match=says):
            sq.parse_enqueue(bad, sq.SPACES["tiny"])
    with pytest.raises(SystemExit):  # the command line says which setting is at fault and exits non-zero
        sq.parse_args(["--space", "tiny", "--enqueue", text.replace("kernel=3", "kernel=9")])
    report = sq.main(["--data", str(prepared), "--base", "configs/shakespeare-cpu.toml", "--space", "tiny",
                      "--runs", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--set", "batch_size=8",
                      "--set", "context=16", "--set", "warmup_updates=0", "--valid-every", "2", "--trials", "2",
                      "--proxy-updates", "2", "--pruner", "none", "--enqueue", text])
    rows = json.loads(Path(report).read_text())["trials"]
    assert len(rows) == 2 and rows[0]["number"] == 0
    assert rows[0]["settings"] == settings and rows[1]["settings"] != settings


def test_enqueue_embedding_must_fit_the_softmax(sq):
    settings = {"embedding": "adaptive-input-tied", "width": 16}
    space = sq.SPACES["wikitext2"]
    assert sq.enqueue_params(settings, [20], space) == settings
    assert sq.enqueue_params({"embedding": "tied"}, [], space) == {"embedding_full": "tied"}
    with pytest.raises(SystemExit, match="does not apply without adaptive-softmax cutoffs"):
        sq.enqueue_params(settings, [], space)
    with pytest.raises(SystemExit, match="does not apply with adaptive-softmax cutoffs"):
        sq.enqueue_params({"embedding": "tied"}, [20], space)
