"""Hidden tests of Chapter 13 — quantization and DeepSeek-V3's FP8 recipe (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`. Expected values come from the visible checks' helpers, which write the
contract's formulas out with PyTorch's own operations (and PyTorch's quantized tensors), or from
float64 products of the dequantized operands.
"""

from course_lib.checks import seeded_randn
from course_lib.checks.ch13 import (
    EPS,
    FP8,
    check_absmax,
    check_act,
    check_gemm,
    check_weight,
    check_zero_point,
    exact_fp8,
    fp8_bytes,
    fp8_equal,
    gemm_case,
    to_fp8,
    torch_quint8,
)

import torch

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64


# -- 13.1 absmax_quantize -----------------------------------------------------------------------------


@hidden_test("13.1")
def every_granularity_and_width(t):
    """a (3, 4, 8) tensor, 2 to 8 bits: one scale, one per index of dims 0, 1, 2 and -2, groups of 1, 2, 4 and 8"""
    x = seeded_randn(100, 3, 4, 8, dtype=F32) * torch.tensor([0.3, 3.0, 30.0])[:, None, None]
    for bits in range(2, 9):
        check_absmax(t, x, bits, f"{bits} bits, one scale")
        for dim in (0, 1, 2, -2):
            check_absmax(t, x, bits, f"{bits} bits, dim {dim}", dim=dim)
        for group_size in (1, 2, 4, 8):
            check_absmax(t, x, bits, f"{bits} bits, groups of {group_size}", group_size=group_size)


@hidden_test("13.1")
def rounds_half_to_even_and_stays_symmetric(t):
    """scale 1 exactly: 2.5 -> 2, -0.5 -> 0, 1.5 -> 2, -3.5 -> -4; -127 (never -128) for the most negative number"""
    lib = t.learner("quantization")
    x = torch.tensor([-127.0, 2.5, -0.5, 1.5, -3.5, 126.5])
    q, scale = lib.absmax_quantize(x, 8)
    t.close(scale, torch.tensor([1.0]), atol=0, rtol=0, what="scale")
    t.close(q, torch.tensor([-127, 2, 0, 2, -4, 126], dtype=torch.int8), atol=0, rtol=0, what="q")


@hidden_test("13.1")
def zeros_get_the_smallest_scale(t):
    """an all-zero tensor: q zeros, scale float32's eps; a row of zeros per row and a group of zeros per group"""
    lib = t.learner("quantization")
    q, scale = lib.absmax_quantize(torch.zeros(2, 3), 8)
    t.close(q, torch.zeros(2, 3, dtype=torch.int8), atol=0, rtol=0, what="all zeros: q")
    t.close(scale, torch.full((1, 1), EPS), atol=0, rtol=0, what="all zeros: scale")
    x = seeded_randn(101, 3, 8, dtype=F32)
    x[1] = 0
    check_absmax(t, x, 8, "a row of zeros", dim=0)
    x = seeded_randn(102, 2, 8, dtype=F32)
    x[0, 4:] = 0
    check_absmax(t, x, 4, "a group of zeros", group_size=4)
    check_absmax(t, seeded_randn(103, 4, 6, dtype=F32) * 1e-9, 8, "numbers below eps")


@hidden_test("13.1")
def float32_arithmetic_for_every_input_dtype(t):
    """float64, float16 and bfloat16 inputs: an int8 q and a float32 scale computed from x.float()"""
    for dtype in (F64, torch.float16, torch.bfloat16):
        x = seeded_randn(104, 3, 8, dtype=F32).to(dtype)
        check_absmax(t, x, 8, f"{dtype}, one scale")
        check_absmax(t, x, 4, f"{dtype}, groups of 4", group_size=4)


@hidden_test("13.1")
def one_dimension_and_many(t):
    """a vector (one scale, dim 0, groups of 5) and a (2, 1, 3, 10) tensor per dim 2 and per groups of 5"""
    v = seeded_randn(105, 10, dtype=F32)
    check_absmax(t, v, 8, "vector")
    check_absmax(t, v, 8, "vector, dim 0", dim=0)
    check_absmax(t, v, 3, "vector, groups of 5", group_size=5)
    x = seeded_randn(106, 2, 1, 3, 10, dtype=F32)
    check_absmax(t, x, 6, "4-D, dim 2", dim=2)
    check_absmax(t, x, 6, "4-D, groups of 5", group_size=5)


