"""Hidden tests of Chapter 3 — attention (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
They may compute expected values with ``t.reference(module)``.
"""

from course_lib.checks import learner_model, seeded_randn

import torch
import torch.nn.functional as F

from hidden import hidden_test

# -- 3.1 scaled_dot_product_attention -----------------------------------------------------------------


@hidden_test("3.1")
def many_shapes_and_masks(t):
    """seeded inputs of many shapes, with and without random masks, against the reference (float64)"""
    lib, ref = t.learner("attention"), t.reference("attention")
    shapes = [
        ((1, 1), (1, 1), 1),
        ((3, 5), (7, 5), 2),
        ((2, 4, 6), (2, 9, 6), 3),
        ((2, 3, 8, 4), (2, 3, 8, 4), 4),
        ((2, 1, 5, 16), (1, 4, 6, 16), 6),
    ]
    for i, (q_shape, k_shape, d_v) in enumerate(shapes):
        q, k, v = (
            seeded_randn(100 + i, *q_shape),
            seeded_randn(200 + i, *k_shape),
            seeded_randn(300 + i, *k_shape[:-1], d_v),
        )
        mask = torch.rand(q_shape[-2], k_shape[-2], generator=torch.Generator().manual_seed(400 + i)) > 0.3
        for m in (None, mask):
            out, weights = lib.scaled_dot_product_attention(q, k, v, mask=m)
            expected_out, expected_weights = ref.scaled_dot_product_attention(q, k, v, mask=m)
            t.close(out, expected_out, atol=1e-6, rtol=1e-6, what=f"output, case {i}")
            t.close(weights, expected_weights, atol=1e-6, rtol=1e-6, what=f"weights, case {i}")


@hidden_test("3.1")
def float32_in_float32_out(t):
    """float32 inputs give float32 results that match the reference"""
    lib, ref = t.learner("attention"), t.reference("attention")
    q, k, v = (seeded_randn(500 + i, 2, 6, 8, dtype=torch.float32) for i in range(3))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    out, weights = lib.scaled_dot_product_attention(q, k, v, mask=mask)
    expected_out, expected_weights = ref.scaled_dot_product_attention(q, k, v, mask=mask)
    t.close(out, expected_out, atol=1e-5, rtol=1e-4, what="output")
    t.close(weights, expected_weights, atol=1e-5, rtol=1e-4, what="weights")


@hidden_test("3.1")
def masked_edge_cases(t):
    """all keys masked, a mask broadcast over keys, a single key, very large scores"""
    lib, ref = t.learner("attention"), t.reference("attention")
    q, k, v = seeded_randn(600, 3, 4), seeded_randn(601, 5, 4), seeded_randn(602, 5, 2)
    for mask in (torch.zeros(3, 5, dtype=torch.bool), torch.tensor([[True], [False], [True]])):
        out, weights = lib.scaled_dot_product_attention(q, k, v, mask=mask)
        expected_out, expected_weights = ref.scaled_dot_product_attention(q, k, v, mask=mask)
        t.close(out, expected_out, what="output with masked rows")
        t.close(weights, expected_weights, what="weights with masked rows")
    out, weights = lib.scaled_dot_product_attention(q, k[:1], v[:1])
    t.close(weights, torch.ones(3, 1, dtype=torch.float64), what="weights with a single key")
    big = 300 * q
    out, _ = lib.scaled_dot_product_attention(big, k, v, mask=torch.ones(3, 5, dtype=torch.bool).tril(1))
    t.close(
        out,
        ref.scaled_dot_product_attention(big, k, v, mask=torch.ones(3, 5, dtype=torch.bool).tril(1))[0],
        what="large scores",
    )


@hidden_test("3.1")
def dropout_in_training_only(t):
    """dropout: none in evaluation; in training about p of the weights dropped and the rest scaled by 1/(1-p)"""
    lib, ref = t.learner("attention"), t.reference("attention")
    q, k, v = seeded_randn(700, 4, 4, 32, 8), seeded_randn(701, 4, 4, 32, 8), seeded_randn(702, 4, 4, 32, 8)
    plain_out, plain = ref.scaled_dot_product_attention(q, k, v)
    for p in (0.2, 0.7):
        out, weights = lib.scaled_dot_product_attention(q, k, v, dropout_p=p, training=True)
        kept = weights != 0
        dropped_share = 1.0 - kept.double().mean().item()
        t.true(abs(dropped_share - p) < 0.03, "the share of dropped weights is far from dropout_p")
        t.close(weights[kept], (plain / (1 - p))[kept], what="kept weights")
        t.close(out, weights @ v, what="output from the dropped weights")
    out, weights = lib.scaled_dot_product_attention(q, k, v, dropout_p=0.7, training=False)
    t.close(weights, plain, what="no dropout in evaluation")
    out, weights = lib.scaled_dot_product_attention(q, k, v, dropout_p=0.0, training=True)
    t.close(out, plain_out, what="no dropout when dropout_p is 0")


