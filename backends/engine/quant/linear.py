"""QuantLinear: a drop-in for nn.Linear that keeps only the quantized weight."""
from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from backends.engine.quant import formats

# fbgemm (x86) has int8 GEMM kernels for CPUs; elsewhere (ARM) int8 runs the reference path.
FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines
# 8-bit activations where fbgemm's kernels accumulate uint8 x int8 products straight into int32 (AVX-512 VNNI);
# elsewhere 7-bit, so AVX2's pairwise int16 accumulation cannot saturate.
REDUCE_RANGE = not torch.cpu._is_vnni_supported()
MIN_MAGNITUDE = 1e-12  # an all-zero row divides by this instead of 0
CACHED_ROWS = 257  # decode batches up to 256 reuse a buffer
_rows = threading.local()  # per thread: in_features -> a reusable [rows, in_features] buffer, anchor row first


class QuantLinear(nn.Module):
    """y = x @ dequant(W).T + bias. CUDA inputs run the Triton kernel; int8 on an x86 CPU runs fbgemm's int8
    GEMM (activations quantized per row, on the fly); the rest runs the torch reference path.

    The stored tensors are buffers (not parameters): they are not trained, but they move with
    .to(device) and live in state_dict under the names the checkpoint uses.
    """

    def __init__(self, in_features: int, out_features: int, mode: str, group_size: int = 128,
                 bias: bool = False, bias_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        if mode not in formats.MODES:
            raise ValueError(f"unknown quantization mode {mode!r}; expected one of {formats.MODES}")
        if mode == "int4":
            formats.check_group_size(in_features, group_size)
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.group_size = group_size if mode == "int4" else None
        if mode == "int8":
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.empty(out_features, dtype=formats.SCALE_DTYPE, device=device))
            self.zeros = None
        else:
            groups = in_features // group_size
            self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
            self.register_buffer("scales", torch.empty(out_features, groups, dtype=formats.SCALE_DTYPE, device=device))
            self.register_buffer("zeros", torch.empty(out_features, groups, dtype=torch.uint8, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str, group_size: int = 128) -> QuantLinear:
        has_bias = linear.bias is not None
        layer = cls(linear.in_features, linear.out_features, mode, group_size, has_bias,
                    linear.weight.dtype, linear.weight.device)
        qw = formats.quantize(linear.weight, mode, group_size)
        layer.qweight.copy_(qw.qweight)
        layer.scales.copy_(qw.scales)
        if qw.zeros is not None:
            layer.zeros.copy_(qw.zeros)
        if has_bias:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.mode == "int8":
            return formats.dequantize_int8(self.qweight, self.scales, dtype)
        return formats.dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return self._forward_triton(x)
        if self.mode == "int8" and FBGEMM:
            return self._forward_fbgemm(x)
        if self.mode == "int8":
            # The per-row scale commutes with the matmul: scaling N outputs beats scaling N*K weights.
            y = (F.linear(x, self.qweight.to(x.dtype)) * self.scales.float()).to(x.dtype)
        else:
            y = F.linear(x, self.dequantized_weight(x.dtype))
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        # Imported here so a CPU-only process never needs a working Triton backend.
        from backends.engine.quant import kernels

        x2d = x.reshape(-1, self.in_features)
        if self.mode == "int8":
            y = kernels.int8_matmul(x2d, self.qweight, self.scales, self.bias)
        else:
            y = kernels.int4_matmul(x2d, self.qweight, self.scales, self.zeros, self.group_size, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _forward_fbgemm(self, x: torch.Tensor) -> torch.Tensor:
        """int8 x int8 GEMM on the CPU. fbgemm quantizes activations with one range for the whole tensor;
        QuantLinear divides each row by its largest magnitude and puts an anchor row [1, -1, 0, ...] first, so the
        tensor's range is exactly [-1, 1] whatever the batch: every row is quantized on its own symmetric range,
        and a request's result never depends on the rest of its batch. Scaling each output row back by its
        magnitude undoes the division. Symmetric, not [min, max]: half the per-call ops (at decode the GEMM is
        small and these ops were most of the time), and post-norm activations are near-symmetric anyway.
        """
        x2d = x.reshape(-1, self.in_features).float()
        # abs().amax(dim): linalg.vector_norm(inf, dim) and aminmax(dim) are 20-50x slower.
        magnitude = x2d.abs().amax(dim=1, keepdim=True).clamp_(min=MIN_MAGNITUDE)
        rows = _anchored_rows(x2d.shape[0], self.in_features)
        torch.div(x2d, magnitude, out=rows[1:])
        y = torch.ops.quantized.linear_dynamic(rows, self._packed(), REDUCE_RANGE)[1:].mul_(magnitude)
        if self.bias is not None:
            y += self.bias.float()
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _packed(self) -> torch.ScriptObject:
        """fbgemm's packed copy of qweight; rebuilt whenever the buffers change (checkpoint loads)."""
        key = (self.qweight.data_ptr(), self.scales.data_ptr(), *map(_version, (self.qweight, self.scales)))
        if getattr(self, "_packed_key", None) != key:
            self._cpu_packed = _fbgemm_pack(self.qweight, self.scales)
            self._packed_key = key
        return self._cpu_packed

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros) if t is not None)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.mode == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}{group}"


def _fbgemm_pack(qweight: torch.Tensor, scales: torch.Tensor) -> torch.ScriptObject:
    zero_points = torch.zeros(qweight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated as a user type; fbgemm's packing still takes one
        warnings.simplefilter("ignore", UserWarning)
        weight = torch._make_per_channel_quantized_tensor(qweight, scales.double(), zero_points, 0)
    # No bias in the pack: forward scales the GEMM's rows back by their range, which the bias must not see.
    return torch.ops.quantized.linear_prepack(weight, None)


def _anchored_rows(m: int, in_features: int) -> torch.Tensor:
    """[m + 1, in_features]: row 0 is the anchor [1, -1, 0, ...], rows 1.. are for the caller to fill. Up to
    CACHED_ROWS, one buffer per thread and width, shared by every layer of that width (each call fills it before its
    GEMM reads it), so decode allocates nothing; a long prefill allocates its own (its GEMM dwarfs that)."""
    if m + 1 > CACHED_ROWS:
        return _new_anchored_rows(m + 1, in_features)
    buf = _rows.__dict__.get(in_features)
    if buf is None:
        buf = _rows.__dict__[in_features] = _new_anchored_rows(CACHED_ROWS, in_features)
    return buf[:m + 1]


def _new_anchored_rows(n: int, in_features: int) -> torch.Tensor:
    with torch.inference_mode(False):  # an inference tensor could not be written outside inference mode
        buf = torch.empty(n, in_features)
    buf[0] = 0.0
    buf[0, :2] = torch.tensor([1.0, -1.0])
    return buf


def _version(t: torch.Tensor) -> int | None:
    # Tensors made under inference_mode keep no version counter (and cannot be changed outside it).
    return None if t.is_inference() else t._version
