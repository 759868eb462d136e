"""Hidden tests of Chapter 11 — Mixture of Experts (instructors only: never released).

Expected values come from the visible checks' token-by-token helpers (the router, the experts added
up, equations 17-20 of the V3 report), from ``torch`` itself, or from ``t.reference("moe")``.
"""

from course_lib.checks import learner_model, seeded_randn
from course_lib.checks.ch11 import _balance, _moe_expected, _moe_state, _route, moe_config, moe_sizes

import torch

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64


# -- 11.1 route -------------------------------------------------------------------------------------


@hidden_test("11.1")
def many_shapes_against_the_router_written_out(t):
    """experts 1 to 16, groups 1 to 8, kept groups, top-k, scales, with and without bias and renormalisation"""
    lib = t.learner("moe")
    cases = (
        (1, 1, 1, 1, 1.0),
        (6, 1, 1, 6, 1.0),
        (8, 8, 3, 3, 2.5),
        (12, 4, 2, 3, 2.5),
        (12, 3, 3, 5, 0.5),
        (16, 8, 4, 8, 2.5),
        (10, 5, 2, 4, 1.0),
    )
    for i, (n, groups, kept, top_k, scale) in enumerate(cases):
        logits = seeded_randn(100 + i, 7, n)
        for bias in (None, 0.4 * seeded_randn(120 + i, n)):
            for norm in (True, False):
                want_w, want_i = _route(logits, bias, top_k, groups, kept, scale, "sigmoid", norm)
                weights, indices = lib.route(logits, bias, top_k, groups, kept, scale, "sigmoid", norm)
                what = f"{n} experts, {groups} groups, {kept} kept, top-{top_k}, bias {bias is not None}, norm {norm}"
                t.equal(indices, want_i, what=f"indices, {what}")
                t.close(weights, want_w, atol=1e-12, rtol=1e-12, what=f"weights, {what}")


@hidden_test("11.1")
def ties_go_to_the_lower_index(t):
    """equal logits: experts 0, 1, 2 in that order; equal groups: the lower group is kept"""
    lib = t.learner("moe")
    logits = torch.zeros(3, 8, dtype=F64)
    _, indices = lib.route(logits, None, 3)
    t.equal(indices, torch.tensor([[0, 1, 2]] * 3), what="no groups")
    _, indices = lib.route(logits, None, 2, 4, 2)
    t.equal(indices, torch.tensor([[0, 1]] * 3), what="4 equal groups, 2 kept")
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1], dtype=F64)
    _, indices = lib.route(logits, bias, 4, 4, 2)
    t.equal(indices, torch.tensor([[6, 7, 0, 1]] * 3), what="group 3 first, then group 0")


@hidden_test("11.1")
def descending_order_of_the_selection_scores(t):
    """indices come sorted by biased score, highest first, not by expert index"""
    lib = t.learner("moe")
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.7, -0.3]], dtype=F64)
    bias = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5], dtype=F64)
    weights, indices = lib.route(logits, bias, 4, norm_topk_prob=False)  # biased: 1.52, 0.93, 0.71, 0.67, 0.62
    t.equal(indices, torch.tensor([[0, 4, 1, 3]]), what="indices")
    t.close(weights, torch.sigmoid(logits[:, [0, 4, 1, 3]]), atol=1e-12, rtol=1e-12, what="weights")


@hidden_test("11.1")
def the_bias_never_enters_a_gate(t):
    """a large bias changes which experts are chosen; their gates are the unbiased sigmoids"""
    lib = t.learner("moe")
    logits = seeded_randn(130, 6, 8)
    bias = torch.tensor([3.0, 0, 0, 0, 0, 0, 0, 3.0], dtype=F64)
    weights, indices = lib.route(logits, bias, 2, norm_topk_prob=False, route_scale=1.0)
    t.equal(indices.sort(dim=-1).values, torch.tensor([[0, 7]] * 6), what="indices")
    t.close(weights, torch.sigmoid(logits).gather(1, indices), atol=1e-12, rtol=1e-12, what="weights")


@hidden_test("11.1")
def group_score_is_the_sum_of_the_top_two(t):
    """a group with one high score loses to one with two middling ones (sum of top-2, not the max)"""
    lib = t.learner("moe")
    logits = torch.tensor([[3.0, -3.0, -3.0, 1.0, 1.0, 1.0]], dtype=F64)  # groups (0,1,2) and (3,4,5)
    _, indices = lib.route(logits, None, 1, 2, 1)
    t.equal(indices, torch.tensor([[3]]), what="indices")


