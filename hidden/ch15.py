"""Hidden tests of Chapter 15 — attention for long contexts (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
Expected values come from PyTorch (``scaled_dot_product_attention`` with explicit masks, the softmax written out),
never from the references.
"""

from course_lib.checks import seeded_randn
from course_lib.checks.ch15 import (
    NEG,
    _close_frequencies,
    _close_state,
    _empty_state,
    _expected_state,
    _merge_blocks,
    _ring_state,
    _sdpa,
    _yarn_expected,
)

import math

import torch

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64


# -- 15.1 online_softmax_update ---------------------------------------------------------------------


@hidden_test("15.1")
def a_rising_maximum_rescales_the_old_state(t):
    """each block's largest score above the last's: the old sum and output must be rescaled by exp(m - m')"""
    scores = seeded_randn(100, 2, 5, 11) + torch.arange(11, dtype=F64)  # later keys score higher
    values = seeded_randn(101, 2, 11, 3)
    _close_state(t, _merge_blocks(t, scores, values, [0, 2, 5, 6, 11]), _expected_state(scores, values), "rising")


@hidden_test("15.1")
def a_falling_maximum_and_any_order(t):
    """blocks whose largest score falls, and the blocks in reverse order: the same state"""
    scores = seeded_randn(102, 3, 4, 10) - torch.arange(10, dtype=F64)
    values = seeded_randn(103, 3, 10, 2)
    expected = _expected_state(scores, values)
    _close_state(t, _merge_blocks(t, scores, values, [0, 3, 7, 10]), expected, "falling")
    flipped = _merge_blocks(t, scores.flip(-1), values.flip(-2), [0, 3, 7, 10])
    _close_state(t, flipped, expected, "reversed order")


@hidden_test("15.1")
def large_scores_do_not_overflow(t):
    """scores near 800 (exp overflows even in float64) and near -800: finite, equal to torch's softmax"""
    for shift in (800.0, -800.0):
        scores, values = seeded_randn(104, 4, 6) + shift, seeded_randn(105, 6, 3)
        out, _, row_sum = _merge_blocks(t, scores, values, [0, 2, 6])
        t.true(bool(torch.isfinite(out).all() and torch.isfinite(row_sum).all()), f"not finite for scores near {shift}")
        t.close(out / row_sum[..., None], torch.softmax(scores, -1) @ values, atol=1e-10, rtol=1e-10, what=f"{shift}")


@hidden_test("15.1")
def masked_rows_and_masked_blocks(t):
    """rows empty in every block so far, a block masked for a seen row (state unchanged), a row never seen at all"""
    scores, values = seeded_randn(106, 4, 9), seeded_randn(107, 9, 2)
    scores[0, :6] = NEG  # sees only the last block
    scores[1, 3:] = NEG  # sees only the first block: later blocks change nothing
    scores[2, :] = NEG  # sees nothing at all: must end (0, -inf, 0)
    scores[3, 3:6] = NEG  # a hole in the middle
    actual = _merge_blocks(t, scores, values, [0, 3, 6, 9])
    t.true(not any(bool(torch.isnan(x).any()) for x in actual), "NaN in the state")
    _close_state(t, actual, _expected_state(scores, values), "masked rows and blocks")


@hidden_test("15.1")
def softmax_state_in_float32_inputs_unchanged(t):
    """float32 in, float32 out (to float32's precision); the inputs are not modified"""
    scores, values = seeded_randn(108, 2, 3, 7, dtype=F32), seeded_randn(109, 2, 7, 5, dtype=F32)
    state = (
        seeded_randn(110, 2, 3, 5, dtype=F32),
        seeded_randn(111, 2, 3, dtype=F32),
        seeded_randn(112, 2, 3, dtype=F32).abs(),
    )
    copies = [x.clone() for x in (*state, scores, values)]
    lc = t.learner("long_context")
    out, row_max, row_sum = lc.online_softmax_update(*state, scores, values)
    t.true(all(x.dtype == F32 for x in (out, row_max, row_sum)), "the state must stay float32")
    # The expected merge written out: the old state rescaled to the new maximum, plus the block.
    new_max = torch.maximum(state[1], scores.amax(-1))
    p = torch.exp(scores - new_max[..., None])
    expected = (
        torch.exp(state[1] - new_max)[..., None] * state[0] + p @ values,
        new_max,
        torch.exp(state[1] - new_max) * state[2] + p.sum(-1),
    )
    _close_state(t, (out, row_max, row_sum), expected, "float32", atol=1e-5, rtol=1e-5)
    for before, after in zip(copies, (*state, scores, values)):
        t.close(after, before, atol=0, rtol=0, what="an input after the call")


