"""Training: the trainer, optimisers and schedules, checkpoints, distributed setup (the model never imports this).

>>> from gcnn.train import build_config, train
>>> config = build_config(recipe="configs/shakespeare-cpu.toml", flags={"data": "data/shakespeare", "out": "runs/s"})
>>> result = train(config)          # -> RunResult; result.summary() is the one-line report
"""

from gcnn.train.config import TrainConfig, build_config, load_recipe, resolve_model_config
from gcnn.train.trainer import RunResult, TrainingError, ValidationEvent, load_run_config, train

__all__ = [
    "RunResult",
    "TrainConfig",
    "TrainingError",
    "ValidationEvent",
    "build_config",
    "load_recipe",
    "load_run_config",
    "resolve_model_config",
    "train",
]
