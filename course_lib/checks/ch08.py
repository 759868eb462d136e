"""Visible checks of Chapter 8 — the KV cache.

Expected values are written out, or computed here with PyTorch's own operations: ``torch.cat`` for
what a cache must hold, ``torch.nn.functional.scaled_dot_product_attention`` on the whole sequence
for what the newest queries must get, and the sizes of the published models for the byte counts.
A ``torch.dtype`` cannot cross to the grader's sandbox as a value, so the checks take it from the
course's own ``course_lib.llama`` module there.
"""

from course_lib.checks import seeded_randn
from course_lib.grading import visible_check

import torch
import torch.nn.functional as F

F32, F64 = torch.float32, torch.float64


def _dtype(t, name: str):
    """``torch.<name>`` where the learner's code runs (a handle in the grader's sandbox)."""
    return t.value(getattr(t.learner("llama").torch, name))


def _cache(t, n_layers=2, batch=2, n_kv_heads=3, max_seq_len=8, head_dim=4, dtype="float64"):
    return t.learner("kv_cache").KVCache(n_layers, batch, n_kv_heads, max_seq_len, head_dim, _dtype(t, dtype))


# -- 8.1 KVCache.update ---------------------------------------------------------------------------


@visible_check("8.1")
def prefill_then_one_position_at_a_time(t):
    """a 5-position prefill then positions 5 and 6: each call returns every position so far, in order"""
    cache = _cache(t)
    k, v = seeded_randn(1, 2, 3, 7, 4), seeded_randn(2, 2, 3, 7, 4)
    keys, values = cache.update(1, k[:, :, :5], v[:, :, :5], 0)
    t.close(keys, k[:, :, :5], atol=0, rtol=0, what="keys after the prefill")
    t.close(values, v[:, :, :5], atol=0, rtol=0, what="values after the prefill")
    for position in (5, 6):
        keys, values = cache.update(1, k[:, :, position : position + 1], v[:, :, position : position + 1], position)
        t.close(keys, k[:, :, : position + 1], atol=0, rtol=0, what=f"keys after position {position}")
        t.close(values, v[:, :, : position + 1], atol=0, rtol=0, what=f"values after position {position}")


@visible_check("8.1")
def writes_in_place_and_nowhere_else(t):
    """the cache's own tensors hold the new positions; other layers and later positions stay zero"""
    cache = _cache(t)
    k, v = seeded_randn(3, 2, 3, 2, 4), seeded_randn(4, 2, 3, 2, 4)
    cache.update(0, k, v, 3)
    expected_keys = torch.zeros(2, 2, 3, 8, 4, dtype=F64)
    expected_keys[0, :, :, 3:5] = k
    expected_values = torch.zeros(2, 2, 3, 8, 4, dtype=F64)
    expected_values[0, :, :, 3:5] = v
    t.close(t.value(cache.keys), expected_keys, atol=0, rtol=0, what="cache.keys")
    t.close(t.value(cache.values), expected_values, atol=0, rtol=0, what="cache.values")


@visible_check("8.1", inputs=True)
def rejects_an_overflow_and_bad_offsets(t):
    """offset 6 + 3 positions in a cache of 8 raises ValueError naming 6, 3 and 8; so do offset -1 and a wrong shape"""
    cache = _cache(t)
    k = torch.zeros(2, 3, 3, 4, dtype=F64)
    message = t.raises(ValueError, cache.update, 0, k, k, 6)
    t.true(all(n in message for n in "638"), f"the message should name 6, 3 and 8, got {message!r}")
    t.raises(ValueError, cache.update, 0, k, k, -1)
    wrong = torch.zeros(2, 2, 3, 4, dtype=F64)  # 2 heads where the cache has 3
    t.raises(ValueError, cache.update, 0, wrong, wrong, 0)


# -- 8.2 cached_attention -------------------------------------------------------------------------