@hidden_test("13.1", inputs=True)
def rejects_bad_tensors_and_arguments(t):
    """ValueError for an int tensor, a list, a 0-D tensor, bits True/0/'8', dim 2 or -3 or 1.0 of a matrix, group 0"""
    lib = t.learner("quantization")
    x = torch.zeros(2, 4)
    for bad in (torch.zeros(2, 4, dtype=torch.int64), [[1.0, 2.0]], torch.tensor(1.0)):
        t.raises(ValueError, lib.absmax_quantize, bad, 8)
    for bad in (True, 0, "8"):
        t.raises(ValueError, lib.absmax_quantize, x, bad)
    for bad in (2, -3, 1.0):
        t.raises(ValueError, lib.absmax_quantize, x, 8, dim=bad)
    for bad in (0, -2, 2.0):
        t.raises(ValueError, lib.absmax_quantize, x, 8, group_size=bad)


# -- 13.2 zero_point_quantize -------------------------------------------------------------------------


@hidden_test("13.2")
def equals_pytorch_at_odd_shapes(t):
    """8 bits, (7,), (3, 5) and (2, 3, 4) tensors: per tensor and per channel of each dim (2-D, 3-D) as PyTorch"""
    lib = t.learner("quantization")
    for i, shape in enumerate(((7,), (3, 5), (2, 3, 4))):
        x = seeded_randn(200 + i, *shape, dtype=F32) * 2 + 0.3
        for dim in (None, *range(len(shape) if len(shape) > 1 else 0)):  # PyTorch's per-channel observer needs 2-D
            q, scale, zero = lib.zero_point_quantize(x, 8, dim=dim)
            q_torch, scale_torch, zero_torch = torch_quint8(x, dim)
            what = f"{shape}, dim {dim}"
            t.close(scale.flatten(), scale_torch, atol=0, rtol=0, what=f"{what}: scale")
            t.close(zero.flatten(), zero_torch, atol=0, rtol=0, what=f"{what}: zero_point")
            t.close(q, q_torch, atol=0, rtol=0, what=f"{what}: q")


@hidden_test("13.2")
def every_width_and_granularity(t):
    """1 to 8 bits on a (3, 4, 6) tensor: one scale, per dim 1 and -1, and groups of 2, 3 and 6"""
    x = seeded_randn(210, 3, 4, 6, dtype=F32) * 3
    for bits in range(1, 9):
        check_zero_point(t, x, bits, f"{bits} bits")
        check_zero_point(t, x, bits, f"{bits} bits, dim 1", dim=1)
        check_zero_point(t, x, bits, f"{bits} bits, dim -1", dim=-1)
        for group_size in (2, 3, 6):
            check_zero_point(t, x, bits, f"{bits} bits, groups of {group_size}", group_size=group_size)


@hidden_test("13.2")
def the_range_always_holds_zero(t):
    """all-positive numbers: zero point 0; all-negative: zero point 2^b - 1; both still exact at 0.0"""
    lib = t.learner("quantization")
    positive = seeded_randn(211, 2, 5, dtype=F32).abs() + 1.0
    _, scale, zero = lib.zero_point_quantize(positive, 8)
    t.close(zero, torch.zeros(1, 1, dtype=torch.int32), atol=0, rtol=0, what="positive: zero_point")
    t.close(scale, (positive.max() / 255).reshape(1, 1), atol=0, rtol=0, what="positive: scale")
    check_zero_point(t, positive, 8, "positive")
    negative = -positive
    _, scale, zero = lib.zero_point_quantize(negative, 4)
    t.close(zero, torch.full((1, 1), 15, dtype=torch.int32), atol=0, rtol=0, what="negative: zero_point")
    check_zero_point(t, negative, 4, "negative")


