"""Chapter 9's grouped-query attention on the reference solutions, against its public references:
Hugging Face's ``repeat_kv`` and ``LlamaAttention`` (built offline from tiny random configurations of
odd shapes: d_model 40 with 10 query heads and 10, 5, 2 or 1 key/value heads, and more),
``torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True)`` and the course's own
Llama attention; the mean-pool conversion's properties (Ainslie et al., 2023, arXiv:2305.13245, §2.1);
the counts behind Shazeer's ratios (2019, arXiv:1911.02150, §2.4 and §3.1) against PyTorch's FLOP
counter and his asymptotic forms; and every number Chapter 9 states.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import gqa, llama, memory, rope
from course_lib.kv_cache import cached_attention

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close as _close
from conftest import seeded_randn as _randn
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig as HFLlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

F32, F64 = torch.float32, torch.float64
GIB = 2**30


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


# -- repeat_kv ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 4), (3, 2, 7, 6), (1, 5, 1, 8)])
@pytest.mark.parametrize("n_rep", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", [F32, F64, torch.bfloat16])
def test_repeat_kv_equals_hugging_faces(shape, n_rep, dtype):
    x = _randn(hash((shape, n_rep)) % 1000, *shape).to(dtype)
    ours = gqa.repeat_kv(x, n_rep)
    assert ours.dtype == dtype and ours.shape == (shape[0], shape[1] * n_rep, *shape[2:])
    assert torch.equal(ours, hf_repeat_kv(x, n_rep))
    assert torch.equal(ours, torch.repeat_interleave(x, n_rep, dim=1))


def test_repeat_kv_takes_the_transposed_keys_of_a_projection():
    """Keys come out of ``view(...).transpose(1, 2)``, which is not contiguous."""
    k = _randn(1, 2, 5, 3 * 4).view(2, 5, 3, 4).transpose(1, 2)  # (batch, kv heads, seq, head_dim)
    assert not k.is_contiguous()
    assert torch.equal(gqa.repeat_kv(k, 2), hf_repeat_kv(k.contiguous(), 2))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_repeat_kv_refuses_bad_repeats(bad):
    with pytest.raises(ValueError, match="n_rep"):
        gqa.repeat_kv(torch.zeros(1, 2, 3, 4), bad)


def test_repeat_kv_refuses_other_shapes():
    with pytest.raises(ValueError, match="batch, n_kv_heads, seq, head_dim"):
        gqa.repeat_kv(torch.zeros(2, 3, 4), 2)


# -- GroupedQueryAttention against Hugging Face's LlamaAttention ------------------------------------


def _hf_pair(d_model, n_heads, n_kv_heads, bias, implementation, dtype=F64, seed=0):
    """Hugging Face's attention of a tiny random Llama, and ours holding the same weights."""
    config = HFLlamaConfig(
        hidden_size=d_model,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        attention_bias=bias,
        max_position_embeddings=64,
        rope_theta=500000.0,
    )
    config._attn_implementation = implementation
    torch.manual_seed(seed)
    theirs = LlamaAttention(config, layer_idx=0).to(dtype).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.3)
    ours = gqa.GroupedQueryAttention(d_model, n_heads, n_kv_heads, bias=bias).to(dtype).eval()
    ours.load_state_dict(theirs.state_dict())  # the same names and shapes
    return config, theirs, ours


def _hf_tables(config, x, positions):
    """Hugging Face's tables ``(batch, seq, head_dim)``, and ours: their first halves, ``(seq, head_dim / 2)``."""
    cos, sin = LlamaRotaryEmbedding(config)(x, positions[None].expand(x.shape[0], -1))
    half = cos.shape[-1] // 2
    return (cos, sin), (cos[0, :, :half], sin[0, :, :half])