@hidden_test("11.1")
def minus_infinity_with_negative_scores_in_many_rows(t):
    """biases of -2 everywhere but group 0 at -1.5: every selected expert lies in the kept groups"""
    lib = t.learner("moe")
    logits = seeded_randn(140, 10, 12)
    bias = torch.full((12,), -2.0, dtype=F64)
    want_w, want_i = _route(logits, bias, 4, 4, 2, 1.0)
    weights, indices = lib.route(logits, bias, 4, 4, 2)
    t.equal(indices, want_i, what="indices")
    t.close(weights, want_w, atol=1e-12, rtol=1e-12, what="weights")


@hidden_test("11.1")
def softmax_router_variants(t):
    """softmax scores with the group max: with and without renormalisation, with a bias, several sizes"""
    lib = t.learner("moe")
    for i, (n, groups, kept, top_k) in enumerate(((8, 4, 2, 2), (12, 3, 1, 4), (6, 1, 1, 3), (9, 9, 3, 3))):
        logits = seeded_randn(150 + i, 5, n)
        for bias in (None, 0.2 * seeded_randn(160 + i, n)):
            for norm in (False, True):
                want_w, want_i = _route(logits, bias, top_k, groups, kept, 16.0, "softmax", norm)
                weights, indices = lib.route(logits, bias, top_k, groups, kept, 16.0, "softmax", norm)
                t.equal(indices, want_i, what=f"indices, case {i}")
                t.close(weights, want_w, atol=1e-12, rtol=1e-12, what=f"weights, case {i}")


@hidden_test("11.1")
def dtypes(t):
    """float32 logits give float32 weights, bfloat16 logits float32 weights, float64 stays float64"""
    lib = t.learner("moe")
    logits = seeded_randn(170, 6, 8)
    for dtype in (F32, torch.bfloat16, F64):
        given = logits.to(dtype)
        want_w, want_i = _route(given, None, 2, 2, 1, 2.5)
        weights, indices = lib.route(given, None, 2, 2, 1, 2.5)
        t.equal(indices, want_i, what=f"indices, {dtype}")
        t.close(weights, want_w, atol=1e-6, rtol=1e-6, what=f"weights, {dtype}")


@hidden_test("11.1")
def the_logits_are_not_modified(t):
    """logits and bias hold the same values after the call"""
    lib = t.learner("moe")
    logits, bias = seeded_randn(180, 4, 6), seeded_randn(181, 6)
    kept_logits = lib.torch.nn.Parameter(logits.clone(), requires_grad=False)
    kept_bias = lib.torch.nn.Parameter(bias.clone(), requires_grad=False)
    lib.route(kept_logits, kept_bias, 2, 3, 2)
    t.close(t.value(kept_logits.data), logits, atol=0, rtol=0, what="logits")
    t.close(t.value(kept_bias.data), bias, atol=0, rtol=0, what="bias")


@hidden_test("11.1", inputs=True)
def rejects_bad_routing_arguments(t):
    """ValueError for bad logits, bias, top_k, groups, scale, score_func and norm_topk_prob"""
    lib = t.learner("moe")
    logits = torch.zeros(2, 8, dtype=F64)
    for bad in (torch.zeros(8, dtype=F64), torch.zeros(2, 8, dtype=torch.int64), [[0.0] * 8]):
        t.raises(ValueError, lib.route, bad, None, 2)
    for bad in (torch.zeros(7, dtype=F64), torch.zeros(8, dtype=torch.int64), [0.0] * 8):
        t.raises(ValueError, lib.route, logits, bad, 2)
    for args in ((0,), (2.0,), (True,), (9,), (2, 3), (2, 0), (2, 4, 5), (2, 4, 1.0), (5, 4, 2), (2, 2, 1, 0.0)):
        t.raises(ValueError, lib.route, logits, None, *args)
    t.raises(ValueError, lib.route, logits, None, 2, 2, 1, float("inf"))
    t.raises(ValueError, lib.route, logits, None, 2, score_func="relu")
    t.raises(ValueError, lib.route, logits, None, 2, norm_topk_prob=1)