@hidden_test("13.2")
def zeros_ties_and_dtypes(t):
    """all zeros (scale eps, zero point 0), ties x/scale = k + 0.5 (half to even), float64 and bfloat16 inputs"""
    lib = t.learner("quantization")
    q, scale, zero = lib.zero_point_quantize(torch.zeros(3), 8)
    t.close(q, torch.zeros(3, dtype=torch.uint8), atol=0, rtol=0, what="zeros: q")
    t.close(scale, torch.tensor([EPS]), atol=0, rtol=0, what="zeros: scale")
    t.close(zero, torch.zeros(1, dtype=torch.int32), atol=0, rtol=0, what="zeros: zero_point")
    ties = torch.tensor([-10.0, 2.5, 3.5, -0.5, 245.0])  # scale 1, zero point 10
    q, scale, zero = lib.zero_point_quantize(ties, 8)
    t.close(q, torch.tensor([0, 12, 14, 10, 255], dtype=torch.uint8), atol=0, rtol=0, what="ties: q")
    for dtype in (F64, torch.bfloat16):
        check_zero_point(t, seeded_randn(212, 3, 4, dtype=F32).to(dtype), 8, f"{dtype}", dim=0)


@hidden_test("13.2", inputs=True)
def rejects_bad_arguments(t):
    """ValueError for a 0-D tensor, a list, bits True and 2.0, dim 5, group_size 0, dim with group_size"""
    lib = t.learner("quantization")
    x = torch.zeros(2, 4)
    for bad in (torch.tensor(0.5), [0.5]):
        t.raises(ValueError, lib.zero_point_quantize, bad, 8)
    for bad in (True, 2.0):
        t.raises(ValueError, lib.zero_point_quantize, x, bad)
    t.raises(ValueError, lib.zero_point_quantize, x, 8, dim=5)
    t.raises(ValueError, lib.zero_point_quantize, x, 8, group_size=0)
    t.raises(ValueError, lib.zero_point_quantize, x, 8, dim=1, group_size=2)


# -- 13.3 weight_quant --------------------------------------------------------------------------------


@hidden_test("13.3")
def odd_shapes_and_block_sizes(t):
    """(1, 1), (5, 7), (9, 16) and (33, 20) weights in blocks of 1, 4, 8 and 16, scales spanning six decades"""
    for i, (shape, block_size) in enumerate((((1, 1), 1), ((5, 7), 4), ((9, 16), 8), ((33, 20), 16), ((5, 7), 1))):
        w = seeded_randn(300 + i, *shape, dtype=F32) * torch.logspace(-3, 3, shape[1])
        check_weight(t, w, block_size, f"{shape} in blocks of {block_size}")


@hidden_test("13.3")
def a_block_of_zeros_has_scale_one(t):
    """a (4, 4) weight in blocks of 2 whose upper-right block is zeros: that scale is 1 and its numbers 0"""
    lib = t.learner("fp8")
    w = seeded_randn(310, 4, 4, dtype=F32)
    w[:2, 2:] = 0
    _, scale = lib.weight_quant(w, 2)
    t.close(scale[0, 1], torch.tensor(1.0), atol=0, rtol=0, what="the zero block's scale")
    check_weight(t, w, 2, "with a block of zeros")


@hidden_test("13.3")
def largest_magnitude_becomes_448(t):
    """each block's largest magnitude is stored as +-448 exactly; the stored numbers times their scale are close to w"""
    lib = t.learner("fp8")
    w = seeded_randn(320, 12, 10, dtype=F32)
    w_fp8, scale = lib.weight_quant(w, 4)
    values = fp8_bytes(t, w_fp8).view(FP8).float()
    blocks = values.reshape(3, 4, -1)
    t.close(blocks[:, :, :8].reshape(3, 4, 2, 4).abs().amax(dim=(1, 3)), torch.full((3, 2), 448.0), atol=0, rtol=0)
    rebuilt = values * scale.repeat_interleave(4, 0).repeat_interleave(4, 1)[:, :10]
    t.close(rebuilt, w, atol=1e-6, rtol=2**-4, what="dequantized")


@hidden_test("13.3")
def every_input_dtype_in_float32(t):
    """float64, float16 and bfloat16 weights: the float32 computation of w.float()"""
    for dtype in (F64, torch.float16, torch.bfloat16):
        check_weight(t, seeded_randn(330, 6, 9, dtype=F32).to(dtype), 4, f"{dtype}")


@hidden_test("13.3", inputs=True)
def rejects_bad_weights_and_blocks(t):
    """ValueError for a 3-D weight, a list, a float8 weight, block_size 2.0, True and -1"""
    lib = t.learner("fp8")
    t.raises(ValueError, lib.weight_quant, torch.zeros(2, 4, 4), 2)
    t.raises(ValueError, lib.weight_quant, [[1.0]], 2)
    t.raises(ValueError, lib.weight_quant, to_fp8(t, torch.zeros(4, 4)), 2)
    for bad in (2.0, True, -1):
        t.raises(ValueError, lib.weight_quant, torch.zeros(4, 4), bad)


