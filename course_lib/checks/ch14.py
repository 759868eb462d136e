"""Visible checks of Chapter 14 — the capstone mini-DeepSeek.

Expected values are written out in float64 with PyTorch's own operations, from the helpers of the earlier
chapters' checks: MLA as Chapter 10's checks write it (DeepSeek-V2 §2.1), the MoE token by token as Chapter 11's
(V3 §2.1.2), RMSNorm and SwiGLU as equations, the MTP module as Chapter 12's (V3 §2.2), cross-entropy by
``torch.nn.functional.cross_entropy``, the optimiser step by ``torch.optim.AdamW`` and the clipping by
``torch.nn.utils.clip_grad_norm_``. The unit tests (tests/test_deepseek.py) check the finished model against
Hugging Face's ``DeepseekV3ForCausalLM``; the checks do not import transformers (seconds per grading worker).
"""

from course_lib.checks import learner_model, seeded_ints, seeded_randn
from course_lib.checks.ch10 import _expected as _mla
from course_lib.checks.ch10 import _rms
from course_lib.checks.ch10 import _state as _mla_state
from course_lib.checks.ch11 import _moe_expected, _moe_state, _swiglu
from course_lib.deepseek import DeepSeekConfig
from course_lib.grading import visible_check

import math

import torch
import torch.nn.functional as F

F64 = torch.float64

#: A small model with odd sizes: width 12, 2 heads, ranks 8 and 6, 6 routed experts in 3 groups (2 kept), top-2,
#: 1 shared; one dense layer then one MoE layer; vocabulary 23; 16 positions; one MTP module.
SIZES = dict(
    vocab_size=23,
    d_model=12,
    n_layers=2,
    n_heads=2,
    d_ff=10,
    context_length=16,
    q_lora_rank=8,
    kv_lora_rank=6,
    qk_nope_head_dim=4,
    qk_rope_head_dim=4,
    v_head_dim=5,
    n_routed_experts=6,
    n_shared_experts=1,
    n_activated_experts=2,
    moe_d_ff=5,
    n_groups=3,
    n_limited_groups=2,
    route_scale=2.5,
    n_dense_layers=1,
    n_mtp_layers=1,
)


def _config(**overrides) -> DeepSeekConfig:
    return DeepSeekConfig.tiny(**{**SIZES, **overrides})


def _learner_config(t, c: DeepSeekConfig):
    """The same configuration, made in the learner's process."""
    fields = {name: getattr(c, name) for name in (*SIZES, "q_lora_rank")}
    return t.learner("deepseek").DeepSeekConfig.tiny(**fields)


def _sub(state: dict, prefix: str) -> dict:
    return {name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)}


def _block_state(seed: int, c: DeepSeekConfig, moe: bool) -> dict:
    """Random weights of one decoder layer, named as ``DeepSeekBlock`` (and Hugging Face) names them."""
    d = c.d_model
    state = {f"self_attn.{name}": value for name, value in _mla_state(seed, c).items()}
    state["input_layernorm.weight"] = 1 + 0.2 * seeded_randn(seed + 30, d)
    state["post_attention_layernorm.weight"] = 1 + 0.2 * seeded_randn(seed + 31, d)
    if moe:
        mlp = _moe_state(seed + 40, d, c.n_routed_experts, c.moe_d_ff, c.n_shared_experts)
    else:
        mlp = {
            "gate_proj.weight": seeded_randn(seed + 32, c.d_ff, d) / math.sqrt(d),
            "up_proj.weight": seeded_randn(seed + 33, c.d_ff, d) / math.sqrt(d),
            "down_proj.weight": seeded_randn(seed + 34, d, c.d_ff) / math.sqrt(c.d_ff),
        }
    state.update({f"mlp.{name}": value for name, value in mlp.items()})
    return state


