"""The one registry: every named architecture (the paper's Table 1, the CPU presets, the LSTM and Transformer
baselines) and every model type, with the functions that turn a name, a dict or a TOML file into a config and a
config into a model.

    get_config("gcnn-8", vocab_size=33278, dropout=0.2)    # a config, any field overridden by keyword
    build_model("lstm-medium", vocab_size=10000)            # a model (GatedConvLM, LSTMLM or TransformerLM)
    list_architectures()                                    # every name, in the order `gcnn archs` shows them
    config_from_dict(json.load(open("config.json")))        # by its model_type
    config_from_file("my-arch.toml", vocab_size=10000)      # [model] arch = NAME + overrides, or blocks = [...]

To add an architecture, add an entry to :data:`ARCHITECTURES`; to add a model type, add its config class
(subclassing :class:`gcnn.config.ConfigBase`) and model class (subclassing :class:`gcnn.lm.LanguageModel`) to
:data:`MODEL_TYPES`.

GCNN notation: ``[k, n]`` = kernel width k, n channels. The first layer of every paper architecture except GCNN-14
is a plain convolution (the table lists it apart from the residual blocks); every later group is a residual block.
Cutoffs of a named architecture at or above the vocabulary size are dropped (a full softmax if none remain);
cutoffs given explicitly are used as given and must fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gcnn.baselines import LSTMLM, TransformerLM
from gcnn.config import Block, ConfigBase, LSTMConfig, ModelConfig, TransformerConfig, fit_cutoffs, read_toml
from gcnn.errors import ConfigError
from gcnn.lm import LanguageModel
from gcnn.model import GatedConvLM

# model_type -> (config class, model class)
MODEL_TYPES: dict[str, tuple[type[ConfigBase], type[LanguageModel]]] = {
    "gcnn": (ModelConfig, GatedConvLM),
    "lstm": (LSTMConfig, LSTMLM),
    "transformer": (TransformerConfig, TransformerLM),
}


@dataclass(frozen=True)
class Architecture:
    """A named architecture: a config class and the values of its fields (all but ``vocab_size``)."""

    description: str
    config_class: type[ConfigBase]
    fields: Mapping[str, Any]


def _plain(k: int, n: int) -> Block:
    return Block(layers=((k, n),), repeat=1, residual=False)


def _res(*layers: tuple[int, int], repeat: int = 1) -> Block:
    return Block(layers=tuple(layers), repeat=repeat, residual=True)


# name -> (description, fields) of the GCNNs. Each paper entry cites its row of the paper's appendix Table 1.
_GCNN: dict[str, tuple[str, dict[str, Any]]] = {
    "gcnn-8": (
        "paper Table 1, WikiText-103",
        dict(embed_dim=280, blocks=(_plain(4, 900), _res((4, 900), repeat=7)), adaptive_cutoffs=(2000, 10000, 50000)),
    ),
    "gcnn-14": (
        "paper Table 1, WikiText-103 (fairseq fconv_lm_dauphin_wikitext103)",
        dict(
            embed_dim=280,
            blocks=(
                _res((6, 850), repeat=3),
                _res((1, 850)),
                _res((5, 850), repeat=4),
                _res((1, 850)),
                _res((4, 850), repeat=3),
                _res((4, 1024)),
                _res((4, 2048)),
            ),
            adaptive_cutoffs=(10000, 20000, 200000),
        ),
    ),
    "gcnn-9": (
        "paper Table 1, Google Billion Word",
        dict(embed_dim=128, blocks=(_plain(4, 807), _res((4, 807), (4, 807), repeat=4)), adaptive_cutoffs=(4000, 40000, 200000)),
    ),
    "gcnn-8b": (
        "paper Table 1, Google Billion Word (bottleneck)",
        dict(
            embed_dim=128,
            blocks=(
                _plain(1, 512),
                _res((1, 128), (5, 128), (1, 512), repeat=3),
                _res((1, 256), (5, 256), (1, 512), repeat=3),
                _res((1, 1024), (1, 1024), (1, 2048)),
            ),
            adaptive_cutoffs=(4000, 40000, 200000),
        ),
    ),
    "gcnn-13": (
        "paper Table 1, Google Billion Word",
        dict(embed_dim=128, blocks=(_plain(4, 1268), _res((4, 1268), (4, 1268), repeat=12)), adaptive_cutoffs=(10000, 40000, 200000)),
    ),
    "gcnn-14b": (
        "paper Table 1, Google Billion Word (bottleneck; fairseq fconv_lm_dauphin_gbw)",
        dict(
            embed_dim=128,
            blocks=(
                _plain(5, 512),
                _res((1, 128), (5, 128), (1, 512), repeat=3),
                _res((1, 512), (5, 512), (1, 1024), repeat=3),
                _res((1, 1024), (5, 1024), (1, 2048), repeat=6),
                _res((1, 1024), (5, 1024), (1, 4096)),
            ),
            adaptive_cutoffs=(10000, 40000, 200000),
        ),
    ),
    # ---- presets for a 2-core CPU
    "gcnn-tiny": (
        "CPU preset for tests: seconds per step",
        dict(embed_dim=16, blocks=(_plain(3, 32), _res((3, 32), repeat=2)), adaptive_cutoffs=(20, 60)),
    ),
    "gcnn-small": (
        "CPU preset for the quickstart (GCNN-8 shape, narrow)",
        dict(embed_dim=128, blocks=(_plain(4, 256), _res((4, 256), repeat=5)), adaptive_cutoffs=(2000, 10000), dropout=0.1),
    ),
    "gcnn-8-narrow": (
        "CPU preset: GCNN-8 shape at about half width, for WikiText-2",
        dict(embed_dim=256, blocks=(_plain(4, 512), _res((4, 512), repeat=7)), adaptive_cutoffs=(2000, 10000), dropout=0.2),
    ),
}


WIKITEXT_CUTOFFS = (2000, 10000)  # the GCNN presets' cutoffs, so comparisons share the output layer
GBW_CUTOFFS = (4000, 40000, 200000)  # GCNN-9 and GCNN-8B's, for the paper's Table 4

# name -> (description, config class, fields) of the baselines
_BASELINES: dict[str, tuple[str, type[ConfigBase], dict[str, Any]]] = {
    "lstm-medium": (
        "LSTM baseline: Zaremba et al. 2014 medium, 2 x 650, dropout 0.5",
        LSTMConfig,
        dict(embed_dim=650, hidden_dim=650, num_layers=2, dropout=0.5, adaptive_cutoffs=WIKITEXT_CUTOFFS),
    ),
    "lstm-large": (
        "LSTM baseline: Zaremba et al. 2014 large, 2 x 1500, dropout 0.65",
        LSTMConfig,
        dict(embed_dim=1500, hidden_dim=1500, num_layers=2, dropout=0.65, adaptive_cutoffs=WIKITEXT_CUTOFFS),
    ),
    "lstm-2048": (
        "LSTM baseline for the paper's Table 4: 1 x 2048 projected to 512 (Jozefowicz et al. 2016 LSTM-2048-512)",
        LSTMConfig,
        dict(embed_dim=512, hidden_dim=2048, num_layers=1, proj_size=512, dropout=0.0, adaptive_cutoffs=GBW_CUTOFFS),
    ),
    "transformer-small": (
        "Transformer baseline: 6 pre-LN layers, width 512, 8 heads, ff 2048, 512 positions",
        TransformerConfig,
        dict(embed_dim=512, num_layers=6, num_heads=8, ff_dim=2048, max_len=512, dropout=0.1,
             adaptive_cutoffs=WIKITEXT_CUTOFFS),
    ),
    "lstm-tiny": (
        "LSTM test preset: seconds per step",
        LSTMConfig,
        dict(embed_dim=16, hidden_dim=32, num_layers=2, dropout=0.0, adaptive_cutoffs=(20, 60)),
    ),
    "transformer-tiny": (
        "Transformer test preset: seconds per step",
        TransformerConfig,
        dict(embed_dim=32, num_layers=2, num_heads=4, ff_dim=64, max_len=64, dropout=0.0, adaptive_cutoffs=(20, 60)),
    ),
}

ARCHITECTURES: dict[str, Architecture] = {
    **{name: Architecture(description, ModelConfig, fields) for name, (description, fields) in _GCNN.items()},
    **{name: Architecture(description, cls, fields) for name, (description, cls, fields) in _BASELINES.items()},
}


def list_architectures() -> list[str]:
    """Every architecture name, GCNNs first."""
    return list(ARCHITECTURES)


def get_config(name: str, vocab_size: int | None = None, **overrides: Any) -> ConfigBase:
    """The config of the named architecture for ``vocab_size`` words, with any field overridden by keyword
    (``get_config("gcnn-8", vocab_size=33278, dropout=0.2)``). Raises ConfigError for an unknown name or field."""
    key = name.lower() if isinstance(name, str) else name
    if key not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    if vocab_size is None:
        raise ConfigError(f"{key}: vocab_size is needed (the number of words of the vocabulary)")
    arch = ARCHITECTURES[key]
    allowed = arch.config_class.field_names() - {"vocab_size", "arch"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)} for {key}; known: {', '.join(sorted(allowed))}")
    fields = dict(arch.fields)
    if "adaptive_cutoffs" not in overrides:
        fields["adaptive_cutoffs"] = fit_cutoffs(fields.get("adaptive_cutoffs", ()), vocab_size)
    if "blocks" in overrides:
        overrides = dict(overrides, blocks=tuple(overrides["blocks"]))
    fields.update(overrides)
    return arch.config_class(vocab_size=vocab_size, arch=key, **fields)


def describe(name: str) -> str:
    """The one-line description of a named architecture."""
    return ARCHITECTURES[name.lower()].description


def model_class(config: ConfigBase) -> type[LanguageModel]:
    return MODEL_TYPES[config.model_type][1]


def model_from_config(config: ConfigBase) -> LanguageModel:
    """A freshly initialised model of ``config``."""
    return model_class(config)(config)


def build_model(name_or_config: str | ConfigBase, vocab_size: int | None = None, **overrides: Any) -> LanguageModel:
    """Build any model by architecture name (``gcnn archs`` lists them) for ``vocab_size`` words, overriding any
    config field by keyword, e.g. ``build_model("gcnn-8", vocab_size=33278, dropout=0.2)``; or from a config."""
    if isinstance(name_or_config, ConfigBase):
        config = name_or_config.replace(**overrides) if overrides else name_or_config
    else:
        config = get_config(name_or_config, vocab_size, **overrides)
    return model_from_config(config)


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> ConfigBase:
    """The config a dict describes (``to_dict`` output, config.json), by its ``model_type`` (default ``gcnn``)."""
    model_type = data.get("model_type", "gcnn")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{source}: unknown model_type {model_type!r}; known: {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[model_type][0].from_dict(data, source=source)


def config_from_table(table: Mapping[str, Any], vocab_size: int | None = None, *, source: str = "[model]") -> ConfigBase:
    """The config of a ``[model]`` table: ``arch = NAME`` (any registered architecture) with fields overriding its
    own, or a whole config (``blocks = [...]`` for a custom GCNN, or ``model_type`` and the fields of another model).
    ``vocab_size`` is used unless the table sets it."""
    table = dict(table)
    if vocab_size is not None:
        table.setdefault("vocab_size", vocab_size)
    name = table.pop("arch", None)
    try:
        if name is not None:
            if not isinstance(name, str):
                raise ConfigError(f"arch must be an architecture name, got {name!r}")
            if "model_type" in table:
                raise ConfigError("give arch or model_type, not both (arch already says which model it is)")
            return get_config(name, table.pop("vocab_size", None), **table)
        if "blocks" not in table and "model_type" not in table:
            raise ConfigError("no architecture: give arch = NAME, or blocks = [...] for a custom GCNN")
        if table.get("vocab_size") is None:
            raise ConfigError("vocab_size is not set (give it in the table or from the data)")
        return config_from_dict(table, source=source)
    except ConfigError as exc:
        if exc.template.startswith(f"{source}:"):
            raise
        raise ConfigError(f"{source}: {exc.template}") from None


def config_from_file(path: str | Path, vocab_size: int | None = None, **overrides: Any) -> ConfigBase:
    """A custom architecture from a TOML file: its ``[model]`` table (or the top level), as :func:`config_from_table`
    reads it, with ``overrides`` on top."""
    path = Path(path)
    doc = read_toml(path)
    table = dict(doc.get("model", doc))
    table.update(overrides)
    return config_from_table(table, vocab_size, source=str(path))
