"""Reference solutions for Chapter 7 (course_lib/rope.py)."""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_dim, base=10000.0):
    if type(head_dim) is not int or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int (features are rotated in pairs), got {head_dim!r}")
    if type(base) not in (int, float) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"base must be a finite number greater than 1, got {base!r}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim  # 2i / head_dim: (head_dim / 2,)
    return 1.0 / (base**exponents)  # as Hugging Face's inv_freq, to the last bit


def apply_rope(x, cos, sin, interleaved=False):
    if type(interleaved) is not bool:
        raise ValueError(f"interleaved must be a bool, got {interleaved!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[-1] % 2:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor (..., seq, head_dim) with head_dim even, got {got}")
    expected = (x.shape[-2], x.shape[-1] // 2)
    for name, table in (("cos", cos), ("sin", sin)):
        if not isinstance(table, torch.Tensor) or not table.is_floating_point() or tuple(table.shape) != expected:
            got = (
                f"{table.dtype} of shape {tuple(table.shape)}"
                if isinstance(table, torch.Tensor)
                else type(table).__name__
            )
            raise ValueError(
                f"{name} must be a floating-point tensor of shape (seq, head_dim // 2) = {expected}, got {got}"
            )
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (seq, head_dim / 2), broadcast over the leading dimensions
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]  # pair i = features (2i, 2i + 1): (..., seq, head_dim / 2) each
    else:
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]  # pair i = features (i, i + head_dim / 2)
    rotated_a = a * cos - b * sin
    rotated_b = a * sin + b * cos
    if interleaved:
        return torch.stack((rotated_a, rotated_b), dim=-1).flatten(-2)  # (..., seq, head_dim / 2, 2) -> head_dim
    return torch.cat((rotated_a, rotated_b), dim=-1)  # (..., seq, head_dim)


class RotaryEmbedding:
    def forward(self, x, offset=0):
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be an int of at least 0, got {offset!r}")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor of shape (..., seq, head_dim), got {got}")
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x must end with head_dim = {self.head_dim} features, got {x.shape[-1]}")
        seq = x.shape[-2]
        if offset + seq > self.max_seq_len:
            raise ValueError(
                f"positions {offset} to {offset + seq - 1} (offset {offset} + seq {seq}) run past "
                f"max_seq_len = {self.max_seq_len}"
            )
        cos = self.cos[offset : offset + seq]  # (seq, head_dim / 2)
        sin = self.sin[offset : offset + seq]
        return apply_rope(x, cos, sin, interleaved=self.interleaved)
