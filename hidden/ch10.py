"""Hidden tests of Chapter 10 — Multi-head Latent Attention (instructors only: never released).

Expected values come from the visible checks' helpers, which write MLA out with PyTorch's own operations
(``_expected``, ``_latents``), or are computed here from the published sizes.
"""

from course_lib.checks import seeded_randn
from course_lib.checks.ch10 import _cache, _config, _decode, _expected, _latents, _model, _state

import torch

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64

#: Odd shapes: heads, widths without and with RoPE, values, ranks, both RoPE conventions, with and without
#: query compression.
SHAPES = (
    dict(),
    dict(q_lora_rank=None),
    dict(rope_interleaved=False, n_heads=1, qk_nope_head_dim=3, qk_rope_head_dim=2, v_head_dim=5),
    dict(n_heads=5, qk_nope_head_dim=7, qk_rope_head_dim=4, v_head_dim=3, kv_lora_rank=9, q_lora_rank=13),
    dict(q_lora_rank=None, rope_interleaved=False, n_heads=2, qk_nope_head_dim=12, qk_rope_head_dim=8, kv_lora_rank=5),
    dict(n_heads=4, qk_nope_head_dim=6, qk_rope_head_dim=6, v_head_dim=10, rope_base=500000.0),
)


# -- 10.1 MultiHeadLatentAttention.forward ----------------------------------------------------------


@hidden_test("10.1")
def odd_shapes_both_conventions(t):
    """six configurations (1 to 5 heads, odd widths, with and without q_lora_rank, both RoPE pairings), batch 1
    to 3, seq 1 to 9: MLA written out"""
    for i, overrides in enumerate(SHAPES):
        c = _config(**overrides)
        state = _state(100 + 10 * i, c)
        attn = _model(t, c, state)
        for batch, seq in ((1, 1), (2, 5), (3, 9)):
            x = seeded_randn(101 + 10 * i + seq, batch, seq, 48)
            t.close(attn(x), _expected(x, state, c), atol=1e-10, rtol=1e-10, what=f"{overrides}, x {tuple(x.shape)}")


@hidden_test("10.1")
def the_offset_moves_the_rotations(t):
    """offsets 1, 17 and 58 (of 64 positions): the queries' and keys' RoPE parts turned as those positions"""
    for i, overrides in enumerate(SHAPES[:3]):
        c = _config(**overrides)
        state = _state(200 + 10 * i, c)
        attn = _model(t, c, state)
        for offset in (1, 17, 58):
            x = seeded_randn(201 + offset, 2, 6, 48)
            expected = _expected(x, state, c, offset)
            t.close(attn(x, offset), expected, atol=1e-10, rtol=1e-10, what=f"{overrides}, offset {offset}")


@hidden_test("10.1")
def float32_and_x_not_modified(t):
    """float32 weights and input: a float32 result within 1e-5 of float64's; x keeps its values"""
    c = _config()
    state = _state(300, c)
    attn = _model(t, c, state)
    attn.float()
    x = seeded_randn(301, 2, 8, 48)
    t.close(attn(x.float()), _expected(x, state, c).float(), atol=1e-5, rtol=1e-5, what="float32")
    kept = t.learner("mla").torch.nn.Parameter(x.clone(), requires_grad=False)  # stays in the learner's process
    attn.double()
    attn(kept)
    t.close(t.value(kept.data), x, atol=0, rtol=0, what="x after the call")


@hidden_test("10.1", inputs=True)
def rejects_bad_shapes_offsets_and_positions(t):
    """ValueError for x of width 47, 2-D or integer x, offsets -1, True and 1.5, and positions past the context"""
    c = _config()
    attn = _model(t, c, _state(310, c))
    for bad in (
        torch.zeros(1, 3, 47, dtype=F64),
        torch.zeros(3, 48, dtype=F64),
        torch.zeros(1, 3, 48, dtype=torch.int64),
    ):
        t.raises(ValueError, attn, bad)
    x = torch.zeros(1, 3, 48, dtype=F64)
    for bad in (-1, True, 1.5):
        t.raises(ValueError, attn, x, bad)
    t.raises(ValueError, attn, x, 62)  # positions 62, 63, 64 of a 64-position context


# -- 10.2 MultiHeadLatentAttention.forward_absorbed -------------------------------------------------


@hidden_test("10.2")
def every_shape_and_way_of_splitting(t):
    """six configurations, batch 1 and 2: one whole prefill, token by token, and mixed pieces equal the naive MLA"""
    for i, overrides in enumerate(SHAPES):
        c = _config(**overrides)
        state = _state(400 + 10 * i, c)
        attn = _model(t, c, state)
        for batch in (1, 2):
            x = seeded_randn(401 + 10 * i + batch, batch, 8, 48)
            expected = _expected(x, state, c)
            for splits in ((8,), (1,) * 8, (3, 1, 2, 1, 1)):
                cache = _cache(t, attn, batch, max_seq_len=11)
                got = _decode(attn, x, cache, splits)
                t.close(got, expected, atol=1e-10, rtol=1e-10, what=f"{overrides}, batch {batch}, pieces {splits}")


