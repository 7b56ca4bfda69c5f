"""The Hugging Face files of an exported folder, written as plain JSON (no transformers or tokenizers needed).

:func:`gcnn.io.save_pretrained` writes, next to gcnn's own files:

    config.json            gcnn's config nested under ``gcnn_config``, with the keys transformers reads at the top:
                           ``model_type: "gcnn"``, ``architectures``, ``auto_map`` (the remote-code module below),
                           ``vocab_size``, ``max_position_embeddings`` (the model's useful context), the special
                           token ids. gcnn's loader reads either this form or the flat one of run folders.
    modeling_gcnn.py       a two-line module importing :mod:`gcnn.hf`: what ``trust_remote_code=True`` runs
    tokenizer.json         the vocabulary as a `tokenizers` tokenizer that splits text exactly as gcnn does
    tokenizer_config.json  PreTrainedTokenizerFast, its special tokens and model_max_length
    special_tokens_map.json
    generation_config.json the start, end and padding ids for ``generate()``

The tokenizer (:func:`tokenizer_json`): a WordLevel model over gcnn's ids; the normalizer lower-cases when the
vocabulary does (Python's ``str.lower``, see docs/interop.md for the few characters the Rust one maps otherwise) and
turns every line end (``\\r\\n``, ``\\r``, ``\\n``, as Python's text files split lines) into the end-of-line token, as a
corpus line becomes its words then ``<eos>``; the pre-tokenizer splits on exactly the characters Python's
``str.split`` splits on (``whitespace``), or finds gcnn's ``punct`` pattern with ``\\w``/``\\s`` spelled out as Python's
own character classes, so Oniguruma's Unicode classes cannot differ from Python's ``re``. The post-processor puts the
start marker (``<s>``, or ``<eos>`` for stream vocabularies) first, as ``gcnn generate`` conditions a prompt; pass
``add_special_tokens=False`` for bare ids. BPE vocabularies keep their own tokenizer with the pieces renumbered to
gcnn's ids (line ends are not tokens there: encode one line at a time, as gcnn does).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from gcnn.config import ConfigBase
from gcnn.data.text import _PUNCT_WORDS
from gcnn.data.vocab import Vocabulary
from gcnn.version import __version__

HF_MODEL_TYPE = "gcnn"
REMOTE_CODE_MODULE = "modeling_gcnn"
REMOTE_CODE_FILE = REMOTE_CODE_MODULE + ".py"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
HF_FILES = (REMOTE_CODE_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE, GENERATION_CONFIG_FILE)
NESTED_CONFIG_KEY = "gcnn_config"
UNBOUNDED_CONTEXT = 512  # the useful context claimed for recurrent models (gcnn eval's default context for them)

REMOTE_CODE = '''"""Remote code of a gcnn model folder: transformers imports this file when loading with trust_remote_code=True.
It only imports the installed gcnn package (pip install 'gcnn[hf]'); nothing else runs."""

from gcnn.hf import GCNNConfig, GCNNForCausalLM  # noqa: F401
'''


def useful_context(config: ConfigBase, receptive_field: int | None, trained_positions: int | None) -> int:
    """Tokens of context a prediction can use: the receptive field (a GCNN), the trained positions (a Transformer
    trained on fewer than ``max_len``), else :data:`UNBOUNDED_CONTEXT` for recurrent models."""
    if trained_positions is not None:
        return int(trained_positions)
    return int(receptive_field) if receptive_field else UNBOUNDED_CONTEXT


def start_token(vocab: Vocabulary) -> str:
    """The token a text is conditioned on first: ``<s>`` for sentence vocabularies, else ``<eos>``."""
    return vocab.bos if vocab.bos is not None else vocab.eos


def hf_config(config: ConfigBase, *, context: int, vocab: Vocabulary | None) -> dict[str, Any]:
    """config.json of an exported folder: transformers' keys at the top, gcnn's config under ``gcnn_config``."""
    out: dict[str, Any] = {
        "model_type": HF_MODEL_TYPE,
        "architectures": ["GCNNForCausalLM"],
        "auto_map": {
            "AutoConfig": f"{REMOTE_CODE_MODULE}.GCNNConfig",
            "AutoModelForCausalLM": f"{REMOTE_CODE_MODULE}.GCNNForCausalLM",
        },
        NESTED_CONFIG_KEY: config.to_dict(),
        "vocab_size": config.vocab_size,
        "max_position_embeddings": context,
        "tie_word_embeddings": False,
        "dtype": "float32",
        "gcnn_version": __version__,
    }
    if vocab is not None:
        out.update(bos_token_id=vocab.stoi[start_token(vocab)], unk_token_id=vocab.unk_id)
        if vocab.bos is not None:  # sentence vocabularies end a text at </s>; in stream ones <eos> ends a line only
            out["eos_token_id"] = vocab.eos_id
    return out


def gcnn_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """gcnn's own config dict from a config.json of either form (nested by :func:`hf_config`, or flat)."""
    if data.get("model_type") == HF_MODEL_TYPE and isinstance(data.get(NESTED_CONFIG_KEY), dict):
        return data[NESTED_CONFIG_KEY]
    return data


# ------------------------------------------------------------------------------------------------ tokenizer
@functools.lru_cache(maxsize=None)
def python_class(kind: str) -> str:
    """A regex character class (Oniguruma syntax) of exactly the characters Python counts as whitespace
    (``str.isspace``: what ``str.split`` and ``re``'s ``\\s`` split on) or as word characters (``re``'s ``\\w``:
    ``str.isalnum()`` or ``_``)."""
    test = str.isspace if kind == "space" else (lambda c: c.isalnum() or c == "_")
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF or not test(chr(code)):
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)


