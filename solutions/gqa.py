"""Reference solutions for Chapter 9 (course_lib/gqa.py)."""

from __future__ import annotations

from course_lib.rope import apply_rope

import torch
import torch.nn.functional as F


def repeat_kv(x, n_rep):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        raise ValueError(f"x must be a tensor of shape (batch, n_kv_heads, seq, head_dim), got {got}")
    if type(n_rep) is not int or n_rep < 1:
        raise ValueError(f"n_rep must be a positive int, got {n_rep!r}")
    if n_rep == 1:
        return x
    batch, n_kv_heads, seq, head_dim = x.shape
    # A view that repeats each head n_rep times in place (no copy yet), then one copy into the new layout.
    expanded = x[:, :, None].expand(batch, n_kv_heads, n_rep, seq, head_dim)  # (batch, KV, n_rep, seq, hd)
    return expanded.reshape(batch, n_kv_heads * n_rep, seq, head_dim)


class GroupedQueryAttention:
    def forward(self, x, cos=None, sin=None, causal=True):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 3 or x.shape[-1] != self.d_model:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor of shape (batch, seq, {self.d_model}), got {got}")
        if (cos is None) != (sin is None):
            raise ValueError("give both cos and sin (to rotate the queries and keys) or neither")
        if type(causal) is not bool:
            raise ValueError(f"causal must be True or False, got {causal!r}")
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, H, seq, hd)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (batch, KV, seq, hd)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (batch, KV, seq, hd)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions enter the scores; v is not rotated
        # enable_gqa: query head h reads key/value head h // n_rep, without copying the keys and values.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)  # (batch, H, seq, hd)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))


def mean_pool_kv_heads(weight, n_heads, n_kv_heads):
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.ndim < 1:
        got = (
            f"{weight.dtype} of shape {tuple(weight.shape)}"
            if isinstance(weight, torch.Tensor)
            else type(weight).__name__
        )
        raise ValueError(f"weight must be a floating-point tensor of shape (n_heads * head_dim, ...), got {got}")
    for name, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    rows = weight.shape[0]
    if rows % n_heads:
        raise ValueError(f"n_heads ({n_heads}) must divide the {rows} rows of weight (n_heads * head_dim)")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
    head_dim, rest = rows // n_heads, weight.shape[1:]
    groups = weight.detach().reshape(n_kv_heads, n_heads // n_kv_heads, head_dim, *rest)  # (G, r, hd, ...)
    return groups.mean(dim=1).reshape(n_kv_heads * head_dim, *rest)  # the mean of each group's heads


def decode_intensity(batch, seq_len, d_model, n_heads, n_kv_heads):
    for name, value in (
        ("batch", batch),
        ("seq_len", seq_len),
        ("d_model", d_model),
        ("n_heads", n_heads),
        ("n_kv_heads", n_kv_heads),
    ):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if d_model % n_heads:
        raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model})")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
    b, n, d, h, g = batch, seq_len, d_model, n_heads, n_kv_heads
    k = d // h
    weights = 2 * d * h * k + 2 * d * g * k  # P_q, P_o, P_k, P_v
    memory = n * weights + b * g * k * n * (n + 1) + 2 * b * n * d  # weights per step, the cache, x and y
    arithmetic = 2 * b * n * weights + 2 * b * h * k * n * (n + 1)  # projections, scores and weighted sums
    return {"memory": memory, "arithmetic": arithmetic, "ratio": memory / arithmetic}
