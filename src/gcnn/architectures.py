"""Named architectures: the paper's Table 1 (appendix) as data, plus presets sized for a 2-core CPU.

``[k, n]`` = kernel width k, n channels. The first layer of every paper architecture except GCNN-14 is a plain
convolution (the table lists it apart from the residual blocks); every later group is a residual block.
The cutoffs are the paper's; :func:`gcnn.build_model` drops those at or above the vocabulary size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gcnn.config import Block, ModelConfig, fit_cutoffs, read_toml
from gcnn.errors import ConfigError


def _plain(k: int, n: int) -> Block:
    return Block(layers=((k, n),), repeat=1, residual=False)


def _res(*layers: tuple[int, int], repeat: int = 1) -> Block:
    return Block(layers=tuple(layers), repeat=repeat, residual=True)


# name -> (description, fields). Each paper entry cites its row of the paper's appendix Table 1.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
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


def list_architectures() -> list[str]:
    return list(ARCHITECTURES)


def get_config(name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a named architecture for ``vocab_size`` words, with fields overridden by keyword.

    Cutoffs from the architecture that are at or above ``vocab_size`` are dropped (a full softmax if none remain);
    cutoffs passed explicitly in ``overrides`` are used as given and must fit.
    """
    key = name.lower()
    if key not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    fields = dict(ARCHITECTURES[key][1])
    if "adaptive_cutoffs" not in overrides:
        fields["adaptive_cutoffs"] = fit_cutoffs(fields.get("adaptive_cutoffs", ()), vocab_size)
    if "blocks" in overrides:
        overrides = dict(overrides, blocks=tuple(overrides["blocks"]))
    known = set(ModelConfig.__dataclass_fields__) - {"model_type", "vocab_size", "arch"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    fields.update(overrides)
    return ModelConfig(vocab_size=vocab_size, arch=key, **fields)


def config_from_file(path: str | Path, vocab_size: int | None = None, **overrides: Any) -> ModelConfig:
    """Read a custom architecture from a TOML file: its ``[model]`` table (or the top level).

    The table may name a base architecture (``arch = "gcnn-8"``) and override fields of it, or give ``blocks``
    itself. ``vocab_size`` comes from the data unless the file sets it.
    """
    path = Path(path)
    doc = read_toml(path)
    table = dict(doc.get("model", doc))
    if vocab_size is not None:
        table.setdefault("vocab_size", vocab_size)
    table.update(overrides)
    base = table.pop("arch", None)
    if base is not None:
        vs = table.pop("vocab_size", None)
        if vs is None:
            raise ConfigError(f"{path}: vocab_size is not set (give it in the file or from the data)")
        try:
            return get_config(base, vs, **table)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return ModelConfig.from_dict(table, source=str(path))