# -- 11.2 MoE.forward -------------------------------------------------------------------------------


def _moe(t, seed, d_model, n_experts, top_k, d_expert, n_shared, n_groups=1, n_limited=1, scale=1.0):
    state = _moe_state(seed, d_model, n_experts, d_expert, n_shared)
    sizes = moe_sizes(d_model, n_experts, top_k, d_expert, n_shared, n_groups, n_limited, scale)
    return learner_model(t, "moe", "MoE", state, moe_config(t, **sizes)), state


@hidden_test("11.2")
def many_shapes_against_the_experts_added_up(t):
    """odd widths, 1 to 12 experts, top-1 to top-5, groups, 0 to 2 shared experts, 1 to 23 tokens, 2-D to 4-D x"""
    cases = (
        (6, 1, 1, 4, 0, 1, 1, 1.0, (1, 1)),
        (10, 8, 3, 6, 1, 4, 2, 2.5, (2, 5)),
        (12, 12, 5, 3, 2, 3, 2, 1.5, (3, 7)),
        (7, 5, 2, 9, 1, 5, 5, 1.0, (23,)),
        (9, 6, 2, 5, 0, 2, 1, 2.5, (2, 2, 3)),
    )
    for i, (d, n, k, width, shared, groups, kept, scale, lead) in enumerate(cases):
        moe, state = _moe(t, 200 + 30 * i, d, n, k, width, shared, groups, kept, scale)
        x = seeded_randn(201 + i, *lead, d)
        expected, load = _moe_expected(x, state, k, groups, kept, scale, shared)
        what = f"width {d}, {n} experts, top-{k}, {shared} shared, x {tuple(x.shape)}"
        t.close(moe(x), expected, atol=1e-10, rtol=1e-10, what=what)
        t.equal(t.value(moe.last_load), load, what=f"last_load, {what}")
        _, indices = _route(
            x.reshape(-1, d) @ state["gate.weight"].T, state["gate.e_score_correction_bias"], k, groups, kept
        )
        t.equal(t.value(moe.last_indices), indices.view(*lead, k), what=f"last_indices, {what}")


@hidden_test("11.2")
def the_load_of_each_call(t):
    """two calls in a row: last_load counts the second call's tokens only"""
    moe, state = _moe(t, 300, 8, 6, 2, 4, 1, 3, 2)
    moe(seeded_randn(301, 4, 9, 8))
    x = seeded_randn(302, 1, 3, 8)
    moe(x)
    _, load = _moe_expected(x, state, 2, 3, 2, 1.0, 1)
    t.equal(t.value(moe.last_load), load)


@hidden_test("11.2")
def float32_in_float32_out(t):
    """a float32 layer on float32 input returns float32, close to the float64 sum"""
    state = _moe_state(310, 10, 8, 6, 1)
    sizes = moe_sizes(10, 8, 3, 6, 1, 4, 2, 2.5)
    moe = t.learner("moe").MoE(moe_config(t, **sizes))
    moe.load_state_dict({name: value.float() for name, value in state.items()})
    moe.eval()
    x = seeded_randn(311, 2, 5, 10)
    expected, _ = _moe_expected(x.float().double(), {k: v.float().double() for k, v in state.items()}, 3, 4, 2, 2.5, 1)
    t.close(moe(x.float()), expected.float(), atol=1e-5, rtol=1e-5)


@hidden_test("11.2")
def differentiable_through_experts_and_gates(t):
    """the Jacobian with respect to x (through the experts, the gates and the router) is the reference's"""
    moe, state = _moe(t, 320, 6, 4, 2, 5, 1, 2, 1, 2.5)
    x = seeded_randn(321, 1, 3, 6)
    got = t.learner("moe").torch.autograd.functional.jacobian(moe, x)
    ref = t.reference("moe")
    reference = ref.MoE(ref.DeepSeekConfig.tiny(**moe_sizes(6, 4, 2, 5, 1, 2, 1, 2.5))).double()
    reference.load_state_dict(state)
    t.close(got, torch.autograd.functional.jacobian(reference, x), atol=1e-10, rtol=1e-10)


