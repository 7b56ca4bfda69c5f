"""The Gated Convolutional Network language model (Dauphin et al., 2017), batch-major throughout.

Shapes: B = batch, T = time, C = channels. Every convolution is causal: its input is padded on the left with
(k-1)d frames for a kernel of width k and dilation d (zeros at the start of a sequence, the previous inputs during
incremental decoding), so position t sees only inputs at positions <= t. One code path computes training,
evaluation and decoding steps; faster inference kernels (folded weights, oneDNN-packed bf16, int8) are applied
from outside by :mod:`gcnn.runtime`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnn.config import SQRT_HALF, TWO_BRANCH_GATES, ModelConfig
from gcnn.lm import LanguageModel, check_cache_batch
from gcnn.softmax import AdaptiveInput, build_softmax


class ConvCache:
    """Incremental-decoding state: for every convolution with k > 1, its last (k-1)d input frames (B, (k-1)d, C).

    Convolutions take their buffers in the order the forward pass visits them; ``length`` counts the tokens seen.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.buffers: list[Tensor] = []
        self.length = 0
        self._next = 0

    def start(self, tokens: Tensor) -> None:
        """Begin a forward pass over ``tokens`` (B, T): checks the batch size and counts the tokens."""
        check_cache_batch(self.batch_size, tokens)
        self._next = 0
        self.length += tokens.shape[1]

    def left_context(self, x: Tensor, frames: int) -> Tensor:
        """The ``frames`` inputs before ``x`` (B, T, C) of the next convolution: zeros before the first call."""
        if self._next < len(self.buffers):
            return self.buffers[self._next].to(x.dtype)
        return x.new_zeros(x.shape[0], frames, x.shape[2])

    def update(self, padded: Tensor, frames: int) -> None:
        """Keep the last ``frames`` inputs of the convolution that just ran (``padded``: its left context + input)."""
        tail = padded[:, -frames:].detach()
        if self._next < len(self.buffers):
            self.buffers[self._next] = tail
        else:
            self.buffers.append(tail)
        self._next += 1

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows in ``index`` (for beam search or dropping finished sequences)."""
        self.buffers = [b.index_select(0, index) for b in self.buffers]
        self.batch_size = int(index.numel())

    def select(self, index: Tensor) -> "ConvCache":
        """A new cache holding the rows in ``index`` of this one (this one is left as it is)."""
        out = ConvCache(int(index.numel()))
        out.buffers = [b.index_select(0, index) for b in self.buffers]
        out.length = self.length
        return out

    @staticmethod
    def can_stack(a: "ConvCache", b: "ConvCache") -> bool:
        """Rows of any lengths can share a cache: a convolution's left context is per row (zeros before a row's
        start), so rows that have seen different numbers of tokens decode together exactly."""
        return len(a.buffers) == len(b.buffers)

    @classmethod
    def stack(cls, caches: "list[ConvCache]") -> "ConvCache":
        """One cache holding the rows of ``caches`` in order, each of which has run over at least one call (so that
        all hold the same buffers); ``length`` becomes the longest row's."""
        if not caches or any(not cls.can_stack(caches[0], c) for c in caches):
            raise ValueError("caches to stack must all have run over the same model (the same number of buffers)")
        out = cls(sum(c.batch_size for c in caches))
        out.buffers = [torch.cat(parts, dim=0) for parts in zip(*(c.buffers for c in caches))]
        out.length = max(c.length for c in caches)
        return out


