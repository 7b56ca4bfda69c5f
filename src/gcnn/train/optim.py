"""Optimisers and learning-rate schedules, built from a :class:`~gcnn.train.config.TrainConfig`.

* ``nesterov`` / ``sgd``: torch's SGD with (Nesterov) momentum, the paper's choice at lr ~1 with momentum 0.99.
* ``adamw``: torch's AdamW, the usual alternative with a warmup and cosine decay.

Weight decay applies to weight matrices and embeddings (tensors of 2 or more dimensions), not to biases or the
weight-norm gains, whose decay would only shrink the scale weight normalization factors out.

The schedule is stepped after every update (``cosine``, ``constant``) or after every scheduled validation
(``plateau``, torch's ReduceLROnPlateau). Its state is plain numbers, so checkpoints keep it as JSON.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gcnn.train.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over ``model``'s parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.adam_betas), eps=config.adam_eps)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=config.optimizer == "nesterov" and config.momentum > 0
    )


class WarmupCosine:
    """lr multiplier at update u: linear warmup to 1 over ``warmup`` updates, then (cosine only) a half cosine
    down to ``floor`` at update ``total``."""

    def __init__(self, warmup: int, total: int, floor: float, cosine: bool) -> None:
        self.warmup, self.total, self.floor, self.cosine = warmup, total, floor, cosine

    def __call__(self, update: int) -> float:
        if update < self.warmup:
            return (update + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = min(1.0, (update - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """The learning-rate schedule of a run: :meth:`after_update` and :meth:`after_validation` move it on."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, total_updates: int) -> None:
        self.kind = config.schedule
        if self.kind == "plateau":
            self._torch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience,
                min_lr=config.min_lr,
            )
        else:
            multiplier = WarmupCosine(config.warmup_updates, total_updates, config.min_lr / config.lr,
                                      cosine=self.kind == "cosine")
            self._torch = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        self._optimizer = optimizer

    @property
    def lr(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"])

    def after_update(self) -> None:
        if self.kind != "plateau":
            self._torch.step()

    def after_validation(self, valid_loss: float) -> None:
        if self.kind == "plateau":
            self._torch.step(valid_loss)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (the cosine multiplier is rebuilt from the config, not stored)."""
        return {k: v for k, v in self._torch.state_dict().items() if k != "lr_lambdas"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.kind != "plateau":
            state = dict(state, lr_lambdas=[None] * len(self._optimizer.param_groups))
        self._torch.load_state_dict(state)
