"""Reference solutions for Chapter 11 (course_lib/moe.py)."""

from __future__ import annotations

import math

import torch


def route(
    logits,
    bias,
    top_k,
    n_groups=1,
    n_limited_groups=1,
    route_scale=1.0,
    score_func="sigmoid",
    norm_topk_prob=True,
):
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim != 2:
        got = f"{logits.dtype} of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else logits
        raise ValueError(f"logits must be a floating-point tensor of shape (tokens, experts), got {got!r}")
    n_experts = logits.shape[1]
    if bias is not None and (
        not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or bias.shape != (n_experts,)
    ):
        raise ValueError(f"bias must be None or a floating-point tensor of shape ({n_experts},)")
    for name, value in (("top_k", top_k), ("n_groups", n_groups), ("n_limited_groups", n_limited_groups)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if top_k > n_experts:
        raise ValueError(f"top_k ({top_k}) cannot exceed the number of experts ({n_experts})")
    if n_experts % n_groups:
        raise ValueError(f"n_groups ({n_groups}) must divide the number of experts ({n_experts})")
    if n_limited_groups > n_groups:
        raise ValueError(f"n_limited_groups ({n_limited_groups}) cannot exceed n_groups ({n_groups})")
    per_group = n_experts // n_groups
    if n_limited_groups * per_group < top_k:
        raise ValueError(f"{n_limited_groups} groups of {per_group} experts cannot supply top_k = {top_k} experts")
    if type(route_scale) not in (int, float) or not math.isfinite(route_scale) or route_scale <= 0:
        raise ValueError(f"route_scale must be a positive finite number, got {route_scale!r}")
    if score_func not in ("sigmoid", "softmax"):
        raise ValueError(f"score_func must be 'sigmoid' or 'softmax', got {score_func!r}")
    if type(norm_topk_prob) is not bool:
        raise ValueError(f"norm_topk_prob must be True or False, got {norm_topk_prob!r}")

    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    scores = logits.sigmoid() if score_func == "sigmoid" else logits.softmax(dim=-1)  # (tokens, N): the gates' source
    choice = scores if bias is None else scores + bias.to(dtype)  # the bias moves the selection only
    tokens = logits.shape[0]
    grouped = choice.view(tokens, n_groups, per_group)  # (tokens, groups, experts per group)
    if score_func == "sigmoid":
        group_scores = grouped.topk(min(2, per_group), dim=-1).values.sum(dim=-1)  # (tokens, groups)
    else:
        group_scores = grouped.amax(dim=-1)
    # A stable descending sort keeps equal scores in index order: ties go to the lower index.
    kept = torch.sort(group_scores, dim=-1, descending=True, stable=True).indices[:, :n_limited_groups]
    dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, kept, False)  # (tokens, groups)
    # -inf, never 0: a biased score can be negative, and a 0 would outrank it.
    choice = grouped.masked_fill(dropped[..., None], float("-inf")).view(tokens, n_experts)
    indices = torch.sort(choice, dim=-1, descending=True, stable=True).indices[:, :top_k]  # (tokens, top_k)
    weights = scores.gather(1, indices)  # the unbiased affinities
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * route_scale, indices


class MoE:
    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[-1] != self.d_model:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor of shape (..., {self.d_model}), got {got}")
        flat = x.reshape(-1, self.d_model)  # (tokens, d_model)
        weights, indices = self.gate(flat)  # (tokens, top_k) each
        experts = indices.flatten()  # (tokens * top_k,): copy c belongs to token c // top_k
        order = torch.argsort(experts, stable=True)  # the copies grouped by expert
        counts = torch.bincount(experts, minlength=self.n_experts)  # (n_experts,)
        token_of = order // self.top_k  # (copies,): the token of each sorted copy
        gates = weights.flatten()[order]  # (copies,)
        outputs = []
        for expert, rows, gate in zip(
            self.experts, token_of.split(counts.tolist()), gates.split(counts.tolist()), strict=True
        ):
            if len(rows):  # one matrix product per expert, on all of its tokens at once
                outputs.append((expert(flat[rows]) * gate[:, None]).to(x.dtype))
        routed = torch.zeros_like(flat)
        if outputs:
            routed = routed.index_add(0, token_of, torch.cat(outputs))  # (tokens, d_model)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(flat)
        self.last_load = counts.detach()
        self.last_indices = indices.detach().view(*x.shape[:-1], self.top_k)
        return routed.view(x.shape)


def sequence_balance_loss(scores, indices, alpha=1e-4):
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point() or scores.ndim != 3:
        raise ValueError(
            f"scores must be a floating-point tensor (batch, T, N), got {getattr(scores, 'shape', scores)}"
        )
    batch, seq, n_experts = scores.shape
    if (
        not isinstance(indices, torch.Tensor)
        or indices.is_floating_point()
        or indices.is_complex()
        or indices.dtype == torch.bool
        or indices.ndim != 3
        or indices.shape[:2] != (batch, seq)
        or not 1 <= indices.shape[2] <= n_experts
    ):
        raise ValueError(f"indices must be an integer tensor of shape ({batch}, {seq}, K) with 1 <= K <= {n_experts}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts})")
    if type(alpha) not in (int, float) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    top_k = indices.shape[2]
    chosen = torch.zeros(batch, n_experts, dtype=scores.dtype, device=scores.device)
    chosen.scatter_add_(
        1, indices.reshape(batch, -1).long(), torch.ones_like(indices.reshape(batch, -1), dtype=scores.dtype)
    )
    f = chosen * n_experts / (top_k * seq)  # (batch, N): a count, no gradient
    p = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)  # (batch, N): normalised affinities, averaged
    return alpha * (f * p).sum(dim=-1).mean()


def update_bias(bias, load, gamma=1e-3):
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or bias.ndim != 1:
        raise ValueError(f"bias must be a 1-D floating-point tensor, got {getattr(bias, 'shape', bias)!r}")
    if not isinstance(load, torch.Tensor) or load.dtype == torch.bool or load.is_complex() or load.shape != bias.shape:
        raise ValueError(f"load must be a real tensor of shape {tuple(bias.shape)}")
    if type(gamma) not in (int, float) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
    load = load.double()
    step = torch.sign(load.mean() - load)  # +1 underloaded, -1 overloaded, 0 at the mean
    return bias + gamma * step.to(bias.dtype)
