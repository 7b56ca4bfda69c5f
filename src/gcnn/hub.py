"""Portable model folders in the layout users know from Hugging Face, loadable without the training code.

A pretrained folder holds::

    config.json         the model config (gcnn.io), with model_type
    model.safetensors   the weights (loading never executes code)
    vocab.json          the vocabulary (gcnn.data.Vocabulary), as in run and prepared-data folders
    README.md           the model card: structure, training data, recipe, measured perplexity
    SHA256SUMS          sha256 of every other file (``sha256sum -c SHA256SUMS`` checks them too)

A run folder written by ``gcnn train`` holds the first three, so everything that reads a run folder reads a
pretrained folder as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcnn import __version__
from gcnn.data.vocab import VOCAB_FILE, Vocabulary
from gcnn.errors import CheckpointError, GcnnError
from gcnn.io import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes, load_model, save_model
from gcnn.lm import LanguageModel

CARD_NAME = "README.md"
CHECKSUMS_NAME = "SHA256SUMS"
RUN_NAME = "run.json"
REQUIRED = (CONFIG_NAME, WEIGHTS_NAME, VOCAB_FILE)
# run.json's train_config keys shown in the model card's recipe, in this order (the rest stay in run.json)
RECIPE_KEYS = (
    "model", "optimizer", "lr", "momentum", "weight_decay", "clip_norm", "schedule", "warmup_updates",
    "plateau_factor", "batch_size", "context", "accum_steps", "max_updates", "max_epochs", "max_minutes", "precision",
    "seed",
)


@dataclass
class ModelCard:
    """What a pretrained folder's README.md says beyond the model's own structure.

    ``perplexity`` maps a description of what was measured (e.g. ``"validation (best)"``) to the perplexity.
    """

    source: str = "saved with gcnn.hub.save_pretrained"
    training_data: str = "not recorded"
    recipe: dict[str, Any] = field(default_factory=dict)
    perplexity: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "ModelCard":
        """The card of a ``gcnn train`` run folder, from its run.json (data, recipe, best validation perplexity)."""
        run_dir = Path(run_dir)
        path = run_dir / RUN_NAME
        card = cls(source=f"exported from the run folder {run_dir}")
        if not path.is_file():
            card.notes.append(f"{path} was not found, so the training data and recipe are not recorded")
            return card
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: damaged ({exc})") from None
        if not isinstance(run, dict):
            raise CheckpointError(f"{path}: damaged (expected a JSON object)")
        card.training_data = _describe_data(run.get("data"))
        train_config = run.get("train_config") if isinstance(run.get("train_config"), dict) else {}
        card.recipe = {k: train_config[k] for k in RECIPE_KEYS if train_config.get(k) is not None}
        for key in ("updates", "epochs", "tokens", "train_seconds", "device", "world_size", "status", "stop_reason"):
            if run.get(key) is not None:
                card.recipe[key] = run[key]
        if isinstance(run.get("best_valid_ppl"), (int, float)):
            card.perplexity["validation, best checkpoint"] = float(run["best_valid_ppl"])
        return card

    def measure_perplexity(self, model: LanguageModel, vocab: Vocabulary, data: str | Path, split: str = "test") -> float:
        """Measure the perplexity of ``model`` on a split of a prepared-data folder (whose vocabulary must be
        ``vocab``), record it in the card and return it."""
        from gcnn.data import PreparedData
        from gcnn.evaluate import evaluate_split

        prepared = PreparedData.open(data)
        if prepared.vocab != vocab:
            raise CheckpointError(
                f"{data}: its vocabulary ({len(prepared.vocab):,} tokens) is not the model's ({len(vocab):,} tokens)"
            )
        result = evaluate_split(model, prepared, split)
        self.perplexity[f"{split} split of `{data}` ({result.mode} mode, {result.tokens:,} tokens)"] = result.perplexity
        return result.perplexity

    def render(self, model: LanguageModel, vocab: Vocabulary) -> str:
        """The README.md text for ``model`` and ``vocab``."""
        perplexity = [(k, f"{v:.2f}") for k, v in self.perplexity.items()]
        sections = {
            "Model": _table(("", ""), _model_rows(model, vocab)),
            "Training data": [self.training_data],
            "Recipe": [f"- {k}: {_format_value(v)}" for k, v in self.recipe.items()] or ["not recorded"],
            "Perplexity": _table(("measured on", "perplexity"), perplexity) if perplexity else ["not measured"],
            "Source": [self.source, *(["", *[f"- {note}" for note in self.notes]] if self.notes else [])],
            "Use": [
                "```python",
                "from gcnn.hub import load_pretrained",
                "",
                'model, vocab = load_pretrained("THIS_FOLDER")',
                "```",
                "",
                f"Files: `{CONFIG_NAME}` (config), `{WEIGHTS_NAME}` (weights), `{VOCAB_FILE}` (vocabulary), "
                f"`{CHECKSUMS_NAME}` (check with `sha256sum -c {CHECKSUMS_NAME}`).",
            ],
        }
        lines = [
            "---",  # Hugging Face model-card metadata
            "library_name: gcnn",
            "tags: [language-modeling, text-generation]",
            "---",
            "",
            "# gcnn language model",
            "",
            f"A language model saved by gcnn {__version__}, the library for Gated Convolutional Networks "
            "(Dauphin et al., 2017, https://arxiv.org/abs/1612.08083).",
            "",
        ]
        for title, body in sections.items():
            lines += [f"## {title}", "", *body, ""]
        return "\n".join(lines)


def save_pretrained(
    model: LanguageModel, directory: str | Path, vocab: Vocabulary, *, card: ModelCard | None = None
) -> Path:
    """Write ``model`` with its vocabulary and a model card into ``directory`` (created if needed).

    The files are first written to a temporary folder beside ``directory`` and then moved in, checksums last, so an
    interruption never leaves a folder that loads as something it is not.
    """
    directory = Path(directory)
    if len(vocab) != model.config.vocab_size:
        raise CheckpointError(
            f"the vocabulary has {len(vocab):,} tokens but the model was built for "
            f"vocab_size {model.config.vocab_size:,}"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_model(model, staging)
        vocab.save(staging / VOCAB_FILE)
        (staging / CARD_NAME).write_text((card or ModelCard()).render(model, vocab), encoding="utf-8")
        _move_into(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_checksums(directory)
    return directory


def load_pretrained(directory: str | Path, *, map_location: str = "cpu") -> tuple[LanguageModel, Vocabulary]:
    """The model (in eval mode) and vocabulary of a pretrained or run folder, after checking that every file is
    there, matches its checksum where SHA256SUMS lists one, and that weights, config and vocabulary agree."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model folder")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory}: missing {', '.join(missing)} (a pretrained folder holds {', '.join(REQUIRED)})"
        )
    verify_checksums(directory, REQUIRED)
    model = load_model(directory, map_location=map_location).eval()
    vocab_path = directory / VOCAB_FILE
    try:
        vocab = Vocabulary.load(vocab_path)
    except GcnnError as exc:
        raise CheckpointError(str(exc)) from None
    if len(vocab) != model.config.vocab_size:
        raise CheckpointError(
            f"{vocab_path}: the vocabulary has {len(vocab):,} tokens but {directory / CONFIG_NAME} has vocab_size "
            f"{model.config.vocab_size:,}: the files belong to different models"
        )
    return model, vocab


