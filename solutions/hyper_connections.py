"""Reference solutions for Chapter 15, §6 (course_lib/hyper_connections.py)."""

from __future__ import annotations

import math

import torch


def sinkhorn_knopp(logits, n_iters, eps=1e-6):
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {type(logits).__name__}")
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2] or logits.shape[-1] < 1:
        raise ValueError(f"logits must end in a square (n, n) with n >= 1, got shape {tuple(logits.shape)}")
    if type(n_iters) is not int or n_iters < 1:
        raise ValueError(f"n_iters must be a positive int, got {n_iters!r}")
    if type(eps) not in (int, float) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    m = torch.softmax(logits.float(), dim=-1) + eps  # the first row normalisation
    m = m / (m.sum(dim=-2, keepdim=True) + eps)  # then the columns
    for _ in range(n_iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m
