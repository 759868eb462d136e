"""Chapter 8 on the reference solutions: the cache itself, GPT-2 decoding with a cache against the full
forward pass and Hugging Face's GPT-2 (logits and greedy generate), cached against uncached generation,
the cache sizes of the published models, and the FLOP counts against PyTorch's FlopCounterMode.
"""

from __future__ import annotations

from course_lib import gpt, kv_cache, llama, memory, sampling

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

GIB = 2**30


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _ids(vocab, batch, seq, seed=1):
    return torch.randint(vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _lively(model, seed=0):
    """Weights larger than the 0.02 of initialisation, so that greedy choices are far from ties."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = name.endswith("weight") and ("ln" in name or "norm" in name)
            p.normal_(1.0 if is_scale else 0.0, 0.2)
    return model.eval()


def _gpt(kernels="fused", context=24):
    config = gpt.GPTConfig(vocab_size=53, context_length=context, d_model=24, n_layers=2, n_heads=3, kernels=kernels)
    return _lively(gpt.GPT(config))


def _llama(context=24, kv_heads=2):
    config = llama.LlamaConfig(
        vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=kv_heads, d_ff=40, context_length=context
    )
    return _lively(llama.Llama(config))


# -- the cache -----------------------------------------------------------------------------------


def test_a_new_cache_is_zeros_of_the_shape_asked_for():
    cache = kv_cache.KVCache(3, 2, 4, 10, 6, dtype=torch.float16)
    assert cache.keys.shape == cache.values.shape == (3, 2, 4, 10, 6)
    assert cache.keys.dtype == torch.float16 and not cache.keys.any() and not cache.values.any()
    assert cache.nbytes == 2 * 3 * 2 * 4 * 10 * 6 * 2
    assert "KVCache(n_layers=3" in repr(cache)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 1, 1, 1, 1), "n_layers"),
        ((1, True, 1, 1, 1), "batch"),
        ((1, 1, 1.0, 1, 1), "n_kv_heads"),
        ((1, 1, 1, -4, 1), "max_seq_len"),
        ((1, 1, 1, 4, 0), "head_dim"),
    ],
)
def test_a_cache_refuses_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        kv_cache.KVCache(*args)
    with pytest.raises(ValueError, match="dtype"):
        kv_cache.KVCache(1, 1, 1, 1, 1, dtype=torch.int8)


def test_caches_for_configs_and_models_have_their_key_value_heads():
    gpt2 = kv_cache.KVCache.for_config(gpt.GPTConfig.gpt2("124M", context_length=16), batch=2)
    assert gpt2.keys.shape == (12, 2, 12, 16, 64)
    model = _llama(kv_heads=1).double()
    cache = kv_cache.KVCache.for_model(model, batch=3, max_seq_len=5)
    assert cache.keys.shape == (2, 3, 1, 5, 8) and cache.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_caches_bytes_are_kv_cache_bytes(dtype):
    for config in (gpt.GPTConfig(vocab_size=9, context_length=7, d_model=12, n_layers=2, n_heads=3), _llama().config):
        cache = kv_cache.KVCache.for_config(config, batch=2, dtype=dtype)
        assert cache.nbytes == memory.kv_cache_bytes(config, config.context_length, 2, dtype)


def test_cached_attention_is_bottom_right_aligned_causal_attention():
    gen = torch.Generator().manual_seed(0)
    for batch, heads, s, t, head_dim in ((1, 1, 1, 1, 1), (2, 3, 4, 9, 5), (3, 2, 6, 6, 7), (1, 5, 1, 11, 16)):
        q = torch.randn(batch, heads, s, head_dim, generator=gen, dtype=torch.float64)
        k, v = (torch.randn(batch, heads, t, head_dim, generator=gen, dtype=torch.float64) for _ in range(2))
        mask = torch.ones(s, t, dtype=torch.bool).tril(diagonal=t - s)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(kv_cache.cached_attention(q, k, v), expected, atol=1e-12, rtol=1e-12)


# -- GPT-2 with a cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", ["fused", "course"])
def test_gpt2_prefill_then_single_steps_equal_the_full_forward(kernels):
    model = _gpt(kernels)
    ids = _ids(53, 2, 24)
    with torch.no_grad():
        full = model(ids)
        cache = kv_cache.KVCache.for_model(model, batch=2)
        pieces = [kv_cache.gpt2_forward(model, ids[:, :9], cache, 0)]
        pieces += [kv_cache.gpt2_forward(model, ids[:, p : p + 1], cache, p) for p in range(9, 24)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def _hf_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    sizes = dict(vocab_size=57, n_positions=20, n_embd=30, n_layer=3, n_head=5)
    config = GPT2Config(**sizes, bos_token_id=0, eos_token_id=None)
    config._attn_implementation = "eager"
    torch.manual_seed(3)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if ".ln_" in name and name.endswith("weight") else 0.0, 0.2)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model, gpt.GPT.from_pretrained(tmp_path)


def test_gpt2_cached_decoding_matches_hugging_face(tmp_path):
    hf, ours = _hf_gpt2(tmp_path)
    ids = _ids(57, 2, 20, seed=2)
    with torch.no_grad():
        cache = kv_cache.KVCache.for_model(ours, batch=2)
        pieces = [kv_cache.gpt2_forward(ours, ids[:, :5], cache, 0)]
        pieces += [kv_cache.gpt2_forward(ours, ids[:, p : p + 1], cache, p) for p in range(5, 20)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), hf(ids).logits, atol=1e-5, rtol=1e-5)
    prompt = ids[:, :3]
    expected = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=17, min_new_tokens=17, do_sample=False
    )
    assert torch.equal(kv_cache.generate(ours, prompt, 17, temperature=0), expected)


@pytest.mark.parametrize("make", [_gpt, _llama])
def test_cached_generation_chooses_what_uncached_generation_chooses(make):
    model = make()
    prompt = _ids(model.config.vocab_size, 3, 4, seed=4)
    settings = (dict(temperature=0), dict(temperature=0.9, top_k=12, seed=5), dict(temperature=1.3, top_p=0.8, seed=6))
    for kwargs in settings:
        cached = kv_cache.generate(model, prompt, 20, **kwargs)
        assert cached.shape == (3, 24) and torch.equal(cached[:, :4], prompt)
        assert torch.equal(cached, sampling.generate(model, prompt, 20, **kwargs)), kwargs


def test_generation_restores_the_training_mode_and_handles_no_new_tokens():
    model = _gpt().train()
    prompt = _ids(53, 1, 3)
    assert torch.equal(kv_cache.generate(model, prompt, 0), prompt)
    kv_cache.generate(model, prompt, 2, temperature=0)
    assert model.training
    model.eval()
    kv_cache.generate(model, prompt, 2, temperature=0)
    assert not model.training


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(1, 20, dtype=torch.int64), 5), "do not fit the context of 24"),
        ((torch.zeros(4, dtype=torch.int64), 1), "ids"),
        ((torch.zeros(1, 2), 1), "ids"),
        ((torch.zeros(1, 2, dtype=torch.int64), -1), "max_new_tokens"),
        ((torch.zeros(1, 2, dtype=torch.int64), 2.0), "max_new_tokens"),
    ],
)
def test_generation_errors(args, match):
    with pytest.raises(ValueError, match=match):
        kv_cache.generate(_gpt(), *args)
    with pytest.raises(ValueError, match="temperature"):
        kv_cache.generate(_gpt(), torch.zeros(1, 2, dtype=torch.int64), 1, temperature=-1)


def test_gpt2_forward_errors():
    model = _gpt()
    cache = kv_cache.KVCache.for_model(model, batch=1)
    with pytest.raises(ValueError, match="context length 24"):
        kv_cache.gpt2_forward(model, torch.zeros(1, 2, dtype=torch.int64), cache, 23)
    with pytest.raises(ValueError, match="does not fit"):
        kv_cache.gpt2_forward(model, torch.zeros(2, 2, dtype=torch.int64), cache, 0)
    with pytest.raises(ValueError, match="offset"):
        kv_cache.gpt2_forward(model, torch.zeros(1, 2, dtype=torch.int64), cache, -2)
    with pytest.raises(ValueError, match="GPT and a KVCache"):
        kv_cache.gpt2_forward(_llama(), torch.zeros(1, 2, dtype=torch.int64), cache, 0)


def test_time_generation_reports_seconds():
    model = _gpt()
    seconds = kv_cache.time_generation(model, _ids(53, 1, 3), 4, use_cache=True, repeats=2)
    assert isinstance(seconds, float) and seconds > 0
    assert kv_cache.time_generation(model, _ids(53, 1, 3), 4, use_cache=False, repeats=1) > 0


# -- the memory table and the FLOP counts -----------------------------------------------------------


def test_the_cache_table_of_the_published_models():
    """Bytes per token from the published sizes: 2 · layers · kv heads · head_dim · 2 bytes (bfloat16)."""
    rows = {row["model"]: row for row in memory.kv_cache_table()}
    expected = {  # layers, kv heads, head_dim, context (published; see memory.CACHE_MODELS)
        "GPT-2 small": (12, 12, 64, 1024),
        "Llama-2-7B": (32, 32, 128, 4096),
        "Llama-2-13B": (40, 40, 128, 4096),
        "Llama-2-70B": (80, 8, 128, 4096),
        "Llama-3-8B": (32, 8, 128, 8192),
        "Mistral-7B": (32, 8, 128, 8192),
    }
    assert list(rows) == list(expected)
    for name, (n_layers, kv_heads, head_dim, context) in expected.items():
        row = rows[name]
        per_token = 2 * n_layers * kv_heads * head_dim * 2
        sizes = (row["layers"], row["kv_heads"], row["head_dim"], row["context"])
        assert sizes == (n_layers, kv_heads, head_dim, context)
        assert row["bytes_per_token"] == per_token
        assert row["cache_gib"] == per_token * context / GIB
    assert rows["Llama-2-7B"]["cache_gib"] == 2.0 and rows["Llama-3-8B"]["cache_gib"] == 1.0
    assert rows["Mistral-7B"]["window_gib"] == 0.5 and rows["Llama-2-7B"]["window_gib"] is None
    assert memory.kv_cache_table(torch.float32, batch=4)[1]["cache_gib"] == 16.0


def test_weight_bytes_are_the_published_parameter_counts():
    assert memory.weight_bytes(gpt.GPTConfig.gpt2("124M"), torch.float32) == 124_439_808 * 4
    no_bias = gpt.GPTConfig.gpt2("124M", bias=False)
    assert memory.weight_bytes(no_bias, torch.float32) == gpt.count_parameters(no_bias) * 4
    for name, count in llama.PUBLISHED_PARAMETERS.items():
        assert memory.weight_bytes(llama.LlamaConfig.preset(name), torch.bfloat16) == 2 * count


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def test_forward_flops_match_pytorchs_flop_counter_without_and_with_a_cache():
    model = _gpt("course")  # Chapter 3's attention: matrix products the counter sees
    c = model.config
    ids = _ids(53, 1, 10)
    assert _counted(lambda: model(ids)) == memory.forward_flops(c, 10, 10)
    cache = kv_cache.KVCache.for_model(model, batch=1)
    assert _counted(lambda: kv_cache.gpt2_forward(model, ids, cache, 0)) == memory.forward_flops(c, 10, 10)
    step = ids[:, :1]
    assert _counted(lambda: kv_cache.gpt2_forward(model, step, cache, 10)) == memory.forward_flops(c, 1, 11)
    model = _llama(kv_heads=2)
    cache = kv_cache.KVCache.for_model(model, batch=1)
    assert _counted(lambda: model(ids[:, :6], cache=cache)) == memory.forward_flops(model.config, 6, 6)
    assert _counted(lambda: model(ids[:, 6:9], cache=cache, offset=6)) == memory.forward_flops(model.config, 3, 9)


def test_forward_flops_errors():
    config = gpt.GPTConfig.gpt2("124M")
    with pytest.raises(ValueError, match="at least seq"):
        memory.forward_flops(config, 5, 4)
    with pytest.raises(ValueError, match="seq"):
        memory.forward_flops(config, 0, 4)
    with pytest.raises(ValueError, match="GPTConfig or a LlamaConfig"):
        memory.forward_flops({"d_model": 4}, 1, 1)
