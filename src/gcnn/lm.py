"""What every language model in gcnn shares: loss, target log-probabilities and next-token distributions.

A model subclasses :class:`LanguageModel` and implements ``hidden_states(tokens, cache)`` (batch, time) ->
(batch, time, dim) and ``new_cache(batch_size)``; its output layer is ``self.softmax`` (see :mod:`gcnn.softmax`).
Training, evaluation, scoring and generation only use this interface, so the GCNN and the LSTM and Transformer
baselines are interchangeable.

Incremental decoding: pass the same ``cache`` object to successive calls; each call continues the sequence where
the previous one stopped, and gives the same results as one call over the concatenated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    config: Any
    softmax: nn.Module

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

    # ---- evaluation, scoring and generation: thin delegations to gcnn.evaluate and gcnn.decoding
    def perplexity(self, data: Any, split: str = "test", **options: Any) -> Any:
        """Perplexity on a split of a prepared-data folder (a path or a PreparedData); returns a
        :class:`gcnn.evaluate.Perplexity`. Options as for :func:`gcnn.evaluate.perplexity`."""
        from gcnn.evaluate import evaluate_split

        return evaluate_split(self, data, split, **options)

    def score(self, texts: str | list[str], vocab: Any, **options: Any) -> list[Any]:
        """Score each text as a sentence: a list of :class:`gcnn.evaluate.SentenceScore` (``.logprob``,
        ``.log10prob``, ``.tokens``, ``.oov``, ``.perplexity``). Options as for :func:`gcnn.evaluate.score_texts`."""
        from gcnn.evaluate import score_texts

        return list(score_texts(self, vocab, [texts] if isinstance(texts, str) else texts, **options))

    def generate(self, prompts: str | list[str], vocab: Any, *, max_tokens: int = 50, **options: Any) -> list[str]:
        """Continue each text prompt with incremental decoding; options (``greedy``, ``temperature``, ``top_k``,
        ``top_p``, ``seed``, ``stop_at_eos``, ``allow_unk``) as for :func:`gcnn.decoding.generate_text`."""
        from gcnn.decoding import generate_text

        return generate_text(self, vocab, [prompts] if isinstance(prompts, str) else prompts, max_tokens=max_tokens, **options)

    # ---- portable checkpoints: thin delegations to gcnn.hub
    def save_pretrained(self, directory: Any, vocab: Any, *, card: Any = None) -> Any:
        """Write config.json, model.safetensors, vocab.json, a README.md model card and SHA256SUMS into
        ``directory``; see :func:`gcnn.hub.save_pretrained`."""
        from gcnn.hub import save_pretrained

        return save_pretrained(self, directory, vocab, card=card)

    @classmethod
    def from_pretrained(cls, directory: Any, *, map_location: str = "cpu") -> "LanguageModel":
        """Load a folder written by :meth:`save_pretrained` (or a run folder), checking every file; the vocabulary
        comes with :func:`gcnn.hub.load_pretrained`."""
        from gcnn.errors import CheckpointError
        from gcnn.hub import from_pretrained

        model = from_pretrained(directory, map_location=map_location)
        if not isinstance(model, cls):
            raise CheckpointError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