@hidden_test("10.2")
def writes_only_its_layer_and_positions(t):
    """layer 1 of a 3-layer cache: its latents and RoPE keys at positions 0 ... 6 hold the new values; every
    other layer and position keeps what it held"""
    c = _config()
    state = _state(500, c)
    attn = _model(t, c, state)
    x = seeded_randn(501, 2, 7, 48)
    cache = _cache(t, attn, batch=2, max_seq_len=12, n_layers=3)
    _decode(attn, x, cache, (5, 1, 1), layer=1)
    latent, rope_key = _latents(x, state, c)
    latents, rope_keys = t.value(cache.latents), t.value(cache.rope_keys)
    t.close(latents[1, :, :7], latent, atol=1e-12, rtol=1e-12, what="latents written")
    t.close(rope_keys[1, :, :7], rope_key, atol=1e-12, rtol=1e-12, what="RoPE keys written")
    untouched = torch.cat([latents[0].flatten(), latents[2].flatten(), latents[1, :, 7:].flatten()])
    t.true(bool((untouched == 0).all()), "other layers and later positions must stay untouched")
    t.true(bool((rope_keys[0] == 0).all() and (rope_keys[2] == 0).all()), "other layers' RoPE keys must stay untouched")


@hidden_test("10.2")
def reads_what_earlier_calls_cached(t):
    """a prefill of 4 positions, then one step alone: the step attends to the 4 cached positions (the naive MLA's
    last row)"""
    c = _config(n_heads=2)
    state = _state(600, c)
    attn = _model(t, c, state)
    x = seeded_randn(601, 1, 5, 48)
    cache = _cache(t, attn, batch=1, max_seq_len=5)
    attn.forward_absorbed(x[:, :4], cache, 0)
    step = attn.forward_absorbed(x[:, 4:], cache, 4)
    t.close(step, _expected(x, state, c)[:, 4:], atol=1e-10, rtol=1e-10, what="the step")


@hidden_test("10.2")
def float32_cache_and_weights(t):
    """float32 weights, input and cache: within 1e-5 of float64's naive MLA, and a float32 result"""
    c = _config(q_lora_rank=None)
    state = _state(700, c)
    attn = _model(t, c, state)
    attn.float()
    x = seeded_randn(701, 2, 6, 48)
    cache = _cache(t, attn, batch=2, max_seq_len=6)
    got = _decode(attn, x.float(), cache, (3, 1, 1, 1))
    t.close(got, _expected(x, state, c).float(), atol=1e-5, rtol=1e-5)


@hidden_test("10.2", inputs=True)
def rejects_caches_that_do_not_fit_and_overflows(t):
    """ValueError for a cache of the wrong RoPE width, batch or latent width, an ExpandedCache, a non-cache, and an
    overflow; the overflowing call writes nothing"""
    c = _config()
    attn = _model(t, c, _state(800, c))
    lib = t.learner("mla")
    x = seeded_randn(801, 2, 3, 48)
    for bad in (
        lib.LatentCache(1, 2, 8, c.kv_lora_rank, 4),
        lib.LatentCache(1, 3, 8, c.kv_lora_rank, c.qk_rope_head_dim),
        lib.LatentCache(1, 2, 8, 17, c.qk_rope_head_dim),
        lib.ExpandedCache(1, 2, 8, c.n_heads, c.qk_head_dim, c.v_head_dim),
        "cache",
    ):
        t.raises(ValueError, attn.forward_absorbed, x, bad, 0)
    cache = _cache(t, attn, batch=2, max_seq_len=4)
    t.raises(ValueError, attn.forward_absorbed, x, cache, 2)  # positions 2 ... 4 of a 4-position cache
    t.true(bool((t.value(cache.latents) == 0).all()), "an overflowing call must write nothing")


# -- 10.3 cache_elements ----------------------------------------------------------------------------


@hidden_test("10.3")
def published_and_odd_configs(t):
    """V3, V2 (both 40,960 and 576), the tiny config and odd sizes: every head's key (nope + rope) and value,
    against one latent and one shared RoPE key"""
    lib = t.learner("mla")
    cases = [
        (lib.DeepSeekConfig.v3(), {"naive": 40960, "latent": 576}),
        (lib.DeepSeekConfig.v2(), {"naive": 40960, "latent": 576}),
    ]
    for overrides in SHAPES:
        c = _config(**overrides)
        naive = c.n_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim)
        config = lib.DeepSeekConfig.tiny(**overrides)
        cases.append((config, {"naive": naive, "latent": c.kv_lora_rank + c.qk_rope_head_dim}))
    for config, expected in cases:
        t.equal(lib.cache_elements(config), expected, what=str(expected))


@hidden_test("10.3")
def the_shapes_change_one_at_a_time(t):
    """V3 with 64 heads, RoPE width 32, latent 256 or values 192: each count follows its own sizes"""
    lib = t.learner("mla")
    for overrides, expected in (
        (dict(n_heads=64), {"naive": 20480, "latent": 576}),
        (dict(qk_rope_head_dim=32), {"naive": 128 * 288, "latent": 544}),
        (dict(kv_lora_rank=256), {"naive": 40960, "latent": 320}),
        (dict(v_head_dim=192), {"naive": 128 * 384, "latent": 576}),
    ):
        t.equal(lib.cache_elements(lib.DeepSeekConfig.v3(**overrides)), expected, what=str(overrides))


@hidden_test("10.3", inputs=True)
def rejects_other_configs_and_values(t):
    """ValueError for a LlamaConfig, a dict, None and an int"""
    lib = t.learner("mla")
    llama = t.learner("llama").LlamaConfig.llama3("8B")
    for bad in (llama, {"n_heads": 128}, None, 576):
        t.raises(ValueError, lib.cache_elements, bad)
