"""Chapter 10's Multi-head Latent Attention on the reference solutions, against its public references:
Hugging Face's ``DeepseekV3Attention`` (built offline from tiny random configurations of odd shapes, both
RoPE pairings, with and without query compression), what its cache holds, the cache shapes of DeepSeek-V3's
reference code (``inference/model.py``: ``k_cache``/``v_cache`` for ``attn_impl="naive"``, ``kv_cache``/
``pe_cache`` for ``"absorb"``), DeepSeek-V2's Table 1 (arXiv:2405.04434, §2.1.4), and every number Chapter 10
states.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import mla
from course_lib.deepseek import DeepSeekConfig
from course_lib.llama import LlamaConfig
from course_lib.memory import kv_cache_bytes
from course_lib.yarn import YaRN

import pytest
import torch
from conftest import randomize_weights_
from conftest import seeded_randn as _randn
from transformers import DeepseekV3Config, DynamicCache
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

F32, F64 = torch.float32, torch.float64

ODD = (
    dict(),
    dict(q_lora_rank=None),
    dict(rope_interleaved=False),
    dict(q_lora_rank=None, rope_interleaved=False, n_heads=5, qk_nope_head_dim=7, qk_rope_head_dim=4, v_head_dim=3),
    dict(n_heads=1, kv_lora_rank=9, q_lora_rank=13, qk_rope_head_dim=2, rope_base=500000.0),
    # YaRN as V3 sets it (a softmax factor, tables unscaled), and with only mscale set (tables scaled instead)
    dict(yarn=YaRN(factor=4.0, original_context=16, mscale=1.0, mscale_all_dim=1.0), qk_rope_head_dim=10),
    dict(yarn=YaRN(factor=6.5, original_context=11, beta_fast=8.0, beta_slow=0.5, mscale=0.7), rope_interleaved=False),
)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _pair(overrides: dict, seed: int = 0):
    """Hugging Face's DeepseekV3Attention with random weights (norm scales too), and the course's module with
    the same state dict, both float32 and in evaluation mode."""
    config = DeepSeekConfig.tiny(**overrides)
    hf_config = DeepseekV3Config(**config.hf_kwargs())
    hf_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = DeepseekV3Attention(hf_config, layer_idx=0).eval()
    randomize_weights_(hf)
    ours = mla.MultiHeadLatentAttention(config).eval()
    ours.load_state_dict(hf.state_dict())  # strict: every name and shape agrees
    return config, hf_config, hf, ours


def _hf_forward(hf_config, hf, x, offset=0, cache=None):
    batch, seq, _ = x.shape
    positions = torch.arange(offset, offset + seq)[None].expand(batch, -1)
    cos, sin = DeepseekV3RotaryEmbedding(hf_config)(x, positions)
    before = offset if cache is not None else 0  # positions already cached, which every new one sees
    t = before + seq
    hidden = torch.arange(t)[None, :] > torch.arange(before, t)[:, None]  # (seq, t): key j after query i
    mask = torch.zeros(seq, t).masked_fill(hidden, float("-inf"))[None, None].expand(batch, 1, seq, t)
    return hf(x, (cos, sin), mask, cache=cache)[0]


# -- the module against Hugging Face ----------------------------------------------------------------


def test_state_dicts_match_hugging_face_both_ways():
    for overrides in ODD[:2]:
        _, _, hf, ours = _pair(overrides)
        assert set(ours.state_dict()) == set(hf.state_dict())
        hf.load_state_dict(ours.state_dict())  # and back
        assert "rope.cos" not in ours.state_dict()  # the tables are computed, not learned
    names = set(mla.MultiHeadLatentAttention(DeepSeekConfig.tiny()).state_dict())
    assert names == {
        "q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
        "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight",
    }  # fmt: skip


@pytest.mark.parametrize("overrides", ODD)
def test_naive_forward_equals_hugging_face(overrides):
    """Equal to DeepseekV3Attention to 1e-5 in float32 (in practice a few float roundings), at offsets 0 and 11.

    Hugging Face's interleaved RoPE writes the rotated pairs de-interleaved (evens first, then odds) into both
    the query and the key: the same permutation of both, so every dot product, and the output, is unchanged."""
    config, hf_config, hf, ours = _pair(overrides, seed=1)
    for batch, seq, offset in ((1, 1, 0), (2, 7, 0), (3, 5, 11)):
        x = torch.randn(batch, seq, config.d_model, generator=torch.Generator().manual_seed(seq))
        with torch.no_grad():
            torch.testing.assert_close(ours(x, offset), _hf_forward(hf_config, hf, x, offset), atol=1e-5, rtol=1e-5)


def test_absorbed_and_expanded_decoding_equal_the_naive_forward_and_hugging_face_decoding():
    """A prefill of 4 then single steps: the absorbed step (latent cache), the expanded step (every head's keys
    and values cached) and Hugging Face's cached decoding all give the naive forward's rows (float32, 1e-5)."""
    for overrides in ODD:
        config, hf_config, hf, ours = _pair(overrides, seed=2)
        x = torch.randn(2, 9, config.d_model, generator=torch.Generator().manual_seed(3))
        latent = mla.LatentCache.for_config(config, batch=2, max_seq_len=9, n_layers=1)
        expanded = mla.ExpandedCache.for_config(config, batch=2, max_seq_len=9, n_layers=1)
        hf_cache = DynamicCache(config=hf_config)
        with torch.no_grad():
            whole = ours(x)
            outs = {"absorbed": [], "expanded": [], "hf": []}
            for start, stop in ((0, 4), *((i, i + 1) for i in range(4, 9))):
                piece = x[:, start:stop]
                outs["absorbed"].append(ours.forward_absorbed(piece, latent, start))
                outs["expanded"].append(ours.forward_expanded(piece, expanded, start))
                outs["hf"].append(_hf_forward(hf_config, hf, piece, start, cache=hf_cache))
        for name, pieces in outs.items():
            torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=1e-5, msg=name)
        # What Hugging Face caches is the latent cache: the normalised latent and the rotated RoPE key. Its keys
        # are stored de-interleaved when the pairs are adjacent, so they are compared as sets of pairs' norms.
        layer = hf_cache.layers[0]
        torch.testing.assert_close(layer.keys[:, 0], latent.latents[0], atol=1e-6, rtol=1e-6)
        half = config.qk_rope_head_dim // 2
        ours_rope = latent.rope_keys[0]
        if config.rope_interleaved:
            ours_rope = torch.cat([ours_rope[..., 0::2], ours_rope[..., 1::2]], dim=-1)
        torch.testing.assert_close(layer.values[:, 0], ours_rope, atol=1e-6, rtol=1e-6)
        assert layer.values.shape[-1] == 2 * half


def test_absorbed_equals_naive_in_float64_to_rounding():
    config = DeepSeekConfig.tiny(n_heads=4)
    torch.manual_seed(5)
    attn = mla.MultiHeadLatentAttention(config).double()
    x = _randn(6, 3, 10, config.d_model)
    cache = mla.LatentCache.for_module(attn, batch=3, max_seq_len=12, n_layers=2)  # float64, as the weights
    assert cache.latents.dtype == F64 and cache.latents.shape == (2, 3, 12, config.kv_lora_rank)
    got = torch.cat(
        [attn.forward_absorbed(x[:, :6], cache, 0, layer=1), attn.forward_absorbed(x[:, 6:], cache, 6, 1)], 1
    )
    torch.testing.assert_close(got, attn(x), atol=1e-12, rtol=1e-12)
    assert (cache.latents[0] == 0).all() and (cache.latents[1, :, 10:] == 0).all()


def test_rope_cannot_pass_through_the_compression():
    """Absorbing W_UK into the query is exact for the unrotated part, and wrong if the key were rotated after
    up-projection: R_j sits between the query and W_UK, so the folded query would depend on the key's position."""
    torch.manual_seed(7)
    r, d, t = 16, 8, 6
    w_uk = torch.randn(d, r, dtype=F64)
    c = torch.randn(t, r, dtype=F64)  # t cached latents
    q = torch.randn(d, dtype=F64)
    from course_lib.rope import RotaryEmbedding

    rope = RotaryEmbedding(d, 16).double()
    exact = q @ (c @ w_uk.T).T  # (t,): scores with unrotated keys
    torch.testing.assert_close((w_uk.T @ q) @ c.T, exact)  # absorbed: the same
    rotated = rope(q[None], offset=t - 1)[0] @ rope(c @ w_uk.T).T  # RoPE on the up-projected keys
    absorbed = (w_uk.T @ rope(q[None], offset=t - 1)[0]) @ c.T  # absorbing, then scoring the latents
    assert not torch.allclose(rotated, absorbed, atol=1e-3)
    assert torch.isclose(rotated[t - 1], rope(q[None])[0] @ (w_uk @ c[t - 1]))  # only distance 0 agrees


