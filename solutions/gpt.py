"""Reference solutions for Chapter 5 (course_lib/gpt.py)."""

from __future__ import annotations

import torch


class GPT:
    def forward(self, ids):
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(
                f"ids must be an integer tensor of shape (batch, seq), got {getattr(ids, 'shape', type(ids).__name__)}"
            )
        if ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"the sequence has {ids.shape[1]} tokens, more than the context length {self.config.context_length}"
            )
        x = self.embed(ids)  # (batch, seq, d_model)
        for block in self.blocks:
            x = block(x)  # (batch, seq, d_model)
        x = self.ln_f(x)
        return x @ self.embed.token.weight.T  # (batch, seq, vocab): the tied projection


def count_parameters(config):
    from course_lib.gpt import GPTConfig

    if not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
    d, b = config.d_model, int(config.bias)
    embeddings = config.vocab_size * d + config.context_length * d  # the output projection reuses the token table
    attention = 4 * d * d + b * 4 * d
    feed_forward = 8 * d * d + b * (4 * d + d)
    norms = 2 * d + b * 2 * d
    return embeddings + config.n_layers * (attention + feed_forward + norms) + d + b * d
