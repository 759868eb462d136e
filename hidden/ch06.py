"""Hidden tests of Chapter 6 — RMSNorm and SwiGLU (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
They may compute expected values with ``t.reference(module)``.
"""

from course_lib.checks import learner_model, seeded_randn
from course_lib.checks.ch06 import llama_rms_norm

import torch
import torch.nn.functional as F

from hidden import hidden_test

F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)


def _check_tokens_independent(t, layer, x: torch.Tensor, token: tuple[int, int], new: torch.Tensor):
    """Changing the vector of one ``token`` (batch, position) of ``x`` leaves every other token's output unchanged."""
    changed = x.clone()
    changed[token] = new
    a, b = layer(x), layer(changed)
    keep = torch.ones(x.shape[:2], dtype=torch.bool)
    keep[token] = False
    t.true(bool(torch.equal(a[keep], b[keep])), "a token's output must depend on its own features only")
    return a


def _check_differentiable(t, layer, expected, x: torch.Tensor, rtol: float):
    """An input that requires grad is accepted (an in-place change of it would raise) and gives an output that
    requires grad, equal to ``expected``'s."""
    with torch.no_grad():
        y = expected(x)
    out = layer(x.clone().requires_grad_(True))
    t.true(out.requires_grad is True, "the output must stay connected to x for autograd (no detach, no no_grad)")
    t.close(out, y, atol=1e-12, rtol=rtol)


def _to(module, dtype):
    """Convert a learner's module to ``dtype`` by its own method (only plain values cross to the sandbox)."""
    {torch.float16: module.half, torch.bfloat16: module.bfloat16, torch.float32: module.float, F64: module.double}[
        dtype
    ]()
    return module


# -- 6.1 silu -------------------------------------------------------------------------------------


@hidden_test("6.1")
def wide_range_and_many_shapes(t):
    """against the reference and torch from -60 to 60 and on seeded tensors from 0-d to 4-d (float64)"""
    lib, ref = t.learner("layers"), t.reference("layers")
    inputs = [
        torch.linspace(-60, 60, 2401, dtype=F64),
        4.0 * seeded_randn(100, 2, 3, 5),
        seeded_randn(101, 1, 2, 1, 3),
        torch.tensor(-1.2784645, dtype=F64),
        torch.zeros(0, 3, dtype=F64),
    ]
    for i, x in enumerate(inputs):
        t.close(lib.silu(x), ref.silu(x), atol=1e-12, rtol=1e-12, what=f"input {i}")
        t.close(lib.silu(x), F.silu(x), atol=1e-12, rtol=1e-12, what=f"input {i} (torch)")


@hidden_test("6.1")
def finite_far_from_zero(t):
    """finite and right for |x| up to 1e4 (float16: 6e4) in float64, float32, float16 and bfloat16"""
    lib = t.learner("layers")
    big = [-1e300, -1e4, -800.0, -90.0, -30.0, 30.0, 90.0, 800.0, 1e4, 1e300]
    for dtype, values in (
        (F64, big),
        (torch.float32, big[1:-1]),
        (torch.bfloat16, big[1:-1]),
        (torch.float16, [-6e4, -1e4, -20.0, 20.0, 1e4, 6e4]),
    ):
        x = torch.tensor(values, dtype=dtype)
        y = lib.silu(x)
        t.true(bool(torch.isfinite(y).all()), f"silu must stay finite for large |x| in {dtype}")
        t.close(y, F.silu(x), atol=1e-6, rtol=1e-2, what=f"{dtype}")


@hidden_test("6.1")
def keeps_every_floating_dtype(t):
    """float32, float16 and bfloat16 inputs give outputs of the same dtype and shape, equal to torch's"""
    lib = t.learner("layers")
    base = 3.0 * seeded_randn(110, 4, 7)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
        x = base.to(dtype)
        t.close(lib.silu(x), F.silu(x), atol=tol, rtol=tol, what=f"{dtype}")


@hidden_test("6.1")
def silu_differentiable_and_leaves_x_alone(t):
    """an input that requires grad is accepted (no in-place change) and gives an output that requires grad"""
    lib = t.learner("layers")
    x = seeded_randn(120, 3, 5)
    leaf = x.clone().requires_grad_(True)  # an in-place change of a leaf that requires grad raises
    out = lib.silu(leaf)
    t.true(out.requires_grad is True, "the output must stay connected to x for autograd (no detach, no no_grad)")
    t.close(out, F.silu(x), atol=1e-12, rtol=1e-12)


