"""Visible checks of Chapter 4 — the transformer block.

Expected values come from PyTorch's own operations (``torch.nn.functional.layer_norm``,
``torch.nn.functional.gelu``, ``torch.nn.functional.linear``,
``torch.nn.functional.scaled_dot_product_attention``) or are written out. Everything is float64,
so the tolerances are tight.
"""

from course_lib.checks import learner_model
from course_lib.grading import visible_check

import torch
import torch.nn.functional as F

F64 = torch.float64


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- 4.1 LayerNorm.forward ------------------------------------------------------------------------


@visible_check("4.1")
def matches_pytorch_layer_norm(t):
    """matches torch's layer_norm with a learned scale and shift (float64, (batch, seq, d_model))"""
    lib = t.learner("layers")
    ln = lib.LayerNorm(12)
    ln.double()
    weight, bias = 1.0 + 0.5 * _randn(1, 12), _randn(2, 12)
    ln.load_state_dict({"weight": weight, "bias": bias})
    x = 3.0 + 2.0 * _randn(3, 2, 5, 12)
    t.close(ln(x), F.layer_norm(x, (12,), weight, bias, eps=1e-5), atol=1e-6, rtol=1e-6)


@visible_check("4.1")
def statistics_and_small_example(t):
    """[1, 2, 3, 4] -> mean 0, biased variance 1: (x - 2.5) / sqrt(1.25 + eps)"""
    lib = t.learner("layers")
    ln = lib.LayerNorm(4)
    ln.double()
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64)
    expected = (x - 2.5) / torch.sqrt(torch.tensor(1.25 + 1e-5, dtype=F64))
    y = ln(x)
    t.close(y, expected, atol=1e-9, rtol=1e-9, what="LayerNorm(4) of [1, 2, 3, 4]")
    z = ln(_randn(4, 3, 7, 4))
    t.close(z.mean(-1), torch.zeros(3, 7, dtype=F64), atol=1e-9, rtol=0, what="mean of each output vector")
    t.close(
        z.var(-1, unbiased=False),
        torch.ones(3, 7, dtype=F64),
        atol=1e-3,
        rtol=0,
        what="biased variance of each output vector",
    )


@visible_check("4.1")
def without_bias_and_any_leading_dims(t):
    """bias=False, a 1-D vector and a 4-D tensor; a large eps changes the result as torch's does"""
    lib = t.learner("layers")
    ln = lib.LayerNorm(6, eps=0.5, bias=False)
    ln.double()
    weight = _randn(5, 6)
    ln.load_state_dict({"weight": weight})
    for shape in ((6,), (2, 3, 4, 6)):
        x = _randn(6, *shape)
        t.close(ln(x), F.layer_norm(x, (6,), weight, None, eps=0.5), atol=1e-6, rtol=1e-6, what=f"shape {shape}")


@visible_check("4.1", inputs=True)
def rejects_the_wrong_width(t):
    """a last dimension other than d_model raises ValueError"""
    lib = t.learner("layers")
    ln = lib.LayerNorm(8)
    t.raises(ValueError, ln, torch.zeros(2, 3, 7))
    t.raises(ValueError, ln, torch.zeros(8, 2))


# -- 4.2 gelu -------------------------------------------------------------------------------------


@visible_check("4.2")
def exact_form_matches_pytorch(t):
    """approximate='none' (the default) matches torch's gelu from -6 to 6 (float64)"""
    lib = t.learner("layers")
    x = torch.linspace(-6, 6, 241, dtype=F64)
    t.close(lib.gelu(x), F.gelu(x), atol=1e-6, rtol=1e-6, what="gelu(x)")
    t.close(lib.gelu(x, approximate="none"), F.gelu(x), atol=1e-6, rtol=1e-6, what="gelu(x, 'none')")
    t.close(
        lib.gelu(torch.tensor([-1.0, 0.0, 1.0])),
        torch.tensor([-0.15865525, 0.0, 0.84134475]),
        atol=1e-6,
        what="gelu([-1, 0, 1]) in float32",
    )


