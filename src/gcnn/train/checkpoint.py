"""Resume state on disk: written atomically, loaded without executing code.

``RUN/checkpoints/update_00001200/`` holds everything needed to continue a run exactly:

    config.json, model.safetensors   the model, as gcnn.io.write_model writes it (so gcnn.load works on it)
    SHA256SUMS                       every file's sha256, checked whenever the checkpoint is loaded
    optimizer.safetensors            the optimizer's per-parameter tensors (momentum buffers, Adam moments, steps)
    rng.safetensors                  every process's torch (and CUDA) and numpy generator states
    trainer_state.json               counters, data position, schedule, best score, the optimizer's hyperparameters
                                     and scalars, python's random state; written last

A checkpoint is written into a hidden temporary folder and renamed into place, so a kill at any moment leaves every
``update_*`` folder complete. Only safetensors and JSON are read back: nothing in a checkpoint can run code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcnn.errors import CheckpointError, GcnnError, describe_error
from gcnn.fs import (
    atomic_write_json,
    fsync_dir,
    remove_folder,
    temporary_name,
    verify_checksums,
    write_checksums,
)
from gcnn.io import read_weights, save_tensors, write_model
from gcnn.layout import CHECKPOINT_STATE_FILE, CHECKPOINTS_DIR, WEIGHTS_FILE

OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
PREFIX = "update_"
STATE_FORMAT = "gcnn-train-state"
STATE_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, the trainer state (JSON), and the tensors to restore."""

    path: Path
    state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng: list[dict[str, Any]]


# ----------------------------------------------------------------------------------------------- RNG state
def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's generator states: torch (CPU and the CUDA device), numpy's global one, python's."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.uint32).astype(np.int64)),
        "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": _to_lists(random.getstate()),
    }


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    name, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _to_lists(obj: Any) -> Any:
    return [_to_lists(x) for x in obj] if isinstance(obj, (list, tuple)) else obj


# ----------------------------------------------------------------------------------------------- writing
def save_checkpoint(
    run_dir: Path, update: int, *, model: torch.nn.Module, optimizer_state: dict[str, Any], state: dict[str, Any],
    rng: list[dict[str, Any]],
) -> Path:
    """Write the checkpoint of ``update`` atomically; return its folder. ``rng`` has one entry per process."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{update:08d}"
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        write_model(model, tmp)
        tensors, optimizer_meta = _split_optimizer_state(optimizer_state)
        save_tensors(tensors, tmp / OPTIMIZER_FILE)
        rng_tensors, rng_meta = _split_rng(rng)
        save_tensors(rng_tensors, tmp / RNG_FILE)
        full_state = dict(state, format=STATE_FORMAT, version=STATE_VERSION, update=update,
                          optimizer=optimizer_meta, rng=rng_meta)
        atomic_write_json(tmp / CHECKPOINT_STATE_FILE, full_state)
        write_checksums(tmp)  # checked when the checkpoint is loaded: flipped bytes are never resumed from
        fsync_dir(tmp)
        if final.exists():  # the same update saved again (a stop right after a save): swap it in
            remove_folder(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GcnnError(
            f"could not write a checkpoint to {final}: {describe_error(exc)} (disk full or not writable?); "
            f"the previous checkpoints in {root} are intact"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _split_rng(per_rank: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors, meta = {}, []
    for rank, rng in enumerate(per_rank):
        for key in ("torch", "cuda", "numpy_keys"):
            if rng.get(key) is not None:
                tensors[f"rank{rank}.{key}"] = rng[key]
        meta.append({"numpy": rng["numpy"], "python": rng["python"]})
    return tensors, meta


def _join_rng(tensors: dict[str, torch.Tensor], meta: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        dict(entry, **{key: tensors.get(f"rank{rank}.{key}") for key in ("torch", "cuda", "numpy_keys")})
        for rank, entry in enumerate(meta)
    ]


def prune(run_dir: Path, keep_last: int, keep: set[str]) -> None:
    """Delete checkpoints except the newest ``keep_last`` (at least 1) and those named in ``keep`` (the best)."""
    found = list_checkpoints(run_dir)
    kept = {p.name for p in found[-keep_last:]}
    for path in found:
        if path.name not in kept and path.name not in keep:
            remove_folder(path)


# ----------------------------------------------------------------------------------------------- reading
def list_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint folder, every file checked against its SHA256SUMS; CheckpointError names the damaged file."""
    path = Path(path)
    verify_checksums(path)
    state_path = path / CHECKPOINT_STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{state_path}: missing (not a complete checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_path}: damaged ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_path}: not a gcnn training checkpoint")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"{state_path}: checkpoint version {state.get('version')!r}, this gcnn reads {STATE_VERSION}"
        )
    try:
        optimizer_state = _join_optimizer_state(read_weights(path / OPTIMIZER_FILE), state["optimizer"])
        rng = _join_rng(read_weights(path / RNG_FILE), state["rng"])
    except (KeyError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{state_path}: damaged ({exc!r})") from None
    return Checkpoint(path, state, read_weights(path / WEIGHTS_FILE), optimizer_state, rng)


def load_latest(run_dir: Path) -> Checkpoint:
    """The newest loadable checkpoint of a run; damaged newer ones are skipped with a warning."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{Path(run_dir) / CHECKPOINTS_DIR}: no checkpoint to resume from")
    for path in reversed(found):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping a damaged checkpoint: {exc}", stacklevel=2)
    raise CheckpointError(f"{Path(run_dir) / CHECKPOINTS_DIR}: every checkpoint is damaged")


# ----------------------------------------------------------------------------------------------- up-front checks
def checkpoint_bytes(model: torch.nn.Module, optimizer_slots: int) -> int:
    """Approximate size of one checkpoint: the weights plus ``optimizer_slots`` copies of them."""
    weights = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return weights * (1 + optimizer_slots)


def check_run_folder(run_dir: Path, needed_bytes: int) -> None:
    """Make sure ``run_dir`` can be created and written and has room for ``needed_bytes``; GcnnError otherwise."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise GcnnError(f"run folder {run_dir} is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise GcnnError(
            f"run folder {run_dir}: only {free / 2**20:,.0f} MiB free, but the checkpoints need about "
            f"{needed_bytes / 2**20:,.0f} MiB (lower train.keep_last or free some space)"
        )
