"""A plain PyTorch GCNN kept as a fixed yardstick for speed: every speed-up of gcnn's own model is reported as a
ratio against this, measured in the same run.

It is the textbook construction with stock PyTorch parts only: ``nn.Conv1d`` over (B, C, T) with 2n output channels
and k-1 zero frames of left padding, ``F.glu`` over the channels, residual sums, weight normalization through
``torch.nn.utils.parametrizations.weight_norm`` and ``nn.AdaptiveLogSoftmaxWithLoss``. Default shape: GCNN-8
(embedding 280 projected to 900, a plain [4,900] layer, then 7 residual [4,900] layers) for WikiText-2's vocabulary
with cutoffs 2000, 10000 -- the same function and parameter count as ``gcnn.build_model("gcnn-8", vocab_size=33278)``.

Do not optimise this file: it is the reference the optimisations are measured against.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class ReferenceGCNN(nn.Module):
    def __init__(
        self,
        vocab_size: int = 33278,
        embed_dim: int = 280,
        width: int = 900,
        kernel: int = 4,
        num_layers: int = 8,
        cutoffs: tuple[int, ...] = (2000, 10000),
        div: float = 4.0,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.input_proj = weight_norm(nn.Conv1d(embed_dim, width, 1))
        self.convs = nn.ModuleList(weight_norm(nn.Conv1d(width, 2 * width, kernel)) for _ in range(num_layers))
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(width, vocab_size, list(cutoffs), div_value=div)

    @property
    def receptive_field(self) -> int:
        return 1 + len(self.convs) * (self.kernel - 1)

    def hidden_states(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> (B, T, C)."""
        x = self.input_proj(self.embed(tokens).transpose(1, 2))  # (B, C, T)
        for i, conv in enumerate(self.convs):
            h = F.glu(conv(F.pad(x, (self.kernel - 1, 0))), dim=1)  # causal: k-1 frames of zeros on the left
            x = h if i == 0 else x + h  # the first layer is plain, the others residual
        return x.transpose(1, 2)

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """The mean negative log-likelihood of ``targets`` (B, T)."""
        hidden = self.hidden_states(tokens)
        return self.softmax(hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)).loss

    def next_token_log_probs(self, tokens: Tensor) -> Tensor:
        """(B, T) -> (B, V) log-distribution of the token after the last one."""
        return self.softmax.log_prob(self.hidden_states(tokens)[:, -1])
