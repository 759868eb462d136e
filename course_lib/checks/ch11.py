"""Visible checks of Chapter 11 — Mixture of Experts.

Expected values are written out, or computed here token by token with plain Python and PyTorch's
own operations: the router of DeepSeek-V3's report (§2.1.2) written as a loop over tokens and groups
with Python's ``sorted`` (descending score, ties to the lower index), each expert's SwiGLU
with ``torch.nn.functional.silu``, and the balance loss and bias rule as their equations.
"""

from course_lib.checks import learner_model, seeded_randn
from course_lib.grading import visible_check

import torch
import torch.nn.functional as F

F32, F64 = torch.float32, torch.float64


def _route(logits, bias, top_k, n_groups=1, n_limited=1, scale=1.0, score_func="sigmoid", norm=True):
    """The router, one token at a time: ``(weights, indices)`` as plain Python loops over the rows."""
    dtype = torch.promote_types(logits.dtype, F32)
    logits = logits.to(dtype)
    scores = logits.sigmoid() if score_func == "sigmoid" else logits.softmax(dim=-1)
    n_experts = logits.shape[1]
    size = n_experts // n_groups
    all_weights, all_indices = [], []
    for row in range(logits.shape[0]):
        s = scores[row].tolist()
        c = [s[i] + (0.0 if bias is None else float(bias[i])) for i in range(n_experts)]
        group_scores = []
        for g in range(n_groups):
            members = sorted(c[g * size : (g + 1) * size], reverse=True)
            group_scores.append(sum(members[:2]) if score_func == "sigmoid" else members[0])
        kept = sorted(range(n_groups), key=lambda g: (-group_scores[g], g))[:n_limited]
        allowed = [i for i in range(n_experts) if i // size in kept]
        chosen = sorted(allowed, key=lambda i: (-c[i], i))[:top_k]
        gates = scores[row, chosen]
        if norm:
            gates = gates / gates.sum()
        all_weights.append(gates * scale)
        all_indices.append(chosen)
    return torch.stack(all_weights), torch.tensor(all_indices, dtype=torch.int64)


def _swiglu(x, state, prefix):
    gate = F.linear(x, state[f"{prefix}.gate_proj.weight"])
    return F.linear(F.silu(gate) * F.linear(x, state[f"{prefix}.up_proj.weight"]), state[f"{prefix}.down_proj.weight"])


def _moe_state(seed, d_model, n_experts, d_expert, n_shared):
    """Random weights of an MoE layer named as :class:`course_lib.moe.MoE` names them, with a routing bias."""
    state = {
        "gate.weight": 0.5 * seeded_randn(seed, n_experts, d_model),
        "gate.e_score_correction_bias": 0.3 * seeded_randn(seed + 1, n_experts),
    }
    widths = {f"experts.{i}": d_expert for i in range(n_experts)}
    if n_shared:
        widths["shared_experts"] = d_expert * n_shared
    for j, (prefix, width) in enumerate(widths.items()):
        state[f"{prefix}.gate_proj.weight"] = 0.3 * seeded_randn(seed + 10 + 3 * j, width, d_model)
        state[f"{prefix}.up_proj.weight"] = 0.3 * seeded_randn(seed + 11 + 3 * j, width, d_model)
        state[f"{prefix}.down_proj.weight"] = 0.3 * seeded_randn(seed + 12 + 3 * j, d_model, width)
    return state


def _moe_expected(x, state, top_k, n_groups, n_limited, scale, n_shared):
    """Every token's experts from :func:`_route`, their SwiGLUs weighted by the gates, plus the shared experts."""
    flat = x.reshape(-1, x.shape[-1])
    logits = F.linear(flat, state["gate.weight"])
    weights, indices = _route(logits, state["gate.e_score_correction_bias"], top_k, n_groups, n_limited, scale)
    rows = []
    for t in range(flat.shape[0]):
        out = sum(weights[t, j] * _swiglu(flat[t], state, f"experts.{int(indices[t, j])}") for j in range(top_k))
        if n_shared:
            out = out + _swiglu(flat[t], state, "shared_experts")
        rows.append(out)
    n_experts = state["gate.weight"].shape[0]
    return torch.stack(rows).view(x.shape), torch.bincount(indices.flatten(), minlength=n_experts)


def moe_config(t, **sizes):
    """The learner's ``DeepSeekConfig.tiny`` with the MoE sizes given (it lives in the learner's worker)."""
    return t.learner("moe").DeepSeekConfig.tiny(**sizes)


def moe_sizes(d_model, n_experts, top_k, d_expert, n_shared, n_groups=1, n_limited=1, scale=1.0):
    return dict(
        d_model=d_model,
        n_routed_experts=n_experts,
        n_activated_experts=top_k,
        moe_d_ff=d_expert,
        n_shared_experts=n_shared,
        n_groups=n_groups,
        n_limited_groups=n_limited,
        route_scale=scale,
        q_lora_rank=None,
        kv_lora_rank=4,
    )


def _balance(scores, indices, alpha):
    """V3's equations 17-20 written out per sequence, expert and token."""
    batch, seq, n_experts = scores.shape
    top_k = indices.shape[2]
    total = 0.0
    for b in range(batch):
        normalised = scores[b] / scores[b].sum(dim=-1, keepdim=True)
        loss = 0.0
        for i in range(n_experts):
            f = n_experts / (top_k * seq) * sum(int(i in indices[b, t].tolist()) for t in range(seq))
            loss = loss + f * normalised[:, i].mean()
        total = total + alpha * loss
    return total / batch


# -- 11.1 route -------------------------------------------------------------------------------------


@visible_check("11.1")
def one_token_worked_by_hand(t):
    """4 experts in 2 groups, 1 kept, top-2: group (2, 3) wins on biased scores; gates from the unbiased ones"""
    lib = t.learner("moe")
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.5]], dtype=F64)
    bias = torch.tensor([0.0, 0.0, 0.6, 0.6], dtype=F64)  # lifts experts 2 and 3 above 0 and 1 for selection
    weights, indices = lib.route(logits, bias, 2, n_groups=2, n_limited_groups=1, route_scale=2.5)
    t.equal(indices, torch.tensor([[3, 2]]), what="indices")
    s = torch.sigmoid(torch.tensor([0.5, 0.0], dtype=F64))
    t.close(weights, 2.5 * s[None] / s.sum(), atol=1e-12, rtol=1e-12, what="weights")


