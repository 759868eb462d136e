"""Part II's Llama on the reference solutions: logits against Hugging Face's LlamaForCausalLM with the
same weights (through the checkpoint loader) at odd shapes (GQA, MHA, MQA, tied embeddings, RoPE base
500000), cached decoding against the full forward pass and against Hugging Face's greedy generate, the
parameter count by formula against built models and the published Llama sizes, and validation.
"""

from __future__ import annotations

from course_lib import kv_cache, layers, llama

import json

import pytest
import torch

HF_SHAPES = {
    # name: (vocab, d_model, layers, heads, kv_heads, d_ff, context, rope_theta, tied)
    "gqa": (101, 48, 3, 6, 2, 80, 40, 10000.0, False),
    "mha": (67, 40, 2, 5, 5, 56, 24, 10000.0, False),
    "mqa": (53, 32, 2, 4, 1, 72, 24, 10000.0, False),
    "tied": (89, 36, 2, 3, 3, 50, 24, 10000.0, True),
    "llama3-base": (71, 48, 2, 4, 2, 96, 32, 500000.0, False),
}


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _hf_model(name, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    vocab, d, n_layers, heads, kv_heads, d_ff, context, theta, tied = HF_SHAPES[name]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=d_ff,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        rope_theta=theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # livelier weights than the default init (std 0.02), so that greedy choices are clear
        for param_name, p in model.named_parameters():
            if "norm" in param_name:
                p.normal_(1.0, 0.2)
            elif "lm_head" not in param_name or not tied:
                p.normal_(0.0, 0.15)
    return model


@pytest.fixture(params=list(HF_SHAPES))
def pair(request, tmp_path):
    """A random Hugging Face Llama of one of the odd shapes, and the course's Llama loaded from its checkpoint."""
    hf = _hf_model(request.param)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf, llama.Llama.from_pretrained(tmp_path)


def _ids(vocab, batch, seq, seed=1):
    return torch.randint(vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_from_pretrained_matches_hugging_face_logits(pair):
    hf, ours = pair
    assert not ours.training
    c = hf.config
    assert ours.config.n_kv_heads == c.num_key_value_heads
    assert ours.config.rope_base == c.rope_parameters["rope_theta"]
    assert ours.config.tie_embeddings == c.tie_word_embeddings
    ids = _ids(c.vocab_size, 3, c.max_position_embeddings)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_state_dict_names_are_hugging_faces(pair):
    hf, ours = pair
    assert set(ours.state_dict()) == set(hf.state_dict())
    if ours.config.tie_embeddings:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_prefill_then_one_token_at_a_time_equals_the_full_forward(pair):
    _, ours = pair
    c = ours.config
    ids = _ids(c.vocab_size, 2, c.context_length, seed=2)
    with torch.no_grad():
        full = ours(ids)
        cache = kv_cache.KVCache.for_model(ours, batch=2)
        pieces = [ours(ids[:, :7], cache=cache, offset=0)]
        pieces += [ours(ids[:, p : p + 1], cache=cache, offset=p) for p in range(7, c.context_length)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_chunks_of_several_tokens_use_the_offset_for_rope_and_the_mask(pair):
    _, ours = pair
    c = ours.config
    ids = _ids(c.vocab_size, 1, 20, seed=3)
    with torch.no_grad():
        full = ours(ids)
        cache = kv_cache.KVCache.for_model(ours, batch=1, max_seq_len=20)
        pieces = [ours(ids[:, a:b], cache=cache, offset=a) for a, b in ((0, 5), (5, 9), (9, 10), (10, 20))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_generation_equals_hugging_faces_token_for_token(pair):
    hf, ours = pair
    c = ours.config
    prompt = _ids(c.vocab_size, 2, 4, seed=4)
    new = c.context_length - 4
    everything = torch.ones_like(prompt)  # a full attention mask: id 0 is a token here, not padding
    expected = hf.generate(prompt, attention_mask=everything, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert torch.equal(ours.generate(prompt, new, temperature=0), expected)
    assert torch.equal(ours.generate(prompt, new, use_cache=False, temperature=0), expected)


def test_seeded_sampling_with_and_without_a_cache_gives_the_same_tokens(pair):
    _, ours = pair
    prompt = _ids(ours.config.vocab_size, 2, 3, seed=5)
    kwargs = dict(temperature=0.8, top_k=20, seed=7)
    assert torch.equal(ours.generate(prompt, 12, **kwargs), ours.generate(prompt, 12, use_cache=False, **kwargs))


def test_a_cached_step_is_not_a_top_left_causal_mask():
    """The classic bug: scaled_dot_product_attention(is_causal=True) aligns the mask top-left, so
    with fewer queries than keys the new positions would not see the last keys."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    right = kv_cache.cached_attention(q, k, v)
    aligned_bottom_right = torch.ones(3, 7, dtype=torch.bool).tril(diagonal=4)
    torch.testing.assert_close(right, torch.nn.functional.scaled_dot_product_attention(q, k, v, aligned_bottom_right))
    wrong = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(right, wrong, atol=1e-3)


# -- the configuration and the parameter count -----------------------------------------------------


@pytest.mark.parametrize("name, expected", list(llama.PUBLISHED_PARAMETERS.items()))
def test_count_parameters_gives_the_published_sizes(name, expected):
    assert llama.count_parameters(llama.LlamaConfig.preset(name)) == expected


def test_presets_by_family_and_size():
    assert llama.LlamaConfig.llama2("70B") == llama.LlamaConfig.preset("Llama-2-70B")
    assert llama.LlamaConfig.llama3() == llama.LlamaConfig.preset("Llama-3-8B")
    assert llama.LlamaConfig.mistral("7B").n_kv_heads == 8
    assert llama.LlamaConfig.llama3("8B", context_length=128).context_length == 128
    for bad in (lambda: llama.LlamaConfig.llama2("8B"), lambda: llama.LlamaConfig.llama3("7B")):
        with pytest.raises(ValueError, match="size"):
            bad()
    with pytest.raises(ValueError, match="unknown model"):
        llama.LlamaConfig.preset("Llama-4")


@pytest.mark.parametrize("name", list(llama.PRESETS))
def test_preset_feed_forward_widths_follow_metas_rule(name):
    """Meta's params.json (multiple_of, ffn_dim_multiplier) gives the published intermediate_size."""
    rules = {
        "Llama-2-7B": (256, None),
        "Llama-2-13B": (256, None),
        "Llama-2-70B": (4096, 1.3),
        "Llama-3-8B": (1024, 1.3),
        "Llama-3-70B": (4096, 1.3),
        "Mistral-7B": None,  # Mistral publishes hidden_dim 14336 directly (Jiang et al., 2023, Table 1)
    }
    config = llama.LlamaConfig.preset(name)
    if rules[name] is not None:
        assert layers.llama_ffn_dim(config.d_model, *rules[name]) == config.d_ff
    assert config.head_dim == 128


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_count_parameters_equals_the_built_model(tied, heads, kv_heads):
    config = llama.LlamaConfig(
        vocab_size=37, d_model=6 * heads, n_layers=3, n_heads=heads, n_kv_heads=kv_heads, d_ff=29, context_length=9
    )
    config.tie_embeddings = tied
    model = llama.Llama(config)
    assert llama.count_parameters(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(n_heads=5), "must divide d_model"),
        (dict(n_kv_heads=3), "must divide n_heads"),
        (dict(d_model=36, n_heads=4), "must be even"),
        (dict(rope_base=1.0), "rope_base"),
        (dict(norm_eps=0), "norm_eps"),
        (dict(tie_embeddings=1), "tie_embeddings"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_ff=True), "d_ff"),
        (dict(n_kv_heads=2.0), "n_kv_heads"),
    ],
)
def test_config_refuses_what_cannot_be_built(overrides, match):
    sizes = dict(vocab_size=10, d_model=32, n_layers=1, n_heads=4, d_ff=16, context_length=8)
    with pytest.raises(ValueError, match=match):
        llama.LlamaConfig(**{**sizes, **overrides})


def test_config_fills_in_the_key_value_heads():
    config = llama.LlamaConfig(vocab_size=10, d_model=32, n_layers=1, n_heads=4, d_ff=16, context_length=8)
    assert config.n_kv_heads == 4 and config.head_dim == 8


# -- the forward pass's validation -----------------------------------------------------------------


def _tiny(**overrides):
    sizes = dict(vocab_size=17, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24, context_length=8)
    torch.manual_seed(0)
    return llama.Llama(llama.LlamaConfig(**{**sizes, **overrides})).eval()


def test_forward_refuses_positions_past_the_context_and_bad_ids():
    model = _tiny()
    with pytest.raises(ValueError, match="context length 8"):
        model(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="offset 6"):
        model(torch.zeros(1, 3, dtype=torch.int64), offset=6)
    for bad in (torch.zeros(4, dtype=torch.int64), torch.zeros(1, 3), torch.zeros(1, 0, dtype=torch.int64)):
        with pytest.raises(ValueError, match="ids"):
            model(bad)
    for offset in (-1, True, 1.0):
        with pytest.raises(ValueError, match="offset"):
            model(torch.zeros(1, 1, dtype=torch.int64), offset=offset)


def test_forward_refuses_a_cache_that_does_not_fit():
    model = _tiny()
    ids = torch.zeros(2, 3, dtype=torch.int64)
    for cache in (
        kv_cache.KVCache(2, 1, 2, 8, 4),  # batch 1 for 2 texts
        kv_cache.KVCache(2, 2, 4, 8, 4),  # 4 kv heads
        kv_cache.KVCache(3, 2, 2, 8, 4),  # 3 layers
        kv_cache.KVCache(2, 2, 2, 8, 4, dtype=torch.float64),  # the model is float32
    ):
        with pytest.raises(ValueError, match="the cache has"):
            model(ids, cache=cache)
    with pytest.raises(ValueError, match="overflow"):  # the cache's own check: 3 positions in a cache of 2
        model(ids, cache=kv_cache.KVCache(2, 2, 2, 2, 4))


def test_generation_refuses_a_text_longer_than_the_context_with_a_cache():
    model = _tiny()
    with pytest.raises(ValueError, match="do not fit the context of 8"):
        model.generate(torch.zeros(1, 5, dtype=torch.int64), 4, temperature=0)
    assert model.generate(torch.zeros(1, 5, dtype=torch.int64), 4, use_cache=False, temperature=0).shape == (1, 9)


def test_a_tied_model_shares_one_table_and_trains_it():
    model = _tiny(tie_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert model.model.embed_tokens.weight.grad is not None


# -- the loader's validation -----------------------------------------------------------------------


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config.json is missing"):
        llama.Llama.from_pretrained(tmp_path)
    _hf_model("gqa").save_pretrained(tmp_path, safe_serialization=True)
    original = json.loads((tmp_path / "config.json").read_text())

    def load_with(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**original, **changes}))
        return llama.Llama.from_pretrained(tmp_path)

    for changes, match in (
        (dict(attention_bias=True), "attention_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0}), "scaled RoPE"),
        (dict(sliding_window=16), "sliding-window"),
        (dict(head_dim=16), "head_dim"),
        (dict(intermediate_size=81), "shape"),
        (dict(num_key_value_heads=4), "n_kv_heads"),
    ):
        with pytest.raises(ValueError, match=match):
            load_with(**changes)
    del original["hidden_size"]
    with pytest.raises(ValueError, match="hidden_size"):
        load_with()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model.safetensors is missing"):
        llama.Llama.from_pretrained(tmp_path)


def test_from_pretrained_reads_an_older_config_with_a_top_level_rope_theta(tmp_path):
    hf = _hf_model("llama3-base")
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope_parameters"]  # transformers 4.x wrote rope_theta at the top level, as Meta's uploads do
    config["rope_theta"], config["rope_scaling"] = 500000.0, None
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = llama.Llama.from_pretrained(tmp_path, dtype=torch.float64)
    assert ours.config.rope_base == 500000.0 and ours.lm_head.weight.dtype == torch.float64
    ids = _ids(71, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).float(), hf(ids).logits, atol=1e-4, rtol=1e-4)
