"""Hidden tests of Chapter 7 — rotary position embeddings (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
They may compute expected values with ``t.reference(module)``.
"""

from course_lib.checks import seeded_randn

import math

import torch

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64


def _tables(ref, head_dim, positions, base=10000.0, dtype=F32):
    """Reference cos and sin tables for the given positions."""
    angles = positions.to(dtype)[:, None] * ref.rope_frequencies(head_dim, base).to(dtype)
    return angles.cos(), angles.sin()


# -- 7.1 rope_frequencies -----------------------------------------------------------------------------


@hidden_test("7.1")
def many_widths_and_bases(t):
    """head_dim from 2 to 256 and bases from 1.5 to 1e6 (int and float) against the reference"""
    lib, ref = t.learner("rope"), t.reference("rope")
    for head_dim in (2, 4, 6, 10, 64, 96, 256):
        for base in (10000.0, 500000, 1.5, 2, 1e6):
            t.close(
                lib.rope_frequencies(head_dim, base),
                ref.rope_frequencies(head_dim, base),
                atol=0,
                rtol=1e-6,
                what=f"head_dim {head_dim}, base {base}",
            )


@hidden_test("7.1")
def the_default_base_and_the_formula(t):
    """the default base is 10000; values equal base ** (-2i / head_dim) computed in float64"""
    lib = t.learner("rope")
    for head_dim in (12, 128):
        exact = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=F64) / head_dim)
        t.close(lib.rope_frequencies(head_dim), exact.float(), atol=0, rtol=1e-6, what=f"head_dim {head_dim}")
    exact = 500000.0 ** (-torch.arange(0, 18, 2, dtype=F64) / 18)
    t.close(lib.rope_frequencies(18, base=500000), exact.float(), atol=0, rtol=1e-6, what="an int base")


@hidden_test("7.1", inputs=True)
def rejects_bad_widths(t):
    """ValueError for head_dim 1, 3, 0, -2, 8.0, True and '8'; the message names the value"""
    lib = t.learner("rope")
    for bad in (1, 3, 0, -2, 8.0, True, "8"):
        t.raises(ValueError, lib.rope_frequencies, bad)
    message = t.raises(ValueError, lib.rope_frequencies, 13)
    t.true("13" in message, "the message should name the head_dim given (13)")


@hidden_test("7.1", inputs=True)
def rejects_bad_bases(t):
    """ValueError for a base of 1, 0.99, 0, -5, nan, inf, True, '10000' or a tensor; the message names the value"""
    lib = t.learner("rope")
    for bad in (1, 1.0, 0.99, 0.0, -5.0, math.nan, math.inf, True, "10000", torch.tensor(10000.0)):
        t.raises(ValueError, lib.rope_frequencies, 8, bad)
    message = t.raises(ValueError, lib.rope_frequencies, 8, 0.25)
    t.true("0.25" in message, "the message should name the base given (0.25)")


# -- 7.2 apply_rope -----------------------------------------------------------------------------------


@hidden_test("7.2")
def split_halves_at_odd_shapes(t):
    """interleaved=False against the reference: 2-D to 5-D inputs, head_dim 2 to 64, one position or many"""
    lib, ref = t.learner("rope"), t.reference("rope")
    shapes = [(1, 2), (7, 6), (3, 1, 10), (2, 5, 9, 64), (1, 2, 3, 4, 6), (2, 3, 1, 8)]
    for i, shape in enumerate(shapes):
        x = seeded_randn(100 + i, *shape)
        cos, sin = _tables(ref, shape[-1], torch.arange(3, 3 + shape[-2]))
        expected = ref.apply_rope(x, cos, sin)
        for kwargs in ({}, {"interleaved": False}):  # the default is split halves
            t.close(lib.apply_rope(x, cos, sin, **kwargs), expected, atol=1e-12, rtol=1e-12, what=f"{shape}, {kwargs}")


@hidden_test("7.2")
def adjacent_pairs_at_odd_shapes(t):
    """interleaved=True against the reference and against complex multiplication, 2-D to 5-D inputs"""
    lib, ref = t.learner("rope"), t.reference("rope")
    shapes = [(1, 2), (7, 6), (3, 1, 10), (2, 5, 9, 64), (1, 2, 3, 4, 6)]
    for i, shape in enumerate(shapes):
        x = seeded_randn(200 + i, *shape)
        positions = torch.tensor([0, 5, 17, 2, 1000, 7, 3, 11, 40])[: shape[-2]]  # positions need not be in order
        cos, sin = _tables(ref, shape[-1], positions, base=500000.0)
        got = lib.apply_rope(x, cos, sin, interleaved=True)
        t.close(got, ref.apply_rope(x, cos, sin, interleaved=True), atol=1e-12, rtol=1e-12, what=f"{shape}")
        z = torch.view_as_complex(x.reshape(*shape[:-1], -1, 2).contiguous()) * torch.complex(
            cos.double(), sin.double()
        )
        t.close(got, torch.view_as_real(z).flatten(-2), atol=1e-12, rtol=1e-12, what=f"{shape}, complex")


