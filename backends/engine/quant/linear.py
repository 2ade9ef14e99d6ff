"""QuantLinear: a drop-in for nn.Linear that keeps only the quantized weight."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from backends.engine.quant import formats

# fbgemm (x86) has int8 GEMM kernels for CPUs; elsewhere (ARM) int8 runs the reference path.
FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines
MIN_HALF_RANGE = 1e-12  # a constant row divides by this instead of 0


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
        QuantLinear maps each row's own [min, max] onto [-1, 1] and adds an anchor row spanning exactly that,
        so every row is quantized on its own range, and a request's result never depends on the rest of its
        batch. W x = half * W x' + mid * W 1 undoes the mapping (W 1: the dequantized weight's row sums).
        """
        x2d = x.reshape(-1, self.in_features).float()
        lo, hi = x2d.amin(dim=1, keepdim=True), x2d.amax(dim=1, keepdim=True)  # aminmax(dim) is 50x slower
        mid, half = (hi + lo) / 2, ((hi - lo) / 2).clamp_(min=MIN_HALF_RANGE)
        packed, row_sums, anchor = self._packed()
        rows = torch.empty(x2d.shape[0] + 1, self.in_features)
        # Two plain ops, not one fused multiply-add: FMA or not would depend on the batch's shape.
        torch.sub(x2d, mid, out=rows[:-1]).div_(half)
        rows[-1] = anchor
        # reduce_range: 7-bit activations, so AVX2's pairwise int16 accumulation cannot saturate.
        y = torch.ops.quantized.linear_dynamic(rows, packed, True)[:-1].mul_(half).add_(mid * row_sums)
        if self.bias is not None:
            y += self.bias.float()
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _packed(self) -> tuple[torch.ScriptObject, torch.Tensor, torch.Tensor]:
        """fbgemm's packed copy of qweight, its row sums and the anchor row; rebuilt whenever the buffers change
        (checkpoint loads)."""
        key = (self.qweight.data_ptr(), self.scales.data_ptr(), *map(_version, (self.qweight, self.scales)))
        if getattr(self, "_packed_key", None) != key:
            anchor = torch.zeros(self.in_features)
            anchor[:2] = torch.tensor([1.0, -1.0])
            self._cpu_packed = _fbgemm_pack(self.qweight, self.scales), self.dequantized_weight().sum(dim=1), anchor
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


def _version(t: torch.Tensor) -> int | None:
    # Tensors made under inference_mode keep no version counter (and cannot be changed outside it).
    return None if t.is_inference() else t._version
