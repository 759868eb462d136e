"""Hidden tests of Chapter 14 — the capstone mini-DeepSeek (instructors only: never released).

Expected values come from the visible checks' written-out model (Chapters 10-12's helpers), from ``torch``
itself (AdamW, clipping, multinomial), never from the references.
"""

from course_lib.checks import learner_model, seeded_ints, seeded_randn
from course_lib.checks.ch14 import (
    _block,
    _block_state,
    _config,
    _expected_step,
    _forward,
    _greedy,
    _learner_config,
    _model,
    _model_state,
    _sampled,
)

import torch

from hidden import hidden_test

# -- 14.1 DeepSeekBlock.forward ---------------------------------------------------------------------


@hidden_test("14.1")
def two_layers_share_one_cache_by_their_index(t):
    """a dense and an MoE layer on one 2-layer LatentCache (layers 0 and 1), chunks 3, 2, 1: the stack written out"""
    c = _config()
    states = [_block_state(200, c, False), _block_state(210, c, True)]
    blocks = [
        learner_model(t, "deepseek", "DeepSeekBlock", s, _learner_config(t, c), i == 1) for i, s in enumerate(states)
    ]
    cache = t.learner("mla").LatentCache.for_module(blocks[0].self_attn, 2, 6, 2)
    x = seeded_randn(220, 2, 6, 12)
    outs, offset = [], 0
    for n in (3, 2, 1):
        h = x[:, offset : offset + n]
        for i, block in enumerate(blocks):
            h = block(h, cache, i, offset)
        outs.append(h)
        offset += n
    expected = _block(_block(x, states[0], c, False)[0], states[1], c, True)[0]
    t.close(torch.cat(outs, 1), expected, atol=1e-10, rtol=1e-10, what="two cached layers")


@hidden_test("14.1")
def without_query_compression_or_shared_experts(t):
    """q_lora_rank None, no shared expert, batch 3, one position at offset 9 and five at offset 2"""
    c = _config(q_lora_rank=None, n_shared_experts=0)
    state = _block_state(230, c, True)
    block = learner_model(t, "deepseek", "DeepSeekBlock", state, _learner_config(t, c), True)
    for n, offset in ((1, 9), (5, 2)):
        x = seeded_randn(231 + n, 3, n, 12)
        t.close(block(x, None, 0, offset), _block(x, state, c, True, offset)[0], atol=1e-10, rtol=1e-10)


# -- 14.2 DeepSeek.forward ----------------------------------------------------------------------------


@hidden_test("14.2")
def decoding_through_the_cache_gives_the_same_logits(t):
    """prefill 5 positions, then 2, then 1, through a cache with offsets: the uncached logits"""
    c = _config()
    state = _model_state(240, c)
    model = _model(t, c, state)
    ids = seeded_ints(241, 23, 2, 8)
    cache = model.new_cache(2)
    got = torch.cat([model(ids[:, :5], cache, 0), model(ids[:, 5:7], cache, 5), model(ids[:, 7:], cache, 7)], 1)
    t.close(got, _forward(ids, state, c)[0], atol=1e-10, rtol=1e-10)


@hidden_test("14.2")
def without_mtp_modules_the_list_is_empty(t):
    """n_mtp_layers 0, mtp=True: (logits, []); mtp=False: the logits alone"""
    c = _config(n_mtp_layers=0, n_dense_layers=0)
    state = _model_state(250, c)
    model = _model(t, c, state)
    ids = seeded_ints(251, 23, 1, 6)
    logits = _forward(ids, state, c)[0]
    result = model(ids, mtp=True)
    t.equal(type(result), tuple, what="type")
    t.close(result[0], logits, atol=1e-10, rtol=1e-10)
    t.equal(result[1], [], what="depths")
    t.close(model(ids), logits, atol=1e-10, rtol=1e-10)


# -- 14.3 train_step --------------------------------------------------------------------------------


