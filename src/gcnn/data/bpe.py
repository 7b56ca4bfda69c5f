"""Optional subword (BPE) vocabularies through the `tokenizers` library (``pip install gcnn[bpe]``).

The tokenizer splits text on whitespace SentencePiece-style (``▁`` marks a word start, so decoding restores the spaces)
and learns merges on the training split. Its own ids follow merge order; :func:`frequency_order` re-sorts the pieces by
training-set frequency like every gcnn vocabulary, and gives the table from the tokenizer's ids to ours.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from gcnn.errors import DataError, option


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"{option('bpe')} needs the 'tokenizers' package: pip install 'gcnn[bpe]'") from None
    return tokenizers


def train_bpe(texts: Iterable[str], *, vocab_size: int, special_tokens: list[str], min_count: int = 1):
    """Learn a BPE tokenizer of at most ``vocab_size`` pieces (``special_tokens`` included) from ``texts``."""
    tk = _tokenizers()
    if vocab_size < len(special_tokens) + 1:
        raise DataError(f"{option('bpe')} {vocab_size} is too small: at least {len(special_tokens) + 1} pieces are needed")
    tokenizer = tk.Tokenizer(tk.models.BPE(unk_token=special_tokens[0]))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace()
    tokenizer.decoder = tk.decoders.Metaspace()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_count, special_tokens=special_tokens, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def tokenizer_from_json(text: str):
    """Rebuild a tokenizer saved with ``tokenizer.to_str()``."""
    return _tokenizers().Tokenizer.from_str(text)


def frequency_order(tokenizer, raw_counts: np.ndarray, *, bos: str | None) -> tuple[list[str], list[int], np.ndarray]:
    """The tokenizer's pieces sorted by training-set frequency (``bos`` last), their counts, and ``table`` with
    ``table[tokenizer_id] = our id``. ``raw_counts[i]`` is how often the tokenizer's piece ``i`` is a target in the
    training split."""
    size = tokenizer.get_vocab_size()
    pieces = [tokenizer.id_to_token(i) for i in range(size)]
    counts = np.zeros(size, dtype=np.int64)
    counts[: len(raw_counts)] = raw_counts[:size]
    order = sorted((i for i in range(size) if pieces[i] != bos), key=lambda i: (-int(counts[i]), pieces[i]))
    if bos is not None:
        order.append(tokenizer.token_to_id(bos))
    table = np.empty(size, dtype=np.int64)
    table[order] = np.arange(size)
    return [pieces[i] for i in order], [int(counts[i]) for i in order], table
