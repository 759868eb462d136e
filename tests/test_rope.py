"""Chapter 7's rotary position embeddings on the reference solutions, against their public references:
Hugging Face's ``LlamaRotaryEmbedding`` and ``apply_rotary_pos_emb`` (split halves), complex
multiplication as in Meta's reference ``llama/model.py`` (adjacent pairs), the permutation of Hugging
Face's ``convert_llama_weights_to_hf.py``, and Su et al. (2021)'s relative-position property and
long-term-decay bound. Odd shapes, several bases, float32 and float64, tight tolerances.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import rope

import math

import pytest
import torch
from conftest import seeded_randn as _randn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

F32, F64 = torch.float32, torch.float64

# Deterministic, and no example database written next to the repository.
FAST = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references (it only sets an environment variable, so it is safe
    to share between the examples of a hypothesis test)."""


def _hf_rotary(head_dim: int, base: float, max_positions: int = 64) -> LlamaRotaryEmbedding:
    """Hugging Face's rotary embedding of a tiny Llama (3 heads of width ``head_dim``), built offline."""
    config = LlamaConfig(
        hidden_size=3 * head_dim, num_attention_heads=3, rope_theta=base, max_position_embeddings=max_positions
    )
    return LlamaRotaryEmbedding(config)


def _tables(head_dim: int, positions: torch.Tensor, base: float = 10000.0, dtype=F32):
    """cos and sin of ``positions * theta`` computed in ``dtype``: ``(len(positions), head_dim // 2)``."""
    angles = positions.to(dtype)[:, None] * rope.rope_frequencies(head_dim, base).to(dtype)
    return angles.cos(), angles.sin()


def _meta_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's ``apply_rotary_emb``: adjacent features as one complex number, times ``freqs_cis``."""
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())  # (..., seq, head_dim / 2)
    freqs_cis = torch.complex(cos, sin).to(z.dtype)  # e^(i angle), (seq, head_dim / 2)
    return torch.view_as_real(z * freqs_cis).flatten(-2)


def _hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``permute`` of Hugging Face's ``convert_llama_weights_to_hf.py`` (2-D weights), written out."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


