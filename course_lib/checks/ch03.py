"""Visible checks of Chapter 3 — attention.

Expected values come from PyTorch's own operations (``torch.nn.functional.scaled_dot_product_attention``,
``torch.nn.MultiheadAttention``, ``torch.softmax``) or are written out. Everything is float64, so
the tolerances are tight.
"""

from course_lib.grading import visible_check

import math

import torch
import torch.nn.functional as F

F64 = torch.float64


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _softmax_weights(q, k):
    """The attention weights without a mask, from their definition."""
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)


# -- 3.1 scaled_dot_product_attention ----------------------------------------------------------


@visible_check("3.1")
def matches_pytorch_without_a_mask(t):
    """matches torch's scaled_dot_product_attention without a mask (float64)"""
    lib = t.learner("attention")
    q, k, v = _randn(1, 2, 4, 8), _randn(2, 2, 6, 8), _randn(3, 2, 6, 5)
    result = lib.scaled_dot_product_attention(q, k, v)
    t.true(type(result) is tuple and len(result) == 2, "expected a tuple (output, weights)")
    out, weights = result
    t.close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=1e-6, what="output")
    t.close(weights, _softmax_weights(q, k), atol=1e-6, rtol=1e-6, what="weights")


@visible_check("3.1")
def matches_pytorch_with_masks(t):
    """a causal mask and a padding mask match PyTorch; a fully masked row gives zeros

    The last comparison, of a fully masked row with PyTorch's own ``scaled_dot_product_attention``,
    relies on PyTorch 2.5 or later: only since 2.5 does it give such a row a zero output (earlier
    versions return NaN). requirements.txt asks for ``torch>=2.5``, so the comparison is safe.
    """
    lib = t.learner("attention")
    q, k, v = _randn(4, 2, 5, 8), _randn(5, 2, 5, 8), _randn(6, 2, 5, 3)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    out, _ = lib.scaled_dot_product_attention(q, k, v, mask=causal)
    t.close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-6, what="causal output")

    padding = torch.tensor([[True, True, True, False, False], [True, True, True, True, False]]).view(2, 1, 5)
    out, weights = lib.scaled_dot_product_attention(q, k, v, mask=padding)
    t.close(
        out,
        F.scaled_dot_product_attention(q, k, v, attn_mask=padding),
        atol=1e-6,
        rtol=1e-6,
        what="padding-mask output",
    )
    t.true(bool((weights[0, :, 3:] == 0).all()), "weights of masked keys must be exactly 0")

    blind = torch.ones(5, 5, dtype=torch.bool)
    blind[2] = False  # query 2 may see nothing
    out, weights = lib.scaled_dot_product_attention(q, k, v, mask=blind)
    t.close(out[:, 2], torch.zeros(2, 3, dtype=F64), what="output of a fully masked row")
    t.close(weights[:, 2], torch.zeros(2, 5, dtype=F64), what="weights of a fully masked row")
    # Safe since torch 2.5, the oldest version requirements.txt allows: PyTorch's fully masked row is zeros, not NaN.
    t.close(
        out,
        F.scaled_dot_product_attention(q, k, v, attn_mask=blind),
        atol=1e-6,
        rtol=1e-6,
        what="output with a fully masked row",
    )


@visible_check("3.1")
def heads_shapes_and_dropout(t):
    """4-D (batch, heads, seq, d) inputs; dropout acts only in training and rescales by 1/(1-p)"""
    lib = t.learner("attention")
    q, k, v = _randn(7, 2, 3, 4, 6), _randn(8, 2, 3, 7, 6), _randn(9, 2, 3, 7, 2)
    out, weights = lib.scaled_dot_product_attention(q, k, v)
    t.close(
        out, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=1e-6, what="output (batch, heads, seq_q, d_v)"
    )
    t.close(weights.sum(-1), torch.ones(2, 3, 4, dtype=F64), what="each row of weights sums to 1")

    evaluated, _ = lib.scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    t.close(evaluated, out, what="output with dropout_p=0.5 but training=False")
    dropped_out, dropped = lib.scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True)
    kept = dropped != 0
    t.true(0 < int(kept.sum()) < kept.numel(), "in training, dropout must zero some weights and keep others")
    t.close(dropped[kept], (weights / 0.5)[kept], what="kept weights, divided by 1 - p")
    t.close(dropped_out, dropped @ v, what="output = (dropped weights) @ v")


@visible_check("3.1", inputs=True)
def rejects_bad_inputs(t):
    """mismatched d_k, mismatched seq_k and a float mask raise ValueError"""
    lib = t.learner("attention")
    q, k, v = _randn(10, 4, 8), _randn(11, 6, 8), _randn(12, 6, 5)
    t.raises(ValueError, lib.scaled_dot_product_attention, q, _randn(13, 6, 7), v)
    t.raises(ValueError, lib.scaled_dot_product_attention, q, k, _randn(14, 5, 5))
    t.raises(ValueError, lib.scaled_dot_product_attention, q, k, v, mask=torch.ones(4, 6))


# -- 3.2 causal_mask -------------------------------------------------------------------------------


