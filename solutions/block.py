"""Reference solutions for Chapter 4 (course_lib/block.py)."""

from __future__ import annotations

import torch


class TransformerBlock:
    def forward(self, x, mask=None):
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a tensor of shape (batch, seq, d_model={self.d_model}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        x = x + self.dropout(self.attn(self.ln_1(x), mask))  # (batch, seq, d_model)
        return x + self.ffn(self.ln_2(x))  # (batch, seq, d_model)