# -- 7.1 the frequencies ------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [2, 4, 6, 10, 64, 96, 128, 256])
@pytest.mark.parametrize("base", [10000.0, 500000.0, 500000, 1.5, 1e6])
def test_frequencies_equal_hugging_face_inv_freq_bit_for_bit(head_dim, base):
    theirs = _hf_rotary(head_dim, float(base)).inv_freq
    ours = rope.rope_frequencies(head_dim, base)
    assert ours.dtype == F32 and ours.shape == (head_dim // 2,)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("head_dim", [2, 8, 18, 128])
@pytest.mark.parametrize("base", [10000.0, 500000.0, 3.0])
def test_frequencies_follow_the_formula(head_dim, base):
    exact = base ** (-2.0 * torch.arange(head_dim // 2, dtype=F64) / head_dim)  # theta_i = base^(-2i/d)
    torch.testing.assert_close(rope.rope_frequencies(head_dim, base).double(), exact, atol=0, rtol=1e-6)
    assert rope.rope_frequencies(head_dim, base)[0].item() == 1.0
    assert bool((rope.rope_frequencies(head_dim, base).diff() < 0).all())
    assert torch.equal(rope.rope_frequencies(head_dim), rope.rope_frequencies(head_dim, 10000.0))


@pytest.mark.parametrize("head_dim", [0, -2, 3, 7, 8.0, True, "8", None])
def test_frequencies_reject_bad_widths(head_dim):
    with pytest.raises(ValueError, match="head_dim"):
        rope.rope_frequencies(head_dim)


@pytest.mark.parametrize("base", [1, 1.0, 0.5, 0, -10000.0, math.nan, math.inf, True, "10000", torch.tensor(10.0)])
def test_frequencies_reject_bad_bases(base):
    with pytest.raises(ValueError, match="base"):
        rope.rope_frequencies(8, base)


# -- 7.2 apply_rope ----------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [2, 6, 10, 64])
@pytest.mark.parametrize("seq", [1, 7, 13])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_split_halves_equal_hugging_face_apply_rotary_pos_emb(head_dim, seq, dtype, base):
    q, k = _randn(1, 3, 5, seq, head_dim, dtype=dtype), _randn(2, 3, 2, seq, head_dim, dtype=dtype)
    positions = torch.arange(4, 4 + seq)
    cos_hf, sin_hf = _hf_rotary(head_dim, base)(q, positions[None])  # (1, seq, head_dim), in q's dtype
    q_hf, k_hf = apply_rotary_pos_emb(q, k[:, :1].expand(3, 5, seq, head_dim), cos_hf, sin_hf)
    cos, sin = _tables(head_dim, positions, base)
    # Hugging Face's tables are ours with each column duplicated over the two halves.
    assert torch.equal(cos_hf[0], torch.cat((cos, cos), dim=-1).to(dtype))
    assert torch.equal(sin_hf[0], torch.cat((sin, sin), dim=-1).to(dtype))
    tol = 1e-6 if dtype == F32 else 1e-12
    torch.testing.assert_close(rope.apply_rope(q, cos, sin), q_hf, atol=tol, rtol=tol)
    torch.testing.assert_close(
        rope.apply_rope(k[:, :1].expand(3, 5, seq, head_dim), cos, sin), k_hf, atol=tol, rtol=tol
    )


@pytest.mark.parametrize("shape", [(1, 2), (7, 6), (3, 1, 10), (2, 5, 9, 64), (1, 2, 3, 4, 6)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_adjacent_pairs_equal_complex_multiplication(shape, dtype):
    x = _randn(3, *shape, dtype=dtype)
    cos, sin = _tables(shape[-1], torch.arange(2, 2 + shape[-2]) * 37)  # positions far apart
    tol = 1e-6 if dtype == F32 else 1e-12
    torch.testing.assert_close(
        rope.apply_rope(x, cos, sin, interleaved=True), _meta_rotary(x, cos, sin), atol=tol, rtol=tol
    )


@pytest.mark.parametrize("head_dim", [2, 8, 14])
def test_the_two_conventions_differ_by_a_reordering_of_features(head_dim):
    x = _randn(4, 2, 3, 9, head_dim)
    cos, sin = _tables(head_dim, torch.arange(9))
    evens_then_odds = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    adjacent = rope.apply_rope(x, cos, sin, interleaved=True)
    halves = rope.apply_rope(x[..., evens_then_odds], cos, sin, interleaved=False)
    assert torch.equal(adjacent[..., evens_then_odds], halves)
    if head_dim > 2:
        assert not torch.allclose(adjacent, rope.apply_rope(x, cos, sin))


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotation_keeps_each_pairs_length_and_position_zero_is_the_identity(interleaved):
    x = _randn(5, 2, 4, 11, 12)
    cos, sin = _tables(12, torch.arange(11), dtype=F64)
    y = rope.apply_rope(x, cos, sin, interleaved=interleaved)

    def pair_norms(t):
        a, b = (t[..., 0::2], t[..., 1::2]) if interleaved else (t[..., :6], t[..., 6:])
        return (a**2 + b**2).sqrt()

    torch.testing.assert_close(pair_norms(y), pair_norms(x), atol=1e-12, rtol=1e-12)
    assert torch.equal(y[..., 0, :], x[..., 0, :])  # cos 0 = 1, sin 0 = 0


@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_rope_dtypes_input_and_gradients(interleaved):
    x = _randn(6, 2, 3, 5, 8)
    before = x.clone()
    cos, sin = _tables(8, torch.arange(5))
    assert rope.apply_rope(x, cos, sin, interleaved).dtype == F64  # float32 tables, float64 x
    assert torch.equal(x, before)
    x32 = x.float()
    assert rope.apply_rope(x32, cos.double(), sin.double(), interleaved).dtype == F32
    assert rope.apply_rope(x.to(torch.bfloat16), cos, sin, interleaved).dtype == torch.bfloat16
    cos64, sin64 = _tables(8, torch.arange(5), dtype=F64)
    assert torch.autograd.gradcheck(
        lambda t: rope.apply_rope(t, cos64, sin64, interleaved), (x.clone().requires_grad_(True),)
    )


@pytest.mark.parametrize(
    "args",
    [
        ([[1.0, 2.0]], torch.ones(1, 1), torch.ones(1, 1)),  # a list
        (torch.ones(3, 4, dtype=torch.int64), torch.ones(3, 2), torch.ones(3, 2)),  # integers
        (torch.ones(4), torch.ones(1, 2), torch.ones(1, 2)),  # no position dimension
        (torch.ones(3, 5), torch.ones(3, 2), torch.ones(3, 2)),  # odd head_dim
        (torch.ones(2, 3, 4), torch.ones(1, 3, 2), torch.ones(1, 3, 2)),  # tables with a batch dimension
        (torch.ones(2, 3, 4), torch.ones(4, 2), torch.ones(4, 2)),  # tables of another length
        (torch.ones(2, 3, 4), torch.ones(3, 4), torch.ones(3, 4)),  # tables of the full width
        (torch.ones(2, 3, 4), torch.ones(3, 2), torch.ones(3, 2, dtype=torch.int64)),  # integer table
        (torch.ones(2, 3, 4), torch.ones(3, 2), None),
    ],
)
def test_apply_rope_rejects_bad_input(args):
    with pytest.raises(ValueError):
        rope.apply_rope(*args)


def test_apply_rope_rejects_a_flag_that_is_not_a_bool_and_names_shapes():
    x, table = torch.ones(2, 3, 4), torch.ones(3, 2)
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="interleaved"):
            rope.apply_rope(x, table, table, bad)
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(5, 2\)"):
        rope.apply_rope(x, torch.ones(5, 2), table)


# -- the relative-position property --------------------------------------------------------------------


def _score(q, k, m, n, head_dim, base, interleaved):
    """The dot product of q rotated to position m with k rotated to position n (tables in float64)."""
    cos, sin = _tables(head_dim, torch.tensor([m, n]), base, dtype=F64)
    q_m = rope.apply_rope(q[None], cos[:1], sin[:1], interleaved)[0]
    k_n = rope.apply_rope(k[None], cos[1:], sin[1:], interleaved)[0]
    return torch.dot(q_m, k_n).item()


@settings(max_examples=200, **FAST)
@given(
    half=st.integers(1, 40),
    base=st.sampled_from([10000.0, 500000.0, 2.0, 100.0]),
    m=st.integers(0, 4096),
    n=st.integers(0, 4096),
    shift=st.integers(-4096, 4096),
    interleaved=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_scores_depend_only_on_the_distance(half, base, m, n, shift, interleaved, seed):
    """Su et al. (2021), eq. (11): <f(q, m), f(k, n)> = g(q, k, m - n), whatever the absolute positions."""
    head_dim = 2 * half
    q, k = _randn(seed, head_dim), _randn(seed + 1, head_dim)
    q, k = q / q.norm(), k / k.norm()
    m, n = m + max(0, -shift), n + max(0, -shift)  # keep every position at least 0
    moved = _score(q, k, m + shift, n + shift, head_dim, base, interleaved)
    assert math.isclose(_score(q, k, m, n, head_dim, base, interleaved), moved, abs_tol=1e-9)
    # and at distance 0 the rotation cancels: the plain dot product, wherever the pair stands
    assert math.isclose(_score(q, k, m, m, head_dim, base, interleaved), torch.dot(q, k).item(), abs_tol=1e-9)


def test_scores_of_a_rotary_module_depend_only_on_the_distance():
    module = rope.RotaryEmbedding(16, 512).double()
    q, k = _randn(7, 2, 1, 16), _randn(8, 2, 1, 16)
    scores = {}
    for m, n in ((10, 3), (110, 103), (503, 496)):
        scores[(m, n)] = (module(q, offset=m) * module(k, offset=n)).sum(-1)
    # float32 tables: the angles m * theta carry float32 rounding of about 6e-8 * m radians
    torch.testing.assert_close(scores[(110, 103)], scores[(10, 3)], atol=1e-4, rtol=0)
    torch.testing.assert_close(scores[(503, 496)], scores[(10, 3)], atol=1e-4, rtol=0)


# -- 7.3 RotaryEmbedding -------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [2, 6, 64, 128])
@pytest.mark.parametrize("base", [10000.0, 500000.0, 7.0])
def test_tables_equal_hugging_face_llama_rotary_embedding(head_dim, base):
    module = rope.RotaryEmbedding(head_dim, 300, base=base)
    cos_hf, sin_hf = _hf_rotary(head_dim, base, 300)(torch.zeros(1, dtype=F32), torch.arange(300)[None])
    assert module.cos.dtype == F32 and module.cos.shape == (300, head_dim // 2)
    assert torch.equal(torch.cat((module.cos, module.cos), dim=-1), cos_hf[0])
    assert torch.equal(torch.cat((module.sin, module.sin), dim=-1), sin_hf[0])


@pytest.mark.parametrize(("head_dim", "seq", "offset"), [(2, 1, 0), (8, 5, 17), (10, 1, 63), (64, 9, 40), (128, 3, 0)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_forward_equals_hugging_face_at_every_offset(head_dim, seq, offset, dtype):
    module = rope.RotaryEmbedding(head_dim, 64, base=500000.0)
    q = _randn(9, 2, 3, seq, head_dim, dtype=dtype)
    cos_hf, sin_hf = _hf_rotary(head_dim, 500000.0)(q, torch.arange(offset, offset + seq)[None])
    q_hf, _ = apply_rotary_pos_emb(q, q, cos_hf, sin_hf)
    ours = module(q, offset=offset)
    assert ours.dtype == dtype
    assert torch.equal(ours, q_hf)


@pytest.mark.parametrize("interleaved", [False, True])
def test_forward_in_pieces_equals_forward_whole(interleaved):
    module = rope.RotaryEmbedding(12, 40, interleaved=interleaved)
    x = _randn(10, 2, 3, 23, 12)
    whole = module(x)
    pieces = [module(x[..., :10, :]), *[module(x[..., p : p + 1, :], offset=p) for p in range(10, 23)]]
    assert torch.equal(torch.cat(pieces, dim=-2), whole)  # a prefill, then one token at a time
    torch.testing.assert_close(
        whole, rope.apply_rope(x, *_tables(12, torch.arange(23)), interleaved=interleaved), atol=0, rtol=0
    )
    assert torch.equal(module(x[0, 0], offset=17), module(x, offset=17)[0, 0])  # 2-D input: (seq, head_dim)


def test_tables_are_buffers_that_never_enter_the_state_dict():
    module = rope.RotaryEmbedding(8, 16)
    assert dict(module.named_buffers()).keys() == {"cos", "sin"}
    assert module.state_dict() == {} and list(module.parameters()) == []
    module.double()
    assert module.cos.dtype == F64
    x = _randn(11, 1, 2, 4, 8, dtype=F32)
    assert module(x, offset=3).dtype == F32
    holder = torch.nn.Sequential(module)
    holder.load_state_dict({})  # strict: nothing expected, nothing missing
    assert repr(module) == "RotaryEmbedding(head_dim=8, max_seq_len=16, base=10000.0, interleaved=False)"


@pytest.mark.parametrize("interleaved", [False, True])
def test_a_module_from_given_frequencies_equals_one_from_its_base(interleaved):
    built = rope.RotaryEmbedding(10, 50, base=500000.0, interleaved=interleaved)
    inv_freq = _hf_rotary(10, 500000.0).inv_freq  # Hugging Face's frequencies
    given = rope.RotaryEmbedding.from_frequencies(inv_freq, 50, interleaved=interleaved)
    assert type(given) is rope.RotaryEmbedding and given.base is None
    assert (given.head_dim, given.max_seq_len, given.interleaved) == (10, 50, interleaved)
    assert torch.equal(given.cos, built.cos) and torch.equal(given.sin, built.sin) and given.state_dict() == {}
    x = _randn(17, 2, 3, 6, 10)
    assert torch.equal(given(x, offset=40), built(x, offset=40))
    assert rope.RotaryEmbedding.from_frequencies(torch.tensor([1.0, 0.5], dtype=F64), 4).cos.dtype == F32


@pytest.mark.parametrize(
    "args",
    [
        (torch.ones(2, 3), 8),
        (torch.ones(0), 8),
        (torch.arange(4), 8),
        ([1.0, 0.1], 8),
        (torch.ones(3), 0),
        (torch.ones(3), 8.0),
        (torch.ones(3), 8, 1),
    ],
)
def test_from_frequencies_rejects_bad_settings(args):
    with pytest.raises(ValueError):
        rope.RotaryEmbedding.from_frequencies(*args)


@pytest.mark.parametrize(
    ("x", "offset", "match"),
    [
        (torch.zeros(1, 2, 3, 8), 14, r"max_seq_len = 16"),
        (torch.zeros(1, 2, 17, 8), 0, r"max_seq_len = 16"),
        (torch.zeros(1, 2, 1, 8), -1, "offset"),
        (torch.zeros(1, 2, 1, 8), True, "offset"),
        (torch.zeros(1, 2, 1, 8), 2.0, "offset"),
        (torch.zeros(1, 2, 1, 8), torch.tensor(2), "offset"),
        (torch.zeros(1, 2, 3, 6), 0, r"head_dim = 8.*6"),
        (torch.zeros(8), 0, "x"),
        (torch.zeros(2, 8, dtype=torch.int64), 0, "x"),
        ([[0.0] * 8], 0, "x"),
    ],
)
def test_forward_rejects_bad_input(x, offset, match):
    with pytest.raises(ValueError, match=match):
        rope.RotaryEmbedding(8, 16)(x, offset=offset)


def test_the_last_position_is_allowed():
    module = rope.RotaryEmbedding(8, 16)
    assert module(torch.ones(1, 1, 3, 8), offset=13).shape == (1, 1, 3, 8)


@pytest.mark.parametrize(
    "args", [(7, 16), (0, 16), (8, 0), (8, 16.0), (8, -1), (8, 16, 1.0), (8, 16, 10000.0, 1), (True, 16)]
)
def test_module_rejects_bad_settings(args):
    with pytest.raises(ValueError):
        rope.RotaryEmbedding(*args)


# -- the two conventions and the permutation between them ---------------------------------------------


@pytest.mark.parametrize(("n_heads", "head_dim", "d_model"), [(1, 2, 3), (3, 8, 10), (4, 6, 24), (2, 64, 7)])
def test_permute_for_halves_is_hugging_faces_conversion(n_heads, head_dim, d_model):
    w = _randn(12, n_heads * head_dim, d_model)
    permuted = rope.permute_for_halves(w, n_heads)
    assert torch.equal(permuted, _hf_permute(w, n_heads))
    assert torch.equal(rope.permute_for_interleaved(permuted, n_heads), w)
    assert torch.equal(rope.permute_for_halves(rope.permute_for_interleaved(w, n_heads), n_heads), w)
    bias = _randn(13, n_heads * head_dim)  # a bias (Qwen's q and k have one) moves with its rows
    assert torch.equal(rope.permute_for_halves(bias, n_heads), _hf_permute(bias[:, None], n_heads)[:, 0])
    permuted.zero_()
    assert w.abs().sum() > 0  # a new tensor: the original is untouched


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "head_dim"), [(4, 4, 8), (6, 2, 16), (2, 1, 64), (3, 3, 2)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_permuted_weights_give_the_same_scores_with_split_halves(n_heads, n_kv_heads, head_dim, dtype):
    """Meta's layout with adjacent pairs and Hugging Face's permuted layout with split halves attend alike."""
    d_model, seq, batch = 20, 11, 2
    wq = _randn(14, n_heads * head_dim, d_model, dtype=dtype) / d_model**0.5
    wk = _randn(15, n_kv_heads * head_dim, d_model, dtype=dtype) / d_model**0.5
    x = _randn(16, batch, seq, d_model, dtype=dtype)
    module = rope.RotaryEmbedding(head_dim, 64, base=500000.0)

    def scores(wq, wk, interleaved):
        q = (x @ wq.T).view(batch, seq, n_heads, head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)
        k = (x @ wk.T).view(batch, seq, n_kv_heads, head_dim).transpose(1, 2)
        module.interleaved = interleaved
        q, k = module(q, offset=5), module(k, offset=5)
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)  # each key head serves a group of query heads
        return q @ k.transpose(-2, -1) / head_dim**0.5  # (batch, heads, seq, seq), as attention scales them

    meta = scores(wq, wk, interleaved=True)
    hf = scores(rope.permute_for_halves(wq, n_heads), rope.permute_for_halves(wk, n_kv_heads), interleaved=False)
    torch.testing.assert_close(hf, meta, atol=1e-6 if dtype == F32 else 1e-12, rtol=1e-6)
    unpermuted = scores(wq, wk, interleaved=False)  # the wrong pairing changes the scores
    assert head_dim == 2 or (unpermuted - meta).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("weight", "n_heads"),
    [
        (torch.zeros(12, 4), 5),
        (torch.zeros(12, 4), 0),
        (torch.zeros(9, 4), 3),
        (torch.zeros(12, 4), 2.0),
        ([1.0], 1),
        (torch.tensor(1.0), 1),
    ],
)
def test_permutation_rejects_bad_input(weight, n_heads):
    with pytest.raises(ValueError):
        rope.permute_for_halves(weight, n_heads)
    with pytest.raises(ValueError):
        rope.permute_for_interleaved(weight, n_heads)


# -- long-term decay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [2, 8, 128])
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_decay_bound_by_its_definition(head_dim, base):
    distances = torch.tensor([0, 1, 5, 37, 1000, 8191])
    theta = rope.rope_frequencies(head_dim, base).double().tolist()
    for distance, value in zip(distances.tolist(), rope.rope_decay_bound(head_dim, distances, base).tolist()):
        total, partial = 0.0, 0j
        for t in theta:  # S_j = sum_{i < j} e^{i distance theta_i}; the bound averages |S_j| over j = 1 ... d / 2
            partial += complex(math.cos(distance * t), math.sin(distance * t))
            total += abs(partial)
        assert math.isclose(value, total / len(theta), rel_tol=1e-9, abs_tol=1e-9)
    assert rope.rope_decay_bound(head_dim, torch.tensor(0), base).item() == pytest.approx((head_dim / 2 + 1) / 2)


def test_decay_bound_falls_with_distance_and_slower_for_a_larger_base():
    """Su et al. (2021), Section 3.4.3 and Figure 2: the bound shrinks as the distance grows (here for Llama's
    head_dim 128), and a larger base stretches it over longer distances."""
    near, far = torch.tensor([0, 10, 100, 1000]), torch.tensor(1000)
    small = rope.rope_decay_bound(128, near)
    assert bool((small.diff() < 0).all())
    assert rope.rope_decay_bound(128, far, 500000.0) > rope.rope_decay_bound(128, far, 10000.0)


@settings(max_examples=100, **FAST)
@given(half=st.integers(2, 32), distance=st.integers(-5000, 5000), seed=st.integers(0, 2**16))
def test_decay_bound_bounds_every_score(half, distance, seed):
    """|<f(q, m), f(k, n)>| <= max_i |h_{i+1} - h_i| * sum_j |S_j(m - n)| (Su et al., 2021, eq. 36)."""
    head_dim = 2 * half
    q, k = _randn(seed, head_dim), _randn(seed + 1, head_dim)
    score = _score(q, k, max(distance, 0), max(-distance, 0), head_dim, 10000.0, interleaved=True)
    h = torch.view_as_complex(q.view(-1, 2)) * torch.view_as_complex(k.view(-1, 2)).conj()  # (d / 2,)
    h = torch.cat((h, torch.zeros(1, dtype=h.dtype)))  # h_{d/2} = 0
    bound = (h.diff().abs().max() * rope.rope_decay_bound(head_dim, torch.tensor(distance)) * half).item()
    assert abs(score) <= bound + 1e-9


def test_rope_settings_are_the_published_ones():
    """Hugging Face config.json: meta-llama/Llama-2-7b-hf (hidden 4096, 32 heads, rope_theta 10000, 4096
    positions) and meta-llama/Meta-Llama-3-8B (hidden 4096, 32 heads, rope_theta 500000, 8192 positions)."""
    assert rope.ROPE_SETTINGS == {
        "Llama 2": {"head_dim": 128, "base": 10000.0, "context_length": 4096},
        "Llama 3": {"head_dim": 128, "base": 500000.0, "context_length": 8192},
    }
    assert LlamaConfig().rope_parameters["rope_theta"] == rope.ROPE_SETTINGS["Llama 2"]["base"]  # HF's default