@visible_check("11.1")
def equals_the_router_written_out(t):
    """12 experts in 4 groups, 2 kept, top-3, a bias, scale 2.5, 9 tokens: token-by-token router (order too)"""
    lib = t.learner("moe")
    logits, bias = seeded_randn(1, 9, 12), 0.3 * seeded_randn(2, 12)
    weights, indices = lib.route(logits, bias, 3, 4, 2, 2.5)
    want_w, want_i = _route(logits, bias, 3, 4, 2, 2.5)
    t.equal(indices, want_i, what="indices")
    t.close(weights, want_w, atol=1e-12, rtol=1e-12, what="weights")


@visible_check("11.1")
def discarded_groups_get_minus_infinity_not_zero(t):
    """negative biased scores: the top-1 expert comes from the kept group, never a discarded one"""
    lib = t.learner("moe")
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=F64)  # every affinity 0.5
    bias = torch.tensor([-0.6, -0.7, -0.9, -0.9], dtype=F64)  # biased scores all negative; group 0 wins
    _, indices = lib.route(logits, bias, 1, n_groups=2, n_limited_groups=1)
    t.equal(indices, torch.tensor([[0]]), what="indices")


@visible_check("11.1")
def v2_softmax_router(t):
    """softmax scores, group max, no renormalisation, scale 16: written-out router"""
    lib = t.learner("moe")
    logits = seeded_randn(3, 5, 8)
    weights, indices = lib.route(logits, None, 2, 4, 2, 16.0, score_func="softmax", norm_topk_prob=False)
    want_w, want_i = _route(logits, None, 2, 4, 2, 16.0, "softmax", False)
    t.equal(indices, want_i, what="indices")
    t.close(weights, want_w, atol=1e-12, rtol=1e-12, what="weights")


@visible_check("11.1", inputs=True)
def rejects_impossible_routing(t):
    """ValueError for top_k above the experts, groups not dividing them, and kept groups too small for top_k"""
    lib = t.learner("moe")
    logits = torch.zeros(2, 8, dtype=F64)
    t.raises(ValueError, lib.route, logits, None, 9)
    t.raises(ValueError, lib.route, logits, None, 2, 3, 1)
    t.raises(ValueError, lib.route, logits, None, 3, 4, 1)  # one kept group of 2 experts for top-3


