"""Hidden tests of Chapter 12 — multi-token prediction (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
Expected values come from the visible checks' helpers (RMSNorm and the Llama block written out,
``torch.nn.functional.cross_entropy``, the trunk's own greedy choices), never from the references.
"""

from course_lib.checks import seeded_ints, seeded_randn
from course_lib.checks.ch12 import (
    _block_state,
    _embed_and_head,
    _expected_mtp,
    _expected_speculation,
    _greedy,
    _identity_mtp,
    _llama_block,
    _mtp,
    _mtp_state,
    _rope,
    _trunk_and_mtp,
)

import torch
import torch.nn.functional as F

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64


# -- 12.1 MTPModule.forward -------------------------------------------------------------------------


@hidden_test("12.1")
def odd_shapes_with_a_llama_block(t):
    """d_model 12 (3 heads) and 20 (5 heads), vocab 17 and 29, batch 1 to 3, 1 to 9 positions: the block written out"""
    for d_model, n_heads, vocab in ((12, 3, 17), (20, 5, 29)):
        table, head_w = seeded_randn(100 + d_model, vocab, d_model), seeded_randn(101 + d_model, vocab, d_model)
        state = _mtp_state(102 + d_model, d_model, _block_state(103 + d_model, d_model, n_heads, 2 * d_model + 1))
        embed, head = _embed_and_head(t, table, head_w)
        mtp = _mtp(t, state, d_model, _llama_block(t, d_model, n_heads, 2 * d_model + 1))
        rope = _rope(t, d_model // n_heads)
        for batch, n in ((1, 1), (2, 4), (3, 9)):
            hidden, ids = seeded_randn(110 + n, batch, n, d_model), seeded_ints(111 + n, vocab, batch, n)
            logits, h = mtp(hidden, ids, embed, head, rope=rope)
            expected_logits, expected_h = _expected_mtp(hidden, ids, state, table, head_w, n_heads=n_heads)
            what = f"d_model {d_model}, hidden {tuple(hidden.shape)}"
            t.close(logits, expected_logits, atol=1e-10, rtol=1e-10, what=f"logits, {what}")
            t.close(h, expected_h, atol=1e-10, rtol=1e-10, what=f"h, {what}")


@hidden_test("12.1")
def embedding_half_first_each_with_its_own_norm(t):
    """eh_proj reads [enorm(embedding); hnorm(hidden)]: swapping the halves or the norms changes the result"""
    table, head_w = seeded_randn(120, 7, 4), seeded_randn(121, 7, 4)
    state = _mtp_state(122, 4)
    state["enorm.weight"] = torch.tensor([3.0, 0.1, 1.0, 2.0], dtype=F64)  # far from hnorm's scales
    state["hnorm.weight"] = torch.tensor([0.2, 2.5, -1.0, 0.7], dtype=F64)
    state["eh_proj.weight"] = torch.cat([torch.eye(4, dtype=F64), 0.1 * seeded_randn(123, 4, 4)], dim=1)
    embed, head = _embed_and_head(t, table, head_w)
    hidden, ids = 5 * seeded_randn(124, 2, 3, 4), seeded_ints(125, 7, 2, 3)
    logits, h = _identity_mtp(t, state, 4)(hidden, ids, embed, head)
    expected_logits, expected_h = _expected_mtp(hidden, ids, state, table, head_w)
    t.close(h, expected_h, atol=1e-10, rtol=1e-10, what="h")
    t.close(logits, expected_logits, atol=1e-10, rtol=1e-10, what="logits")


@hidden_test("12.1")
def head_norm_before_the_head_not_in_h(t):
    """shared_head.norm scales only the logits: h is the block's output before it"""
    table, head_w = seeded_randn(130, 9, 6), seeded_randn(131, 9, 6)
    state = _mtp_state(132, 6)
    state["shared_head.norm.weight"] = torch.linspace(-2.0, 3.0, 6, dtype=F64)
    embed, head = _embed_and_head(t, table, head_w)
    hidden, ids = seeded_randn(133, 1, 5, 6), seeded_ints(134, 9, 1, 5)
    logits, h = _identity_mtp(t, state, 6)(hidden, ids, embed, head)
    expected_logits, expected_h = _expected_mtp(hidden, ids, state, table, head_w)
    t.close(h, expected_h, atol=1e-10, rtol=1e-10, what="h")
    t.close(logits, expected_logits, atol=1e-10, rtol=1e-10, what="logits")


@hidden_test("12.1")
def two_depths_chained(t):
    """depth 2 takes depth 1's h (shortened by one) and the tokens two ahead: both depths written out"""
    table, head_w = seeded_randn(140, 11, 8), seeded_randn(141, 11, 8)
    states = [_mtp_state(142 + k, 8, _block_state(150 + 10 * k, 8, 2, 12)) for k in (0, 1)]
    embed, head = _embed_and_head(t, table, head_w)
    rope = _rope(t, 4)
    modules = [_mtp(t, s, 8, _llama_block(t, 8, 2, 12)) for s in states]
    trunk_hidden, ids = seeded_randn(160, 2, 7, 8), seeded_ints(161, 11, 2, 7)
    hidden, expected = trunk_hidden, trunk_hidden
    for k in (1, 2):
        seq = 7 - k
        logits, hidden = modules[k - 1](hidden[:, :seq], ids[:, k:], embed, head, rope=rope)
        expected_logits, expected = _expected_mtp(expected[:, :seq], ids[:, k:], states[k - 1], table, head_w, 2)
        t.close(logits, expected_logits, atol=1e-10, rtol=1e-10, what=f"depth {k} logits")
        t.close(hidden, expected, atol=1e-10, rtol=1e-10, what=f"depth {k} h")


@hidden_test("12.1")
def float32_in_float32_out(t):
    """a float32 module on float32 input returns float32 logits and h, close to float64"""
    table, head_w = seeded_randn(170, 13, 8), seeded_randn(171, 13, 8)
    state = _mtp_state(172, 8, _block_state(173, 8, 2, 12))
    embed, head = _embed_and_head(t, table, head_w)
    mtp = _mtp(t, state, 8, _llama_block(t, 8, 2, 12))
    mtp.float()
    embed.float()
    head.float()
    hidden, ids = seeded_randn(174, 2, 5, 8), seeded_ints(175, 13, 2, 5)
    logits, h = mtp(hidden.float(), ids, embed, head, rope=_rope(t, 4))
    expected_logits, expected_h = _expected_mtp(hidden, ids, state, table, head_w, n_heads=2)
    t.close(logits, expected_logits.float(), atol=1e-5, rtol=1e-5, what="logits")
    t.close(h, expected_h.float(), atol=1e-5, rtol=1e-5, what="h")


@hidden_test("12.1", inputs=True)
def rejects_bad_hidden_and_ids(t):
    """ValueError for integer, 4-D or empty hidden, a wrong width, float or bool next_ids, and a batch mismatch"""
    embed, head = _embed_and_head(t, seeded_randn(180, 11, 6), seeded_randn(181, 11, 6))
    mtp = _identity_mtp(t, _mtp_state(182, 6), 6)
    ids = torch.zeros(2, 3, dtype=torch.int64)
    for bad in (
        torch.zeros(2, 3, 6, dtype=torch.int64),
        torch.zeros(1, 2, 3, 6, dtype=F64),
        torch.zeros(2, 0, 6, dtype=F64),
        torch.zeros(2, 3, 7, dtype=F64),
    ):
        t.raises(ValueError, mtp, bad, ids, embed, head)
    hidden = torch.zeros(2, 3, 6, dtype=F64)
    for bad in (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.int64)):
        t.raises(ValueError, mtp, hidden, bad, embed, head)


