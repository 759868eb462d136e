"""Hidden tests of Chapter 4 — the transformer block (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
They may compute expected values with ``t.reference(module)``.
"""

from course_lib.checks import learner_model, seeded_randn

import torch
import torch.nn.functional as F

from hidden import hidden_test

# -- 4.1 LayerNorm.forward ----------------------------------------------------------------------------


def _layer_norm_pair(t, seed, d_model, **kwargs):
    """A reference LayerNorm with seeded float64 weights, and the learner's holding the same weights."""
    ref = t.reference("layers")
    expected = ref.LayerNorm(d_model, **kwargs).double()
    with torch.no_grad():
        expected.weight.copy_(1.0 + seeded_randn(seed, d_model))
        if expected.bias is not None:
            expected.bias.copy_(seeded_randn(seed + 1, d_model))
    mine = learner_model(t, "layers", "LayerNorm", expected.state_dict(), d_model, **kwargs, train=True)
    return mine, expected


@hidden_test("4.1")
def many_shapes_and_settings(t):
    """several widths, shapes, eps and bias settings against the reference (float64)"""
    cases = [
        (1, (3, 1), {}),
        (2, (4, 2), {}),
        (3, (5, 3), {"eps": 1e-2}),
        (7, (2, 3, 7), {"bias": False}),
        (64, (2, 2, 3, 64), {"eps": 0.3}),
        (5, (5,), {"bias": False, "eps": 1.0}),
    ]
    for i, (d, shape, kwargs) in enumerate(cases):
        mine, expected = _layer_norm_pair(t, 500 + 10 * i, d, **kwargs)
        x = 4.0 - 3.0 * seeded_randn(600 + i, *shape)
        with torch.no_grad():
            y = expected(x)
        t.close(mine(x), y, atol=1e-6, rtol=1e-6, what=f"case {i}")


@hidden_test("4.1")
def constant_vectors_and_float32(t):
    """a constant vector gives the shift exactly; float32 in, float32 out"""
    mine, expected = _layer_norm_pair(t, 700, 6)
    x = torch.full((2, 6), 3.5, dtype=torch.float64)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-6, rtol=1e-6, what="constant vectors")
    lib = t.learner("layers")
    mine32 = lib.LayerNorm(10)
    x = seeded_randn(701, 3, 4, 10, dtype=torch.float32)
    t.close(mine32(x), F.layer_norm(x, (10,), eps=1e-5), atol=1e-5, rtol=1e-4, what="float32")


@hidden_test("4.1")
def each_token_on_its_own(t):
    """changing one token does not change the others' outputs; scaling an input leaves the output (almost) unchanged"""
    mine, expected = _layer_norm_pair(t, 710, 16)
    x = seeded_randn(711, 2, 5, 16)
    x2 = x.clone()
    x2[1, 3] = 100.0 * seeded_randn(712, 16)
    a, b = mine(x), mine(x2)
    t.true(
        bool(torch.equal(a[0], b[0]) and torch.equal(a[1, :3], b[1, :3]) and torch.equal(a[1, 4:], b[1, 4:])),
        "a token's output must depend on its own features only",
    )
    with torch.no_grad():
        y = expected(1000.0 * x)
    t.close(mine(1000.0 * x), y, atol=1e-6, rtol=1e-6, what="large inputs")


@hidden_test("4.1", inputs=True)
def rejects_bad_inputs(t):
    """ValueError for a wrong last dimension, a 0-d tensor, a transposed input"""
    lib = t.learner("layers")
    ln = lib.LayerNorm(8)
    for bad in (torch.zeros(2, 9), torch.zeros(8, 3), torch.tensor(1.0), torch.zeros(1, 8, 4)):
        t.raises(ValueError, ln, bad)


@hidden_test("4.1", inputs=True)
def rejections_name_both_sizes(t):
    """a wrong width raises ValueError naming d_model and the width given; a list is refused too"""
    lib = t.learner("layers")
    ln = lib.LayerNorm(8)
    message = t.raises(ValueError, ln, torch.zeros(2, 13))
    t.true("8" in message and "13" in message, "the message should name d_model (8) and the last dimension (13)")
    t.raises(ValueError, ln, [0.5] * 8)


# -- 4.2 gelu -----------------------------------------------------------------------------------------