@hidden_test("14.3")
def two_depths_are_averaged_and_the_norm_clipped(t):
    """two MTP modules, lambda 0.5, max_norm 0.05, two steps: losses, weights and the three routing biases"""
    c = _config(n_mtp_layers=2)
    state = _model_state(260, c)
    model = _model(t, c, state, train=True)
    opt = t.learner("training").make_optimizer(model, lr=0.02, weight_decay=0.0)
    batches = [seeded_ints(261 + i, 23, 2, 6) for i in range(2)]
    lib = t.learner("deepseek")
    got = [lib.train_step(model, opt, ids, mtp_weight=0.5, bias_rate=1e-3, max_norm=0.05) for ids in batches]
    expected, params, biases = _expected_step(state, c, batches, 0.5, 1e-3, 0.05, 0.02)
    for i in range(2):
        for key in ("loss", "main", "mtp"):
            t.close(got[i][key], expected[i][key], atol=1e-9, rtol=1e-9, what=f"step {i + 1} {key}")
    for name in ("model.embed_tokens.weight", "mtp.1.block.mlp.experts.0.gate_proj.weight", "model.norm.weight"):
        t.close(t.value(model.get_parameter(name).detach()), params[name], atol=1e-9, rtol=1e-7, what=name)
    for name, expected_bias in biases.items():
        t.close(t.value(model.get_buffer(name)), expected_bias, atol=1e-12, rtol=0, what=name)


@hidden_test("14.3")
def no_bias_update_without_a_rate_and_lambda_zero(t):
    """bias_rate None leaves every routing bias; mtp_weight 0: the loss is the main loss, the step AdamW's on it"""
    c = _config()
    state = _model_state(270, c)
    model = _model(t, c, state, train=True)
    opt = t.learner("training").make_optimizer(model, lr=0.01, weight_decay=0.0)
    ids = seeded_ints(271, 23, 3, 5)
    got = t.learner("deepseek").train_step(model, opt, ids, mtp_weight=0, bias_rate=None, max_norm=None)
    expected, params, _ = _expected_step(state, c, [ids], 0.0, 1e-3, None, 0.01)
    t.close(got["loss"], expected[0]["main"], atol=1e-9, rtol=1e-9, what="loss")
    t.close(got["mtp"], expected[0]["mtp"], atol=1e-9, rtol=1e-9, what="mtp")
    for name, value in state.items():
        if name.endswith("e_score_correction_bias"):
            t.close(t.value(model.get_buffer(name)), value, atol=0, rtol=0, what=name)
    name = "model.layers.0.mlp.down_proj.weight"
    t.close(t.value(model.get_parameter(name).detach()), params[name], atol=1e-9, rtol=1e-7, what=name)


# -- 14.4 DeepSeek.generate ---------------------------------------------------------------------------


@hidden_test("14.4")
def one_token_prompts_and_zero_new_tokens(t):
    """batch 3, prompt of 1 token, 8 new; max_new_tokens 0 returns the prompt; prompt and training mode kept"""
    c = _config()
    state = _model_state(280, c)
    model = _model(t, c, state, train=True)
    ids = seeded_ints(281, 23, 3, 1)
    t.equal(model.generate(ids, 8), _greedy(ids, state, c, 8))
    t.equal(model.generate(ids, 0), ids)
    t.equal(ids, seeded_ints(281, 23, 3, 1), what="prompt")
    t.equal(t.value(model.training), True, what="training mode")


@hidden_test("14.4")
def sampling_with_top_k_and_a_full_context(t):
    """temperature 1.3, top_k 3, seed 11, prompt (2, 12) asked for 9: four drawn tokens, top-3 filtered"""
    c = _config()
    state = _model_state(290, c)
    model = _model(t, c, state)
    ids = seeded_ints(291, 23, 2, 12)
    t.equal(model.generate(ids, 9, temperature=1.3, top_k=3, seed=11), _sampled(ids, state, c, 4, 1.3, 11, top_k=3))
