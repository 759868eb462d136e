"""Hidden tests of Chapter 8 — the KV cache (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
Expected values come from ``torch`` itself (``torch.cat``, ``scaled_dot_product_attention`` with an
explicit mask, the byte size of a tensor) or from ``t.reference(module)``.
"""

from course_lib.checks import seeded_randn

import torch
import torch.nn.functional as F

from hidden import hidden_test

F32, F64 = torch.float32, torch.float64


def _dtype(t, name):
    return t.value(getattr(t.learner("llama").torch, name))


def _in_worker(t, x):
    """A copy of ``x`` that stays where the learner's code runs: a ``Parameter`` is not a plain tensor,
    so it crosses to the grader's sandbox as a handle, and a change made there can be read back."""
    return t.learner("llama").torch.nn.Parameter(x.clone(), requires_grad=False)


def _cache(t, n_layers, batch, n_kv_heads, max_seq_len, head_dim, dtype="float64"):
    return t.learner("kv_cache").KVCache(n_layers, batch, n_kv_heads, max_seq_len, head_dim, _dtype(t, dtype))


# -- 8.1 KVCache.update ---------------------------------------------------------------------------


@hidden_test("8.1")
def layers_interleaved_as_a_model_calls_them(t):
    """3 layers, batch 1 to 3, 1 to 4 kv heads: a prefill then steps, layer after layer, like a model"""
    for seed, (batch, heads, head_dim, prompt, steps) in enumerate(((1, 1, 2, 1, 5), (3, 4, 6, 4, 3), (2, 2, 8, 6, 2))):
        cache = _cache(t, 3, batch, heads, prompt + steps, head_dim)
        ks = [seeded_randn(100 * seed + i, batch, heads, prompt + steps, head_dim) for i in range(3)]
        vs = [seeded_randn(100 * seed + 50 + i, batch, heads, prompt + steps, head_dim) for i in range(3)]
        spans = [(0, prompt)] + [(p, p + 1) for p in range(prompt, prompt + steps)]
        for start, end in spans:
            for layer in range(3):
                keys, values = cache.update(layer, ks[layer][:, :, start:end], vs[layer][:, :, start:end], start)
                t.close(keys, ks[layer][:, :, :end], atol=0, rtol=0, what=f"keys of layer {layer} up to {end}")
                t.close(values, vs[layer][:, :, :end], atol=0, rtol=0, what=f"values of layer {layer} up to {end}")
        t.close(t.value(cache.keys), torch.stack(ks), atol=0, rtol=0, what="the whole cache")
        t.close(t.value(cache.values), torch.stack(vs), atol=0, rtol=0, what="the whole cache")


@hidden_test("8.1")
def several_positions_after_an_offset(t):
    """a chunk of 3 positions at offset 2 (not only prefills and single steps); positions 0 and 1 stay zero"""
    cache = _cache(t, 1, 2, 2, 6, 4)
    k, v = seeded_randn(1, 2, 2, 3, 4), seeded_randn(2, 2, 2, 3, 4)
    keys, values = cache.update(0, k, v, 2)
    expected_k = torch.cat([torch.zeros(2, 2, 2, 4, dtype=F64), k], dim=2)
    expected_v = torch.cat([torch.zeros(2, 2, 2, 4, dtype=F64), v], dim=2)
    t.close(keys, expected_k, atol=0, rtol=0, what="keys")
    t.close(values, expected_v, atol=0, rtol=0, what="values")
    full = torch.zeros(1, 2, 2, 6, 4, dtype=F64)
    full[0, :, :, 2:5] = k
    t.close(t.value(cache.keys), full, atol=0, rtol=0, what="cache.keys")


@hidden_test("8.1")
def rewriting_a_position_overwrites_it_and_only_it(t):
    """writing position 2 again replaces it and returns positions 0 ... 2; positions 3 and 4 keep theirs"""
    cache = _cache(t, 2, 1, 2, 5, 3)
    k, v = seeded_randn(3, 1, 2, 5, 3), seeded_randn(4, 1, 2, 5, 3)
    cache.update(1, k, v, 0)
    k2, v2 = seeded_randn(5, 1, 2, 1, 3), seeded_randn(6, 1, 2, 1, 3)
    keys, values = cache.update(1, k2, v2, 2)
    t.close(keys, torch.cat([k[:, :, :2], k2], dim=2), atol=0, rtol=0, what="keys")
    t.close(values, torch.cat([v[:, :, :2], v2], dim=2), atol=0, rtol=0, what="values")
    expected = torch.cat([k[:, :, :2], k2, k[:, :, 3:]], dim=2)
    t.close(t.value(cache.keys)[1], expected, atol=0, rtol=0, what="cache.keys[1]")
    t.close(t.value(cache.keys)[0], torch.zeros(1, 2, 5, 3, dtype=F64), atol=0, rtol=0, what="cache.keys[0]")


