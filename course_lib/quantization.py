"""Chapter 13 — quantization: fewer bits per number, and what each bit buys.

A floating-point format with ``E`` exponent bits, ``M`` mantissa bits and exponent bias ``B`` holds

    normal numbers      ±(1 + f / 2^M) · 2^(e - B)     for exponent fields e = 1 ... e_max
    subnormal numbers   ±(f / 2^M) · 2^(1 - B)         for exponent field 0

so its range is set by ``E`` and its precision by ``M``: the step between neighbours is ``2^-M`` of the
number (the machine epsilon), wherever the number lies. :class:`FloatFormat` computes the range and the
step of each format from those bits (:data:`FLOAT_FORMATS`); the tests compare them to ``torch.finfo``.
Integers have a fixed step of one, so an integer format needs a **scale**: ``x ≈ scale · q``.

- :func:`absmax_quantize` (Exercise 13.1): symmetric, ``q = round(x / s)`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
  with ``s = max|x| / (2^(b-1) - 1)``;
- :func:`zero_point_quantize` (Exercise 13.2): asymmetric, ``q = round(x / s) + z`` in ``[0, 2^b - 1]``, the
  convention of ``torch.quantize_per_tensor`` with ``torch.quint8``;
- both at three granularities: one scale for the tensor, one per channel (an index of ``dim``), or one per
  group of ``group_size`` consecutive numbers along the last dimension; :func:`dequantize` undoes either.

Exercises in this module: 13.1 :func:`absmax_quantize`, 13.2 :func:`zero_point_quantize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .exercises import exercise
from .rope import _describe

#: The smallest scale either quantizer uses: a block of zeros (or of numbers too small to matter) gets
#: this scale instead of 0, so that ``x / scale`` stays finite. PyTorch's observers use the same
#: (``torch.ao.quantization.MinMaxObserver``'s ``eps``): float32's machine epsilon.
SCALE_EPS = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------------------
# Number formats, computed from their bits
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: a sign bit, ``exponent_bits`` and ``mantissa_bits``, and a bias.

    ``finite_only`` marks the "fn" formats (float8 e4m3fn of Micikevicius et al., 2022, arXiv:2209.05433,
    Table 1): no infinities, and the all-ones exponent holds normal numbers, except its all-ones mantissa,
    which is the only NaN. That is why e4m3fn reaches 448 where an IEEE-like e4m3 would stop at 240.
    """

    name: str
    dtype: torch.dtype
    exponent_bits: int
    mantissa_bits: int
    bias: int
    finite_only: bool = False

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def max(self) -> float:
        """The largest finite number."""
        m = self.mantissa_bits
        if self.finite_only:  # exponent field all ones is usable; mantissa all ones there is NaN
            top_exponent, top_mantissa = 2**self.exponent_bits - 1, 2**m - 2
        else:  # IEEE: exponent field all ones is infinity and NaN
            top_exponent, top_mantissa = 2**self.exponent_bits - 2, 2**m - 1
        return (1 + top_mantissa / 2**m) * 2.0 ** (top_exponent - self.bias)

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """The gap between 1 and the next larger number: the relative step of the format."""
        return 2.0**-self.mantissa_bits

    @property
    def decimal_digits(self) -> float:
        """The significant decimal digits the mantissa (and its hidden bit) hold: ``log10(2^(M + 1))``."""
        return (self.mantissa_bits + 1) * math.log10(2)


#: The floating-point formats of the chapter (IEEE 754 for the first three; bfloat16 is float32 with a
#: 7-bit mantissa; the two float8 formats of Micikevicius et al., 2022, arXiv:2209.05433).
FLOAT_FORMATS = {
    f.name: f
    for f in (
        FloatFormat("float32", torch.float32, 8, 23, 127),
        FloatFormat("bfloat16", torch.bfloat16, 8, 7, 127),
        FloatFormat("float16", torch.float16, 5, 10, 15),
        FloatFormat("float8_e4m3fn", torch.float8_e4m3fn, 4, 3, 7, finite_only=True),
        FloatFormat("float8_e5m2", torch.float8_e5m2, 5, 2, 15),
    )
}

#: Signed integer formats by their bits (two's complement: ``-2^(b-1) ... 2^(b-1) - 1``).
INT_FORMATS = {"int8": 8, "int4": 4}