@hidden_test("7.2")
def tables_take_the_dtype_of_x(t):
    """float32 x with float64 tables gives float32; float64 x with float32 tables gives float64"""
    lib, ref = t.learner("rope"), t.reference("rope")
    cases = [  # x, its tables, (atol, rtol)
        (seeded_randn(300, 2, 4, 8, dtype=F32), _tables(ref, 8, torch.arange(4), dtype=F64), (1e-6, 1e-5)),
        (seeded_randn(301, 3, 5, 12), _tables(ref, 12, torch.arange(2, 7)), (1e-12, 1e-12)),
    ]
    for x, (cos, sin), (atol, rtol) in cases:
        for interleaved in (False, True):
            expected = ref.apply_rope(x, cos, sin, interleaved=interleaved)
            got = lib.apply_rope(x, cos, sin, interleaved)
            t.close(got, expected, atol=atol, rtol=rtol, what=f"{x.dtype} x, interleaved={interleaved}")


@hidden_test("7.2")
def input_left_untouched_and_gradients_flow(t):
    """x is not modified, in either convention, and the result stays differentiable with respect to x"""
    lib, ref = t.learner("rope"), t.reference("rope")
    x = seeded_randn(400, 2, 3, 5, 8)
    before = x.clone()
    cos, sin = _tables(ref, 8, torch.arange(5))
    for interleaved in (False, True):
        lib.apply_rope(x, cos, sin, interleaved=interleaved)
        t.equal(x, before, what=f"x after apply_rope(interleaved={interleaved})")
        out = lib.apply_rope(x.clone().requires_grad_(True), cos, sin, interleaved=interleaved)
        t.true(out.requires_grad is True, "the result must stay connected to x for autograd")
        t.close(out.detach(), ref.apply_rope(x, cos, sin, interleaved), atol=1e-12, rtol=1e-12, what=f"{interleaved}")


@hidden_test("7.2", inputs=True)
def rejects_bad_x(t):
    """ValueError for a list, an integer tensor, a 1-D tensor and an odd last dimension"""
    lib = t.learner("rope")
    cos, sin = torch.ones(3, 2), torch.zeros(3, 2)
    for bad in ([[1.0] * 4] * 3, torch.ones(3, 4, dtype=torch.int64), torch.ones(4), torch.ones(2, 3, 5)):
        t.raises(ValueError, lib.apply_rope, bad, cos, sin)


@hidden_test("7.2", inputs=True)
def rejects_bad_tables_and_flags(t):
    """ValueError for tables with a batch dimension, the wrong length or width, of ints, or a non-bool flag"""
    lib = t.learner("rope")
    x = torch.zeros(2, 3, 8)
    good = torch.ones(3, 4)
    for bad in (
        torch.ones(1, 3, 4),
        torch.ones(4, 4),
        torch.ones(3, 8),
        torch.ones(3, 4, dtype=torch.int64),
        [[1.0] * 4] * 3,
    ):
        t.raises(ValueError, lib.apply_rope, x, bad, good)
        t.raises(ValueError, lib.apply_rope, x, good, bad)
    message = t.raises(ValueError, lib.apply_rope, x, torch.ones(5, 4), good)
    t.true(
        "3" in message and "5" in message, "the message should give the shape expected (3, 4) and the one given (5, 4)"
    )
    for bad in (1, "yes", None):
        t.raises(ValueError, lib.apply_rope, x, good, good, bad)


# -- 7.3 RotaryEmbedding.forward ----------------------------------------------------------------------


def _module_pair(t, head_dim, max_seq_len, base=10000.0, interleaved=False):
    """The learner's RotaryEmbedding, made from the reference's frequencies (so that 7.3 never depends on 7.1),
    and the reference's, built alike."""
    ref = t.reference("rope")
    theta = ref.rope_frequencies(head_dim, base)
    mine = t.learner("rope").RotaryEmbedding.from_frequencies(theta, max_seq_len, interleaved=interleaved)
    return mine, ref.RotaryEmbedding(head_dim, max_seq_len, base=base, interleaved=interleaved)


