"""Chapter 13's number formats and integer quantizers on the reference solutions, against their public
references: ``torch.finfo`` / ``torch.iinfo`` and the bit patterns of each format for the ranges computed
from the bits (IEEE 754; float8 e4m3fn and e5m2 of Micikevicius et al., 2022, arXiv:2209.05433, Table 1);
PyTorch's quantized tensors (``MinMaxObserver`` / ``PerChannelMinMaxObserver`` and
``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` with ``torch.quint8``) for zero-point
quantization; and the properties every absmax quantizer must have.
"""

from __future__ import annotations

from course_lib import quantization as Q
from course_lib.checks.ch13 import torch_quint8

import pytest
import torch
from conftest import seeded_randn as _randn

F32 = torch.float32


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


# -- formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(Q.FLOAT_FORMATS))
def test_float_format_equals_torch_finfo(name):
    fmt, info = Q.FLOAT_FORMATS[name], torch.finfo(Q.FLOAT_FORMATS[name].dtype)
    assert fmt.bits == info.bits
    assert fmt.max == info.max
    assert fmt.smallest_normal == info.smallest_normal
    assert fmt.eps == info.eps


@pytest.mark.parametrize("name", list(Q.FLOAT_FORMATS))
def test_smallest_subnormal_is_the_bit_pattern_one(name):
    fmt = Q.FLOAT_FORMATS[name]
    carrier = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[fmt.bits]
    assert torch.tensor([1], dtype=carrier).view(fmt.dtype).item() == fmt.smallest_subnormal


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"])
def test_representable_values_span_the_computed_range(name):
    values, fmt = Q.representable_values(name), Q.FLOAT_FORMATS[name]
    assert values[0] == 0 and values[1] == fmt.smallest_subnormal and values[-1] == fmt.max
    assert (values.diff() > 0).all()
    # Just above 1, the step is eps: the relative precision of the format.
    above_one = values[values >= 1]
    assert above_one[1] - above_one[0] == fmt.eps


def test_e4m3fn_has_no_infinity_and_one_nan_per_sign():
    patterns = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    assert not patterns.isinf().any() and patterns.isnan().sum() == 2
    e5m2 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e5m2).float()
    assert e5m2.isinf().sum() == 2 and e5m2.isnan().sum() == 6  # IEEE-like: infinities, 3 NaN mantissas a sign
    assert Q.FLOAT_FORMATS["float8_e4m3fn"].max == 448 and Q.FLOAT_FORMATS["float8_e5m2"].max == 57344


@pytest.mark.parametrize("name", list(Q.INT_FORMATS))
def test_int_formats(name):
    bits = Q.INT_FORMATS[name]
    low, high = Q.int_range(bits)
    dtype = {"int8": torch.int8, "int4": torch.int8}[name]
    if name == "int8":
        assert (low, high) == (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    assert (low, high) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    row = next(r for r in Q.format_table() if r["name"] == name)
    assert row["max"] == high and row["bytes_per_number"] == bits / 8


# -- absmax ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kwargs", [{}, {"dim": 0}, {"dim": -1}, {"group_size": 4}])
def test_absmax_round_trip_error_is_at_most_half_a_step(bits, kwargs):
    x = _randn(1, 6, 12).float()
    q, scale = Q.absmax_quantize(x, bits, **kwargs)
    assert q.dtype == torch.int8 and scale.dtype == F32 and scale.ndim == x.ndim
    qmax = 2 ** (bits - 1) - 1
    assert q.abs().max() == qmax  # the largest magnitude uses the top of the grid
    error = (Q.dequantize(q, scale) - x).abs()
    step = scale.repeat_interleave(4, -1) if "group_size" in kwargs else scale
    assert (error <= step / 2 * (1 + 1e-6)).all()


def test_finer_granularity_never_hurts_and_bits_help():
    x = _randn(2, 16, 256).float()
    x[3] *= 50  # one loud row
    for bits in (4, 8):
        tensor, channel, group = (Q.quantization_error(x, bits, g, 64) for g in ("tensor", "channel", "group"))
        assert group <= channel <= tensor
    errors = [Q.quantization_error(x, bits, "tensor") for bits in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


@pytest.mark.parametrize("shape", [(9,), (5, 7), (3, 4, 6)])
@pytest.mark.parametrize("shift", [-1.0, 0.0, 2.5])
def test_zero_point_equals_pytorch_quint8(shape, shift):
    x = _randn(2, *shape).float() + shift
    for dim in (None, *range(len(shape) if len(shape) > 1 else 0)):
        q, scale, zero = Q.zero_point_quantize(x, 8, dim=dim)
        q_torch, scale_torch, zero_torch = torch_quint8(x, dim)
        assert torch.equal(scale.flatten(), scale_torch)
        assert torch.equal(zero.flatten(), zero_torch)
        assert torch.equal(q, q_torch)
        # and PyTorch's dequantization is ours: scale * (q - zero_point), per channel along dim
        shape = [1] * x.ndim
        if dim is not None:
            shape[dim] = -1
        expected = (q_torch.float() - zero_torch.float().reshape(shape)) * scale_torch.reshape(shape)
        assert torch.allclose(Q.dequantize(q, scale, zero), expected, atol=1e-6, rtol=0)


def test_docstring_examples():
    q, scale = Q.absmax_quantize(torch.tensor([0.5, -1.27, 0.0]), bits=8)
    assert q.tolist() == [50, -127, 0] and abs(scale.item() - 0.01) < 1e-8
    q, scale, zero = Q.zero_point_quantize(torch.tensor([-1.0, 0.0, 2.0, 4.1]), bits=8)
    assert q.tolist() == [0, 50, 150, 255] and zero.tolist() == [50]


def test_zero_is_exact_in_zero_point_quantization():
    x = _randn(3, 4, 10).float().abs() + 0.1  # all positive, then one zero
    x[0, 0] = 0.0
    for bits in (2, 4, 8):
        q, scale, zero = Q.zero_point_quantize(x, bits, dim=0)
        assert Q.dequantize(q, scale, zero)[0, 0] == 0.0


def test_one_outlier_channel_ruins_a_per_tensor_scale():
    """LLM.int8's observation [Dettmers et al., 2022, arXiv:2208.07339, §3]: a few feature dimensions of large
    magnitude. One such column of activations makes the per-tensor scale coarse for all the others."""
    x = _randn(4, 64, 256).float()
    others = torch.ones(256, dtype=torch.bool)
    others[7] = False

    def error_elsewhere(q, scale):  # the mean squared error of every column but the outlier's
        return (Q.dequantize(q, scale) - x)[:, others].pow(2).mean().item()

    clean = error_elsewhere(*Q.absmax_quantize(x, 8))
    x[:, 7] *= 60.0
    per_tensor = error_elsewhere(*Q.absmax_quantize(x, 8))
    per_token = error_elsewhere(*Q.absmax_quantize(x, 8, dim=0))  # each row's scale still holds the outlier
    per_feature = error_elsewhere(*Q.absmax_quantize(x, 8, dim=-1))  # one scale per column isolates it
    assert per_tensor > 100 * clean and per_token > 100 * clean and per_feature < clean
