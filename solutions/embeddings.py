"""Reference solutions for Chapter 2 (course_lib/embeddings.py)."""

from __future__ import annotations

import math

import torch


class TokenEmbedding:
    def forward(self, ids):
        if not isinstance(ids, torch.Tensor) or ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            kind = f"a {ids.dtype} tensor" if isinstance(ids, torch.Tensor) else f"a {type(ids).__name__}"
            raise ValueError(f"ids must be a tensor of integer token ids (e.g. torch.int64), got {kind}")
        ids = ids.to(torch.int64)
        if ids.numel():
            bad = ids[(ids < 0) | (ids >= self.vocab_size)]
            if bad.numel():
                raise ValueError(f"token id {bad[0].item()} is outside the vocabulary [0, {self.vocab_size})")
        return self.weight[ids]  # (..., d_model)


def sinusoidal_positions(seq_len, d_model, base=10000.0):
    if type(d_model) is not int or d_model <= 0 or d_model % 2:
        raise ValueError(f"d_model must be a positive even int (sines and cosines come in pairs), got {d_model!r}")
    if type(seq_len) is not int or seq_len < 0:
        raise ValueError(f"seq_len must be an int of at least 0, got {seq_len!r}")
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]  # (seq_len, 1)
    omega = torch.exp(-math.log(base) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d_model / 2,)
    angles = pos * omega  # (seq_len, d_model / 2)
    table = torch.empty(seq_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.to(torch.float32)


class InputEmbedding:
    def forward(self, ids):
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must be a 2-D tensor (batch, seq), got {shape}")
        seq = ids.shape[1]
        if seq > self.context_length:
            raise ValueError(f"a sequence of {seq} tokens is longer than the context length {self.context_length}")
        tokens = self.token(ids)  # (batch, seq, d_model)
        positions = self.position(torch.arange(seq, device=ids.device))  # (seq, d_model)
        return self.dropout(tokens + positions)  # (batch, seq, d_model)