def _model_state(seed: int, c: DeepSeekConfig) -> dict:
    """Random weights of a whole ``DeepSeek`` (state-dict names), routing biases included."""
    d, v = c.d_model, c.vocab_size
    state = {
        "model.embed_tokens.weight": seeded_randn(seed, v, d),
        "lm_head.weight": seeded_randn(seed + 1, v, d) / math.sqrt(d),
        "model.norm.weight": 1 + 0.2 * seeded_randn(seed + 2, d),
    }
    for i in range(c.n_layers):
        for name, value in _block_state(seed + 100 * (i + 1), c, i >= c.n_dense_layers).items():
            state[f"model.layers.{i}.{name}"] = value
    for k in range(c.n_mtp_layers):
        s = seed + 1000 * (k + 1)
        state[f"mtp.{k}.enorm.weight"] = 1 + 0.3 * seeded_randn(s, d)
        state[f"mtp.{k}.hnorm.weight"] = 1 + 0.3 * seeded_randn(s + 1, d)
        state[f"mtp.{k}.eh_proj.weight"] = seeded_randn(s + 2, d, 2 * d) / math.sqrt(2 * d)
        state[f"mtp.{k}.shared_head.norm.weight"] = 1 + 0.3 * seeded_randn(s + 3, d)
        for name, value in _block_state(s + 10, c, True).items():
            state[f"mtp.{k}.block.{name}"] = value
    return state


def _block(x, state: dict, c: DeepSeekConfig, moe: bool, offset: int = 0):
    """One decoder layer written out: ``(output, load)`` (``load`` is ``None`` for a dense layer)."""
    eps = c.norm_eps
    h = x + _mla(_rms(x, state["input_layernorm.weight"], eps), _sub(state, "self_attn."), c, offset)
    z = _rms(h, state["post_attention_layernorm.weight"], eps)
    if not moe:
        return h + _swiglu(z, state, "mlp"), None
    k, groups, kept, scale = c.n_activated_experts, c.n_groups, c.n_limited_groups, c.route_scale
    out, load = _moe_expected(z, _sub(state, "mlp."), k, groups, kept, scale, c.n_shared_experts)
    return h + out, load


def _forward(ids, state: dict, c: DeepSeekConfig, mtp: bool = True):
    """The whole model written out: ``(logits, [logits of each MTP depth], [load of each MoE layer])``, the MoE
    layers of the main stack first, then the MTP modules'."""
    eps, table, head = c.norm_eps, state["model.embed_tokens.weight"], state["lm_head.weight"]
    x, loads = table[ids], []
    for i in range(c.n_layers):
        x, load = _block(x, _sub(state, f"model.layers.{i}."), c, i >= c.n_dense_layers)
        if load is not None:
            loads.append(load)
    hidden = _rms(x, state["model.norm.weight"], eps)
    depths = []
    for k in range(1, c.n_mtp_layers + 1 if mtp else 1):
        m = _sub(state, f"mtp.{k - 1}.")
        n = ids.shape[1] - k
        both = torch.cat(
            [_rms(table[ids[:, k:]], m["enorm.weight"], eps), _rms(hidden[:, :n], m["hnorm.weight"], eps)], -1
        )
        hidden, load = _block(both @ m["eh_proj.weight"].T, _sub(m, "block."), c, True)
        loads.append(load)
        depths.append(_rms(hidden, m["shared_head.norm.weight"], eps) @ head.T)
    return _rms(x, state["model.norm.weight"], eps) @ head.T, depths, loads


def _model(t, c: DeepSeekConfig, state: dict, train: bool = False):
    return learner_model(t, "deepseek", "DeepSeek", state, _learner_config(t, c), train=train)


def _expected_step(state: dict, c: DeepSeekConfig, batches, mtp_weight, bias_rate, max_norm, lr):
    """AdamW steps (torch's, weight decay 0) on the written-out model: the returned losses, the parameters after the
    steps and the routing biases moved by ``bias_rate · sign(mean load - load)`` after each step."""
    params = {k: v.clone().requires_grad_(True) for k, v in state.items() if not k.endswith("e_score_correction_bias")}
    biases = {k: v.clone() for k, v in state.items() if k.endswith("e_score_correction_bias")}
    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    results = []
    for ids in batches:
        inputs, targets = ids[:, :-1], ids[:, 1:]
        logits, depths, loads = _forward(inputs, {**params, **biases}, c)
        main = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        per_depth = [F.cross_entropy(lg.flatten(0, 1), targets[:, k:].flatten()) for k, lg in enumerate(depths, 1)]
        mtp = sum(per_depth) / len(per_depth)
        loss = main + mtp_weight * mtp
        opt.zero_grad()
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
        opt.step()
        for name, load in zip(biases, loads):  # the state's order: main stack, then the MTP modules
            mean = load.double().mean()
            biases[name] = biases[name] + bias_rate * torch.sign(mean - load.double())
        results.append({"loss": loss.item(), "main": main.item(), "mtp": mtp.item()})
    return results, {k: v.detach() for k, v in params.items()}, biases


