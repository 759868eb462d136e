"""Reference solutions for Chapter 15 (course_lib/ring.py)."""

from __future__ import annotations

import math

import torch


def ring_step(q, k, v, out, lse, rank, source):
    for name, value in (("rank", rank), ("source", source)):
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be an int of at least 0, got {value!r}")
    tensors = {"q": q, "k": k, "v": v, "out": out, "lse": lse}
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < (1 if name == "lse" else 2):
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {got}")
    lead, n, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    expected = {"k": (*lead, n, d), "v": (*lead, n, v.shape[-1]), "out": (*lead, n, v.shape[-1]), "lse": (*lead, n)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(
                f"{name} must have shape {tuple(shape)} to fit q {tuple(q.shape)}, got {tuple(tensors[name].shape)}"
            )
    if source > rank:
        return out.clone(), lse.clone()  # a later block: all in the future
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (..., n, n)
    if source == rank:
        i = torch.arange(n, device=q.device)
        scores = scores.masked_fill(i[None, :] > i[:, None], float("-inf"))
    lse_b = torch.logsumexp(scores, dim=-1)  # (..., n): every row sees at least its own key here
    out_b = torch.softmax(scores, dim=-1) @ v  # (..., n, d_v)
    new_lse = torch.logaddexp(lse, lse_b)  # finite: every row sees at least one key of this block
    return torch.exp(lse - new_lse)[..., None] * out + torch.exp(lse_b - new_lse)[..., None] * out_b, new_lse
