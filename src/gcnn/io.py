"""Model folders: the one way to save a model and the one way to load it, for run folders, exported folders and
checkpoints alike.

A model folder holds::

    config.json          the model config, with its model_type (read by gcnn.architectures.config_from_dict)
    model.safetensors    the weights (loading never executes code); the header's metadata records gcnn's version,
                         the fingerprint of the vocabulary the model was trained with and, for a model with learned
                         positions trained on shorter sequences, how many positions were trained
    vocab.json           the vocabulary (optional: a model can be saved without one)

and, depending on who wrote it, ``README.md`` + ``SHA256SUMS`` (:func:`save_pretrained`: a portable folder),
``run.json`` and ``checkpoints/`` (``gcnn train``: a run folder), or a checkpoint's resume state.

:func:`load` does every check, whichever the folder: checksums where SHA256SUMS lists them, the config, every
tensor's name and shape against the config (read from the safetensors header, before anything is allocated), the
memory the weights need, the vocabulary's size and fingerprint against the model's; and it keeps what the folder
knew with the model: ``model.vocab`` and ``model.trained_positions``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gcnn.architectures import config_from_dict, model_class
from gcnn.card import ModelCard
from gcnn.config import ConfigBase
from gcnn.data.vocab import Vocabulary
from gcnn.errors import CheckpointError, GcnnError, option
from gcnn.hf_files import HF_FILES, gcnn_config_dict, hf_config, hf_files, useful_context
from gcnn.fs import atomic_write, atomic_write_json, exclusive, staged_folder, verify_checksums, write_atomically, write_checksums
from gcnn.layout import (
    CARD_FILE,
    CHECKPOINT_STATE_FILE,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    RUN_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
)
from gcnn.lm import LanguageModel
from gcnn.version import __version__

# files an exported folder may hold besides its own: ONNX graphs written by gcnn export --onnx
EXPORT_EXTRA_SUFFIXES = (".onnx", ".onnx.data")


# ------------------------------------------------------------------------------------------------ saving
def write_model(
    model: LanguageModel, directory: str | os.PathLike, *, vocab: Vocabulary | None = None, hf: bool = False
) -> None:
    """Write config.json and model.safetensors (and vocab.json when ``vocab`` is given) into ``directory`` (created
    if needed), each file atomically. The fingerprint of the vocabulary (``vocab``, else ``model.vocab``) and
    ``model.trained_positions`` go into the weights' metadata. ``hf``: config.json in the Hugging Face form and the
    files transformers reads beside it (:mod:`gcnn.hf_files`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_vocab = vocab is not None
    vocab = vocab if vocab is not None else model.vocab
    if vocab is not None and len(vocab) != model.config.vocab_size:
        raise CheckpointError(
            f"the vocabulary has {len(vocab):,} tokens but the model was built for vocab_size {model.config.vocab_size:,}"
        )
    metadata = {"format": "pt", "gcnn_version": __version__}
    if vocab is not None:
        metadata["vocab_fingerprint"] = vocab.fingerprint()
    if model.trained_positions is not None:
        metadata["trained_positions"] = str(int(model.trained_positions))
    save_tensors(model.state_dict(), directory / WEIGHTS_FILE, metadata=metadata)
    if hf:
        context = useful_context(model.config, model.receptive_field, model.trained_positions)
        atomic_write_json(directory / CONFIG_FILE, hf_config(model.config, context=context, vocab=vocab))
        max_length = context if getattr(model.config, "max_len", None) is not None else None
        for name, text in hf_files(model.config, vocab, max_length=max_length).items():
            atomic_write(directory / name, text)
    else:
        atomic_write_json(directory / CONFIG_FILE, model.config.to_dict())
    if save_vocab:
        vocab.save(directory / VOCAB_FILE)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, *, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as a safetensors file, atomically. A failed write is an OSError naming ``path`` (safetensors
    reports its own I/O errors in another type)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            found = re.search(r"os error (\d+)", str(exc))
            code = int(found.group(1)) if found else errno.EIO
            raise OSError(code, os.strerror(code) if found else str(exc), str(path)) from None

    write_atomically(path, write)


def save_pretrained(
    model: LanguageModel, directory: str | os.PathLike, vocab: Vocabulary | None = None, *, card: ModelCard | None = None,
    write_extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write ``model`` as a portable folder: config.json, model.safetensors, vocab.json (``vocab``, else
    ``model.vocab``; none if neither), README.md (the model card), SHA256SUMS, and the files that make it a
    Hugging Face model folder as well (:mod:`gcnn.hf_files`: config.json in transformers' form, the tokenizer, the
    remote-code module).

    The folder is built beside ``directory`` and moved into place whole, so an interruption leaves either the old
    folder or the new one. ``directory`` must not exist, be empty, or be a folder written by this function (which is
    then replaced); anything else (a run folder, prepared data, other files) is refused before anything is written.
    ``write_extra(staging_folder)`` may add files (ONNX graphs) before the checksums are taken.
    """
    directory = Path(directory)
    vocab = vocab if vocab is not None else model.vocab
    check_export_destination(directory)
    with exclusive(directory, "gcnn export"):  # checked again under the lock: another writer may have finished
        with staged_folder(directory, replace=check_export_destination(directory)) as staging:
            write_model(model, staging, vocab=vocab, hf=True)
            (staging / CARD_FILE).write_text((card or ModelCard()).render(model, vocab), encoding="utf-8")
            if write_extra is not None:
                write_extra(staging)
            write_checksums(staging)
    return directory


def check_export_destination(directory: Path) -> bool:
    """Whether ``directory`` is an exported folder to replace (True), or free (False); CheckpointError naming what is
    there otherwise."""
    if not directory.exists():
        return False
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a folder")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return False
    if is_exported_folder(directory):
        return True
    kind = describe_folder(directory)
    raise CheckpointError(
        f"{directory} is {kind} ({', '.join(entries[:6])}{', ...' if len(entries) > 6 else ''}): an exported model "
        f"goes into a new or empty folder, or replaces an earlier export; choose another folder"
    )


def is_exported_folder(directory: Path) -> bool:
    """A folder written by :func:`save_pretrained`: its own files (and ONNX graphs) only, with SHA256SUMS."""
    own = {CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, CARD_FILE, CHECKSUMS_FILE, *HF_FILES}
    names = {p.name for p in directory.iterdir()}
    extra = {n for n in names - own if not n.endswith(EXPORT_EXTRA_SUFFIXES)}
    return CHECKSUMS_FILE in names and CONFIG_FILE in names and not extra


def describe_folder(directory: Path) -> str:
    """What a folder holds, in words, for messages that refuse to write into it."""
    if (directory / RUN_FILE).is_file():
        return "a training run folder (it has run.json)"
    if (directory / MANIFEST_FILE).is_file():
        return "a prepared-data folder (it has manifest.json)"
    if is_exported_folder(directory):
        return "an exported model folder"
    if (directory / CONFIG_FILE).is_file():
        return "a model folder"
    return "a folder that is not empty"


# ------------------------------------------------------------------------------------------------ loading
def read_config(directory: str | os.PathLike) -> ConfigBase:
    """The model config of a folder's config.json; CheckpointError naming the file where it is missing or bad."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {directory} a gcnn model, run or checkpoint folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged config (expected a JSON object)")
    data = gcnn_config_dict(data)  # an exported folder's config.json nests gcnn's config among transformers' keys
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged config (expected a JSON object)")
    try:
        return config_from_dict(data, source=str(path))
    except GcnnError as exc:
        raise CheckpointError(exc.template) from None


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """``({tensor name: (shape, dtype)}, metadata)`` of a safetensors file, read from its header alone."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {}
            for name in f.keys():
                piece = f.get_slice(name)
                tensors[name] = (tuple(piece.get_shape()), str(piece.get_dtype()))
            return tensors, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (damaged or truncated?): {exc}") from None


def expected_tensors(config: ConfigBase) -> dict[str, tuple[int, ...]]:
    """The state dict's tensor shapes of a model of ``config``, computed without allocating it."""
    with torch.device("meta"):
        model = model_class(config)(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_weights(path: Path, config: ConfigBase, where: str | os.PathLike) -> dict[str, str]:
    """Check a weights file's tensors against ``config`` (names, shapes, the memory they need) from its header;
    returns its metadata. Nothing is allocated before the checks pass."""
    tensors, metadata = read_header(path)
    expected = expected_tensors(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config in {where} "
            f"(missing: {', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'})"
        )
    for name, shape in expected.items():
        if tensors[name][0] != shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tensors[name][0]}, the config in {where} needs {shape}")
    needed = sum(math.prod(shape) * 4 for shape in expected.values())  # fp32 parameters once built
    available = available_memory()
    if available is not None and needed > available:
        raise CheckpointError(
            f"{where}: the model needs {needed / 2**30:,.1f} GiB for its weights but this machine has "
            f"{available / 2**30:,.1f} GiB of memory available"
        )
    return metadata


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (CheckpointError naming the file where it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (damaged or truncated?): {exc}") from None


def read_vocab(path: str | os.PathLike) -> Vocabulary:
    try:
        return Vocabulary.load(path)
    except GcnnError as exc:
        raise CheckpointError(exc.template) from None


def load(
    path: str | os.PathLike,
    *,
    vocab: str | os.PathLike | Vocabulary | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> LanguageModel:
    """The model of a run folder, an exported folder or a checkpoint folder, in eval mode, with ``model.vocab`` (the
    folder's vocab.json, a checkpoint's run folder's, or ``vocab``: a file, a folder holding vocab.json, or a
    Vocabulary; None if there is none)
    and ``model.trained_positions``. ``weights`` reads another weights file with the folder's config.

    Checks, each a CheckpointError naming the file at fault: the files SHA256SUMS lists (each entry a plain file name
    of the folder) match; config.json is a valid config; every tensor of the weights file has the name and shape the
    config needs and the machine has the memory for them (both from the file's header, before anything is
    allocated); the vocabulary has the model's size and, where the weights record it, the fingerprint of the
    vocabulary the model was trained with.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model, run or checkpoint folder")
    verify_checksums(directory)
    config = read_config(directory)
    weights_path = Path(weights) if weights is not None else directory / WEIGHTS_FILE
    metadata = check_weights(weights_path, config, directory)
    model = model_class(config)(config)
    model.load_state_dict(read_weights(weights_path))
    model.vocab = _pair_vocab(model, directory, vocab, metadata)
    model.trained_positions = _trained_positions(model, directory, metadata)
    return model.to(device).eval()


def _pair_vocab(
    model: LanguageModel, directory: Path, given: str | os.PathLike | Vocabulary | None, metadata: dict[str, str]
) -> Vocabulary | None:
    if isinstance(given, Vocabulary):
        vocab, where = given, "the vocabulary given"
    elif given is not None:
        vocab, where = read_vocab(given), str(given)
    else:
        found = [p for p in (directory / VOCAB_FILE, directory.parent.parent / VOCAB_FILE) if p.is_file()]
        if not found or (found[0] != directory / VOCAB_FILE and not (directory / CHECKPOINT_STATE_FILE).is_file()):
            return None
        vocab, where = read_vocab(found[0]), str(found[0])  # a checkpoint's vocabulary is its run folder's
    if len(vocab) != model.config.vocab_size:
        raise CheckpointError(
            f"{where}: the vocabulary has {len(vocab):,} tokens but the model in {directory} has vocab_size "
            f"{model.config.vocab_size:,}: they belong to different models"
        )
    recorded = metadata.get("vocab_fingerprint")
    if recorded is not None and recorded != vocab.fingerprint():
        raise CheckpointError(
            f"{where}: not the vocabulary the model in {directory} was trained with (same size, {len(vocab):,} tokens, "
            f"but other tokens or ids: its fingerprint differs from the one recorded in {WEIGHTS_FILE})"
        )
    return vocab


def _trained_positions(model: LanguageModel, directory: Path, metadata: dict[str, str]) -> int | None:
    """How many positions a model with learned positions (``config.max_len``) was trained on, where fewer than it
    could take: from the weights' metadata, else (run folders of earlier versions) from run.json's context."""
    max_len = getattr(model.config, "max_len", None)
    if max_len is None:
        return None
    value: Any = metadata.get("trained_positions")
    if value is None:
        for run_dir in (directory, directory.parent.parent):  # a run folder, or one of its checkpoints
            try:
                value = json.loads((run_dir / RUN_FILE).read_text())["train_config"]["context"]
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
    try:
        trained = int(value)
    except (TypeError, ValueError):
        return None
    return trained if 0 < trained < max_len else None


def require_vocab(model: LanguageModel, what: str = "this") -> Vocabulary:
    """``model.vocab``, or a CheckpointError saying that ``what`` needs one."""
    if model.vocab is None:
        raise CheckpointError(
            f"{what} needs the model's vocabulary, and the model has none (it was saved without vocab.json): "
            f"pass {option('vocab', 'vocab=')}"
        )
    return model.vocab
