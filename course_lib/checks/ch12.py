"""Visible checks of Chapter 12 — multi-token prediction.

Expected values are written out, or computed here with PyTorch's own operations: RMSNorm and the Llama block
written out (its attention by Chapter 9's checks' grouped ``scaled_dot_product_attention`` with Hugging Face's
split-halves rotation), ``torch.nn.functional.cross_entropy`` for the losses, and, for speculative decoding, the
greedy choices of the trunk itself (Part II's finished model) with the drafts of the learner's own MTP module, so
that Exercise 12.3 is checked on its loop whatever the module computes.
"""

from course_lib.checks import seeded_ints, seeded_randn
from course_lib.checks.ch09 import _expected as _attention
from course_lib.checks.ch09 import _tables
from course_lib.grading import GradingError, visible_check

import math

import torch
import torch.nn.functional as F

F32, F64 = torch.float32, torch.float64


# -- helpers shared with the hidden tests -----------------------------------------------------------


def _rms(x, weight, eps=1e-6):
    """RMSNorm written out: ``weight * x / sqrt(mean(x**2) + eps)`` over the last dimension."""
    return weight * (x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps))


def _block_state(seed, d_model, n_heads, d_ff, scale=0.3):
    """Random weights of a Llama block (Hugging Face's names), the norms' scales near one."""
    hd = d_model // n_heads
    shapes = {
        "self_attn.q_proj.weight": (n_heads * hd, d_model),
        "self_attn.k_proj.weight": (n_heads * hd, d_model),
        "self_attn.v_proj.weight": (n_heads * hd, d_model),
        "self_attn.o_proj.weight": (d_model, n_heads * hd),
        "mlp.gate_proj.weight": (d_ff, d_model),
        "mlp.up_proj.weight": (d_ff, d_model),
        "mlp.down_proj.weight": (d_model, d_ff),
    }
    state = {name: scale * seeded_randn(seed + i, *shape) for i, (name, shape) in enumerate(shapes.items())}
    state["input_layernorm.weight"] = 1 + 0.2 * seeded_randn(seed + 20, d_model)
    state["post_attention_layernorm.weight"] = 1 + 0.2 * seeded_randn(seed + 21, d_model)
    return state


