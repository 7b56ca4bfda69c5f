"""The CPU inference runtime, applied to a model from outside: the model files know nothing of it.

:func:`optimize` prepares a model for inference (generation above all) on this machine, in one call, the way
``torch.compile`` or FSDP are applied to a module that knows nothing of them::

    model = gcnn.load("runs/wt2")
    gcnn.runtime.optimize(model, "bf16")      # "fp32", "bf16" or "int8"

It casts the model (bf16 and int8: bfloat16 weights and activations, log-probabilities still in fp32) and turns every
:class:`~gcnn.model.CausalConv` into an :class:`InferenceConv`: the same module with the same parameters and
state dict, whose effective weight (weight norm folded in) is computed once. A short input (a decoding step: at most
:data:`WINDOW_STEPS` positions) is then one matrix product over the window of its last k inputs, with the weight
prepacked for oneDNN's bf16 kernel where this PyTorch has it (1.6-2.5x faster matrix-vector products than a plain
bf16 matrix) or, with ``int8``, each output channel's row rounded to 255 levels (a quarter of fp32's bytes per
token): a decoding step multiplies them by PyTorch's dynamically quantized linear (fbgemm; the step's input rounded
to 7 bits as well, fbgemm's reduced range that no CPU's int16 sums saturate; outputs within about 1% of the product
with the rounded weights; 1.5x the int8-weight kernel's
speed at batch 1 on a 2-core Xeon), or, where this PyTorch lacks it, by its int8-weight kernel for bf16 inputs.
Longer inputs (a prompt, evaluation) are one matrix product over the window rows of k inputs (a grouped convolution:
conv1d) with the folded (int8: rounded) weight; a single long sequence instead takes one product per tap over
shifted views of its inputs, summed in place (no copy of the window rows). In bf16 and int8 every ``nn.Linear`` (the
softmax's head and cluster matrices above all) becomes an :class:`InferenceLinear` with its weight prepacked for
oneDNN the same way, and under int8 rounded to int8 for decoding steps (only: other inputs use its bf16 weight).

The folded weights are a snapshot: :func:`optimize` again after changing the parameters, :func:`restore` to undo.
Anything that needs gradients runs the model's own path, so training is unaffected. Copies and pickles of an
optimized model are optimized models (the weights are folded again from the parameters).

The private PyTorch ops used here are each checked once by a tiny call; where one is missing or fails, the plain
``F.linear`` path is used.

:func:`retain_freed_memory` (process-wide; the ``gcnn`` commands call it at start) keeps the memory that freed
tensors leave in the process instead of returning it to the system, so that a large tensor reuses pages already
mapped rather than faulting fresh ones in: GCNN-8B scores a 750 x 20 batch at Google Billion Word's vocabulary
about 7% faster in bf16 on a 2-core Xeon (the LSTM-2048 about 3%), at the cost of a resident size that stays at its
peak.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnn.allocator import retain_freed_memory  # noqa: F401  (part of this module's interface)
from gcnn.errors import ConfigError, option
from gcnn.model import CausalConv, ConvCache

DTYPES = ("fp32", "bf16", "int8")
WINDOW_STEPS = 4  # inputs of at most this many positions take the window-times-matrix path (decoding steps)
IM2COL_ELEMENTS = 1 << 24  # longer inputs: the window rows of at most this many inputs are copied at a time
PACKED_MAX_ROWS = 256  # oneDNN's weight packed for a few rows beats aten::mm up to about this many, loses beyond
INT8_MAX_ROWS = 2  # the int8 kernel beats oneDNN's bf16 for 1-2 rows (1.5x at one), loses from 4 rows on
_AVAILABLE: dict[str, bool] = {}


# ------------------------------------------------------------------------------------------------ applying it
def optimize(model: nn.Module, dtype: str = "fp32", *, onednn: bool = True) -> nn.Module:
    """Prepare ``model`` for inference in ``dtype`` (``fp32``, ``bf16`` or ``int8``), in place; returns it in eval
    mode. ``onednn=False`` keeps plain bf16 matrices (to compare with oneDNN's packed kernel). int8 applies to the
    convolutions of a GCNN; a model without convolutions (the LSTM and Transformer baselines) is refused."""
    if dtype not in DTYPES:
        raise ConfigError(f"{option('dtype')} must be one of {', '.join(DTYPES)}; got {dtype!r}")
    convs = [m for m in model.modules() if isinstance(m, CausalConv)]
    if dtype == "int8" and not convs:
        raise ConfigError(f"{option('dtype')} int8 is for GCNN models (int8 convolution weights); this is a "
                          f"{type(model).__name__}: use bf16")
    model.to(torch.float32 if dtype == "fp32" else torch.bfloat16)
    for conv in convs:
        conv.__class__ = InferenceConv
        conv.fold(dtype, onednn=onednn)
    for linear in [m for m in model.modules() if type(m) in (nn.Linear, InferenceLinear)]:
        linear.__class__ = InferenceLinear
        linear.fold(dtype, onednn=onednn)
    return model.eval()


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`optimize`'s kernels (not its cast): every :class:`InferenceConv` becomes a plain CausalConv."""
    for module in model.modules():
        if isinstance(module, InferenceConv):
            module.__dict__.pop("_folded", None)
            module.__class__ = CausalConv
        elif isinstance(module, InferenceLinear):
            module.__dict__.pop("_packed", None)
            module.__dict__.pop("_int8", None)
            module.__class__ = nn.Linear
    return model


def optimized_dtype(model: nn.Module) -> str | None:
    """The dtype :func:`optimize` prepared ``model`` for, or None."""
    for module in model.modules():
        if isinstance(module, (InferenceConv, InferenceLinear)):
            return module.runtime_dtype
    return None


def resolve_device(device: str | None) -> str:
    """The device to run on: the one asked for, else cuda when available, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option('device')} {device!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{option('device')} {device}: CUDA is not available on this machine")
    return device


# ------------------------------------------------------------------------------------------------ the convolution
class _Int8Weights(NamedTuple):
    kind: str  # "dynamic": int8 activations too (fbgemm's kernel, packed weight and bias); "w8": int8 weights only
    weight: Any  # dynamic: fbgemm's packed weight and bias; w8: the (C_out, K) int8 matrix
    scale: Tensor | None  # the bf16 scale per output channel
    zero_points: Tensor | None  # unused (symmetric weights)


class _Folded(NamedTuple):
    dtype: torch.dtype
    weight: Tensor  # (C_out, C_in / groups, k): weight norm folded in (int8: the rounded weights), in ``dtype``
    # the same as (C_out, C_in / groups * k), contiguous: the window path's matrix; its columns are (C, k)
    # flattened channel-major, or for an ungrouped k > 1 convolution tap-major, (k, C), so that each tap's
    # (C_out, C) block is a strided matrix of its own (see _sum_of_taps)
    matrix: Tensor
    bias: Tensor
    packed: list[Tensor] | None  # per group: the matrix prepacked for oneDNN's bf16 linear
    int8: list[_Int8Weights] | None  # per group: the int8 matrix for one of the two int8 kernels


class InferenceConv(CausalConv):
    """A :class:`~gcnn.model.CausalConv` whose folded weights were computed by :func:`optimize`; see the module
    docstring. Never built directly: :func:`optimize` sets a CausalConv's class to this one."""

    runtime_dtype: str = "fp32"

    def fold(self, dtype: str, *, onednn: bool = True) -> None:
        """Compute the folded weights for ``dtype`` from the current parameters."""
        self.runtime_dtype, self.onednn = dtype, onednn
        compute = torch.float32 if dtype == "fp32" else torch.bfloat16
        cpu = self.bias.device.type == "cpu"
        with torch.no_grad():
            weight = self.effective_weight().detach().float().clone()  # a snapshot, never a view of a parameter
            tap_major = self.tap_major
            matrix = (weight.permute(0, 2, 1) if tap_major else weight).reshape(self.out_channels, -1)
            quantized = None
            if dtype == "int8":
                q, scale = quantize_rows_int8(matrix)
                matrix = q.float() * scale.float().unsqueeze(1)  # what the int8 weights stand for
                groups = list(zip(q.chunk(self.groups, 0), scale.chunk(self.groups)))
                biases = self.bias.detach().float().chunk(self.groups)
                if cpu and int8_activation_kernel_available():
                    quantized = [_Int8Weights("dynamic", _prepack_dynamic(qg, sg, bg), sg, None)
                                 for (qg, sg), bg in zip(groups, biases)]
                elif cpu and int8_linear_available():
                    # own allocations: the kernel needs aligned rows
                    quantized = [_Int8Weights("w8", qg.clone(), sg.clone(), None) for qg, sg in groups]
            matrix = matrix.to(compute).contiguous()
            packed = None
            if compute == torch.bfloat16 and cpu and onednn and onednn_bf16_linear_available():
                packed = [torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1) for w in matrix.chunk(self.groups, 0)]
            as_weight = (matrix.view(self.out_channels, self.kernel, -1).permute(0, 2, 1) if tap_major
                         else matrix.view_as(weight))
            bias = self.bias.detach().to(compute).clone()
            self._folded = _Folded(compute, as_weight, matrix, bias, packed, quantized)

    @property
    def tap_major(self) -> bool:
        """Whether the folded matrix's columns are tap-major (an ungrouped convolution wider than 1)."""
        return self.groups == 1 and self.kernel > 1

    def forward(self, x: Tensor, cache: ConvCache | None = None) -> Tensor:
        folded: _Folded = self._folded
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if needs_grad or dtype != folded.dtype:
            return super().forward(x, cache)
        x = x.to(dtype)
        batch, time, channels = x.shape
        padded = self.padded_input(x, cache)
        k = self.kernel
        # (B, T, C, k): the k inputs each output reads, d apart
        windows = padded.unfold(1, self.span + 1, 1)[..., :: self.dilation] if k > 1 else padded.unsqueeze(-1)
        if time > WINDOW_STEPS:  # a prompt or an evaluation batch
            if self.groups > 1:  # the convolution with the folded weight
                out = F.conv1d(padded.transpose(1, 2), folded.weight, folded.bias, groups=self.groups,
                               dilation=self.dilation)
                return out.transpose(1, 2)
            if self.tap_major and batch == 1:  # one sequence: a product per tap on shifted views, no window copy
                return _sum_of_taps(padded[0], folded.matrix, folded.bias, k, self.dilation, time).unsqueeze(0)
            return _windows_times_matrix(windows.transpose(-1, -2) if self.tap_major else windows, folded.matrix,
                                         folded.bias)
        # the window rows, flattened as the matrix's columns: tap-major (k, C) or channel-major (C, k)
        rows = (windows.transpose(-1, -2) if self.tap_major else windows).reshape(batch * time, channels * k)
        use_int8 = (folded.int8 is not None and 0 < rows.shape[0] <= INT8_MAX_ROWS
                    and (folded.int8[0].kind == "dynamic" or rows.shape[1] % (16 * self.groups) == 0))
        outs = []
        parts = zip(rows.chunk(self.groups, 1), folded.matrix.chunk(self.groups, 0), folded.bias.chunk(self.groups))
        for g, (xg, wg, bg) in enumerate(parts):
            if use_int8:
                outs.append(_int8_linear(xg, folded.int8[g], bg))
            elif folded.packed is not None:
                outs.append(_onednn_linear(xg, folded.packed[g], bg))
            else:
                outs.append(F.linear(xg, wg, bg))
        return (outs[0] if self.groups == 1 else torch.cat(outs, dim=-1)).view(batch, time, self.out_channels)

    # copies and pickles: the packed tensors cannot be copied, so the state leaves them out and they are folded again
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_folded"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.fold(state.get("runtime_dtype", "fp32"), onednn=state.get("onednn", True))


