"""What every language model in gcnn shares: loss, target log-probabilities and next-token distributions.

A model subclasses :class:`LanguageModel` and implements ``hidden_states(tokens, cache)`` (batch, time) ->
(batch, time, dim) and ``new_cache(batch_size)``; its output layer is ``self.softmax`` (see :mod:`gcnn.softmax`).
Training, evaluation, scoring and generation only use this interface, so the GCNN and the LSTM and Transformer
baselines are interchangeable.

Incremental decoding: pass the same ``cache`` object to successive calls; each call continues the sequence where
the previous one stopped, and gives the same results as one call over the concatenated tokens.

This module and the model files (:mod:`gcnn.model`, :mod:`gcnn.baselines`, :mod:`gcnn.softmax`) are the maths only:
they import nothing of evaluation, decoding, files, training or the command line (docs/architecture.md). Loading,
saving, scoring and generation are functions of the layers above, which take a model: ``gcnn.load``,
``gcnn.save_pretrained``, ``gcnn.evaluate_split``, ``gcnn.score_texts``, ``gcnn.generate_text``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100  # target value at positions that do not count (padding, <s>)


@dataclass
class LMOutput:
    """hidden: (batch, time, dim) final hidden states. With targets: ``loss`` = mean negative log-likelihood over
    the counted positions, ``target_log_probs`` (batch, time) natural-log probabilities of each target (0 where the
    target is IGNORE_INDEX), ``num_tokens`` = number of counted positions."""

    hidden: Tensor
    loss: Tensor | None = None
    target_log_probs: Tensor | None = None
    num_tokens: int = 0


class LanguageModel(nn.Module):
    """The base of every model. Besides ``config`` and ``softmax``, two attributes travel with a loaded model:
    ``vocab`` (the :class:`gcnn.data.Vocabulary` it was trained with, or None) and ``trained_positions`` (for a model
    with learned positions trained on shorter sequences than it could take, that length; else None)."""

    config: Any
    softmax: nn.Module
    vocab: Any = None
    trained_positions: int | None = None

    # ---- implemented by each model
    def hidden_states(self, tokens: Tensor, cache: Any = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_cache(self, batch_size: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def receptive_field(self) -> int | None:
        """Tokens of context that can influence a prediction (None: unbounded, as in recurrent models)."""
        return None

    # ---- shared
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, tokens: Tensor, targets: Tensor | None = None, cache: Any = None) -> LMOutput:
        """tokens (batch, time) int64; targets (batch, time) int64 with IGNORE_INDEX where a position does not count."""
        hidden = self.hidden_states(tokens, cache)
        if targets is None:
            return LMOutput(hidden=hidden)
        if targets.shape != tokens.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} differs from tokens shape {tuple(tokens.shape)}")
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        flat_targets = targets.reshape(-1)
        keep = flat_targets != IGNORE_INDEX
        rows = torch.nonzero(keep, as_tuple=True)[0]
        if rows.numel() == flat_targets.numel():
            log_probs = self.softmax.target_log_probs(flat_hidden, flat_targets)
        else:
            selected = self.softmax.target_log_probs(flat_hidden.index_select(0, rows), flat_targets.index_select(0, rows))
            log_probs = torch.zeros(flat_targets.shape, dtype=selected.dtype, device=selected.device)
            log_probs = log_probs.index_copy(0, rows, selected)
        count = rows.numel()
        loss = -log_probs.sum() / max(count, 1)
        return LMOutput(hidden=hidden, loss=loss, target_log_probs=log_probs.view(targets.shape), num_tokens=count)

    def next_token_log_probs(self, tokens: Tensor, positions: Tensor | list[int] | None = None, cache: Any = None) -> Tensor:
        """(batch, time) tokens -> (batch, time, vocab) float32 log-distributions of the next token.

        ``positions`` selects time positions (a list or 1-D index tensor; negative ones count from the end, so
        ``[-1]`` is the last), giving (batch, len(positions), vocab).
        """
        hidden = self.hidden_states(tokens, cache)
        if positions is not None:
            index = torch.as_tensor(positions, dtype=torch.long, device=hidden.device).reshape(-1)
            time = hidden.shape[1]
            if index.numel() and (index.min() < -time or index.max() >= time):
                raise IndexError(f"positions {index.tolist()} out of range for a sequence of {time} tokens")
            hidden = hidden.index_select(1, index % time)  # negative positions count from the end
        return self.softmax.log_probs(hidden)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_cache_batch(cache_batch: int, tokens: Tensor) -> None:
    """A cache holds the state of a fixed number of sequences: refuse tokens of another batch size."""
    if tokens.shape[0] != cache_batch:
        raise ValueError(f"the cache holds {cache_batch} sequences but the tokens have batch size {tokens.shape[0]}")


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode`` for the duration, restoring the model's training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
