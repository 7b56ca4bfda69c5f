"""Model types and named architectures beyond the GCNN (the baselines), so that every interface that takes an
``--arch`` name or a saved config builds any of them.

A model type is registered with :func:`register_type` (its config class must have ``from_dict``/``to_dict`` and a
``model_type`` field); a named architecture with :func:`register_arch`. ``gcnn.baselines`` registers its models
when imported, which happens lazily here.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from gcnn.errors import ConfigError

_TYPES: dict[str, tuple[type, type]] = {}
_ARCHS: dict[str, tuple[str, Callable[..., Any]]] = {}  # name -> (description, config_factory(vocab_size, **kw))
_loaded = False


def register_type(model_type: str, config_cls: type, model_cls: type) -> None:
    _TYPES[model_type] = (config_cls, model_cls)


def register_arch(name: str, description: str, config_factory: Callable[..., Any]) -> None:
    _ARCHS[name] = (description, config_factory)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from gcnn.config import ModelConfig
    from gcnn.model import GatedConvLM

    register_type("gcnn", ModelConfig, GatedConvLM)
    try:
        importlib.import_module("gcnn.baselines")
    except ModuleNotFoundError as exc:
        if exc.name != "gcnn.baselines":
            raise


def is_registered(name: str) -> bool:
    _load()
    return name.lower() in _ARCHS


def extra_architectures() -> dict[str, str]:
    """name -> description of the registered non-GCNN architectures."""
    _load()
    return {name: desc for name, (desc, _) in _ARCHS.items()}


def build(name: str, vocab_size: int, **overrides: Any):
    _load()
    config = _ARCHS[name.lower()][1](vocab_size, **overrides)
    return model_from_config(config)


def config_for(name: str, vocab_size: int, **overrides: Any):
    """The config of any named architecture, GCNN or baseline."""
    _load()
    if name.lower() in _ARCHS:
        return _ARCHS[name.lower()][1](vocab_size, **overrides)
    from gcnn.architectures import get_config

    return get_config(name, vocab_size, **overrides)


def model_from_config(config: Any):
    _load()
    return _TYPES[config.model_type][1](config)


def config_from_dict(data: dict[str, Any], *, source: str = "config"):
    _load()
    model_type = data.get("model_type", "gcnn")
    if model_type not in _TYPES:
        raise ConfigError(f"{source}: unknown model_type {model_type!r}; known: {', '.join(_TYPES)}")
    return _TYPES[model_type][0].from_dict(data, source=source)