@hidden_test("3.1", inputs=True)
def rejects_bad_inputs(t):
    """ValueError for mismatched d_k or seq_k, and for float, int and uint8 masks"""
    lib = t.learner("attention")
    t.raises(
        ValueError,
        lib.scaled_dot_product_attention,
        seeded_randn(800, 2, 3, 4),
        seeded_randn(801, 2, 5, 6),
        seeded_randn(802, 2, 5, 4),
    )
    t.raises(
        ValueError,
        lib.scaled_dot_product_attention,
        seeded_randn(803, 3, 4),
        seeded_randn(804, 5, 4),
        seeded_randn(805, 6, 4),
    )
    q, k, v = seeded_randn(806, 3, 4), seeded_randn(807, 5, 4), seeded_randn(808, 5, 4)
    for mask in (torch.zeros(3, 5), torch.ones(3, 5, dtype=torch.int64), torch.ones(3, 5, dtype=torch.uint8)):
        t.raises(ValueError, lib.scaled_dot_product_attention, q, k, v, mask=mask)


@hidden_test("3.1", inputs=True)
def messages_say_what_was_expected_and_what_came(t):
    """the ValueErrors name the two d_k, the two seq_k, and the bool dtype expected against the one given"""
    lib = t.learner("attention")
    q, k, v = seeded_randn(810, 2, 3, 7), seeded_randn(811, 2, 5, 7), seeded_randn(812, 2, 5, 4)
    message = t.raises(ValueError, lib.scaled_dot_product_attention, q, seeded_randn(813, 2, 5, 11), v)
    t.true("7" in message and "11" in message, "the message should give both d_k (7 and 11)")
    message = t.raises(ValueError, lib.scaled_dot_product_attention, q, k, seeded_randn(814, 2, 13, 4))
    t.true("5" in message and "13" in message, "the message should give both seq_k (5 and 13)")
    message = t.raises(ValueError, lib.scaled_dot_product_attention, q, k, v, mask=torch.ones(3, 5)).lower()
    t.true("bool" in message and "float" in message, "the message should say a bool mask was expected and a float came")


# -- 3.2 causal_mask ----------------------------------------------------------------------------------


@hidden_test("3.2")
def sizes_against_the_reference(t):
    """sizes 1 to 40 and 300 against the reference"""
    lib, ref = t.learner("attention"), t.reference("attention")
    for n in [*range(1, 41), 300]:
        t.equal(lib.causal_mask(n), ref.causal_mask(n), f"causal_mask({n})")


@hidden_test("3.2")
def honours_the_device_argument(t):
    """the device argument ('cpu') is accepted, by name and by position"""
    lib, ref = t.learner("attention"), t.reference("attention")
    t.equal(lib.causal_mask(6, device="cpu"), ref.causal_mask(6))
    t.equal(lib.causal_mask(3, "cpu"), ref.causal_mask(3))


@hidden_test("3.2")
def reproduces_is_causal(t):
    """with the reference attention, the mask reproduces PyTorch's is_causal=True"""
    lib, ref = t.learner("attention"), t.reference("attention")
    generator = torch.Generator().manual_seed(31)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    out, _ = ref.scaled_dot_product_attention(q, k, v, mask=lib.causal_mask(9))
    t.close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-6)


@hidden_test("3.2", inputs=True)
def rejects_bad_sizes(t):
    """ValueError for sizes 0, -1, -100 and 2.0"""
    lib = t.learner("attention")
    for bad in (0, -1, -100, 2.0):
        t.raises(ValueError, lib.causal_mask, bad)


# -- 3.3 MultiHeadAttention.forward -------------------------------------------------------------------


def _pair(t, seed, *args, **kwargs):
    """A reference layer with seeded float64 weights, and the learner's layer holding the same weights."""
    ref = t.reference("attention")
    torch.manual_seed(seed)
    expected = ref.MultiHeadAttention(*args, **kwargs).double().eval()
    mine = learner_model(t, "attention", "MultiHeadAttention", expected.state_dict(), *args, **kwargs)
    return mine, expected


