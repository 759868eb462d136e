"""Chapter 15 §5–6's sparse and compressed attention on the reference solutions, against their public sources:
Hugging Face's ``DeepseekV32Indexer`` and ``DeepseekV32Attention`` (eager, built offline from tiny random
configurations of odd shapes), Chapter 10's dense MLA, ``torch.topk``, Hugging Face's ``DeepseekV4HCACompressor``
and ``DeepseekV4CSACompressor``, the defaults of ``DeepseekV32Config`` and ``DeepseekV4Config``, and every
number the chapter states (cache bytes per token and attention work, against formulas written out here).
"""

from __future__ import annotations

from course_lib import sparse_attention as sa
from course_lib.deepseek import DeepSeekConfig
from course_lib.mla import MultiHeadLatentAttention, cache_bytes
from course_lib.yarn import YaRN

import pytest
import torch
from conftest import randomize_weights_, seeded_randn
from transformers import DeepseekV4Config, DeepseekV32Config
from transformers.masking_utils import create_sliding_window_causal_mask
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (
    DeepseekV4Attention,
    DeepseekV4CSACompressor,
    DeepseekV4HCACompressor,
    DeepseekV4RotaryEmbedding,
)
from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Attention, DeepseekV32RotaryEmbedding

ODD = (
    dict(overrides=dict(), index=(5, 10, 4)),
    dict(
        overrides=dict(n_heads=5, qk_nope_head_dim=7, qk_rope_head_dim=4, v_head_dim=3, kv_lora_rank=9), index=(3, 7, 6)
    ),
    # V3's YaRN, through the config: MLA's tables and scale, and the indexer's tables. Seven indexer heads: with
    # two, the ReLU leaves several keys of a row at exactly 0, a tie torch.topk breaks its own way.
    dict(overrides=dict(yarn=YaRN(factor=4.0, original_context=16, mscale=1.0, mscale_all_dim=1.0)), index=(7, 9, 5)),
)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _pair(overrides: dict, index: tuple[int, int, int], seed: int = 0):
    """Hugging Face's DeepseekV32Attention with random weights (norms too) and the course's module holding its
    state dict, both float32 and in evaluation mode."""
    config = DeepSeekConfig.tiny(**overrides)
    n_heads, head_dim, top_k = index
    hf_config = DeepseekV32Config(
        **config.hf_kwargs(), index_n_heads=n_heads, index_head_dim=head_dim, index_topk=top_k
    )
    hf_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = DeepseekV32Attention(hf_config, layer_idx=0).eval()
    randomize_weights_(hf)
    ours = sa.SparseLatentAttention(config, n_heads, head_dim, top_k).eval()
    ours.load_state_dict(hf.state_dict())  # strict: every name and shape agrees
    return config, hf_config, hf, ours


def _hf_forward(hf_config, hf, x):
    batch, seq, _ = x.shape
    cos, sin = DeepseekV32RotaryEmbedding(hf_config)(x, torch.arange(seq)[None].expand(batch, -1))
    hidden = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    mask = torch.zeros(seq, seq).masked_fill(hidden, float("-inf"))[None, None].expand(batch, 1, seq, seq)
    return hf(x, (cos, sin), mask)[0], (cos, sin), mask


@pytest.mark.parametrize("case", ODD)
def test_sparse_attention_equals_hugging_face_with_top_k_below_the_length(case):
    config, hf_config, hf, ours = _pair(case["overrides"], case["index"])
    x = seeded_randn(1, 2, 11, config.d_model, dtype=torch.float32)
    with torch.no_grad():
        expected, _, _ = _hf_forward(hf_config, hf, x)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ODD)
def test_top_k_at_least_the_length_is_dense_mla(case):
    """With top_k >= L every visible token is kept: Hugging Face's layer and Chapter 10's dense MLA agree."""
    config, hf_config, hf, ours = _pair(case["overrides"], case["index"][:2] + (16,))
    dense = MultiHeadLatentAttention(config).eval()
    dense.load_state_dict({k: v for k, v in hf.state_dict().items() if not k.startswith("indexer.")})
    x = seeded_randn(2, 3, 9, config.d_model, dtype=torch.float32)
    with torch.no_grad():
        expected, _, _ = _hf_forward(hf_config, hf, x)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), dense(x), atol=1e-5, rtol=1e-5)


