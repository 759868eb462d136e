"""Reference solutions for Chapter 15, §5 (course_lib/sparse_attention.py)."""

from __future__ import annotations

import torch


def lightning_indexer(q, k, w, top_k, causal=True):
    if not all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in (q, k, w)):
        raise ValueError("q, k and w must be floating-point tensors")
    if q.ndim != 4 or k.ndim != 3 or w.ndim != 3 or not q.dtype == k.dtype == w.dtype:
        raise ValueError(
            "q must be (batch, seq_q, heads, d), k (batch, seq_k, d) and w (batch, seq_q, heads), one dtype; got "
            f"{q.dtype} {tuple(q.shape)}, {k.dtype} {tuple(k.shape)} and {w.dtype} {tuple(w.shape)}"
        )
    batch, seq_q, heads, d = q.shape
    seq_k = k.shape[1]
    if k.shape[0] != batch or k.shape[2] != d or tuple(w.shape) != (batch, seq_q, heads) or seq_k < 1:
        raise ValueError(
            f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)} (batch, seq_k, {d}), "
            f"w {tuple(w.shape)} (expected {(batch, seq_q, heads)})"
        )
    if type(top_k) is not int or top_k <= 0:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if type(causal) is not bool:
        raise ValueError(f"causal must be a bool, got {causal!r}")
    if causal and seq_q > seq_k:
        raise ValueError(f"with causal=True the {seq_q} queries must be the last of the {seq_k} keys")
    per_head = torch.einsum("bthd,bsd->bths", q.float(), k.float()).relu()  # (batch, seq_q, heads, seq_k)
    scores = torch.einsum("bth,bths->bts", w.float(), per_head)  # ReLU first, then the weights
    visible = torch.ones(seq_q, seq_k, dtype=torch.bool)
    if causal:
        positions = torch.arange(seq_k - seq_q, seq_k)  # where each query stands
        visible = torch.arange(seq_k)[None, :] <= positions[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    slots = min(top_k, seq_k)
    # A stable sort keeps equal scores in position order: ties go to the earlier key.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :slots]
    kept = visible.expand(batch, -1, -1).gather(-1, order)
    return scores, order.masked_fill(~kept, -1)