@hidden_test("15.1", inputs=True)
def bad_softmax_inputs(t):
    """integer scores, values with another d_v than out, a batch that does not match: ValueError"""
    lc = t.learner("long_context")
    state = _empty_state(2, 4, d_v=3)
    for scores, values in (
        (torch.ones(2, 4, 5, dtype=torch.long), seeded_randn(113, 2, 5, 3)),
        (seeded_randn(114, 2, 4, 5), seeded_randn(115, 2, 5, 2)),
        (seeded_randn(116, 3, 4, 5), seeded_randn(117, 3, 5, 3)),
    ):
        t.raises(ValueError, lc.online_softmax_update, *state, scores, values)


# -- 15.2 ring_step ---------------------------------------------------------------------------------


def _ring(t, q, k, v, world):
    """Every rank's steps in ring order with the learner's ring_step; the outputs and lse concatenated."""
    ring, n = t.learner("ring"), q.shape[-2] // world
    outs, lses = [], []
    for rank in range(world):
        out, lse = _ring_state(*q.shape[:-2], n, d_v=v.shape[-1], dtype=q.dtype)
        rows = slice(rank * n, rank * n + n)
        for step in range(world):
            source = (rank - step) % world
            cols = slice(source * n, source * n + n)
            out, lse = ring.ring_step(q[..., rows, :], k[..., cols, :], v[..., cols, :], out, lse, rank, source)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


@hidden_test("15.2")
def rings_of_one_to_four_ranks(t):
    """1, 2, 3 and 4 ranks, odd head widths: torch's causal attention and logsumexp over the whole sequence"""
    for world, n, d in ((1, 5, 3), (2, 3, 5), (3, 5, 7), (4, 2, 1)):
        seq = world * n
        q, k, v = (
            seeded_randn(200 + world, 2, seq, d),
            seeded_randn(210 + world, 2, seq, d),
            seeded_randn(220 + world, 2, seq, 3),
        )
        expected_out, expected_lse = _sdpa(q, k, v, torch.ones(seq, seq, dtype=torch.bool).tril())
        out, lse = _ring(t, q, k, v, world)
        t.close(out, expected_out, atol=1e-10, rtol=1e-10, what=f"out, {world} ranks")
        t.close(lse, expected_lse, atol=1e-10, rtol=1e-10, what=f"lse, {world} ranks")


@hidden_test("15.2")
def merging_into_a_state_rescales_it(t):
    """a state from two earlier blocks plus this one: torch's attention over all three (the old state reweighted)"""
    q, v_all = seeded_randn(230, 3, 4, 5), seeded_randn(231, 3, 12, 2)
    k_all = seeded_randn(232, 3, 12, 5) + 0.5 * torch.arange(12, dtype=F64)[:, None]  # scores vary block to block
    out, lse = _sdpa(q, k_all[:, :8], v_all[:, :8])  # the state after ranks 0 and 1's blocks
    new_out, new_lse = t.learner("ring").ring_step(q, k_all[:, 8:], v_all[:, 8:], out, lse, 3, 2)
    expected_out, expected_lse = _sdpa(q, k_all, v_all)
    t.close(new_out, expected_out, atol=1e-10, rtol=1e-10, what="out")
    t.close(new_lse, expected_lse, atol=1e-10, rtol=1e-10, what="lse")


@hidden_test("15.2")
def the_diagonal_block_merged_last(t):
    """the own block after an earlier one (the order of a ring's last step): causal inside, all of the earlier block"""
    q, k, v = seeded_randn(233, 2, 10, 3), seeded_randn(234, 2, 10, 3), seeded_randn(235, 2, 10, 4)
    out, lse = _sdpa(q[:, 5:], k[:, :5], v[:, :5])  # rank 1 has seen rank 0's block
    new_out, new_lse = t.learner("ring").ring_step(q[:, 5:], k[:, 5:], v[:, 5:], out, lse, 1, 1)
    expected_out, expected_lse = _sdpa(q, k, v, torch.ones(10, 10, dtype=torch.bool).tril())
    t.close(new_out, expected_out[:, 5:], atol=1e-10, rtol=1e-10, what="out")
    t.close(new_lse, expected_lse[:, 5:], atol=1e-10, rtol=1e-10, what="lse")