@hidden_test("6.1", inputs=True)
def silu_rejects_what_is_not_floating_point(t):
    """integer and bool tensors, a list and a Python float raise ValueError"""
    lib = t.learner("layers")
    for bad in (torch.arange(5), torch.tensor([True, False]), [0.5, 1.5], 0.5):
        t.raises(ValueError, lib.silu, bad)


# -- 6.2 RMSNorm.forward --------------------------------------------------------------------------


def _rms_norm_pair(t, seed, d_model, **kwargs):
    """A reference RMSNorm with a seeded float64 scale, and the learner's holding the same scale."""
    expected = t.reference("layers").RMSNorm(d_model, **kwargs).double()
    with torch.no_grad():
        expected.weight.copy_(1.0 + 0.5 * seeded_randn(seed, d_model))
    mine = learner_model(t, "layers", "RMSNorm", expected.state_dict(), d_model, **kwargs, train=True)
    return mine, expected


@hidden_test("6.2")
def many_shapes_and_settings(t):
    """widths 1 to 64, 1-D to 4-D inputs, eps 1e-6 (default) to 2 against the reference and torch (float64)"""
    cases = [
        (1, (3, 1), {}),
        (7, (2, 5, 7), {}),
        (13, (13,), {"eps": 1e-5}),
        (13, (3, 1, 13), {"eps": 2.0}),
        (64, (2, 2, 3, 64), {"eps": 0.3}),
    ]
    for i, (d, shape, kwargs) in enumerate(cases):
        mine, expected = _rms_norm_pair(t, 200 + i, d, **kwargs)
        x = 1.5 - 3.0 * seeded_randn(210 + i, *shape)
        with torch.no_grad():
            y = expected(x)
        t.close(mine(x), y, atol=1e-12, rtol=1e-12, what=f"case {i}")
        eps = kwargs.get("eps", 1e-6)
        t.close(mine(x), F.rms_norm(x, (d,), expected.weight.detach(), eps=eps), atol=1e-12, rtol=1e-12)


@hidden_test("6.2")
def eps_is_the_layers_own_inside_the_root(t):
    """small inputs, where eps matters: the default 1e-6 and eps=1e-3 are each used, inside the square root"""
    for i, kwargs in enumerate(({}, {"eps": 1e-3})):
        mine, expected = _rms_norm_pair(t, 220 + i, 9, **kwargs)
        x = 1e-3 * seeded_randn(225 + i, 4, 9)
        with torch.no_grad():
            y = expected(x)
        t.close(mine(x), y, atol=1e-12, rtol=1e-10, what=f"eps={kwargs.get('eps', 1e-6)}")


@hidden_test("6.2")
def half_precision_exactly_like_llama_rms_norm(t):
    """float16 and bfloat16, values from 1e-2 to 250: bit for bit Hugging Face's numbers"""
    lib = t.learner("layers")
    for k, dtype in enumerate(HALF):
        for i, (d, scale) in enumerate(((16, 250.0), (7, 1e-2), (64, 1.0))):
            norm = _to(lib.RMSNorm(d, eps=1e-5), dtype)
            weight = (1.0 + 0.5 * seeded_randn(230 + i, d)).to(dtype)
            norm.load_state_dict({"weight": weight})
            x = (scale * seeded_randn(240 + 10 * k + i, 2, 3, d)).to(dtype)
            t.close(norm(x), llama_rms_norm(x, weight, 1e-5), atol=0, rtol=0, what=f"{dtype}, case {i}")


@hidden_test("6.2")
def float32_and_float64_in_their_own_precision(t):
    """float64 is normalised in float64 (not rounded to float32); float32 in, float32 out"""
    mine, expected = _rms_norm_pair(t, 250, 33)
    x = 1.0 + 1e-3 * seeded_randn(251, 3, 33)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-14, rtol=1e-14, what="float64")
    lib = t.learner("layers")
    mine32 = lib.RMSNorm(12)
    x = seeded_randn(252, 3, 4, 12, dtype=torch.float32)
    t.close(mine32(x), F.rms_norm(x, (12,), eps=1e-6), atol=1e-6, rtol=1e-5, what="float32")


@hidden_test("6.2")
def each_token_on_its_own(t):
    """changing one token leaves the others' outputs unchanged; a zero vector gives zeros; scaling barely matters"""
    mine, expected = _rms_norm_pair(t, 260, 16)
    x = seeded_randn(261, 2, 5, 16)
    x[0, 2] = 0.0
    a = _check_tokens_independent(t, mine, x, (1, 3), 100.0 * seeded_randn(262, 16))
    t.true(bool(torch.equal(a[0, 2], torch.zeros(16, dtype=F64))), "a zero vector must come out as zeros")
    with torch.no_grad():
        y = expected(1000.0 * x)
    t.close(mine(1000.0 * x), y, atol=1e-12, rtol=1e-12, what="large inputs")


@hidden_test("6.2")
def rms_norm_differentiable_and_leaves_x_alone(t):
    """an input that requires grad is accepted (no in-place change) and gives an output that requires grad"""
    mine, expected = _rms_norm_pair(t, 270, 8)
    _check_differentiable(t, mine, expected, seeded_randn(271, 2, 3, 8), rtol=1e-12)


@hidden_test("6.2", inputs=True)
def rms_norm_rejects_bad_inputs(t):
    """ValueError for a wrong last dimension, a 0-d tensor, a transposed input, an integer tensor, a list"""
    norm = t.learner("layers").RMSNorm(8)
    for bad in (torch.zeros(2, 9), torch.zeros(8, 3), torch.tensor(1.0), torch.ones(2, 8, dtype=torch.long), [0.5] * 8):
        t.raises(ValueError, norm, bad)


@hidden_test("6.2", inputs=True)
def rms_norm_rejections_name_both_sizes(t):
    """a wrong width raises ValueError naming d_model and the width given"""
    norm = t.learner("layers").RMSNorm(8)
    message = t.raises(ValueError, norm, torch.zeros(2, 13))
    t.true("8" in message and "13" in message, "the message should name d_model (8) and the last dimension (13)")


# -- 6.3 SwiGLU.forward ---------------------------------------------------------------------------


def _swiglu_pair(t, seed, *args, **kwargs):
    """A reference SwiGLU with seeded float64 weights (biases too), and the learner's holding the same weights."""
    torch.manual_seed(seed)
    expected = t.reference("layers").SwiGLU(*args, **kwargs).double().eval()
    with torch.no_grad():
        for p in expected.parameters():
            p.normal_(0.0, 0.5)
    mine = learner_model(t, "layers", "SwiGLU", expected.state_dict(), *args, **kwargs)
    return mine, expected


@hidden_test("6.3")
def matches_the_reference(t):
    """several widths, with and without biases, 1-D to 4-D inputs (float64)"""
    cases = [
        ((4, 1), {}, (4,)),
        ((7, 13), {}, (3, 5, 7)),
        ((13, 11), {"bias": True}, (2, 13)),
        ((6, 16), {"bias": True}, (2, 2, 3, 6)),
        ((32, 88), {}, (1, 9, 32)),
    ]
    for i, (args, kwargs, shape) in enumerate(cases):
        mine, expected = _swiglu_pair(t, 300 + i, *args, **kwargs)
        x = 2.0 * seeded_randn(310 + i, *shape)
        with torch.no_grad():
            y = expected(x)
        t.close(mine(x), y, atol=1e-12, rtol=1e-10, what=f"case {i}")


@hidden_test("6.3")
def the_gate_is_gate_proj(t):
    """silu acts on gate_proj's output only: swapping gate_proj and up_proj changes the result, each the right one"""
    mine, expected = _swiglu_pair(t, 320, 8, 12)
    state = {k: v.clone() for k, v in expected.state_dict().items()}  # not views of the parameters
    swapped = {**state, "gate_proj.weight": state["up_proj.weight"], "up_proj.weight": state["gate_proj.weight"]}
    mine_swapped = learner_model(t, "layers", "SwiGLU", swapped, 8, 12)
    x = 3.0 * seeded_randn(321, 4, 8)
    with torch.no_grad():
        y = expected(x)
        expected.load_state_dict(swapped)
        y_swapped = expected(x)
    t.close(mine(x), y, atol=1e-12, rtol=1e-10, what="as given")
    t.close(mine_swapped(x), y_swapped, atol=1e-12, rtol=1e-10, what="gate and up swapped")


@hidden_test("6.3")
def float32_and_each_position_on_its_own(t):
    """float32 in, float32 out; changing one token leaves the others' outputs unchanged"""
    lib, ref = t.learner("layers"), t.reference("layers")
    torch.manual_seed(330)
    expected = ref.SwiGLU(8, 20)
    mine = lib.SwiGLU(8, 20)
    mine.load_state_dict(dict(expected.state_dict()))
    x = seeded_randn(331, 2, 5, 8, dtype=torch.float32)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-5, rtol=1e-4, what="float32")
    _check_tokens_independent(t, mine, x, (1, 2), torch.full((8,), 50.0))


@hidden_test("6.3")
def swiglu_differentiable_and_leaves_x_alone(t):
    """an input that requires grad is accepted (no in-place change) and gives an output that requires grad"""
    mine, expected = _swiglu_pair(t, 340, 8, 24)
    _check_differentiable(t, mine, expected, seeded_randn(341, 2, 3, 8), rtol=1e-10)


