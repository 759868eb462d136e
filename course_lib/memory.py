"""Chapter 8 — the memory and arithmetic of inference: what a KV cache holds and what it saves.

A cache stores, for every layer, one key and one value vector per key/value head and per token:

    bytes = 2 (keys and values) · layers · kv_heads · head_dim · bytes per number · tokens · batch

so it grows linearly with the context and with the batch, and for long texts or many users it
outgrows the model's weights. This module counts it for real models (:func:`kv_cache_bytes`,
:func:`kv_cache_table`) and counts what caching saves in arithmetic (:func:`forward_flops`).

Exercise in this module: 8.3 :func:`kv_cache_bytes`.
"""

from __future__ import annotations

import torch

from .block import block_parameters
from .exercises import exercise
from .gpt import GPTConfig
from .llama import LlamaConfig
from .llama import count_parameters as llama_parameters

GIB = 2**30  # bytes in a gibibyte

#: The models of the chapter's table: a configuration, its published context length, and for Mistral
#: its sliding window. GPT-2 small: 1,024 positions (Radford et al., 2019; ``n_positions`` in
#: openai-community/gpt2's config.json). Llama 2: 4,096 (Touvron et al., 2023, arXiv:2307.09288,
#: Table 1). Llama 3 8B: 8,192 (Dubey et al., 2024, arXiv:2407.21783; ``max_position_embeddings`` of
#: meta-llama/Meta-Llama-3-8B). Mistral 7B: ``context_len`` 8,192 and ``window_size`` 4,096 (Jiang et
#: al., 2023, arXiv:2310.06825, Table 1); its rolling buffer keeps only the last 4,096 positions.
CACHE_MODELS = {
    "GPT-2 small": (GPTConfig.gpt2("124M"), None),
    "Llama-2-7B": (LlamaConfig.llama2("7B"), None),
    "Llama-2-13B": (LlamaConfig.llama2("13B"), None),
    "Llama-2-70B": (LlamaConfig.llama2("70B"), None),
    "Llama-3-8B": (LlamaConfig.llama3("8B"), None),
    "Mistral-7B": (LlamaConfig.mistral("7B"), 4096),
}


@exercise("8.3", "How many bytes a KV cache holds", points=2)
def kv_cache_bytes(config: GPTConfig | LlamaConfig, seq_len: int, batch: int, dtype: torch.dtype) -> int:
    """The bytes of the keys and values a model of ``config`` caches for ``batch`` texts of ``seq_len`` tokens.

    Every layer stores, for every token of every text, one key vector and one value vector per
    key/value head, each ``head_dim`` numbers of ``dtype``. Only the sizes matter: build no model
    and no cache (the count must work for models far too large to build).

    - A ``GPTConfig`` (Chapter 5) has ``n_heads`` key/value heads, each ``d_model // n_heads`` wide.
    - A ``LlamaConfig`` has ``n_kv_heads`` of them (fewer than its query heads in grouped-query
      attention), each ``head_dim`` wide.

    ``seq_len`` may exceed the model's context length (to ask "what if"), and the result is exact
    however large it is.

    Args:
        config: a :class:`course_lib.gpt.GPTConfig` or a :class:`course_lib.llama.LlamaConfig`.
        seq_len: tokens per text, a positive ``int``.
        batch: texts decoded together, a positive ``int``.
        dtype: the ``torch.dtype`` the cache stores: floating point (``torch.float32``: 4 bytes a
            number, ``torch.bfloat16``: 2, ``torch.float8_e4m3fn``: 1) or integer (``torch.int8`` for
            a quantised cache: 1).

    Returns:
        The number of bytes, a Python ``int``.

    Raises:
        ValueError: if ``config`` is neither configuration; if ``seq_len`` or ``batch`` is not a
            positive ``int`` (a ``bool`` or a ``float`` is refused); or if ``dtype`` is not a
            ``torch.dtype``, or is ``torch.bool`` or a complex dtype.

    Example:
        >>> kv_cache_bytes(GPTConfig.gpt2("124M"), seq_len=1, batch=1, dtype=torch.float32)
        73728
    """
    raise NotImplementedError


