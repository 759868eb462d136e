"""Chapter 10 — Multi-head Latent Attention (MLA): cache one small latent per token, not every head's keys and values.

Chapter 9 shrank the KV cache by sharing key/value heads among query heads. DeepSeek-V2 [DeepSeek-AI, 2024,
arXiv:2405.04434, §2.1] keeps all ``H`` heads and compresses instead: each token's keys and values are
computed from one latent vector ``c`` of ``kv_lora_rank`` numbers (512 in V2 and V3), and only ``c`` is
cached, with one small RoPE key that all heads share:

    c      = RMSNorm(W_DKV x)                 the latent, cached            (kv_a_proj_with_mqa, kv_a_layernorm)
    k_rope = RoPE(W_KR x)                     one rotated key for all heads, cached
    k_h    = [W_UK,h c ; k_rope]              head h's key: no RoPE part from c, the shared RoPE part
    v_h    = W_UV,h c                                                       (kv_b_proj holds every W_UK,h and W_UV,h)
    q_h    = [W_UQ,h c_q ; RoPE(W_QR,h c_q)]  c_q = RMSNorm(W_DQ x), the compressed query (q_a_proj, q_b_proj)

Because no rotation sits between ``W_UK,h`` and the query, the scores ``q_h · W_UK,h c`` can be computed
as ``(W_UK,hᵀ q_h) · c``: the key up-projection is *absorbed* into the query and the cache is read as
it is, 576 numbers per token and layer at V3's shapes instead of 40,960.

- :class:`MultiHeadLatentAttention` has Hugging Face's ``DeepseekV3Attention`` submodules and names, so
  its state dict loads as it is; :meth:`~MultiHeadLatentAttention.queries` and
  :meth:`~MultiHeadLatentAttention.compress` are the finished first steps;
- :class:`LatentCache` holds the latents and RoPE keys of every layer (what MLA caches), and
  :class:`ExpandedCache` every head's keys and values (what a naive MLA would cache);
- :func:`cache_bytes`, :func:`kv_cache_table_v2` and :func:`attention_flops` serve the chapter's accounting,
  :func:`time_mla` its measurements (and ``python -m bench.mla``).

Exercises in this module: 10.1 :meth:`MultiHeadLatentAttention.forward` (naive), 10.2
:meth:`MultiHeadLatentAttention.forward_absorbed`, 10.3 :func:`cache_elements`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .deepseek import DeepSeekConfig
from .exercises import exercise
from .layers import RMSNorm
from .llama import LlamaConfig
from .memory import kv_cache_bytes
from .rope import RotaryEmbedding
from .validation import check_positive_int as _check_positive_int
from .validation import describe as _describe
from .yarn import YaRN


def _check_config(config) -> None:
    if not isinstance(config, DeepSeekConfig):
        raise ValueError(f"config must be a course_lib.deepseek.DeepSeekConfig, got {type(config).__name__}")


# --------------------------------------------------------------------------------------
# The caches: two preallocated tensors per layer, written at an offset (Chapter 8's design)
# --------------------------------------------------------------------------------------


class _PairCache:
    """Two tensors per layer whose second-to-last dimension is the position, allocated once.

    Like Chapter 8's ``KVCache``, it does not remember how many positions are filled: each
    :meth:`_write` says where the new ones go (``offset``) and returns positions ``0 ... offset + s - 1``.
    """

    _names = ("first", "second")

    def __init__(self, n_layers: int, batch: int, max_seq_len: int, shapes, dtype, device):
        for name, value in (("n_layers", n_layers), ("batch", batch), ("max_seq_len", max_seq_len)):
            _check_positive_int(name, value)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.n_layers, self.batch, self.max_seq_len, self.dtype = n_layers, batch, max_seq_len, dtype
        self._tensors = tuple(torch.zeros((n_layers, batch, *shape), dtype=dtype, device=device) for shape in shapes)

    @classmethod
    def for_config(
        cls,
        config: DeepSeekConfig,
        batch: int,
        max_seq_len: int | None = None,
        n_layers: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        """A cache for ``config``'s layers (or ``n_layers``), ``max_seq_len`` positions (default: the context)."""
        _check_config(config)
        length = config.context_length if max_seq_len is None else max_seq_len
        layers = config.n_layers if n_layers is None else n_layers
        return cls(layers, batch, length, *cls._sizes(config), dtype, device)

    @classmethod
    def for_module(
        cls, module: MultiHeadLatentAttention, batch: int, max_seq_len: int | None = None, n_layers: int = 1
    ):
        """A cache for ``module`` (``n_layers`` of its kind), in the dtype and on the device of its weights."""
        weight = module.kv_b_proj.weight
        return cls.for_config(module.config, batch, max_seq_len, n_layers, weight.dtype, weight.device)

    @property
    def nbytes(self) -> int:
        """The memory both tensors take, in bytes."""
        return sum(t.nbytes for t in self._tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in zip(self._names, self._tensors))
        return f"{type(self).__name__}({shapes}, {self.dtype}): {self.nbytes:,} bytes"

    def _write(self, layer: int, new: tuple[torch.Tensor, torch.Tensor], offset: int):
        if type(layer) is not int or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.n_layers}), got {layer!r}")
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        for name, store, x in zip(self._names, self._tensors, new):
            expected = (*store.shape[1:-2], "s", store.shape[-1])
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != store.ndim - 1:
                raise ValueError(f"{name} must be a floating-point tensor of shape {expected}, got {_describe(x)}")
            if x.shape[:-2] != store.shape[1:-2] or x.shape[-1] != store.shape[-1] or x.shape[-2] < 1:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        s = new[0].shape[-2]
        if new[1].shape[-2] != s:
            raise ValueError(f"both tensors must hold the same positions, got {s} and {new[1].shape[-2]}")
        if offset + s > self.max_seq_len:
            raise ValueError(
                f"the cache would overflow: offset {offset} + {s} new positions > max_seq_len {self.max_seq_len}"
            )
        out = []
        for store, x in zip(self._tensors, new):
            store[layer, ..., offset : offset + s, :] = x
            out.append(store[layer, ..., : offset + s, :])
        return tuple(out)


