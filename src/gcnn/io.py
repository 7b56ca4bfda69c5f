"""Saving and loading models: the config as JSON and the weights as safetensors (loading never executes code).

A model folder holds ``config.json`` (the model config, with ``model_type``) and ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gcnn import registry
from gcnn.errors import CheckpointError, GcnnError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that a reader sees either the old content or the new one, never a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a state dict as safetensors."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (damaged or truncated?): {exc}") from None


def save_model(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), directory / WEIGHTS_NAME, metadata={"format": "gcnn"})
    atomic_write_json(directory / CONFIG_NAME, model.config.to_dict())
    return directory


def read_config(directory: str | Path):
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {directory} a gcnn model or run folder?)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: damaged config (expected a JSON object)")
    try:
        return registry.config_from_dict(data, source=str(path))
    except GcnnError as exc:
        raise CheckpointError(str(exc)) from None


def load_model(directory: str | Path, *, weights: str | Path | None = None, map_location: str = "cpu"):
    """Rebuild a model from a folder written by :func:`save_model` (or a training run folder)."""
    config = read_config(directory)
    model = registry.model_from_config(config)
    path = Path(weights) if weights is not None else Path(directory) / WEIGHTS_NAME
    state = load_weights(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config in {directory} "
            f"(missing: {', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model.to(map_location)