@hidden_test("15.2")
def large_scores_and_an_empty_state(t):
    """scores near ±700 stay finite; a later block on an empty state stays (0, -inf) without NaN"""
    ring = t.learner("ring")
    q, k, v = 40 * seeded_randn(236, 4, 2), 40 * seeded_randn(237, 4, 2), seeded_randn(238, 4, 3)
    out, lse = ring.ring_step(q, k, v, *_ring_state(4, d_v=3), 2, 1)
    expected_out, expected_lse = _sdpa(q, k, v)
    t.true(bool(torch.isfinite(lse).all() and torch.isfinite(out).all()), "not finite for large scores")
    t.close(out, expected_out, atol=1e-9, rtol=1e-9, what="out, large scores")
    t.close(lse, expected_lse, atol=1e-9, rtol=1e-9, what="lse, large scores")
    out, lse = ring.ring_step(q, k, v, *_ring_state(4, d_v=3), 0, 3)
    t.true(not bool(torch.isnan(out).any() or torch.isnan(lse).any()), "NaN for a state with nothing visible")
    t.close(out, torch.zeros(4, 3, dtype=F64), atol=0, rtol=0, what="out, nothing visible")
    t.close(lse, torch.full((4,), NEG, dtype=F64), atol=0, rtol=0, what="lse, nothing visible")


@hidden_test("15.2")
def ring_state_in_float32_inputs_unchanged(t):
    """float32 stays float32; the inputs are not modified"""
    q, k, v = (seeded_randn(240 + i, 2, 3, 4, dtype=F32) for i in range(3))
    out, lse = seeded_randn(243, 2, 3, 4, dtype=F32), seeded_randn(244, 2, 3, dtype=F32)
    copies = [x.clone() for x in (q, k, v, out, lse)]
    new_out, new_lse = t.learner("ring").ring_step(q, k, v, out, lse, 1, 0)
    t.true(new_out.dtype == F32 and new_lse.dtype == F32, "the state must stay float32")
    block_out, block_lse = _sdpa(q, k, v)
    merged = torch.logaddexp(lse, block_lse)
    expected = torch.exp(lse - merged)[..., None] * out + torch.exp(block_lse - merged)[..., None] * block_out
    t.close(new_out, expected, atol=1e-5, rtol=1e-5, what="out, float32")
    t.close(new_lse, merged, atol=1e-5, rtol=1e-5, what="lse, float32")
    for before, after in zip(copies, (q, k, v, out, lse)):
        t.close(after, before, atol=0, rtol=0, what="an input after the call")


@hidden_test("15.2", inputs=True)
def bad_ring_inputs(t):
    """a float rank, a bool source, an lse with the wrong number of rows: ValueError"""
    ring = t.learner("ring")
    q, v = seeded_randn(245, 3, 2), seeded_randn(246, 3, 2)
    out, lse = _ring_state(3, d_v=2)
    t.raises(ValueError, ring.ring_step, q, q, v, out, lse, 1.0, 0)
    t.raises(ValueError, ring.ring_step, q, q, v, out, lse, 1, False)
    t.raises(ValueError, ring.ring_step, q, q, v, out, lse[:2], 1, 0)


# -- 15.3 lightning_indexer and 15.4 sinkhorn_knopp (§5–6) ------------------------------------------


from course_lib.checks.ch15 import _dsa_expected, _sk_expected  # noqa: E402 - the written-out expectations


def _dsa_check(t, q, k, w, top_k, causal=True, what=""):
    scores, indices = t.learner("sparse_attention").lightning_indexer(q, k, w, top_k, causal)
    expected_scores, expected_indices = _dsa_expected(q, k, w, top_k, causal)
    t.close(scores, expected_scores, what=f"scores {what}")
    t.equal(indices, expected_indices, what=f"indices {what}")


