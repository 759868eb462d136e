"""Hidden tests of Chapter 9 — multi-query and grouped-query attention (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
Expected values come from ``torch`` itself (``repeat_interleave``, grouped
``scaled_dot_product_attention``, slicing and averaging), from the visible checks' helpers that
compute them that way, or from ``t.reference(module)``.
"""

from course_lib.checks import learner_model, seeded_randn
from course_lib.checks.ch09 import _counts, _expected, _state, _tables

import torch

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64


def _in_worker(t, x):
    """A copy of ``x`` that stays where the learner's code runs (a ``Parameter`` crosses as a handle), so
    that a change made to it there can be read back."""
    return t.learner("gqa").torch.nn.Parameter(x.clone(), requires_grad=False)


# -- 9.1 repeat_kv ----------------------------------------------------------------------------------


@hidden_test("9.1")
def many_shapes_and_dtypes(t):
    """odd shapes, n_rep 1 to 5, in float32, float64, float16, bfloat16 and int64: repeat_interleave exactly"""
    lib = t.learner("gqa")
    cases = (((1, 1, 1, 1), 5), ((3, 2, 7, 6), 3), ((2, 4, 1, 8), 2), ((1, 5, 3, 2), 1), ((2, 3, 4, 5), 4))
    for i, (shape, n_rep) in enumerate(cases):
        x = seeded_randn(100 + i, *shape)
        for dtype in (F32, F64, torch.float16, torch.bfloat16, torch.int64):
            given = (10 * x).to(dtype)
            expected = torch.repeat_interleave(given, n_rep, dim=1)
            t.close(lib.repeat_kv(given, n_rep), expected, atol=0, rtol=0, what=f"{shape}, n_rep {n_rep}, {dtype}")


@hidden_test("9.1")
def groups_are_consecutive_not_tiled(t):
    """4 kv heads holding 0, 1, 2, 3 repeated twice read 0, 0, 1, 1, 2, 2, 3, 3 (not 0, 1, 2, 3, 0, 1, 2, 3)"""
    lib = t.learner("gqa")
    x = torch.arange(4.0, dtype=F64).reshape(1, 4, 1, 1).expand(2, 4, 3, 2).contiguous()
    expected = torch.tensor([0.0, 0, 1, 1, 2, 2, 3, 3], dtype=F64).reshape(1, 8, 1, 1).expand(2, 8, 3, 2).contiguous()
    t.close(lib.repeat_kv(x, 2), expected, atol=0, rtol=0)


@hidden_test("9.1", inputs=True)
def rejects_bad_repeats_and_inputs(t):
    """ValueError for n_rep -1, 0, 1.5, True, '2' and None, and for x of 3 or 5 dimensions or a list"""
    lib = t.learner("gqa")
    x = torch.zeros(1, 2, 3, 4, dtype=F64)
    for bad in (-1, 0, 1.5, True, "2", None):
        t.raises(ValueError, lib.repeat_kv, x, bad)
    for bad in (torch.zeros(2, 3, 4, dtype=F64), torch.zeros(1, 1, 2, 3, 4, dtype=F64), [[[[1.0]]]]):
        t.raises(ValueError, lib.repeat_kv, bad, 2)


# -- 9.2 GroupedQueryAttention.forward --------------------------------------------------------------


def _attention(t, state, d_model, n_heads, n_kv_heads, **kwargs):
    return learner_model(t, "gqa", "GroupedQueryAttention", state, d_model, n_heads, n_kv_heads, **kwargs)