@hidden_test("11.2")
def x_is_not_modified(t):
    """x holds the same values after the call"""
    moe, _ = _moe(t, 330, 8, 6, 2, 4, 1)
    x = seeded_randn(331, 2, 4, 8)
    kept = t.learner("moe").torch.nn.Parameter(x.clone(), requires_grad=False)
    moe(kept)
    t.close(t.value(kept.data), x, atol=0, rtol=0)


@hidden_test("11.2", inputs=True)
def rejects_bad_inputs(t):
    """ValueError for a 1-D x, a wrong width, an integer x and a list"""
    moe, _ = _moe(t, 340, 8, 4, 2, 4, 0)
    for bad in (
        torch.zeros(8, dtype=F64),
        torch.zeros(3, 7, dtype=F64),
        torch.zeros(2, 8, dtype=torch.int64),
        [[0.0] * 8],
    ):
        t.raises(ValueError, moe, bad)


# -- 11.3 sequence_balance_loss ---------------------------------------------------------------------


def _indices(seed, batch, seq, n_experts, top_k):
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(n_experts, generator=generator)[:top_k] for _ in range(batch * seq)]
    return torch.stack(rows).view(batch, seq, top_k)


@hidden_test("11.3")
def many_shapes_against_the_equations(t):
    """batch 1 to 4, 1 to 9 tokens, 1 to 10 experts, top-1 to top-all, several alphas"""
    lib = t.learner("moe")
    for i, (batch, seq, n, k, alpha) in enumerate(
        ((1, 1, 1, 1, 1e-4), (4, 9, 10, 3, 0.3), (2, 5, 6, 6, 1.0), (3, 2, 7, 1, 2))
    ):
        scores = seeded_randn(400 + i, batch, seq, n).sigmoid()
        indices = _indices(410 + i, batch, seq, n, k)
        expected = _balance(scores, indices, alpha)
        t.close(lib.sequence_balance_loss(scores, indices, alpha), expected, atol=1e-15, rtol=1e-10, what=f"case {i}")


@hidden_test("11.3")
def per_sequence_not_per_batch(t):
    """two sequences each sending all to the expert it prefers, not the same: 1.6·alpha per sequence (1.0 per batch)"""
    lib = t.learner("moe")
    scores = torch.tensor([[[0.8, 0.2]] * 3, [[0.2, 0.8]] * 3], dtype=F64)
    indices = torch.tensor([[[0], [0], [0]], [[1], [1], [1]]])
    t.close(lib.sequence_balance_loss(scores, indices, 1.0), torch.tensor(1.6, dtype=F64), atol=1e-12, rtol=1e-12)


@hidden_test("11.3")
def affinities_are_normalised_per_token(t):
    """scaling one token's affinities leaves the loss unchanged"""
    lib = t.learner("moe")
    scores = seeded_randn(420, 1, 4, 5).sigmoid()
    indices = _indices(421, 1, 4, 5, 2)
    scaled = scores.clone()
    scaled[0, 1] *= 7.0
    expected = _balance(scores, indices, 0.1)
    t.close(lib.sequence_balance_loss(scaled, indices, 0.1), expected, atol=1e-15, rtol=1e-10)


@hidden_test("11.3")
def the_default_alpha_is_v3s(t):
    """without alpha: V3's 0.0001"""
    lib = t.learner("moe")
    scores, indices = seeded_randn(430, 2, 5, 4).sigmoid(), _indices(431, 2, 5, 4, 2)
    t.close(lib.sequence_balance_loss(scores, indices), _balance(scores, indices, 1e-4), atol=1e-15, rtol=1e-10)


@hidden_test("11.3")
def float32_scores(t):
    """float32 scores give a float32 loss close to the float64 one"""
    lib = t.learner("moe")
    scores, indices = seeded_randn(440, 2, 6, 5).sigmoid().float(), _indices(441, 2, 6, 5, 2)
    expected = _balance(scores.double(), indices, 0.5).float()
    t.close(lib.sequence_balance_loss(scores, indices, 0.5), expected, atol=1e-6, rtol=1e-6)