@hidden_test("3.3")
def matches_the_reference(t):
    """seeded weights, causal and not, several shapes (float64), outputs and last_weights"""
    cases = [(24, 3, 2, 7, True), (24, 3, 2, 7, False), (32, 8, 1, 1, True), (12, 1, 3, 4, True), (64, 4, 2, 13, False)]
    for i, (d_model, n_heads, batch, seq, causal) in enumerate(cases):
        mine, expected = _pair(t, 900 + i, d_model, n_heads, causal=causal)
        x = seeded_randn(910 + i, batch, seq, d_model)
        with torch.no_grad():
            y = expected(x)
        t.close(mine(x), y, atol=1e-6, rtol=1e-6, what=f"output, case {i}")
        weights = t.value(mine.last_weights)
        t.close(weights, expected.last_weights, atol=1e-6, rtol=1e-6, what=f"last_weights, case {i}")
        t.true(weights.requires_grad is False, "last_weights must be detached")


@hidden_test("3.3")
def extra_masks(t):
    """an extra bool mask is combined with the causal mask: padding, sliding window, both"""
    ref = t.reference("attention")
    x = seeded_randn(920, 2, 6, 16)
    padding = torch.tensor([[True] * 6, [True] * 3 + [False] * 3]).view(2, 1, 1, 6)
    window = ref.sliding_window_mask(6, 2)
    for causal in (True, False):
        mine, expected = _pair(t, 921, 16, 4, causal=causal)
        for name, mask in (("padding", padding), ("window", window), ("both", padding & window)):
            with torch.no_grad():
                y = expected(x, mask)
            t.close(mine(x, mask), y, atol=1e-6, rtol=1e-6, what=f"{name} mask, causal={causal}")


@hidden_test("3.3")
def dropout_only_in_training(t):
    """attention dropout acts in training mode only, on the weights"""
    mine, expected = _pair(t, 930, 16, 2, dropout=0.5)
    x = seeded_randn(931, 4, 12, 16)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-6, rtol=1e-6, what="evaluation mode")
    plain = expected.last_weights
    mine.train()
    mine(x)
    weights = t.value(mine.last_weights)
    allowed = torch.ones(12, 12, dtype=torch.bool).tril().expand(4, 2, 12, 12)
    kept = weights != 0
    share = 1.0 - kept[allowed].double().mean().item()
    t.true(abs(share - 0.5) < 0.15, "in training mode about half of the weights should be dropped")
    t.close(weights[kept], (2 * plain)[kept], what="kept weights in training mode")
    mine.eval()
    t.close(mine(x), y, atol=1e-6, rtol=1e-6, what="back in evaluation mode")


@hidden_test("3.3")
def dropout_on_the_weights_only(t):
    """in training mode the output is out_proj of the dropped weights times the values: no other dropout"""
    mine, expected = _pair(t, 935, 16, 2, dropout=0.5)
    mine.train()
    x = seeded_randn(936, 3, 10, 16)
    y = mine(x)
    weights = t.value(mine.last_weights)
    t.true(bool((weights == 0).any()), "in training mode dropout should zero some attention weights")
    with torch.no_grad():
        v = expected.v_proj(x).view(3, 10, 2, 8).transpose(1, 2)
        merged = (weights @ v).transpose(1, 2).reshape(3, 10, 16)
        t.close(y, expected.out_proj(merged), atol=1e-9, rtol=1e-9, what="output from the dropped weights")


@hidden_test("3.3")
def bias_free_float32(t):
    """bias=False, one head, float32"""
    lib, ref = t.learner("attention"), t.reference("attention")
    torch.manual_seed(940)
    expected = ref.MultiHeadAttention(8, 1, bias=False)
    mine = lib.MultiHeadAttention(8, 1, bias=False)
    mine.load_state_dict(dict(expected.state_dict()))
    x = seeded_randn(941, 2, 5, 8, dtype=torch.float32)
    with torch.no_grad():
        y = expected(x)
    t.close(mine(x), y, atol=1e-5, rtol=1e-4, what="float32 output")


@hidden_test("3.3", inputs=True)
def attention_rejects_bad_inputs(t):
    """ValueError for wrong shapes and non-bool masks"""
    mine = t.learner("attention").MultiHeadAttention(8, 1, bias=False)
    for bad in (torch.zeros(2, 5, 6), torch.zeros(5, 8), torch.zeros(1, 2, 5, 8)):
        t.raises(ValueError, mine, bad)
    t.raises(ValueError, mine, torch.zeros(2, 5, 8), torch.ones(5, 5))