# -- 11.2 MoE.forward -------------------------------------------------------------------------------


@visible_check("11.2")
def equals_the_experts_added_up_token_by_token(t):
    """width 10, 8 experts of width 6 in 4 groups (2 kept), top-3, 1 shared, scale 2.5: per-token sums and loads"""
    sizes = moe_sizes(10, 8, 3, 6, 1, n_groups=4, n_limited=2, scale=2.5)
    state = _moe_state(10, 10, 8, 6, 1)
    moe = learner_model(t, "moe", "MoE", state, moe_config(t, **sizes))
    x = seeded_randn(11, 2, 5, 10)
    expected, load = _moe_expected(x, state, 3, 4, 2, 2.5, 1)
    t.close(moe(x), expected, atol=1e-10, rtol=1e-10, what="output")
    t.equal(t.value(moe.last_load), load, what="last_load")


@visible_check("11.2", inputs=True)
def rejects_the_wrong_width(t):
    """x of width 9 for a layer of width 10, and an integer x, raise ValueError"""
    moe = learner_model(t, "moe", "MoE", _moe_state(12, 10, 4, 6, 0), moe_config(t, **moe_sizes(10, 4, 2, 6, 0)))
    t.raises(ValueError, moe, torch.zeros(2, 3, 9, dtype=F64))
    t.raises(ValueError, moe, torch.zeros(2, 3, 10, dtype=torch.int64))


# -- 11.3 sequence_balance_loss ---------------------------------------------------------------------


@visible_check("11.3")
def balanced_routing_costs_alpha(t):
    """every expert chosen equally often in each sequence: the loss is alpha, whatever the affinities"""
    lib = t.learner("moe")
    scores = seeded_randn(20, 2, 6, 3).sigmoid()
    indices = torch.tensor([[[0], [1], [2], [0], [1], [2]], [[2], [2], [1], [1], [0], [0]]])
    t.close(lib.sequence_balance_loss(scores, indices, 0.5), torch.tensor(0.5, dtype=F64), atol=1e-12, rtol=1e-12)


@visible_check("11.3")
def equals_equations_17_to_20(t):
    """3 sequences of 7 tokens, 6 experts, top-2: the equations written out per sequence, averaged"""
    lib = t.learner("moe")
    scores = seeded_randn(21, 3, 7, 6).sigmoid()
    indices = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(i))[:2] for i in range(21)])
    indices = indices.view(3, 7, 2)
    expected = _balance(scores, indices, 1e-4)
    t.close(lib.sequence_balance_loss(scores, indices, 1e-4), expected, atol=1e-15, rtol=1e-10)


@visible_check("11.3", inputs=True)
def rejects_bad_shapes(t):
    """2-D scores, indices of another batch, and alpha 0 raise ValueError"""
    lib = t.learner("moe")
    scores, indices = torch.full((1, 4, 3), 0.5, dtype=F64), torch.zeros(1, 4, 1, dtype=torch.int64)
    t.raises(ValueError, lib.sequence_balance_loss, scores[0], indices)
    t.raises(ValueError, lib.sequence_balance_loss, scores, torch.zeros(2, 4, 1, dtype=torch.int64))
    t.raises(ValueError, lib.sequence_balance_loss, scores, indices, 0.0)


# -- 11.4 update_bias -------------------------------------------------------------------------------


@visible_check("11.4")
def overloaded_down_underloaded_up_mean_unchanged(t):
    """loads 5, 3, 1 (mean 3): -gamma, 0, +gamma"""
    lib = t.learner("moe")
    bias = torch.tensor([0.25, -0.5, 1.0], dtype=F64)
    new = lib.update_bias(bias, torch.tensor([5, 3, 1]), 0.125)
    t.close(new, torch.tensor([0.125, -0.5, 1.125], dtype=F64), atol=0, rtol=0)


@visible_check("11.4", inputs=True)
def rejects_bad_gamma_and_shapes(t):
    """gamma 0 and True, and a load of another length, raise ValueError"""
    lib = t.learner("moe")
    bias = torch.zeros(3, dtype=F64)
    t.raises(ValueError, lib.update_bias, bias, torch.tensor([1, 2, 3]), 0.0)
    t.raises(ValueError, lib.update_bias, bias, torch.tensor([1, 2, 3]), True)
    t.raises(ValueError, lib.update_bias, bias, torch.tensor([1, 2]), 0.1)