# -- the caches -------------------------------------------------------------------------------------


def test_latent_cache_shapes_writes_and_errors():
    cache = mla.LatentCache(3, 2, 10, 16, 6)
    assert cache.latents.shape == (3, 2, 10, 16) and cache.rope_keys.shape == (3, 2, 10, 6)
    assert cache.nbytes == 3 * 2 * 10 * 22 * 4
    latents, rope_keys = cache.update(1, torch.ones(2, 4, 16), torch.ones(2, 4, 6), 0)
    assert latents.shape == (2, 4, 16) and rope_keys.shape == (2, 4, 6)
    latents, _ = cache.update(1, torch.full((2, 1, 16), 5.0), torch.zeros(2, 1, 6), 4)
    assert latents[0, :, 0].tolist() == [1, 1, 1, 1, 5]
    for bad in (
        lambda: cache.update(3, torch.ones(2, 1, 16), torch.ones(2, 1, 6), 0),  # no layer 3
        lambda: cache.update(0, torch.ones(2, 1, 15), torch.ones(2, 1, 6), 0),  # latent width
        lambda: cache.update(0, torch.ones(1, 1, 16), torch.ones(1, 1, 6), 0),  # batch
        lambda: cache.update(0, torch.ones(2, 2, 16), torch.ones(2, 1, 6), 0),  # positions differ
        lambda: cache.update(0, torch.ones(2, 1, 16), torch.ones(2, 1, 6), -1),
        lambda: cache.update(0, torch.ones(2, 3, 16), torch.ones(2, 3, 6), 8),  # overflow
    ):
        with pytest.raises(ValueError):
            bad()
    assert (cache.latents[0] == 0).all()  # nothing written by the failed calls
    with pytest.raises(ValueError, match="overflow"):
        cache.update(0, torch.ones(2, 3, 16), torch.ones(2, 3, 6), 8)
    with pytest.raises(ValueError):
        mla.LatentCache(1, 1, 4, 16, 6, dtype=torch.int64)


