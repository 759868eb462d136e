"""Visible checks of Chapter 9 — multi-query and grouped-query attention.

Expected values are written out, or computed here with PyTorch's own operations:
``torch.repeat_interleave`` for repeated heads, ``torch.nn.functional.scaled_dot_product_attention``
with ``enable_gqa=True`` for grouped attention, Hugging Face's split-halves rotation written out
(as in Chapter 7's checks), and plain slicing and averaging for mean-pooled heads.
"""

from course_lib.checks import learner_model, seeded_randn
from course_lib.grading import visible_check

import torch
import torch.nn.functional as F

F32, F64 = torch.float32, torch.float64


def _state(seed: int, d_model: int, n_heads: int, n_kv_heads: int, bias: bool = False) -> dict:
    """Random weights (and biases) of the four projections, named as the module names them."""
    head_dim = d_model // n_heads
    rows = {"q_proj": n_heads * head_dim, "k_proj": n_kv_heads * head_dim, "v_proj": n_kv_heads * head_dim}
    state = {}
    for i, (name, out) in enumerate(rows.items()):
        state[f"{name}.weight"] = 0.3 * seeded_randn(seed + i, out, d_model)
        if bias:
            state[f"{name}.bias"] = 0.3 * seeded_randn(seed + 10 + i, out)
    state["o_proj.weight"] = 0.3 * seeded_randn(seed + 3, d_model, n_heads * head_dim)
    if bias:
        state["o_proj.bias"] = 0.3 * seeded_randn(seed + 13, d_model)
    return state


def _tables(head_dim: int, positions: torch.Tensor, base: float = 10000.0):
    """cos and sin of Hugging Face's angles (``inv_freq``), ``(len(positions), head_dim // 2)`` in float64."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=F32) / head_dim))
    angles = positions.to(F32)[:, None] * inv_freq
    return angles.cos().double(), angles.sin().double()


def _halves(x, cos, sin):
    """Hugging Face's ``apply_rotary_pos_emb`` on one tensor: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * torch.cat((cos, cos), dim=-1) + rotated * torch.cat((sin, sin), dim=-1)


def _expected(x, state, n_heads, n_kv_heads, cos=None, sin=None, causal=True):
    """The projections, RoPE on q and k, PyTorch's grouped SDPA, and the output projection."""
    batch, seq, d_model = x.shape
    head_dim = d_model // n_heads

    def project(name, heads):
        out = F.linear(x, state[f"{name}.weight"], state.get(f"{name}.bias"))
        return out.view(batch, seq, heads, head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)

    q, k, v = project("q_proj", n_heads), project("k_proj", n_kv_heads), project("v_proj", n_kv_heads)
    if cos is not None:
        q, k = _halves(q, cos, sin), _halves(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)  # (batch, H, seq, hd)
    out = out.transpose(1, 2).reshape(batch, seq, d_model)
    return F.linear(out, state["o_proj.weight"], state.get("o_proj.bias"))


# -- 9.1 repeat_kv ----------------------------------------------------------------------------------


@visible_check("9.1")
def two_heads_for_six_queries(t):
    """two key/value heads, each repeated for 3 query heads: 10, 10, 10, 20, 20, 20"""
    lib = t.learner("gqa")
    x = torch.tensor([10.0, 20.0]).reshape(1, 2, 1, 1)
    t.close(lib.repeat_kv(x, 3), torch.tensor([10.0, 10.0, 10.0, 20.0, 20.0, 20.0]).reshape(1, 6, 1, 1), atol=0)


@visible_check("9.1")
def equals_repeat_interleave(t):
    """equals torch.repeat_interleave(x, n_rep, dim=1) on (2, 3, 5, 4) for n_rep 1, 2 and 4, float64 and bfloat16"""
    lib = t.learner("gqa")
    x = seeded_randn(1, 2, 3, 5, 4)
    for dtype in (F64, torch.bfloat16):
        for n_rep in (1, 2, 4):
            expected = torch.repeat_interleave(x.to(dtype), n_rep, dim=1)
            t.close(lib.repeat_kv(x.to(dtype), n_rep), expected, atol=0, rtol=0, what=f"{dtype}, n_rep {n_rep}")


@visible_check("9.1", inputs=True)
def rejects_bad_repeats_and_shapes(t):
    """n_rep 0, 2.0 and True, and a 3-D x, raise ValueError"""
    lib = t.learner("gqa")
    x = torch.zeros(1, 2, 3, 4)
    for bad in (0, 2.0, True):
        t.raises(ValueError, lib.repeat_kv, x, bad)
    t.raises(ValueError, lib.repeat_kv, torch.zeros(2, 3, 4), 2)


# -- 9.2 GroupedQueryAttention.forward --------------------------------------------------------------


@visible_check("9.2")
def mha_gqa_and_mqa_equal_grouped_sdpa(t):
    """d_model 40, 10 query heads, 10, 5, 2 or 1 kv heads: equal to SDPA(enable_gqa=True) on the same projections"""
    x = seeded_randn(20, 2, 7, 40)
    for n_kv_heads in (10, 5, 2, 1):
        state = _state(30 + n_kv_heads, 40, 10, n_kv_heads)
        attn = learner_model(t, "gqa", "GroupedQueryAttention", state, 40, 10, n_kv_heads)
        t.close(attn(x), _expected(x, state, 10, n_kv_heads), atol=1e-10, rtol=1e-10, what=f"{n_kv_heads} kv heads")