def punct_pattern() -> str:
    """gcnn's ``punct`` word pattern with ``\\w`` and ``\\s`` spelled out as Python's classes."""
    assert _PUNCT_WORDS.pattern == r"<unk>|\w+(?:'\w+)*|[^\w\s]", "gcnn.data.text changed its punct pattern"
    word, space = python_class("word"), python_class("space")
    return f"<unk>|[{word}]+(?:'[{word}]+)*|[^{word}{space}]"


def _added_token(token: str, ident: int, *, normalized: bool) -> dict[str, Any]:
    return {"id": ident, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": True}


def _regex(pattern: str) -> dict[str, str]:
    return {"Regex": pattern}


def tokenizer_json(vocab: Vocabulary) -> dict[str, Any]:
    """The tokenizer.json of ``vocab`` (module docstring)."""
    start = start_token(vocab)
    specials = list(dict.fromkeys(t for t in (vocab.unk, vocab.eos, vocab.bos) if t is not None))
    post = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": start, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": start, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {start: {"id": start, "ids": [vocab.stoi[start]], "tokens": [start]}},
    }
    if vocab.splitter == "bpe":
        return _bpe_tokenizer_json(vocab, specials, post)
    normalizers: list[dict[str, Any]] = [{"type": "Lowercase"}] if vocab.lowercase else []
    if vocab.splitter == "punct":  # the end-of-line tokens that line ends become are kept whole
        pattern = _escape(vocab.eos) + "|" + punct_pattern()
        pre = {"type": "Split", "pattern": _regex(pattern), "behavior": "Removed", "invert": True}
    else:
        pre = {"type": "Split", "pattern": _regex(f"[{python_class('space')}]+"), "behavior": "Removed", "invert": False}
    normalizers.append({"type": "Replace", "pattern": _regex(r"\r\n|\r|\n"), "content": f" {vocab.eos} "})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        # transformers matches special tokens in the raw text before anything else (docs/interop.md)
        "added_tokens": [_added_token(t, vocab.stoi[t], normalized=False) for t in specials],
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": pre,
        "post_processor": post,
        # each word with the space before it: a continuation decoded alone appends to its prompt as text should
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": _regex("^"), "content": " "}]},
        "model": {"type": "WordLevel", "vocab": dict(vocab.stoi), "unk_token": vocab.unk},
    }


def _escape(text: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)


def _bpe_tokenizer_json(vocab: Vocabulary, specials: list[str], post: dict[str, Any]) -> dict[str, Any]:
    """The BPE vocabulary's own tokenizer, its pieces renumbered to gcnn's ids, with gcnn's text normalization in
    front (whitespace runs as one space, stripped, then lower-cased when the vocabulary is)."""
    data = json.loads(vocab.bpe_json)
    model = dict(data["model"])
    model["vocab"] = {piece: vocab.stoi[piece] for piece in model["vocab"]}
    data["model"] = model
    # gcnn normalizes the whole text and then finds the special tokens in it: so must this tokenizer (normalized)
    data["added_tokens"] = [dict(t, id=vocab.stoi[t["content"]], normalized=True) for t in data.get("added_tokens", [])]
    normalizers: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": _regex(f"[{python_class('space')}]+"), "content": " "},
        {"type": "Strip", "strip_left": True, "strip_right": True},
    ]
    if vocab.lowercase:
        normalizers.append({"type": "Lowercase"})
    if data.get("normalizer") is not None:
        normalizers.append(data["normalizer"])
    data["normalizer"] = {"type": "Sequence", "normalizers": normalizers}
    data["post_processor"] = post
    return data


def tokenizer_config(vocab: Vocabulary, max_length: int | None) -> dict[str, Any]:
    """tokenizer_config.json; ``max_length``: the most tokens the model takes at once (None: any number)."""
    start = start_token(vocab)
    out = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": start,
        "eos_token": vocab.eos,
        "unk_token": vocab.unk,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": True,
        "padding_side": "right",  # gcnn's models are causal and unmasked: right padding never changes a prediction
    }
    if max_length is not None:
        out["model_max_length"] = max_length
    return out


def special_tokens_map(vocab: Vocabulary) -> dict[str, str]:
    return {"bos_token": start_token(vocab), "eos_token": vocab.eos, "unk_token": vocab.unk}


def generation_config(vocab: Vocabulary) -> dict[str, Any]:
    # no pad id: generate() would take every start marker (<eos> in stream vocabularies) for padding
    out: dict[str, Any] = {"bos_token_id": vocab.stoi[start_token(vocab)]}
    if vocab.bos is not None:  # sentence vocabularies end a text at </s>; stream ones only end a line at <eos>
        out["eos_token_id"] = vocab.eos_id
        out["suppress_tokens"] = [vocab.bos_id]  # <s> is an input only: gcnn generate never generates it
    return out


def hf_files(config: ConfigBase, vocab: Vocabulary | None, *, max_length: int | None) -> dict[str, str]:
    """{file name: text} of the Hugging Face files besides config.json (the tokenizer ones only with a vocabulary)."""
    files = {REMOTE_CODE_FILE: REMOTE_CODE}
    if vocab is not None:
        files[TOKENIZER_FILE] = json.dumps(tokenizer_json(vocab), ensure_ascii=False)
        files[TOKENIZER_CONFIG_FILE] = json.dumps(tokenizer_config(vocab, max_length), ensure_ascii=False, indent=2)
        files[SPECIAL_TOKENS_FILE] = json.dumps(special_tokens_map(vocab), ensure_ascii=False, indent=2)
        files[GENERATION_CONFIG_FILE] = json.dumps(generation_config(vocab), indent=2)
    return files