@pytest.mark.parametrize(
    "d_model, n_heads, n_kv_heads",
    [(40, 10, 10), (40, 10, 5), (40, 10, 2), (40, 10, 1), (36, 6, 3), (24, 3, 1), (56, 7, 7)],
)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_equals_hugging_faces_llama_attention(d_model, n_heads, n_kv_heads, bias, implementation):
    config, theirs, ours = _hf_pair(d_model, n_heads, n_kv_heads, bias, implementation)
    x = _randn(d_model + n_kv_heads, 3, 7, d_model)
    hf_tables, tables = _hf_tables(config, x, torch.arange(4, 11))  # positions 4 ... 10
    causal_mask = torch.full((7, 7), float("-inf"), dtype=F64).triu(1)[None, None]  # (1, 1, seq, seq), additive
    with torch.no_grad():
        mask = causal_mask if implementation == "eager" else None  # Hugging Face's SDPA path is causal by itself
        expected, _ = theirs(x, position_embeddings=hf_tables, attention_mask=mask)
        # Hugging Face's eager path takes the softmax in float32 even for float64 inputs; its SDPA path does not.
        _close(ours(x, *tables), expected, tol=1e-12 if implementation == "sdpa" else 1e-5)


@pytest.mark.parametrize("n_kv_heads", [10, 5, 2, 1])
def test_not_causal_equals_hugging_face_with_nothing_masked(n_kv_heads):
    config, theirs, ours = _hf_pair(40, 10, n_kv_heads, False, "sdpa", seed=1)
    x = _randn(5, 2, 6, 40)
    hf_tables, tables = _hf_tables(config, x, torch.arange(6))
    nothing_masked = torch.zeros(1, 1, 6, 6, dtype=F64)  # a mask given: Hugging Face does not add causality
    with torch.no_grad():
        expected, _ = theirs(x, position_embeddings=hf_tables, attention_mask=nothing_masked)
        _close(ours(x, *tables, causal=False), expected, tol=1e-12)


def test_float32_equals_hugging_face_in_float32():
    config, theirs, ours = _hf_pair(40, 10, 2, False, "sdpa", dtype=F32, seed=2)
    x = _randn(6, 2, 9, 40, dtype=F32)
    hf_tables, tables = _hf_tables(config, x, torch.arange(9))
    with torch.no_grad():
        expected, _ = theirs(x, position_embeddings=hf_tables, attention_mask=None)
        got = ours(x, *tables)
    assert got.dtype == F32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# -- ... against PyTorch's grouped SDPA and the course's Llama attention ----------------------------