class LatentCache(_PairCache):
    """What MLA caches: every layer's normalised latents and shared RoPE keys, for ``max_seq_len`` positions.

    Args:
        n_layers, batch, max_seq_len: positive ``int`` s, as in Chapter 8's ``KVCache``.
        kv_lora_rank: the width of a latent (V3: 512).
        qk_rope_head_dim: the width of the shared RoPE key (V3: 64).
        dtype, device: of the stored tensors (default float32, PyTorch's default device).

    Attributes:
        latents: zeros of shape ``(n_layers, batch, max_seq_len, kv_lora_rank)``.
        rope_keys: zeros of shape ``(n_layers, batch, max_seq_len, qk_rope_head_dim)``.
        n_layers, batch, max_seq_len, kv_lora_rank, qk_rope_head_dim, dtype: the settings.

    There is no head dimension: one latent and one RoPE key per token serve all heads (Hugging Face calls the
    projection that makes them ``kv_a_proj_with_mqa``: like multi-query attention's single key/value head).
    """

    _names = ("latent", "rope_key")

    def __init__(
        self,
        n_layers: int,
        batch: int,
        max_seq_len: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        _check_positive_int("kv_lora_rank", kv_lora_rank)
        _check_positive_int("qk_rope_head_dim", qk_rope_head_dim)
        shapes = ((max_seq_len, kv_lora_rank), (max_seq_len, qk_rope_head_dim))
        super().__init__(n_layers, batch, max_seq_len, shapes, dtype, device)
        self.kv_lora_rank, self.qk_rope_head_dim = kv_lora_rank, qk_rope_head_dim

    latents = property(lambda self: self._tensors[0], doc="``(n_layers, batch, max_seq_len, kv_lora_rank)``")
    rope_keys = property(lambda self: self._tensors[1], doc="``(n_layers, batch, max_seq_len, qk_rope_head_dim)``")

    @staticmethod
    def _sizes(config: DeepSeekConfig) -> tuple[int, int]:
        return config.kv_lora_rank, config.qk_rope_head_dim

    def update(self, layer: int, latent: torch.Tensor, rope_key: torch.Tensor, offset: int):
        """Write ``s`` positions of layer ``layer`` at ``offset ... offset + s - 1``; return all ``offset + s`` so far.

        Args:
            layer: an ``int`` in ``[0, n_layers)``.
            latent: ``(batch, s, kv_lora_rank)``; rope_key: ``(batch, s, qk_rope_head_dim)``; floating point.
            offset: an ``int >= 0``.

        Returns:
            ``(latents, rope_keys)`` of shapes ``(batch, offset + s, kv_lora_rank)`` and
            ``(batch, offset + s, qk_rope_head_dim)``, views of the cache in its dtype.

        Raises:
            ValueError: for a layer out of range, a shape that does not fit, a negative offset, or an
                overflow (``offset + s > max_seq_len``; nothing is written then).
        """
        return self._write(layer, (latent, rope_key), offset)


class ExpandedCache(_PairCache):
    """What a naive MLA would cache: every head's full keys (``qk_head_dim`` wide) and values.

    DeepSeek's reference code keeps such a cache when ``attn_impl = "naive"`` (``k_cache`` and ``v_cache``
    in ``inference/model.py``). Shapes: ``keys`` ``(n_layers, batch, n_heads, max_seq_len, qk_head_dim)``,
    ``values`` ``(n_layers, batch, n_heads, max_seq_len, v_head_dim)``: Chapter 8's layout, with keys and
    values of different widths. Arguments: ``n_layers, batch, max_seq_len, n_heads, qk_head_dim, v_head_dim, dtype,
    device``; :meth:`for_config` and :meth:`update` as :class:`LatentCache`'s.
    """

    _names = ("keys", "values")

    def __init__(
        self,
        n_layers: int,
        batch: int,
        max_seq_len: int,
        n_heads: int,
        qk_head_dim: int,
        v_head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        for name, value in (("n_heads", n_heads), ("qk_head_dim", qk_head_dim), ("v_head_dim", v_head_dim)):
            _check_positive_int(name, value)
        shapes = ((n_heads, max_seq_len, qk_head_dim), (n_heads, max_seq_len, v_head_dim))
        super().__init__(n_layers, batch, max_seq_len, shapes, dtype, device)
        self.n_heads, self.qk_head_dim, self.v_head_dim = n_heads, qk_head_dim, v_head_dim

    keys = property(lambda self: self._tensors[0], doc="``(n_layers, batch, n_heads, max_seq_len, qk_head_dim)``")
    values = property(lambda self: self._tensors[1], doc="``(n_layers, batch, n_heads, max_seq_len, v_head_dim)``")

    @staticmethod
    def _sizes(config: DeepSeekConfig) -> tuple[int, int, int]:
        return config.n_heads, config.qk_head_dim, config.v_head_dim

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, offset: int):
        """Chapter 8's ``KVCache.update`` for keys ``(batch, n_heads, s, qk_head_dim)`` and values
        ``(batch, n_heads, s, v_head_dim)``: returns all of layer ``layer``'s positions so far."""
        return self._write(layer, (k, v), offset)


# --------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------


def rope_with_base(
    rope_dim: int, base: float, max_len: int, interleaved: bool, yarn: YaRN | None = None
) -> RotaryEmbedding:
    """RoPE on ``rope_dim`` features with Hugging Face's ``inv_freq`` for ``base``: Chapter 7's frequencies, computed
    here rather than by Exercise 7.1, so that the chapters from here on (MLA, V3.2's indexer, V4's layers) can build
    their modules whatever that exercise does.

    With ``yarn`` (a :class:`~course_lib.yarn.YaRN`), the frequencies are YaRN's (Exercise 15.5, Chapter 15) and the
    cos and sin tables are multiplied by its ``table_factor``, as Hugging Face's rotary embeddings do (1 for V3)."""
    if yarn is None:
        theta = 1.0 / base ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim)
    else:
        theta = yarn.frequencies(rope_dim, base)
    rope = RotaryEmbedding.from_frequencies(theta, max_len, interleaved=interleaved)
    if yarn is not None and yarn.table_factor != 1.0:
        rope.cos.mul_(yarn.table_factor)
        rope.sin.mul_(yarn.table_factor)
    rope.base = base  # what the frequencies were computed from, for its repr
    return rope


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2/V3's attention: keys and values rebuilt from a cached latent, RoPE on a decoupled part.

    Args:
        config: a :class:`~course_lib.deepseek.DeepSeekConfig`; this reads ``d_model``, ``n_heads``,
            ``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``,
            ``context_length``, ``rope_base``, ``rope_interleaved``, ``yarn`` and ``norm_eps``. (The config refuses
            ranks not smaller than ``d_model`` and an odd ``qk_rope_head_dim``.)

    Attributes (Hugging Face's ``DeepseekV3Attention`` names; no biases, as in V3):
        q_proj: ``nn.Linear(d_model, n_heads * qk_head_dim)``, only when ``q_lora_rank is None``; otherwise
        q_a_proj: ``nn.Linear(d_model, q_lora_rank)``, the query's down-projection ``W_DQ``,
        q_a_layernorm: ``layers.RMSNorm(q_lora_rank, eps=norm_eps)``,
        q_b_proj: ``nn.Linear(q_lora_rank, n_heads * qk_head_dim)``, its up-projection (``W_UQ`` and ``W_QR``),
            each head's rows: ``qk_nope_head_dim`` not rotated, then ``qk_rope_head_dim`` rotated.
        kv_a_proj_with_mqa: ``nn.Linear(d_model, kv_lora_rank + qk_rope_head_dim)``: the latent's
            down-projection ``W_DKV`` (first ``kv_lora_rank`` rows) and the shared RoPE key's ``W_KR``.
        kv_a_layernorm: ``layers.RMSNorm(kv_lora_rank, eps=norm_eps)``, applied to the latent before caching.
        kv_b_proj: ``nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim))``: per head, the
            key up-projection ``W_UK,h`` (``qk_nope_head_dim`` rows), then the value one ``W_UV,h``.
        o_proj: ``nn.Linear(n_heads * v_head_dim, d_model)``.
        rope: a ``rope.RotaryEmbedding`` of ``qk_rope_head_dim`` features, ``context_length`` positions, the
            config's ``rope_base`` and pairing (``rope_interleaved``); its tables are buffers outside the state dict.
        config, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim,
        qk_head_dim (``nope + rope``) and scale (``qk_head_dim ** -0.5``, times ``yarn.softmax_factor`` with YaRN).

    The RMSNorms' ``eps`` is ``config.norm_eps``; Hugging Face's and DeepSeek's code fix it at 1e-6, the
    configs' value. Positions past ``context_length`` are refused. With ``config.yarn`` (V3's stretched context,
    Chapter 15) the RoPE tables are YaRN's and the scale is multiplied by its softmax factor, as in Hugging Face's
    ``DeepseekV3Attention``.
    """

    def __init__(self, config: DeepSeekConfig):
        super().__init__()
        _check_config(config)
        c = config
        self.config = c
        self.n_heads, self.q_lora_rank, self.kv_lora_rank = c.n_heads, c.q_lora_rank, c.kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = (
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
        )
        self.qk_head_dim = c.qk_head_dim
        self.scale = self.qk_head_dim**-0.5  # the query and key are nope + rope wide
        if c.yarn is not None:  # YaRN's temperature on every score (V3: 1.874; Chapter 15)
            self.scale *= c.yarn.softmax_factor
        d, h = c.d_model, c.n_heads
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * c.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, c.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, eps=c.norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, h * c.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, eps=c.norm_eps)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, h * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * c.v_head_dim, d, bias=False)
        self.rope = rope_with_base(c.qk_rope_head_dim, c.rope_base, c.context_length, c.rope_interleaved, c.yarn)

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, q_lora_rank={self.q_lora_rank}, kv_lora_rank={self.kv_lora_rank}, "
            f"qk_head_dim={self.qk_nope_head_dim}+{self.qk_rope_head_dim}, v_head_dim={self.v_head_dim}"
        )

    def _check_input(self, x, offset) -> None:
        d = self.config.d_model
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 3 or x.shape[-1] != d:
            raise ValueError(f"x must be a floating-point tensor of shape (batch, seq, {d}), got {_describe(x)}")
        if x.shape[1] < 1:
            raise ValueError("x must hold at least one position")
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        if offset + x.shape[1] > self.config.context_length:
            raise ValueError(
                f"positions {offset} to {offset + x.shape[1] - 1} run past the context length "
                f"{self.config.context_length}"
            )

    def queries(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Every head's query for ``x`` at positions ``offset ...``: the part without RoPE and the rotated part.

        ``q = q_proj(x)``, or with query compression ``q = q_b_proj(q_a_layernorm(q_a_proj(x)))``; each head's
        ``qk_head_dim`` features split into ``qk_nope_head_dim`` and ``qk_rope_head_dim``; the latter rotated by
        ``self.rope`` (in the config's pairing convention) as positions ``offset, offset + 1, ...``.

        Returns:
            ``(q_nope, q_rope)`` of shapes ``(batch, n_heads, seq, qk_nope_head_dim)`` and
            ``(batch, n_heads, seq, qk_rope_head_dim)``.

        Raises:
            ValueError: if ``x`` is not a floating-point ``(batch, seq, d_model)`` tensor with ``seq >= 1``,
                ``offset`` is not an ``int >= 0``, or the positions run past ``context_length``.
        """
        self._check_input(x, offset)
        batch, seq, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(batch, seq, self.n_heads, self.qk_head_dim).transpose(1, 2)  # (batch, heads, seq, qk_head_dim)
        q_nope, q_rope = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        return q_nope, self.rope(q_rope, offset)

    def compress(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """What MLA caches for ``x`` at positions ``offset ...``: the normalised latent and the rotated shared RoPE key.

        ``kv_a_proj_with_mqa(x)`` split into the latent (``kv_lora_rank`` features), normalised by
        ``kv_a_layernorm``, and the RoPE key (``qk_rope_head_dim`` features), rotated by ``self.rope``.

        Returns:
            ``(latent, rope_key)`` of shapes ``(batch, seq, kv_lora_rank)`` and ``(batch, seq, qk_rope_head_dim)``.

        Raises:
            ValueError: as :meth:`queries`.
        """
        self._check_input(x, offset)
        latent, rope_key = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        return self.kv_a_layernorm(latent), self.rope(rope_key, offset)  # (batch, seq, r), (batch, seq, rope)

    @exercise("10.1", "Multi-head latent attention, naive", points=4)
    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Causal MLA over a whole sequence: rebuild every head's keys and values from the latents, then attend.

        Row ``j`` of ``x`` stands at position ``offset + j`` (``offset`` only moves the rotations: the rows
        attend causally among themselves, as a prompt does). With ``h`` heads:

        1. ``q_nope, q_rope = self.queries(x, offset)`` and ``latent, rope_key = self.compress(x, offset)``
           (finished, above): the queries' two parts per head, the normalised latent and the rotated RoPE key.
        2. Up-project the latent: ``self.kv_b_proj(latent)`` has ``h * (qk_nope_head_dim + v_head_dim)``
           features per position; head ``h``'s block is its key part without RoPE (the first
           ``qk_nope_head_dim``) followed by its value (``v_head_dim``).
        3. Head ``h``'s key is ``[k_nope_h ; rope_key]``: every head gets the **same** RoPE key. Its query is
           ``[q_nope_h ; q_rope_h]``. Both are ``qk_head_dim = nope + rope`` wide.
        4. Scaled dot products, ``q · k * self.scale`` (``scale = qk_head_dim ** -0.5``, the full width of the
           query and key), a causal mask (position ``i`` sees positions ``0 ... i``), a softmax over the key
           positions, the weighted sum of head ``h``'s values.
        5. Join the heads (head 0's ``v_head_dim`` features first) and apply ``self.o_proj``.

        This is DeepSeek's ``attn_impl = "naive"`` and Hugging Face's ``DeepseekV3Attention`` with a causal
        mask: equal to it with the same weights (to float rounding), whichever RoPE convention the config uses.

        Args:
            x: a floating-point tensor ``(batch, seq, d_model)`` in the weights' dtype, ``seq >= 1``.
            offset: the position of the first row, an ``int >= 0`` with ``offset + seq <= context_length``.

        Returns:
            A tensor ``(batch, seq, d_model)`` in the dtype of ``x``. ``x`` is not modified.

        Raises:
            ValueError: as :meth:`queries` (a wrong shape or dtype, a bad offset, positions past the context).

        Example:
            >>> attn = MultiHeadLatentAttention(DeepSeekConfig.tiny())
            >>> attn(torch.randn(2, 5, 48)).shape
            torch.Size([2, 5, 48])
        """
        raise NotImplementedError

    @exercise("10.2", "Absorbed decoding over the latent cache", points=4)
    def forward_absorbed(self, x: torch.Tensor, cache: LatentCache, offset: int, layer: int = 0) -> torch.Tensor:
        """MLA for ``s`` new positions against a :class:`LatentCache`, never expanding the cached latents.

        Row ``i`` of ``x`` stands at position ``offset + i``; the cache's layer ``layer`` holds positions
        ``0 ... offset - 1`` (from earlier calls). With ``t = offset + s``:

        1. ``latent, rope_key = self.compress(x, offset)``; store them with
           ``cache.update(layer, latent, rope_key, offset)``, which returns the latents ``(batch, t, kv_lora_rank)``
           and RoPE keys ``(batch, t, qk_rope_head_dim)`` of all ``t`` positions.
        2. ``q_nope, q_rope = self.queries(x, offset)``.
        3. **Absorb the key up-projection into the query.** ``self.kv_b_proj.weight`` is
           ``(h * (nope + v), kv_lora_rank)``; head ``h``'s first ``nope`` rows are ``W_UK,h`` and the next
           ``v_head_dim`` rows ``W_UV,h``. Head ``h``'s latent query is ``q_nope_h @ W_UK,h``
           (``kv_lora_rank`` wide), so that ``q_nope_h · (W_UK,h c_j) = (q_nope_h @ W_UK,h) · c_j``.
        4. Scores against the cache as it is: ``(latent query · c_j + q_rope_h · rope_key_j) * self.scale``;
           query row ``i`` sees positions ``j <= offset + i`` (a prefill ``offset=0, s = t`` is causal; one
           decoding step ``s = 1`` sees all ``t``); softmax over ``j``.
        5. **Absorb the value up-projection after the sum.** Weight the *latents* by the probabilities
           (``kv_lora_rank`` wide per head), then multiply by ``W_UV,h``ᵀ to get head ``h``'s ``v_head_dim``
           output; join the heads and apply ``self.o_proj``.

        Absorbing means that no key or value per head and cached position is ever formed: the cache is read as it
        is. A prefill of a prompt followed by one call per
        new token gives, row for row, :meth:`forward` over the whole text (to float rounding).

        Args:
            x: a floating-point tensor ``(batch, s, d_model)`` in the weights' dtype, ``s >= 1``.
            cache: a :class:`LatentCache` of this batch size, ``kv_lora_rank`` and ``qk_rope_head_dim``, in the
                dtype of ``x``.
            offset: the number of positions already cached, an ``int >= 0``.
            layer: which of the cache's layers this module writes and reads, an ``int``.

        Returns:
            A tensor ``(batch, s, d_model)`` in the dtype of ``x``. The cache's layer ``layer`` now holds
            positions ``0 ... t - 1``; nothing else of it changes. ``x`` is not modified.

        Raises:
            ValueError: if ``cache`` is not a :class:`LatentCache` whose batch size, ``kv_lora_rank`` and
                ``qk_rope_head_dim`` fit (the message names both); and as :meth:`queries` and
                :meth:`LatentCache.update` (a wrong ``x``, a bad offset or layer, an overflow).

        Example:
            >>> attn = MultiHeadLatentAttention(DeepSeekConfig.tiny())
            >>> cache = LatentCache.for_config(attn.config, batch=1, n_layers=1)
            >>> x = torch.randn(1, 6, 48)
            >>> prefill = attn.forward_absorbed(x[:, :5], cache, offset=0)  # positions 0 ... 4
            >>> step = attn.forward_absorbed(x[:, 5:], cache, offset=5)  # position 5 reads 6 cached latents
            >>> torch.allclose(torch.cat([prefill, step], dim=1), attn(x), atol=1e-5)
            True
        """
        raise NotImplementedError

    def forward_expanded(self, x: torch.Tensor, cache: ExpandedCache, offset: int, layer: int = 0) -> torch.Tensor:
        """The naive way to decode (finished): expand the new positions' keys and values, cache them whole, attend.

        The same results as :meth:`forward_absorbed`; the cache holds ``n_heads * (qk_head_dim + v_head_dim)``
        numbers per token instead of ``kv_lora_rank + qk_rope_head_dim``, but nothing is expanded twice.
        """
        if not isinstance(cache, ExpandedCache):
            raise ValueError(f"cache must be an ExpandedCache, got {type(cache).__name__}")
        batch, s, _ = x.shape
        q_nope, q_rope = self.queries(x, offset)  # (batch, h, s, nope), (batch, h, s, rope)
        latent, rope_key = self.compress(x, offset)  # (batch, s, r), (batch, s, rope)
        kv = self.kv_b_proj(latent).view(batch, s, self.n_heads, -1).transpose(1, 2)  # (batch, h, s, nope + v)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, rope_key[:, None].expand(-1, self.n_heads, -1, -1)], dim=-1)  # (batch, h, s, qk)
        keys, values = cache.update(layer, k, v, offset)  # (batch, h, t, qk), (batch, h, t, v)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (batch, h, s, qk)
        visible = None  # one new position sees every cached one; s new ones see causally: j <= offset + i
        if s > 1:
            visible = (
                torch.arange(offset + s, device=x.device) <= torch.arange(offset, offset + s, device=x.device)[:, None]
            )
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, scale=self.scale)  # (b, h, s, v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, s, self.n_heads * self.v_head_dim))


# --------------------------------------------------------------------------------------
# The accounting: what is cached, and what each way computes
# --------------------------------------------------------------------------------------


@exercise("10.3", "What MLA caches, per token and layer", points=2)
def cache_elements(config: DeepSeekConfig) -> dict[str, int]:
    """The numbers cached per token and per layer by MLA, naive and absorbed.

    - ``"naive"``: every head's full key and value, as a Chapter 8 cache of the expanded keys and values
      holds them (DeepSeek's ``k_cache`` and ``v_cache``): per head, a key of ``qk_nope_head_dim +
      qk_rope_head_dim`` features (the shared RoPE key is copied into every head's key) and a value of
      ``v_head_dim``.
    - ``"latent"``: the latent (``kv_lora_rank``) and the one RoPE key all heads share
      (``qk_rope_head_dim``), what :class:`LatentCache` holds.

    Count from the sizes only (build nothing). At V3's shapes: 128 · (192 + 128) = 40,960 and 512 + 64 = 576.

    Args:
        config: a :class:`~course_lib.deepseek.DeepSeekConfig`.

    Returns:
        ``{"naive": int, "latent": int}``, Python ``int`` s.

    Raises:
        ValueError: if ``config`` is not a ``DeepSeekConfig``.

    Example:
        >>> cache_elements(DeepSeekConfig.tiny())  # 3 heads · (10 + 6 + 12), and 16 + 6
        {'naive': 84, 'latent': 22}
    """
    raise NotImplementedError


def cache_bytes(
    config: DeepSeekConfig, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16, kind: str = "latent"
) -> int:
    """The bytes of ``config``'s cache for ``batch`` texts of ``seq_len`` tokens, in all ``n_layers`` layers:
    :func:`cache_elements` (``kind`` ``"latent"`` or ``"naive"``) times layers, tokens, texts and the dtype's
    size. The MTP modules' layers are not counted (decoding without speculation does not run them)."""
    _check_config(config)
    if kind not in ("latent", "naive"):
        raise ValueError(f"kind must be 'latent' or 'naive', got {kind!r}")
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        _check_positive_int(name, value)
    return cache_elements(config)[kind] * config.n_layers * seq_len * batch * dtype.itemsize


def _attention_config(n_heads: int, head_dim: int, n_layers: int, n_kv_heads: int) -> LlamaConfig:
    """A Llama configuration with these attention sizes, for Chapter 8's ``kv_cache_bytes`` (which reads
    only the layers, the key/value heads and the head width; the other sizes are placeholders)."""
    return LlamaConfig(
        vocab_size=1, d_model=n_heads * head_dim, n_layers=n_layers, n_heads=n_heads, d_ff=1, context_length=1,
        n_kv_heads=n_kv_heads,
    )  # fmt: skip


def kv_cache_table_v2(n_heads: int = 128, head_dim: int = 128, n_layers: int = 1, n_groups: int = 8) -> list[dict]:
    """DeepSeek-V2's Table 1 (arXiv:2405.04434, §2.1.4): the cache per token, in numbers (elements).

    MHA ``2 n_h d_h l``, GQA ``2 n_g d_h l``, MQA ``2 d_h l`` (Chapter 8's :func:`~course_lib.memory.kv_cache_bytes`
    in a one-byte dtype counts them), and MLA ``(d_c + d_h^R) l`` with V2's choice ``d_c = 4 d_h`` and
    ``d_h^R = d_h / 2``, that is ``4.5 d_h l``. Each row: ``attention``, ``elements`` (an ``int``) and
    ``gqa_groups``, the number of GQA groups with the same cache (``elements / (2 d_h l)``: 2.25 for MLA).
    Defaults: V2's 128 heads of width 128, one layer, GQA with 8 groups.
    """
    for name, value in (("n_heads", n_heads), ("head_dim", head_dim), ("n_layers", n_layers), ("n_groups", n_groups)):
        _check_positive_int(name, value)
    if head_dim % 2 or n_heads % n_groups:
        raise ValueError(
            f"head_dim ({head_dim}) must be even and n_groups ({n_groups}) must divide n_heads ({n_heads})"
        )

    def elements(n_kv_heads: int) -> int:  # one byte a number: Chapter 8's bytes are elements
        return kv_cache_bytes(_attention_config(n_heads, head_dim, n_layers, n_kv_heads), 1, 1, torch.int8)

    rows = {
        "MHA": elements(n_heads),
        f"GQA ({n_groups} groups)": elements(n_groups),
        "MQA": elements(1),
        "MLA": (4 * head_dim + head_dim // 2) * n_layers,  # d_c = 4 d_h, d_h^R = d_h / 2
    }
    return [
        {"attention": name, "elements": elements, "gqa_groups": elements / (2 * head_dim * n_layers)}
        for name, elements in rows.items()
    ]


def attention_flops(config: DeepSeekConfig, seq: int, context: int, absorbed: bool) -> dict[str, int]:
    """The matrix-product operations (two per multiply-add) one MLA layer spends on ``seq`` new positions that
    attend to ``context`` positions (the new ones included), and the numbers it reads from the cache.

    Only what differs between the two ways is counted; the query, the compression and ``o_proj`` are the
    same in both. Naive (with an :class:`ExpandedCache`): expand the new positions' keys and values
    (``2 s r h (nope + v)``), scores over keys ``qk_head_dim`` wide and sums of values (``2 h s t (qk + v)``).
    Absorbed: absorb the queries (``2 s h nope r``), scores over ``r + rope`` and sums of latents
    (``2 h s t (2r + rope)``), then the values' up-projection (``2 s h r v``). Masked scores are counted, as a
    plain implementation computes them. Returns ``{"flops": int, "cache_reads": int}`` (``context`` times
    :func:`cache_elements`).
    """
    _check_config(config)
    for name, value in (("seq", seq), ("context", context)):
        _check_positive_int(name, value)
    if context < seq:
        raise ValueError(f"context ({context}) must be at least seq ({seq})")
    c, s, t = config, seq, context
    h, r, nope, rope, v = c.n_heads, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    if absorbed:
        flops = 2 * s * h * nope * r + 2 * h * s * t * (2 * r + rope) + 2 * s * h * r * v
    else:
        flops = 2 * s * r * h * (nope + v) + 2 * h * s * t * (nope + rope + v)
    return {"flops": flops, "cache_reads": t * cache_elements(config)["latent" if absorbed else "naive"]}


# --------------------------------------------------------------------------------------
# Measured: one decoding step and one prefill, naive against absorbed
# --------------------------------------------------------------------------------------


def _median_seconds(repeats: int, fn, *args) -> float:
    import statistics
    import time

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_mla(
    config: DeepSeekConfig, contexts, lengths=(), batch: int = 1, repeats: int = 3, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Median wall-clock seconds of one MLA layer of ``config`` on this machine, naive against absorbed.

    Decoding, for each ``t`` of ``contexts``: one new token per text attending to ``t`` positions, the ``t - 1``
    earlier ones already cached (random numbers: the time does not depend on them), through an
    :class:`ExpandedCache` (``"naive"``, :meth:`~MultiHeadLatentAttention.forward_expanded`) and a
    :class:`LatentCache` (``"absorbed"``, :meth:`~MultiHeadLatentAttention.forward_absorbed`); each row also gives
    both caches' bytes (float32): ``naive_bytes``, ``latent_bytes``. Prefill, for each ``t`` of ``lengths``: a
    prompt of ``t`` tokens, by :meth:`~MultiHeadLatentAttention.forward` and by ``forward_absorbed`` at offset 0.

    Returns:
        ``(decode_rows, prefill_rows)``: dicts with ``context`` (or ``length``), ``naive`` and ``absorbed``.
    """
    _check_config(config)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attn = MultiHeadLatentAttention(config).eval()
    decode, prefill = [], []
    with torch.no_grad():
        for t in contexts:
            _check_positive_int("context", t)
            latent = LatentCache.for_config(config, batch, t, n_layers=1)
            expanded = ExpandedCache.for_config(config, batch, t, n_layers=1)
            for store in (*latent._tensors, *expanded._tensors):
                store.normal_(generator=generator)
            x = torch.randn(batch, 1, config.d_model, generator=generator)
            naive = _median_seconds(repeats, attn.forward_expanded, x, expanded, t - 1)
            absorbed = _median_seconds(repeats, attn.forward_absorbed, x, latent, t - 1)
            decode.append(
                {"context": t, "naive": naive, "absorbed": absorbed, "naive_bytes": expanded.nbytes,
                 "latent_bytes": latent.nbytes}
            )  # fmt: skip
        for t in lengths:
            _check_positive_int("length", t)
            latent = LatentCache.for_config(config, batch, t, n_layers=1)
            x = torch.randn(batch, t, config.d_model, generator=generator)
            naive = _median_seconds(repeats, attn, x)
            absorbed = _median_seconds(repeats, attn.forward_absorbed, x, latent, 0)
            prefill.append({"length": t, "naive": naive, "absorbed": absorbed})
    return decode, prefill
