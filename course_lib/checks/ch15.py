"""Visible checks of Chapter 15 — attention for long contexts.

Expected values come from PyTorch itself: ``torch.nn.functional.scaled_dot_product_attention`` with an explicit
boolean mask (causal, sliding window, or the causal rule between two blocks of a ring), and
``torch.softmax``/``torch.logsumexp`` over the scores written out; YaRN's frequencies from the paper's rule written
out in float64 (``tests/test_yarn.py`` shows the rule equal to Hugging Face's) — never from the references.
"""

from course_lib.checks import seeded_randn
from course_lib.grading import visible_check

import math

import torch
import torch.nn.functional as F

F32, F64 = torch.float32, torch.float64


# -- helpers shared with the hidden tests (15.1, 15.2) ----------------------------------------------

NEG = float("-inf")


def _empty_state(*lead_q, d_v, dtype=F64):
    """The online softmax's starting state for rows ``lead_q = (..., n_q)``: out 0, row_max -inf, row_sum 0."""
    return (
        torch.zeros(*lead_q, d_v, dtype=dtype),
        torch.full(lead_q, NEG, dtype=dtype),
        torch.zeros(lead_q, dtype=dtype),
    )


def _expected_state(scores, values):
    """The state after seeing ``scores`` ``(..., n_q, n_k)`` (``-inf`` = masked) at once, from torch's softmax.

    ``row_max`` is the largest score, ``row_sum = exp(logsumexp - row_max)`` and ``out = softmax @ values · row_sum``;
    rows with no visible key: ``(0, -inf, 0)``.
    """
    row_max = scores.amax(dim=-1)
    empty = torch.isneginf(row_max)
    lse = torch.logsumexp(scores, dim=-1)
    row_sum = torch.where(empty, torch.zeros_like(lse), torch.exp(lse - row_max))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    out = (weights @ values) * row_sum[..., None]
    return out, row_max, row_sum


def _merge_blocks(t, scores, values, cuts, dtype=F64):
    """Run the learner's ``online_softmax_update`` over the key blocks ``[cuts[i], cuts[i + 1])`` in order."""
    lc = t.learner("long_context")
    out, row_max, row_sum = _empty_state(*scores.shape[:-1], d_v=values.shape[-1], dtype=dtype)
    for a, b in zip(cuts[:-1], cuts[1:]):
        out, row_max, row_sum = lc.online_softmax_update(out, row_max, row_sum, scores[..., a:b], values[..., a:b, :])
    return out, row_max, row_sum


def _close_state(t, actual, expected, what, atol=1e-10, rtol=1e-10):
    for name, a, e in zip(("out", "row_max", "row_sum"), actual, expected):
        t.close(a, e, atol=atol, rtol=rtol, what=f"{name}, {what}")


def _sdpa(q, k, v, mask=None):
    """torch's attention output and its log-sum-exp (scores q·k/sqrt(d), ``mask`` True = may attend)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, NEG)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch.logsumexp(scores, dim=-1)


def _ring_state(*lead_q, d_v, dtype=F64):
    """The ring's starting state: out 0, lse -inf."""
    return torch.zeros(*lead_q, d_v, dtype=dtype), torch.full(lead_q, NEG, dtype=dtype)


# -- 15.1 online_softmax_update ---------------------------------------------------------------------


@visible_check("15.1")
def one_block_is_the_softmax(t):
    """one block from the empty state: out / row_sum is torch's softmax(scores) @ values, row_max the largest score"""
    scores, values = seeded_randn(1, 2, 3, 5, 7), seeded_randn(2, 2, 3, 7, 4)
    out, row_max, row_sum = _merge_blocks(t, scores, values, [0, 7])
    _close_state(t, (out, row_max, row_sum), _expected_state(scores, values), "one block (2, 3, 5, 7)")
    t.close(
        out / row_sum[..., None], torch.softmax(scores, dim=-1) @ values, atol=1e-10, rtol=1e-10, what="out / row_sum"
    )


@visible_check("15.1")
def blocks_merged_equal_the_whole(t):
    """keys in blocks of 3, 1 and 5 give the state of all nine at once (torch's softmax and logsumexp)"""
    scores, values = 3 * seeded_randn(3, 2, 4, 9), seeded_randn(4, 2, 9, 3)
    actual = _merge_blocks(t, scores, values, [0, 3, 4, 9])
    _close_state(t, actual, _expected_state(scores, values), "blocks of 3, 1, 5")