def int_range(bits: int) -> tuple[int, int]:
    """The smallest and largest signed ``bits``-bit integers (two's complement)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def format_table() -> list[dict]:
    """One row per format of :data:`FLOAT_FORMATS` and :data:`INT_FORMATS`, computed from the bits.

    Keys: ``name``, ``bits``, ``exponent_bits``, ``mantissa_bits`` (``None`` for integers), ``max``,
    ``smallest_normal``, ``smallest_subnormal`` (the smallest positive number; 1 for integers), ``eps``
    (the relative step at 1; 1 for integers, whose step is absolute) and ``bytes_per_number``.
    """
    rows = [
        {
            "name": f.name,
            "bits": f.bits,
            "exponent_bits": f.exponent_bits,
            "mantissa_bits": f.mantissa_bits,
            "max": f.max,
            "smallest_normal": f.smallest_normal,
            "smallest_subnormal": f.smallest_subnormal,
            "eps": f.eps,
            "bytes_per_number": f.bits / 8,
        }
        for f in FLOAT_FORMATS.values()
    ]
    for name, bits in INT_FORMATS.items():
        _, top = int_range(bits)
        row = {"name": name, "bits": bits, "exponent_bits": None, "mantissa_bits": None, "max": float(top)}
        rows.append(row | {"smallest_normal": 1.0, "smallest_subnormal": 1.0, "eps": 1.0, "bytes_per_number": bits / 8})
    return rows


def representable_values(name: str) -> torch.Tensor:
    """Every finite non-negative number of a format of 8 or 16 bits, sorted, as float64.

    Read from the bits themselves: every bit pattern with the sign bit clear, reinterpreted as the format
    (``torch.Tensor.view``). ``int8`` and ``int4`` give ``0 ... 2^(b-1) - 1``.
    """
    if name in INT_FORMATS:
        return torch.arange(int_range(INT_FORMATS[name])[1] + 1, dtype=torch.float64)
    fmt = FLOAT_FORMATS.get(name)
    if fmt is None or fmt.bits not in (8, 16):
        raise ValueError(f"name must be an 8- or 16-bit format or int8/int4, got {name!r}")
    carrier = torch.uint8 if fmt.bits == 8 else torch.int16
    patterns = torch.arange(2 ** (fmt.bits - 1), dtype=torch.int32).to(carrier)  # sign bit clear
    values = patterns.view(fmt.dtype).double()
    return values[values.isfinite()].sort().values


# --------------------------------------------------------------------------------------
# Integer quantization with scales
# --------------------------------------------------------------------------------------


@exercise("13.1", "Absmax quantization at three granularities", points=3)
def absmax_quantize(
    x: torch.Tensor, bits: int, dim: int | None = None, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` symmetrically to ``bits``-bit integers: ``x ≈ scale · q``.

    With ``qmax = 2^(bits-1) - 1`` (127 for 8 bits, 7 for 4), each scale is computed from the largest
    magnitude of the numbers it serves, ``amax``:

        scale = max(amax / qmax, SCALE_EPS)          # SCALE_EPS: float32's machine epsilon
        q     = clamp(round(x / scale), -qmax, qmax)

    so the largest magnitude maps to ``±qmax`` and zero to 0. ``-2^(bits-1)`` (-128) is never used: the
    grid stays symmetric. ``round`` is ``torch.round`` (half to even: 2.5 → 2, -0.5 → -0). A block of
    zeros gets the scale ``SCALE_EPS`` (:data:`SCALE_EPS`) and zeros. Everything is computed in float32,
    whatever the floating dtype of ``x`` (``x.float() / scale``).

    Granularity (which numbers share a scale):

    - ``dim=None, group_size=None``: one scale for the whole tensor;
    - ``dim=d``: one per channel, i.e. per index of dimension ``d`` (``amax`` over all other dimensions;
      negative ``d`` counts from the end);
    - ``group_size=g``: one per group of ``g`` consecutive numbers along the last dimension, which ``g``
      must divide.

    Args:
        x: a floating-point tensor with at least one dimension (float32, float64, float16 or bfloat16).
        bits: an ``int`` from 2 to 8.
        dim: ``None`` or an ``int`` naming a dimension of ``x``.
        group_size: ``None`` or a positive ``int`` dividing ``x.shape[-1]``; not together with ``dim``.

    Returns:
        ``(q, scale)``: ``q`` a ``torch.int8`` tensor of the shape of ``x``; ``scale`` a ``torch.float32``
        tensor with as many dimensions as ``x``, broadcastable against it: all ones for one scale
        (``(1, 1)`` for a matrix), ``x``'s size at ``dim`` and 1 elsewhere per channel, and
        ``(*x.shape[:-1], x.shape[-1] // g)`` per group. :func:`dequantize` turns them back into numbers.

    Raises:
        ValueError: if ``x`` is not a floating-point tensor with at least one dimension; ``bits`` is not
            an ``int`` from 2 to 8 (a ``bool`` is refused); ``dim`` is not ``None`` or an ``int``
            dimension of ``x``; ``group_size`` is not a positive ``int`` dividing ``x.shape[-1]``; or
            both ``dim`` and ``group_size`` are given.

    Example:
        >>> q, scale = absmax_quantize(torch.tensor([0.5, -1.27, 0.0]), bits=8)
        >>> q, scale    # scale 1.27 / 127 = 0.01
        (tensor([  50, -127,    0], dtype=torch.int8), tensor([0.0100]))
    """
    raise NotImplementedError