# -- 13.4 act_quant -----------------------------------------------------------------------------------


@hidden_test("13.4")
def odd_shapes_and_tile_widths(t):
    """(1, 7) in tiles of 7 and 1, (2, 3, 24) in tiles of 8 and 24, a vector of 256 in tiles of 128"""
    for i, (shape, block_size) in enumerate(
        (((1, 7), 7), ((1, 7), 1), ((2, 3, 24), 8), ((2, 3, 24), 24), ((256,), 128))
    ):
        x = seeded_randn(400 + i, *shape, dtype=F32) * 10 ** torch.linspace(-3, 3, shape[-1])
        check_act(t, x, block_size, f"{shape} in tiles of {block_size}")
        check_act(t, x, block_size, f"{shape} in tiles of {block_size}, ue8m0", scale_fmt="ue8m0")


@hidden_test("13.4")
def the_floor_of_1e_4(t):
    """tiles of zeros, of amax 1e-6 and of amax 2e-4: scales 1e-4/448, 1e-4/448 and 2e-4/448"""
    lib = t.learner("fp8")
    x = torch.zeros(3, 4)
    x[1, 0], x[2, 1] = 1e-6, -2e-4
    _, scale = lib.act_quant(x, 4)
    expected = torch.tensor([[1e-4], [1e-4], [2e-4]]) / 448.0
    t.close(scale, expected, atol=0, rtol=0, what="scale")
    check_act(t, x, 4, "tiny tiles")
    check_act(t, x, 4, "tiny tiles, ue8m0", scale_fmt="ue8m0")


@hidden_test("13.4")
def ue8m0_keeps_a_power_of_two_and_rounds_up_otherwise(t):
    """amax 448 * 2^-3 gives scale 2^-3 exactly; amax 448 * 1.01 * 2^-3 gives 2^-2, not 2^-3"""
    lib = t.learner("fp8")
    x = torch.tensor([[56.0, -1.0], [56.56, 3.0]])
    x_fp8, scale = lib.act_quant(x, 2, "ue8m0")
    t.close(scale, torch.tensor([[0.125], [0.25]]), atol=0, rtol=0, what="scale")
    fp8_equal(t, x_fp8, torch.tensor([[448.0, -8.0], [226.24, 12.0]]).to(FP8), what="the float8 numbers")


@hidden_test("13.4")
def every_activation_dtype_in_float32(t):
    """float64, float16 and bfloat16 activations: the float32 computation of x.float(), both scale formats"""
    for dtype in (F64, torch.float16, torch.bfloat16):
        x = (seeded_randn(410, 2, 16, dtype=F32) * 4).to(dtype)
        check_act(t, x, 8, f"{dtype}")
        check_act(t, x, 8, f"{dtype}, ue8m0", scale_fmt="ue8m0")


@hidden_test("13.4", inputs=True)
def rejects_bad_activations_and_formats(t):
    """ValueError for a 0-D tensor, an int tensor, block_size 0 / 3 (for width 8) / 4.0, scale_fmt 'UE8M0' and 1"""
    lib = t.learner("fp8")
    t.raises(ValueError, lib.act_quant, torch.tensor(1.0), 1)
    t.raises(ValueError, lib.act_quant, torch.zeros(2, 8, dtype=torch.int32), 4)
    for bad in (0, 3, 4.0):
        t.raises(ValueError, lib.act_quant, torch.zeros(2, 8), bad)
    for bad in ("UE8M0", 1):
        t.raises(ValueError, lib.act_quant, torch.zeros(2, 8), 4, bad)


# -- 13.5 fp8_gemm ------------------------------------------------------------------------------------


@hidden_test("13.5")
def odd_shapes_and_blocks(t):
    """(1,) x (1, 1) in blocks of 1, (3, 20) x (9, 20) in 8, (2, 2, 40) x (33, 40) in 16, K = 300 in blocks of 128"""
    check_gemm(t, 500, (1,), 1, 1, 1, "1 x 1")
    check_gemm(t, 501, (3,), 9, 20, 8, "(3, 20) @ (9, 20).T")
    check_gemm(t, 502, (2, 2), 33, 40, 16, "(2, 2, 40) @ (33, 40).T")
    check_gemm(t, 503, (4,), 130, 300, 128, "(4, 300) @ (130, 300).T")


