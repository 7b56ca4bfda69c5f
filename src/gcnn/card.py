"""The model card: the README.md of an exported model folder (structure, training data, recipe, perplexities).

Plain data and text only: the card records what it is told (:meth:`ModelCard.from_run` reads a run folder's
run.json; :meth:`ModelCard.add_evaluation` records a figure measured by ``gcnn eval``'s code) and renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcnn.errors import CheckpointError
from gcnn.layout import CHECKSUMS_FILE, RUN_FILE
from gcnn.version import __version__

if TYPE_CHECKING:
    from gcnn.data.vocab import Vocabulary

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
        path = run_dir / RUN_FILE
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
            card.perplexity[_validation_description(train_config)] = float(run["best_valid_ppl"])
        return card

    def add_evaluation(self, description: str, perplexity: float) -> None:
        """Record a perplexity measured by gcnn's evaluation (``description`` says on what, and how)."""
        self.perplexity[description] = float(perplexity)

    def render(self, model: Any, vocab: Vocabulary | None) -> str:
        """The README.md text for ``model`` and ``vocab`` (None: saved without a vocabulary)."""
        perplexity = [(k, f"{v:.2f}") for k, v in self.perplexity.items()]
        sections = {
            "Model": _table(("", ""), _model_rows(model, vocab)),
            "Training data": [self.training_data],
            "Recipe": [f"- {k}: {_format_value(v)}" for k, v in self.recipe.items()] or ["not recorded"],
            "Perplexity": _table(("measured on", "perplexity"), perplexity) if perplexity else ["not measured"],
            "Source": [self.source, *(["", *[f"- {note}" for note in self.notes]] if self.notes else [])],
            "Use": [
                "```python",
                "import gcnn",
                "",
                'model = gcnn.load("THIS_FOLDER")   # checks every file; model.vocab is the vocabulary',
                "```",
                "",
                "Files: `config.json` (config), `model.safetensors` (weights), "
                + ("`vocab.json` (vocabulary), " if vocab is not None else "")
                + f"`{CHECKSUMS_FILE}` (check with `sha256sum -c {CHECKSUMS_FILE}`).",
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


def _model_rows(model: Any, vocab: Vocabulary | None) -> list[tuple[str, str]]:
    config = model.config
    rf = model.receptive_field
    cutoffs = list(getattr(config, "adaptive_cutoffs", ()))
    return [
        ("model type", getattr(config, "model_type", type(model).__name__)),
        ("architecture", getattr(config, "arch", None) or "custom"),
        ("structure", config.describe() if hasattr(config, "describe") else "-"),
        ("parameters", f"{model.num_parameters():,}"),
        ("vocabulary", f"{len(vocab):,} tokens" if vocab is not None else "not saved with the model"),
        ("receptive field", f"{rf} tokens" if rf is not None else "unbounded"),
        ("output layer", f"adaptive softmax, cutoffs {cutoffs}" if cutoffs else "full softmax"),
        ("input embedding", _embedding_text(config)),
    ]


def _embedding_text(config: Any) -> str:
    kind = "adaptive input (Baevski & Auli 2019)" if getattr(config, "adaptive_input", False) else "a table"
    tied = ", tied to the output layer" if getattr(config, "tie_embeddings", False) else ""
    drop = getattr(config, "embed_dropout", 0.0)
    return f"{kind}{tied}" + (f", word-type dropout {drop:g}" if drop else "")


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]


def _validation_description(train_config: dict[str, Any]) -> str:
    """What the validation perplexity recorded during training is, exactly."""
    context = train_config.get("context")
    limit = train_config.get("valid_max_tokens") or 0
    blocks = f"in training-time blocks of {context} tokens" if context else "in training-time blocks"
    part = f"its first {limit:,} tokens" if limit else "the whole split"
    return (f"validation split during training ({part}, {blocks}; each block starts without context, unlike "
            f"`gcnn eval`), best checkpoint")


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