def test_indexer_selects_what_hugging_face_selects():
    """The same tokens per query as DeepseekV32Indexer (HF's -inf picks for early queries left aside: its
    top-k fills short rows with hidden positions, which its attention mask then hides; ours says -1)."""
    config, hf_config, hf, ours = _pair(*ODD[0].values())
    x = seeded_randn(3, 2, 13, config.d_model, dtype=torch.float32)
    with torch.no_grad():
        _, position_embeddings, mask = _hf_forward(hf_config, hf, x)
        q_resid = hf.q_a_layernorm(hf.q_a_proj(x))
        theirs = hf.indexer(x, q_resid, position_embeddings, mask[:, 0], None)
        scores, mine = ours.indexer(x, q_resid)
    for b in range(2):
        for i in range(13):
            assert set(mine[b, i][mine[b, i] >= 0].tolist()) == {s for s in theirs[b, i].tolist() if s <= i}
    # Our order is torch.topk's order where scores differ (random weights: no ties among visible keys).
    values = scores.gather(-1, mine.clamp(min=0))
    torch.testing.assert_close(values[:, 4:], scores.topk(4, dim=-1).values[:, 4:])


def test_the_published_sizes_are_hugging_faces_defaults():
    v32, v4 = DeepseekV32Config(), DeepseekV4Config()
    assert {k: getattr(v32, k) for k in sa.V32_INDEXER} == sa.V32_INDEXER
    for name, value in sa.V4_ATTENTION.items():
        assert getattr(v4, name) == value, name
    assert v4.num_key_value_heads == 1


def test_cache_bytes_per_token_against_formulas():
    v3 = DeepSeekConfig.v3()
    assert sa.cache_bytes_per_token("v3") == {"latent": 61 * (512 + 64) * 2} == {"latent": cache_bytes(v3, 1)}
    # V3.2: + per layer 128 FP8 bytes and one float32 scale per block of 128 (inference/model.py, Indexer buffers).
    assert sa.cache_bytes_per_token("v3.2") == {"latent": 70272, "indexer keys": 61 * (128 + 4)}
    # V4: 20 CSA layers (entry 512 + indexer key 128 every 4 tokens), 23 HCA layers (512 every 128), bfloat16.
    v4 = sa.cache_bytes_per_token("v4")
    assert v4 == {
        "compressed (m=4)": 20 * 512 * 2 // 4,
        "indexer keys": 20 * 128 * 2 // 4,
        "heavily compressed (m'=128)": 23 * 8,
    }
    assert sum(v4.values()) == 6584
    with pytest.raises(ValueError, match="v3"):
        sa.cache_bytes_per_token("v5")


def test_attention_macs_against_formulas():
    mla = 128 * 1088
    assert sa.attention_macs_per_token("v3", 100_000) == 100_000 * mla
    assert sa.attention_macs_per_token("v3.2", 1000) == 1000 * 64 * 128 + 1000 * mla
    assert sa.attention_macs_per_token("v3.2", 100_000) == 100_000 * 64 * 128 + 2048 * mla
    assert sa.attention_macs_per_token("v4 csa", 100_000) == (128 + 512) * 64 * 1024 + 25_000 * 64 * 128
    assert sa.attention_macs_per_token("v4 hca", 100_000) == (128 + 781) * 64 * 1024
    for kind, context in (("v4", 5), ("v3", 0), ("v3", 2.0)):
        with pytest.raises(ValueError):
            sa.attention_macs_per_token(kind, context)


def _v4_config(**overrides):
    """A tiny DeepseekV4Config of odd sizes (also used by test_hyper_connections.py)."""
    sizes = dict(
        hidden_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=10,
        q_lora_rank=8,
        index_head_dim=6,
        index_n_heads=2,
        partial_rotary_factor=0.4,
        compress_rates={"compressed_sparse_attention": 3, "heavily_compressed_attention": 5},
    )
    return DeepseekV4Config(**{**sizes, **overrides})


@pytest.mark.parametrize("kind", ["hca", "csa"])
def test_compressor_equals_hugging_face(kind):
    """Rate 5 without overlap and rate 3 with, 17 tokens (a remainder left out), RoPE on 4 of 10 features."""
    config = _v4_config()
    cls, overlap, rate = (DeepseekV4HCACompressor, False, 5) if kind == "hca" else (DeepseekV4CSACompressor, True, 3)
    torch.manual_seed(1)
    hf = cls(config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name == "position_bias" else 1.0))
    ours = sa.Compressor(12, 10, rate, overlap, rope_dim=4, rope_base=config.compress_rope_theta)
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if not k.startswith("indexer.")})
    x = seeded_randn(4, 2, 17, 12, dtype=torch.float32)
    positions = torch.arange(17)[None].expand(2, -1)
    with torch.no_grad():
        expected = hf(x, seeded_randn(5, 2, 17, 8, dtype=torch.float32), positions, None, 0)[0][:, 0]
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


