"""Chapter 15's windows, sinks and blockwise attention on the reference solutions, against their public references:
``torch.nn.functional.scaled_dot_product_attention`` with explicit masks, Hugging Face's mask functions
(``transformers.masking_utils``), gpt-oss's ``eager_attention_forward`` with its sink logits and its whole
``GptOssAttention`` layer (RoPE, window, sinks, prefilling and decoding through its ``DynamicCache``), and the
configurations of gpt-oss, Gemma 2/3 and Mistral in transformers for the layer patterns and windows.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import long_context as lc

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_randn as _randn
from transformers import DynamicCache, Gemma2Config, Gemma3TextConfig, GptOssConfig, MistralConfig
from transformers.masking_utils import create_sliding_window_causal_mask, sliding_window_causal_mask_function
from transformers.models.gpt_oss.modeling_gpt_oss import (
    GptOssAttention,
    GptOssRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _qkv(seed, batch, heads, seq, d, dtype=torch.float32):
    return tuple(_randn(seed + i, batch, heads, seq, d, dtype=dtype) for i in range(3))


def _causal(seq):
    return torch.ones(seq, seq, dtype=torch.bool).tril()


# -- windows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq, window", [(1, 1), (7, 1), (7, 3), (9, 4), (9, 9), (5, 12)])
def test_the_window_mask_is_hugging_faces(seq, window):
    hf = sliding_window_causal_mask_function(window)
    zero, pos = torch.tensor(0), torch.arange(seq)
    expected = hf(zero, zero, pos[:, None], pos[None, :])  # (seq, seq), evaluated on index tensors as HF does
    assert torch.equal(lc.streaming_mask(seq, window), expected)


def test_kept_first_tokens_join_the_window():
    mask = lc.streaming_mask(8, 3, n_keep=2)
    i, j = torch.arange(8)[:, None], torch.arange(8)[None, :]
    assert torch.equal(mask, (j <= i) & ((i - j < 3) | (j < 2)))
    assert mask.sum(-1).tolist() == [1, 2, 3, 4, 5, 5, 5, 5]  # at most n_keep + window keys per query


@pytest.mark.parametrize("window", [1, 3, 5, 13, 40])
def test_window_attention_is_sdpa_with_the_window_mask(window):
    q, k, v = _qkv(0, 2, 3, 13, 5)
    i, j = torch.arange(13)[:, None], torch.arange(13)[None, :]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) & (i - j < window))
    torch.testing.assert_close(lc.local_attention(q, k, v, window), expected, atol=1e-6, rtol=1e-5)
    if window >= 13:
        torch.testing.assert_close(
            lc.local_attention(q, k, v, window), F.scaled_dot_product_attention(q, k, v, is_causal=True)
        )


class _Sinks(torch.nn.Module):
    """What gpt-oss's eager_attention_forward reads from its module: the sinks and the key/value groups."""

    def __init__(self, sinks):
        super().__init__()
        self.sinks = torch.nn.Parameter(sinks)
        self.num_key_value_groups = 1


@pytest.mark.parametrize("seq, window", [(7, None), (11, 4), (9, 1)])
def test_sinks_equal_gpt_oss_eager_attention(seq, window):
    q, k, v = _qkv(10, 2, 3, seq, 5)
    sinks = _randn(13, 3, dtype=torch.float32)
    hf_mask = lc.streaming_mask(seq, window or seq)
    additive = torch.zeros(seq, seq).masked_fill(~hf_mask, float("-inf"))[None, None]
    with torch.no_grad():
        expected, _ = eager_attention_forward(_Sinks(sinks), q, k, v, additive, scaling=1 / math.sqrt(5))
    actual = lc.local_attention(q, k, v, window, sinks=sinks)  # (batch, heads, seq, d)
    torch.testing.assert_close(actual.transpose(1, 2), expected, atol=1e-6, rtol=1e-5)