# -- 12.2 mtp_loss ----------------------------------------------------------------------------------


def _expected_loss(depth_logits, targets, weight):
    losses = [F.cross_entropy(d.flatten(0, 1), targets[:, k:].flatten()) for k, d in enumerate(depth_logits, 1)]
    return sum(losses) * (weight / len(depth_logits))


@hidden_test("12.2")
def one_to_three_depths_many_weights(t):
    """D = 1, 2, 3, T up to 11, vocab 5 to 31, weights 0, 0.1, 0.3, 1 and the int 2: F.cross_entropy per depth"""
    lib = t.learner("mtp")
    for depth, (batch, window, vocab) in zip((1, 2, 3), ((1, 2, 5), (3, 7, 13), (2, 11, 31))):
        targets = seeded_ints(200 + depth, vocab, batch, window)
        logits = [3 * seeded_randn(210 + 10 * depth + k, batch, window - k, vocab) for k in range(1, depth + 1)]
        for weight in (0.0, 0.1, 0.3, 1.0, 2):
            expected = _expected_loss(logits, targets, weight)
            t.close(
                lib.mtp_loss(logits, targets, weight), expected, atol=1e-12, rtol=1e-10, what=f"D {depth}, {weight}"
            )


@hidden_test("12.2")
def depth_k_aims_k_plus_one_ahead(t):
    """logits that put all their mass on t_{i+k+1} give a loss near 0; aimed one position off, a large one"""
    lib = t.learner("mtp")
    targets = seeded_ints(220, 6, 2, 8)
    for k in (1, 2):
        right = 50.0 * F.one_hot(targets[:, k:], 6).to(F64)  # (2, 8 - k, 6)
        depths = [torch.zeros(2, 8 - j, 6, dtype=F64) for j in range(1, k)] + [right]
        loss = lib.mtp_loss(depths, targets, 1.0)
        t.close(loss, _expected_loss(depths, targets, 1.0), atol=1e-12, rtol=1e-10, what=f"depth {k}")