@hidden_test("11.3", inputs=True)
def rejects_bad_scores_indices_and_alpha(t):
    """ValueError for int scores, float or bool indices, K above N, indices out of range, bad alpha"""
    lib = t.learner("moe")
    scores, indices = torch.full((1, 4, 3), 0.5, dtype=F64), torch.zeros(1, 4, 1, dtype=torch.int64)
    t.raises(ValueError, lib.sequence_balance_loss, scores.long(), indices)
    t.raises(ValueError, lib.sequence_balance_loss, scores, indices.double())
    t.raises(ValueError, lib.sequence_balance_loss, scores, indices.bool())
    t.raises(ValueError, lib.sequence_balance_loss, scores, torch.zeros(1, 4, 4, dtype=torch.int64))
    t.raises(ValueError, lib.sequence_balance_loss, scores, torch.full((1, 4, 1), 3))
    t.raises(ValueError, lib.sequence_balance_loss, scores, torch.full((1, 4, 1), -1))
    for bad in (-1.0, float("nan"), True, "1"):
        t.raises(ValueError, lib.sequence_balance_loss, scores, indices, bad)


# -- 11.4 update_bias -------------------------------------------------------------------------------


@hidden_test("11.4")
def many_loads(t):
    """integer and float loads, odd lengths, several gammas: b + gamma · sign(mean - load)"""
    lib = t.learner("moe")
    for i, (n, gamma) in enumerate(((1, 1e-3), (5, 0.01), (12, 0.25), (7, 1))):
        bias = seeded_randn(500 + i, n)
        for load in (
            torch.randint(0, 9, (n,), generator=torch.Generator().manual_seed(i)),
            seeded_randn(510 + i, n).abs(),
        ):
            mean = load.double().mean()
            expected = bias + gamma * torch.sign(mean - load.double())
            t.close(lib.update_bias(bias, load, gamma), expected, atol=1e-15, rtol=0, what=f"n {n}, {load.dtype}")


@hidden_test("11.4")
def a_load_at_the_mean_keeps_its_bias(t):
    """loads 2, 4, 6, 4 and 3, 3, 3: the experts at the mean keep their bias exactly"""
    lib = t.learner("moe")
    bias = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    t.close(
        lib.update_bias(bias, torch.tensor([2, 4, 6, 4]), 0.5),
        torch.tensor([0.6, 0.2, -0.2, 0.4], dtype=F64),
        atol=1e-15,
        rtol=0,
    )
    t.close(lib.update_bias(bias[:3], torch.tensor([3, 3, 3]), 0.5), bias[:3], atol=0, rtol=0, what="all at the mean")


@hidden_test("11.4")
def the_default_gamma_is_v3s(t):
    """without gamma: V3's 0.001 (loads 8, 0, 4: mean 4)"""
    lib = t.learner("moe")
    bias = torch.zeros(3, dtype=F64)
    t.close(
        lib.update_bias(bias, torch.tensor([8, 0, 4])), torch.tensor([-1e-3, 1e-3, 0.0], dtype=F64), atol=1e-15, rtol=0
    )


@hidden_test("11.4")
def dtype_kept_and_bias_not_modified(t):
    """a float32 bias gives a float32 result, and the bias given keeps its values"""
    lib = t.learner("moe")
    bias = seeded_randn(520, 6).float()
    kept = lib.torch.nn.Parameter(bias.clone(), requires_grad=False)
    load = torch.tensor([1, 8, 3, 3, 0, 9])
    expected = (bias.double() + 0.01 * torch.sign(4.0 - load.double())).float()
    t.close(lib.update_bias(kept, load, 0.01), expected, atol=1e-6, rtol=0)
    t.close(t.value(kept.data), bias, atol=0, rtol=0, what="bias after the call")


@hidden_test("11.4", inputs=True)
def rejects_bad_bias_load_and_gamma(t):
    """ValueError for a 2-D or integer bias, a bool or wrong-length load, and gamma -1, inf or '0.1'"""
    lib = t.learner("moe")
    bias, load = torch.zeros(3, dtype=F64), torch.tensor([1, 2, 3])
    for bad in (torch.zeros(1, 3, dtype=F64), torch.zeros(3, dtype=torch.int64), [0.0, 0.0, 0.0]):
        t.raises(ValueError, lib.update_bias, bad, load, 0.1)
    for bad in (torch.tensor([True, False, True]), torch.tensor([1, 2, 3, 4]), [1, 2, 3]):
        t.raises(ValueError, lib.update_bias, bias, bad, 0.1)
    for bad in (-1.0, float("inf"), "0.1"):
        t.raises(ValueError, lib.update_bias, bias, load, bad)
