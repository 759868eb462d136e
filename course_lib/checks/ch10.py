"""Visible checks of Chapter 10 — Multi-head Latent Attention.

Expected values are written out (V3's 40,960 and 576, from its published sizes), or computed here with
PyTorch's own operations: MLA written out as DeepSeek-V2 §2.1 states it (the low-rank projections, RMSNorm,
RoPE on the decoupled part with Hugging Face's frequencies, an explicit causal softmax), in float64.
The unit tests (tests/test_mla.py) check the course's module against Hugging Face's ``DeepseekV3Attention``.
"""

from course_lib.checks import learner_model, seeded_randn
from course_lib.deepseek import DeepSeekConfig
from course_lib.grading import visible_check

import math

import torch

F32, F64 = torch.float32, torch.float64


def _config(**overrides) -> DeepSeekConfig:
    return DeepSeekConfig.tiny(**overrides)


def _state(seed: int, c: DeepSeekConfig) -> dict:
    """Random weights of every projection and norm, named as the module (and Hugging Face) names them."""
    h, qk = c.n_heads, c.qk_head_dim
    shapes = {
        "kv_a_proj_with_mqa.weight": (c.kv_lora_rank + c.qk_rope_head_dim, c.d_model),
        "kv_b_proj.weight": (h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank),
        "o_proj.weight": (c.d_model, h * c.v_head_dim),
    }
    if c.q_lora_rank is None:
        shapes["q_proj.weight"] = (h * qk, c.d_model)
    else:
        shapes["q_a_proj.weight"] = (c.q_lora_rank, c.d_model)
        shapes["q_b_proj.weight"] = (h * qk, c.q_lora_rank)
    state = {
        name: seeded_randn(seed + i, *shape) / math.sqrt(shape[1]) for i, (name, shape) in enumerate(shapes.items())
    }
    state["kv_a_layernorm.weight"] = 1 + 0.2 * seeded_randn(seed + 10, c.kv_lora_rank)
    if c.q_lora_rank is not None:
        state["q_a_layernorm.weight"] = 1 + 0.2 * seeded_randn(seed + 11, c.q_lora_rank)
    return state


def _model(t, c: DeepSeekConfig, state: dict):
    """The learner's MultiHeadLatentAttention of the config ``c`` (made in their process), in float64."""
    overrides = {name: getattr(c, name) for name in _SIZES}
    config = t.learner("mla").DeepSeekConfig.tiny(**overrides)
    return learner_model(t, "mla", "MultiHeadLatentAttention", state, config)


_SIZES = (
    "d_model", "n_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "context_length", "rope_base", "rope_interleaved",
)  # fmt: skip


def _rms(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rotate(x, positions, c: DeepSeekConfig):
    """RoPE on the last dimension of ``x`` (``(..., seq, rope)``): Hugging Face's frequencies, in the config's
    pairing (adjacent pairs when ``rope_interleaved``, else the two halves)."""
    dim = c.qk_rope_head_dim
    inv_freq = 1.0 / (c.rope_base ** (torch.arange(0, dim, 2, dtype=F32) / dim))
    angles = positions.to(F32)[:, None] * inv_freq  # (seq, rope / 2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if c.rope_interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    a, b = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def _latents(x, state, c: DeepSeekConfig, offset: int = 0):
    """The latents ``(batch, seq, r)`` and RoPE keys ``(batch, seq, rope)`` MLA caches for ``x`` at ``offset ...``."""
    kv_a = x @ state["kv_a_proj_with_mqa.weight"].T
    positions = torch.arange(offset, offset + x.shape[1])
    latent = _rms(kv_a[..., : c.kv_lora_rank], state["kv_a_layernorm.weight"], c.norm_eps)
    return latent, _rotate(kv_a[..., c.kv_lora_rank :], positions, c)


def _expected(x, state, c: DeepSeekConfig, offset: int = 0):
    """Causal MLA over ``x`` at positions ``offset ...``, written out with einsum and an explicit softmax."""
    batch, seq, _ = x.shape
    h, nope, rope = c.n_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
    if c.q_lora_rank is None:
        q = x @ state["q_proj.weight"].T
    else:
        compressed = _rms(x @ state["q_a_proj.weight"].T, state["q_a_layernorm.weight"], c.norm_eps)
        q = compressed @ state["q_b_proj.weight"].T
    q = q.view(batch, seq, h, nope + rope).transpose(1, 2)  # (batch, h, seq, qk)
    positions = torch.arange(offset, offset + seq)
    q = torch.cat((q[..., :nope], _rotate(q[..., nope:], positions, c)), dim=-1)
    latent, rope_key = _latents(x, state, c, offset)
    kv = (latent @ state["kv_b_proj.weight"].T).view(batch, seq, h, -1).transpose(1, 2)  # (batch, h, seq, nope + v)
    keys = torch.cat((kv[..., :nope], rope_key[:, None].expand(batch, h, seq, rope)), dim=-1)
    scores = torch.einsum("bhid,bhjd->bhij", q, keys) / math.sqrt(nope + rope)
    scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1), kv[..., nope:])  # (batch, h, seq, v)
    return out.transpose(1, 2).reshape(batch, seq, -1) @ state["o_proj.weight"].T


