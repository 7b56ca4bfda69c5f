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
    down to ``floor`` at update ``total``. With ``total = 0`` the cosine follows :attr:`time_fraction` instead
    (the share of a run's time budget spent, set by :class:`Schedule`)."""

    def __init__(self, warmup: int, total: int, floor: float, cosine: bool) -> None:
        self.warmup, self.total, self.floor, self.cosine = warmup, total, floor, cosine
        self.time_fraction = 0.0

    def __call__(self, update: int) -> float:
        if update < self.warmup:
            return (update + 1) / self.warmup
        if not self.cosine:
            return 1.0
        if self.total:
            progress = min(1.0, (update - self.warmup) / max(1, self.total - self.warmup))
        else:
            progress = min(1.0, self.time_fraction)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """The learning-rate schedule of a run: :meth:`after_update` and :meth:`after_validation` move it on.

    A cosine schedule whose run has no update or epoch bound (``total_updates = 0``, only ``max_minutes``) decays
    over wall-clock time instead: :meth:`after_update` gets the seconds the run has taken so far (resumes included)
    and the cosine reaches ``min_lr`` when they reach ``max_minutes``. Such a run fits a time budget on any machine,
    at the price of not being bit-for-bit repeatable (the lr at update u depends on how fast u came)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, total_updates: int) -> None:
        self.kind = config.schedule
        self.budget_seconds = 60 * config.max_minutes if self.kind == "cosine" and not total_updates else 0.0
        self._multiplier: WarmupCosine | None = None  # the LambdaLR's multiplier (cosine and constant schedules)
        if self.kind == "plateau":
            self._torch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience,
                min_lr=config.min_lr,
            )
        else:
            multiplier = WarmupCosine(config.warmup_updates, total_updates, config.min_lr / config.lr,
                                      cosine=self.kind == "cosine")
            self._multiplier = multiplier
            self._torch = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        self._optimizer = optimizer

    @property
    def lr(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"])

    @property
    def by_time(self) -> bool:
        return self.budget_seconds > 0

    def after_update(self, seconds: float = 0.0) -> None:
        """Move on one update; ``seconds``: the run's wall-clock time so far (used by a time-budget cosine)."""
        if self.by_time:  # only a cosine schedule has a time budget, and so a multiplier
            self._multiplier.time_fraction = seconds / self.budget_seconds
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