@pytest.mark.parametrize("n_kv_heads", [8, 4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_equals_sdpa_with_enable_gqa_and_its_gradients(n_kv_heads, causal):
    torch.manual_seed(3)
    attn = gqa.GroupedQueryAttention(48, 8, n_kv_heads).double()
    x = _randn(7, 2, 5, 48).requires_grad_()
    table = rope.RotaryEmbedding(6, 16, base=10000.0)
    cos, sin = table.cos[:5].double(), table.sin[:5].double()

    def by_hand(x):
        q = attn.q_proj(x).view(2, 5, 8, 6).transpose(1, 2)
        k = attn.k_proj(x).view(2, 5, n_kv_heads, 6).transpose(1, 2)
        v = attn.v_proj(x).view(2, 5, n_kv_heads, 6).transpose(1, 2)
        q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return attn.o_proj(out.transpose(1, 2).reshape(2, 5, 48))

    ours = attn(x, cos, sin, causal=causal)
    ours.square().sum().backward()
    ours_grads = [x.grad.clone()] + [p.grad.clone() for p in attn.parameters()]
    x.grad = None
    attn.zero_grad()
    expected = by_hand(x)
    expected.square().sum().backward()
    _close(ours, expected, tol=1e-12)
    for a, b in zip(ours_grads, [x.grad] + [p.grad for p in attn.parameters()]):
        _close(a, b, tol=1e-10)


@pytest.mark.parametrize("n_kv_heads", [6, 3, 1])
def test_attention_equals_the_course_llama_attention(n_kv_heads):
    config = llama.LlamaConfig(
        vocab_size=11, d_model=36, n_layers=1, n_heads=6, n_kv_heads=n_kv_heads, d_ff=20, context_length=16
    )
    torch.manual_seed(4)
    theirs = llama.LlamaAttention(config).double()
    ours = gqa.GroupedQueryAttention(36, 6, n_kv_heads).double()
    ours.load_state_dict(theirs.state_dict())
    table = rope.RotaryEmbedding(6, 16)
    x = _randn(8, 2, 10, 36)
    with torch.no_grad():
        _close(ours(x, table.cos[:10], table.sin[:10]), theirs(x, table), tol=1e-12)


def test_mqa_and_gqa_have_fewer_key_and_value_parameters():
    sizes = {g: sum(p.numel() for p in gqa.GroupedQueryAttention(40, 10, g).parameters()) for g in (10, 5, 2, 1)}
    for g, n in sizes.items():
        assert n == 2 * 40 * 40 + 2 * 40 * 4 * g  # q and o: d x d; k and v: d x g head_dim


@pytest.mark.parametrize(
    "args, match",
    [
        ((40, 10, 3), "must divide n_heads"),
        ((40, 12, 4), "must divide d_model"),
        ((40, 0, 1), "n_heads"),
        ((40.0, 10, 2), "d_model"),
        ((40, 10, True), "n_kv_heads"),
    ],
)
def test_constructor_refuses_head_counts_that_do_not_divide(args, match):
    with pytest.raises(ValueError, match=match):
        gqa.GroupedQueryAttention(*args)


def test_forward_refuses_bad_inputs():
    attn = gqa.GroupedQueryAttention(40, 10, 2)
    table = rope.RotaryEmbedding(4, 8)
    with pytest.raises(ValueError, match="40"):
        attn(torch.zeros(1, 3, 39))
    with pytest.raises(ValueError, match="cos and sin"):
        attn(torch.zeros(1, 3, 40), table.cos[:3])
    with pytest.raises(ValueError):
        attn(torch.zeros(1, 3, 40), table.cos[:4], table.sin[:4])  # apply_rope's error: 4 rows for 3 positions
    with pytest.raises(ValueError, match="causal"):
        attn(torch.zeros(1, 3, 40), causal=1)


# -- grouped attention without copies -------------------------------------------------------------


@pytest.mark.parametrize("s, t", [(1, 1), (1, 9), (3, 9), (9, 9)])
@pytest.mark.parametrize("n_kv_heads", [8, 2, 1])
def test_grouped_attention_equals_cached_attention_on_repeated_heads(s, t, n_kv_heads):
    q, k, v = _randn(9, 2, 8, s, 4), _randn(10, 2, n_kv_heads, t, 4), _randn(11, 2, n_kv_heads, t, 4)
    r = 8 // n_kv_heads
    expected = cached_attention(q, gqa.repeat_kv(k, r), gqa.repeat_kv(v, r))
    _close(gqa.grouped_attention(q, k, v), expected, tol=1e-12)


# -- mean-pooling: from MHA to GQA ----------------------------------------------------------------


def test_mean_pool_matches_averaging_each_group_by_hand():
    w = _randn(12, 10 * 4, 40)
    for g in (5, 2, 1):
        r = 10 // g
        expected = torch.cat([w[4 * r * i : 4 * r * (i + 1)].view(r, 4, 40).mean(0) for i in range(g)])
        _close(gqa.mean_pool_kv_heads(w, 10, g), expected, tol=1e-14)


def test_mean_pool_from_mha_to_mha_is_the_identity():
    w = _randn(13, 24, 7)
    assert torch.equal(gqa.mean_pool_kv_heads(w, 6, 6), w)


def _tiny_llama(n_kv_heads, seed=0, **overrides):
    fields = dict(vocab_size=50, d_model=48, n_layers=2, n_heads=8, n_kv_heads=n_kv_heads, d_ff=64, context_length=32)
    torch.manual_seed(seed)
    return llama.Llama(llama.LlamaConfig(**{**fields, **overrides})).double().eval()


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_a_model_whose_heads_already_agree_in_each_group_is_unchanged_by_the_conversion(n_kv_heads):
    """Make an MHA model whose key and value heads are equal within each future group: it computes
    exactly what a GQA model with one of those heads per group computes, and the conversion finds it."""
    gqa_model = _tiny_llama(n_kv_heads, seed=5)
    mha = llama.Llama(dataclasses.replace(gqa_model.config, n_kv_heads=8)).double().eval()
    state = {}
    for name, tensor in gqa_model.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):  # each kv head repeated for its group's query heads
            heads = tensor.view(n_kv_heads, 1, 6, 48).expand(n_kv_heads, 8 // n_kv_heads, 6, 48)
            tensor = heads.reshape(8 * 6, 48)
        state[name] = tensor
    mha.load_state_dict(state)
    ids = torch.randint(50, (2, 20), generator=torch.Generator().manual_seed(6))
    converted = gqa.convert_to_gqa(mha, n_kv_heads)
    with torch.no_grad():
        _close(mha(ids), gqa_model(ids), tol=1e-12)  # repeating heads is what sharing them means
        _close(converted(ids), gqa_model(ids), tol=1e-12)
    for name, tensor in converted.state_dict().items():
        _close(tensor, gqa_model.state_dict()[name], tol=1e-15)


def test_convert_to_gqa_keeps_everything_but_the_key_and_value_projections():
    mha = _tiny_llama(8, seed=7).float().train()
    for how in ("mean", "first"):
        converted = gqa.convert_to_gqa(mha, 2, how=how)
        assert converted.config == dataclasses.replace(mha.config, n_kv_heads=2)
        assert converted.training and converted.lm_head.weight.dtype == F32
        for name, tensor in converted.state_dict().items():
            original = mha.state_dict()[name]
            if name.endswith(("k_proj.weight", "v_proj.weight")):
                groups = original.view(2, 4, 6, 48)
                expected = groups.mean(1) if how == "mean" else groups[:, 0]
                _close(tensor, expected.reshape(12, 48), tol=1e-6)
            else:
                assert torch.equal(tensor, original)
                assert tensor.data_ptr() != original.data_ptr()  # a copy: training one leaves the other
    with torch.no_grad():  # the original model is untouched
        assert mha.model.layers[0].self_attn.k_proj.weight.shape == (48, 48)


def test_convert_to_gqa_refuses_what_it_cannot_do():
    mha = _tiny_llama(8)
    with pytest.raises(ValueError, match="must divide"):
        gqa.convert_to_gqa(mha, 3)
    with pytest.raises(ValueError, match="how"):
        gqa.convert_to_gqa(mha, 2, how="random")
    with pytest.raises(ValueError, match="Llama"):
        gqa.convert_to_gqa(torch.nn.Linear(2, 2), 1)


def test_pooled_keys_then_rope_are_the_rotated_keys_pooled():
    """RoPE turns every head by the same angles, so mean-pooling commutes with it (the queries need nothing)."""
    w = _randn(14, 8 * 6, 48)
    x = _randn(15, 2, 5, 48)
    table = rope.RotaryEmbedding(6, 8)
    cos, sin = table.cos[:5].double(), table.sin[:5].double()
    keys = F.linear(x, w).view(2, 5, 8, 6).transpose(1, 2)  # (batch, 8 heads, seq, head_dim)
    pooled_then_rotated = rope.apply_rope(
        F.linear(x, gqa.mean_pool_kv_heads(w, 8, 2)).view(2, 5, 2, 6).transpose(1, 2), cos, sin
    )
    rotated_then_pooled = rope.apply_rope(keys, cos, sin).view(2, 2, 4, 5, 6).mean(2)
    _close(pooled_then_rotated, rotated_then_pooled, tol=1e-12)


# -- Shazeer's counts ---------------------------------------------------------------------------


def _decode_by_hand(b, n, d, h, g):
    """One attention layer decoding n tokens for b texts, step by step, with a cache and no copies:
    returns the numbers it reads and writes as the docstring counts them."""
    k = d // h
    attn = gqa.GroupedQueryAttention(d, h, g)
    keys, values = torch.zeros(b, g, n, k), torch.zeros(b, g, n, k)
    moved = 0
    with torch.no_grad():
        for i in range(1, n + 1):
            x = torch.randn(b, 1, d)  # the step's new token, one per text
            q = attn.q_proj(x).view(b, 1, h, k).transpose(1, 2)
            keys[:, :, i - 1 : i] = attn.k_proj(x).view(b, 1, g, k).transpose(1, 2)
            values[:, :, i - 1 : i] = attn.v_proj(x).view(b, 1, g, k).transpose(1, 2)
            out = gqa.grouped_attention(q, keys[:, :, :i], values[:, :, :i])
            y = attn.o_proj(out.transpose(1, 2).reshape(b, 1, d))
            weights = sum(p.numel() for p in attn.parameters())
            moved += weights + keys[:, :, :i].numel() + values[:, :, :i].numel() + x.numel() + y.numel()
    return moved


@pytest.mark.parametrize("b, n, d, h, g", [(1, 1, 8, 2, 2), (3, 5, 24, 6, 3), (2, 7, 24, 6, 1), (4, 3, 40, 10, 5)])
def test_decode_intensity_counts_what_a_decode_does(b, n, d, h, g):
    counted = gqa.decode_intensity(b, n, d, h, g)
    with FlopCounterMode(display=False) as flops:
        moved = _decode_by_hand(b, n, d, h, g)
    assert counted["arithmetic"] == flops.get_total_flops()  # PyTorch counts 2 operations per multiply-add too
    assert counted["memory"] == moved
    assert counted["ratio"] == counted["memory"] / counted["arithmetic"]


@pytest.mark.parametrize("d, h", [(512, 8), (4096, 32), (8192, 64)])
@pytest.mark.parametrize("b", [1, 4, 64, 4096])
def test_decode_intensity_follows_shazeers_asymptotic_forms(d, h, b):
    """Θ(n/d + 1/b) for multi-head and Θ(1/d + n/(d h) + 1/b) for multi-query (Shazeer, 2019, §2.4 and
    §3.1, where n <= d): the exact ratio stays within fixed constant factors of each, at every size."""
    for n in (1, 2, 16, d // 8, d // 2, d):
        mha = gqa.decode_intensity(b, n, d, h, h)["ratio"]
        mqa = gqa.decode_intensity(b, n, d, h, 1)["ratio"]
        assert 1 / 16 <= mha / (n / d + 1 / b) <= 1
        assert 1 / 16 <= mqa / (1 / d + n / (d * h) + 1 / b) <= 1
        assert mqa <= mha


def test_multi_query_divides_the_offending_term_by_the_number_of_heads():
    """With the batch large enough that 1/b no longer matters and n = d, MHA's ratio is about h times
    MQA's: the n/d term "reduced by a factor of h" (Shazeer, 2019, §3.1)."""
    d, h = 8192, 64
    mha = gqa.decode_intensity(10**9, d, d, h, h)["ratio"]
    mqa = gqa.decode_intensity(10**9, d, d, h, 1)["ratio"]
    assert h / 4 < mha / mqa < h


def test_grouped_query_lies_between_and_counts_stay_exact():
    ratios = [gqa.decode_intensity(64, 4096, 8192, 64, g)["ratio"] for g in (64, 32, 16, 8, 4, 2, 1)]
    assert ratios == sorted(ratios, reverse=True)
    huge = gqa.decode_intensity(10**6, 10**7, 2**16, 2**9, 2**3)
    assert type(huge["memory"]) is int and huge["memory"] > 2**63  # Python ints: exact past int64


# -- the numbers Chapter 9 states -----------------------------------------------------------------


def test_llama_2_70b_cache_with_64_and_with_8_key_value_heads():
    """Llama-2-70B (meta-llama/Llama-2-70b-hf config.json: 80 layers, 64 heads of width 128, 8 key/value
    heads) caches 2 · 80 · 8 · 128 · 2 bytes per token in bfloat16; with 64 key/value heads, 8 times more."""
    config = llama.LlamaConfig.llama2("70B")
    assert (config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim) == (80, 64, 8, 128)
    by_heads = gqa.cache_bytes_by_kv_heads(config, 4096, 1, torch.bfloat16)
    assert list(by_heads) == [64, 32, 16, 8, 4, 2, 1]
    for g, n_bytes in by_heads.items():
        assert n_bytes == 2 * 80 * g * 128 * 2 * 4096
    assert by_heads[64] / GIB == 10.0 and by_heads[8] / GIB == 1.25
    assert (by_heads[64] - by_heads[8]) / GIB == 8.75
    assert by_heads[8] == memory.kv_cache_bytes(config, 4096, 1, torch.bfloat16)


def test_llama_2_70b_would_have_more_attention_parameters_with_64_key_value_heads():
    config = llama.LlamaConfig.llama2("70B")
    mha = dataclasses.replace(config, n_kv_heads=64)
    assert llama.count_parameters(config) == llama.PUBLISHED_PARAMETERS["Llama-2-70B"]
    assert llama.count_parameters(mha) - llama.count_parameters(config) == 80 * 2 * 8192 * (64 - 8) * 128


def test_plot_head_groups_draws_a_line_per_query_head():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    gqa.plot_head_groups(32, 8, ax=ax, title="GQA-8")
    assert len(ax.lines) == 32 and len(ax.patches) == 32 + 8 and ax.get_title() == "GQA-8"
    plt.close(fig)
    with pytest.raises(ValueError, match="must divide"):
        gqa.plot_head_groups(32, 5)
    assert math.isclose(gqa.decode_intensity(1, 1, 2, 2, 2)["ratio"], 0.6)
