"""Chapter 15 — attention for long contexts: windows, sinks, and exact attention computed block by block.

Full causal attention costs every new token a look at every earlier one: a cache that grows with the context and
a score matrix of ``seq × seq`` numbers when a whole sequence is processed at once. Two answers live here.

* **Look at less.** A *sliding window* (Mistral 7B, Jiang et al. 2023, arXiv:2310.06825 §2, whose text writes the
  range one wider, ``i - W ... i``) lets position ``i`` see only the ``window`` positions ``i - window + 1 ... i``;
  its cache is a *rolling buffer* of ``window`` slots, token ``p`` written to slot ``p mod window``
  (:class:`RollingKVCache`). *Attention sinks* give the softmax
  somewhere harmless to put weight: StreamingLLM (Xiao et al. 2023, arXiv:2309.17453) keeps the first tokens in
  the cache forever (``n_keep``), and gpt-oss learns one extra logit per head that takes probability and carries
  no value (:func:`local_attention` with ``sinks``). Models alternate window layers with full layers
  (:func:`kv_cache_bytes` counts what each kind keeps).
* **Hold less at once, compute the same.** Blockwise attention with an *online softmax* (Milakov & Gimelshein
  2018, arXiv:1805.02867; the core of FlashAttention, Dao et al. 2022, arXiv:2205.14135) visits the keys block by
  block, keeping per query a running maximum, a running sum and an unnormalised output, and never forms the
  ``seq × seq`` matrix (:func:`blockwise_attention`). The result is exact, not an approximation.

Shapes: ``(batch, heads, seq, d_head)`` for queries, keys and values, as in ``torch.nn.functional``.

Exercise in this module: 15.1 :func:`online_softmax_update`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import sliding_window_mask
from .exercises import exercise
from .validation import check_positive_int

# --------------------------------------------------------------------------------------
# Windows and sinks (finished)
# --------------------------------------------------------------------------------------

#: gpt-oss's attention layout as transformers' ``GptOssConfig`` defaults give it: 36 layers, 8 key/value heads of 64
#: dimensions, a window of 128 tokens, window and full layers alternating (``layer_types``); tested against the config.
GPT_OSS = {"n_layers": 36, "kv_heads": 8, "head_dim": 64, "window": 128, "full_every": 2}


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating-point tensor (..., seq, d), got {got}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"q, k, v must be (..., n_q, d), (..., n_k, d), (..., n_k, d_v); got {q.shape}, {k.shape}, {v.shape}"
        )


def streaming_mask(seq_len: int, window: int, n_keep: int = 0, device=None) -> torch.Tensor:
    """A sliding window plus StreamingLLM's kept first tokens: ``j <= i`` and (``i - j < window`` or ``j < n_keep``).

    ``window`` counts the query's own position (``window=1`` sees only itself), as in
    :func:`course_lib.attention.sliding_window_mask` and Hugging Face's ``sliding_window_overlay``
    (``kv_idx > q_idx - sliding_window``). Returns a ``torch.bool`` tensor ``(seq_len, seq_len)``, True = may attend.
    """
    if type(n_keep) is not int or n_keep < 0:
        raise ValueError(f"n_keep must be an int of at least 0, got {n_keep!r}")
    mask = sliding_window_mask(seq_len, window, device=device)
    pos = torch.arange(seq_len, device=device)
    return mask | ((pos[None, :] < n_keep) & (pos[None, :] <= pos[:, None]))


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
    n_keep: int = 0,
) -> torch.Tensor:
    """Causal self-attention over a sliding window, optionally with a learned sink logit per head.

    Args:
        q, k, v: ``(batch, heads, seq, d_head)``, the same dtype (keys and values already repeated for GQA).
        window: how many positions each query sees, itself included; ``None`` is full causal attention.
        sinks: ``None`` or a ``(heads,)`` tensor of logits (gpt-oss): each row's softmax runs over its visible
            scores *and* the head's sink logit, and the sink's probability is dropped (it has no value), so a row's
            weights sum to less than one.
        n_keep: StreamingLLM's kept first positions, visible to every later query whatever the window.

    Returns:
        ``(batch, heads, seq, d_head)`` in the dtype of ``q``.
    """
    _check_qkv(q, k, v)
    seq = q.shape[-2]
    mask = streaming_mask(seq, window or seq, n_keep, device=q.device)  # (seq, seq)
    if sinks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (batch, heads, seq, seq)
    scores = scores.masked_fill(~mask, float("-inf"))
    return sink_softmax(scores, sinks) @ v


def sink_softmax(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """The attention weights of ``scores`` ``(batch, heads, seq, n_keys)`` (``-inf`` where hidden) with a learned sink
    logit per head, ``sinks`` ``(heads,)`` (gpt-oss, DeepSeek-V4): each row's softmax runs over its scores and the
    head's sink, and the sink's probability is dropped, since it has no value; a row's weights sum to less than one."""
    sink = sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)  # (batch, heads, seq, 1)
    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]  # the sink's column dropped