@hidden_test("12.2")
def ignored_targets_leave_the_mean(t):
    """targets of -100 are left out of their depth's mean (as F.cross_entropy's ignore_index)"""
    targets = seeded_ints(230, 9, 3, 6)
    targets[0, 3] = targets[2, 1] = targets[1, 5] = -100
    logits = [seeded_randn(231, 3, 5, 9), seeded_randn(232, 3, 4, 9)]
    expected = _expected_loss(logits, targets, 0.3)
    t.close(t.learner("mtp").mtp_loss(logits, targets, 0.3), expected, atol=1e-12, rtol=1e-10)


@hidden_test("12.2")
def differentiable_and_in_the_logits_dtype(t):
    """logits that require gradients give a loss that requires them; float32 logits give a float32 loss"""
    lib = t.learner("mtp")
    targets = seeded_ints(240, 7, 2, 5)
    logits = [seeded_randn(241, 2, 4, 7).requires_grad_(True)]
    loss = lib.mtp_loss(logits, targets, 0.3)
    t.true(loss.requires_grad is True, "the loss must carry gradients to the logits")
    t.close(loss.detach(), _expected_loss([logits[0].detach()], targets, 0.3), atol=1e-12, rtol=1e-10, what="value")
    logits32 = [seeded_randn(242, 2, 4, 7).float()]
    expected = _expected_loss(logits32, targets, 0.1)
    t.close(lib.mtp_loss(logits32, targets, 0.1), expected, atol=1e-6, rtol=1e-5, what="float32")


@hidden_test("12.2", inputs=True)
def rejects_bad_logits_targets_and_weights(t):
    """ValueError for a tensor instead of a list, float targets, 1-D targets, a wrong batch, a depth of all -100,
    and weights -0.1, inf, nan, True and '0.3'"""
    lib = t.learner("mtp")
    targets = torch.zeros(2, 4, dtype=torch.int64)
    logits = [torch.zeros(2, 3, 5)]
    t.raises(ValueError, lib.mtp_loss, torch.zeros(2, 3, 5), targets, 0.3)
    t.raises(ValueError, lib.mtp_loss, logits, torch.zeros(2, 4), 0.3)
    t.raises(ValueError, lib.mtp_loss, logits, torch.zeros(8, dtype=torch.int64), 0.3)
    t.raises(ValueError, lib.mtp_loss, [torch.zeros(3, 3, 5)], targets, 0.3)
    ignored = targets.clone()
    ignored[:, 1:] = -100
    t.raises(ValueError, lib.mtp_loss, logits, ignored, 0.3)
    for bad in (-0.1, float("inf"), float("nan"), True, "0.3"):
        t.raises(ValueError, lib.mtp_loss, logits, targets, bad)


# -- 12.3 speculative_generate ----------------------------------------------------------------------


