"""Weight-only formats: int8 per output channel, int4 per group of input columns.

Both quantize a linear weight W of shape [out, in] (y = x @ W.T). Scales are stored in float16,
the usual choice of GPTQ/AWQ-style formats; codes are computed against the stored float16 scale,
so every weight is within half a step of its dequantized value.

- int8: symmetric, one scale per row: W ~= q * s[:, None], q in [-127, 127].
- int4: asymmetric, one (scale, zero-point) per row and group of `group_size` columns:
  W ~= (q - z) * s, q and z in [0, 15]. Two codes share a byte along the input dimension:
  column 2j in the low nibble, column 2j+1 in the high nibble, so packed is [out, in // 2] uint8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SCALE_DTYPE = torch.float16
# The smallest normal float16: a zero row or group gets this scale instead of 0, so it never divides by 0.
MIN_SCALE = 2.0**-14
MODES = ("int8", "int4")


@dataclass
class QuantizedWeight:
    """The stored tensors of one quantized [out, in] weight."""

    mode: str
    qweight: torch.Tensor  # int8 [out, in] or uint8 [out, in // 2]
    scales: torch.Tensor  # float16 [out] (int8) or [out, in // group_size] (int4)
    zeros: torch.Tensor | None  # uint8 [out, in // group_size] (int4 only)
    group_size: int | None  # int4 only


def _scale(span: torch.Tensor, levels: int) -> torch.Tensor:
    """float16 scale of a span of values that must fit in `levels` steps, as float32 for the arithmetic.

    Rounded up, never down, to float16: a smaller scale would push the extreme values past the last
    code and clamping would cost them more than half a step.
    """
    exact = (span / levels).clamp(min=MIN_SCALE)
    rounded = exact.to(SCALE_DTYPE)
    up = torch.nextafter(rounded, torch.full_like(rounded, torch.inf))
    return torch.where(rounded.float() < exact, up, rounded).float()


def quantize_int8(weight: torch.Tensor) -> QuantizedWeight:
    w = _check_weight(weight)
    scales = _scale(w.abs().amax(dim=1), 127)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return QuantizedWeight("int8", q, scales.to(SCALE_DTYPE), None, None)


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.float().mul_(scales.float()[:, None]).to(dtype)


def quantize_int4(weight: torch.Tensor, group_size: int = 128) -> QuantizedWeight:
    w = _check_weight(weight)
    out_features, in_features = w.shape
    check_group_size(in_features, group_size)
    groups = w.reshape(out_features, in_features // group_size, group_size)
    # The range always includes 0 so that a zero weight is exactly representable (the zero-point).
    lo = groups.amin(dim=2).clamp(max=0)
    hi = groups.amax(dim=2).clamp(min=0)
    scales = _scale(hi - lo, 15)
    zeros = torch.round(-lo / scales).clamp(0, 15)
    q = torch.round(groups / scales[..., None] + zeros[..., None]).clamp(0, 15).to(torch.uint8)
    packed = pack_int4(q.reshape(out_features, in_features))
    return QuantizedWeight("int4", packed, scales.to(SCALE_DTYPE), zeros.to(torch.uint8), group_size)


def dequantize_int4(
    packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    # In place on one float32 buffer: on CPU this runs every forward, and each pass over N*K floats counts.
    w = unpack_int4(packed).float()
    out_features, in_features = w.shape
    groups = w.view(out_features, in_features // group_size, group_size)
    groups.sub_(zeros.float()[..., None]).mul_(scales.float()[..., None])
    return w.to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[rows, 2n] codes in [0, 15] -> [rows, n] uint8, even column in the low nibble."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError("int4 codes must lie in [0, 15]")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: [rows, n] uint8 -> [rows, 2n] uint8 codes."""
    low, high = packed & 0xF, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize(weight: torch.Tensor, mode: str, group_size: int = 128) -> QuantizedWeight:
    if mode == "int8":
        return quantize_int8(weight)
    if mode == "int4":
        return quantize_int4(weight, group_size)
    raise ValueError(f"unknown quantization mode {mode!r}; expected one of {MODES}")


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if qw.mode == "int8":
        return dequantize_int8(qw.qweight, qw.scales, dtype)
    return dequantize_int4(qw.qweight, qw.scales, qw.zeros, qw.group_size, dtype)


def check_group_size(in_features: int, group_size: int) -> None:
    # A multiple of 16 keeps each Triton K tile (tl.dot needs K >= 16) inside one group.
    if group_size <= 0 or group_size % 16 or in_features % group_size:
        raise ValueError(
            f"int4 group_size must be a positive multiple of 16 dividing in_features; got {group_size} for {in_features}"
        )


def _check_weight(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"expected a floating-point weight, got {weight.dtype}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("weight has non-finite values; refusing to quantize")
    return w