@hidden_test("4.2")
def wide_range_both_forms(t):
    """both forms against the reference, from -40 to 40 and on seeded tensors of several shapes (float64)"""
    lib, ref = t.learner("layers"), t.reference("layers")
    inputs = [
        torch.linspace(-40, 40, 1601, dtype=torch.float64),
        3.0 * seeded_randn(800, 2, 3, 5),
        seeded_randn(801, 1, 1),
        torch.tensor(0.7, dtype=torch.float64),
    ]
    for i, x in enumerate(inputs):
        for form in ("none", "tanh"):
            t.close(
                lib.gelu(x, approximate=form),
                ref.gelu(x, approximate=form),
                atol=1e-6,
                rtol=1e-6,
                what=f"input {i}, {form}",
            )
            t.close(
                lib.gelu(x, form), F.gelu(x, approximate=form), atol=1e-6, rtol=1e-6, what=f"input {i}, {form} (torch)"
            )


@hidden_test("4.2")
def float32_keeps_its_dtype(t):
    """float32 inputs give float32 outputs of the same shape"""
    lib = t.learner("layers")
    x = seeded_randn(810, 4, 7, dtype=torch.float32)
    for form in ("none", "tanh"):
        t.close(lib.gelu(x, form), F.gelu(x, approximate=form), atol=1e-6, rtol=1e-5, what=form)


@hidden_test("4.2")
def the_two_forms_differ(t):
    """'none' and 'tanh' are different functions: the exact one is not returned for 'tanh'"""
    lib = t.learner("layers")
    x = torch.tensor([-2.5, -1.0, 1.5, 3.0], dtype=torch.float64)
    gap = (lib.gelu(x, "none") - lib.gelu(x, "tanh")).abs().max().item()
    t.true(gap > 1e-5, "gelu(x, 'tanh') must be the tanh approximation, not the exact form")


@hidden_test("4.2", inputs=True)
def rejects_unknown_forms(t):
    """ValueError for 'erf', 'Tanh', 'approximate' and 1"""
    lib = t.learner("layers")
    for bad in ("erf", "Tanh", "approximate", 1):
        t.raises(ValueError, lib.gelu, torch.ones(2, dtype=torch.float64), bad)


@hidden_test("4.2")
def differentiable_with_respect_to_x(t):
    """an input that requires grad gives an output that requires grad (no detach, no no_grad), both forms"""
    lib = t.learner("layers")
    x = seeded_randn(820, 3, 5).requires_grad_(True)
    for form in ("none", "tanh"):
        out = lib.gelu(x, form)
        t.true(out.requires_grad is True, "the output must stay connected to x for autograd")
        t.close(out, F.gelu(x.detach(), approximate=form), atol=1e-6, rtol=1e-6, what=form)


@hidden_test("4.2", inputs=True)
def rejects_what_is_not_floating_point(t):
    """integer, bool and list inputs raise ValueError; a bad form's message lists 'none' and 'tanh'"""
    lib = t.learner("layers")
    for bad in (torch.arange(5), torch.tensor([True, False]), [0.5, 1.5]):
        t.raises(ValueError, lib.gelu, bad)
    message = t.raises(ValueError, lib.gelu, torch.ones(2, dtype=torch.float64), "erf")
    t.true("none" in message and "tanh" in message, "the message should say which values are allowed")


# -- 4.3 FeedForward.forward --------------------------------------------------------------------------


def _feed_forward_pair(t, seed, *args, **kwargs):
    """A reference FeedForward with seeded float64 weights, and the learner's holding the same weights."""
    ref = t.reference("layers")
    torch.manual_seed(seed)
    expected = ref.FeedForward(*args, **kwargs).double().eval()
    mine = learner_model(t, "layers", "FeedForward", expected.state_dict(), *args, **kwargs)
    return mine, expected


@hidden_test("4.3")
def matches_the_reference(t):
    """several widths, both GELU forms, with and without biases, 1-D to 4-D inputs (float64)"""
    cases = [
        ((4,), {}, (4,)),
        ((8, 16), {"approximate": "none"}, (3, 8)),
        ((12,), {"bias": False}, (2, 5, 12)),
        ((6, 1), {}, (2, 2, 3, 6)),
        ((32, 64), {"approximate": "none", "bias": False}, (1, 9, 32)),
    ]
    for i, (args, kwargs, shape) in enumerate(cases):
        mine, expected = _feed_forward_pair(t, 1000 + i, *args, **kwargs)
        x = 2.0 * seeded_randn(1010 + i, *shape)
        with torch.no_grad():
            y = expected(x)
        t.close(mine(x), y, atol=1e-6, rtol=1e-6, what=f"case {i}")