def _greedy(ids, state: dict, c: DeepSeekConfig, n: int):
    """Uncached greedy decoding with the written-out model: the whole sequence read for every new token."""
    for _ in range(n):
        logits = _forward(ids, state, c, mtp=False)[0][:, -1]
        ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return ids


def _sampled(ids, state: dict, c: DeepSeekConfig, n: int, temperature: float, seed: int, top_k: int | None = None):
    """Uncached sampling with the written-out model: ``n`` draws, each one ``torch.multinomial`` over the batch from
    the softmax of the last logits over ``temperature`` (those below the ``top_k``-th largest removed), all from one
    generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        scaled = _forward(ids, state, c, mtp=False)[0][:, -1] / temperature
        if top_k is not None:
            kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        ids = torch.cat([ids, torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator)], dim=1)
    return ids


# -- 14.1 DeepSeekBlock.forward ---------------------------------------------------------------------


@visible_check("14.1")
def dense_and_moe_layers_without_a_cache(t):
    """a dense layer and an MoE layer (width 12, 2 heads, 6 experts, top-2, 1 shared), x (2, 5, 12), offsets 0 and 3"""
    c = _config()
    x = seeded_randn(1, 2, 5, 12)
    for moe in (False, True):
        state = _block_state(10, c, moe)
        block = learner_model(t, "deepseek", "DeepSeekBlock", state, _learner_config(t, c), moe)
        for offset in (0, 3):
            expected = _block(x, state, c, moe, offset)[0]
            t.close(block(x, None, 0, offset), expected, atol=1e-10, rtol=1e-10, what=f"moe={moe}, offset {offset}")


@visible_check("14.1")
def prefill_then_decode_through_the_latent_cache(t):
    """an MoE layer with a LatentCache: 4 positions, then 1, then 1, equal the layer over all 6 without a cache"""
    c = _config()
    state = _block_state(20, c, True)
    block = learner_model(t, "deepseek", "DeepSeekBlock", state, _learner_config(t, c), True)
    cache = t.learner("mla").LatentCache.for_module(block.self_attn, 2, 6, 1)
    x = seeded_randn(21, 2, 6, 12)
    got = torch.cat([block(x[:, :4], cache, 0, 0), block(x[:, 4:5], cache, 0, 4), block(x[:, 5:], cache, 0, 5)], 1)
    t.close(got, _block(x, state, c, True)[0], atol=1e-10, rtol=1e-10, what="cached output")


# -- 14.2 DeepSeek.forward ----------------------------------------------------------------------------


@visible_check("14.2")
def logits_of_the_whole_model(t):
    """one dense and one MoE layer, ids (2, 7): logits (2, 7, 23) equal the model written out"""
    c = _config()
    state = _model_state(30, c)
    model = _model(t, c, state)
    ids = seeded_ints(31, 23, 2, 7)
    t.close(model(ids), _forward(ids, state, c)[0], atol=1e-10, rtol=1e-10, what="logits")


@visible_check("14.2")
def mtp_true_returns_each_depths_logits(t):
    """two MTP modules, ids (2, 7), mtp=True: (logits, [depth 1 (2, 6, 23), depth 2 (2, 5, 23)]), chained"""
    c = _config(n_mtp_layers=2)
    state = _model_state(32, c)
    model = _model(t, c, state)
    ids = seeded_ints(33, 23, 2, 7)
    result = model(ids, mtp=True)
    t.equal(type(result), tuple, what="type of the result with mtp=True")
    logits, depths, _ = _forward(ids, state, c)
    t.close(result[0], logits, atol=1e-10, rtol=1e-10, what="main logits")
    t.equal(type(result[1]), list, what="type of the list of depths")
    t.equal(len(result[1]), 2, what="number of depths")
    for k, (got, expected) in enumerate(zip(result[1], depths), start=1):
        t.close(got, expected, atol=1e-10, rtol=1e-10, what=f"depth {k} logits")


@visible_check("14.2", inputs=True)
def rejects_mtp_with_a_cache_and_float_ids(t):
    """mtp=True with a cache, float ids and positions beyond the context raise ValueError"""
    c = _config()
    model = _model(t, c, _model_state(34, c))
    ids = seeded_ints(35, 23, 1, 4)
    t.raises(ValueError, model, ids, model.new_cache(1), 0, True)
    t.raises(ValueError, model, ids.double())
    t.raises(ValueError, model, seeded_ints(36, 23, 1, 17))


# -- 14.3 train_step --------------------------------------------------------------------------------


@visible_check("14.3")
def one_step_main_plus_lambda_mtp_then_adamw(t):
    """ids (2, 7), lambda 0.3, no clipping: the losses returned as floats, the weights after one AdamW step"""
    c = _config()
    state = _model_state(40, c)
    model = _model(t, c, state, train=True)
    opt = t.learner("training").make_optimizer(model, lr=0.01, weight_decay=0.0)
    ids = seeded_ints(41, 23, 2, 7)
    got = t.learner("deepseek").train_step(model, opt, ids, mtp_weight=0.3, bias_rate=1e-3, max_norm=None)
    expected, params, _ = _expected_step(state, c, [ids], 0.3, 1e-3, None, 0.01)
    t.equal(type(got), dict, what="type of the result")
    t.equal(sorted(got), ["loss", "main", "mtp"], what="keys of the result")
    for key in ("loss", "main", "mtp"):
        t.close(got[key], expected[0][key], atol=1e-9, rtol=1e-9, what=f'result["{key}"]')
    for name in ("model.layers.1.mlp.experts.3.up_proj.weight", "mtp.0.eh_proj.weight", "lm_head.weight"):
        t.close(t.value(model.get_parameter(name).detach()), params[name], atol=1e-9, rtol=1e-7, what=name)


@visible_check("14.3")
def the_routing_biases_move_by_the_rate(t):
    """two steps with bias_rate 0.01: every routing bias (main stack and MTP module) moves by ±0.01 or 0 per step"""
    c = _config()
    state = _model_state(42, c)
    model = _model(t, c, state, train=True)
    opt = t.learner("training").make_optimizer(model, lr=0.01, weight_decay=0.0)
    batches = [seeded_ints(43 + i, 23, 2, 7) for i in range(2)]
    lib = t.learner("deepseek")
    for ids in batches:
        lib.train_step(model, opt, ids, bias_rate=0.01, max_norm=1.0)
    _, _, biases = _expected_step(state, c, batches, 0.3, 0.01, 1.0, 0.01)
    for name, expected in biases.items():
        got = t.value(model.get_buffer(name))
        t.close(got, expected, atol=1e-12, rtol=0, what=name)


# -- 14.4 DeepSeek.generate ---------------------------------------------------------------------------


@visible_check("14.4")
def greedy_equals_uncached_greedy(t):
    """prompt (2, 4), 5 new tokens at temperature 0: the tokens of uncached greedy decoding"""
    c = _config()
    state = _model_state(50, c)
    model = _model(t, c, state)
    ids = seeded_ints(51, 23, 2, 4)
    t.equal(model.generate(ids, 5), _greedy(ids, state, c, 5), what="tokens")


@visible_check("14.4")
def stops_at_the_context_length_and_keeps_the_mode(t):
    """prompt (1, 13), 10 new tokens asked, 16 positions: 3 come; a model in training mode stays in it"""
    c = _config()
    state = _model_state(52, c)
    model = _model(t, c, state, train=True)
    ids = seeded_ints(53, 23, 1, 13)
    t.equal(model.generate(ids, 10), _greedy(ids, state, c, 3), what="tokens")
    t.equal(t.value(model.training), True, what="model.training after generate")


@visible_check("14.4")
def sampling_with_a_seed(t):
    """temperature 0.8, seed 7: tokens drawn by torch.multinomial from softmax(logits / 0.8), one seeded generator"""
    c = _config()
    state = _model_state(54, c)
    model = _model(t, c, state)
    ids = seeded_ints(55, 23, 2, 3)
    t.equal(model.generate(ids, 4, temperature=0.8, seed=7), _sampled(ids, state, c, 4, 0.8, 7), what="tokens")


@visible_check("14.4", inputs=True)
def rejects_bad_counts_and_temperatures(t):
    """max_new_tokens 2.0, -1 or True, and temperature -1 raise ValueError"""
    c = _config()
    model = _model(t, c, _model_state(56, c))
    ids = seeded_ints(57, 23, 1, 3)
    for bad in (2.0, -1, True):
        t.raises(ValueError, model.generate, ids, bad)
    t.raises(ValueError, model.generate, ids, 2, -1.0)