@visible_check("15.1")
def a_fully_masked_row_is_not_nan(t):
    """a row with no visible key yet stays (out 0, row_max -inf, row_sum 0), then takes the next block normally"""
    scores, values = seeded_randn(5, 3, 6), seeded_randn(6, 6, 2)
    scores[1, :3] = NEG  # row 1 sees nothing in the first block
    scores[2, 3:] = NEG  # row 2 sees nothing in the second
    lc = t.learner("long_context")
    state = _empty_state(3, d_v=2)
    first = lc.online_softmax_update(*state, scores[:, :3], values[:3])
    t.true(not any(bool(torch.isnan(x).any()) for x in first), "the first block gave NaN for the fully masked row 1")
    _close_state(t, first, _expected_state(scores[:, :3], values[:3]), "after the first block")
    second = lc.online_softmax_update(*first, scores[:, 3:], values[3:])
    _close_state(t, second, _expected_state(scores, values), "after both blocks")


@visible_check("15.1", inputs=True)
def shapes_that_do_not_fit(t):
    """values with the wrong number of keys, or row_max with the wrong number of rows: ValueError"""
    lc = t.learner("long_context")
    out, row_max, row_sum = _empty_state(4, d_v=2)
    t.raises(ValueError, lc.online_softmax_update, out, row_max, row_sum, seeded_randn(7, 4, 5), seeded_randn(8, 6, 2))
    t.raises(
        ValueError, lc.online_softmax_update, out, row_max[:3], row_sum, seeded_randn(7, 4, 5), seeded_randn(8, 5, 2)
    )


# -- 15.2 ring_step ---------------------------------------------------------------------------------


@visible_check("15.2")
def an_earlier_block_is_all_visible(t):
    """source < rank from the empty state: torch's attention without a mask, and its logsumexp"""
    q, k, v = seeded_randn(20, 2, 5, 3), seeded_randn(21, 2, 5, 3), seeded_randn(22, 2, 5, 4)
    out, lse = t.learner("ring").ring_step(q, k, v, *_ring_state(2, 5, d_v=4), 2, 0)
    expected_out, expected_lse = _sdpa(q, k, v)
    t.close(out, expected_out, atol=1e-10, rtol=1e-10, what="out, rank 2, source 0")
    t.close(lse, expected_lse, atol=1e-10, rtol=1e-10, what="lse, rank 2, source 0")


@visible_check("15.2")
def the_own_block_is_causal(t):
    """source == rank from the empty state: torch's attention with the causal mask"""
    q, k, v = seeded_randn(23, 3, 6, 5), seeded_randn(24, 3, 6, 5), seeded_randn(25, 3, 6, 2)
    out, lse = t.learner("ring").ring_step(q, k, v, *_ring_state(3, 6, d_v=2), 1, 1)
    expected_out, expected_lse = _sdpa(q, k, v, torch.ones(6, 6, dtype=torch.bool).tril())
    t.close(out, expected_out, atol=1e-10, rtol=1e-10, what="out, rank 1, source 1")
    t.close(lse, expected_lse, atol=1e-10, rtol=1e-10, what="lse, rank 1, source 1")


@visible_check("15.2")
def a_later_block_changes_nothing(t):
    """source > rank: the state comes back as it was"""
    q, k, v = seeded_randn(26, 4, 3), seeded_randn(27, 4, 3), seeded_randn(28, 4, 3)
    out, lse = seeded_randn(29, 4, 3), seeded_randn(30, 4)
    new_out, new_lse = t.learner("ring").ring_step(q, k, v, out.clone(), lse.clone(), 0, 2)
    t.close(new_out, out, atol=0, rtol=0, what="out, rank 0, source 2")
    t.close(new_lse, lse, atol=0, rtol=0, what="lse, rank 0, source 2")


@visible_check("15.2")
def three_ranks_in_ring_order_are_causal_attention(t):
    """12 positions on 3 ranks, each rank's steps in ring order: torch's causal attention over the whole sequence"""
    ring, world, n = t.learner("ring"), 3, 4
    q, k, v = seeded_randn(31, 2, 12, 5), seeded_randn(32, 2, 12, 5), seeded_randn(33, 2, 12, 3)
    expected, _ = _sdpa(q, k, v, torch.ones(12, 12, dtype=torch.bool).tril())
    for rank in range(world):
        out, lse = _ring_state(2, n, d_v=3)
        rows = slice(rank * n, rank * n + n)
        for step in range(world):
            source = (rank - step) % world
            cols = slice(source * n, source * n + n)
            out, lse = ring.ring_step(q[:, rows], k[:, cols], v[:, cols], out, lse, rank, source)
        t.close(out, expected[:, rows], atol=1e-10, rtol=1e-10, what=f"rank {rank}'s output")