@visible_check("8.2")
def equals_the_last_rows_of_full_causal_attention(t):
    """3 queries against 7 keys equal the last 3 rows of causal attention over all 7 (torch SDPA)"""
    lib = t.learner("kv_cache")
    q, k, v = seeded_randn(5, 2, 2, 7, 8), seeded_randn(6, 2, 2, 7, 8), seeded_randn(7, 2, 2, 7, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, :, -3:]
    t.close(lib.cached_attention(q[:, :, -3:], k, v), expected, atol=1e-12, rtol=1e-12)


@visible_check("8.2")
def one_query_sees_every_key_and_a_prefill_is_causal(t):
    """s = 1: the query attends to all t keys; s = t: ordinary causal attention"""
    lib = t.learner("kv_cache")
    q, k, v = seeded_randn(8, 1, 3, 5, 4), seeded_randn(9, 1, 3, 5, 4), seeded_randn(10, 1, 3, 5, 4)
    t.close(
        lib.cached_attention(q[:, :, :1], k, v),
        F.scaled_dot_product_attention(q[:, :, :1], k, v),
        atol=1e-12,
        rtol=1e-12,
        what="one query",
    )
    t.close(
        lib.cached_attention(q, k, v),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        atol=1e-12,
        rtol=1e-12,
        what="a prefill",
    )


@visible_check("8.2", inputs=True)
def rejects_more_queries_than_keys(t):
    """4 queries against 3 keys raise ValueError naming both; so do keys and values of different lengths"""
    lib = t.learner("kv_cache")
    q, k = torch.zeros(1, 2, 4, 8, dtype=F64), torch.zeros(1, 2, 3, 8, dtype=F64)
    message = t.raises(ValueError, lib.cached_attention, q, k, k)
    t.true("4" in message and "3" in message, f"the message should name 4 and 3, got {message!r}")
    t.raises(ValueError, lib.cached_attention, q[:, :, :1], k, torch.zeros(1, 2, 5, 8, dtype=F64))


# -- 8.3 kv_cache_bytes ---------------------------------------------------------------------------


@visible_check("8.3")
def gpt2_and_llama2_7b(t):
    """GPT-2 small: 73,728 bytes a token in float32; Llama-2-7B: 524,288 in float16, 2 GiB at 4,096 tokens"""
    lib = t.learner("memory")
    gpt2 = t.learner("gpt").GPTConfig.gpt2("124M")
    llama2 = t.learner("llama").LlamaConfig.llama2("7B")
    t.equal(lib.kv_cache_bytes(gpt2, 1, 1, _dtype(t, "float32")), 73_728, what="GPT-2 small, one token")
    t.equal(lib.kv_cache_bytes(llama2, 1, 1, _dtype(t, "float16")), 524_288, what="Llama-2-7B, one token")
    t.equal(lib.kv_cache_bytes(llama2, 4096, 1, _dtype(t, "float16")), 2 * 2**30, what="Llama-2-7B, 4,096 tokens")


@visible_check("8.3")
def grouped_query_attention_caches_fewer_heads(t):
    """Llama-3-8B (8 key/value heads of 32): 131,072 bytes a token in bfloat16, 4 GiB for 4 texts of 8,192"""
    lib = t.learner("memory")
    llama3 = t.learner("llama").LlamaConfig.llama3("8B")
    t.equal(lib.kv_cache_bytes(llama3, 1, 1, _dtype(t, "bfloat16")), 131_072, what="one token")
    t.equal(lib.kv_cache_bytes(llama3, 8192, 4, _dtype(t, "bfloat16")), 4 * 2**30, what="batch 4, 8,192 tokens")


@visible_check("8.3", inputs=True)
def rejects_a_dict_zero_tokens_and_a_string_dtype(t):
    """a dict instead of a configuration, seq_len 0 and the dtype 'float16' as a string raise ValueError"""
    lib = t.learner("memory")
    gpt2 = t.learner("gpt").GPTConfig.gpt2("124M")
    f16 = _dtype(t, "float16")
    t.raises(ValueError, lib.kv_cache_bytes, {"n_layers": 12, "n_heads": 12, "d_model": 768}, 1, 1, f16)
    t.raises(ValueError, lib.kv_cache_bytes, gpt2, 0, 1, f16)
    t.raises(ValueError, lib.kv_cache_bytes, gpt2, 1, 1, "float16")
