"""File-system helpers used everywhere a file or folder is written: atomic writes, fsync, checksums.

Every file gcnn writes appears complete or not at all: it is written to a hidden temporary name in the same folder,
flushed to disk, then renamed over its final name (:func:`atomic_write`, :func:`write_atomically`). Folders are
built the same way (:func:`staged_folder`). Temporary names carry the writer's process id
(``.NAME.tmp-PID-RANDOM``), so leftovers of a writer that was killed can be told from those of a live one
(:func:`remove_leftovers`). Files get the usual permissions (0666 minus the umask), not the 0600 of a bare
``mkstemp``, so teammates can read a shared run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from gcnn.errors import CheckpointError, GcnnError
from gcnn.layout import CHECKSUMS_FILE

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
_umask: int | None = None


def _file_mode() -> int:
    global _umask
    if _umask is None:
        _umask = os.umask(0)
        os.umask(_umask)
    return 0o666 & ~_umask


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` for writing it: ``.NAME.tmp-PID-RANDOM``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in folder ``path`` durable (a no-op where the platform cannot)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to write the file at a temporary path beside ``path``, then move it into place; on any
    failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8) so that a reader sees the old content or the new one, never a part."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return write_atomically(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a new hidden folder beside ``final`` to fill; on success every file in it is synced and the folder is
    renamed to ``final``; on failure it is removed and ``final`` is left as it was. ``final`` must not exist or be an
    empty folder, unless ``replace`` (the caller has checked that what is there may go): then the old folder is
    moved aside, the new one moved in, and the old one deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                os.chmod(child, _file_mode())
                _fsync_file(child)
        fsync_dir(tmp)
        old = None
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        elif final.exists() and replace:
            old = temporary_name(final)
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def remove_folder(folder: Path) -> None:
    """Delete a folder so that a half-deleted one never looks complete: rename it out of the way first."""
    trash = temporary_name(folder)
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(folder: str | os.PathLike, *, all_writers: bool = False) -> list[Path]:
    """Remove the temporary files and folders (``.NAME.tmp-PID-*``) in ``folder`` whose writer is no longer running
    on this machine (or all of them, with ``all_writers``, for a caller that holds the folder's lock). Returns what
    was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP.match(entry.name)
        if match is None or (not all_writers and _alive(int(match["pid"]))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def is_leftover(entry: Path) -> bool:
    """Whether ``entry`` is a temporary file or folder of a gcnn writer (live or not)."""
    return _TMP.match(entry.name) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


# ------------------------------------------------------------------------------------------------ one writer
class InUseError(GcnnError):
    """Another live process is writing the same destination."""


def lock_path(destination: str | os.PathLike) -> Path:
    """The lock file of a destination folder: ``.NAME.lock`` beside it (so that the folder itself can be created,
    replaced or renamed while the lock is held)."""
    destination = Path(destination)
    return destination.parent / f".{destination.name}.lock"


@contextlib.contextmanager
def exclusive(destination: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the one writer's lock on ``destination`` for the duration, or raise :class:`InUseError` naming the live
    process that holds it. The lock is the OS's (``flock``): the kernel releases it when its holder dies, so a kill -9
    leaves no stale lock. ``what`` (e.g. ``"gcnn train"``) is recorded for the error message of a second writer."""
    path = lock_path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise InUseError(f"{destination} is being written by {holder}; wait for it to finish (or stop it)") from None
        try:  # a releasing holder may have unlinked the file between our open and our lock: then start again
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')})".encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: the next writer's inode check sees it
        os.close(fd)


# ------------------------------------------------------------------------------------------------ checksums
def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | os.PathLike, names: Iterable[str] | None = None) -> Path:
    """(Re)write ``folder/SHA256SUMS`` in ``sha256sum`` format for ``names`` (default: every visible file)."""
    folder = Path(folder)
    if names is None:
        names = (p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE and not p.name.startswith("."))
    text = "".join(f"{sha256_file(folder / name)}  {name}\n" for name in sorted(names))
    return atomic_write(folder / CHECKSUMS_FILE, text)


def read_checksums(folder: str | os.PathLike) -> dict[str, str] | None:
    """``{file name: sha256}`` from ``folder/SHA256SUMS``, or None where there is none. Every entry must be the plain
    name of a file in that folder (no path, no ``..``): anything else is refused."""
    path = Path(folder) / CHECKSUMS_FILE
    if not path.is_file():
        return None
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        name = name[1:] if name.startswith("*") else name
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise CheckpointError(f"{path}, line {number}: damaged (expected '<sha256>  <file name>')")
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise CheckpointError(f"{path}, line {number}: {name!r} is not a plain file name of this folder")
        out[name] = digest
    return out


def verify_checksums(folder: str | os.PathLike, names: Iterable[str] | None = None) -> bool:
    """Check the files SHA256SUMS lists (only ``names`` of them, if given) against their sha256; CheckpointError
    naming the first that is missing or differs. Returns False where there is no SHA256SUMS."""
    folder = Path(folder)
    expected = read_checksums(folder)
    if expected is None:
        return False
    wanted = None if names is None else set(names)
    for name, digest in expected.items():
        if wanted is not None and name not in wanted:
            continue
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {folder / CHECKSUMS_FILE} but missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: damaged or changed since it was written (its sha256 differs from "
                                  f"{folder / CHECKSUMS_FILE})")
    return True