class CausalConv(nn.Module):
    """Causal 1-D convolution over (B, T, C_in) -> (B, T, C_out), optionally weight-normalized.

    ``groups=2`` keeps two independent halves of the channels (the two stacks of a block-gated residual block).
    With ``weight_norm`` the weight is ``weight_g * weight_v / ||weight_v||`` (norm over everything but the output
    channel); without it the parameter is ``weight``. Weight layout: (C_out, C_in / groups, k), as nn.Conv1d.
    ``dilation`` d spaces the kernel's taps d positions apart: output t reads inputs t, t-d, ..., t-(k-1)d.
    """

    dilation: int = 1  # a class default, so that modules pickled before dilation existed read as undilated

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, groups: int = 1, weight_norm: bool = True,
                 dilation: int = 1) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels, self.out_channels, self.kernel, self.groups = in_channels, out_channels, kernel, groups
        self.dilation = dilation
        shape = (out_channels, in_channels // groups, kernel)
        if weight_norm:
            self.weight_v = nn.Parameter(torch.empty(shape))
            self.weight_g = nn.Parameter(torch.ones(out_channels))
        else:
            self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.reset_parameters(math.sqrt(1.0 / self.fan_in))

    @property
    def weight_norm(self) -> bool:
        return hasattr(self, "weight_g")

    @property
    def span(self) -> int:
        """Input frames before the current one that an output reads: (k-1)d."""
        return (self.kernel - 1) * self.dilation

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel

    def effective_weight(self) -> Tensor:
        """The convolution's weight (C_out, C_in / groups, k), weight norm applied."""
        if not self.weight_norm:
            return self.weight
        # the fused kernel torch.nn.utils.parametrizations.weight_norm uses: g * v / ||v||, norm over dims 1 and 2
        return torch._weight_norm(self.weight_v, self.weight_g.view(-1, 1, 1), 0)

    def reset_parameters(self, std: float) -> None:
        with torch.no_grad():
            v = self.weight_v if self.weight_norm else self.weight
            v.normal_(0.0, std)
            if self.weight_norm:  # start with the effective weight equal to v
                self.weight_g.copy_(v.flatten(1).norm(dim=1))
            self.bias.zero_()

    def padded_input(self, x: Tensor, cache: ConvCache | None) -> Tensor:
        """(B, T, C) -> (B, (k-1)d+T, C): the (k-1)d frames before x (zeros, or the cached inputs) then x; the cache
        keeps the last (k-1)d frames for the next call."""
        frames = self.span
        if frames == 0:
            return x
        left = x.new_zeros(x.shape[0], frames, x.shape[2]) if cache is None else cache.left_context(x, frames)
        padded = torch.cat([left, x], dim=1)
        if cache is not None:
            cache.update(padded, frames)
        return padded

    def forward(self, x: Tensor, cache: ConvCache | None = None) -> Tensor:
        if cache is None:  # the same as padded_input, with the zeros added in the (B, C, T) layout conv1d reads
            padded = F.pad(x.transpose(1, 2), (self.span, 0))
        else:
            padded = self.padded_input(x, cache).transpose(1, 2)
        out = F.conv1d(padded, self.effective_weight(), self.bias, groups=self.groups, dilation=self.dilation)  # (B, C_out, T)
        return out.transpose(1, 2)


def apply_gate(gate: str, h: Tensor) -> Tensor:
    """The paper's gates. Two-branch gates split h's channels into halves A, B."""
    if gate == "glu":
        return F.glu(h, dim=-1)  # one fused kernel: A * sigmoid(B)
    if gate in TWO_BRANCH_GATES:
        a, b = h.chunk(2, dim=-1)
        if gate == "gtu":
            return torch.tanh(a) * torch.sigmoid(b)
        return a * b  # bilinear
    if gate == "relu":
        return torch.relu(h)
    if gate == "tanh":
        return torch.tanh(h)
    return h  # linear


class ConvBlock(nn.Module):
    """One block: its convolution layers, the gate(s), and the residual connection.

    gate_placement ``layer``: every convolution is followed by the gate (the authors' fairseq implementation).
    gate_placement ``block``: two linear stacks A and B of the block's convolutions, then G = gate(A, B) once.
    """

    def __init__(self, in_width: int, layers: tuple[tuple[int, int], ...], residual: bool, config: ModelConfig,
                 dilation: int = 1) -> None:
        super().__init__()
        self.gate = config.gate
        self.per_layer = config.gate_placement == "layer"
        self.residual = residual
        self.residual_scale = config.residual_scale
        self.dropout = nn.Dropout(config.dropout)
        branches = 2 if config.gate in TWO_BRANCH_GATES else 1
        wn = config.weight_norm
        self.convs = nn.ModuleList()
        width = in_width
        for j, (k, n) in enumerate(layers):
            if self.per_layer or j == 0:
                self.convs.append(CausalConv(width, branches * n, k, weight_norm=wn, dilation=dilation))
            else:  # block gating: keep the stacks A and B apart
                self.convs.append(CausalConv(branches * width, branches * n, k, groups=branches, weight_norm=wn,
                                             dilation=dilation))
            width = n
        self.out_width = width
        self.proj = CausalConv(in_width, width, 1, weight_norm=wn) if residual and in_width != width else None

    def forward(self, x: Tensor, cache: ConvCache | None = None) -> Tensor:
        skip = x
        for j, conv in enumerate(self.convs):
            if self.per_layer or j == 0:
                x = self.dropout(x)
            x = conv(x, cache)
            if self.per_layer:
                x = apply_gate(self.gate, x)
        if not self.per_layer:
            x = apply_gate(self.gate, x)
        if self.residual:
            x = x + (self.proj(skip) if self.proj is not None else skip)
            if self.residual_scale:
                x = x * SQRT_HALF
        return x


class GatedConvLM(LanguageModel):
    """Embedding -> [projection] -> blocks of gated causal convolutions -> [projection] -> adaptive (or full) softmax.

    The embedding is a table (``embed``), adaptive input representations (``embed``, an :class:`AdaptiveInput`), or,
    with ``tie_embeddings``, the softmax's own word matrices (no ``embed``; ``output_proj`` maps the last block's
    width to ``embed_dim`` where they differ)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        first_width = config.blocks[0].layers[0][1]
        if config.tie_embeddings:
            self.embed = None  # the softmax's word matrices (see embed_tokens)
        elif config.adaptive_input:
            self.embed = AdaptiveInput(config.embed_dim, config.vocab_size, config.adaptive_cutoffs, config.adaptive_div)
        else:
            self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.input_proj = (
            CausalConv(config.embed_dim, first_width, 1, weight_norm=config.weight_norm)
            if config.embed_dim != first_width
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList()
        width = first_width
        for block in config.blocks:
            for _ in range(block.repeat):
                layer = ConvBlock(width, block.layers, block.residual, config, block.dilation)
                self.blocks.append(layer)
                width = layer.out_width
        self.output_proj = None
        if config.tie_embeddings and width != config.embed_dim:  # the softmax's words are embed_dim wide
            self.output_proj = CausalConv(width, config.embed_dim, 1, weight_norm=config.weight_norm)
            width = config.embed_dim
        self.softmax = build_softmax(width, config.vocab_size, config.adaptive_cutoffs, config.adaptive_div, config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (He) normal for the gated convolutions (the paper), or fairseq's N(0, sqrt(4(1-p)/fan_in));
        variance-preserving N(0, sqrt(1/fan_in)) for the linear projections; N(0, 0.1) for the embedding (tied:
        the softmax's word matrices)."""
        if isinstance(self.embed, nn.Embedding):
            nn.init.normal_(self.embed.weight, 0.0, 0.1)
        elif isinstance(self.embed, AdaptiveInput):
            self.embed.reset_parameters(0.1)
        else:
            with torch.no_grad():
                for matrix in self.softmax.word_matrices():
                    matrix.normal_(0.0, 0.1)
        p = self.config.dropout
        for module in self.modules():
            if isinstance(module, ConvBlock):
                for conv in module.convs:
                    if self.config.init == "kaiming":
                        std = math.sqrt(2.0 / conv.fan_in)
                    else:
                        std = math.sqrt(4.0 * (1.0 - p) / conv.fan_in)
                    conv.reset_parameters(std)
                if module.proj is not None:
                    module.proj.reset_parameters(math.sqrt(1.0 / module.proj.fan_in))
        for proj in (self.input_proj, self.output_proj):
            if proj is not None:
                proj.reset_parameters(math.sqrt(1.0 / proj.fan_in))

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def new_cache(self, batch_size: int) -> ConvCache:
        return ConvCache(batch_size)

    def hidden_states(self, tokens: Tensor, cache: ConvCache | None = None) -> Tensor:
        """tokens (B, T) -> final hidden states (B, T, C_last)."""
        if cache is not None:
            cache.start(tokens)
        x = self.dropout(self.embed_tokens(tokens))  # (B, T, E)
        if self.input_proj is not None:
            x = self.input_proj(x)
        for block in self.blocks:
            x = block(x, cache)
        if self.output_proj is not None:
            x = self.output_proj(x)
        return self.dropout(x)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> embeddings (B, T, E); in training, ``embed_dropout`` drops whole word types (the same
        words everywhere in the batch) and scales the others up."""
        x = self.softmax.embed(tokens) if self.embed is None else self.embed(tokens)
        p = self.config.embed_dropout
        if self.training and p > 0:
            keep = torch.empty(self.config.vocab_size, device=x.device).bernoulli_(1 - p) / (1 - p)
            x = x * keep[tokens].unsqueeze(-1).to(x.dtype)
        return x
