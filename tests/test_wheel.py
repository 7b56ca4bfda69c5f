"""Installed from a wheel (not editable), gcnn finds everything it reads: the shipped recipes come as package data,
so `gcnn demo` and `gcnn train --config NAME` work outside the repository."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args, **kw):
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def test_the_wheel_installs_and_runs_the_demo_outside_the_repository(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(REPO)])
    wheel = next((tmp_path / "dist").glob("gcnn-*.whl"))
    import zipfile

    assert "gcnn/serve/static/index.html" in zipfile.ZipFile(wheel).namelist()  # gcnn serve's page is package data
    names = zipfile.ZipFile(wheel).namelist()  # the lm-eval tasks travel with the package (docs/evaluation.md)
    assert {"gcnn/lmeval_tasks/gcnn_wikitext.yaml", "gcnn/lmeval_tasks/gcnn_choice.yaml",
            "gcnn/lmeval_tasks/gcnn_choice.jsonl", "gcnn/lmeval_tasks/gcnn_tasks.py"} <= set(names)
    # a fresh venv that sees this environment's packages (torch, numpy, ...) but gets gcnn only from the wheel
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    python, gcnn = venv / "bin" / "python", venv / "bin" / "gcnn"
    if sys.prefix != sys.base_prefix:  # run from a venv: --system-site-packages does not see its packages; a .pth
        import site                    # adds them after the new venv's own (their .pth files, gcnn's editable
                                       # install among them, are not processed: gcnn still comes from the wheel)
        target = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        Path(target, "outer-venv.pth").write_text("".join(f"{d}\n" for d in site.getsitepackages()))
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    work = tmp_path / "elsewhere"  # not the repository: no configs/ folder, no src/
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([str(python), "-c", "import gcnn, gcnn.train.config as c; print(gcnn.__file__); print(c.recipes())"],
                cwd=work, env=env).stdout.splitlines()
    assert str(venv) in where[0] and "shakespeare-cpu" in where[1]

    words = [f"w{i}" for i in range(40)]
    for split, lines in (("train", 600), ("valid", 30), ("test", 30)):
        (work / f"{split}.txt").write_text("".join(" ".join(words[(i + j) % 40] for j in range(9)) + "\n"
                                                   for i in range(lines)))
    run([str(gcnn), "prepare", "--train", "train.txt", "--valid", "valid.txt", "--test", "test.txt", "--out", "data",
         "--quiet"], cwd=work, env=env)
    done = run([str(gcnn), "demo", "--data", "data", "--out", "run", "--minutes", "0.5", "--max-updates", "3",
                "--samples", "1", "--sample-tokens", "5"], cwd=work, env=env)
    assert "[2/4] training with" in done.stdout and "shakespeare-cpu.toml" in done.stdout
    assert "test perplexity" in done.stdout and (work / "run" / "run.json").is_file()
    run([str(gcnn), "train", "--data", "data", "--config", "shakespeare-cpu", "--out", "run2", "--max-updates", "1",
         "--quiet"], cwd=work, env=env)