@visible_check("9.2")
def rope_turns_queries_and_keys_and_causal_false_sees_all(t):
    """the tables of positions 3 to 8 turn q and k (split halves), not v; causal=False lets every position see all"""
    x = seeded_randn(21, 3, 6, 24)
    state = _state(40, 24, 6, 2)
    attn = learner_model(t, "gqa", "GroupedQueryAttention", state, 24, 6, 2)
    cos, sin = _tables(4, torch.arange(3, 9))
    expected = _expected(x, state, 6, 2, cos, sin)
    t.close(attn(x, cos, sin), expected, atol=1e-10, rtol=1e-10, what="rotated, causal")
    expected = _expected(x, state, 6, 2, cos, sin, causal=False)
    t.close(attn(x, cos, sin, causal=False), expected, atol=1e-10, rtol=1e-10, what="rotated, not causal")


@visible_check("9.2", inputs=True)
def rejects_a_wrong_width_half_a_table_and_a_string(t):
    """x of width 39 for d_model 40, cos without sin, and causal='yes' raise ValueError"""
    attn = learner_model(t, "gqa", "GroupedQueryAttention", _state(50, 40, 10, 2), 40, 10, 2)
    t.raises(ValueError, attn, torch.zeros(1, 3, 39, dtype=F64))
    cos, _ = _tables(4, torch.arange(3))
    t.raises(ValueError, attn, torch.zeros(1, 3, 40, dtype=F64), cos)
    t.raises(ValueError, attn, torch.zeros(1, 3, 40, dtype=F64), causal="yes")


# -- 9.3 mean_pool_kv_heads -------------------------------------------------------------------------


@visible_check("9.3")
def docstring_example_and_one_head(t):
    """four heads of width 1 pooled into 2 (1.5, 3.5) and into 1 (2.5)"""
    lib = t.learner("gqa")
    w = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    t.close(lib.mean_pool_kv_heads(w, 4, 2), torch.tensor([[1.5], [3.5]]), atol=0, rtol=0, what="2 kv heads")
    t.close(lib.mean_pool_kv_heads(w, 4, 1), torch.tensor([[2.5]]), atol=0, rtol=0, what="1 kv head")


@visible_check("9.3")
def each_block_is_the_mean_of_its_group(t):
    """a k_proj weight (10 heads of width 4, d_model 40) into 5 and 2 kv heads: block g = mean of its group's heads"""
    lib = t.learner("gqa")
    w = seeded_randn(60, 40, 40)
    heads = [w[4 * h : 4 * h + 4] for h in range(10)]  # (4, 40) each
    for n_kv_heads in (5, 2):
        r = 10 // n_kv_heads
        expected = torch.cat([sum(heads[g * r : g * r + r]) / r for g in range(n_kv_heads)])
        t.close(lib.mean_pool_kv_heads(w, 10, n_kv_heads), expected, atol=1e-12, rtol=1e-12, what=f"{n_kv_heads}")


@visible_check("9.3", inputs=True)
def rejects_groups_that_do_not_divide(t):
    """10 heads into 4 kv heads, and 10 heads on 42 rows, raise ValueError"""
    lib = t.learner("gqa")
    t.raises(ValueError, lib.mean_pool_kv_heads, torch.zeros(40, 8, dtype=F64), 10, 4)
    t.raises(ValueError, lib.mean_pool_kv_heads, torch.zeros(42, 8, dtype=F64), 10, 5)


# -- 9.4 decode_intensity ---------------------------------------------------------------------------


def _counts(t, got, memory: int, arithmetic: int, what: str) -> None:
    """The two exact counts, and their ratio to a float's rounding (however it is divided)."""
    t.equal(sorted(got) if type(got) is dict else got, ["arithmetic", "memory", "ratio"], what=f"{what}: the keys")
    t.equal(got["memory"], memory, what=f"{what}: memory")
    t.equal(got["arithmetic"], arithmetic, what=f"{what}: arithmetic")
    t.close(got["ratio"], memory / arithmetic, atol=0, rtol=1e-12, what=f"{what}: ratio")


@visible_check("9.4")
def the_smallest_layer(t):
    """b 1, n 1, d 2, h 2, g 2: memory 24, arithmetic 40, ratio 0.6"""
    lib = t.learner("gqa")
    _counts(t, lib.decode_intensity(1, 1, 2, 2, 2), 24, 40, "the example")


@visible_check("9.4")
def llama_2_70b_attention_at_4096_tokens(t):
    """d 8192 and 64 heads, one text of 4,096 tokens: MHA, GQA-8 and MQA counted exactly"""
    lib = t.learner("gqa")
    for kv_heads, memory, arithmetic in (
        (64, 1_237_051_244_544, 2_473_968_271_360),
        (8, 635_726_462_976, 1_511_895_597_056),
        (1, 560_560_865_280, 1_391_636_512_768),
    ):
        _counts(t, lib.decode_intensity(1, 4096, 8192, 64, kv_heads), memory, arithmetic, f"{kv_heads} kv heads")


@visible_check("9.4", inputs=True)
def rejects_zero_floats_and_groups_that_do_not_divide(t):
    """seq_len 0, a batch of 1.0, and 64 heads with 7 kv heads raise ValueError"""
    lib = t.learner("gqa")
    t.raises(ValueError, lib.decode_intensity, 1, 0, 8192, 64, 8)
    t.raises(ValueError, lib.decode_intensity, 1.0, 16, 8192, 64, 8)
    t.raises(ValueError, lib.decode_intensity, 1, 16, 8192, 64, 7)