@hidden_test("8.1")
def stored_and_returned_in_the_caches_dtype(t):
    """float64 keys written into a float32 cache are stored and returned as float32, and vice versa"""
    for cache_dtype, given in (("float32", F64), ("float64", F32)):
        cache = _cache(t, 1, 1, 2, 4, 4, dtype=cache_dtype)
        k, v = seeded_randn(7, 1, 2, 3, 4, dtype=given), seeded_randn(8, 1, 2, 3, 4, dtype=given)
        want = F32 if cache_dtype == "float32" else F64
        keys, values = cache.update(0, k, v, 0)
        t.close(keys, k.to(want), atol=0, rtol=0, what=f"keys in a {cache_dtype} cache")
        t.close(values, v.to(want), atol=0, rtol=0, what=f"values in a {cache_dtype} cache")
        t.equal(t.value(cache.keys).dtype, want, what="the cache's dtype")


@hidden_test("8.1")
def k_and_v_are_not_modified(t):
    """k and v are the same after the call, also when the cache converts them to its dtype"""
    cache = _cache(t, 1, 1, 1, 4, 2, dtype="float32")
    k, v = seeded_randn(9, 1, 1, 2, 2), seeded_randn(10, 1, 1, 2, 2)
    kept_k, kept_v = _in_worker(t, k), _in_worker(t, v)
    cache.update(0, kept_k, kept_v, 0)
    t.close(t.value(kept_k.data), k, atol=0, rtol=0, what="k after the call")
    t.close(t.value(kept_v.data), v, atol=0, rtol=0, what="v after the call")


@hidden_test("8.1", inputs=True)
def a_call_that_raises_changes_nothing(t):
    """an overflowing write (offset 3 + 3 positions of 5) raises ValueError and leaves the cache as it was"""
    cache = _cache(t, 1, 1, 2, 5, 3)
    k = seeded_randn(11, 1, 2, 3, 3)
    cache.update(0, k, k, 0)
    before = t.value(cache.keys)
    t.raises(ValueError, cache.update, 0, 2 * k, 2 * k, 3)
    t.close(t.value(cache.keys), before, atol=0, rtol=0, what="the cache after the refused call")
    t.close(t.value(cache.values), before, atol=0, rtol=0, what="the cache after the refused call")


@hidden_test("8.1", inputs=True)
def rejects_bad_layers_offsets_and_tensors(t):
    """ValueError for layer 2 of 2, -1, True or 1.0; offset True, 1.0 or a tensor; mismatched, 3-D or integer k and v"""
    cache = _cache(t, 2, 1, 2, 6, 4)
    k = torch.zeros(1, 2, 1, 4, dtype=F64)
    for layer in (2, -1, True, 1.0):
        t.raises(ValueError, cache.update, layer, k, k, 0)
    for offset in (True, 1.0, torch.tensor(1)):
        t.raises(ValueError, cache.update, 0, k, k, offset)
    t.raises(ValueError, cache.update, 0, k, torch.zeros(1, 2, 2, 4, dtype=F64), 0)
    t.raises(ValueError, cache.update, 0, torch.zeros(2, 1, 4, dtype=F64), torch.zeros(2, 1, 4, dtype=F64), 0)
    t.raises(ValueError, cache.update, 0, k.long(), k.long(), 0)
    t.raises(ValueError, cache.update, 0, torch.zeros(1, 2, 1, 5, dtype=F64), torch.zeros(1, 2, 1, 5, dtype=F64), 0)
    t.raises(ValueError, cache.update, 0, torch.zeros(2, 2, 1, 4, dtype=F64), torch.zeros(2, 2, 1, 4, dtype=F64), 0)
    message = t.raises(ValueError, cache.update, 1, torch.zeros(1, 2, 4, 4, dtype=F64), k.expand(1, 2, 4, 4), 3)
    t.true("6" in message, f"an overflow's message should name max_seq_len 6, got {message!r}")


# -- 8.2 cached_attention -------------------------------------------------------------------------


def _expected_attention(q, k, v):
    """The rule written with PyTorch's attention and an explicit mask: row i sees keys j <= i + t - s."""
    s, t = q.shape[2], k.shape[2]
    mask = torch.ones(s, t, dtype=torch.bool).tril(diagonal=t - s)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@hidden_test("8.2")