@visible_check("4.2")
def tanh_form_matches_pytorch(t):
    """approximate='tanh' matches torch's gelu(approximate='tanh'), on a (2, 3, 4) tensor too"""
    lib = t.learner("layers")
    x = torch.linspace(-6, 6, 241, dtype=F64)
    t.close(lib.gelu(x, approximate="tanh"), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6, what="1-D")
    x = 2.0 * _randn(7, 2, 3, 4)
    t.close(lib.gelu(x, "tanh"), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6, what="(2, 3, 4)")


@visible_check("4.2", inputs=True)
def rejects_unknown_forms(t):
    """approximate other than 'none' or 'tanh' raises ValueError"""
    lib = t.learner("layers")
    for bad in ("exact", "TANH", "", None):
        t.raises(ValueError, lib.gelu, torch.zeros(3), approximate=bad)


# -- 4.3 FeedForward.forward ----------------------------------------------------------------------


def _ffn_state(seed: int, d_model: int, d_ff: int, bias: bool = True) -> dict:
    state = {
        "fc_in.weight": _randn(seed, d_ff, d_model) / d_model**0.5,
        "fc_out.weight": _randn(seed + 1, d_model, d_ff) / d_ff**0.5,
    }
    if bias:
        state["fc_in.bias"], state["fc_out.bias"] = _randn(seed + 2, d_ff), _randn(seed + 3, d_model)
    return state


def _ffn_expected(state: dict, x: torch.Tensor, approximate: str) -> torch.Tensor:
    h = F.gelu(F.linear(x, state["fc_in.weight"], state.get("fc_in.bias")), approximate=approximate)
    return F.linear(h, state["fc_out.weight"], state.get("fc_out.bias"))


@visible_check("4.3")
def matches_linear_gelu_linear(t):
    """d_ff = 4 d_model by default; output = fc_out(gelu_tanh(fc_in(x))) (float64)"""
    lib = t.learner("layers")
    ffn = lib.FeedForward(8)
    ffn.double()
    state = _ffn_state(10, 8, 32)
    ffn.load_state_dict(state)
    ffn.eval()
    x = _randn(14, 2, 5, 8)
    t.close(ffn(x), _ffn_expected(state, x, "tanh"), atol=1e-6, rtol=1e-6)


@visible_check("4.3")
def other_settings(t):
    """d_ff=12, bias=False, approximate='none', on a 2-D input"""
    lib = t.learner("layers")
    ffn = lib.FeedForward(6, d_ff=12, bias=False, approximate="none")
    ffn.double()
    state = _ffn_state(20, 6, 12, bias=False)
    ffn.load_state_dict(state)
    x = _randn(24, 9, 6)
    t.close(ffn(x), _ffn_expected(state, x, "none"), atol=1e-6, rtol=1e-6)


@visible_check("4.3")
def dropout_only_in_training(t):
    """dropout=0.5 leaves evaluation alone; in training it zeros outputs and doubles the rest"""
    lib = t.learner("layers")
    ffn = lib.FeedForward(16, dropout=0.5)
    ffn.double()
    state = _ffn_state(30, 16, 64)
    ffn.load_state_dict(state)
    x = _randn(34, 4, 8, 16)
    expected = _ffn_expected(state, x, "tanh")
    ffn.eval()
    t.close(ffn(x), expected, atol=1e-6, rtol=1e-6, what="evaluation mode")
    ffn.train()
    y = ffn(x)
    kept = y != 0
    t.true(0.3 < kept.double().mean().item() < 0.7, "in training about half of the outputs should be zeroed")
    t.close(y[kept], 2.0 * expected[kept], atol=1e-6, rtol=1e-6, what="kept outputs, divided by 1 - p")


@visible_check("4.3", inputs=True)
def feed_forward_rejects_the_wrong_width(t):
    """an input whose last dimension is not d_model raises ValueError"""
    lib = t.learner("layers")
    ffn = lib.FeedForward(8)
    t.raises(ValueError, ffn, torch.zeros(2, 3, 32))


# -- 4.4 TransformerBlock.forward -----------------------------------------------------------------


