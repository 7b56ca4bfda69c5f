"""The Gated Convolutional Network language model (Dauphin et al., 2017), batch-major throughout.

Shapes: B = batch, T = time, C = channels. Every convolution is causal: its input is padded on the left with k-1
zero frames, so position t sees only inputs at positions <= t. Without gradients (evaluation, generation) a
convolution is computed as one matrix product over the flattened window of its last k inputs, which is also exactly
what one step of incremental decoding computes, with the weight norm folded into a cached matrix (in bf16, prepacked
for oneDNN where available); with gradients (training) it is oneDNN's convolution over the left-padded input, which
computes the same function with a cheaper backward pass.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnn.config import SQRT_HALF, TWO_BRANCH_GATES, ModelConfig
from gcnn.lm import LanguageModel
from gcnn.softmax import build_softmax


class ConvCache:
    """Incremental-decoding state: for every convolution with k > 1, its last k-1 input frames (B, k-1, C).

    Convolutions take their buffers in the order the forward pass visits them; ``length`` counts the tokens seen.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.buffers: list[Tensor] = []
        self.length = 0
        self._next = 0

    def start(self, num_tokens: int) -> None:
        self._next = 0
        self.length += num_tokens

    def left_context(self, x: Tensor, frames: int) -> Tensor:
        if self._next < len(self.buffers):
            return self.buffers[self._next]
        return x.new_zeros(x.shape[0], frames, x.shape[2])

    def update(self, padded: Tensor, frames: int) -> None:
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


class CausalConv(nn.Module):
    """Causal 1-D convolution over (B, T, C_in) -> (B, T, C_out), optionally weight-normalized.

    ``groups=2`` keeps two independent halves of the channels (the two stacks of a block-gated residual block).
    With ``weight_norm`` the weight is ``weight_g * weight_v / ||weight_v||`` (norm over everything but the output
    channel); without it the parameter is ``weight``. Weight layout: (C_out, C_in / groups, k), as nn.Conv1d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, groups: int = 1, weight_norm: bool = True) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels, self.out_channels, self.kernel, self.groups = in_channels, out_channels, kernel, groups
        shape = (out_channels, in_channels // groups, kernel)
        if weight_norm:
            self.weight_v = nn.Parameter(torch.empty(shape))
            self.weight_g = nn.Parameter(torch.ones(out_channels))
        else:
            self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.reset_parameters(math.sqrt(1.0 / self.fan_in))

    int8_weights = False  # see use_int8_weights

    @property
    def weight_norm(self) -> bool:
        return hasattr(self, "weight_g")

    def effective_weight(self) -> Tensor:
        if not self.weight_norm:
            return self.weight
        # torch's fused kernel (forward and backward) for weight_g * weight_v / ||weight_v||, norm over dims 1, 2: a
        # bf16 training step of GCNN-8 at batch 4 x 256 ran 6% faster than with the formula written out in ops
        return torch._weight_norm(self.weight_v, self.weight_g.view(-1, 1, 1), 0)

    def reset_parameters(self, std: float) -> None:
        with torch.no_grad():
            v = self.weight_v if self.weight_norm else self.weight
            v.normal_(0.0, std)
            if self.weight_norm:  # start with the effective weight equal to v
                self.weight_g.copy_(v.flatten(1).norm(dim=1))
            self.bias.zero_()

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel

    def weight_matrix(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The effective weight as a (C_out, C_in/groups * k) matrix and the bias, both in ``dtype``.

        Without autograd (evaluation, generation) the result is cached until a parameter changes, so weight norm is
        folded away and bf16 weights are not re-cast at every call.
        """
        cached = self._inference_weights(dtype)
        if cached is None:
            return self.effective_weight().reshape(self.out_channels, -1).to(dtype), self.bias.to(dtype)
        return cached.weight, cached.bias

    def _inference_weights(self, dtype: torch.dtype) -> _InferenceWeights | None:
        """The weights for computing in ``dtype`` without gradients, cached per dtype until a parameter changes;
        None when gradients are needed or the model is being traced or compiled."""
        params = [self.weight_v, self.weight_g, self.bias] if self.weight_norm else [self.weight, self.bias]
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if tracing or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return None
        cpu_bf16 = dtype == torch.bfloat16 and self.bias.device.type == "cpu"
        # oneDNN's blocked bf16 layout: 1.6-2.5x faster matrix-vector products (batch-1 decoding) than F.linear on a
        # plain bf16 matrix, and a few % faster for large batches; the same fp32 accumulation
        pack = cpu_bf16 and onednn_bf16_linear_available()
        int8 = self.int8_weights
        int8_kernel = int8 and cpu_bf16 and int8_linear_available()
        versions = tuple((p.data_ptr(), p._version) for p in params)
        caches = self.__dict__.setdefault("_inference_weights_cache", {})
        slot = (dtype, pack, int8, int8_kernel)
        cached = caches.get(slot)
        if cached is None or cached.versions != versions:
            with torch.no_grad():
                weight = self.effective_weight().reshape(self.out_channels, -1)
                quantized = None
                if int8:
                    q, scale = quantize_rows_int8(weight)
                    weight = q.float() * scale.float().unsqueeze(1)  # what the int8 weights stand for
                    if int8_kernel:
                        quantized = [  # own allocations: the kernel needs aligned rows
                            (qg.clone(), sg.clone()) for qg, sg in zip(q.chunk(self.groups, 0), scale.chunk(self.groups))
                        ]
                weight = weight.to(dtype).contiguous()
                packed = None
                if pack:
                    packed = [
                        torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1) for w in weight.chunk(self.groups, 0)
                    ]
                cached = _InferenceWeights(versions, weight, self.bias.to(dtype), packed, quantized)
            caches[slot] = cached
        return cached

    def __getstate__(self) -> dict[str, Any]:
        # the inference cache is derived state (and oneDNN's packed tensors cannot be copied or pickled)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k != "_inference_weights_cache"}

    def forward(self, x: Tensor, cache: ConvCache | None = None) -> Tensor:
        batch, time, channels = x.shape
        k = self.kernel
        device = x.device.type
        # under autocast, cast the (small) input before the k-fold window copy rather than after it
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x = x.to(dtype)
        cached = self._inference_weights(dtype)
        if cached is None:  # with gradients (training), or traced: the weight from the parameters, every call
            weight, bias = self.effective_weight().to(dtype), self.bias.to(dtype)  # (C_out, C_in / groups, k)
            if cache is None and k > 1:
                # training: oneDNN's convolution over the left-padded (B, C, T) input. A GCNN-8 training step ran 7%
                # faster in fp32 than with unfold + F.linear (whose backward scatters the window's gradient back), and
                # as fast in bf16
                return F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), weight, bias, groups=self.groups).transpose(1, 2)
            weight = weight.reshape(self.out_channels, -1)
            packed = quantized = None
        else:
            weight, bias, packed, quantized = cached.weight, cached.bias, cached.packed, cached.int8
        if k > 1:
            left = x.new_zeros(batch, k - 1, channels) if cache is None else cache.left_context(x, k - 1).to(dtype)
            padded = torch.cat([left, x], dim=1)  # (B, T+k-1, C)
            if cache is not None:
                cache.update(padded, k - 1)
            x = padded.unfold(1, k, 1)  # (B, T, C, k): window of the last k inputs
        x = x.reshape(batch * time, channels * k)  # (C, k) flattened, channel-major, as the weight matrix's columns
        use_int8 = quantized is not None and x.shape[0] <= INT8_MAX_ROWS and x.shape[1] % (16 * self.groups) == 0
        outs = []
        parts = zip(x.chunk(self.groups, 1), weight.chunk(self.groups, 0), bias.chunk(self.groups))
        for g, (xg, wg, bg) in enumerate(parts):
            if use_int8:
                outs.append(_int8_linear(xg, *quantized[g], bg))
            elif packed is not None:
                outs.append(_onednn_linear(xg, packed[g], bg))
            else:
                outs.append(F.linear(xg, wg, bg))
        return (outs[0] if self.groups == 1 else torch.cat(outs, dim=-1)).view(batch, time, -1)


