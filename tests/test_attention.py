"""Chapter 3 on the reference solutions, against PyTorch's own attention: ``F.scaled_dot_product_attention``
and ``torch.nn.MultiheadAttention``, in float64 to tight tolerances; plus input validation, dropout,
gradients, determinism and the sparse-pattern helpers.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import attention as at

import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close as _close
from conftest import seeded_randn as _randn

matplotlib.use("Agg")

F64 = torch.float64


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


# -- 3.1 scaled_dot_product_attention ---------------------------------------------------------


SHAPES = [  # (q shape, k shape, d_v)
    ((1, 1), (1, 1), 1),
    ((4, 8), (6, 8), 5),
    ((2, 4, 8), (2, 6, 8), 3),
    ((2, 3, 7, 16), (2, 3, 7, 16), 16),
    ((2, 1, 5, 4), (1, 3, 9, 4), 2),  # leading dimensions broadcast
]


@pytest.mark.parametrize("q_shape, k_shape, d_v", SHAPES)
def test_attention_matches_pytorch_without_a_mask(q_shape, k_shape, d_v):
    q, k, v = _randn(1, *q_shape), _randn(2, *k_shape), _randn(3, *k_shape[:-1], d_v)
    out, weights = at.scaled_dot_product_attention(q, k, v)
    _close(out, F.scaled_dot_product_attention(q, k, v))
    _close(weights, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q_shape[-1]), dim=-1))
    _close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=F64))


@pytest.mark.parametrize("q_shape, k_shape, d_v", SHAPES)
@pytest.mark.parametrize("density", [0.2, 0.7, 1.0])
def test_attention_matches_pytorch_with_random_bool_masks(q_shape, k_shape, d_v, density):
    q, k, v = _randn(4, *q_shape), _randn(5, *k_shape), _randn(6, *k_shape[:-1], d_v)
    mask = torch.rand(q_shape[-2], k_shape[-2], generator=torch.Generator().manual_seed(7)) < density
    out, weights = at.scaled_dot_product_attention(q, k, v, mask=mask)
    # PyTorch (2.5 and later) also returns zeros for queries whose keys are all masked.
    _close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert not weights.isnan().any()
    assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
    full_rows = mask.any(-1).expand(weights.shape[:-1])
    _close(weights.sum(-1)[full_rows], torch.ones(int(full_rows.sum()), dtype=F64))


@pytest.mark.parametrize("seq", [1, 2, 9])
def test_causal_attention_matches_is_causal(seq):
    q, k, v = _randn(8, 2, 4, seq, 8), _randn(9, 2, 4, seq, 8), _randn(10, 2, 4, seq, 6)
    out, weights = at.scaled_dot_product_attention(q, k, v, mask=at.causal_mask(seq))
    _close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert (weights.triu(1) == 0).all()


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _randn(11, 3, 4), _randn(12, 5, 4), _randn(13, 5, 2)
    out, weights = at.scaled_dot_product_attention(q, k, v, mask=torch.zeros(3, 5, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(3, 2, dtype=F64)) and torch.equal(weights, torch.zeros(3, 5, dtype=F64))
    mask = torch.tensor([[True], [False], [True]])  # broadcast over the keys
    out, weights = at.scaled_dot_product_attention(q, k, v, mask=mask)
    assert (out[1] == 0).all() and (weights[1] == 0).all()
    _close(out[[0, 2]], at.scaled_dot_product_attention(q[[0, 2]], k, v)[0])


def test_the_docstring_example():
    q = k = v = torch.eye(2).unsqueeze(0)
    _, weights = at.scaled_dot_product_attention(q, k, v, mask=at.causal_mask(2))
    _close(weights, torch.tensor([[[1.0, 0.0], [0.3302, 0.6698]]]), tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_attention_keeps_the_input_dtype(dtype):
    q, k, v = (_randn(14 + i, 2, 5, 8).to(dtype) for i in range(3))
    out, weights = at.scaled_dot_product_attention(q, k, v, mask=at.causal_mask(5))
    assert out.dtype == weights.dtype == dtype
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 5e-2}[dtype]
    _close(out.double(), expected, tol=tol)


def test_large_scores_do_not_overflow():
    q, k, v = 1e4 * _randn(17, 4, 8), _randn(18, 6, 8), _randn(19, 6, 3)
    out, _weights = at.scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all()
    _close(out, F.scaled_dot_product_attention(q, k, v))


def test_dropout_acts_only_in_training_and_keeps_the_expected_value():
    q, k, v = _randn(20, 4, 4, 32, 8), _randn(21, 4, 4, 32, 8), _randn(22, 4, 4, 32, 8)
    plain_out, plain = at.scaled_dot_product_attention(q, k, v)
    for kwargs in (dict(dropout_p=0.6), dict(dropout_p=0.0, training=True)):
        out, weights = at.scaled_dot_product_attention(q, k, v, **kwargs)
        assert torch.equal(out, plain_out) and torch.equal(weights, plain)
    torch.manual_seed(0)
    out, weights = at.scaled_dot_product_attention(q, k, v, dropout_p=0.25, training=True)
    kept = weights != 0
    assert abs((~kept).double().mean().item() - 0.25) < 0.02
    _close(weights[kept], plain[kept] / 0.75)
    _close(out, weights @ v)
    # Averaged over many draws, dropout changes nothing.
    torch.manual_seed(1)
    mean = torch.stack(
        [
            at.scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0], dropout_p=0.5, training=True)[1]
            for _ in range(2000)
        ]
    ).mean(0)
    _close(mean, plain[0, 0], tol=0.03)
    _, everything = at.scaled_dot_product_attention(q, k, v, dropout_p=1.0, training=True)
    assert (everything == 0).all()


def test_dropout_is_deterministic_under_a_seed():
    q, k, v = _randn(23, 2, 6, 4), _randn(24, 2, 6, 4), _randn(25, 2, 6, 4)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(at.scaled_dot_product_attention(q, k, v, dropout_p=0.3, training=True))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_gradients_flow_to_queries_keys_and_values():
    q, k, v = (_randn(26 + i, 2, 5, 4).requires_grad_() for i in range(3))
    out, _ = at.scaled_dot_product_attention(q, k, v, mask=at.causal_mask(5))
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(
        lambda a, b, c: at.scaled_dot_product_attention(a, b, c, mask=at.causal_mask(3))[0],
        tuple(_randn(30 + i, 3, 2).requires_grad_() for i in range(3)),
    )


@pytest.mark.parametrize(
    "q, k, v, kwargs, message",
    [
        (_randn(1, 2, 3, 4), _randn(2, 2, 5, 6), _randn(3, 2, 5, 4), {}, "same last dimension d_k"),
        (_randn(1, 3, 4), _randn(2, 5, 4), _randn(3, 6, 4), {}, "same number of positions seq_k"),
        (_randn(1, 3, 4), _randn(2, 5, 4), _randn(3, 5, 4), dict(mask=torch.ones(3, 5)), "torch.bool"),
        (
            _randn(1, 3, 4),
            _randn(2, 5, 4),
            _randn(3, 5, 4),
            dict(mask=torch.ones(3, 5, dtype=torch.uint8)),
            "torch.bool",
        ),
        (
            _randn(1, 3, 4),
            _randn(2, 5, 4),
            _randn(3, 5, 4),
            dict(mask=torch.ones(4, 5, dtype=torch.bool)),
            "does not broadcast",
        ),
        (
            _randn(1, 3, 4),
            _randn(2, 5, 4),
            _randn(3, 5, 4),
            dict(mask=torch.ones(2, 2, 3, 5, dtype=torch.bool)),
            "does not broadcast",
        ),
        (_randn(1, 2, 3, 4), _randn(2, 3, 5, 4), _randn(3, 3, 5, 4), {}, "do not broadcast"),
        (_randn(1, 3, 4), _randn(2, 5, 4).float(), _randn(3, 5, 4), {}, "one dtype"),
        (_randn(1, 4), _randn(2, 5, 4), _randn(3, 5, 4), {}, "at least 2 dimensions"),
        (_randn(1, 3, 4), _randn(2, 5, 4), _randn(3, 5, 4), dict(dropout_p=1.5), "dropout_p"),
    ],
)
def test_attention_rejects_bad_inputs_with_a_clear_message(q, k, v, kwargs, message):
    with pytest.raises(ValueError, match=message):
        at.scaled_dot_product_attention(q, k, v, **kwargs)


# -- 3.2 causal_mask ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_causal_mask(n):
    mask = at.causal_mask(n)
    assert mask.dtype == torch.bool and mask.shape == (n, n)
    assert torch.equal(mask, ~torch.ones(n, n, dtype=torch.bool).triu(1))
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(mask, j <= i)


def test_causal_mask_device():
    assert at.causal_mask(3, device="cpu").device == torch.device("cpu")
    assert at.causal_mask(3, torch.device("cpu")).device == torch.device("cpu")
    assert at.causal_mask(2, device="meta").device == torch.device("meta")


@pytest.mark.parametrize("bad", [0, -1, 2.0, "3", None])
def test_causal_mask_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="seq_len"):
        at.causal_mask(bad)


# -- 3.3 MultiHeadAttention ----------------------------------------------------------------------


def _pair(seed: int, d_model: int, n_heads: int, bias: bool = True, dropout: float = 0.0, causal: bool = True):
    torch.manual_seed(seed)
    theirs = torch.nn.MultiheadAttention(d_model, n_heads, dropout=dropout, bias=bias, batch_first=True, dtype=F64)
    return at.MultiHeadAttention.from_torch(theirs, causal=causal), theirs


@pytest.mark.parametrize("d_model, n_heads, batch, seq", [(16, 4, 2, 5), (24, 3, 1, 9), (8, 1, 3, 1), (64, 8, 2, 17)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_torch_multihead_attention(d_model, n_heads, batch, seq, causal, bias):
    ours, theirs = _pair(0, d_model, n_heads, bias=bias, causal=causal)
    ours.eval(), theirs.eval()
    x = _randn(1, batch, seq, d_model)
    with torch.no_grad():
        expected, expected_weights = theirs(
            x, x, x, attn_mask=~at.causal_mask(seq) if causal else None, average_attn_weights=False
        )
        _close(ours(x), expected)
    _close(ours.last_weights, expected_weights)
    assert ours.last_weights.shape == (batch, n_heads, seq, seq)


def test_mha_with_a_padding_mask_matches_key_padding_mask():
    ours, theirs = _pair(2, 16, 4, causal=True)
    ours.eval(), theirs.eval()
    x = _randn(3, 2, 6, 16)
    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        expected, _ = theirs(x, x, x, attn_mask=~at.causal_mask(6), key_padding_mask=~keep, need_weights=False)
        _close(ours(x, keep.view(2, 1, 1, 6)), expected)
        # A (seq, seq) extra mask, and the causal mask of the layer, combine by logical and.
        window = at.sliding_window_mask(6, 3)
        _close(ours(x, window), at.MultiHeadAttention.from_torch(theirs, causal=False).eval()(x, window))


def test_mha_attributes_and_repr():
    mha = at.MultiHeadAttention(12, 3, dropout=0.1, bias=False, causal=False)
    assert (mha.d_model, mha.n_heads, mha.d_head, mha.dropout_p, mha.causal) == (12, 3, 4, 0.1, False)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer = getattr(mha, name)
        assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (12, 12) and layer.bias is None
    assert mha.last_weights is None
    assert "n_heads=3" in repr(mha) and "causal=False" in repr(mha)
    assert sorted(dict(mha.named_parameters())) == [
        "k_proj.weight",
        "out_proj.weight",
        "q_proj.weight",
        "v_proj.weight",
    ]
    assert sum(p.numel() for p in at.MultiHeadAttention(512, 8).parameters()) == 4 * 512 * 512 + 4 * 512


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((10, 3), {}, r"d_model=10 and n_heads=3"),
        ((0, 1), {}, "d_model"),
        ((8, 0), {}, "n_heads"),
        ((8.0, 2), {}, "d_model"),
        ((8, 2), dict(dropout=1.5), "dropout"),
    ],
)
def test_mha_rejects_bad_settings(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        at.MultiHeadAttention(*args, **kwargs)


def test_mha_forward_rejects_bad_inputs():
    mha = at.MultiHeadAttention(8, 2)
    for bad in (torch.zeros(5, 8), torch.zeros(1, 2, 5, 8), torch.zeros(2, 5, 6), [[0.0] * 8]):
        with pytest.raises(ValueError, match="batch, seq, d_model=8"):
            mha(bad)
    with pytest.raises(ValueError, match=r"torch.bool"):
        mha(torch.zeros(2, 5, 8), torch.ones(5, 5))


def test_mha_dropout_only_in_training_mode():
    ours, _ = _pair(4, 16, 2, dropout=0.5)
    x = _randn(5, 4, 12, 16)
    ours.eval()
    with torch.no_grad():
        first, second = ours(x), ours(x)
    assert torch.equal(first, second)
    plain = ours.last_weights
    ours.train()
    torch.manual_seed(0)
    with torch.no_grad():
        dropped = ours(x)
    assert not torch.allclose(dropped, first)
    kept = ours.last_weights != 0
    _close(ours.last_weights[kept], 2 * plain[kept])
    share = 1 - kept[at.causal_mask(12).expand(4, 2, 12, 12)].double().mean().item()
    assert abs(share - 0.5) < 0.1


def test_mha_gradients_reach_every_parameter_and_last_weights_is_detached():
    mha = at.MultiHeadAttention(16, 4).double()
    x = _randn(6, 2, 5, 16).requires_grad_()
    mha(x).pow(2).sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not mha.last_weights.requires_grad and mha.last_weights.grad_fn is None


def test_mha_is_deterministic_and_causal():
    torch.manual_seed(7)
    mha = at.MultiHeadAttention(16, 4).double().eval()
    x = _randn(8, 1, 6, 16)
    with torch.no_grad():
        y = mha(x)
        assert torch.equal(y, mha(x))
        changed = x.clone()
        changed[0, -1] += 1.0  # the last token changes: earlier positions must not notice
        assert torch.equal(mha(changed)[0, :-1], y[0, :-1])


def test_from_torch_copies_settings_and_rejects_other_layouts():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(16, 4, dropout=0.2, batch_first=True)
    ours = at.MultiHeadAttention.from_torch(theirs, causal=False)
    assert (ours.d_model, ours.n_heads, ours.dropout_p, ours.causal, ours.training) == (16, 4, 0.2, False, True)
    assert torch.equal(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]), theirs.in_proj_weight)
    assert ours.q_proj.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="batch_first=True"):
        at.MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(16, 4))
    with pytest.raises(ValueError, match="plain"):
        at.MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(16, 4, batch_first=True, kdim=8, vdim=8))
    with pytest.raises(ValueError, match="MultiheadAttention"):
        at.MultiHeadAttention.from_torch(torch.nn.Linear(4, 4))


# -- sparse patterns and figures -------------------------------------------------------------------


def test_sliding_window_mask():
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(at.sliding_window_mask(4, 2), expected)
    assert torch.equal(at.sliding_window_mask(5, 1), torch.eye(5, dtype=torch.bool))
    assert torch.equal(at.sliding_window_mask(6, 6), at.causal_mask(6))
    assert torch.equal(at.sliding_window_mask(6, 60), at.causal_mask(6))
    T, W = 50, 7
    assert at.sliding_window_mask(T, W).sum().item() == W * (W + 1) // 2 + (T - W) * W


def test_strided_mask_is_the_union_of_child_et_al_s_two_halves():
    T, L = 40, 5
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    local = (j <= i) & (j >= (i - L).clamp(min=0))  # A(1): t = max(0, i - l), ..., i
    strided = (j <= i) & ((i - j) % L == 0)  # A(2): (i - j) mod l = 0
    assert torch.equal(at.strided_mask(T, L), local | strided)
    assert torch.equal(at.strided_mask(T, 1), at.causal_mask(T))


def test_fixed_mask_is_the_union_of_child_et_al_s_two_halves():
    T, L, C = 40, 8, 2
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    block = (j <= i) & (j // L == i // L)  # A(1): the same block
    summary = (j <= i) & (j % L >= L - C)  # A(2): j mod l in {l - c, ..., l}
    assert torch.equal(at.fixed_mask(T, L, C), block | summary)
    assert torch.equal(at.fixed_mask(T, L, L), at.causal_mask(T))
    first_row_of_block_two = at.fixed_mask(T, L, 1)[2 * L]
    assert first_row_of_block_two.nonzero().flatten().tolist() == [L - 1, 2 * L - 1, 2 * L]


@pytest.mark.parametrize(
    "fn, args, message",
    [
        (at.sliding_window_mask, (0, 2), "seq_len"),
        (at.sliding_window_mask, (4, 0), "window"),
        (at.strided_mask, (4, 1.5), "stride"),
        (at.fixed_mask, (4, 0), "block"),
        (at.fixed_mask, (8, 4, 5), "summary must be at most block"),
        (at.fixed_mask, (8, 4, 0), "summary"),
    ],
)
def test_sparse_masks_reject_bad_sizes(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)


def test_sparse_masks_are_causal_and_include_the_diagonal():
    for mask in (at.sliding_window_mask(30, 4), at.strided_mask(30, 4), at.fixed_mask(30, 6, 2)):
        assert mask.dtype == torch.bool and mask.shape == (30, 30)
        assert not (mask & ~at.causal_mask(30)).any()
        assert mask.diagonal().all()


def test_plot_helpers_draw_and_validate():
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2)
    assert at.plot_attention(torch.full((3, 3), 1 / 3), ["a", "b", "c"], ax=ax1, title="t") is ax1
    assert at.plot_mask(at.strided_mask(8, 3), ax=ax2, highlight=at.causal_mask(8)) is ax2
    with pytest.raises(ValueError, match="square"):
        at.plot_attention(torch.zeros(2, 3), ["a", "b"], ax=ax1)
    with pytest.raises(ValueError, match="token labels"):
        at.plot_attention(torch.zeros(2, 2), ["a"], ax=ax1)
    with pytest.raises(ValueError, match="bool"):
        at.plot_mask(torch.zeros(3, 3), ax=ax2)
    with pytest.raises(ValueError, match="highlight"):
        at.plot_mask(at.causal_mask(3), ax=ax2, highlight=at.causal_mask(4))
    plt.close(fig)
