"""Weight-only quantization formats: error bounds, exact int4 packing, clear errors on bad input."""
import pytest
import torch

from backends.engine.quant import formats


def _weight(out_features: int = 48, in_features: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.05
    w[3] *= 40  # one loud row: per-row / per-group scales must keep the quiet rows precise
    w[5] = 0  # a zero row must survive (no division by a zero scale)
    return w


def test_int8_round_trip_within_half_a_step_per_row():
    w = _weight()
    qw = formats.quantize_int8(w)
    assert qw.qweight.dtype == torch.int8 and qw.qweight.shape == w.shape
    assert qw.scales.dtype == torch.float16 and qw.scales.shape == (w.shape[0],)
    err = (formats.dequantize(qw) - w).abs()
    assert (err <= qw.scales.float()[:, None] * 0.5 * (1 + 1e-5) + 1e-8).all()
    assert torch.equal(formats.dequantize(qw)[5], torch.zeros(w.shape[1]))
    # The loud row does not cost the quiet rows precision.
    quiet = torch.cat([err[:3], err[4:]]).max()
    assert quiet < 0.05 * 4 / 127 and err[3].max() > quiet


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_round_trip_within_half_a_step_per_group(group_size):
    w = _weight()
    qw = formats.quantize_int4(w, group_size)
    groups = w.shape[1] // group_size
    assert qw.qweight.dtype == torch.uint8 and qw.qweight.shape == (w.shape[0], w.shape[1] // 2)
    assert qw.scales.shape == qw.zeros.shape == (w.shape[0], groups)
    assert int(qw.zeros.max()) <= 15
    err = (formats.dequantize(qw) - w).abs().reshape(w.shape[0], groups, group_size)
    assert (err <= qw.scales.float()[..., None] * 0.5 * (1 + 1e-5) + 1e-8).all()
    assert torch.equal(formats.dequantize(qw)[5], torch.zeros(w.shape[1]))
    rel = (formats.dequantize(qw) - w).norm() / w.norm()
    assert rel < 0.15  # ~0.1 is what 16 levels give Gaussian weights


def test_smaller_groups_are_more_precise():
    w = _weight()
    errors = [(formats.dequantize(formats.quantize_int4(w, g)) - w).norm() for g in (32, 64, 256)]
    assert errors[0] < errors[1] < errors[2]


def test_int4_packing_is_exactly_invertible():
    codes = torch.randint(0, 16, (7, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    packed = formats.pack_int4(codes)
    assert packed.shape == (7, 32) and packed.dtype == torch.uint8
    assert torch.equal(formats.unpack_int4(packed), codes)
    # Column 2j sits in the low nibble, 2j+1 in the high one: the layout the Triton kernel reads.
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4)
    every_byte = torch.arange(256, dtype=torch.uint8)[None, :]
    assert torch.equal(formats.pack_int4(formats.unpack_int4(every_byte)), every_byte)


def test_int4_codes_round_trip_through_quantize():
    w = _weight()
    qw = formats.quantize_int4(w, 64)
    again = formats.quantize_int4(formats.dequantize(qw), 64)
    assert torch.equal(again.qweight, qw.qweight)


@pytest.mark.parametrize("bad, message", [
    (lambda: formats.quantize_int4(torch.randn(4, 96), 64), "group_size"),
    (lambda: formats.quantize_int4(torch.randn(4, 64), 24), "group_size"),
    (lambda: formats.quantize_int8(torch.randn(4)), "2-D"),
    (lambda: formats.quantize_int8(torch.ones(2, 2, dtype=torch.int32)), "floating-point"),
    (lambda: formats.quantize_int8(torch.tensor([[1.0, float("nan")]])), "non-finite"),
    (lambda: formats.quantize(torch.randn(4, 64), "int3"), "unknown quantization mode"),
    (lambda: formats.pack_int4(torch.full((1, 2), 16)), r"\[0, 15\]"),
])
def test_bad_input_is_refused_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