def test_the_reference_codes_cache_shapes():
    """DeepSeek-V3's inference/model.py: attn_impl "naive" caches k_cache (batch, seq, n_heads, qk_head_dim) and
    v_cache (..., v_head_dim); "absorb" caches kv_cache (batch, seq, kv_lora_rank) and pe_cache (..., rope)."""
    v3 = DeepSeekConfig.v3()
    expanded = mla.ExpandedCache.for_config(v3, batch=1, max_seq_len=1, n_layers=1, dtype=torch.bfloat16)
    latent = mla.LatentCache.for_config(v3, batch=1, max_seq_len=1, n_layers=1, dtype=torch.bfloat16)
    assert expanded.keys.shape == (1, 1, 128, 1, 192) and expanded.values.shape == (1, 1, 128, 1, 128)
    assert expanded.nbytes == 2 * 40960 and latent.nbytes == 2 * 576
    assert mla.cache_elements(v3) == {"naive": 40960, "latent": 576}


# -- the module's input errors ----------------------------------------------------------------------


def test_clear_errors():
    with pytest.raises(ValueError, match="kv_lora_rank"):
        DeepSeekConfig.tiny(kv_lora_rank=48)  # not smaller than d_model: the config refuses it
    with pytest.raises(ValueError, match="q_lora_rank"):
        DeepSeekConfig.tiny(q_lora_rank=64)
    with pytest.raises(ValueError, match="even"):
        DeepSeekConfig.tiny(qk_rope_head_dim=5)
    with pytest.raises(ValueError, match="DeepSeekConfig"):
        mla.MultiHeadLatentAttention(LlamaConfig(100, 48, 1, 3, 72, 64))
    attn = mla.MultiHeadLatentAttention(DeepSeekConfig.tiny())
    with pytest.raises(ValueError, match="48"):
        attn(torch.zeros(1, 3, 47))
    with pytest.raises(ValueError, match="context length"):
        attn(torch.zeros(1, 3, 48), offset=62)
    cache = mla.LatentCache.for_config(attn.config, batch=1, max_seq_len=4, n_layers=1)
    with pytest.raises(ValueError, match="overflow"):
        attn.forward_absorbed(torch.zeros(1, 3, 48), cache, offset=2)
    with pytest.raises(ValueError, match="LatentCache"):
        attn.forward_absorbed(torch.zeros(1, 3, 48), "cache", offset=0)