def _sum_of_taps(padded: Tensor, matrix: Tensor, bias: Tensor, k: int, dilation: int, time: int) -> Tensor:
    """padded (span + T, C) -> (T, C_out): the convolution of one sequence as k products, one per tap, of a shifted
    view of the inputs (rows i*d to i*d + T: no copy) times that tap's (C_out, C) block of the tap-major matrix (a
    strided view), accumulated in place. Against the window rows' one product (a (T, C * k) copy of the inputs
    first): 19% less time for GCNN-9's 807-wide 4-tap layers on 15,000 positions in bf16, 33-48% for GCNN-8B's
    5-tap ones (one Xeon core). In bf16 the running sum is rounded to bf16 after each tap (k roundings, not one)."""
    channels = padded.shape[1]
    out = F.linear(padded[:time], matrix[:, :channels], bias)
    for i in range(1, k):
        out.addmm_(padded[i * dilation : i * dilation + time], matrix[:, i * channels : (i + 1) * channels].t())
    return out


def _windows_times_matrix(windows: Tensor, matrix: Tensor, bias: Tensor) -> Tensor:
    """windows (B, T, C, k), or tap-major (B, T, k, C) -> (B, T, C_out): every position's window of inputs times the
    (C_out, C * k) matrix (its columns in the same order), as one matrix product (the (B * T, C * k) rows are a copy
    of the inputs for k > 1, a view for k = 1), over slices of the positions that keep that copy within
    :data:`IM2COL_ELEMENTS`."""
    batch, time, outer, inner = windows.shape
    width = outer * inner
    if inner == 1 or batch * time * width <= IM2COL_ELEMENTS:
        return F.linear(windows.reshape(batch * time, width), matrix, bias).view(batch, time, matrix.shape[0])
    out = windows.new_empty(batch, time, matrix.shape[0])
    step = max(1, IM2COL_ELEMENTS // (batch * width))
    for t0 in range(0, time, step):
        part = windows[:, t0 : t0 + step]
        out[:, t0 : t0 + step] = F.linear(part.reshape(-1, width), matrix, bias).view(batch, part.shape[1],
                                                                                      matrix.shape[0])
    return out


# ------------------------------------------------------------------------------------------------ the linear layers
class InferenceLinear(nn.Linear):
    """An ``nn.Linear`` (the softmax's head and cluster matrices, a baseline's projections) whose bf16 weight
    :func:`optimize` prepacked for oneDNN's linear: at batch 1 the softmax's matrix-vector products read their
    weights 2-3x faster than through ``aten::mm`` on a plain bf16 matrix; beyond :data:`PACKED_MAX_ROWS` rows the
    plain product is faster and runs. Under int8, decoding steps (at most :data:`INT8_MAX_ROWS` rows) multiply the
    weight rounded to int8 through fbgemm's dynamically quantized linear; every other input uses the bf16 weight
    itself, as the softmax's target log-probabilities (which read the weights directly) do. The packed copies are
    extra memory beside the parameter (about the matrix's bf16 size, and its int8 size under int8). The same module
    and state dict; fp32, another device, or a PyTorch without the kernels runs ``F.linear`` as before. Never built
    directly: :func:`optimize` sets an nn.Linear's class to this one. The packed weights are a snapshot, like
    :class:`InferenceConv`'s."""

    runtime_dtype: str = "fp32"

    def fold(self, dtype: str, *, onednn: bool = True) -> None:
        self.runtime_dtype, self.onednn = dtype, onednn
        packed, quantized = None, None
        weight = self.weight
        if dtype != "fp32" and weight.dtype == torch.bfloat16 and weight.device.type == "cpu":
            with torch.no_grad():
                bias = (torch.zeros(self.out_features, dtype=weight.dtype) if self.bias is None
                        else self.bias.detach().clone())
                if onednn and onednn_bf16_linear_available():
                    packed = (torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous().clone(), 1), bias)
                if dtype == "int8" and int8_activation_kernel_available():
                    q, scale = quantize_rows_int8(weight.detach())
                    quantized = _Int8Weights("dynamic", _prepack_dynamic(q, scale, bias), scale, None)
        self._packed = packed  # (oneDNN's packed bf16 weight, a copy of the bias) or None
        self._int8 = quantized  # int8: the weight rounded to int8, for decoding steps; else None

    def forward(self, x: Tensor) -> Tensor:
        packed, quantized = self.__dict__.get("_packed"), self.__dict__.get("_int8")
        if ((packed is None and quantized is None) or x.dtype != torch.bfloat16 or x.device.type != "cpu"
                or torch.is_autocast_enabled(x.device.type)
                or (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))):
            return super().forward(x)
        rows = x.reshape(-1, x.shape[-1])
        if quantized is not None and 0 < rows.shape[0] <= INT8_MAX_ROWS:
            out = _int8_linear(rows, quantized, None)
        elif packed is not None and 0 < rows.shape[0] <= PACKED_MAX_ROWS:
            out = _onednn_linear(rows, *packed)
        else:  # many rows (evaluation): the plain product is faster than the weight packed for a few rows
            return super().forward(x)
        return out.view(*x.shape[:-1], out.shape[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_int8")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.fold(state.get("runtime_dtype", "fp32"), onednn=state.get("onednn", True))


# ------------------------------------------------------------------------------------------------ kernels
def _check_once(name: str, probe: Callable[[], bool]) -> bool:
    if name not in _AVAILABLE:
        try:
            _AVAILABLE[name] = bool(probe())
        except Exception:  # an older or newer PyTorch without the op, or a CPU without the kernel
            _AVAILABLE[name] = False
    return _AVAILABLE[name]


def onednn_bf16_linear_available() -> bool:
    """Whether oneDNN's bf16 linear on prepacked weights runs here."""

    def probe() -> bool:
        ops = torch.ops.mkldnn
        if not (torch.backends.mkldnn.is_available() and ops._is_mkldnn_bf16_supported()):
            return False
        w = torch.ones(2, 3, dtype=torch.bfloat16)
        out = _onednn_linear(torch.ones(1, 3, dtype=torch.bfloat16), ops._reorder_linear_weight(w, 1), None)
        return out.shape == (1, 2) and bool((out == 3).all())

    return _check_once("onednn_bf16", probe)


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


def int8_activation_kernel_available() -> bool:
    """Whether PyTorch's dynamically quantized int8 linear (``torch.ops.quantized.linear_dynamic`` on fbgemm's
    packed weights: int8 weights, each call's input rounded to 7 bits with fbgemm's reduced range, VNNI where the CPU
    has it) runs here."""

    def probe() -> bool:
        q = torch.full((3, 8), 2, dtype=torch.int8)
        weights = _Int8Weights("dynamic", _prepack_dynamic(q, torch.full((3,), 0.5, dtype=torch.bfloat16),
                                                           torch.zeros(3)), None, None)
        out = _int8_linear(torch.ones(1, 8, dtype=torch.bfloat16), weights, None)
        return out.shape == (1, 3) and out.dtype == torch.bfloat16 and bool(((out - 8).abs() < 0.1).all())

    return _check_once("int8_activations", probe)


def _prepack_dynamic(q: Tensor, scale: Tensor, bias: Tensor | None) -> Any:
    """fbgemm's packed form of the int8 matrix ``q`` (C_out, K) with its bf16 ``scale`` per row and a float bias."""
    import warnings

    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():  # PyTorch marks its quantized tensors as to be replaced; 2.13 has them
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q.contiguous(), scale.double(),
                                                          torch.zeros(q.shape[0], dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float().contiguous())
    finally:
        torch.backends.quantized.engine = engine


def _int8_linear(x: Tensor, weights: _Int8Weights, bias: Tensor | None) -> Tensor:
    if weights.kind == "dynamic":  # the bias is in the packed weight
        return torch.ops.quantized.linear_dynamic(x.float(), weights.weight, True).to(x.dtype)
    # the int8-weight kernel reads 16 bf16 inputs at a time with aligned loads: callers pass K % 16 == 0, this
    # aligns the rows
    x = x.contiguous()
    if x.data_ptr() % 64:
        x = x.clone()
    return torch._weight_int8pack_mm(x, weights.weight, weights.scale) + bias


def quantize_rows_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel: (int8 matrix, bf16 scale per row) with ``q * scale`` ~ ``weight``, each
    row's largest magnitude mapped to 127 (the scale rounded to bf16 first, as the kernel reads it)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1).clamp_min(1e-30) / 127).to(torch.bfloat16)
    q = torch.round(w / scale.float().unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale
