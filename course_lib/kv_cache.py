"""Chapter 8 — the KV cache: decode one token at a time without recomputing the past.

To choose token ``t + 1``, a model without a cache runs the whole text ``0 ... t`` through every
layer again, although the keys and values of positions ``0 ... t - 1`` are exactly those it computed
on the previous step (causal attention never lets a position see later ones). A cache keeps them:

    prefill:  run the prompt once, storing each layer's keys and values    (positions 0 ... p - 1)
    decode:   run one new token, append its keys and values, attend to all (position p, p + 1, ...)

- :class:`KVCache` holds, per layer, a preallocated ``(batch, n_kv_heads, max_seq_len, head_dim)``
  tensor of keys and one of values; :meth:`KVCache.update` writes a step's keys and values at their
  positions and returns everything cached so far;
- :func:`cached_attention` is attention for queries that are the *last* positions of the keys;
- :func:`gpt2_forward` runs Chapter 5's GPT-2 with a cache, and ``Llama.forward`` takes one directly;
- :func:`generate` is Chapter 5's ``sampling.generate`` on a cache: prefill, then one token per step.

Exercises in this module: 8.1 :meth:`KVCache.update`, 8.2 :func:`cached_attention`.
"""

from __future__ import annotations

import math
import time

import torch

from .exercises import exercise
from .gpt import GPT
from .validation import check_positive_int as _check_positive_int
from .validation import describe as _describe


class KVCache:
    """Every layer's keys and values, for ``max_seq_len`` positions, allocated once.

    Args:
        n_layers: the number of attention layers the cache serves, a positive ``int``.
        batch: the number of sequences decoded together, a positive ``int``.
        n_kv_heads: key/value heads per layer (``n_heads`` for GPT-2), a positive ``int``.
        max_seq_len: the most positions it holds (prompt and generated tokens), a positive ``int``.
        head_dim: the width of one head, a positive ``int``.
        dtype: the floating-point dtype of the stored keys and values.
        device: where they live (default: PyTorch's default device).

    Attributes:
        keys, values: zero-filled tensors of shape ``(n_layers, batch, n_kv_heads, max_seq_len,
            head_dim)``; ``keys[layer]`` is one layer's ``(batch, n_kv_heads, max_seq_len, head_dim)``.
        n_layers, batch, n_kv_heads, max_seq_len, head_dim, dtype: the settings above.

    The cache does not remember how many positions are filled: whoever calls :meth:`update` says
    where the new positions go (the ``offset``), as in Meta's reference code (``start_pos``).
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        for name, value in (
            ("n_layers", n_layers),
            ("batch", batch),
            ("n_kv_heads", n_kv_heads),
            ("max_seq_len", max_seq_len),
            ("head_dim", head_dim),
        ):
            _check_positive_int(name, value)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.n_layers, self.batch, self.n_kv_heads = n_layers, batch, n_kv_heads
        self.max_seq_len, self.head_dim, self.dtype = max_seq_len, head_dim, dtype
        shape = (n_layers, batch, n_kv_heads, max_seq_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @classmethod
    def for_config(
        cls,
        config,
        batch: int,
        max_seq_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """A cache for a model of ``config`` (a ``GPTConfig``, whose key/value heads are its heads, or a
        ``LlamaConfig``), for ``max_seq_len`` positions (default: the context length)."""
        n_kv_heads = getattr(config, "n_kv_heads", None) or config.n_heads
        head_dim = config.d_model // config.n_heads
        length = config.context_length if max_seq_len is None else max_seq_len
        return cls(config.n_layers, batch, n_kv_heads, length, head_dim, dtype, device)

    @classmethod
    def for_model(cls, model, batch: int, max_seq_len: int | None = None) -> KVCache:
        """A cache for ``model`` (a GPT or a Llama), in the dtype and on the device of its weights."""
        weight = next(model.parameters())
        return cls.for_config(model.config, batch, max_seq_len, weight.dtype, weight.device)

    @property
    def nbytes(self) -> int:
        """The memory the keys and values take, in bytes."""
        return self.keys.nbytes + self.values.nbytes

    def __repr__(self) -> str:
        return (
            f"KVCache(n_layers={self.n_layers}, batch={self.batch}, n_kv_heads={self.n_kv_heads}, "
            f"max_seq_len={self.max_seq_len}, head_dim={self.head_dim}, dtype={self.dtype}): {self.nbytes:,} bytes"
        )

    @exercise("8.1", "Write into a preallocated cache", points=3)
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one step's keys and values of layer ``layer`` and return all of that layer's so far.

        ``k`` and ``v`` hold ``s`` positions, those numbered ``offset, offset + 1, ..., offset + s - 1``
        in the text: write them into that layer's slots of ``self.keys`` and ``self.values`` at those
        positions, in place (no new cache is allocated, and the stored tensors keep their shape,
        dtype and device). Return the keys and values of positions ``0 ... offset + s - 1`` of that
        layer: those written now and those written by earlier calls. A prefill writes the whole
        prompt with ``offset=0``; each decoding step then writes one position, ``offset`` being the
        number of positions before it.

        Nothing else in the cache changes: other layers, and positions of this layer outside
        ``offset ... offset + s - 1``, keep what they held (zeros if never written). Writing a position
        again overwrites it. Values are stored in the cache's dtype (converted as ``Tensor.copy_``
        converts). A call that raises changes nothing. ``k`` and ``v`` themselves are not modified.

        Args:
            layer: which layer's slots, an ``int`` with ``0 <= layer < self.n_layers``.
            k, v: floating-point tensors of the same shape ``(self.batch, self.n_kv_heads, s,
                self.head_dim)``, ``s >= 1``.
            offset: the position of the first of the ``s`` rows, an ``int >= 0``.

        Returns:
            ``(keys, values)``, each of shape ``(self.batch, self.n_kv_heads, offset + s,
            self.head_dim)`` in the cache's dtype: positions ``0 ... offset + s - 1`` of layer ``layer``.
            They may share memory with the cache (read them before that layer is written again).

        Raises:
            ValueError: if ``layer`` is not an ``int`` in range (a ``bool`` is refused); if ``k`` or
                ``v`` is not a floating-point tensor of the shape above (the message says the shape
                expected and the one given); if ``offset`` is not an ``int`` (a ``bool`` or a tensor
                is refused) or is negative; or if ``offset + s`` exceeds ``self.max_seq_len`` (the cache
                would overflow: the message names the offset, ``s`` and ``max_seq_len``).

        Example:
            >>> cache = KVCache(n_layers=2, batch=1, n_kv_heads=1, max_seq_len=8, head_dim=2)
            >>> keys, values = cache.update(0, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2), offset=0)
            >>> keys.shape  # the prompt: positions 0, 1, 2
            torch.Size([1, 1, 3, 2])
            >>> keys, values = cache.update(0, torch.full((1, 1, 1, 2), 5.0), torch.zeros(1, 1, 1, 2), offset=3)
            >>> keys[0, 0, :, 0]  # one more: positions 0 ... 3
            tensor([1., 1., 1., 5.])
        """
        raise NotImplementedError


