"""Visible checks of Chapter 13 — quantization and DeepSeek-V3's FP8 recipe.

Expected values are written out, or computed here from the contract's formulas with PyTorch's own
operations: ``torch.round`` (half to even), ``amax``, PyTorch's quantized tensors
(``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` with ``torch.quint8``, and their observer
``MinMaxObserver``), PyTorch's saturating cast to ``torch.float8_e4m3fn``, and float64 matrix products.

A float8 tensor cannot cross from the grader's sandbox as a value (only its handle does), so the
checks read its bytes there (``x.view(torch.uint8)``) and compare those, exactly; and they make the
float8 inputs of Exercise 13.5 there, from float32 numbers float8 represents exactly.
"""

from course_lib.checks import seeded_randn
from course_lib.grading import visible_check

import math
import warnings

import torch

F32, F64, FP8 = torch.float32, torch.float64, torch.float8_e4m3fn
EPS = torch.finfo(F32).eps  # the floor of every scale (the contract's SCALE_EPS)


def _dtype(t, name: str):
    """``torch.<name>`` where the learner's code runs (a handle in the grader's sandbox)."""
    return t.value(getattr(t.learner("fp8").torch, name))


def fp8_bytes(t, x, what: str = "result") -> torch.Tensor:
    """The bytes of a ``torch.float8_e4m3fn`` tensor the learner returned, as a uint8 tensor of its shape."""
    if type(x) is torch.Tensor:  # in-process, or a tensor whose dtype could cross: it must be float8 e4m3fn
        t.true(x.dtype == FP8, f"{what}: expected a torch.float8_e4m3fn tensor, got {x.dtype}")
        return x.view(torch.uint8)
    one_byte_float = t.value(x.element_size()) == 1 and t.value(x.is_floating_point()) is True
    t.true(one_byte_float, f"{what}: expected a torch.float8_e4m3fn tensor")
    return x.view(_dtype(t, "uint8"))


def to_fp8(t, values: torch.Tensor):
    """``values`` (float32 numbers float8 e4m3fn holds exactly) as a float8 tensor where the learner's code runs."""
    return t.learner("fp8").torch.Tensor.to(values, _dtype(t, "float8_e4m3fn"))


def exact_fp8(x: torch.Tensor) -> torch.Tensor:
    """Float32 numbers that float8 e4m3fn represents exactly: ``x`` rounded to the float8 grid."""
    return x.to(FP8).float()


def fp8_equal(t, got, expected: torch.Tensor, what: str = "result") -> None:
    """``got`` must be the float8 tensor ``expected``, byte for byte (NaN never occurs in these checks)."""
    got_bytes = fp8_bytes(t, got, what)
    t.close(got_bytes, expected.view(torch.uint8), atol=0, rtol=0, what=what)


# -- 13.1 absmax_quantize -----------------------------------------------------------------------------


def absmax_expected(x, bits, dim=None, group_size=None):
    """The contract's formulas, written out with torch: ``(q, scale)``."""
    qmax = 2 ** (bits - 1) - 1
    x = x.float()
    if group_size is not None:
        amax = x.reshape(*x.shape[:-1], -1, group_size).abs().amax(-1)
        per = (amax / qmax).clamp(min=EPS).repeat_interleave(group_size, -1)
    elif dim is not None:
        amax = x.abs().amax(dim=[d for d in range(x.ndim) if d != dim % x.ndim], keepdim=True)
        per = (amax / qmax).clamp(min=EPS)
    else:
        amax = x.abs().amax().reshape([1] * x.ndim)
        per = (amax / qmax).clamp(min=EPS)
    scale = (amax / qmax).clamp(min=EPS)
    return torch.round(x / per).clamp(-qmax, qmax).to(torch.int8), scale


def check_absmax(t, x, bits, what, **kwargs):
    q, scale = t.learner("quantization").absmax_quantize(x, bits, **kwargs)
    q_expected, scale_expected = absmax_expected(x, bits, **kwargs)
    t.close(scale, scale_expected, atol=0, rtol=0, what=f"{what}: scale")
    t.close(q, q_expected, atol=0, rtol=0, what=f"{what}: q")


@visible_check("13.1")
def one_scale_for_the_tensor(t):
    """the docstring's example (q 50, -127, 0; scale 0.01), and a (3, 5) matrix at 8 and 4 bits"""
    lib = t.learner("quantization")
    q, scale = lib.absmax_quantize(torch.tensor([0.5, -1.27, 0.0]), 8)
    t.close(q, torch.tensor([50, -127, 0], dtype=torch.int8), atol=0, rtol=0, what="the example's q")
    t.close(scale, torch.tensor([1.27 / 127]), atol=0, rtol=1e-6, what="the example's scale")
    x = seeded_randn(1, 3, 5, dtype=F32)
    for bits in (8, 4):
        check_absmax(t, x, bits, f"{bits} bits")