class _InferenceWeights(NamedTuple):
    versions: tuple  # (data pointer, version) of each parameter when this was computed
    weight: Tensor  # (C_out, C_in/groups * k), weight norm folded in, in the computing dtype
    bias: Tensor
    packed: list[Tensor] | None  # per group: the weight prepacked for oneDNN's bf16 linear
    int8: list[tuple[Tensor, Tensor]] | None  # per group: (int8 weight, bf16 scale per output channel)


# ------------------------------------------------------------------------------------------------ fast kernels
# Private PyTorch ops with fallbacks: each is checked once by a tiny call, and where it is missing or fails the plain
# F.linear path is used.
USE_ONEDNN_BF16 = True  # set False to compare with (or fall back to) F.linear on plain bf16 matrices
INT8_MAX_ROWS = 2  # the int8 kernel beats oneDNN's bf16 for 1-2 rows (1.5x at one), loses from 4 rows on
_AVAILABLE: dict[str, bool] = {}


def _check_once(name: str, probe: Callable[[], bool]) -> bool:
    if name not in _AVAILABLE:
        try:
            _AVAILABLE[name] = bool(probe())
        except Exception:  # an older or newer PyTorch without the op, or a CPU without the kernel
            _AVAILABLE[name] = False
    return _AVAILABLE[name]