@exercise("8.2", "Attention for the newest queries", points=3)
def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention where the ``s`` queries are the **last** ``s`` of the ``t`` key positions.

    With a cache, a step's queries are only the new positions, while the keys and values are all the
    positions so far: query row ``i`` (``0 <= i < s``) stands at position ``t - s + i`` of the text and
    may attend to key positions ``j <= t - s + i``, all the keys before it and its own. Each head of
    each batch element attends on its own, as in Chapter 3:

        out[..., i, :] = sum_j  softmax_j( q_i · k_j / sqrt(head_dim) )  v_j     over j <= i + t - s

    the softmax taken over the allowed ``j`` only. When ``s == t`` (a prefill) this is the usual causal
    attention; when ``s == 1`` (one decoding step) the one query sees every key.

    Args:
        q: the queries, a floating-point tensor of shape ``(batch, heads, s, head_dim)``.
        k, v: the keys and values, floating-point tensors of shape ``(batch, heads, t, head_dim)``
            with ``t >= s``, all three in the same dtype.

    Returns:
        A tensor of shape ``(batch, heads, s, head_dim)`` in the dtype of ``q``. ``q``, ``k`` and ``v``
        are not modified.

    Raises:
        ValueError: if ``q``, ``k`` or ``v`` is not a 4-D floating-point tensor; if ``k`` and ``v``
            differ in shape, or their batch, heads or ``head_dim`` differ from ``q``'s; if the dtypes
            differ; or if there are more queries than keys (``s > t``; the message names both).

    Example:
        >>> q, k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
        >>> cached_attention(q, k, v).shape  # one new position attending to five
        torch.Size([1, 2, 1, 4])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# Decoding with a cache (finished code)
# --------------------------------------------------------------------------------------