def many_query_and_key_lengths(t):
    """s from 1 to t, t from 1 to 9, batch 1 to 3, heads 1 to 4, head_dim 1 to 16 (float64)"""
    lib = t.learner("kv_cache")
    shapes = ((1, 1, 1, 1, 1), (2, 3, 2, 9, 16), (3, 1, 4, 4, 5), (1, 4, 9, 9, 2), (2, 2, 5, 6, 3), (1, 2, 1, 8, 4))
    for seed, (batch, heads, s, length, head_dim) in enumerate(shapes):
        q = seeded_randn(3 * seed, batch, heads, s, head_dim)
        k = seeded_randn(3 * seed + 1, batch, heads, length, head_dim)
        v = seeded_randn(3 * seed + 2, batch, heads, length, head_dim)
        t.close(lib.cached_attention(q, k, v), _expected_attention(q, k, v), atol=1e-12, rtol=1e-12, what=f"s={s}")


@hidden_test("8.2")
def decoding_step_by_step_equals_the_full_pass(t):
    """rows of causal attention over 6 positions, computed as a prefill of 2 and then 4 single steps"""
    lib = t.learner("kv_cache")
    q, k, v = seeded_randn(40, 2, 3, 6, 8), seeded_randn(41, 2, 3, 6, 8), seeded_randn(42, 2, 3, 6, 8)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    rows = [lib.cached_attention(q[:, :, :2], k[:, :, :2], v[:, :, :2])]
    rows += [lib.cached_attention(q[:, :, p : p + 1], k[:, :, : p + 1], v[:, :, : p + 1]) for p in range(2, 6)]
    t.close(torch.cat(rows, dim=2), full, atol=1e-12, rtol=1e-12)


@hidden_test("8.2")
def scale_and_large_scores(t):
    """scores scaled by 1/sqrt(head_dim) (head_dim 64); float32 scores in the hundreds neither overflow nor give nan"""
    lib = t.learner("kv_cache")
    q, k, v = seeded_randn(50, 1, 2, 3, 64), seeded_randn(51, 1, 2, 7, 64), seeded_randn(52, 1, 2, 7, 64)
    t.close(lib.cached_attention(q, k, v), _expected_attention(q, k, v), atol=1e-12, rtol=1e-12, what="head_dim 64")
    q, k, v = (100 * x.float() for x in (q, k, v))  # scores of some hundreds: exp() alone would overflow
    t.close(lib.cached_attention(q, k, v), _expected_attention(q, k, v), atol=1e-3, rtol=1e-5, what="large scores")


@hidden_test("8.2")
def float32_in_float32_out(t):
    """float32 queries, keys and values give a float32 result, as accurate as PyTorch's"""
    lib = t.learner("kv_cache")
    q, k, v = (seeded_randn(60 + i, 2, 2, n, 8, dtype=F32) for i, n in enumerate((2, 5, 5)))
    t.close(lib.cached_attention(q, k, v), _expected_attention(q, k, v), atol=1e-5, rtol=1e-5)


@hidden_test("8.2")
def q_k_and_v_are_not_modified(t):
    """q, k and v are unchanged by the call"""
    lib = t.learner("kv_cache")
    q, k, v = seeded_randn(70, 1, 2, 2, 4), seeded_randn(71, 1, 2, 4, 4), seeded_randn(72, 1, 2, 4, 4)
    kept = [_in_worker(t, x) for x in (q, k, v)]
    lib.cached_attention(*kept)
    for name, before, after in zip("qkv", (q, k, v), kept):
        t.close(t.value(after.data), before, atol=0, rtol=0, what=f"{name} after the call")


@hidden_test("8.2", inputs=True)
def rejects_mismatched_or_malformed_tensors(t):
    """ValueError for s > t, 3-D or integer tensors, different batch, heads, head_dim or dtypes, a list"""
    lib = t.learner("kv_cache")
    q, k = torch.zeros(1, 2, 2, 4, dtype=F64), torch.zeros(1, 2, 3, 4, dtype=F64)
    t.raises(ValueError, lib.cached_attention, torch.zeros(1, 2, 4, 4, dtype=F64), k, k)
    t.raises(ValueError, lib.cached_attention, q[0], k[0], k[0])
    t.raises(ValueError, lib.cached_attention, q.long(), k.long(), k.long())
    for other in ((2, 2, 3, 4), (1, 1, 3, 4), (1, 2, 3, 5)):  # another batch, heads or head_dim than q's
        t.raises(ValueError, lib.cached_attention, q, torch.zeros(other, dtype=F64), torch.zeros(other, dtype=F64))
    t.raises(ValueError, lib.cached_attention, q, k, k.float())
    t.raises(ValueError, lib.cached_attention, q.tolist(), k, k)


# -- 8.3 kv_cache_bytes ---------------------------------------------------------------------------