@hidden_test("12.3")
def many_lengths_equal_greedy(t):
    """three trunks, prompts of 1 to 6 tokens, 0 to 12 new tokens: greedy's tokens and the loop's counts"""
    lib = t.learner("mtp")
    for seed, prompt in ((300, 1), (310, 4), (320, 6)):
        trunk, mtp = _trunk_and_mtp(t, seed)
        ids = seeded_ints(seed + 1, 13, 1, prompt)
        greedy = _greedy(trunk, ids, 12)  # greedy decoding of n tokens is the first n of these
        for n in (0, 1, 2, 3, 4, 5, 8, 12):
            tokens, stats = lib.speculative_generate(trunk, mtp, ids, n)
            _, expected_stats = _expected_speculation(trunk, mtp, ids, n)
            t.equal(tokens, greedy[:, : prompt + n], what=f"seed {seed}, {n} new tokens")
            t.equal(stats, expected_stats, what=f"stats, seed {seed}, {n} new tokens")


@hidden_test("12.3")
def every_draft_accepted_up_to_the_boundary(t):
    """a zero output head: every score ties, greedy and the draft both pick token 0, every draft is accepted and
    no pass is made after the last token allowed (1 + n // 2 passes for n new tokens)"""
    lib = t.learner("mtp")
    trunk, mtp = _trunk_and_mtp(t, 330, head_scale=0.0)
    ids = seeded_ints(331, 13, 1, 3)
    for n in (1, 2, 3, 4, 7, 10):
        tokens, stats = lib.speculative_generate(trunk, mtp, ids, n)
        t.equal(tokens, torch.cat([ids, torch.zeros(1, n, dtype=torch.int64)], 1), what=f"{n} new tokens")
        t.equal(stats, {"forwards": 1 + n // 2, "drafted": n // 2, "accepted": n // 2}, what=f"stats, {n} new tokens")


@hidden_test("12.3")
def every_draft_rejected(t):
    """an MTP module whose eh_proj is zero always drafts token 0, which greedy never picks: one pass per token"""
    lib = t.learner("mtp")
    trunk, mtp = _trunk_and_mtp(t, 340, eh_scale=0.0)
    ids = seeded_ints(341, 13, 1, 3)
    for n in (1, 2, 5, 9):
        tokens, stats = lib.speculative_generate(trunk, mtp, ids, n)
        greedy = _greedy(trunk, ids, n)
        t.true(bool((greedy[0, 3:] != 0).all()), "greedy must avoid token 0 here (a broken test)")
        t.equal(tokens, greedy, what=f"{n} new tokens")
        t.equal(stats, {"forwards": n, "drafted": n - 1, "accepted": 0}, what=f"stats, {n} new tokens")


@hidden_test("12.3")
def modes_kept_and_int32_prompts(t):
    """modules in training mode stay in it, with greedy's tokens; an int32 prompt gives int64 tokens"""
    lib = t.learner("mtp")
    trunk, mtp = _trunk_and_mtp(t, 350)
    ids = seeded_ints(351, 13, 1, 4)
    expected_tokens, expected_stats = _expected_speculation(trunk, mtp, ids, 6)
    trunk.train()
    mtp.train()
    tokens, stats = lib.speculative_generate(trunk, mtp, ids.to(torch.int32), 6)
    t.equal((t.value(trunk.training), t.value(mtp.training)), (True, True), what="modes after the call")
    t.equal(tokens, expected_tokens, what="tokens")
    t.equal(stats, expected_stats, what="stats")


@hidden_test("12.3", inputs=True)
def rejects_bad_prompts_and_lengths(t):
    """ValueError for 1-D, bool, empty and list prompts, and max_new_tokens -1, 2.0, True and None"""
    lib = t.learner("mtp")
    trunk, mtp = _trunk_and_mtp(t, 360)
    for bad in (
        torch.zeros(3, dtype=torch.int64),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.zeros(1, 0, dtype=torch.int64),
        [[1, 2]],
    ):
        t.raises(ValueError, lib.speculative_generate, trunk, mtp, bad, 2)
    ids = torch.zeros(1, 3, dtype=torch.int64)
    for bad in (-1, 2.0, True, None):
        t.raises(ValueError, lib.speculative_generate, trunk, mtp, ids, bad)