def test_a_gpt_oss_window_layer_prefilling_and_decoding_through_its_cache():
    """Hugging Face's whole GptOssAttention (window 4, sinks, RoPE, its own mask and DynamicCache) at odd sizes."""
    config = GptOssConfig(
        hidden_size=14,
        num_attention_heads=3,
        num_key_value_heads=3,
        head_dim=6,
        sliding_window=4,
        num_hidden_layers=1,
        layer_types=["sliding_attention"],
        vocab_size=11,
        intermediate_size=8,
        num_local_experts=2,
        num_experts_per_tok=1,
        attn_implementation="eager",
    )
    layer = GptOssAttention(config, 0).eval()
    with torch.no_grad():
        for i, parameter in enumerate(layer.parameters()):
            parameter.copy_(0.5 * _randn(90 + i, *parameter.shape, dtype=torch.float32))
    rope = GptOssRotaryEmbedding(config)
    x = _randn(99, 2, 11, 14, dtype=torch.float32)  # (batch, seq, hidden)
    cos, sin = rope(x, torch.arange(11)[None])
    with torch.no_grad():
        mask = create_sliding_window_causal_mask(config=config, inputs_embeds=x, attention_mask=None, cache=None)
        prefill, _ = layer(x, (cos, sin), mask)
        cache, steps = DynamicCache(config=config), []
        for p in range(11):
            step = x[:, p : p + 1]
            mask = create_sliding_window_causal_mask(
                config=config, inputs_embeds=step, attention_mask=None, cache=cache
            )
            steps.append(layer(step, rope(step, torch.tensor([[p]])), mask, cache=cache)[0])
        heads = [proj(x).view(2, 11, 3, 6).transpose(1, 2) for proj in (layer.q_proj, layer.k_proj, layer.v_proj)]
        q, k = apply_rotary_pos_emb(heads[0], heads[1], cos, sin)  # (batch, heads, seq, head_dim)
        ours = lc.local_attention(q, k, heads[2], 4, sinks=layer.sinks)
        decoded = lc.decode_with_rolling_cache(q, k, heads[2], 4, sinks=layer.sinks)
        for attended, expected in ((ours, prefill), (decoded, torch.cat(steps, dim=1))):
            out = layer.o_proj(attended.transpose(1, 2).reshape(2, 11, 18))
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_a_sink_takes_weight_and_gives_no_value():
    q, k, v = _qkv(20, 1, 2, 5, 3, dtype=torch.float64)
    plain = lc.local_attention(q, k, v)
    very_negative = lc.local_attention(q, k, v, sinks=torch.tensor([-1e4, -1e4], dtype=torch.float64))
    torch.testing.assert_close(very_negative, plain, atol=1e-12, rtol=0)
    huge = lc.local_attention(q, k, v, sinks=torch.tensor([1e4, 1e4], dtype=torch.float64))
    assert huge.abs().max() < 1e-12  # all weight on the sink, which carries nothing


@pytest.mark.parametrize(
    "window, n_keep, sinks", [(1, 0, False), (3, 0, False), (4, 0, True), (3, 2, False), (20, 0, True)]
)
def test_decoding_through_the_rolling_buffer_equals_recomputing(window, n_keep, sinks):
    q, k, v = _qkv(30, 2, 3, 11, 4)
    s = _randn(33, 3, dtype=torch.float32) if sinks else None
    expected = lc.local_attention(q, k, v, window, sinks=s, n_keep=n_keep)
    torch.testing.assert_close(
        lc.decode_with_rolling_cache(q, k, v, window, sinks=s, n_keep=n_keep), expected, atol=1e-6, rtol=1e-5
    )


def test_the_rolling_buffer_writes_position_mod_window():
    cache = lc.RollingKVCache(window=3, batch=1, heads=1, d_head=2)
    slots = [cache.append(torch.full((1, 1, 1, 2), float(p)), torch.zeros(1, 1, 1, 2)) for p in range(7)]
    assert slots == [0, 1, 2, 0, 1, 2, 0]
    assert cache.keys()[0, 0, :, 0].tolist() == [6.0, 4.0, 5.0]
    kept = lc.RollingKVCache(window=3, batch=1, heads=1, d_head=2, n_keep=2)
    assert [kept.slot(p) for p in range(8)] == [0, 1, 2, 3, 4, 2, 3, 4]


def test_the_buffer_bytes_do_not_grow():
    cache = lc.RollingKVCache(window=5, batch=2, heads=3, d_head=4, n_keep=1, dtype=torch.bfloat16)
    before = cache.nbytes
    for _ in range(20):
        cache.append(torch.ones(2, 3, 1, 4), torch.ones(2, 3, 1, 4))
    assert cache.nbytes == before == 2 * 2 * 3 * (5 + 1) * 4 * 2


def test_rolling_cache_rejects_bad_sizes():
    with pytest.raises(ValueError, match="window"):
        lc.RollingKVCache(window=0, batch=1, heads=1, d_head=1)
    with pytest.raises(ValueError, match="n_keep"):
        lc.RollingKVCache(window=2, batch=1, heads=1, d_head=1, n_keep=-1)


def test_layer_patterns_are_the_configs():
    assert lc.alternating_layers(36, 2) == GptOssConfig(num_hidden_layers=36).layer_types
    assert lc.alternating_layers(26, 2) == Gemma2Config(num_hidden_layers=26).layer_types
    assert lc.alternating_layers(34, 6) == Gemma3TextConfig(num_hidden_layers=34).layer_types