def gpt2_forward(model: GPT, ids: torch.Tensor, cache: KVCache, offset: int = 0) -> torch.Tensor:
    """Chapter 5's GPT-2 with a KV cache: the logits of ``ids`` standing at positions ``offset ...``.

    The same computation as ``model(ids)`` on the whole text, written out over the model's own
    layers (``embed``, each block's ``ln_1``, ``attn.q_proj`` ... ``attn.out_proj``, ``ln_2``, ``ffn``,
    then ``ln_f`` and the tied table), with two changes: position vectors ``offset ... offset + seq - 1``
    are added, and each block's attention stores its keys and values in ``cache`` (layer ``i`` for
    block ``i``) and attends, with :func:`cached_attention`, to every position cached so far.

    Args:
        model: a :class:`course_lib.gpt.GPT` in evaluation mode (no dropout is applied here).
        ids: the tokens not yet seen, an integer tensor ``(batch, seq)``.
        cache: a :class:`KVCache` for the model (``KVCache.for_model(model, batch)``).
        offset: the number of tokens before ``ids``, already in the cache.

    Returns:
        The logits, ``(batch, seq, vocab_size)``.

    Raises:
        ValueError: if the positions run past the context length or the cache does not fit.
    """
    c = model.config
    if not isinstance(model, GPT) or not isinstance(cache, KVCache):
        raise ValueError(f"expected a GPT and a KVCache, got {type(model).__name__} and {type(cache).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"ids must be a tensor of shape (batch, seq) with seq >= 1, got {_describe(ids)}")
    if type(offset) is not int or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    batch, seq = ids.shape
    if offset + seq > c.context_length:
        raise ValueError(f"positions {offset} to {offset + seq - 1} run past the context length {c.context_length}")
    heads, head_dim = c.n_heads, c.d_model // c.n_heads
    if (cache.n_layers, cache.batch, cache.n_kv_heads, cache.head_dim) != (c.n_layers, batch, heads, head_dim):
        raise ValueError(f"{cache!r} does not fit this GPT and a batch of {batch}: use KVCache.for_model")
    positions = torch.arange(offset, offset + seq, device=ids.device)
    x = model.embed.token(ids) + model.embed.position(positions)  # (batch, seq, d_model)
    for i, block in enumerate(model.blocks):
        h = block.ln_1(x)
        q, k, v = (
            proj(h).view(batch, seq, heads, head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)
            for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)
        )
        k, v = cache.update(i, k, v, offset)  # (batch, heads, offset + seq, head_dim)
        a = cached_attention(q, k, v).transpose(1, 2).reshape(batch, seq, c.d_model)
        x = x + block.attn.out_proj(a)
        x = x + block.ffn(block.ln_2(x))
    return model.ln_f(x) @ model.embed.token.weight.T  # (batch, seq, vocab)


class _Remembering(torch.nn.Module):
    """A model that remembers what it has read: called, as ``sampling.generate`` calls a model, on the
    whole text so far, it runs only the tokens it has not seen, through a KV cache.

    It answers ``(batch, seq)`` ids with ``(batch, seq, vocab)`` logits of which only the last position is
    computed; the others repeat it (a view, no copy). ``sampling.generate`` reads only the last position.
    """

    def __init__(self, model, step, cache: KVCache):
        super().__init__()
        self.model, self.config, self._step, self._cache, self._seen = model, model.config, step, cache, 0
        self.training = model.training  # generate restores the mode it finds: the model's own

    def train(self, mode: bool = True):
        self.training = mode
        self.model.train(mode)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self._step(ids[:, self._seen :], cache=self._cache, offset=self._seen)  # (batch, new, vocab)
        self._seen = ids.shape[1]
        return logits[:, -1:].expand(ids.shape[0], ids.shape[1], logits.shape[-1])  # (batch, seq, vocab)


def generate(
    model,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Chapter 5's ``sampling.generate``, decoding with a KV cache: the same tokens, sooner.

    It *is* your ``sampling.generate`` (Exercise 5.6), handed a model that remembers: the first
    call runs the prompt through the model once (the *prefill*) and fills a cache sized for the
    prompt and the new tokens; each later call runs only the one token chosen last. The loop, the
    choices and the randomness are untouched, so both give the same tokens (up to ties that
    rounding can break differently).

    Args:
        model: a :class:`course_lib.gpt.GPT` or a :class:`course_lib.llama.Llama` (anything whose
            ``forward(ids, cache=..., offset=...)`` takes a cache).
        ids: the prompt, an integer tensor ``(batch, seq)``, ``seq >= 1``.
        max_new_tokens: an ``int >= 0``; the prompt and the new tokens must fit the context (a cache
            cannot drop its oldest positions: the positions of everything after would change).
        temperature, top_k, top_p, seed: as for ``sampling.generate``.

    Returns:
        An int64 tensor ``(batch, seq + max_new_tokens)`` that starts with ``ids``.

    Raises:
        ValueError: for the arguments ``sampling.generate`` refuses, or a text longer than the context.
    """
    from .sampling import generate as generate_text

    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] < 1 or ids.is_floating_point():
        raise ValueError(f"ids must be an integer tensor of shape (batch, seq) with seq >= 1, got {_describe(ids)}")
    if type(max_new_tokens) is not int or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    batch, prompt = ids.shape
    total, context = prompt + max_new_tokens, model.config.context_length
    if total > context:
        raise ValueError(f"{prompt} prompt tokens and {max_new_tokens} new ones do not fit the context of {context}")
    if max_new_tokens == 0:
        return generate_text(model, ids, 0, temperature, top_k, top_p, seed)
    step = (lambda x, cache, offset: gpt2_forward(model, x, cache, offset)) if isinstance(model, GPT) else model
    cache = KVCache.for_model(model, batch, max_seq_len=total - 1)  # the last token is chosen, never read
    return generate_text(_Remembering(model, step, cache), ids, max_new_tokens, temperature, top_k, top_p, seed)


def time_generation(model, ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True, repeats: int = 3) -> float:
    """Seconds to generate ``max_new_tokens`` greedy tokens after ``ids``: the best of ``repeats`` runs.

    With ``use_cache``, :func:`generate`; without, Chapter 5's ``sampling.generate``, which runs the
    whole text through the model for every new token. Both choose the same tokens.
    """
    from .sampling import generate as generate_without_cache

    run = generate if use_cache else generate_without_cache
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run(model, ids, max_new_tokens, temperature=0)
        best = min(best, time.perf_counter() - start)
    return best