@hidden_test("15.3")
def indexer_many_shapes_and_top_ks(t):
    """batch 1 to 3, 1 to 11 positions, 1 to 4 heads, widths 2 to 7, top_k 1, 3, 5 and 64: written out"""
    for n, (batch, seq, heads, d) in enumerate(((1, 1, 1, 2), (3, 5, 2, 3), (2, 11, 4, 7), (1, 9, 3, 5))):
        q, k = seeded_randn(1600 + n, batch, seq, heads, d), seeded_randn(1610 + n, batch, seq, d)
        w = seeded_randn(1620 + n, batch, seq, heads)
        for top_k in (1, 3, 5, 64):
            _dsa_check(t, q, k, w, top_k, what=f"{tuple(q.shape)}, top {top_k}")


@hidden_test("15.3")
def indexer_relu_per_head_before_the_weights(t):
    """negative weights and dot products of both signs: ReLU on each head's dot product, then w; nothing else"""
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]] * 3], dtype=F64)  # (1, 3, 2, 2): two heads
    k = torch.tensor([[[1.0, -2.0], [-3.0, 1.0], [2.0, 2.0]]], dtype=F64)
    w = torch.tensor([[[1.0, -0.5], [2.0, 1.0], [-1.0, 0.25]]], dtype=F64)
    _dsa_check(t, q, k, w, 3, what="signs")
    _dsa_check(t, 3 * seeded_randn(1630, 2, 6, 3, 4), seeded_randn(1631, 2, 6, 4), seeded_randn(1632, 2, 6, 3), 6)


@hidden_test("15.3")
def indexer_each_query_sees_itself_not_the_next(t):
    """a key scored far above the others, at each position in turn: only queries at or after it select it first"""
    lib = t.learner("sparse_attention")
    for star in range(5):
        k = torch.zeros(1, 5, 2, dtype=F64)
        k[0, :, 0] = 0.1
        k[0, star, 0] = 10.0
        q = torch.ones(1, 5, 1, 2, dtype=F64)
        _, indices = lib.lightning_indexer(q, k, torch.ones(1, 5, 1, dtype=F64), 1)
        expected = torch.tensor([[[star if i >= star else 0] for i in range(5)]])
        t.equal(indices, expected, what=f"best key at {star}")


@hidden_test("15.3")
def indexer_decoding_queries_are_the_last_positions(t):
    """1 and 3 queries against 8 keys: query t stands at 8 - seq_q + t"""
    k = seeded_randn(1640, 2, 8, 4)
    for seq_q in (1, 3):
        q, w = seeded_randn(1641 + seq_q, 2, seq_q, 2, 4), seeded_randn(1643 + seq_q, 2, seq_q, 2)
        _dsa_check(t, q, k, w, 4, what=f"{seq_q} queries")


@hidden_test("15.3")
def indexer_ties_go_to_the_earlier_position(t):
    """equal scores (repeated keys, zero weights) are kept in position order"""
    lib = t.learner("sparse_attention")
    k = torch.tensor([[[1.0], [2.0], [1.0], [2.0], [1.0], [2.0]]], dtype=F64)
    q = torch.ones(1, 6, 1, 1, dtype=F64)
    _, indices = lib.lightning_indexer(q, k, torch.ones(1, 6, 1, dtype=F64), 4)
    expected = [[0, -1, -1, -1], [1, 0, -1, -1], [1, 0, 2, -1], [1, 3, 0, 2], [1, 3, 0, 2], [1, 3, 5, 0]]
    t.equal(indices, torch.tensor([expected]), what="repeated keys")
    _, indices = lib.lightning_indexer(q, k, torch.zeros(1, 6, 1, dtype=F64), 3, False)
    t.equal(indices, torch.tensor([[[0, 1, 2]] * 6]), what="all scores 0, not causal")


@hidden_test("15.3")
def indexer_fewer_visible_keys_than_slots_and_not_causal(t):
    """top_k 7 over 5 keys gives 5 slots, -1 where a query sees fewer; causal=False sees every key"""
    q, k, w = seeded_randn(1650, 2, 5, 2, 3), seeded_randn(1651, 2, 5, 3), seeded_randn(1652, 2, 5, 2)
    _dsa_check(t, q, k, w, 7, what="top 7 of 5")
    _dsa_check(t, q, k, w, 3, causal=False, what="not causal")
    q2, w2 = seeded_randn(1653, 1, 2, 2, 3), seeded_randn(1654, 1, 2, 2)
    _dsa_check(t, q2, k[:1], w2, 2, causal=False, what="2 queries, 5 keys, not causal")


