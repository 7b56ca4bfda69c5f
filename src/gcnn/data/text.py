"""Reading corpus files: streamed in chunks of lines, checked to be UTF-8, hashed on the way.

A corpus *format* says how lines become tokens:

- ``wikitext``: a document-level stream; each line's whitespace tokens then one ``<eos>``, blank lines included
  (the usual WikiText count).
- ``plain``: the same stream, but blank lines are skipped (they only separate paragraphs in ordinary text).
- ``sentences``: one independent sentence per line (Google Billion Word, Penn Treebank); each non-blank line's tokens
  then one ``</s>``. ``<s>`` and ``</s>`` written in the text are markers and removed; ``<s>`` is never a token of the
  id arrays: the batcher prepends it as an input.

Lines are split the way Python's text files split them (``\\n``, ``\\r\\n`` or ``\\r``); words are split by
``str.split`` (``whitespace``) or by a regular expression that also splits punctuation off words and keeps ``<unk>``
whole (``punct``).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

from gcnn.errors import DataError

FORMATS = ("wikitext", "sentences", "plain")
WORD_SPLITTERS = ("whitespace", "punct")

UNK = "<unk>"
STREAM_EOS = "<eos>"
SENTENCE_BOS = "<s>"
SENTENCE_EOS = "</s>"

SPLITS = ("train", "valid", "test")
_CHUNK_CHARS = 1 << 22  # lines are read in chunks of about this many characters
_PUNCT_WORDS = re.compile(r"<unk>|\w+(?:'\w+)*|[^\w\s]")  # words (with inner apostrophes), marks, <unk>


class _HashingReader(io.RawIOBase):
    """A raw binary reader that feeds every byte it reads to a sha256 and counts them."""

    def __init__(self, raw: io.BufferedReader):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n


class TextFile:
    """One corpus file, read as chunks of lines; :attr:`sha256` and :attr:`size` are set once it has been read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.sha256: str | None = None
        self.size: int | None = None
        self.bytes_read = 0

    def line_chunks(self) -> Iterator[list[str]]:
        """Yield lists of lines (each with its ``\\n``, except perhaps the file's last line)."""
        with open(self.path, "rb") as raw_file:
            raw = _HashingReader(raw_file)
            text = io.TextIOWrapper(io.BufferedReader(raw, 1 << 20), encoding="utf-8-sig", newline=None)
            number = 0
            try:
                while True:
                    lines = text.readlines(_CHUNK_CHARS)
                    self.bytes_read = raw.bytes_read
                    if not lines:
                        break
                    if any("\x00" in line for line in lines):
                        at = number + next(i for i, line in enumerate(lines) if "\x00" in line) + 1
                        raise DataError(f"{self.path}: line {at} holds NUL bytes: a binary file, not text")
                    number += len(lines)
                    yield lines
            except UnicodeDecodeError:
                raise DataError(_describe_bad_utf8(self.path)) from None
            self.sha256 = raw.sha256.hexdigest()
            self.size = raw.bytes_read


def _describe_bad_utf8(path: Path) -> str:
    """Find the first line of ``path`` that is not UTF-8 (only called once decoding has failed)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    f"{path}: line {number}, byte {exc.start + 1}: not valid UTF-8 ({exc.reason}); "
                    "convert the file to UTF-8 first (for example: iconv -f latin1 -t utf-8)"
                )
    return f"{path}: not valid UTF-8"


def unit_texts(format: str, lines: list[str], eos: str, bos: str | None = None) -> list[str]:
    """The texts of ``lines`` that each become one unit (a line or sentence followed by one eos), per ``format``."""
    if format == "wikitext":
        return lines
    if format == "plain":
        return [line for line in lines if not line.isspace()]
    if format != "sentences":
        raise DataError(f"unknown corpus format {format!r}; choose one of {', '.join(FORMATS)}")
    units = []
    for line in lines:
        if eos in line or (bos and bos in line):
            line = " ".join(word for word in line.split() if word != eos and word != bos)
        if line and not line.isspace():
            units.append(line)
    return units


def word_tokenizer(splitter: str = "whitespace", lowercase: bool = False) -> Callable[[list[str], str], list[str]]:
    """Return ``f(texts, eos) -> tokens``: each text's words followed by ``eos``.

    ``splitter`` is ``whitespace`` (``str.split``) or ``punct`` (words, with each punctuation mark a token of its own).
    """
    if splitter == "whitespace":

        def whitespace_tokens(texts: list[str], eos: str) -> list[str]:
            if not texts:
                return []
            gap = f" {eos} "
            text = gap.join(texts)
            if lowercase:
                text = text.lower()
            return (text + gap).split()

        return whitespace_tokens
    if splitter == "punct":
        find_words = _PUNCT_WORDS.findall

        def punct_tokens(texts: list[str], eos: str) -> list[str]:
            tokens: list[str] = []
            for text in texts:
                tokens += find_words(text.lower() if lowercase else text)
                tokens.append(eos)
            return tokens

        return punct_tokens
    raise DataError(f"unknown word splitter {splitter!r}; choose one of {', '.join(WORD_SPLITTERS)}")


def split_words(text: str, splitter: str = "whitespace", lowercase: bool = False) -> list[str]:
    """Split one text into words the way :func:`word_tokenizer` does, without any eos."""
    if lowercase:
        text = text.lower()
    return text.split() if splitter == "whitespace" else _PUNCT_WORDS.findall(text)


@dataclass(frozen=True)
class Corpus:
    """A corpus on disk: its files per split (``train``, ``valid``, ``test``) and how its lines become tokens.

    ``format`` is ``wikitext``, ``sentences`` or ``plain`` (see gcnn.data.text); ``splitter`` is ``whitespace`` or
    ``punct`` (punctuation split off words), ``lowercase`` lowercases everything.
    """

    files: Mapping[str, tuple[Path, ...]]
    format: str = "wikitext"
    splitter: str = "whitespace"
    lowercase: bool = False
    name: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)  # recorded in the manifest (e.g. the sdist's sha256)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"unknown corpus format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.splitter not in WORD_SPLITTERS:
            raise DataError(f"unknown word splitter {self.splitter!r}; choose one of {', '.join(WORD_SPLITTERS)}")
        for split in SPLITS:
            if not self.files.get(split):
                raise DataError(f"corpus {self.name!r} has no {split} file")

    @property
    def mode(self) -> str:
        """``sentence`` for one-sentence-per-line corpora, ``stream`` otherwise."""
        return "sentence" if self.format == "sentences" else "stream"

    @property
    def eos(self) -> str:
        return SENTENCE_EOS if self.format == "sentences" else STREAM_EOS

    @property
    def bos(self) -> str | None:
        return SENTENCE_BOS if self.format == "sentences" else None