@hidden_test("4.3")
def uses_the_chosen_gelu(t):
    """the tanh and the exact layer with the same weights give different outputs, each the right one"""
    mine_tanh, expected_tanh = _feed_forward_pair(t, 1100, 8, approximate="tanh")
    mine_exact, expected_exact = _feed_forward_pair(t, 1100, 8, approximate="none")
    x = 3.0 * seeded_randn(1101, 4, 8)
    with torch.no_grad():
        y_tanh, y_exact = expected_tanh(x), expected_exact(x)
    t.close(mine_tanh(x), y_tanh, atol=1e-9, rtol=1e-9, what="tanh")
    t.close(mine_exact(x), y_exact, atol=1e-9, rtol=1e-9, what="exact")


@hidden_test("4.3")
def dropout_on_the_output_only_in_training(t):
    """dropout=0.25: nothing in evaluation mode; in training, zeros and a 1/(1-p) rescale of the output"""
    mine, expected = _feed_forward_pair(t, 1200, 16, dropout=0.25)
    x = seeded_randn(1201, 8, 16, 16)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-6, rtol=1e-6, what="evaluation mode")
    mine.train()
    dropped = mine(x)
    kept = dropped != 0
    share = 1.0 - kept.double().mean().item()
    t.true(abs(share - 0.25) < 0.08, "in training about a quarter of the outputs should be zeroed")
    t.close(dropped[kept], (y / 0.75)[kept], atol=1e-6, rtol=1e-6, what="kept outputs in training mode")


@hidden_test("4.3", inputs=True)
def rejects_a_wrong_last_dimension(t):
    """ValueError for a wrong last dimension"""
    lib = t.learner("layers")
    ffn = lib.FeedForward(8, d_ff=16)
    for bad in (torch.zeros(2, 16), torch.zeros(8, 3), torch.zeros(1, 2, 7)):
        t.raises(ValueError, ffn, bad)


@hidden_test("4.3", inputs=True)
def feed_forward_rejections_name_both_sizes(t):
    """a wrong width raises ValueError naming d_model and the width given; a list is refused too"""
    lib = t.learner("layers")
    ffn = lib.FeedForward(8, d_ff=16)
    message = t.raises(ValueError, ffn, torch.zeros(2, 13))
    t.true("8" in message and "13" in message, "the message should name d_model (8) and the last dimension (13)")
    t.raises(ValueError, ffn, [0.5] * 8)


# -- 4.4 TransformerBlock.forward ---------------------------------------------------------------------


def _block_pair(t, seed, *args, **kwargs):
    """A reference block with seeded float64 weights (LayerNorms too), and the learner's holding the same weights."""
    ref = t.reference("block")
    torch.manual_seed(seed)
    expected = ref.TransformerBlock(*args, **kwargs).double().eval()
    with torch.no_grad():
        for ln in (expected.ln_1, expected.ln_2):
            ln.weight.normal_(1.0, 0.3)
            if ln.bias is not None:
                ln.bias.normal_(0.0, 0.3)
    mine = learner_model(t, "block", "TransformerBlock", expected.state_dict(), *args, **kwargs)
    return mine, expected


@hidden_test("4.4")
def block_matches_the_reference(t):
    """several widths, head counts, d_ff, eps and bias settings, sequence lengths 1 to 11 (float64)"""
    cases = [
        ((16, 4), {}, (2, 7)),
        ((8, 1), {"d_ff": 8}, (1, 1)),
        ((24, 3), {"bias": False}, (3, 5)),
        ((12, 6), {"eps": 0.1}, (2, 11)),
        ((32, 8), {"d_ff": 40, "bias": False, "eps": 1e-3}, (1, 4)),
    ]
    for i, (args, kwargs, (batch, seq)) in enumerate(cases):
        mine, expected = _block_pair(t, 1300 + i, *args, **kwargs)
        x = 2.0 * seeded_randn(1310 + i, batch, seq, args[0])
        with torch.no_grad():
            y = expected(x)
        t.close(mine(x), y, atol=1e-6, rtol=1e-6, what=f"case {i}")


@hidden_test("4.4")
def causal_and_extra_masks(t):
    """later tokens do not change earlier outputs; an extra padding or window mask reaches the attention"""
    mine, expected = _block_pair(t, 1400, 16, 2)
    x = seeded_randn(1401, 2, 6, 16)
    x2 = x.clone()
    x2[:, 4:] = seeded_randn(1402, 2, 2, 16)
    t.close(mine(x2)[:, :4], mine(x)[:, :4], atol=1e-12, rtol=0, what="causality")
    padding = torch.tensor([[True] * 6, [True] * 2 + [False] * 4]).view(2, 1, 1, 6)
    window = torch.ones(6, 6, dtype=torch.bool).tril() & ~torch.ones(6, 6, dtype=torch.bool).tril(-2)
    for name, mask in (("padding", padding), ("window", window)):
        with torch.no_grad():
            y = expected(x, mask)
        t.close(mine(x, mask), y, atol=1e-6, rtol=1e-6, what=f"{name} mask")