def _block(x, state, n_heads, eps=1e-6):
    """A Llama block written out, with RoPE at positions 0 ... seq - 1 (base 10000)."""
    attn = {name[len("self_attn.") :]: v for name, v in state.items() if name.startswith("self_attn.")}
    cos, sin = _tables(x.shape[-1] // n_heads, torch.arange(x.shape[1]))
    h = x + _attention(_rms(x, state["input_layernorm.weight"], eps), attn, n_heads, n_heads, cos, sin)
    z = _rms(h, state["post_attention_layernorm.weight"], eps)
    gated = F.silu(F.linear(z, state["mlp.gate_proj.weight"])) * F.linear(z, state["mlp.up_proj.weight"])
    return h + F.linear(gated, state["mlp.down_proj.weight"])


def _mtp_state(seed, d_model, block_state=None):
    """Random MTP weights: distinct norm scales, a 2d -> d projection, and the block's weights under ``block.``."""
    state = {
        "enorm.weight": 1 + 0.5 * seeded_randn(seed, d_model),
        "hnorm.weight": 1 + 0.5 * seeded_randn(seed + 1, d_model),
        "eh_proj.weight": 0.4 * seeded_randn(seed + 2, d_model, 2 * d_model),
        "shared_head.norm.weight": 1 + 0.5 * seeded_randn(seed + 3, d_model),
    }
    for name, value in (block_state or {}).items():
        state[f"block.{name}"] = value
    return state


def _expected_mtp(hidden, next_ids, state, table, head_weight, n_heads=None, eps=1e-6):
    """The module's (logits, h) written out; ``n_heads=None`` means the block is the identity."""
    both = torch.cat([_rms(table[next_ids], state["enorm.weight"], eps), _rms(hidden, state["hnorm.weight"], eps)], -1)
    x = F.linear(both, state["eh_proj.weight"])
    if n_heads is not None:
        block = {name[len("block.") :]: v for name, v in state.items() if name.startswith("block.")}
        x = _block(x, block, n_heads, eps)
    return F.linear(_rms(x, state["shared_head.norm.weight"], eps), head_weight), x


def _worker_module(t, factory, state, *args):
    """``factory(*args)`` where the learner's code runs, in float64, holding ``state``, in evaluation mode."""
    module = factory(*args)
    module.double()
    module.load_state_dict(dict(state))
    module.eval()
    return module


def _embed_and_head(t, table, head_weight):
    nn = t.learner("mtp").torch.nn
    embed = _worker_module(t, nn.Embedding, {"weight": table}, *table.shape)
    head = _worker_module(t, nn.Linear, {"weight": head_weight}, head_weight.shape[1], head_weight.shape[0], False)
    return embed, head


def _llama_block(t, d_model, n_heads, d_ff, vocab=7, context=32):
    llama = t.learner("llama")
    config = llama.LlamaConfig(
        vocab_size=vocab, d_model=d_model, n_layers=1, n_heads=n_heads, d_ff=d_ff, context_length=context, norm_eps=1e-6
    )
    return llama.LlamaBlock(config)


def _mtp(t, state, d_model, block):
    return _worker_module(t, t.learner("mtp").MTPModule, state, d_model, block, 1e-6)


def _identity_mtp(t, state, d_model):
    return _mtp(t, state, d_model, t.learner("mtp").torch.nn.Identity())


def _rope(t, head_dim, context=32):
    return t.learner("rope").RotaryEmbedding(head_dim, context)


def _trunk_state(seed, vocab, d_model, n_layers, n_heads, d_ff, scale=0.5):
    """Random weights of a course Llama (Hugging Face's names)."""
    state = {"model.embed_tokens.weight": seeded_randn(seed, vocab, d_model)}
    for layer in range(n_layers):
        for name, value in _block_state(seed + 100 * (layer + 1), d_model, n_heads, d_ff, scale).items():
            state[f"model.layers.{layer}.{name}"] = value
    state["model.norm.weight"] = 1 + 0.2 * seeded_randn(seed + 1, d_model)
    state["lm_head.weight"] = seeded_randn(seed + 2, vocab, d_model)
    return state


def _trunk_and_mtp(t, seed, vocab=13, d_model=8, n_heads=2, d_ff=12, context=40, eh_scale=None, head_scale=None):
    """A float64 course Llama (2 layers) and an MTP module with a Llama block, built where the learner's code runs."""
    llama = t.learner("llama")
    config = llama.LlamaConfig(
        vocab_size=vocab, d_model=d_model, n_layers=2, n_heads=n_heads, d_ff=d_ff, context_length=context
    )
    trunk_state = _trunk_state(seed, vocab, d_model, 2, n_heads, d_ff)
    if head_scale is not None:
        trunk_state["lm_head.weight"] = head_scale * trunk_state["lm_head.weight"]
    trunk = _worker_module(t, llama.Llama, trunk_state, config)
    state = _mtp_state(seed + 50, d_model, _block_state(seed + 60, d_model, n_heads, d_ff))
    if eh_scale is not None:
        state["eh_proj.weight"] = eh_scale * state["eh_proj.weight"]
    block = llama.LlamaBlock(config)
    mtp = _worker_module(t, t.learner("mtp").MTPModule, state, d_model, block, 1e-5)
    return trunk, mtp


def _expected_speculation(trunk, mtp, ids, max_new_tokens):
    """The loop of the docstring, step by step: greedy choices from the trunk's own passes (Part II's model), drafts
    from the module given. Returns the tokens, the stats and the plain greedy continuation."""
    stats = {"forwards": 0, "drafted": 0, "accepted": 0}
    out = ids.to(torch.int64)
    embed, head, rope = trunk.model.embed_tokens, trunk.lm_head, trunk.model.rotary_emb
    if max_new_tokens == 0:
        return out, stats
    hidden = trunk.model(out)
    logits = trunk.lm_head(hidden)
    stats["forwards"] += 1
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    produced = 0
    while True:
        out = torch.cat([out, nxt], 1)
        produced += 1
        if produced == max_new_tokens:
            return out, stats
        draft = mtp(hidden, out[:, 1:], embed, head, rope=rope)[0][:, -1].argmax(-1, keepdim=True)
        stats["drafted"] += 1
        hidden = trunk.model(torch.cat([out, draft], 1))
        logits = trunk.lm_head(hidden)
        stats["forwards"] += 1
        check = logits[:, -2].argmax(-1, keepdim=True)
        if torch.equal(check, draft):
            stats["accepted"] += 1
            out = torch.cat([out, draft], 1)
            produced += 1
            if produced == max_new_tokens:
                return out, stats
            nxt = logits[:, -1].argmax(-1, keepdim=True)
        else:
            nxt, hidden = check, hidden[:, :-1]


def _greedy(trunk, ids, max_new_tokens):
    """Plain greedy decoding: one full pass of the trunk per new token."""
    out = ids.to(torch.int64)
    for _ in range(max_new_tokens):
        out = torch.cat([out, trunk(out)[:, -1].argmax(-1, keepdim=True)], 1)
    return out


# -- 12.1 MTPModule.forward -------------------------------------------------------------------------


@visible_check("12.1")
def identity_block_written_out(t):
    """an identity block, d_model 6, vocab 11: head(norm(eh_proj([enorm(Emb(t)); hnorm(h)]))), h before the norm"""
    table, head_w = seeded_randn(1, 11, 6), seeded_randn(2, 11, 6)
    state = _mtp_state(3, 6)
    hidden, next_ids = seeded_randn(4, 2, 5, 6), seeded_ints(5, 11, 2, 5)
    embed, head = _embed_and_head(t, table, head_w)
    logits, h = _identity_mtp(t, state, 6)(hidden, next_ids, embed, head)
    expected_logits, expected_h = _expected_mtp(hidden, next_ids, state, table, head_w)
    t.close(logits, expected_logits, atol=1e-10, rtol=1e-10, what="logits")
    t.close(h, expected_h, atol=1e-10, rtol=1e-10, what="h")


@visible_check("12.1")
def llama_block_with_rope(t):
    """a Llama block (2 heads, RoPE passed as rope=...), d_model 8: equal to the block written out"""
    table, head_w = seeded_randn(10, 13, 8), seeded_randn(11, 13, 8)
    state = _mtp_state(12, 8, _block_state(13, 8, 2, 12))
    hidden, next_ids = seeded_randn(14, 2, 7, 8), seeded_ints(15, 13, 2, 7)
    embed, head = _embed_and_head(t, table, head_w)
    mtp = _mtp(t, state, 8, _llama_block(t, 8, 2, 12))
    logits, h = mtp(hidden, next_ids, embed, head, rope=_rope(t, 4))
    expected_logits, expected_h = _expected_mtp(hidden, next_ids, state, table, head_w, n_heads=2)
    t.close(logits, expected_logits, atol=1e-10, rtol=1e-10, what="logits")
    t.close(h, expected_h, atol=1e-10, rtol=1e-10, what="h")


@visible_check("12.1", inputs=True)
def rejects_bad_shapes(t):
    """hidden of width 5 for d_model 6, a 2-D hidden, and next_ids of the wrong length raise ValueError"""
    embed, head = _embed_and_head(t, seeded_randn(20, 11, 6), seeded_randn(21, 11, 6))
    mtp = _identity_mtp(t, _mtp_state(22, 6), 6)
    ids = torch.zeros(1, 3, dtype=torch.int64)
    t.raises(ValueError, mtp, torch.zeros(1, 3, 5, dtype=F64), ids, embed, head)
    t.raises(ValueError, mtp, torch.zeros(3, 6, dtype=F64), ids, embed, head)
    t.raises(ValueError, mtp, torch.zeros(1, 3, 6, dtype=F64), torch.zeros(1, 4, dtype=torch.int64), embed, head)


# -- 12.2 mtp_loss ----------------------------------------------------------------------------------


@visible_check("12.2")
def uniform_logits_give_weight_times_log_vocab(t):
    """one depth of all-zero logits over 4 tokens, weight 0.3: 0.3 * ln 4, whatever the targets"""
    targets = torch.tensor([[0, 3, 1, 2, 2]])
    loss = t.learner("mtp").mtp_loss([torch.zeros(1, 4, 4, dtype=F64)], targets, 0.3)
    t.close(loss, torch.tensor(0.3 * math.log(4), dtype=F64), atol=1e-12, rtol=1e-12)


@visible_check("12.2")
def two_depths_against_cross_entropy(t):
    """D = 2, T = 6, weight 0.1: 0.1 / 2 * (CE(depth 1, targets[:, 1:]) + CE(depth 2, targets[:, 2:]))"""
    targets = seeded_ints(30, 9, 3, 6)
    d1, d2 = seeded_randn(31, 3, 5, 9), seeded_randn(32, 3, 4, 9)
    ce = [F.cross_entropy(d.flatten(0, 1), targets[:, k:].flatten()) for k, d in ((1, d1), (2, d2))]
    t.close(t.learner("mtp").mtp_loss([d1, d2], targets, 0.1), 0.1 / 2 * (ce[0] + ce[1]), atol=1e-12, rtol=1e-12)


@visible_check("12.2", inputs=True)
def rejects_an_empty_list_and_a_short_window(t):
    """no depths, T = 2 for D = 2, and depth 1 logits of length T raise ValueError"""
    lib = t.learner("mtp")
    targets = torch.zeros(1, 2, dtype=torch.int64)
    t.raises(ValueError, lib.mtp_loss, [], targets, 0.3)
    t.raises(ValueError, lib.mtp_loss, [torch.zeros(1, 1, 3), torch.zeros(1, 0, 3)], targets, 0.3)
    t.raises(ValueError, lib.mtp_loss, [torch.zeros(1, 2, 3)], targets, 0.3)


# -- 12.3 speculative_generate ----------------------------------------------------------------------


@visible_check("12.3")
def equals_greedy_and_counts_the_passes(t):
    """7 new tokens after a 4-token prompt: plain greedy's tokens, and the passes, drafts and acceptances of the loop"""
    ids = seeded_ints(41, 13, 1, 4)
    try:
        trunk, mtp = _trunk_and_mtp(t, 40)
    except GradingError:
        raise
    except Exception:
        # Only a package whose earlier chapters are stubs too fails to build Part II's Llama (the grader fills them
        # in): let this exercise's own stub speak first, then report the failure.
        t.learner("mtp").speculative_generate(None, None, ids, 7)
        raise
    tokens, stats = t.learner("mtp").speculative_generate(trunk, mtp, ids, 7)
    expected_tokens, expected_stats = _expected_speculation(trunk, mtp, ids, 7)
    t.equal(tokens, _greedy(trunk, ids, 7), what="tokens against plain greedy decoding")
    t.equal(stats, expected_stats, what="stats")
    t.equal(tokens, expected_tokens, what="tokens")


@visible_check("12.3")
def zero_and_one_new_token(t):
    """0 new tokens: the prompt and no pass; 1 new token: one pass, no draft"""
    trunk, mtp = _trunk_and_mtp(t, 42)
    ids = seeded_ints(43, 13, 1, 3)
    lib = t.learner("mtp")
    t.equal(lib.speculative_generate(trunk, mtp, ids, 0), (ids, {"forwards": 0, "drafted": 0, "accepted": 0}))
    tokens, stats = lib.speculative_generate(trunk, mtp, ids, 1)
    t.equal(tokens, _greedy(trunk, ids, 1), what="tokens")
    t.equal(stats, {"forwards": 1, "drafted": 0, "accepted": 0}, what="stats")


@visible_check("12.3", inputs=True)
def rejects_two_texts_and_an_overflow(t):
    """a batch of 2, float ids, and 3 + 38 tokens for a context of 40 raise ValueError"""
    trunk, mtp = _trunk_and_mtp(t, 44)
    lib = t.learner("mtp")
    t.raises(ValueError, lib.speculative_generate, trunk, mtp, torch.zeros(2, 3, dtype=torch.int64), 2)
    t.raises(ValueError, lib.speculative_generate, trunk, mtp, torch.zeros(1, 3), 2)
    t.raises(ValueError, lib.speculative_generate, trunk, mtp, torch.zeros(1, 3, dtype=torch.int64), 38)