def test_gpt_oss_is_its_config():
    oss = GptOssConfig()
    assert {
        "n_layers": oss.num_hidden_layers,
        "kv_heads": oss.num_key_value_heads,
        "head_dim": oss.head_dim,
        "window": oss.sliding_window,
        "full_every": 2,
    } == lc.GPT_OSS
    assert lc.alternating_layers(lc.GPT_OSS["n_layers"], lc.GPT_OSS["full_every"]) == oss.layer_types


def test_cache_bytes_from_the_configs():
    oss = GptOssConfig()  # gpt-oss defaults: 36 layers, 8 key/value heads of 64, window 128, every other layer full
    per_token_layer = 2 * oss.num_key_value_heads * oss.head_dim * 2  # bfloat16
    n_full = oss.layer_types.count("full_attention")
    for context in (1, 128, 129, 131072):
        expected = per_token_layer * (n_full * context + (36 - n_full) * min(context, oss.sliding_window))
        got = lc.kv_cache_bytes(context, oss.layer_types, oss.sliding_window, oss.num_key_value_heads, oss.head_dim)
        assert got == expected
    mistral = MistralConfig()  # every layer windowed at 4,096
    layers = ["sliding_attention"] * mistral.num_hidden_layers
    kv, hd = mistral.num_key_value_heads, mistral.head_dim
    assert lc.kv_cache_bytes(32768, layers, mistral.sliding_window, kv, hd) == lc.kv_cache_bytes(
        4096, layers, 4096, kv, hd
    )
    with pytest.raises(ValueError, match="layer type"):
        lc.kv_cache_bytes(8, ["global"], 4, 1, 1)


def test_the_cache_measured_is_the_formula():
    window, context = 6, 17
    cache = lc.RollingKVCache(window=window, batch=1, heads=2, d_head=8, dtype=torch.bfloat16)
    assert cache.nbytes == lc.kv_cache_bytes(context, ["sliding_attention"], window, 2, 8)


# -- the online softmax and blockwise attention ------------------------------------------------------


def test_the_docstring_example():
    out, _, l_ = lc.online_softmax_update(
        torch.zeros(1, 1),
        torch.tensor([float("-inf")]),
        torch.zeros(1),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0], [3.0]]),
    )
    torch.testing.assert_close(
        out / l_[:, None], torch.softmax(torch.tensor([[0.0, 1.0]]), -1) @ torch.tensor([[1.0], [3.0]])
    )


@pytest.mark.parametrize("seq, block", [(1, 1), (13, 1), (13, 4), (13, 5), (13, 13), (13, 64), (30, 7)])
def test_blockwise_equals_causal_attention(seq, block):
    q, k, v = _qkv(40, 2, 3, seq, 5)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(lc.blockwise_attention(q, k, v, block), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_q, n_k, block", [(5, 11, 3), (9, 4, 2)])
def test_blockwise_without_a_mask(n_q, n_k, block):
    q = _randn(50, 2, n_q, 3, dtype=torch.float64)
    k, v = _randn(51, 2, n_k, 3, dtype=torch.float64), _randn(52, 2, n_k, 6, dtype=torch.float64)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(lc.blockwise_attention(q, k, v, block, causal=False), expected, atol=1e-12, rtol=1e-12)


def test_blockwise_is_exact_for_large_scores():
    q, k, v = _qkv(60, 1, 2, 10, 4, dtype=torch.float64)
    q = 300 * q  # scores in the thousands: a softmax without the running maximum overflows
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(lc.blockwise_attention(q, k, v, 3), expected, atol=1e-10, rtol=1e-10)


def test_the_score_buffers_measured_are_the_formula():
    q, k, v = _qkv(70, 2, 3, 50, 8)
    naive, tiles = [], []
    lc.naive_attention(q, k, v, record=naive)
    lc.blockwise_attention(q, k, v, 16, record=tiles)
    assert naive == [lc.score_buffer_bytes(2, 3, 50, None)] == [2 * 3 * 50 * 50 * 4]
    assert max(tiles) == lc.score_buffer_bytes(2, 3, 50, 16) == 2 * 3 * 16 * 16 * 4
    assert len(tiles) == 4 * 5 // 2  # causal: the 10 tiles on and below the diagonal of a 4 × 4 grid
    torch.testing.assert_close(lc.naive_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_blockwise_rejects_bad_inputs():
    q, k, v = _qkv(80, 1, 1, 4, 2)
    with pytest.raises(ValueError, match="block_size"):
        lc.blockwise_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="n_q == n_k"):
        lc.blockwise_attention(q[..., :3, :], k, v, 2)
    with pytest.raises(ValueError, match="q, k, v"):
        lc.blockwise_attention(q, k[..., :1], v, 2)