def _block_state(seed: int, d_model: int, d_ff: int) -> dict:
    """Seeded float64 weights for every parameter of a TransformerBlock (with biases)."""
    state = {}
    for i, name in enumerate(("ln_1", "ln_2")):
        state[f"{name}.weight"] = 1.0 + 0.2 * _randn(seed + i, d_model)
        state[f"{name}.bias"] = 0.2 * _randn(seed + 10 + i, d_model)
    for i, name in enumerate(("q_proj", "k_proj", "v_proj", "out_proj")):
        state[f"attn.{name}.weight"] = _randn(seed + 20 + i, d_model, d_model) / d_model**0.5
        state[f"attn.{name}.bias"] = 0.1 * _randn(seed + 30 + i, d_model)
    state |= {f"ffn.{k}": v for k, v in _ffn_state(seed + 40, d_model, d_ff).items()}
    return state


def _block_expected(state: dict, x: torch.Tensor, n_heads: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    """GPT-2's pre-norm block, from PyTorch's functional operations."""
    batch, seq, d = x.shape

    def heads(name, h):  # (batch, n_heads, seq, d_head)
        return (
            F.linear(h, state[f"attn.{name}.weight"], state[f"attn.{name}.bias"])
            .view(batch, seq, n_heads, -1)
            .transpose(1, 2)
        )

    h = F.layer_norm(x, (d,), state["ln_1.weight"], state["ln_1.bias"], eps=1e-5)
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril()
    if padding is not None:
        allowed = allowed & padding
    a = F.scaled_dot_product_attention(heads("q_proj", h), heads("k_proj", h), heads("v_proj", h), attn_mask=allowed)
    a = F.linear(a.transpose(1, 2).reshape(batch, seq, d), state["attn.out_proj.weight"], state["attn.out_proj.bias"])
    x = x + a
    h = F.layer_norm(x, (d,), state["ln_2.weight"], state["ln_2.bias"], eps=1e-5)
    return x + _ffn_expected({k[4:]: v for k, v in state.items() if k.startswith("ffn.")}, h, "tanh")


def _learner_block(t, state: dict, *args, **kwargs):
    return learner_model(t, "block", "TransformerBlock", state, *args, **kwargs)


@visible_check("4.4")
def matches_the_pre_norm_formula(t):
    """matches x + attn(ln_1(x)), then + ffn(ln_2(x)), built from PyTorch's ops (float64)"""
    state = _block_state(100, 16, 64)
    block = _learner_block(t, state, 16, 4)
    x = _randn(150, 2, 6, 16)
    y = block(x)
    t.equal((y.dtype, tuple(y.shape)), (F64, (2, 6, 16)), "output dtype and shape: the width is kept")
    t.close(y, _block_expected(state, x, 4), atol=1e-6, rtol=1e-6)


@visible_check("4.4")
def residuals_carry_the_input(t):
    """with the attention and feed-forward outputs zeroed, the block returns its input exactly"""
    state = _block_state(200, 8, 32)
    for name in ("attn.out_proj.weight", "attn.out_proj.bias", "ffn.fc_out.weight", "ffn.fc_out.bias"):
        state[name] = torch.zeros_like(state[name])
    block = _learner_block(t, state, 8, 2)
    x = _randn(250, 3, 4, 8)
    t.close(block(x), x, atol=1e-12, rtol=0, what="output of a block whose sub-layers output zero")


@visible_check("4.4")
def passes_the_extra_mask_on(t):
    """an extra (batch, 1, 1, seq) padding mask reaches the attention"""
    state = _block_state(300, 12, 48)
    block = _learner_block(t, state, 12, 3)
    x = _randn(350, 2, 5, 12)
    keep = torch.tensor([[True] * 5, [True] * 3 + [False] * 2]).view(2, 1, 1, 5)
    t.close(block(x, keep), _block_expected(state, x, 3, padding=keep), atol=1e-6, rtol=1e-6)


@visible_check("4.4", inputs=True)
def rejects_bad_inputs(t):
    """input that is not (batch, seq, d_model) raises ValueError"""
    block = t.learner("block").TransformerBlock(8, 2)
    t.raises(ValueError, block, torch.zeros(4, 8))
    t.raises(ValueError, block, torch.zeros(1, 4, 6))