@visible_check("15.2", inputs=True)
def bad_ranks_and_shapes(t):
    """a negative or bool rank, or keys of another length than the queries: ValueError"""
    ring = t.learner("ring")
    q, v = seeded_randn(34, 4, 3), seeded_randn(35, 4, 2)
    state = _ring_state(4, d_v=2)
    t.raises(ValueError, ring.ring_step, q, q, v, *state, -1, 0)
    t.raises(ValueError, ring.ring_step, q, q, v, *state, True, 0)
    t.raises(ValueError, ring.ring_step, q, seeded_randn(36, 5, 3), seeded_randn(37, 5, 2), *state, 1, 0)


# -- 15.3 lightning_indexer and 15.4 sinkhorn_knopp (§5–6) ------------------------------------------


def _dsa_expected(q, k, w, top_k, causal=True):
    """The indexer's scores with torch.einsum, and the top-k by sorting (-score, position) in Python."""
    seq_q, seq_k = q.shape[1], k.shape[1]
    scores = torch.einsum("bth,bths->bts", w.double(), torch.einsum("bthd,bsd->bths", q.double(), k.double()).relu())
    rows = []
    for b in range(q.shape[0]):
        for i in range(seq_q):
            seen = range(seq_k - seq_q + i + 1) if causal else range(seq_k)
            for s in range(seq_k):
                if s not in seen:
                    scores[b, i, s] = -math.inf
            best = sorted(seen, key=lambda s: (-scores[b, i, s].item(), s))[:top_k]
            rows.append(best + [-1] * (min(top_k, seq_k) - len(best)))
    indices = torch.tensor(rows, dtype=torch.int64).view(q.shape[0], seq_q, min(top_k, seq_k))
    return scores.float(), indices


@visible_check("15.3")
def indexer_docstring_example(t):
    """the docstring's example: scores [[2, -inf], [2, 3]] and indices [[0, -1], [1, 0]]"""
    q = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])
    k = torch.tensor([[[2.0, 0.0], [3.0, 0.0]]])
    scores, indices = t.learner("sparse_attention").lightning_indexer(q, k, torch.ones(1, 2, 1), 2)
    t.close(scores, torch.tensor([[[2.0, -math.inf], [2.0, 3.0]]]), what="scores")
    t.equal(indices, torch.tensor([[[0, -1], [1, 0]]]), what="indices")


@visible_check("15.3")
def indexer_odd_shapes_causal(t):
    """batch 2, 7 positions, 3 heads of 5, top 4, float64: scores with torch.einsum, indices sorted out in Python"""
    q, k, w = seeded_randn(1501, 2, 7, 3, 5), seeded_randn(1502, 2, 7, 5), seeded_randn(1503, 2, 7, 3)
    scores, indices = t.learner("sparse_attention").lightning_indexer(q, k, w, 4)
    expected_scores, expected_indices = _dsa_expected(q, k, w, 4)
    t.close(scores, expected_scores, what="scores")
    t.equal(indices, expected_indices, what="indices")


@visible_check("15.3", inputs=True)
def indexer_rejects_bad_arguments(t):
    """top_k True, 2.0 or 0, causal 1, 3 queries for 2 keys, and a w of the wrong shape raise ValueError"""
    lib = t.learner("sparse_attention")
    q, k, w = torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 3)
    for top_k in (True, 2.0, 0):
        t.raises(ValueError, lib.lightning_indexer, q, k, w, top_k)
    t.raises(ValueError, lib.lightning_indexer, q, k, w, 2, 1)
    t.raises(ValueError, lib.lightning_indexer, torch.zeros(1, 3, 3, 4), k, torch.zeros(1, 3, 3), 2)
    t.raises(ValueError, lib.lightning_indexer, q, k, torch.zeros(1, 2, 2), 2)


def _sk_expected(logits, n_iters, eps):
    """Hugging Face's DeepseekV4HyperConnection Sinkhorn steps, written out in float32."""
    m = torch.softmax(logits.float(), dim=-1) + eps
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    for _ in range(n_iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m


@visible_check("15.4")
def sinkhorn_docstring_example(t):
    """the docstring's example: [[0, 2], [1, 0]], 20 iterations, eps 0: [[0.1824, 0.8176], [0.8176, 0.1824]]"""
    m = t.learner("hyper_connections").sinkhorn_knopp(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), 20, 0.0)
    t.close(m, torch.tensor([[0.182426, 0.817574], [0.817574, 0.182426]]), atol=1e-5, what="matrix")