def from_pretrained(directory: str | Path, *, map_location: str = "cpu") -> LanguageModel:
    """The model of a pretrained folder, checked as :func:`load_pretrained` does."""
    return load_pretrained(directory, map_location=map_location)[0]


def write_checksums(directory: str | Path) -> Path:
    """(Re)write SHA256SUMS for every file in ``directory``, in ``sha256sum`` format."""
    directory = Path(directory)
    names = sorted(
        p.name for p in directory.iterdir() if p.is_file() and p.name != CHECKSUMS_NAME and not p.name.startswith(".")
    )
    text = "".join(f"{file_sha256(directory / name)}  {name}\n" for name in names)
    atomic_write_bytes(directory / CHECKSUMS_NAME, text.encode())
    return directory / CHECKSUMS_NAME


def verify_checksums(directory: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Check the files listed in SHA256SUMS (only ``names`` of them, if given); nothing to do without the file."""
    directory = Path(directory)
    sums_path = directory / CHECKSUMS_NAME
    if not sums_path.is_file():
        return
    expected = _read_checksums(sums_path)
    for name, digest in expected.items():
        if names is not None and name not in names:
            continue
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {sums_path} but missing")
        if file_sha256(path) != digest:
            raise CheckpointError(
                f"{path}: damaged or changed since it was saved (its sha256 differs from {sums_path})"
            )


def _read_checksums(path: Path) -> dict[str, str]:
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CheckpointError(f"{path}, line {number}: damaged (expected '<sha256>  <file name>')")
        out[name.lstrip("*")] = digest
    return out


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _move_into(staging: Path, directory: Path) -> None:
    """Move the staged files into ``directory``: a rename of the whole folder when it does not exist yet, else
    file by file with the stale checksums removed first (each move is atomic)."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a folder")
    (directory / CHECKSUMS_NAME).unlink(missing_ok=True)
    for path in staging.iterdir():
        os.replace(path, directory / path.name)


def _model_rows(model: LanguageModel, vocab: Vocabulary) -> list[tuple[str, str]]:
    config = model.config
    rf = model.receptive_field
    cutoffs = list(getattr(config, "adaptive_cutoffs", ()))
    return [
        ("model type", getattr(config, "model_type", type(model).__name__)),
        ("architecture", getattr(config, "arch", None) or "custom"),
        ("structure", config.describe() if hasattr(config, "describe") else "-"),
        ("parameters", f"{model.num_parameters():,}"),
        ("vocabulary", f"{len(vocab):,} tokens"),
        ("receptive field", f"{rf} tokens" if rf is not None else "unbounded"),
        ("output layer", f"adaptive softmax, cutoffs {cutoffs}" if cutoffs else "full softmax"),
    ]


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]


def _describe_data(data: Any) -> str:
    if not isinstance(data, dict):
        return "not recorded"
    parts = [f"prepared data `{data.get('path', '?')}`"]
    if data.get("mode"):
        parts.append(f"{data['mode']} mode")
    if data.get("vocab_size"):
        parts.append(f"vocabulary of {data['vocab_size']:,} tokens")
    if data.get("vocab_sha256"):
        parts.append(f"vocabulary sha256 {data['vocab_sha256']}")
    return ", ".join(parts)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
