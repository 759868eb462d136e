"""Reference solutions for Chapter 10 (course_lib/mla.py)."""

from __future__ import annotations

from course_lib.deepseek import DeepSeekConfig
from course_lib.mla import LatentCache

import torch
import torch.nn.functional as F


class MultiHeadLatentAttention:
    def forward(self, x, offset=0):
        q_nope, q_rope = self.queries(x, offset)  # (batch, h, seq, nope), (batch, h, seq, rope); checks x
        latent, rope_key = self.compress(x, offset)  # (batch, seq, r), (batch, seq, rope)
        batch, seq, _ = x.shape
        kv = self.kv_b_proj(latent).view(batch, seq, self.n_heads, -1).transpose(1, 2)  # (batch, h, seq, nope + v)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        # One RoPE key for every head: a view repeated along the head dimension, not a copy.
        k = torch.cat([k_nope, rope_key[:, None].expand(-1, self.n_heads, -1, -1)], dim=-1)  # (batch, h, seq, qk)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (batch, h, seq, qk)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (batch, h, seq, v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.v_head_dim))

    def forward_absorbed(self, x, cache, offset, layer=0):
        if not isinstance(cache, LatentCache):
            raise ValueError(f"cache must be a LatentCache, got {type(cache).__name__}")
        expected = (
            x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else None,
            self.kv_lora_rank,
            self.qk_rope_head_dim,
        )
        if (cache.batch, cache.kv_lora_rank, cache.qk_rope_head_dim) != expected:
            raise ValueError(
                f"the cache holds (batch, kv_lora_rank, qk_rope_head_dim) = "
                f"{(cache.batch, cache.kv_lora_rank, cache.qk_rope_head_dim)}, this call needs {expected}"
            )
        q_nope, q_rope = self.queries(x, offset)  # (batch, h, s, nope), (batch, h, s, rope); checks x and offset
        latent, rope_key = self.compress(x, offset)  # (batch, s, r), (batch, s, rope)
        latents, rope_keys = cache.update(layer, latent, rope_key, offset)  # (batch, t, r), (batch, t, rope)
        batch, s, _ = x.shape
        t = offset + s
        w = self.kv_b_proj.weight.view(self.n_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim :]  # (h, nope, r), (h, v, r)
        q_latent = q_nope @ w_uk  # (batch, h, s, r): W_UK folded into the query
        # Every head's queries as rows of one matrix, so that the cache is read once for all heads (broadcasting
        # latents[:, None] against the heads would copy it once per head).
        rows = batch, self.n_heads * s
        scores = q_latent.reshape(*rows, -1) @ latents.transpose(1, 2)  # (batch, h * s, t): against the latents
        scores = scores + q_rope.reshape(*rows, -1) @ rope_keys.transpose(1, 2)  # and the shared RoPE keys
        scores = scores.view(batch, self.n_heads, s, t) * self.scale  # (batch, h, s, t)
        hidden = torch.arange(t, device=x.device) > torch.arange(offset, t, device=x.device)[:, None]  # (s, t)
        probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
        context = (probs.view(*rows, t) @ latents).view(batch, self.n_heads, s, -1)  # (batch, h, s, r)
        out = context @ w_uv.transpose(-1, -2)  # (batch, h, s, v): W_UV applied once, after the sum
        return self.o_proj(out.transpose(1, 2).reshape(batch, s, self.n_heads * self.v_head_dim))


def cache_elements(config):
    if not isinstance(config, DeepSeekConfig):
        raise ValueError(f"config must be a DeepSeekConfig, got {type(config).__name__}")
    c = config
    naive = c.n_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim)  # every head's key and value
    return {"naive": naive, "latent": c.kv_lora_rank + c.qk_rope_head_dim}  # one latent, one shared RoPE key
