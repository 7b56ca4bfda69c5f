"""Training configuration: one :class:`TrainConfig` dataclass, built in layers and checked key by key.

Layers, each overriding the previous one: the defaults below < a recipe TOML file (``configs/*.toml``) < ``--set
key=value`` options < explicit command-line flags. A recipe has two tables::

    [model]                 # arch = "NAME" and/or any ModelConfig field (dropout, adaptive_cutoffs, blocks, ...)
    arch = "gcnn-small"
    dropout = 0.1

    [train]                 # any TrainConfig field
    optimizer = "adamw"
    lr = 2e-3

``--set model.dropout=0.2`` and ``--set train.lr=0.5`` (or just ``--set lr=0.5``) override single keys; the value is
read as a TOML value (``0.5``, ``true``, ``[2000, 10000]``, ``"text"``), and a bare word is taken as a string.
A key that does not exist, or a value of the wrong type, raises :class:`~gcnn.errors.ConfigError` naming the key
and where it came from.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from gcnn.architectures import config_from_table
from gcnn.config import read_toml
from gcnn.errors import ConfigError, option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("nesterov", "sgd", "adamw")
SCHEDULES = ("plateau", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything a training run needs. Counts of 0 mean "no limit" / "off" where noted.

    Data and model:
        data: prepared-data folder (``gcnn prepare``). out: the run folder.
        model: the ``[model]`` table: ``arch`` (a name ``gcnn archs`` lists) and/or ModelConfig fields; a table
            with ``blocks`` and no ``arch`` is a custom architecture. ``vocab_size`` always comes from the data.
    Optimisation (paper recipe: Nesterov momentum 0.99, lr 1, clipping 0.1, reduce-on-plateau 0.5):
        optimizer: ``nesterov``, ``sgd`` (heavy-ball momentum) or ``adamw``. lr, momentum, weight_decay (on
            weight matrices and embeddings, not on biases and weight-norm gains), adam_betas, adam_eps.
        clip_norm: clip the global gradient norm to this (0: no clipping).
        schedule: ``plateau`` (multiply lr by plateau_factor when the validation loss has not improved for
            plateau_patience validations), ``cosine`` (linear warmup over warmup_updates, then cosine decay to
            min_lr at the last update; with only max_minutes bounding the run, at the end of its time budget,
            counted in wall-clock seconds across resumes) or ``constant`` (warmup, then lr).
    Batches:
        batch_size: sequences per update, over all processes and accumulation steps together, so a recipe trains
            the same whatever the number of GPUs. context: tokens per sequence. accum_steps: micro-batches per update.
    Run length (the first bound reached ends the run; at least one must be set):
        max_updates (counted over the whole run, resumes included), max_epochs, max_minutes (this invocation).
    Validation and checkpoints:
        valid_every: validate every N updates (0: only at each epoch end; epoch ends always validate).
        early_stop_patience: stop the run when this many scheduled validations in a row have not lowered the
            validation loss by more than min_delta below the best seen so far (0: no early stopping). The run
            folder's model is then the best one by validation (as always), run.json says why the run stopped.
        min_delta: the least decrease of the validation loss (nats per token) that counts as an improvement for
            early stopping (the best model is still kept whatever the decrease).
        valid_max_tokens: validate on at most this many tokens (0: the whole split). keep_last: checkpoints kept
        besides the best.
    Numerics: precision (``fp32``, ``bf16``, ``fp16``), device (``auto``, ``cpu``, ``cuda``), seed,
        max_bad_updates: stop after this many consecutive updates skipped for a non-finite loss or gradient.
        threads: CPU threads for torch's intra-op pool (0: torch's default, one per core).
    Distributed (under torchrun): dist_timeout: seconds a process waits for the others (to join the process group,
        in a collective, at a checkpoint barrier) before it stops with an error naming the lost peer; bounds the
        hang when a node dies. Must exceed the longest checkpoint write or validation.
    Output: log_every (updates between metric lines), tensorboard (also write TensorBoard events if installed).
    """

    data: str = ""
    out: str = ""
    model: dict = field(default_factory=dict)
    optimizer: str = "nesterov"
    lr: float = 1.0
    momentum: float = 0.99
    weight_decay: float = 0.0
    adam_betas: list = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-8
    clip_norm: float = 0.1
    schedule: str = "plateau"
    warmup_updates: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 0
    min_lr: float = 0.0
    batch_size: int = 32
    context: int = 128
    accum_steps: int = 1
    max_updates: int = 0
    max_epochs: int = 0
    max_minutes: float = 0.0
    valid_every: int = 0
    valid_max_tokens: int = 0
    early_stop_patience: int = 0
    min_delta: float = 0.0
    keep_last: int = 2
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 1
    max_bad_updates: int = 5
    threads: int = 0
    dist_timeout: float = 600.0
    log_every: int = 10
    tensorboard: bool = True

    def validate(self) -> None:
        """Check ranges and choices; raise ConfigError naming the key."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr!r}")
        for name in ("momentum", "plateau_factor"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not (_is_number(self.dist_timeout) and self.dist_timeout > 0):
            raise ConfigError(f"train.dist_timeout must be a number of seconds > 0, got {self.dist_timeout!r}")
        for name in ("weight_decay", "adam_eps", "clip_norm", "min_lr", "max_minutes", "min_delta"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("batch_size", "context", "accum_steps", "max_bad_updates", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("threads", "warmup_updates", "plateau_patience", "max_updates", "max_epochs", "valid_every",
                     "valid_max_tokens", "early_stop_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if len(self.adam_betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"train.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        self.adam_betas = [float(b) for b in self.adam_betas]
        if self.batch_size % self.accum_steps:
            raise ConfigError(
                f"train.batch_size {self.batch_size} must be a multiple of train.accum_steps {self.accum_steps}"
            )
        if self.schedule == "plateau" and self.warmup_updates:
            raise ConfigError("train.warmup_updates works with the cosine and constant schedules, not plateau")
        if not (self.max_updates or self.max_epochs or self.max_minutes):
            raise ConfigError(
                f"no bound on the run: set {option('max_updates')}, {option('max_epochs')} or {option('max_minutes')} "
                "(or the recipe's)"
            )
        if not self.data:
            raise ConfigError(f"no data: give {option('data')} PREPARED_FOLDER (made by `gcnn prepare`)")
        if not self.out:
            raise ConfigError(f"no run folder: give {option('out')} RUN_DIR")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        """A validated config from plain data (as ``to_dict`` or a ``[train]`` table plus ``model``)."""
        data = dict(data)
        config = cls(model=dict(data.pop("model", {})))
        apply_values(config, data, source=source)
        config.validate()
        return config


# ----------------------------------------------------------------------------------------------- building in layers
def recipes() -> list[str]:
    """The names of the recipes that ship with gcnn (``gcnn/recipes/*.toml``; ``configs/`` in the repository)."""
    return sorted(p.name[: -len(".toml")] for p in resources.files("gcnn.recipes").iterdir() if p.name.endswith(".toml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: ``name_or_path`` itself where it exists, else the shipped recipe of that name (with or without
    ``.toml``, or as ``configs/NAME.toml``), found through importlib.resources so that it works from a wheel."""
    path = Path(name_or_path)
    if path.exists():
        return path
    name = path.name[: -len(".toml")] if path.name.endswith(".toml") else path.name
    if (path.parent == Path(".") or path.parent.name == "configs") and name in recipes():
        return Path(str(resources.files("gcnn.recipes") / f"{name}.toml"))
    raise ConfigError(
        f"{option('recipe')} {name_or_path}: no such config file (nor a shipped recipe: {', '.join(recipes())})"
    )


def load_recipe(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a recipe TOML file (a path, or the name of a shipped recipe: :func:`find_recipe`) into
    ``{"train": {...}, "model": {...}}``; unknown tables are rejected."""
    path = find_recipe(path)
    doc = read_toml(path)
    unknown = sorted(set(doc) - {"train", "model"})
    if unknown:
        raise ConfigError(f"{path}: unknown table or key(s) {', '.join(unknown)}; a recipe has [model] and [train]")
    for table in ("train", "model"):
        if not isinstance(doc.get(table, {}), dict):
            raise ConfigError(f"{path}: '{table}' must be a table ([{table}])")
    return {"train": dict(doc.get("train", {})), "model": dict(doc.get("model", {}))}


def parse_set(item: str) -> tuple[str, str, Any]:
    """``"model.dropout=0.2"`` -> ("model", "dropout", 0.2); a key without a table is a train key."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"{option('sets', 'sets item')} {item!r}: expected key=value, e.g. train.lr=0.5 or model.dropout=0.2"
        )
    table, dot, name = key.rpartition(".")
    if not dot:
        table = "train"
    if table not in ("train", "model") or not name:
        raise ConfigError(f"{option('sets', 'sets item')} {item!r}: the key must be train.NAME or model.NAME (or just NAME for train)")
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word: a string
    return table, name, value


def build_config(
    *, recipe: str | Path | None = None, sets: Iterable[str] = (), flags: Mapping[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Layer ``base`` (or the defaults) < the recipe file < ``--set`` items < explicit flags, then validate.

    ``flags`` are train keys, plus ``arch`` which sets ``model.arch``; None values are ignored.
    """
    config = dataclasses.replace(base, model=dict(base.model)) if base is not None else TrainConfig()
    if recipe is not None:
        tables = load_recipe(recipe)
        apply_values(config, tables["train"], source=str(find_recipe(recipe)))
        config.model.update(tables["model"])
    for item in sets:
        table, name, value = parse_set(item)
        if table == "model":
            config.model[name] = value
        else:
            apply_values(config, {name: value}, source=f"{option('sets', 'sets item')} {item}")
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name == "arch":
            config.model["arch"] = value
        else:
            apply_values(config, {name: value}, source=option(name))
    config.validate()
    return config


def apply_values(config: TrainConfig, values: Mapping[str, Any], *, source: str) -> None:
    """Set train keys on ``config`` after checking each key exists and its value has the field's type."""
    hints = typing.get_type_hints(TrainConfig)
    del hints["model"]  # the [model] table, set as a whole
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown train key {key!r}; known keys: {', '.join(sorted(hints))}")
        setattr(config, key, _typed(key, value, hints[key], source))


def _typed(key: str, value: Any, kind: Any, source: str) -> Any:
    origin = typing.get_origin(kind) or kind
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: _is_number(value) and math.isfinite(value),
        str: isinstance(value, str),
        list: isinstance(value, (list, tuple)),
        dict: isinstance(value, Mapping),
    }[origin]
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
                    list: "a list", dict: "a table"}[origin]
        raise ConfigError(f"{source}: train.{key} must be {expected}, got {value!r}")
    if origin is float:
        return float(value)
    if origin in (list, dict):
        return origin(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"train.{name} must be one of {', '.join(choices)}; got {value!r}")


def resolve_model_config(table: Mapping[str, Any], vocab_size: int) -> Any:
    """The model config of a ``[model]`` table for the data's vocabulary: ``arch`` names a registered architecture
    (GCNN or baseline) whose fields the other keys override; without ``arch``, ``blocks`` makes a custom GCNN (or
    ``model_type`` and its fields another model). See :func:`gcnn.architectures.config_from_table`."""
    if "vocab_size" in table:
        raise ConfigError("model.vocab_size cannot be set: it comes from the prepared data's vocabulary")
    if "arch" not in table and "blocks" not in table and "model_type" not in table:
        raise ConfigError(
            f"no architecture: give {option('arch')} NAME, or a [model] table with arch = NAME or blocks = [...]"
        )
    try:
        return config_from_table(table, vocab_size, source="model")
    except TypeError as exc:
        raise ConfigError(f"model: {exc}") from None