@hidden_test("4.4")
def dropout_in_training_only(t):
    """with dropout=0.3 the block is exact in evaluation mode and random in training mode"""
    mine, expected = _block_pair(t, 1500, 16, 4, dropout=0.3)
    x = seeded_randn(1501, 2, 8, 16)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-6, rtol=1e-6, what="evaluation mode")
    mine.train()
    a, b = mine(x), mine(x)
    t.true(
        bool(torch.isfinite(a).all()) and not torch.allclose(a, y) and not torch.allclose(a, b),
        "in training mode dropout must act (two calls differ, and differ from evaluation)",
    )
    mine.eval()
    t.close(mine(x), y, atol=1e-6, rtol=1e-6, what="back in evaluation mode")


@hidden_test("4.4")
def float32_in_float32_out(t):
    """float32 in, float32 out"""
    lib, ref = t.learner("block"), t.reference("block")
    torch.manual_seed(1600)
    expected = ref.TransformerBlock(8, 2).eval()
    mine = lib.TransformerBlock(8, 2)
    mine.load_state_dict(dict(expected.state_dict()))
    mine.eval()
    x = seeded_randn(1601, 2, 5, 8, dtype=torch.float32)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-5, rtol=1e-4, what="float32")


@hidden_test("4.4", inputs=True)
def block_rejects_bad_inputs(t):
    """ValueError for 2-D, 4-D and wrong-width inputs"""
    mine = t.learner("block").TransformerBlock(8, 2)
    for bad in (torch.zeros(5, 8), torch.zeros(1, 2, 5, 8), torch.zeros(2, 5, 6)):
        t.raises(ValueError, mine, bad)


@hidden_test("4.4")
def dropout_placement(t):
    """in training, the attention output and the feed-forward output are each dropped once, before the residual"""
    _, expected = _block_pair(t, 1700, 16, 2, dropout=0.5)
    x = seeded_randn(1701, 4, 8, 16)
    # Values zeroed and the feed-forward silenced: the block adds dropout(attn.out_proj.bias) to x.
    state = dict(expected.state_dict())
    for name in ("attn.v_proj.weight", "attn.v_proj.bias", "ffn.fc_out.weight", "ffn.fc_out.bias"):
        state[name] = torch.zeros_like(state[name])
    mine = learner_model(t, "block", "TransformerBlock", state, 16, 2, dropout=0.5, train=True)
    added = mine(x) - x
    kept = added != 0
    t.true(abs(kept.double().mean().item() - 0.5) < 0.1, "the attention output should be dropped, once")
    bias = state["attn.out_proj.bias"].expand_as(added)
    t.close(added[kept], 2 * bias[kept], atol=1e-12, rtol=1e-9, what="kept attention outputs, scaled by 1 / (1 - p)")
    # Attention silenced: the block adds the feed-forward's own dropout of ffn(ln_2(x)) to x.
    state = dict(expected.state_dict())
    for name in ("attn.out_proj.weight", "attn.out_proj.bias"):
        state[name] = torch.zeros_like(state[name])
    mine = learner_model(t, "block", "TransformerBlock", state, 16, 2, dropout=0.5, train=True)
    added = mine(x) - x
    kept = added != 0
    with torch.no_grad():
        clean = expected.ffn(expected.ln_2(x))
    t.true(abs(kept.double().mean().item() - 0.5) < 0.1, "the feed-forward output should be dropped, once")
    t.close(
        added[kept], 2 * clean[kept], atol=1e-12, rtol=1e-9, what="kept feed-forward outputs, scaled by 1 / (1 - p)"
    )


@hidden_test("4.4")
def leaves_x_alone(t):
    """x is not modified in place: an input that requires grad is accepted, left unchanged, and can be backpropagated"""
    mine, expected = _block_pair(t, 1800, 16, 4)
    x = seeded_randn(1801, 2, 5, 16)
    with torch.no_grad():
        y = expected(x)
    leaf = x.clone().requires_grad_(True)  # an in-place change of a leaf that requires grad raises
    out = mine(leaf)
    t.close(out, y, atol=1e-6, rtol=1e-6, what="output for an input that requires grad")
    t.equal(leaf.detach(), x, what="x after the call")
    out.sum().backward()  # in-process only: an in-place change of a tensor that autograd saved raises here