def test_indexer_needs_a_compressed_query():
    with pytest.raises(ValueError, match="q_lora_rank"):
        sa.SparseLatentAttention(DeepSeekConfig.tiny(q_lora_rank=None), 2, 8, 4)


# -- DeepSeek-V4's attention layer against Hugging Face's DeepseekV4Attention (eager) --------------------------------

# Three heads of 10 (RoPE on the last 4) sharing one key/value head, 3 groups of one head projected to 5 features,
# a window of 5, CSA at rate 3 keeping the indexer's top 3 entries (3 heads of 6), HCA at rate 5.
V4_SIZES = dict(
    num_hidden_layers=3,
    num_attention_heads=3,
    sliding_window=5,
    o_groups=3,
    o_lora_rank=5,
    index_n_heads=3,
    index_topk=3,
    layer_types=list(sa.V4_LAYER_TYPES),
)


def _v4_attention_pair(kind: str, seed: int = 0):
    """Hugging Face's DeepseekV4Attention of one layer type with random weights (norms, sinks and position biases
    too) and the course's layer holding its state dict, both float32."""
    config = _v4_config(**V4_SIZES)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = DeepseekV4Attention(config, layer_idx=sa.V4_LAYER_TYPES.index(kind)).eval()
    randomize_weights_(hf)
    ours = sa.V4Attention(sa.V4AttentionConfig.from_config(config, max_len=64), kind).eval()
    ours.load_state_dict(hf.state_dict())  # strict: every name and shape agrees
    return config, hf, ours


def _v4_hf_forward(config, hf, x):
    """Hugging Face's layer as its model calls it: both RoPE tables, positions 0 ... seq - 1, the model's mask."""
    batch, seq, _ = x.shape
    positions = torch.arange(seq)[None].expand(batch, -1)
    rotary = DeepseekV4RotaryEmbedding(config)
    tables = {kind: rotary(x, positions, layer_type=kind) for kind in ("main", "compress")}
    mask = create_sliding_window_causal_mask(
        config=config, inputs_embeds=x, attention_mask=None, cache=None, position_ids=positions
    )
    return hf(x, tables, positions, mask)[0]


@pytest.mark.parametrize("seq", [2, 13, 15])
@pytest.mark.parametrize("kind", sa.V4_LAYER_TYPES)
def test_v4_attention_equals_hugging_face(kind, seq):
    """2 tokens: no complete window yet; 13: a remainder at both rates; 15: a multiple of 3 and 5. All but 2 are
    longer than the window, and at 13 and 15 the last queries see more CSA entries than the indexer keeps."""
    config, hf, ours = _v4_attention_pair(kind)
    x = seeded_randn(6, 2, seq, 12, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _v4_hf_forward(config, hf, x), atol=1e-5, rtol=1e-5)


def test_v4_indexer_picks_what_hugging_face_picks():
    """The same entries per query as DeepseekV4Indexer, and -1 in the same slots (queries with fewer complete
    entries than top_k); with 5 entries and top 3, the last queries really choose."""
    _, hf, ours = _v4_attention_pair("compressed_sparse_attention", seed=1)
    x = seeded_randn(7, 2, 15, 12, dtype=torch.float32)
    positions = torch.arange(15)[None].expand(2, -1)
    with torch.no_grad():
        q_resid = hf.q_a_norm(hf.q_a_proj(x))
        theirs = hf.compressor.indexer(x, q_resid, positions, None, 0)
        mine = ours.compressor.indexer(x, q_resid)
    assert mine.shape == theirs.shape == (2, 15, 3)
    assert torch.equal(mine.sort(dim=-1).values, theirs.sort(dim=-1).values)
    assert (mine[:, :2] == -1).all() and (mine[:, -1] >= 0).all()  # nothing complete before token 2; 5 at the end
    seen = sa.entries_seen(15, 5, 3)
    assert seen[-1].sum() == 5 and seen[2].tolist() == [True, False, False, False, False]


def test_v4_attention_refuses_unknown_layer_types():
    with pytest.raises(ValueError, match="layer_type"):
        sa.V4Attention(sa.V4AttentionConfig(), "full_attention")


def test_v4_attention_config_defaults_are_hugging_faces():
    assert sa.V4AttentionConfig.from_config(DeepseekV4Config()) == sa.V4AttentionConfig()
