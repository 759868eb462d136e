"""Reference solutions for Chapter 4 (course_lib/layers.py)."""

from __future__ import annotations

import math

import torch


class LayerNorm:
    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a tensor of shape (..., d_model={self.d_model}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = x.var(dim=-1, unbiased=False, keepdim=True)  # (..., 1): biased, as in the paper and PyTorch
        y = (x - mean) / torch.sqrt(var + self.eps)
        y = y * self.weight
        return y + self.bias if self.bias is not None else y


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if approximate == "none":
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class FeedForward:
    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a tensor of shape (..., d_model={self.d_model}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        h = gelu(self.fc_in(x), approximate=self.approximate)  # (..., d_ff)
        return self.dropout(self.fc_out(h))  # (..., d_model)