@hidden_test("9.2")
def odd_shapes_every_grouping(t):
    """d_model 40/24/12/8 with 10/6/3/1 heads, every divisor as kv heads, batch 1 to 3, seq 1 to 9: grouped SDPA"""
    for d_model, n_heads, kv_choices in ((40, 10, (10, 5, 2, 1)), (24, 6, (6, 3, 2, 1)), (12, 3, (3, 1)), (8, 1, (1,))):
        for n_kv_heads in kv_choices:
            state = _state(200 + d_model + n_kv_heads, d_model, n_heads, n_kv_heads)
            attn = _attention(t, state, d_model, n_heads, n_kv_heads)
            for batch, seq in ((1, 1), (2, 5), (3, 9)):
                x = seeded_randn(300 + seq, batch, seq, d_model)
                expected = _expected(x, state, n_heads, n_kv_heads)
                what = f"d_model {d_model}, {n_heads} heads, {n_kv_heads} kv heads, x {tuple(x.shape)}"
                t.close(attn(x), expected, atol=1e-10, rtol=1e-10, what=what)


@hidden_test("9.2")
def rope_turns_queries_and_keys_not_values(t):
    """tables of positions 5 to 10 (base 500000) turn q and k with split halves; v is not turned"""
    for n_kv_heads in (6, 2, 1):
        state = _state(400 + n_kv_heads, 48, 6, n_kv_heads)
        attn = _attention(t, state, 48, 6, n_kv_heads)
        x = seeded_randn(401, 2, 6, 48)
        cos, sin = _tables(8, torch.arange(5, 11), base=500000.0)
        expected = _expected(x, state, 6, n_kv_heads, cos, sin)
        t.close(attn(x, cos, sin), expected, atol=1e-10, rtol=1e-10, what=f"{n_kv_heads} kv heads")


@hidden_test("9.2")
def without_tables_nothing_is_turned(t):
    """cos=None, sin=None given explicitly: the same as no rotation at all"""
    state = _state(410, 24, 6, 3)
    attn = _attention(t, state, 24, 6, 3)
    x = seeded_randn(411, 2, 4, 24)
    t.close(attn(x, None, None), _expected(x, state, 6, 3), atol=1e-10, rtol=1e-10)


@hidden_test("9.2")
def not_causal_sees_every_position(t):
    """causal=False: every position attends to all, with and without rotation, MHA and MQA"""
    for n_kv_heads in (4, 1):
        state = _state(420 + n_kv_heads, 32, 4, n_kv_heads)
        attn = _attention(t, state, 32, 4, n_kv_heads)
        x = seeded_randn(421, 2, 7, 32)
        expected = _expected(x, state, 4, n_kv_heads, causal=False)
        t.close(attn(x, causal=False), expected, atol=1e-10, rtol=1e-10, what=f"{n_kv_heads} kv heads")
        cos, sin = _tables(8, torch.arange(7))
        expected = _expected(x, state, 4, n_kv_heads, cos, sin, causal=False)
        t.close(attn(x, cos, sin, causal=False), expected, atol=1e-10, rtol=1e-10, what="rotated")


@hidden_test("9.2")
def biases_are_applied(t):
    """a module with bias=True adds the biases of all four projections"""
    for n_kv_heads in (5, 1):
        state = _state(430 + n_kv_heads, 40, 10, n_kv_heads, bias=True)
        attn = _attention(t, state, 40, 10, n_kv_heads, bias=True)
        x = seeded_randn(431, 2, 5, 40)
        cos, sin = _tables(4, torch.arange(5))
        expected = _expected(x, state, 10, n_kv_heads, cos, sin)
        t.close(attn(x, cos, sin), expected, atol=1e-10, rtol=1e-10, what=f"{n_kv_heads} kv heads")


@hidden_test("9.2")
def float32_in_float32_out(t):
    """a float32 module on float32 input returns float32, close to the float64 result"""
    state = _state(440, 24, 6, 2)
    attn = t.learner("gqa").GroupedQueryAttention(24, 6, 2)
    attn.load_state_dict({name: value.float() for name, value in state.items()})
    attn.eval()
    x = seeded_randn(441, 2, 5, 24)
    cos, sin = _tables(4, torch.arange(5))
    expected = _expected(x, state, 6, 2, cos, sin).float()
    t.close(attn(x.float(), cos.float(), sin.float()), expected, atol=1e-5, rtol=1e-5)


@hidden_test("9.2", inputs=True)
def rejects_bad_inputs(t):
    """ValueError for x of 2 dimensions, of ints, of the wrong width; sin alone; tables of the wrong shape; causal 1"""
    attn = _attention(t, _state(450, 24, 6, 2), 24, 6, 2)
    x = torch.zeros(1, 3, 24, dtype=F64)
    for bad in (torch.zeros(3, 24, dtype=F64), torch.zeros(1, 3, 24, dtype=torch.int64), torch.zeros(1, 3, 25)):
        t.raises(ValueError, attn, bad)
    _, sin = _tables(4, torch.arange(3))
    t.raises(ValueError, attn, x, None, sin)
    wrong_cos, wrong_sin = _tables(4, torch.arange(4))  # four positions for three
    t.raises(ValueError, attn, x, wrong_cos, wrong_sin)
    for bad in (1, None, "yes"):
        t.raises(ValueError, attn, x, causal=bad)


# -- 9.3 mean_pool_kv_heads -------------------------------------------------------------------------


def _pooled(weight, n_heads, n_kv_heads):
    """Each group's blocks of rows averaged, written out with slices."""
    head_dim, r = weight.shape[0] // n_heads, n_heads // n_kv_heads
    blocks = [weight[h * head_dim : (h + 1) * head_dim] for h in range(n_heads)]
    return torch.cat([sum(blocks[g * r : (g + 1) * r]) / r for g in range(n_kv_heads)])


@hidden_test("9.3")
def weights_biases_and_more_dimensions(t):
    """2-D weights, 1-D biases and a 3-D tensor, 12 heads of width 2 or 3 into 6, 4, 3, 2 and 1"""
    lib = t.learner("gqa")
    for i, shape in enumerate(((24, 5), (24,), (36, 3, 2))):
        weight = seeded_randn(500 + i, *shape)
        for n_kv_heads in (6, 4, 3, 2, 1):
            expected = _pooled(weight, 12, n_kv_heads)
            got = lib.mean_pool_kv_heads(weight, 12, n_kv_heads)
            t.close(got, expected, atol=1e-12, rtol=1e-12, what=f"shape {shape}, {n_kv_heads} kv heads")


@hidden_test("9.3")
def mha_to_mha_is_the_identity(t):
    """n_kv_heads == n_heads gives the weight back"""
    lib = t.learner("gqa")
    weight = seeded_randn(510, 40, 7)
    t.close(lib.mean_pool_kv_heads(weight, 10, 10), weight, atol=0, rtol=0)


@hidden_test("9.3")
def groups_of_equal_heads_keep_their_head(t):
    """a weight whose heads are already equal within each group of 4 keeps one of them per group"""
    lib = t.learner("gqa")
    kept = seeded_randn(520, 3 * 5, 6)  # 3 kv heads of width 5
    weight = torch.cat([kept[g * 5 : (g + 1) * 5] for g in range(3) for _ in range(4)])  # 12 heads
    t.close(lib.mean_pool_kv_heads(weight, 12, 3), kept, atol=1e-15, rtol=1e-15)


@hidden_test("9.3")
def groups_are_consecutive_heads(t):
    """8 heads holding 0 ... 7 pooled into 2 give 1.5 and 5.5 (not 3 and 4)"""
    lib = t.learner("gqa")
    weight = torch.arange(8.0, dtype=F64).repeat_interleave(2)[:, None].expand(16, 3).contiguous()
    expected = torch.tensor([1.5, 1.5, 5.5, 5.5], dtype=F64)[:, None].expand(4, 3).contiguous()
    t.close(lib.mean_pool_kv_heads(weight, 8, 2), expected, atol=0, rtol=0)


@hidden_test("9.3")
def the_dtype_is_kept(t):
    """float32, float16 and bfloat16 weights pool into their own dtype, close to the float64 mean"""
    lib = t.learner("gqa")
    weight = seeded_randn(530, 32, 4)
    for dtype, tol in ((F32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        given = weight.to(dtype)
        expected = _pooled(given.double(), 8, 2).to(dtype)
        t.close(lib.mean_pool_kv_heads(given, 8, 2), expected, atol=tol, rtol=tol, what=str(dtype))


@hidden_test("9.3")
def the_weight_is_not_modified(t):
    """the weight holds the same values after the call"""
    lib = t.learner("gqa")
    weight = seeded_randn(540, 24, 6)
    kept = _in_worker(t, weight)
    lib.mean_pool_kv_heads(kept, 6, 2)
    t.close(t.value(kept.data), weight, atol=0, rtol=0)


@hidden_test("9.3", inputs=True)
def rejects_bad_heads_and_weights(t):
    """ValueError for head counts True, 4.0, 0, -2, 20 of 10; rows not divisible; an int, 0-dim or list weight"""
    lib = t.learner("gqa")
    weight = torch.zeros(40, 3, dtype=F64)
    for n_heads, n_kv_heads in ((True, 1), (10, True), (10.0, 5), (10, 5.0), (0, 1), (10, 0), (-10, 5), (10, 20)):
        t.raises(ValueError, lib.mean_pool_kv_heads, weight, n_heads, n_kv_heads)
    t.raises(ValueError, lib.mean_pool_kv_heads, torch.zeros(30, 3, dtype=F64), 4, 2)
    for bad in (torch.zeros(40, 3, dtype=torch.int64), torch.tensor(1.0, dtype=F64), [[0.0] * 3] * 40):
        t.raises(ValueError, lib.mean_pool_kv_heads, bad, 10, 5)


# -- 9.4 decode_intensity ---------------------------------------------------------------------------


@hidden_test("9.4")
def many_sizes_against_the_reference(t):
    """batch 1 to 1024, 1 to a million tokens, MHA, GQA and MQA: exact counts, the ratio to rounding"""
    lib, ref = t.learner("gqa"), t.reference("gqa")
    for b, n, d, h in ((1, 1, 8, 2), (3, 7, 40, 10), (64, 4096, 8192, 64), (1024, 10**6, 16384, 128), (5, 2, 6, 3)):
        for g in (g for g in range(h, 0, -1) if h % g == 0):
            want = ref.decode_intensity(b, n, d, h, g)
            got = lib.decode_intensity(b, n, d, h, g)
            _counts(t, got, want["memory"], want["arithmetic"], f"b {b}, n {n}, d {d}, h {h}, g {g}")


@hidden_test("9.4")
def each_term_written_out(t):
    """b 2, n 3, d 12, h 4, g 2 (k 3, four matrices of 216 numbers): every term of both counts written out"""
    lib = t.learner("gqa")
    weights = 2 * 12 * 4 * 3 + 2 * 12 * 2 * 3  # 216
    memory = 3 * weights + 2 * 2 * 3 * 3 * 4 + 2 * 2 * 3 * 12  # weights each step, the cache, x and y
    arithmetic = 2 * 2 * 3 * weights + 2 * 2 * 4 * 3 * 3 * 4
    _counts(t, lib.decode_intensity(2, 3, 12, 4, 2), memory, arithmetic, "b 2, n 3, d 12, h 4, g 2")


@hidden_test("9.4", inputs=True)
def rejects_bad_sizes(t):
    """ValueError for 0, -1, 2.0, True and '8' in each place, h not dividing d and g not dividing h"""
    lib = t.learner("gqa")
    good = [2, 16, 64, 8, 2]
    for place in range(5):
        for bad in (0, -1, 2.0, True, "8"):
            args = list(good)
            args[place] = bad
            t.raises(ValueError, lib.decode_intensity, *args)
    t.raises(ValueError, lib.decode_intensity, 2, 16, 60, 8, 2)
    t.raises(ValueError, lib.decode_intensity, 2, 16, 64, 8, 3)
