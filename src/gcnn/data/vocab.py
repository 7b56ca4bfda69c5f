"""The vocabulary: tokens sorted by training-set frequency, with their special tokens.

Ids are sorted by how often each token is a *target* in the training split (ties by the token's text), because the
adaptive softmax puts the lowest ids in its head cluster. The special tokens follow the same rule: ``<unk>`` is placed
by the number of training tokens it stands for, ``<eos>``/``</s>`` by its own count, and ``<s>`` (an input only, never
predicted) comes last. No ``<pad>`` token exists: padded targets are ``IGNORE_INDEX`` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gcnn.data.text import STREAM_EOS, UNK, WORD_SPLITTERS, split_words
from gcnn.errors import DataError, option
from gcnn.fs import atomic_write
from gcnn.layout import VOCAB_FILE
_FORMAT = "gcnn-vocabulary"
_FORMAT_VERSION = 1


class Vocabulary:
    """Token <-> id mapping, plus how text is split into tokens (so prompts are tokenized like the corpus was).

    ``splitter`` is ``whitespace`` or ``punct`` for word-level vocabularies, ``bpe`` for subword ones, in which case
    ``bpe_json`` holds the serialized `tokenizers` tokenizer whose pieces are the tokens here.
    """

    def __init__(
        self,
        itos: Sequence[str],
        *,
        unk: str = UNK,
        eos: str = STREAM_EOS,
        bos: str | None = None,
        counts: Sequence[int] | None = None,
        splitter: str = "whitespace",
        lowercase: bool = False,
        bpe_json: str | None = None,
    ):
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            seen: set[str] = set()
            duplicate = next(t for t in self.itos if t in seen or seen.add(t))  # type: ignore[func-returns-value]
            raise DataError(f"vocabulary lists {duplicate!r} twice")
        for role, token in (("unk", unk), ("eos", eos), ("bos", bos)):
            if token is not None and token not in self.stoi:
                raise DataError(f"vocabulary lacks its {role} token {token!r}")
        if counts is not None and len(counts) != len(self.itos):
            raise DataError(f"vocabulary has {len(self.itos)} tokens but {len(counts)} counts")
        if splitter not in WORD_SPLITTERS + ("bpe",):
            raise DataError(f"unknown splitter {splitter!r} in vocabulary")
        if (splitter == "bpe") != (bpe_json is not None):
            raise DataError("a BPE vocabulary needs its tokenizer, and only a BPE vocabulary has one")
        self.unk, self.eos, self.bos = unk, eos, bos
        self.counts: list[int] | None = list(counts) if counts is not None else None
        self.splitter = splitter
        self.lowercase = lowercase
        self.bpe_json = bpe_json
        self._bpe = None

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        *,
        unk: str = UNK,
        eos: str = STREAM_EOS,
        bos: str | None = None,
        min_count: int = 1,
        max_size: int | None = None,
        splitter: str = "whitespace",
        lowercase: bool = False,
    ) -> "Vocabulary":
        """Build a word-level vocabulary from training-set token counts.

        Words seen fewer than ``min_count`` times, and the least frequent ones beyond ``max_size`` (the size of the
        whole vocabulary, special tokens included), become ``<unk>``, whose count is then the sum of theirs (plus any
        ``<unk>`` already in the text).
        """
        specials = {unk, eos} | ({bos} if bos is not None else set())
        if min_count < 1:
            raise DataError(f"{option('min_count')} must be at least 1, got {min_count}")
        if max_size is not None and max_size < len(specials) + 1:
            raise DataError(
                f"{option('max_size')} {max_size} leaves no room for words next to the {len(specials)} special tokens"
            )
        words = sorted(((c, w) for w, c in counts.items() if w not in specials), key=lambda cw: (-cw[0], cw[1]))
        room = len(words) if max_size is None else max_size - len(specials)
        kept = [(w, c) for c, w in words[:room] if c >= min_count]
        dropped = sum(c for c, _ in words) - sum(c for _, c in kept)
        entries = kept + [(unk, counts.get(unk, 0) + dropped), (eos, counts.get(eos, 0))]
        entries.sort(key=lambda wc: (-wc[1], wc[0]))
        if bos is not None:
            entries.append((bos, 0))  # an input only: never a target, so it goes last
        return cls(
            [w for w, _ in entries],
            counts=[c for _, c in entries],
            unk=unk,
            eos=eos,
            bos=bos,
            splitter=splitter,
            lowercase=lowercase,
        )

    # ----------------------------------------------------------------------------------------------- ids
    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.fingerprint() == other.fingerprint()

    @property
    def unk_id(self) -> int:
        return self.stoi[self.unk]

    @property
    def eos_id(self) -> int:
        return self.stoi[self.eos]

    @property
    def bos_id(self) -> int | None:
        """Id of ``<s>``; None for stream corpora, which have no ``<s>``."""
        return None if self.bos is None else self.stoi[self.bos]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens``; tokens not in the vocabulary get :attr:`unk_id`."""
        unk_id = self.unk_id
        return [self.stoi.get(t, unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``."""
        try:
            return [self.itos[int(i)] for i in ids]
        except IndexError:
            bad = next(int(i) for i in ids if not 0 <= int(i) < len(self.itos))
            raise DataError(f"id {bad} is outside this vocabulary of {len(self.itos)} tokens") from None

    # ----------------------------------------------------------------------------------------------- text
    def tokenize(self, text: str) -> list[str]:
        """Split raw text into this vocabulary's tokens (words, or BPE pieces), as the corpus was split."""
        if self.splitter == "bpe":
            text = " ".join(text.split())
            return self._tokenizer().encode(text.lower() if self.lowercase else text, add_special_tokens=False).tokens
        return split_words(text, self.splitter, self.lowercase)

    def detokenize(self, tokens: Sequence[str]) -> str:
        """Join tokens back into text (words with spaces; BPE pieces through the tokenizer's decoder)."""
        if self.splitter == "bpe":
            tokenizer = self._tokenizer()
            return tokenizer.decode([tokenizer.token_to_id(t) for t in tokens], skip_special_tokens=False)
        return " ".join(tokens)

    def _tokenizer(self):
        if self._bpe is None:
            from gcnn.data.bpe import tokenizer_from_json

            self._bpe = tokenizer_from_json(self.bpe_json)
        return self._bpe

    # ----------------------------------------------------------------------------------------------- files
    def fingerprint(self) -> str:
        """sha256 of the tokens in id order and the special tokens: equal fingerprints mean the same ids."""
        payload = json.dumps([self.itos, self.unk, self.eos, self.bos, self.splitter, self.lowercase], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "unk": self.unk,
            "eos": self.eos,
            "bos": self.bos,
            "splitter": self.splitter,
            "lowercase": self.lowercase,
            "size": len(self.itos),
            "itos": self.itos,
            "counts": self.counts,
            "bpe": json.loads(self.bpe_json) if self.bpe_json is not None else None,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON to ``path`` (a file, or a folder that gets ``vocab.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        return atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a vocabulary written by :meth:`save` (``path`` is the file, or a folder holding ``vocab.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: damaged vocabulary file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise DataError(f"{path}: not a gcnn vocabulary file")
        if data.get("format_version") != _FORMAT_VERSION:
            raise DataError(
                f"{path}: vocabulary format version {data.get('format_version')!r}; this gcnn reads {_FORMAT_VERSION}"
            )
        try:
            itos = data["itos"]
            if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
                raise TypeError("'itos' must be a list of strings")
            bpe = data.get("bpe")
            return cls(
                itos,
                unk=data["unk"],
                eos=data["eos"],
                bos=data.get("bos"),
                counts=data.get("counts"),
                splitter=data.get("splitter", "whitespace"),
                lowercase=bool(data.get("lowercase", False)),
                bpe_json=json.dumps(bpe) if bpe is not None else None,
            )
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: damaged vocabulary file ({exc})") from None