@hidden_test("15.3")
def indexer_float32_scores_int64_indices_inputs_kept(t):
    """float32 and float64 inputs give float32 scores and int64 indices; the inputs are not modified"""
    lib = t.learner("sparse_attention")
    for dtype in (F32, F64):
        q, k = seeded_randn(1660, 1, 4, 2, 3).to(dtype), seeded_randn(1661, 1, 4, 3).to(dtype)
        w = seeded_randn(1662, 1, 4, 2).to(dtype)
        before = (q.clone(), k.clone(), w.clone())
        scores, indices = lib.lightning_indexer(q, k, w, 2)
        t.true(scores.dtype == F32 and indices.dtype == torch.int64, f"dtypes for {dtype}: float32 and int64")
        t.true(all(torch.equal(a, b) for a, b in zip(before, (q, k, w))), "the inputs must not be modified")


@hidden_test("15.3", inputs=True)
def indexer_rejects_bad_arguments_hidden(t):
    """ValueError for lists, integer tensors, mixed dtypes, a 3-D q, a wrong width or batch, top_k -1, '2'
    and None, causal None"""
    lib = t.learner("sparse_attention")
    q, k, w = torch.zeros(2, 3, 2, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 2)
    bad = [
        ([[0.0]], k, w),
        (q.long(), k, w),
        (q, k.double(), w),
        (q[:, :, 0], k, w),
        (q, torch.zeros(2, 3, 5), w),
        (q, torch.zeros(1, 3, 4), w),
        (q, k, torch.zeros(2, 3)),
    ]
    for args in bad:
        t.raises(ValueError, lib.lightning_indexer, *args, 2)
    for top_k in (-1, "2", None):
        t.raises(ValueError, lib.lightning_indexer, q, k, w, top_k)
    t.raises(ValueError, lib.lightning_indexer, q, k, w, 2, None)


@hidden_test("15.4")
def sinkhorn_iteration_counts_and_sizes(t):
    """n 1 to 6, batches (), (2,), (2, 3), n_iters 1, 2, 3, 7 and 20, sharp logits: Hugging Face's steps"""
    lib = t.learner("hyper_connections")
    for n, batch in ((1, ()), (2, (2,)), (3, (2, 3)), (4, ()), (6, (3,))):
        logits = 4 * seeded_randn(1700 + n, *batch, n, n)
        for n_iters in (1, 2, 3, 7, 20):
            expected = _sk_expected(logits, n_iters, 1e-6)
            t.close(lib.sinkhorn_knopp(logits, n_iters, 1e-6), expected, atol=1e-6, what=f"n {n}, {n_iters} iters")


@hidden_test("15.4")
def sinkhorn_eps_in_every_step(t):
    """eps 0.05, 0.0 and 0 (and the default 1e-6), float32 and float64 logits: eps after the softmax and in every sum"""
    lib = t.learner("hyper_connections")
    logits = 3 * seeded_randn(1710, 2, 4, 4)
    for eps in (0.05, 0.0, 0):
        for dtype in (F32, F64):
            expected = _sk_expected(logits.to(dtype), 5, eps)
            t.close(lib.sinkhorn_knopp(logits.to(dtype), 5, eps), expected, atol=1e-6, what=f"eps {eps}, {dtype}")
    t.close(lib.sinkhorn_knopp(logits, 4), _sk_expected(logits, 4, 1e-6), atol=1e-6, what="default eps")


@hidden_test("15.4")
def sinkhorn_float32_differentiable_input_kept(t):
    """float64 logits give float32; the result carries gradients; the logits are not modified"""
    lib = t.learner("hyper_connections")
    logits = seeded_randn(1720, 3, 3).requires_grad_(True)
    before = logits.detach().clone()
    m = lib.sinkhorn_knopp(logits, 3, 1e-6)
    t.true(m.dtype == F32, "the result must be float32")
    t.true(m.requires_grad is True, "the result must carry gradients to the logits")
    t.true(torch.equal(logits.detach(), before), "the logits must not be modified")