def onednn_bf16_linear_available() -> bool:
    """Whether oneDNN's bf16 linear on prepacked weights runs here (and ``USE_ONEDNN_BF16`` is on)."""

    def probe() -> bool:
        ops = torch.ops.mkldnn
        if not (torch.backends.mkldnn.is_available() and ops._is_mkldnn_bf16_supported()):
            return False
        w = torch.ones(2, 3, dtype=torch.bfloat16)
        out = _onednn_linear(torch.ones(1, 3, dtype=torch.bfloat16), ops._reorder_linear_weight(w, 1), None)
        return out.shape == (1, 2) and bool((out == 3).all())

    return USE_ONEDNN_BF16 and _check_once("onednn_bf16", probe)


def int8_linear_available() -> bool:
    """Whether PyTorch's int8-weight kernel for bf16 inputs (``torch._weight_int8pack_mm``) runs here."""

    def probe() -> bool:
        x = torch.ones(1, 32, dtype=torch.bfloat16)
        q = torch.full((3, 32), 2, dtype=torch.int8)
        out = torch._weight_int8pack_mm(x, q, torch.full((3,), 0.5, dtype=torch.bfloat16))
        return out.shape == (1, 3) and bool((out == 32).all())

    return _check_once("int8", probe)


def _onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def _int8_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    # the kernel reads 16 bf16 inputs at a time with aligned loads: callers pass K % 16 == 0, this aligns the rows
    x = x.contiguous()
    if x.data_ptr() % 64:
        x = x.clone()
    return torch._weight_int8pack_mm(x, q, scale) + bias


def quantize_rows_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel: (int8 matrix, bf16 scale per row) with ``q * scale`` ~ ``weight``, each
    row's largest magnitude mapped to 127 (the scale rounded to bf16 first, as the kernel reads it)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1).clamp_min(1e-30) / 127).to(torch.bfloat16)
    q = torch.round(w / scale.float().unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def use_int8_weights(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Compute every convolution without gradients with int8 weights: each output channel's row of the folded weight
    matrix rounded to 255 levels (:func:`quantize_rows_int8`). For batch-1 generation with bf16 activations (cast
    the model with ``.to(torch.bfloat16)`` first): one decoding step's convolutions read a quarter of the fp32
    bytes, through PyTorch's int8-weight kernel; longer inputs (the prompt, evaluation) use the same rounded weights
    in bf16. The results change slightly (outputs within about 1% of their scale); training and anything with
    gradients is unaffected. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, CausalConv):
            module.int8_weights = enabled
    return model


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

    def __init__(self, in_width: int, layers: tuple[tuple[int, int], ...], residual: bool, config: ModelConfig) -> None:
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
                self.convs.append(CausalConv(width, branches * n, k, weight_norm=wn))
            else:  # block gating: keep the stacks A and B apart
                self.convs.append(CausalConv(branches * width, branches * n, k, groups=branches, weight_norm=wn))
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
    """Embedding -> [projection] -> blocks of gated causal convolutions -> adaptive (or full) softmax."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        first_width = config.blocks[0].layers[0][1]
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
                layer = ConvBlock(width, block.layers, block.residual, config)
                self.blocks.append(layer)
                width = layer.out_width
        self.softmax = build_softmax(width, config.vocab_size, config.adaptive_cutoffs, config.adaptive_div, config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (He) normal for the gated convolutions (the paper), or fairseq's N(0, sqrt(4(1-p)/fan_in));
        variance-preserving N(0, sqrt(1/fan_in)) for the linear projections; N(0, 0.1) for the embedding."""
        nn.init.normal_(self.embed.weight, 0.0, 0.1)
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
        if self.input_proj is not None:
            self.input_proj.reset_parameters(math.sqrt(1.0 / self.input_proj.fan_in))

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def new_cache(self, batch_size: int) -> ConvCache:
        return ConvCache(batch_size)

    def hidden_states(self, tokens: Tensor, cache: ConvCache | None = None) -> Tensor:
        """tokens (B, T) -> final hidden states (B, T, C_last)."""
        if cache is not None:
            cache.start(tokens.shape[1])
        x = self.dropout(self.embed(tokens))  # (B, T, E)
        if self.input_proj is not None:
            x = self.input_proj(x)
        for block in self.blocks:
            x = block(x, cache)
        return self.dropout(x)


def build_model(name: str | ModelConfig, vocab_size: int | None = None, **overrides: Any) -> GatedConvLM:
    """Build a GCNN by architecture name (``gcnn archs`` lists them) for ``vocab_size`` words, overriding any
    :class:`ModelConfig` field by keyword, e.g. ``build_model("gcnn-8", vocab_size=33278, dropout=0.2)``.
    A :class:`ModelConfig` is accepted too. Baseline names (``lstm-*``, ``transformer-*``) build those models."""
    from gcnn.architectures import get_config

    if isinstance(name, ModelConfig):
        return GatedConvLM(name.replace(**overrides) if overrides else name)
    if vocab_size is None:
        raise TypeError("build_model needs vocab_size=")
    from gcnn import registry

    return registry.build(name, vocab_size, **overrides) if registry.is_registered(name) else GatedConvLM(
        get_config(name, vocab_size, **overrides)
    )