@hidden_test("13.5")
def each_block_its_own_scale(t):
    """scales 10^-6 ... 10^6 per slice and block: each partial product scaled by its own pair of scales"""
    a, _, b, _, _ = gemm_case(510, (3,), 8, 16, 4)
    a_scale = 10.0 ** torch.tensor([[-6.0, -2, 2, 6], [0, 1, 2, 3], [3, 2, 1, 0]])
    b_scale = 10.0 ** torch.tensor([[6.0, 2, -2, -6], [1, -1, 1, -1]])
    a_per = a_scale.double().repeat_interleave(4, -1)
    b_per = b_scale.double().repeat_interleave(4, 0).repeat_interleave(4, 1)
    expected = (a.double() * a_per) @ (b.double() * b_per).T
    got = t.learner("fp8").fp8_gemm(to_fp8(t, a), a_scale, to_fp8(t, b), b_scale, 4)
    t.close(got, expected.float(), atol=0, rtol=1e-5)


@hidden_test("13.5")
def exact_on_small_integers(t):
    """float8 integers with power-of-two scales: the product is exact"""
    a = torch.tensor([[1.0, 2.0, -3.0, 4.0], [0.5, 0.0, 8.0, -1.0]])
    b = torch.tensor([[2.0, -1.0, 1.0, 0.25], [1.0, 1.0, 1.0, 1.0], [-4.0, 3.0, 0.0, 2.0]])
    a_scale, b_scale = torch.tensor([[2.0, 0.5], [1.0, 4.0]]), torch.tensor([[0.25, 8.0], [1.0, 2.0]])
    a_per, b_per = a_scale.repeat_interleave(2, -1), b_scale.repeat_interleave(2, 0)[:3].repeat_interleave(2, 1)
    expected = ((a * a_per).double() @ (b * b_per).double().T).float()
    got = t.learner("fp8").fp8_gemm(to_fp8(t, a), a_scale, to_fp8(t, b), b_scale, 2)
    t.close(got, expected, atol=0, rtol=0)


@hidden_test("13.5")
def operands_at_the_edge_of_float8(t):
    """operands of +-448 and of the smallest float8 numbers, from act_quant and weight_quant's own formulas"""
    a = exact_fp8(torch.tensor([[448.0, -448.0, 2.0**-9, 0.0], [1.0, 2.0, 3.0, 4.0]]))
    b = exact_fp8(torch.tensor([[448.0, 448.0, 448.0, -(2.0**-9)]]))
    a_scale, b_scale = torch.tensor([[1e-3, 2.0], [1.0, 1.0]]), torch.tensor([[3.0, 1e3]])
    a_per, b_per = a_scale.double().repeat_interleave(2, -1), b_scale.double().repeat_interleave(2, 1)
    expected = (a.double() * a_per) @ (b.double() * b_per).T
    got = t.learner("fp8").fp8_gemm(to_fp8(t, a), a_scale, to_fp8(t, b), b_scale, 2)
    t.close(got, expected.float(), atol=1e-6, rtol=1e-6)


@hidden_test("13.5", inputs=True)
def rejects_bad_operands_and_scales(t):
    """ValueError for a float8 e5m2 b, a 1-D b, float64 scales, b_scale of the wrong shape, block_size 0"""
    lib = t.learner("fp8")
    a, a_scale, b, b_scale, _ = gemm_case(520, (2,), 6, 8, 4)
    fa, fb = to_fp8(t, a), to_fp8(t, b)
    e5m2 = t.learner("fp8").torch.Tensor.to(b, t.value(t.learner("fp8").torch.float8_e5m2))
    t.raises(ValueError, lib.fp8_gemm, fa, a_scale, e5m2, b_scale, 4)
    t.raises(ValueError, lib.fp8_gemm, fa, a_scale, to_fp8(t, b[0]), b_scale, 4)
    t.raises(ValueError, lib.fp8_gemm, fa, a_scale.double(), fb, b_scale, 4)
    t.raises(ValueError, lib.fp8_gemm, fa, a_scale, fb, b_scale[:1], 4)
    t.raises(ValueError, lib.fp8_gemm, fa, a_scale, fb, b_scale, 0)