@hidden_test("15.4", inputs=True)
def sinkhorn_rejects_bad_arguments_hidden(t):
    """ValueError for a list, a 1-D tensor, a (2, 0, 0) tensor, bool logits, n_iters -1 and None, eps nan, inf,
    True and '0.1'"""
    lib = t.learner("hyper_connections")
    for logits in ([[0.0]], torch.zeros(3), torch.zeros(2, 0, 0), torch.zeros(2, 2, dtype=torch.bool)):
        t.raises(ValueError, lib.sinkhorn_knopp, logits, 3)
    for n_iters in (-1, None):
        t.raises(ValueError, lib.sinkhorn_knopp, torch.zeros(2, 2), n_iters)
    for eps in (math.nan, math.inf, True, "0.1"):
        t.raises(ValueError, lib.sinkhorn_knopp, torch.zeros(2, 2), 3, eps)


# -- 15.5 yarn_frequencies --------------------------------------------------------------------------


@hidden_test("15.5")
def yarn_many_settings(t):
    """heads of 2 to 128 features, bases 10,000 to 1e6, factors 1.5 to 40, contexts 37 to 8,192, odd betas"""
    lib = t.learner("yarn")
    for args in (
        (2, 10000.0, 4.0, 4096),
        (18, 10000.0, 1.5, 2048),
        (128, 500000.0, 8.0, 8192),
        (64, 1.0e6, 40.0, 37),
        (30, 10000.0, 16.0, 4096, 64.0, 0.25),
        (64, 10000.0, 40.0, 4096, 16.0, 2.0),
    ):
        _close_frequencies(t, lib.yarn_frequencies(*args), _yarn_expected(*args), f"yarn_frequencies{args}")


@hidden_test("15.5")
def yarn_ramp_clamped_and_of_no_width(t):
    """a context of 1 or 5 positions: both ends clamped to pair 0, the ramp 0.001 wide (no 0 / 0); 9 positions"""
    lib = t.learner("yarn")
    for args in ((8, 10000.0, 4.0, 5), (8, 10000.0, 4.0, 1), (12, 10000.0, 3.0, 9)):
        f = lib.yarn_frequencies(*args)
        t.true(bool(torch.isfinite(f).all()), f"yarn_frequencies{args} must be finite everywhere")
        _close_frequencies(t, f, _yarn_expected(*args), f"yarn_frequencies{args}")


@hidden_test("15.5")
def yarn_defaults_types_and_shape(t):
    """betas default to 32 and 1; an int base and factor work; float32 of shape (dim // 2,); factor 1 is RoPE"""
    lib = t.learner("yarn")
    f = lib.yarn_frequencies(64, 10000, 40, 4096)
    t.true(f.dtype == F32 and tuple(f.shape) == (32,), "the result must be float32 of shape (dim // 2,)")
    _close_frequencies(t, f, _yarn_expected(64, 10000.0, 40.0, 4096, 32.0, 1.0), "default betas, int base and factor")
    theta = torch.tensor([500000.0 ** (-2 * i / 22) for i in range(11)], dtype=F64).float()
    _close_frequencies(t, lib.yarn_frequencies(22, 500000.0, 1.0, 64, 8.0, 2.0), theta, "factor 1")


@hidden_test("15.5", inputs=True)
def yarn_rejects_bad_arguments_hidden(t):
    """ValueError for dim True, 0, -4 and 8.0; base nan, inf and '1e4'; factor True and inf; original_context True and
    16.0; beta_slow 0, beta_fast equal to beta_slow, and a beta of nan"""
    lib = t.learner("yarn")
    for dim in (True, 0, -4, 8.0):
        t.raises(ValueError, lib.yarn_frequencies, dim, 10000.0, 4.0, 16)
    for base in (math.nan, math.inf, "1e4"):
        t.raises(ValueError, lib.yarn_frequencies, 8, base, 4.0, 16)
    for factor in (True, math.inf):
        t.raises(ValueError, lib.yarn_frequencies, 8, 10000.0, factor, 16)
    for original in (True, 16.0):
        t.raises(ValueError, lib.yarn_frequencies, 8, 10000.0, 4.0, original)
    for betas in ((32.0, 0.0), (2.0, 2.0), (math.nan, 1.0)):
        t.raises(ValueError, lib.yarn_frequencies, 8, 10000.0, 4.0, 16, *betas)