def _attention_shape(config) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, head_dim)`` of a GPT or Llama configuration."""
    if isinstance(config, LlamaConfig):
        return config.n_heads, config.n_kv_heads, config.head_dim
    if isinstance(config, GPTConfig):
        return config.n_heads, config.n_heads, config.d_model // config.n_heads
    raise ValueError(f"config must be a GPTConfig or a LlamaConfig, got {type(config).__name__}")


def weight_bytes(config: GPTConfig | LlamaConfig, dtype: torch.dtype) -> int:
    """The bytes of a model's parameters in ``dtype`` (GPT-2's tied table counted once)."""
    _attention_shape(config)  # validates
    if isinstance(config, LlamaConfig):
        n = llama_parameters(config)
    else:
        c = config
        n = (c.vocab_size + c.context_length) * c.d_model + c.n_layers * block_parameters(c.d_model, bias=c.bias)
        n += c.d_model * (2 if c.bias else 1)  # the final LayerNorm
    return n * dtype.itemsize


def forward_flops(config: GPTConfig | LlamaConfig, seq: int, context: int) -> int:
    """The floating-point operations of one forward pass of one text: ``seq`` new positions that attend
    to ``context`` positions in all (``context >= seq``: the new ones and those before them).

    Matrix products only, two operations per multiply-add, as is usual (Kaplan et al., 2020,
    arXiv:2001.08361, Table 1); norms, activations and the softmax are a small remainder. Per new
    position and layer: the projections (``q`` and the output: ``2 d · H hd``; ``k`` and ``v``:
    ``2 d · KV hd``), the feed-forward (GPT-2: two matrices ``d × 4d``; Llama: three ``d × d_ff``),
    and attention (scores against ``context`` keys, then the weighted sum of as many values:
    ``2 H hd · context``; the scores a causal mask discards are counted too, as a plain
    implementation computes them). Then the output projection ``d · V``, for every new position
    (as ``forward`` returns logits for each).

    Without a cache, choosing the token after ``t`` tokens costs ``forward_flops(config, t, t)``;
    with one, ``forward_flops(config, 1, t)``.
    """
    heads, kv_heads, head_dim = _attention_shape(config)
    for name, value in (("seq", seq), ("context", context)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if context < seq:
        raise ValueError(f"context ({context}) must be at least seq ({seq}): the new positions are part of it")
    d = config.d_model
    projections = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim
    ffn = 3 * d * config.d_ff if isinstance(config, LlamaConfig) else 2 * d * 4 * d
    attention = 2 * heads * head_dim * context
    per_position = config.n_layers * (projections + ffn + attention) + d * config.vocab_size
    return 2 * seq * per_position


def kv_cache_table(dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> list[dict]:
    """One row per model of :data:`CACHE_MODELS`: its cache per token and at its full context.

    Keys of each row: ``model``, ``layers``, ``kv_heads``, ``head_dim``, ``bytes_per_token``,
    ``context``, ``cache_gib`` (at the context, for ``batch`` texts), ``window_gib`` (Mistral's rolling
    buffer of 4,096 positions; ``None`` for the others) and ``weights_gib`` (the parameters in
    ``dtype``). Sizes come from :func:`kv_cache_bytes`, so this needs Exercise 8.3.
    """
    rows = []
    for name, (config, window) in CACHE_MODELS.items():
        _, kv_heads, head_dim = _attention_shape(config)
        context = config.context_length
        kept = context if window is None else min(window, context)  # the positions a rolling buffer keeps
        rows.append(
            {
                "model": name,
                "layers": config.n_layers,
                "kv_heads": kv_heads,
                "head_dim": head_dim,
                "bytes_per_token": kv_cache_bytes(config, 1, 1, dtype),
                "context": context,
                "cache_gib": kv_cache_bytes(config, context, batch, dtype) / GIB,
                "window_gib": None if window is None else kv_cache_bytes(config, kept, batch, dtype) / GIB,
                "weights_gib": weight_bytes(config, dtype) / GIB,
            }
        )
    return rows
