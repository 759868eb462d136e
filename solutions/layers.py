"""Reference solutions for Chapters 4 and 6 (course_lib/layers.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


# -- Chapter 6 ------------------------------------------------------------------------------------


def silu(x):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    # sigmoid saturates to exactly 0 or 1 far from zero: nothing overflows (exp(x) / (1 + exp(x)) gives inf / inf)
    return x * torch.sigmoid(x)


class RMSNorm:
    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a floating-point tensor of shape (..., d_model={self.d_model}), "
                f"got {getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}"
            )
        # float16 and bfloat16 are normalised in float32 (a float16 square overflows past 256); float64 stays float64.
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        ms = h.pow(2).mean(dim=-1, keepdim=True)  # (..., 1): the mean square, no mean subtracted
        normed = h * torch.rsqrt(ms + self.eps)  # (..., d_model)
        return self.weight * normed.to(x.dtype)  # back to x's dtype before the scale, as LlamaRMSNorm does


class SwiGLU:
    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a tensor of shape (..., d_model={self.d_model}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        gate = F.silu(self.gate_proj(x))  # (..., d_ff): how much of each hidden unit passes
        return self.down_proj(gate * self.up_proj(x))  # (..., d_model)


def llama_ffn_dim(d_model, multiple_of=256, ffn_dim_multiplier=None):
    for name, value in (("d_model", d_model), ("multiple_of", multiple_of)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if ffn_dim_multiplier is not None and (
        isinstance(ffn_dim_multiplier, bool)
        or not isinstance(ffn_dim_multiplier, (int, float))
        or not (0 < ffn_dim_multiplier < math.inf)
    ):
        raise ValueError(f"ffn_dim_multiplier must be None or a positive number, got {ffn_dim_multiplier!r}")
    hidden = int(2 * (4 * d_model) / 3)  # two thirds of GPT's 4 d: the same weights in three matrices
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    if hidden < 1:
        raise ValueError(f"ffn_dim_multiplier={ffn_dim_multiplier!r} leaves no hidden units for d_model={d_model}")
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)  # round up to a multiple
