"""Reference solutions for Chapter 8 (course_lib/memory.py)."""

from __future__ import annotations

from course_lib.gpt import GPTConfig
from course_lib.llama import LlamaConfig

import torch


def kv_cache_bytes(config, seq_len, batch, dtype):
    if isinstance(config, LlamaConfig):
        kv_heads, head_dim = config.n_kv_heads, config.head_dim
    elif isinstance(config, GPTConfig):
        kv_heads, head_dim = config.n_heads, config.d_model // config.n_heads  # every head has its keys
    else:
        raise ValueError(f"config must be a GPTConfig or a LlamaConfig, got {type(config).__name__}")
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(dtype, torch.dtype) or dtype == torch.bool or dtype.is_complex:
        raise ValueError(f"dtype must be a real torch.dtype (float32, bfloat16, int8, ...), got {dtype!r}")
    per_token = 2 * config.n_layers * kv_heads * head_dim * dtype.itemsize  # keys and values, every layer
    return per_token * seq_len * batch
