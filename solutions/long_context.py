"""Reference solutions for Chapter 15 (course_lib/long_context.py)."""

from __future__ import annotations

import torch


def online_softmax_update(out, row_max, row_sum, scores, values):
    tensors = {"out": out, "row_max": row_max, "row_sum": row_sum, "scores": scores, "values": values}
    for name, x in tensors.items():
        if (
            not isinstance(x, torch.Tensor)
            or not x.is_floating_point()
            or x.ndim < (1 if name.startswith("row") else 2)
        ):
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {got}")
    lead, n_q, n_k, d_v = scores.shape[:-2], scores.shape[-2], scores.shape[-1], values.shape[-1]
    expected = {
        "out": (*lead, n_q, d_v),
        "row_max": (*lead, n_q),
        "row_sum": (*lead, n_q),
        "values": (*lead, n_k, d_v),
    }
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(
                f"{name} must have shape {tuple(shape)} to fit scores {tuple(scores.shape)}, "
                f"got {tuple(tensors[name].shape)}"
            )
    new_max = torch.maximum(row_max, scores.amax(dim=-1))  # (..., n_q)
    # Rows with no visible key yet keep a max of -inf; subtract 0 there instead, so exp(-inf - 0) = 0, not NaN.
    safe = torch.where(torch.isinf(new_max) & (new_max < 0), torch.zeros_like(new_max), new_max)
    rescale = torch.exp(row_max - safe)  # (..., n_q): exp(m - m'), 0 where m = -inf
    p = torch.exp(scores - safe[..., None])  # (..., n_q, n_k): 0 where masked
    new_sum = rescale * row_sum + p.sum(dim=-1)
    new_out = rescale[..., None] * out + p @ values  # (..., n_q, d_v)
    return new_out, new_max, new_sum