@hidden_test("7.3")
def offsets_shapes_and_bases(t):
    """several shapes, offsets, bases and both conventions against the reference module"""
    cases = [
        ((2, 1), {}, (1, 1, 1, 2), 0),
        ((8, 20), {}, (2, 3, 7, 8), 13),
        ((6, 9), {"base": 500000.0}, (1, 4, 5, 6), 4),
        ((10, 64), {"interleaved": True}, (3, 2, 11, 10), 50),
        ((4, 6), {"base": 2.5, "interleaved": True}, (5, 4), 1),
        ((16, 12), {}, (2, 1, 2, 1, 16), 11),
    ]
    for i, (args, kwargs, shape, offset) in enumerate(cases):
        mine, expected = _module_pair(t, *args, **kwargs)
        x = seeded_randn(500 + i, *shape)
        t.close(mine(x, offset=offset), expected(x, offset=offset), atol=1e-6, rtol=1e-6, what=f"case {i}")
        t.close(mine(x, offset), expected(x, offset), atol=1e-6, rtol=1e-6, what=f"case {i}, positional offset")


@hidden_test("7.3")
def default_offset_and_the_last_positions(t):
    """offset defaults to 0; a piece may end exactly at max_seq_len; pieces equal the whole, both conventions"""
    for interleaved in (False, True):
        mine, expected = _module_pair(t, 8, 12, interleaved=interleaved)
        x = seeded_randn(600, 2, 2, 12, 8)
        whole = mine(x)
        t.close(whole, expected(x, offset=0), atol=1e-6, rtol=1e-6, what=f"offset 0, interleaved={interleaved}")
        for start, stop in ((0, 5), (5, 6), (6, 12), (11, 12)):
            piece = mine(x[..., start:stop, :], offset=start)
            t.close(piece, whole[..., start:stop, :], atol=1e-12, rtol=1e-12, what=f"positions {start} to {stop - 1}")


@hidden_test("7.3")
def dtypes_follow_x(t):
    """float32 and float64 inputs keep their dtype, also when the module itself was converted with .double()"""
    mine, expected = _module_pair(t, 6, 10)
    for dtype in (F32, F64):
        x = seeded_randn(700, 2, 3, 4, 6, dtype=dtype)
        t.close(mine(x, offset=3), expected(x, offset=3), atol=1e-6, rtol=1e-5, what=f"{dtype}")
    mine.double()
    expected.double()
    x = seeded_randn(701, 2, 3, 4, 6, dtype=F32)
    t.close(mine(x, offset=2), expected(x, offset=2), atol=1e-6, rtol=1e-5, what="float32 x, float64 tables")


@hidden_test("7.3")
def input_left_untouched(t):
    """x is not modified, in either convention"""
    for interleaved in (False, True):
        mine, expected = _module_pair(t, 8, 16, interleaved=interleaved)
        x = seeded_randn(800, 1, 2, 5, 8)
        before = x.clone()
        out = mine(x, offset=4)
        t.equal(x, before, what=f"x after forward (interleaved={interleaved})")
        t.close(out, expected(before, offset=4), atol=1e-6, rtol=1e-6, what=f"result, interleaved={interleaved}")


@hidden_test("7.3", inputs=True)
def rejects_bad_offsets(t):
    """ValueError for offsets True, 2.0, -3, a tensor, and any offset + seq past max_seq_len; the message names them"""
    rope, _ = _module_pair(t, 4, 10)
    x = torch.zeros(1, 2, 3, 4)
    for bad in (True, 2.0, -3, torch.tensor(2)):
        t.raises(ValueError, rope, x, offset=bad)
    for offset in (8, 10, 100):
        t.raises(ValueError, rope, x, offset=offset)
    message = t.raises(ValueError, rope, x, offset=9)
    t.true(
        all(number in message for number in ("9", "3", "10")),
        "the message should name the offset (9), the length (3) and max_seq_len (10)",
    )
    t.raises(ValueError, rope, torch.zeros(1, 11, 4))


@hidden_test("7.3", inputs=True)
def rejects_bad_inputs(t):
    """ValueError for the wrong head_dim (the message names both), a 1-D tensor, an integer tensor, a list"""
    rope, _ = _module_pair(t, 8, 10)
    message = t.raises(ValueError, rope, torch.zeros(1, 2, 3, 6))
    t.true("8" in message and "6" in message, "the message should name head_dim (8) and the width given (6)")
    for bad in (torch.zeros(8), torch.zeros(2, 8, dtype=torch.int64), [[0.0] * 8]):
        t.raises(ValueError, rope, bad)
