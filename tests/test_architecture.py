"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml pass on the package, and fail
on a copy of it with a forbidden import or an import cycle written in (so the check itself is proven to work)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path, source: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(source))
    return subprocess.run([LINT, "--no-cache", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def copy_of_the_package(tmp_path):
    if not Path(LINT).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    shutil.copytree(REPO / "src" / "gcnn", tmp_path / "src" / "gcnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layer_contracts_hold():
    done = lint(REPO, REPO / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("model.py", "import gcnn.evaluate  # noqa", "The model is the maths"),
        ("softmax.py", "from gcnn import io  # noqa", "Layers"),
        ("data/batching.py", "import gcnn.model  # noqa", "Data knows nothing of models"),
        ("data/text.py", "import gcnn.data.corpus  # noqa", "No import cycles"),
    ],
)
def test_a_broken_layer_is_caught(copy_of_the_package, module, line, broken):
    append(copy_of_the_package / "src" / "gcnn" / module, line)
    done = lint(copy_of_the_package, copy_of_the_package / "src")
    assert done.returncode != 0
    assert broken in done.stdout and "BROKEN" in done.stdout, done.stdout