@visible_check("13.1")
def per_channel_and_per_group(t):
    """a (4, 12) matrix: one scale per row (dim 0), per column (dim -1) and per group of 4 along the rows"""
    x = seeded_randn(2, 4, 12, dtype=F32) * torch.tensor([1.0, 10.0, 0.1, 3.0])[:, None]
    check_absmax(t, x, 8, "per row", dim=0)
    check_absmax(t, x, 8, "per column", dim=-1)
    check_absmax(t, x, 4, "groups of 4", group_size=4)


@visible_check("13.1", inputs=True)
def rejects_bad_bits_groups_and_both(t):
    """bits 1, 9 and 8.0, a group of 5 for a width of 12, and dim with group_size raise ValueError"""
    lib = t.learner("quantization")
    x = torch.zeros(4, 12)
    for bad in (1, 9, 8.0):
        t.raises(ValueError, lib.absmax_quantize, x, bad)
    t.raises(ValueError, lib.absmax_quantize, x, 8, group_size=5)
    t.raises(ValueError, lib.absmax_quantize, x, 8, dim=0, group_size=4)


# -- 13.2 zero_point_quantize -------------------------------------------------------------------------


def torch_quint8(x, dim=None):
    """PyTorch's own 8-bit asymmetric quantization of ``x``: observer scales and zero points, then
    ``quantize_per_tensor`` or ``quantize_per_channel``. Returns ``(q, scale, zero_point)`` flattened."""
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch deprecates its quantized tensors, not their arithmetic
        if dim is None:
            observer = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
            observer(x)
            scale, zero_point = observer.calculate_qparams()
            q = torch.quantize_per_tensor(x, scale.item(), zero_point.item(), torch.quint8)
        else:
            observer = PerChannelMinMaxObserver(
                ch_axis=dim % x.ndim, dtype=torch.quint8, qscheme=torch.per_channel_affine
            )
            observer(x)
            scale, zero_point = observer.calculate_qparams()
            q = torch.quantize_per_channel(x, scale.double(), zero_point.long(), dim % x.ndim, torch.quint8)
        return q.int_repr(), scale.float(), zero_point.int()


def zero_point_expected(x, bits, dim=None, group_size=None):
    """The contract's formulas written out: ``(q, scale, zero_point)``."""
    qmax = 2**bits - 1
    x = x.float()
    if group_size is not None:
        groups = x.reshape(*x.shape[:-1], -1, group_size)
        lo, hi = groups.amin(-1), groups.amax(-1)
    elif dim is not None:
        others = [d for d in range(x.ndim) if d != dim % x.ndim]
        lo, hi = x.amin(dim=others, keepdim=True), x.amax(dim=others, keepdim=True)
    else:
        lo, hi = x.amin().reshape([1] * x.ndim), x.amax().reshape([1] * x.ndim)
    scale = ((hi.clamp(min=0) - lo.clamp(max=0)) / qmax).clamp(min=EPS)
    zero = torch.round(-lo.clamp(max=0) / scale).clamp(0, qmax)
    spread = (lambda s: s.repeat_interleave(group_size, -1)) if group_size is not None else (lambda s: s)
    q = (torch.round(x / spread(scale)) + spread(zero)).clamp(0, qmax)
    return q.to(torch.uint8), scale, zero.to(torch.int32)


def check_zero_point(t, x, bits, what, **kwargs):
    q, scale, zero = t.learner("quantization").zero_point_quantize(x, bits, **kwargs)
    q_expected, scale_expected, zero_expected = zero_point_expected(x, bits, **kwargs)
    t.close(scale, scale_expected, atol=0, rtol=0, what=f"{what}: scale")
    t.close(zero, zero_expected, atol=0, rtol=0, what=f"{what}: zero_point")
    t.close(q, q_expected, atol=0, rtol=0, what=f"{what}: q")


@visible_check("13.2")
def equals_pytorchs_quint8(t):
    """8 bits, a (4, 6) matrix: MinMaxObserver + torch.quantize_per_tensor, and per row torch.quantize_per_channel"""
    lib = t.learner("quantization")
    x = seeded_randn(3, 4, 6, dtype=F32) + 0.5
    for dim in (None, 0):
        q, scale, zero = lib.zero_point_quantize(x, 8, dim=dim)
        q_torch, scale_torch, zero_torch = torch_quint8(x, dim)
        what = "per tensor" if dim is None else "per row"
        t.close(scale.flatten(), scale_torch, atol=0, rtol=0, what=f"{what}: scale")
        t.close(zero.flatten(), zero_torch, atol=0, rtol=0, what=f"{what}: zero_point")
        t.close(q, q_torch, atol=0, rtol=0, what=f"{what}: q")


