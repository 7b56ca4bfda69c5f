"""A prepared-data folder: the vocabulary, one memory-mapped id array per split, and a manifest.

Layout (format version 1)::

    DIR/manifest.json   what is here: mode, options, vocabulary size and sha256, per split its file, dtype, token
                        count, OOV rate and source files (path, bytes, sha256); written last
    DIR/vocab.json      the Vocabulary (see gcnn.data.vocab)
    DIR/train.bin       raw little-endian uint16 ids (uint32 when the vocabulary has more than 65,536 tokens)
    DIR/valid.bin
    DIR/test.bin

Stream corpora store the token stream with one eos per line; sentence corpora store each sentence's ids followed by
``</s>``, so sentence boundaries are the eos positions and ``<s>`` is never stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from gcnn.data.vocab import Vocabulary
from gcnn.errors import DataError
from gcnn.fs import sha256_file
from gcnn.layout import MANIFEST_FILE

FORMAT_NAME = "gcnn-prepared"
FORMAT_VERSION = 1
MODES = ("stream", "sentence")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}

_FULL_CHECK_BYTES = 256 << 20  # "auto" verification reads every id up to this much data, and samples beyond it
_SAMPLE_BLOCKS = 64
_SAMPLE_IDS = 1 << 16


def ids_dtype(vocab_size: int) -> str:
    """Name of the smallest id dtype for a vocabulary of ``vocab_size`` tokens."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def is_prepared_folder(path: Path) -> bool:
    """Whether ``path`` holds a manifest that says it is a gcnn prepared folder (complete or not, valid or not)."""
    try:
        return json.loads((Path(path) / MANIFEST_FILE).read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


class PreparedData:
    """An opened prepared-data folder. Use :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any], vocab: Vocabulary):
        self.path = path
        self.manifest = manifest
        self.vocab = vocab
        self._arrays: dict[str, np.memmap] = {}
        self._cache: dict[Any, Any] = {}  # per-split derived data (sentence bounds), see gcnn.data.batching

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: str = "auto") -> "PreparedData":
        """Open and validate a prepared folder.

        Checks the manifest's structure and version, that no file is a symbolic link, the vocabulary's sha256 and
        size, each split file's size, and that ids are below the vocabulary size: ``verify="full"`` also checks each
        id file's sha256 and reads every id, ``"sample"`` reads the first, last and 64 evenly spaced blocks of 65,536
        ids per split, ``"auto"`` is full up to 256 MiB of ids and sampled beyond. (The batcher also checks every
        batch it makes.) Raises DataError naming the file at fault.
        """
        if verify not in ("auto", "full", "sample"):
            raise ValueError(f"verify must be 'auto', 'full' or 'sample', not {verify!r}")
        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        if not path.is_dir():
            raise DataError(f"{path}: prepared-data folder not found (make one with `gcnn prepare`)")
        if not manifest_path.is_file():
            raise DataError(
                f"{path}: not a prepared-data folder, or an incomplete one: {MANIFEST_FILE} is missing "
                "(run `gcnn prepare` again)"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{manifest_path}: damaged manifest, not valid JSON ({exc})") from None
        _check_manifest(manifest, manifest_path)

        for name in [manifest["vocab"]["file"], MANIFEST_FILE] + [e["file"] for e in manifest["splits"].values()]:
            if (path / name).is_symlink():
                raise DataError(
                    f"{path / name}: a symbolic link (to {os.readlink(path / name)}); a prepared folder holds its own "
                    "files, so that nothing outside it is read or changed in its name"
                )
        vocab_path = path / manifest["vocab"]["file"]
        if not vocab_path.is_file():
            raise DataError(f"{vocab_path}: vocabulary file missing from the prepared folder")
        if sha256_file(vocab_path) != manifest["vocab"]["sha256"]:
            raise DataError(f"{vocab_path}: vocabulary file does not match its sha256 in {manifest_path}")
        vocab = Vocabulary.load(vocab_path)
        if len(vocab) != manifest["vocab"]["size"]:
            raise DataError(
                f"{vocab_path}: {len(vocab)} tokens, but {manifest_path} says {manifest['vocab']['size']}"
            )
        data = cls(path, manifest, vocab)
        for name in data.splits:
            entry = manifest["splits"][name]
            file = path / entry["file"]
            if not file.is_file():
                raise DataError(f"{file}: id file of split {name!r} is missing")
            expected = entry["tokens"] * DTYPES[entry["dtype"]].itemsize
            if file.stat().st_size != expected:
                raise DataError(
                    f"{file}: {file.stat().st_size} bytes, but {entry['tokens']} {entry['dtype']} ids need {expected} "
                    "(truncated or damaged; run `gcnn prepare` again)"
                )
        total = sum((path / manifest["splits"][s]["file"]).stat().st_size for s in data.splits)
        full = verify == "full" or (verify == "auto" and total <= _FULL_CHECK_BYTES)
        data.verify_ids(full=full)
        if full:
            data.verify_hashes()
        return data

    # ------------------------------------------------------------------------------------------------ contents
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def mode(self) -> str:
        """``stream`` (contiguous blocks of a document stream) or ``sentence`` (independent sentences)."""
        return self.manifest["mode"]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.manifest["splits"])

    def num_tokens(self, name: str) -> int:
        """Number of ids in split ``name`` (every one a target; ``<s>`` is not stored)."""
        return self._entry(name)["tokens"]

    def split(self, name: str) -> np.memmap:
        """The ids of split ``name`` (``train``, ``valid`` or ``test``), memory-mapped read-only."""
        if name not in self._arrays:
            entry = self._entry(name)
            self._arrays[name] = np.memmap(
                self.path / entry["file"], dtype=DTYPES[entry["dtype"]], mode="r", shape=(entry["tokens"],)
            )
        return self._arrays[name]

    def _entry(self, name: str) -> dict[str, Any]:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.path}: no split {name!r}; it has {', '.join(self.splits)}")
        return self.manifest["splits"][name]

    # ------------------------------------------------------------------------------------------------ checks
    def check_vocab_size(self, n: int) -> None:
        """Refuse a model whose vocabulary size ``n`` differs from this data's."""
        if n != self.vocab_size:
            raise DataError(
                f"the model has a vocabulary of {n:,} tokens but the data in {self.path} has {self.vocab_size:,}; "
                "use the model with data prepared with its own vocabulary"
            )

    def check_vocab(self, vocab: Vocabulary) -> None:
        """Refuse a vocabulary that differs from this data's (same size is not enough: the ids must mean the same)."""
        self.check_vocab_size(len(vocab))
        if vocab.fingerprint() != self.vocab.fingerprint():
            raise DataError(
                f"the vocabulary given has the same size as the one in {self.path} but different tokens or ids"
            )

    def verify_hashes(self) -> None:
        """Raise DataError if an id file's sha256 differs from the manifest's (folders written by gcnn 0.1.0
        before the hashes were recorded have none to check)."""
        for name in self.splits:
            entry = self.manifest["splits"][name]
            file = self.path / entry["file"]
            if entry.get("sha256") is not None and sha256_file(file) != entry["sha256"]:
                raise DataError(
                    f"{file}: the ids of split {name!r} changed since `gcnn prepare` wrote them (their sha256 differs "
                    f"from {self.path / MANIFEST_FILE}); run `gcnn prepare` again"
                )

    def verify_ids(self, *, full: bool = True) -> None:
        """Raise DataError if an id of any split is not below the vocabulary size (all ids, or a sample)."""
        for name in self.splits:
            ids = self.split(name)
            for start, stop in _check_ranges(len(ids), full):
                block = ids[start:stop]
                if block.size and int(block.max()) >= self.vocab_size:
                    at = start + int(np.argmax(block >= self.vocab_size))
                    raise DataError(
                        f"{self.path / self._entry(name)['file']}: id {int(ids[at])} at position {at} is out of range "
                        f"for the vocabulary of {self.vocab_size} tokens (damaged folder; run `gcnn prepare` again)"
                    )

    def summary(self) -> str:
        """A few lines for people: where, what, and tokens and OOV rate per split."""
        m = self.manifest
        dtype = m["splits"][self.splits[0]]["dtype"]
        lines = [
            f"{self.path}: corpus {m.get('corpus') or '?'} ({m['options']['format']}, {self.mode} mode)",
            f"vocabulary: {self.vocab_size:,} tokens ({self.vocab.splitter}), ids {dtype}",
            f"{'split':<6} {'tokens':>14} {'OOV rate':>9}",
        ]
        for name in self.splits:
            entry = m["splits"][name]
            lines.append(f"{name:<6} {entry['tokens']:>14,} {entry['oov_rate']:>9.2%}")
        return "\n".join(lines)


def _check_ranges(n: int, full: bool) -> list[tuple[int, int]]:
    step = 1 << 24
    if full or n <= (_SAMPLE_BLOCKS + 2) * _SAMPLE_IDS:
        return [(s, min(s + step, n)) for s in range(0, n, step)]
    starts = np.linspace(0, n - _SAMPLE_IDS, _SAMPLE_BLOCKS + 2).astype(np.int64)
    return [(int(s), int(s) + _SAMPLE_IDS) for s in starts]


def _check_manifest(manifest: Any, where: Path) -> None:
    """Raise DataError unless ``manifest`` has the structure this version writes."""

    def need(obj: Any, key: str, kind: type | tuple[type, ...], label: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise DataError(f"{where}: damaged manifest: '{label}' is missing")
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(f"{where}: damaged manifest: '{label}' has the wrong type ({type(value).__name__})")
        return value

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{where}: not a gcnn prepared-data manifest")
    version = need(manifest, "format_version", int, "format_version")
    if version != FORMAT_VERSION:
        newer = " (written by a newer gcnn; upgrade)" if version > FORMAT_VERSION else ""
        raise DataError(f"{where}: format version {version}, this gcnn reads version {FORMAT_VERSION}{newer}")
    if need(manifest, "mode", str, "mode") not in MODES:
        raise DataError(f"{where}: damaged manifest: mode {manifest['mode']!r} is not one of {', '.join(MODES)}")
    need(manifest, "options", dict, "options")
    vocab = need(manifest, "vocab", dict, "vocab")
    if Path(need(vocab, "file", str, "vocab.file")).name != vocab["file"]:
        raise DataError(f"{where}: damaged manifest: 'vocab.file' must be a file name, not {vocab['file']!r}")
    need(vocab, "sha256", str, "vocab.sha256")
    if need(vocab, "size", int, "vocab.size") < 2:
        raise DataError(f"{where}: damaged manifest: vocab.size {vocab['size']} is too small")
    splits = need(manifest, "splits", dict, "splits")
    if not splits:
        raise DataError(f"{where}: damaged manifest: no splits")
    for name, entry in splits.items():
        label = f"splits.{name}"
        need(splits, name, dict, label)
        file = need(entry, "file", str, f"{label}.file")
        if Path(file).name != file:
            raise DataError(f"{where}: damaged manifest: '{label}.file' must be a file name, not {file!r}")
        if need(entry, "dtype", str, f"{label}.dtype") not in DTYPES:
            raise DataError(f"{where}: damaged manifest: '{label}.dtype' {entry['dtype']!r} is not uint16 or uint32")
        if need(entry, "tokens", int, f"{label}.tokens") < 1:
            raise DataError(f"{where}: damaged manifest: '{label}.tokens' must be positive")
        need(entry, "oov_rate", (int, float), f"{label}.oov_rate")
        if "sha256" in entry:
            need(entry, "sha256", str, f"{label}.sha256")
