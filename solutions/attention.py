"""Reference solutions for Chapter 3 (course_lib/attention.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0, training=False):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim < 2:
            raise ValueError(
                f"{name} must be a tensor of shape (..., seq, d) with at least 2 dimensions, "
                f"got {getattr(t, 'shape', type(t).__name__)}"
            )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must hold the same number of positions seq_k, got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading dimensions of q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not broadcast"
        ) from None
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p <= 1.0):
        raise ValueError(f"dropout_p must be a probability between 0 and 1, got {dropout_p!r}")

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., seq_q, seq_k)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(
                "mask must be a torch.bool tensor (True: may attend), "
                f"got {getattr(mask, 'dtype', type(mask).__name__)}"
            )
        try:
            fits = torch.broadcast_shapes(mask.shape, scores.shape) == scores.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                f"{tuple(scores.shape)} (..., seq_q, seq_k)"
            )
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        # A query that may see no key gets a zero row rather than the NaNs of softmax(-inf, ..., -inf).
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if training and dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ v, weights  # (..., seq_q, d_v), (..., seq_q, seq_k)


def causal_mask(seq_len, device=None):
    if type(seq_len) is not int or seq_len < 1:
        raise ValueError(f"seq_len must be an int of at least 1, got {seq_len!r}")
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


class MultiHeadAttention:
    def forward(self, x, mask=None):
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a tensor of shape (batch, seq, d_model={self.d_model}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
            raise ValueError(
                "mask must be None or a torch.bool tensor (True: may attend), "
                f"got {getattr(mask, 'dtype', type(mask).__name__)}"
            )
        batch, seq, _ = x.shape
        heads = (batch, seq, self.n_heads, self.d_head)
        q = self.q_proj(x).view(heads).transpose(1, 2)  # (batch, heads, seq, d_head)
        k = self.k_proj(x).view(heads).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        if self.causal:
            causal = causal_mask(seq, device=x.device)  # (seq, seq)
            mask = causal if mask is None else mask & causal
        out, weights = scaled_dot_product_attention(
            q, k, v, mask=mask, dropout_p=self.dropout_p, training=self.training
        )
        self.last_weights = weights.detach()  # (batch, heads, seq, seq)
        out = out.transpose(1, 2).reshape(batch, seq, self.d_model)  # (batch, seq, d_model)
        return self.out_proj(out)