@visible_check("13.2")
def the_example_and_groups(t):
    """the docstring's example (q 0, 50, 150, 255; zero point 50), and groups of 3 at 4 bits"""
    lib = t.learner("quantization")
    q, _, zero = lib.zero_point_quantize(torch.tensor([-1.0, 0.0, 2.0, 4.1]), 8)
    t.close(q, torch.tensor([0, 50, 150, 255], dtype=torch.uint8), atol=0, rtol=0, what="the example's q")
    t.close(zero, torch.tensor([50], dtype=torch.int32), atol=0, rtol=0, what="the example's zero_point")
    check_zero_point(t, seeded_randn(4, 2, 9, dtype=F32), 4, "groups of 3", group_size=3)


@visible_check("13.2", inputs=True)
def rejects_zero_bits_and_an_integer_tensor(t):
    """bits 0 and 9, an int64 x, and a group of 4 for a width of 6 raise ValueError"""
    lib = t.learner("quantization")
    for bad in (0, 9):
        t.raises(ValueError, lib.zero_point_quantize, torch.zeros(2, 6), bad)
    t.raises(ValueError, lib.zero_point_quantize, torch.zeros(2, 6, dtype=torch.int64), 8)
    t.raises(ValueError, lib.zero_point_quantize, torch.zeros(2, 6), 8, group_size=4)


# -- 13.3 weight_quant --------------------------------------------------------------------------------


def weight_expected(w, block_size):
    """Block by block, as the contract says: ``(w_fp8, scale)``."""
    rows, cols = w.shape
    n_rows, n_cols = math.ceil(rows / block_size), math.ceil(cols / block_size)
    w = w.float()
    out = torch.empty(rows, cols, dtype=FP8)
    scale = torch.empty(n_rows, n_cols, dtype=F32)
    for i in range(n_rows):
        for j in range(n_cols):
            block = w[i * block_size : (i + 1) * block_size, j * block_size : (j + 1) * block_size]
            amax = block.abs().max()
            s = amax / 448.0 if amax > 0 else torch.tensor(1.0)
            scale[i, j] = s
            out[i * block_size : (i + 1) * block_size, j * block_size : (j + 1) * block_size] = (block / s).to(FP8)
    return out, scale


def check_weight(t, w, block_size, what):
    w_fp8, scale = t.learner("fp8").weight_quant(w, block_size)
    w_expected, scale_expected = weight_expected(w, block_size)
    t.close(scale, scale_expected, atol=0, rtol=0, what=f"{what}: scale")
    fp8_equal(t, w_fp8, w_expected, what=f"{what}: the float8 weights")


@visible_check("13.3")
def blocks_of_128(t):
    """a (256, 384) weight in 128 x 128 blocks of different sizes: six scales amax / 448, the float8 numbers"""
    w = seeded_randn(10, 256, 384, dtype=F32) * torch.tensor([0.01, 1.0])[:, None].repeat_interleave(128, 0)
    check_weight(t, w, 128, "(256, 384)")


@visible_check("13.3")
def partial_blocks_at_the_edges(t):
    """a (130, 200) weight in blocks of 64: 3 x 4 scales, the last row and column of blocks partial"""
    check_weight(t, seeded_randn(11, 130, 200, dtype=F32), 64, "(130, 200)")


@visible_check("13.3", inputs=True)
def rejects_a_vector_and_block_zero(t):
    """a 1-D weight, an int64 weight and block_size 0 raise ValueError"""
    lib = t.learner("fp8")
    t.raises(ValueError, lib.weight_quant, torch.zeros(8), 4)
    t.raises(ValueError, lib.weight_quant, torch.zeros(8, 8, dtype=torch.int64), 4)
    t.raises(ValueError, lib.weight_quant, torch.zeros(8, 8), 0)


# -- 13.4 act_quant -----------------------------------------------------------------------------------


def act_expected(x, block_size, ue8m0=False):
    """Tile by tile, as the contract says: ``(x_fp8, scale)``."""
    tiles = x.float().reshape(*x.shape[:-1], -1, block_size)
    scale = tiles.abs().amax(-1).clamp(min=1e-4) / 448.0
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    return (tiles / scale[..., None]).to(FP8).reshape(x.shape), scale