# -- the accounting ---------------------------------------------------------------------------------


def test_v2_table_1():
    """DeepSeek-V2, Table 1 and §2.1.4: MHA 2 n_h d_h l, GQA 2 n_g d_h l, MQA 2 d_h l, MLA (d_c + d_h^R) l
    = 9/2 d_h l with d_c = 4 d_h and d_h^R = d_h / 2: "equal to GQA with only 2.25 groups"."""
    for n_h, d_h, layers, n_g in ((128, 128, 60, 8), (32, 64, 1, 4), (12, 10, 3, 3)):
        rows = {row["attention"].split(" ")[0]: row for row in mla.kv_cache_table_v2(n_h, d_h, layers, n_g)}
        assert rows["MHA"]["elements"] == 2 * n_h * d_h * layers
        assert rows["GQA"]["elements"] == 2 * n_g * d_h * layers
        assert rows["MQA"]["elements"] == 2 * d_h * layers
        assert rows["MLA"]["elements"] == 9 * d_h * layers // 2
        assert rows["MLA"]["gqa_groups"] == 2.25
    v2 = DeepSeekConfig.v2()  # V2's own d_c = 512 = 4 · 128 and d_h^R = 64 = 128 / 2
    assert mla.cache_elements(v2)["latent"] == {r["attention"]: r["elements"] for r in mla.kv_cache_table_v2()}["MLA"]
    with pytest.raises(ValueError):
        mla.kv_cache_table_v2(128, 128, 1, 7)


def test_bytes_per_token_and_flops():
    v3 = DeepSeekConfig.v3()
    assert mla.cache_bytes(v3, 1) == 576 * 61 * 2 == 70272  # bfloat16, 61 layers
    assert mla.cache_bytes(v3, 1, kind="naive") == 40960 * 61 * 2
    assert mla.cache_bytes(v3, 4096, batch=3, dtype=torch.float32) == 576 * 61 * 4096 * 3 * 4
    # A multi-head model with V3's 128 heads of width 128 and 61 layers caches 2 · 128 · 128 per token and layer.
    mha = LlamaConfig(1, 128 * 128, 61, 128, 1, 1)
    assert kv_cache_bytes(mha, 1, 1, torch.bfloat16) == 2 * 128 * 128 * 61 * 2
    # Decode one token against t = 4096: the naive way reads 40,960 t numbers, the absorbed 576 t.
    naive, absorbed = (mla.attention_flops(v3, 1, 4096, a) for a in (False, True))
    assert naive["cache_reads"] == 40960 * 4096 and absorbed["cache_reads"] == 576 * 4096
    h, r = 128, 512
    assert naive["flops"] == 2 * r * h * 256 + 2 * h * 4096 * 320
    assert absorbed["flops"] == 2 * h * 128 * r + 2 * h * 4096 * (2 * r + 64) + 2 * h * r * 128
    with pytest.raises(ValueError):
        mla.attention_flops(v3, 5, 4, True)


def test_flop_counts_match_pytorchs_counter():
    """attention_flops counts what the two ways' matrix products do (PyTorch's FlopCounterMode on the tiny
    config, minus the products both ways share: the query, the compression and o_proj)."""
    from torch.utils.flop_counter import FlopCounterMode

    config = DeepSeekConfig.tiny()
    attn = mla.MultiHeadLatentAttention(config)
    x = torch.randn(1, 5, config.d_model)

    def counted(fn, *args):
        with FlopCounterMode(display=False) as counter:
            fn(*args)
        return counter.get_total_flops()

    shared = counted(lambda: (attn.queries(x), attn.compress(x), attn.o_proj(torch.zeros(1, 5, 36))))
    for absorbed in (False, True):
        cache = (mla.LatentCache if absorbed else mla.ExpandedCache).for_config(config, 1, 5, n_layers=1)
        step = attn.forward_absorbed if absorbed else attn.forward_expanded
        with torch.no_grad():
            total = counted(step, x, cache, 0)
        assert total - shared == mla.attention_flops(config, 5, 5, absorbed)["flops"], absorbed