@exercise("13.2", "Zero-point quantization, as PyTorch's quint8", points=3)
def zero_point_quantize(
    x: torch.Tensor, bits: int, dim: int | None = None, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` asymmetrically to ``bits``-bit unsigned integers: ``x ≈ scale · (q - zero_point)``.

    With ``qmax = 2^bits - 1`` (255 for 8 bits), each scale serves numbers whose range, stretched to
    include 0 (so that 0 is represented exactly), is ``[lo, hi]``, ``lo = min(min x, 0)``,
    ``hi = max(max x, 0)``:

        scale      = max((hi - lo) / qmax, SCALE_EPS)
        zero_point = clamp(round(-lo / scale), 0, qmax)          # the integer that stands for 0.0
        q          = clamp(round(x / scale) + zero_point, 0, qmax)

    These are the formulas of PyTorch's ``MinMaxObserver`` (scale and zero point) and of
    ``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` with ``torch.quint8`` (``q``), so for 8
    bits the result equals theirs. ``round`` is ``torch.round`` (half to even). Everything is computed
    in float32, whatever the floating dtype of ``x``.

    The granularities are those of :func:`absmax_quantize` (one scale for the tensor, one per index of
    ``dim``, or one per group of ``group_size`` along the last dimension), and so are the shapes.

    Args:
        x: a floating-point tensor with at least one dimension.
        bits: an ``int`` from 1 to 8.
        dim: ``None`` or an ``int`` naming a dimension of ``x``.
        group_size: ``None`` or a positive ``int`` dividing ``x.shape[-1]``; not together with ``dim``.

    Returns:
        ``(q, scale, zero_point)``: ``q`` a ``torch.uint8`` tensor of the shape of ``x``; ``scale`` a
        ``torch.float32`` tensor and ``zero_point`` a ``torch.int32`` tensor, both of the scale shape of
        :func:`absmax_quantize`.

    Raises:
        ValueError: as :func:`absmax_quantize`, with ``bits`` from 1 to 8.

    Example:
        >>> q, scale, zero_point = zero_point_quantize(torch.tensor([-1.0, 0.0, 2.0, 4.1]), bits=8)
        >>> q, zero_point    # scale (4.1 + 1) / 255 = 0.02
        (tensor([  0,  50, 150, 255], dtype=torch.uint8), tensor([50], dtype=torch.int32))
    """
    raise NotImplementedError


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """The numbers that ``q`` stands for: ``scale · q`` (absmax), or ``scale · (q - zero_point)``.

    ``scale`` (and ``zero_point``) have the shapes :func:`absmax_quantize` returns: broadcastable against
    ``q``, except that per group the last dimension holds one scale per ``q.shape[-1] // scale.shape[-1]``
    numbers, which is repeated for each of them here. Returns a float32 tensor of the shape of ``q``.
    """
    if not isinstance(q, torch.Tensor) or not isinstance(scale, torch.Tensor) or scale.ndim != q.ndim:
        raise ValueError(f"q and scale must be tensors with as many dimensions, got {_describe(q)}, {_describe(scale)}")
    if q.shape[-1] % scale.shape[-1]:
        raise ValueError(f"scale's last size {scale.shape[-1]} must divide q's, {q.shape[-1]}")
    group = q.shape[-1] // scale.shape[-1]  # 1 per channel, the whole row when the scale is shared

    def spread(t):  # one entry per number along the last dimension (per group), else broadcast as is
        return t.repeat_interleave(group, dim=-1) if scale.shape[-1] > 1 else t

    values = q.to(torch.float32)
    if zero_point is not None:
        values = values - spread(zero_point).to(torch.float32)
    return values * spread(scale.to(torch.float32))


def quantization_error(x: torch.Tensor, bits: int, granularity: str, group_size: int = 128) -> float:
    """The mean squared error of ``x`` quantized with :func:`absmax_quantize` and dequantized.

    ``granularity`` is ``"tensor"``, ``"channel"`` (one scale per row: ``dim=0`` of a matrix, the output
    channels of a weight, or per token of activations) or ``"group"`` (``group_size`` along the last dim).
    """
    kwargs = {"tensor": {}, "channel": {"dim": 0}, "group": {"group_size": group_size}}.get(granularity)
    if kwargs is None:
        raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got {granularity!r}")
    q, scale = absmax_quantize(x, bits, **kwargs)
    return (dequantize(q, scale).double() - x.double()).pow(2).mean().item()