def check_act(t, x, block_size, what, scale_fmt=None):
    x_fp8, scale = t.learner("fp8").act_quant(x, block_size, scale_fmt)
    x_expected, scale_expected = act_expected(x, block_size, ue8m0=scale_fmt == "ue8m0")
    t.close(scale, scale_expected, atol=0, rtol=0, what=f"{what}: scale")
    fp8_equal(t, x_fp8, x_expected, what=f"{what}: the float8 numbers")


@visible_check("13.4")
def tiles_of_128_and_a_tile_of_zeros(t):
    """(3, 256) activations in 1 x 128 tiles, one tile all zeros (its amax floored at 1e-4)"""
    x = seeded_randn(20, 3, 256, dtype=F32) * 5
    x[1, :128] = 0
    check_act(t, x, 128, "(3, 256)")


@visible_check("13.4")
def ue8m0_rounds_the_scale_up(t):
    """scale_fmt='ue8m0': each scale the power of two at or above amax / 448 (a tile of amax 448: scale 1)"""
    x = seeded_randn(21, 2, 64, dtype=F32) * 3
    x[0, :32] = torch.linspace(-448, 448, 32)
    check_act(t, x, 32, "ue8m0", scale_fmt="ue8m0")


@visible_check("13.4", inputs=True)
def rejects_tiles_that_do_not_divide(t):
    """a width of 100 in tiles of 128, and scale_fmt 'e8m0', raise ValueError"""
    lib = t.learner("fp8")
    t.raises(ValueError, lib.act_quant, torch.zeros(2, 100), 128)
    t.raises(ValueError, lib.act_quant, torch.zeros(2, 128), 128, "e8m0")


# -- 13.5 fp8_gemm ------------------------------------------------------------------------------------


def gemm_case(seed, lead, n, k, block_size):
    """Float8 numbers (as exact float32) and float32 scales of both operands, and the float64 product of
    the dequantized operands."""
    a = exact_fp8(seeded_randn(seed, *lead, k, dtype=F32) * 100)
    b = exact_fp8(seeded_randn(seed + 1, n, k, dtype=F32) * 100)
    n_k = math.ceil(k / block_size)
    a_scale = torch.exp(seeded_randn(seed + 2, *lead, n_k, dtype=F32))  # positive, a few orders of magnitude
    b_scale = torch.exp(seeded_randn(seed + 3, math.ceil(n / block_size), n_k, dtype=F32))
    a_per = a_scale.double().repeat_interleave(block_size, -1)[..., :k]
    b_per = b_scale.double().repeat_interleave(block_size, 0)[:n].repeat_interleave(block_size, 1)[:, :k]
    expected = (a.double() * a_per) @ (b.double() * b_per).T
    return a, a_scale, b, b_scale, expected


def check_gemm(t, seed, lead, n, k, block_size, what):
    a, a_scale, b, b_scale, expected = gemm_case(seed, lead, n, k, block_size)
    got = t.learner("fp8").fp8_gemm(to_fp8(t, a), a_scale, to_fp8(t, b), b_scale, block_size)
    atol = 1e-5 * expected.abs().max().item()  # float32 sums of float8 products: rounding only
    t.close(got, expected.float(), atol=atol, rtol=1e-5, what=what)


@visible_check("13.5")
def equals_the_dequantized_product(t):
    """(5, 256) times (300, 256).T in blocks of 128: the float64 product of the dequantized operands, to rounding"""
    check_gemm(t, 30, (5,), 300, 256, 128, "(5, 256) @ (300, 256).T")


@visible_check("13.5")
def a_narrower_last_slice_and_batched_rows(t):
    """a (2, 3, 200) batch times (70, 200).T in blocks of 64: K and N not multiples of the block"""
    check_gemm(t, 31, (2, 3), 70, 200, 64, "(2, 3, 200) @ (70, 200).T")


@visible_check("13.5", inputs=True)
def rejects_float32_operands_and_mismatched_k(t):
    """a float32 a, b with a different K, and a_scale of the wrong shape raise ValueError"""
    lib = t.learner("fp8")
    a, a_scale, b, b_scale, _ = gemm_case(32, (4,), 8, 16, 8)
    t.raises(ValueError, lib.fp8_gemm, a, a_scale, to_fp8(t, b), b_scale, 8)
    t.raises(ValueError, lib.fp8_gemm, to_fp8(t, a), a_scale, to_fp8(t, b[:, :8]), b_scale[:, :1], 8)
    t.raises(ValueError, lib.fp8_gemm, to_fp8(t, a), a_scale[:, :1], to_fp8(t, b), b_scale, 8)
