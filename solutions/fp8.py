"""Reference solutions for Chapter 13 (course_lib/fp8.py)."""

from __future__ import annotations

from course_lib.fp8 import AMAX_FLOOR, FP8, FP8_MAX

import math

import torch


def weight_quant(w, block_size=128):
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or not w.is_floating_point() or w.element_size() == 1:
        got = f"a {w.dtype} tensor of shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"w must be a 2-D float32, float64, float16 or bfloat16 tensor, got {got}")
    if type(block_size) is not int or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    rows, cols = w.shape
    n_rows, n_cols = math.ceil(rows / block_size), math.ceil(cols / block_size)
    # Pad with zeros to whole blocks (zeros change no block's amax), view as blocks, cut the padding off again.
    padded = torch.zeros(n_rows * block_size, n_cols * block_size, dtype=torch.float32)
    padded[:rows, :cols] = w.float()
    blocks = padded.view(n_rows, block_size, n_cols, block_size)  # (row block, row, col block, col)
    amax = blocks.abs().amax(dim=(1, 3))  # (n_rows, n_cols)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    quantized = (blocks / scale[:, None, :, None]).to(FP8)
    return quantized.view(n_rows * block_size, n_cols * block_size)[:rows, :cols].contiguous(), scale


def act_quant(x, block_size=128, scale_fmt=None):
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point() or x.element_size() == 1:
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float32, float64, float16 or bfloat16 tensor with a last dimension, got {got}")
    if type(block_size) is not int or block_size < 1 or x.shape[-1] % block_size:
        raise ValueError(f"block_size must be a positive int dividing x.shape[-1] = {x.shape[-1]}, got {block_size!r}")
    if scale_fmt not in (None, "ue8m0"):
        raise ValueError(f"scale_fmt must be None or 'ue8m0', got {scale_fmt!r}")
    tiles = x.float().reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)  # (..., n_tiles, bs)
    amax = tiles.abs().amax(dim=-1).clamp(min=AMAX_FLOOR)  # (..., n_tiles)
    scale = amax / FP8_MAX
    if scale_fmt == "ue8m0":
        scale = torch.exp2(torch.ceil(torch.log2(scale)))  # up to a power of two: |x / scale| stays <= 448
    quantized = (tiles / scale[..., None]).to(FP8)
    return quantized.reshape(x.shape), scale


def fp8_gemm(a, a_scale, b, b_scale, block_size=128):
    if type(block_size) is not int or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    for name, t, ndims in (("a", a, (1, None)), ("b", b, (2, 2))):
        if not isinstance(t, torch.Tensor) or t.dtype != FP8 or t.ndim < ndims[0] or (ndims[1] and t.ndim != 2):
            got = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a torch.float8_e4m3fn tensor ({'2-D' if ndims[1] else '(..., K)'}), got {got}"
            )
    n, k = b.shape
    if a.shape[-1] != k:
        raise ValueError(f"a's K ({a.shape[-1]}) must equal b's ({k})")
    n_k = math.ceil(k / block_size)
    for name, t, shape in (
        ("a_scale", a_scale, (*a.shape[:-1], n_k)),
        ("b_scale", b_scale, (math.ceil(n / block_size), n_k)),
    ):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != shape:
            got = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a float32 tensor of shape {shape}, got {got}")
    b_rows = b_scale.repeat_interleave(block_size, dim=0)[:n]  # (N, n_k): each row of b, its block's scales
    acc = torch.zeros(*a.shape[:-1], n, dtype=torch.float32)
    for i in range(n_k):
        cols = slice(i * block_size, (i + 1) * block_size)
        partial = a[..., cols].float() @ b[:, cols].float().T  # (..., N): float8 numbers, float32 sums
        acc += partial * a_scale[..., i, None] * b_rows[:, i]
    return acc