@visible_check("3.2")
def four_positions(t):
    """causal_mask(4): True on and below the diagonal"""
    lib = t.learner("attention")
    expected = torch.tensor(
        [[True, False, False, False], [True, True, False, False], [True, True, True, False], [True, True, True, True]]
    )
    t.equal(lib.causal_mask(4), expected)


@visible_check("3.2")
def any_size(t):
    """a bool (n, n) lower triangle for n = 1, 7, 50"""
    lib = t.learner("attention")
    for n in (1, 7, 50):
        t.equal(lib.causal_mask(n), torch.ones(n, n, dtype=torch.bool).tril(), f"causal_mask({n})")


@visible_check("3.2", inputs=True)
def rejects_bad_sizes(t):
    """a size below 1 raises ValueError"""
    lib = t.learner("attention")
    for bad in (0, -3):
        t.raises(ValueError, lib.causal_mask, bad)


# -- 3.3 MultiHeadAttention.forward ------------------------------------------------------------


def _torch_mha(seed: int, d_model: int, n_heads: int, bias: bool = True) -> torch.nn.MultiheadAttention:
    torch.manual_seed(seed)
    return torch.nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True, dtype=F64).eval()


def _course_state(m: torch.nn.MultiheadAttention) -> dict:
    """The state_dict of the course's MultiHeadAttention holding the weights of PyTorch's ``m``."""
    state = {}
    for name, w in zip(("q_proj", "k_proj", "v_proj"), m.in_proj_weight.detach().chunk(3)):
        state[f"{name}.weight"] = w.clone()
    state["out_proj.weight"] = m.out_proj.weight.detach().clone()
    if m.in_proj_bias is not None:
        for name, b in zip(("q_proj", "k_proj", "v_proj"), m.in_proj_bias.detach().chunk(3)):
            state[f"{name}.bias"] = b.clone()
        state["out_proj.bias"] = m.out_proj.bias.detach().clone()
    return state


@visible_check("3.3")
def shapes_and_last_weights(t):
    """output (batch, seq, d_model); last_weights (batch, heads, seq, seq), detached and causal"""
    lib = t.learner("attention")
    mha = lib.MultiHeadAttention(16, 4)
    mha.double()
    mha.load_state_dict(_course_state(_torch_mha(0, 16, 4)))
    y = mha(_randn(15, 2, 5, 16))
    t.equal((y.dtype, tuple(y.shape)), (F64, (2, 5, 16)), "output dtype and shape")
    weights = t.value(mha.last_weights)
    t.equal((weights.dtype, tuple(weights.shape)), (F64, (2, 4, 5, 5)), "last_weights dtype and shape")
    t.true(weights.requires_grad is False, "last_weights must be detached")
    t.close(weights.sum(-1), torch.ones(2, 4, 5, dtype=F64), what="each row of last_weights sums to 1")
    t.true(bool((weights.triu(1) == 0).all()), "causal: no weight above the diagonal")


@visible_check("3.3")
def matches_pytorch_causal(t):
    """causal: matches torch.nn.MultiheadAttention with the same weights (float64)"""
    lib = t.learner("attention")
    reference = _torch_mha(1, 24, 3)
    mha = lib.MultiHeadAttention(24, 3)
    mha.double()
    mha.load_state_dict(_course_state(reference))
    mha.eval()
    x = _randn(16, 3, 7, 24)
    forbidden = torch.ones(7, 7, dtype=torch.bool).triu(1)  # PyTorch's attn_mask: True means "may NOT attend"
    with torch.no_grad():
        expected, _ = reference(x, x, x, attn_mask=forbidden, need_weights=False)
    t.close(mha(x), expected, atol=1e-6, rtol=1e-6)


@visible_check("3.3")
def matches_pytorch_without_causality_and_with_padding(t):
    """not causal, and with an extra padding mask: matches torch.nn.MultiheadAttention"""
    lib = t.learner("attention")
    reference = _torch_mha(2, 16, 2, bias=False)
    mha = lib.MultiHeadAttention(16, 2, bias=False, causal=False)
    mha.double()
    mha.load_state_dict(_course_state(reference))
    mha.eval()
    x = _randn(17, 2, 6, 16)
    with torch.no_grad():
        expected, _ = reference(x, x, x, need_weights=False)
    t.close(mha(x), expected, atol=1e-6, rtol=1e-6, what="not causal")

    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # the second sequence has 2 padding positions
    with torch.no_grad():
        expected, _ = reference(x, x, x, key_padding_mask=~keep, need_weights=False)
    t.close(
        mha(x, keep.view(2, 1, 1, 6)), expected, atol=1e-6, rtol=1e-6, what="with a (batch, 1, 1, seq) padding mask"
    )


@visible_check("3.3", inputs=True)
def rejects_input_of_the_wrong_shape(t):
    """input that is not (batch, seq, d_model) raises ValueError"""
    lib = t.learner("attention")
    mha = lib.MultiHeadAttention(8, 2)
    t.raises(ValueError, mha, torch.zeros(4, 8))
    t.raises(ValueError, mha, torch.zeros(1, 4, 6))