@visible_check("15.4")
def sinkhorn_batch_of_odd_matrices(t):
    """a (3, 5, 5) batch of logits, 20 iterations, eps 1e-6: Hugging Face's steps written out; columns sum to 1"""
    logits = 2 * seeded_randn(1541, 3, 5, 5)
    m = t.learner("hyper_connections").sinkhorn_knopp(logits, 20, 1e-6)
    t.close(m, _sk_expected(logits, 20, 1e-6), what="matrices")
    t.close(m.sum(dim=-2), torch.ones(3, 5), atol=1e-5, what="column sums")


@visible_check("15.4", inputs=True)
def sinkhorn_rejects_bad_arguments(t):
    """a (3, 4) matrix, integer logits, n_iters 0, True or 2.0, and eps -1 raise ValueError"""
    lib = t.learner("hyper_connections")
    t.raises(ValueError, lib.sinkhorn_knopp, torch.zeros(3, 4), 5)
    t.raises(ValueError, lib.sinkhorn_knopp, torch.zeros(3, 3, dtype=torch.int64), 5)
    for n_iters in (0, True, 2.0):
        t.raises(ValueError, lib.sinkhorn_knopp, torch.zeros(3, 3), n_iters)
    t.raises(ValueError, lib.sinkhorn_knopp, torch.zeros(3, 3), 5, -1.0)


# -- 15.5 yarn_frequencies --------------------------------------------------------------------------


def _yarn_expected(dim, base, factor, original, beta_fast=32.0, beta_slow=1.0):
    """YaRN's "by parts" frequencies (Peng et al., 2023, §3.2) with Hugging Face's whole-number ramp ends, float32."""
    theta = torch.tensor([float(base) ** (-2 * i / dim) for i in range(dim // 2)], dtype=F64)

    def pair_turning(turns):  # the real pair index x with original * base ** (-2x / dim) = 2π turns
        return dim / 2 * math.log(original / (2 * math.pi * turns)) / math.log(base)

    low = max(math.floor(pair_turning(beta_fast)), 0)
    high = min(math.ceil(pair_turning(beta_slow)), dim - 1)
    width = (high - low) or 0.001
    gamma = ((torch.arange(dim // 2, dtype=F64) - low) / width).clamp(0, 1)  # the share interpolated
    return (theta * (1 - gamma) + theta / factor * gamma).float()


def _close_frequencies(t, actual, expected, what):
    t.close(actual, expected, atol=0.0, rtol=2e-6, what=what)


@visible_check("15.5")
def yarn_v3_settings(t):
    """V3's RoPE (64 features, base 10,000, 40 × 4,096 positions): pairs 0-10 keep θ, pairs 23-31 get θ / 40"""
    f = t.learner("yarn").yarn_frequencies(64, 10000.0, 40.0, 4096)
    expected = _yarn_expected(64, 10000.0, 40.0, 4096)
    _close_frequencies(t, f, expected, "V3's frequencies")
    theta = torch.tensor([10000.0 ** (-2 * i / 64) for i in range(32)], dtype=F64).float()
    _close_frequencies(t, f[:11], theta[:11], "pairs 0-10, which turn more than 32 times in 4,096 positions")
    _close_frequencies(t, f[23:], theta[23:] / 40, "pairs 23-31, which turn less than once")


@visible_check("15.5")
def yarn_odd_settings(t):
    """10 features, base 500,000, factor 6.5, 37 positions, betas 16 and 0.5; and factor 1 changes nothing"""
    lib = t.learner("yarn")
    _close_frequencies(
        t,
        lib.yarn_frequencies(10, 500000.0, 6.5, 37, 16.0, 0.5),
        _yarn_expected(10, 500000.0, 6.5, 37, 16.0, 0.5),
        "odd",
    )
    theta = torch.tensor([10000.0 ** (-2 * i / 18) for i in range(9)], dtype=F64).float()
    _close_frequencies(t, lib.yarn_frequencies(18, 10000.0, 1.0, 300), theta, "factor 1: RoPE's own frequencies")


@visible_check("15.5", inputs=True)
def yarn_rejects_bad_arguments(t):
    """dim 7, base 1, factor 0.5, original_context 0 and betas 1 > 32 raise ValueError"""
    lib = t.learner("yarn")
    t.raises(ValueError, lib.yarn_frequencies, 7, 10000.0, 4.0, 16)
    t.raises(ValueError, lib.yarn_frequencies, 8, 1.0, 4.0, 16)
    t.raises(ValueError, lib.yarn_frequencies, 8, 10000.0, 0.5, 16)
    t.raises(ValueError, lib.yarn_frequencies, 8, 10000.0, 4.0, 0)
    t.raises(ValueError, lib.yarn_frequencies, 8, 10000.0, 4.0, 16, 1.0, 32.0)