def _cache(t, attn, batch: int, max_seq_len: int, n_layers: int = 1):
    """A LatentCache for the learner's module ``attn``, in its dtype, made where it lives."""
    return t.learner("mla").LatentCache.for_module(attn, batch, max_seq_len, n_layers)


def _decode(attn, x, cache, splits, layer=0):
    """Feed ``x`` to ``forward_absorbed`` in pieces of the lengths ``splits``; the outputs joined."""
    outs, offset = [], 0
    for s in splits:
        outs.append(attn.forward_absorbed(x[:, offset : offset + s], cache, offset, layer))
        offset += s
    return torch.cat(outs, dim=1)


# -- 10.1 MultiHeadLatentAttention.forward ----------------------------------------------------------


@visible_check("10.1")
def tiny_with_query_compression(t):
    """the tiny config (width 48, 3 heads, ranks 24 and 16, adjacent-pair RoPE), x (2, 7, 48): MLA written out"""
    c = _config()
    state = _state(10, c)
    x = seeded_randn(11, 2, 7, 48)
    t.close(_model(t, c, state)(x), _expected(x, state, c), atol=1e-10, rtol=1e-10)


@visible_check("10.1")
def without_query_compression_split_halves_and_an_offset(t):
    """q_lora_rank None (q_proj), split-halves RoPE, 5 heads of 8 + 4 and values of 6, positions 9 to 14"""
    c = _config(
        q_lora_rank=None, rope_interleaved=False, n_heads=5, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6
    )
    state = _state(20, c)
    x = seeded_randn(21, 3, 6, 48)
    t.close(_model(t, c, state)(x, 9), _expected(x, state, c, offset=9), atol=1e-10, rtol=1e-10)


@visible_check("10.1", inputs=True)
def rejects_a_wrong_width(t):
    """x of width 47 for d_model 48 raises ValueError"""
    c = _config()
    t.raises(ValueError, _model(t, c, _state(30, c)), torch.zeros(1, 3, 47, dtype=F64))


# -- 10.2 MultiHeadLatentAttention.forward_absorbed -------------------------------------------------


@visible_check("10.2")
def prefill_then_one_token_at_a_time(t):
    """a prefill of 4 positions, then 3 single steps: the naive MLA over all 7, and the cache holds the latents"""
    c = _config()
    state = _state(40, c)
    attn = _model(t, c, state)
    x = seeded_randn(41, 2, 7, 48)
    cache = _cache(t, attn, batch=2, max_seq_len=10)
    t.close(_decode(attn, x, cache, (4, 1, 1, 1)), _expected(x, state, c), atol=1e-10, rtol=1e-10, what="outputs")
    latent, rope_key = _latents(x, state, c)
    t.close(t.value(cache.latents)[0, :, :7], latent, atol=1e-12, rtol=1e-12, what="cached latents")
    t.close(t.value(cache.rope_keys)[0, :, :7], rope_key, atol=1e-12, rtol=1e-12, what="cached RoPE keys")


@visible_check("10.2")
def three_new_positions_see_the_cache_and_each_other_causally(t):
    """no query compression, split halves: 2 positions, then 3 at once (causal among themselves), then 1"""
    c = _config(q_lora_rank=None, rope_interleaved=False)
    state = _state(50, c)
    attn = _model(t, c, state)
    x = seeded_randn(51, 1, 6, 48)
    cache = _cache(t, attn, batch=1, max_seq_len=6)
    t.close(_decode(attn, x, cache, (2, 3, 1)), _expected(x, state, c), atol=1e-10, rtol=1e-10)


@visible_check("10.2", inputs=True)
def rejects_a_cache_that_does_not_fit(t):
    """a cache of latent width 15 for kv_lora_rank 16, and a cache of batch 1 for x of batch 2, raise ValueError"""
    c = _config()
    attn = _model(t, c, _state(60, c))
    lib = t.learner("mla")
    x = torch.zeros(2, 3, 48, dtype=F64)
    t.raises(ValueError, attn.forward_absorbed, x, lib.LatentCache(1, 2, 8, 15, c.qk_rope_head_dim), 0)
    t.raises(ValueError, attn.forward_absorbed, x, _cache(t, attn, batch=1, max_seq_len=8), 0)


# -- 10.3 cache_elements ----------------------------------------------------------------------------


@visible_check("10.3")
def deepseek_v3(t):
    """V3 (128 heads, keys 128 + 64, values 128, latent 512): 40,960 numbers naive, 576 latent"""
    lib = t.learner("mla")
    t.equal(lib.cache_elements(lib.DeepSeekConfig.v3()), {"naive": 40960, "latent": 576})


@visible_check("10.3")
def tiny_config(t):
    """the tiny config (3 heads, keys 10 + 6, values 12, latent 16): 84 naive, 22 latent"""
    lib = t.learner("mla")
    t.equal(lib.cache_elements(lib.DeepSeekConfig.tiny()), {"naive": 84, "latent": 22})


@visible_check("10.3", inputs=True)
def rejects_what_is_not_a_config(t):
    """a dict of sizes raises ValueError"""
    lib = t.learner("mla")
    t.raises(ValueError, lib.cache_elements, {"n_heads": 128, "kv_lora_rank": 512})