def _nbytes(n_layers, kv_heads, head_dim, seq, batch, dtype):
    """The size of a real cache: keys and values, ``(n_layers, batch, kv_heads, seq, head_dim)`` each."""
    return 2 * torch.empty(n_layers, batch, kv_heads, seq, head_dim, dtype=dtype).nbytes


@hidden_test("8.3")
def equals_the_bytes_of_a_real_cache(t):
    """GPT and Llama configurations (MHA, GQA, MQA) in six dtypes equal the nbytes of the tensors themselves"""
    lib, gpt, llama = t.learner("memory"), t.learner("gpt"), t.learner("llama")
    tiny = dict(vocab_size=9, d_ff=8, context_length=8)
    configs = [  # (configuration, layers, key/value heads, head_dim)
        (gpt.GPTConfig(vocab_size=11, context_length=8, d_model=12, n_layers=3, n_heads=2), 3, 2, 6),
        (gpt.GPTConfig(vocab_size=11, context_length=8, d_model=10, n_layers=1, n_heads=5, bias=False), 1, 5, 2),
        (llama.LlamaConfig(d_model=24, n_layers=2, n_heads=6, n_kv_heads=3, **tiny), 2, 3, 4),
        (llama.LlamaConfig(d_model=16, n_layers=5, n_heads=4, n_kv_heads=1, **tiny), 5, 1, 4),
        (llama.LlamaConfig(d_model=20, n_layers=1, n_heads=2, **tiny), 1, 2, 10),
    ]
    names = ("float64", "float32", "float16", "bfloat16", "int8", "float8_e4m3fn")
    for config, n_layers, kv_heads, head_dim in configs:
        for name in names:
            for seq, batch in ((1, 1), (7, 3), (13, 2)):
                expected = _nbytes(n_layers, kv_heads, head_dim, seq, batch, getattr(torch, name))
                got = lib.kv_cache_bytes(config, seq, batch, _dtype(t, name))
                t.equal(got, expected, what=f"{name}, {seq} tokens x {batch}")


@hidden_test("8.3")
def published_models(t):
    """Llama-2-13B, Llama-2-70B, Llama-3-70B and Mistral-7B per token in bfloat16, and at their contexts"""
    lib, llama = t.learner("memory"), t.learner("llama")
    bf16 = _dtype(t, "bfloat16")
    cases = (
        (llama.LlamaConfig.llama2("13B"), 819_200, 4096),
        (llama.LlamaConfig.llama2("70B"), 327_680, 4096),
        (llama.LlamaConfig.llama3("70B"), 327_680, 8192),
        (llama.LlamaConfig.mistral("7B"), 131_072, 8192),
    )
    for config, per_token, context in cases:
        t.equal(lib.kv_cache_bytes(config, 1, 1, bf16), per_token, what="one token")
        t.equal(lib.kv_cache_bytes(config, context, 2, bf16), per_token * context * 2, what="two texts at the context")


@hidden_test("8.3")
def exact_python_int_beyond_the_context_and_2_to_the_63(t):
    """a Python int, for a text longer than the context and for 10**12 + 1 tokens x 10**9 + 7 texts (exact)"""
    lib, gpt = t.learner("memory"), t.learner("gpt")
    config = gpt.GPTConfig.gpt2("1558M")
    f32 = _dtype(t, "float32")
    per_token = 2 * 48 * 1600 * 4
    t.equal(lib.kv_cache_bytes(config, 4096, 1, f32), per_token * 4096, what="4,096 tokens, past the context 1,024")
    seq, batch = 10**12 + 1, 10**9 + 7  # the product is past 2**63 and no float holds it exactly
    t.equal(lib.kv_cache_bytes(config, seq, batch, f32), per_token * seq * batch, what="10**12 + 1 tokens x 10**9 + 7")


@hidden_test("8.3", inputs=True)
def rejects_bad_configs_sizes_and_dtypes(t):
    """ValueError for None, a float or bool seq_len or batch, negatives, torch.bool, complex64 or None as dtype"""
    lib = t.learner("memory")
    config = t.learner("llama").LlamaConfig.llama3("8B")
    f16 = _dtype(t, "float16")
    t.raises(ValueError, lib.kv_cache_bytes, None, 1, 1, f16)
    for seq, batch in ((1.0, 1), (True, 1), (-3, 1), (1, 2.0), (1, False), (1, 0), (1, -1)):
        t.raises(ValueError, lib.kv_cache_bytes, config, seq, batch, f16)
    for dtype in (_dtype(t, "bool"), _dtype(t, "complex64"), None, 2):
        t.raises(ValueError, lib.kv_cache_bytes, config, 1, 1, dtype)