class RollingKVCache:
    """A key/value cache of fixed size for sliding-window attention: Mistral's rolling buffer.

    Holds ``n_keep + window`` slots per layer. Token ``p`` goes to slot ``p`` while ``p < n_keep`` (StreamingLLM's
    kept first tokens; Mistral has ``n_keep = 0``) and otherwise to slot ``n_keep + (p - n_keep) mod window``,
    overwriting the token ``window`` positions older, which no later query may see anyway. The slots are not in
    position order once the buffer has wrapped; attention does not care, because the softmax sums over keys in any
    order and the positions are already in the keys (RoPE is applied before caching).

    Example:
        >>> cache = RollingKVCache(window=3, batch=1, heads=1, d_head=2)
        >>> for p in range(5):
        ...     _ = cache.append(torch.full((1, 1, 1, 2), float(p)), torch.zeros(1, 1, 1, 2))
        >>> cache.keys()[0, 0, :, 0]      # positions 3, 4, 2 in slots 0, 1, 2
        tensor([3., 4., 2.])
    """

    def __init__(self, window: int, batch: int, heads: int, d_head: int, n_keep: int = 0, dtype=torch.float32):
        for name, value in (("window", window), ("batch", batch), ("heads", heads), ("d_head", d_head)):
            check_positive_int(name, value)
        if type(n_keep) is not int or n_keep < 0:
            raise ValueError(f"n_keep must be an int of at least 0, got {n_keep!r}")
        self.window, self.n_keep = window, n_keep
        slots = n_keep + window
        self.k = torch.zeros(batch, heads, slots, d_head, dtype=dtype)  # (batch, heads, slots, d_head)
        self.v = torch.zeros(batch, heads, slots, d_head, dtype=dtype)
        self.length = 0  # tokens appended so far

    def slot(self, position: int) -> int:
        """Where token ``position`` is written."""
        if position < self.n_keep:
            return position
        return self.n_keep + (position - self.n_keep) % self.window

    def append(self, k: torch.Tensor, v: torch.Tensor) -> int:
        """Write one token's key and value ``(batch, heads, 1, d_head)``; return the slot used."""
        s = self.slot(self.length)
        self.k[:, :, s] = k[:, :, 0]
        self.v[:, :, s] = v[:, :, 0]
        self.length += 1
        return s

    def filled(self) -> int:
        return min(self.length, self.k.shape[2])

    def keys(self) -> torch.Tensor:
        return self.k[:, :, : self.filled()]

    def values(self) -> torch.Tensor:
        return self.v[:, :, : self.filled()]

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold: fixed, whatever the number of tokens appended."""
        return self.k.nbytes + self.v.nbytes


def decode_with_rolling_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    sinks: torch.Tensor | None = None,
    n_keep: int = 0,
) -> torch.Tensor:
    """Attention one token at a time through a :class:`RollingKVCache`: equal to ``local_attention(q, k, v, window)``.

    Each step appends the token's key and value, then its query attends to the slots in the buffer (all of which it
    may see). ``sinks`` as in :func:`local_attention`. Returns ``(batch, heads, seq, d_head)``.
    """
    _check_qkv(q, k, v)
    batch, heads, seq, d_head = q.shape
    cache = RollingKVCache(window, batch, heads, d_head, n_keep=n_keep, dtype=q.dtype)
    outs = []
    for p in range(seq):
        cache.append(k[:, :, p : p + 1], v[:, :, p : p + 1])
        qp, kc, vc = q[:, :, p : p + 1], cache.keys(), cache.values()  # (b, h, 1, d), (b, h, filled, d)
        if sinks is None:
            outs.append(F.scaled_dot_product_attention(qp, kc, vc))
        else:
            scores = (qp @ kc.transpose(-2, -1)) / math.sqrt(d_head)  # (b, h, 1, filled)
            outs.append(sink_softmax(scores, sinks) @ vc)
    return torch.cat(outs, dim=2)


def kv_cache_bytes(
    context: int,
    layer_types: list[str],
    window: int,
    kv_heads: int,
    head_dim: int,
    bytes_per_number: int = 2,
    batch: int = 1,
) -> int:
    """Bytes of one model's key/value cache at ``context`` tokens: a window layer keeps ``min(context, window)``.

    ``layer_types`` lists ``"sliding_attention"`` or ``"full_attention"`` per layer (Hugging Face's names for gpt-oss,
    Gemma 2/3 and Mistral's configs). Each kept token costs ``2 · kv_heads · head_dim · bytes_per_number`` per layer.
    """
    per_token = 2 * kv_heads * head_dim * bytes_per_number * batch
    total = 0
    for kind in layer_types:
        if kind not in ("sliding_attention", "full_attention"):
            raise ValueError(f"layer type must be 'sliding_attention' or 'full_attention', got {kind!r}")
        total += per_token * (min(context, window) if kind == "sliding_attention" else context)
    return total


def alternating_layers(n_layers: int, every: int = 2) -> list[str]:
    """Window layers with a full layer every ``every``-th: gpt-oss alternates (``every=2``), Gemma 3 has 5 : 1 (``6``).

    The pattern of Hugging Face's configurations: layer ``i`` is full when ``(i + 1) % every == 0``
    (``GptOssConfig`` and ``Gemma3Config``'s ``layer_types``).
    """
    return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n_layers)]


# --------------------------------------------------------------------------------------
# Exercise: the online softmax
# --------------------------------------------------------------------------------------


@exercise("15.1", "The online-softmax block update", points=3)
def online_softmax_update(
    out: torch.Tensor,
    row_max: torch.Tensor,
    row_sum: torch.Tensor,
    scores: torch.Tensor,
    values: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge one block of scores and values into the running state of the online softmax.

    For each query row the state describes the keys seen so far, with ``m`` the largest score among them:

    * ``row_max`` = ``m`` (``-inf`` while no visible key has been seen),
    * ``row_sum`` = ``Σ exp(score - m)`` over those keys,
    * ``out`` = ``Σ exp(score - m) · value`` — the **unnormalised** output; attention's output is ``out / row_sum``.

    A new block with scores ``s`` (``-inf`` where a key is masked) and values ``V`` gives the new maximum
    ``m' = max(m, max_j s_j)``; the old sum and output are rescaled by ``exp(m - m')`` and the block adds
    ``Σ_j exp(s_j - m')`` and ``Σ_j exp(s_j - m') · V_j``. The order in which blocks arrive does not change the result
    (up to rounding).

    Fully masked rows: a row whose state and block hold no visible key (``m' = -inf``) must stay as it was —
    ``row_max = -inf``, ``row_sum = 0``, ``out = 0`` — never NaN (``exp(-inf - (-inf))`` is NaN: avoid computing it).
    A block whose row is fully masked leaves that row's state unchanged.

    Args:
        out: ``(..., n_q, d_v)`` unnormalised output so far (zeros to start).
        row_max: ``(..., n_q)`` running maximum (``-inf`` to start).
        row_sum: ``(..., n_q)`` running sum (zeros to start).
        scores: ``(..., n_q, n_k)`` the block's scaled scores, ``-inf`` where masked.
        values: ``(..., n_k, d_v)`` the block's values.
        All floating-point of one dtype, the leading dimensions ``...`` (batch, heads) the same.

    Returns:
        A new tuple ``(out, row_max, row_sum)`` of the same shapes and dtype; the inputs are not modified.

    Raises:
        ValueError: if the shapes do not fit together (``n_q``, ``n_k``, ``d_v`` or the leading dimensions) or a
            tensor is not floating point.

    Example:
        >>> out, m, l = torch.zeros(1, 1), torch.tensor([float("-inf")]), torch.zeros(1)
        >>> out, m, l = online_softmax_update(out, m, l, torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0], [3.0]]))
        >>> out / l[:, None]   # softmax([0, 1]) · [1, 3]
        tensor([[2.4621]])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# Blockwise attention (finished, calls the exercise)
# --------------------------------------------------------------------------------------


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    causal: bool = True,
    record: list | None = None,
) -> torch.Tensor:
    """Exact attention computed tile by tile with :func:`online_softmax_update`: never a ``seq × seq`` matrix.

    Queries are cut into blocks of ``block_size`` rows and keys/values into blocks of ``block_size`` positions (the
    last block of each may be shorter); for every query block the key blocks are visited in order, each giving a
    ``(block, block)`` tile of scores merged into the running state. With ``causal`` a key block wholly after the
    query block is skipped (its tile would be all ``-inf``), and the diagonal tiles are masked position by position.

    Args:
        q: ``(..., n_q, d)``; k: ``(..., n_k, d)``; v: ``(..., n_k, d_v)``; one floating-point dtype.
        block_size: rows and keys per tile, an int of at least 1 (it need not divide the length).
        causal: query ``i`` sees key ``j <= i`` (for ``n_q == n_k``, as in self-attention).
        record: if a list, the ``nbytes`` of every score tile created is appended to it (for memory accounting).

    Returns:
        ``(..., n_q, d_v)`` in the dtype of ``q``.
    """
    _check_qkv(q, k, v)
    check_positive_int("block_size", block_size)
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal blockwise attention needs n_q == n_k, got {q.shape[-2]} and {k.shape[-2]}")
    n_q, n_k, scale = q.shape[-2], k.shape[-2], 1 / math.sqrt(q.shape[-1])
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    outputs = []
    for q0 in range(0, n_q, block_size):
        qb = q[..., q0 : q0 + block_size, :]  # (..., bq, d)
        bq = qb.shape[-2]
        out = q.new_zeros(*lead, bq, v.shape[-1])  # (..., bq, d_v) the unnormalised output
        row_max = q.new_full((*lead, bq), float("-inf"))  # (..., bq)
        row_sum = q.new_zeros(*lead, bq)
        for k0 in range(0, n_k, block_size):
            if causal and k0 > q0 + bq - 1:
                break  # every later key block lies wholly in this query block's future
            kb, vb = k[..., k0 : k0 + block_size, :], v[..., k0 : k0 + block_size, :]
            scores = (qb @ kb.transpose(-2, -1)) * scale  # (..., bq, bk): the only score buffer alive
            if causal and k0 + kb.shape[-2] - 1 > q0:  # a tile that crosses the diagonal
                i = torch.arange(q0, q0 + bq, device=q.device)[:, None]
                j = torch.arange(k0, k0 + kb.shape[-2], device=q.device)[None, :]
                scores = scores.masked_fill(j > i, float("-inf"))
            if record is not None:
                record.append(scores.nbytes)
            out, row_max, row_sum = online_softmax_update(
                out, row_max, row_sum, scores, vb.expand(*lead, *vb.shape[-2:])
            )
        # A row that saw no key (only possible without a causal diagonal) has row_sum 0 and out 0: output 0.
        outputs.append(out / row_sum.clamp_min(torch.finfo(row_sum.dtype).tiny)[..., None])
    return torch.cat(outputs, dim=-2)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, record: list | None = None) -> torch.Tensor:
    """Causal attention written out with the full ``(..., seq, seq)`` score matrix (its ``nbytes`` into ``record``)."""
    _check_qkv(q, k, v)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (..., seq, seq)
    if record is not None:
        record.append(scores.nbytes)
    mask = sliding_window_mask(q.shape[-2], q.shape[-2], device=q.device)  # window = seq: the causal mask
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def score_buffer_bytes(
    batch: int, heads: int, seq: int, block_size: int | None, dtype: torch.dtype = torch.float32
) -> int:
    """The formula for the largest score buffer: ``batch · heads · seq²`` numbers naively, ``· block²`` tiled."""
    side = seq if block_size is None else min(block_size, seq)
    return batch * heads * side * side * torch.finfo(dtype).bits // 8
