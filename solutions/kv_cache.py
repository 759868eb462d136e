"""Reference solutions for Chapter 8 (course_lib/kv_cache.py)."""

from __future__ import annotations

import math

import torch


class KVCache:
    def update(self, layer, k, v, offset):
        if type(layer) is not int or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.n_layers}), got {layer!r}")
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        for name, x in (("k", k), ("v", v)):
            fits = (
                isinstance(x, torch.Tensor)
                and x.is_floating_point()
                and x.ndim == 4
                and x.shape[0] == self.batch
                and x.shape[1] == self.n_kv_heads
                and x.shape[2] >= 1
                and x.shape[3] == self.head_dim
            )
            if not fits:
                got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"{name} must be a floating-point tensor of shape (batch, n_kv_heads, seq, head_dim) = "
                    f"({self.batch}, {self.n_kv_heads}, seq, {self.head_dim}), got {got}"
                )
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        seq = k.shape[2]
        end = offset + seq
        if end > self.max_seq_len:
            raise ValueError(
                f"the cache would overflow: offset {offset} + {seq} new positions > max_seq_len {self.max_seq_len}"
            )
        self.keys[layer, :, :, offset:end] = k  # copied in, converted to the cache's dtype
        self.values[layer, :, :, offset:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]  # (batch, kv_heads, end, head_dim)


def cached_attention(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a 4-D floating-point tensor (batch, heads, seq, head_dim), got {got}")
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"k and v must have the shape (batch, heads, t, head_dim) of q's batch, heads and head_dim: "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    s, t = q.shape[2], k.shape[2]
    if s > t:
        raise ValueError(f"more queries ({s}) than keys ({t}): the queries must be the last of the key positions")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (batch, heads, s, t)
    # Query i stands at position t - s + i: it sees keys j <= i + t - s (a causal mask shifted right).
    i = torch.arange(s, device=q.device)[:, None]
    j = torch.arange(t, device=q.device)[None, :]
    scores = scores.masked_fill(j > i + (t - s), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (batch, heads, s, head_dim)