@hidden_test("6.3", inputs=True)
def swiglu_rejects_bad_inputs(t):
    """ValueError for a wrong last dimension, a 0-d tensor and a list; the message names both sizes"""
    ffn = t.learner("layers").SwiGLU(8, 16)
    for bad in (torch.zeros(2, 16), torch.zeros(8, 3), torch.tensor(1.0), [0.5] * 8):
        t.raises(ValueError, ffn, bad)
    message = t.raises(ValueError, ffn, torch.zeros(2, 13))
    t.true("8" in message and "13" in message, "the message should name d_model (8) and the last dimension (13)")


# -- 6.4 llama_ffn_dim ----------------------------------------------------------------------------


@hidden_test("6.4")
def more_published_widths(t):
    """Llama 1 7B, Llama 3 70B, Llama 3.1 405B and Llama 3.2 1B, as published, and the reference on a sweep"""
    lib, ref = t.learner("layers"), t.reference("layers")
    published = [
        ((4096, 256, None), 11008),  # Llama 1 7B
        ((8192, 4096, 1.3), 28672),  # Llama 3 70B
        ((16384, 1024, 1.2), 53248),  # Llama 3.1 405B
        ((2048, 256, 1.5), 8192),  # Llama 3.2 1B
    ]
    for args, width in published:
        t.equal(lib.llama_ffn_dim(*args), width, what=f"llama_ffn_dim{args}")
    for d in (1, 2, 3, 5, 64, 100, 768, 1000, 1537):
        for args in ((d,), (d, 1), (d, 7, 1.5), (d, 128, 2), (d, 32, 0.75)):
            t.equal(lib.llama_ffn_dim(*args), ref.llama_ffn_dim(*args), what=f"llama_ffn_dim{args}")


@hidden_test("6.4")
def each_step_rounds_down_then_up(t):
    """two thirds and the multiplier are truncated (multiple_of=1); then rounded up, not to the nearest"""
    lib = t.learner("layers")
    cases = [
        ((4096, 1), 10922),  # 32768 / 3 = 10922.67: down, not to 10923
        ((5120, 1), 13653),
        ((4096, 1, 1.3), 14198),  # 1.3 * 10922 = 14198.6: down (1.3 on 4d first, or on 8d/3 unrounded: 14199)
        ((8192, 1, 1.3), 28398),
        ((100, 64), 320),  # 266 is closer to 256, but rounds up
        ((1000, 1000), 3000),  # 2666 up to 3000
        ((96, 256), 256),  # 256 is already a multiple: it stays
        ((96, 128, 1.5), 384),  # 1.5 * 256 = 384, a multiple of 128: it stays
    ]
    for args, width in cases:
        t.equal(lib.llama_ffn_dim(*args), width, what=f"llama_ffn_dim{args}")


@hidden_test("6.4")
def keywords_defaults_and_an_int(t):
    """keyword arguments; multiple_of defaults to 256 and the multiplier to None; the width is a Python int"""
    lib = t.learner("layers")
    t.equal(lib.llama_ffn_dim(d_model=5120), 13824, what="llama_ffn_dim(d_model=5120)")
    t.equal(lib.llama_ffn_dim(768, ffn_dim_multiplier=2), 4096, what="llama_ffn_dim(768, ffn_dim_multiplier=2)")
    t.equal(lib.llama_ffn_dim(768, ffn_dim_multiplier=None), 2048, what="llama_ffn_dim(768, ffn_dim_multiplier=None)")
    t.equal(lib.llama_ffn_dim(3, multiple_of=1, ffn_dim_multiplier=1.0), 8, what="llama_ffn_dim(3, 1, 1.0)")


@hidden_test("6.4", inputs=True)
def ffn_dim_rejects_bad_arguments(t):
    """ValueError for non-positive or non-int sizes, bool, string, negative or infinite multipliers, no hidden unit"""
    lib = t.learner("layers")
    bad = [
        (0,),
        (-4096,),
        (4096.0,),
        (True,),
        (4096, 0),
        (4096, 256.0),
        (4096, False),
        (4096, 256, 0),
        (4096, 256, -1.3),
        (4096, 256, "1.3"),
        (4096, 256, True),
        (4096, 256, float("inf")),
        (1, 256, 0.1),  # floor(8 / 3) = 2, floor(0.1 * 2) = 0: no hidden unit
    ]
    for args in bad:
        t.raises(ValueError, lib.llama_ffn_dim, *args)
