"""Hidden tests of Chapter 5 — GPT-2 end to end (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
They may compute expected values with ``t.reference(module)``.
"""

from course_lib.checks import learner_model
from course_lib.checks.ch05 import torch_schedule

import torch
import torch.nn.functional as F

from hidden import hidden_test

# -- 5.1 GPT.forward ----------------------------------------------------------------------------------


def _gpt_pair(t, seed, **sizes):
    """A reference GPT with seeded float64 weights (LayerNorms included), and the learner's with the same weights."""
    lib, ref = t.learner("gpt"), t.reference("gpt")
    torch.manual_seed(seed)
    expected = ref.GPT(ref.GPTConfig(**sizes)).double().eval()
    with torch.no_grad():
        for name, p in expected.named_parameters():
            p.normal_(1.0 if name.endswith("weight") and p.ndim == 1 else 0.0, 0.3)
    mine = learner_model(t, "gpt", "GPT", expected.state_dict(), lib.GPTConfig(**sizes))
    return mine, expected


@hidden_test("5.1")
def matches_the_reference(t):
    """several sizes, head counts, eps and bias settings, sequences from 1 token to the full context (float64)"""
    cases = [
        ({"vocab_size": 31, "context_length": 9, "d_model": 12, "n_layers": 3, "n_heads": 3}, (2, 9)),
        ({"vocab_size": 5, "context_length": 4, "d_model": 8, "n_layers": 1, "n_heads": 1}, (3, 1)),
        ({"vocab_size": 40, "context_length": 16, "d_model": 16, "n_layers": 2, "n_heads": 4, "bias": False}, (1, 11)),
        ({"vocab_size": 13, "context_length": 6, "d_model": 24, "n_layers": 2, "n_heads": 6, "eps": 0.1}, (4, 5)),
    ]
    for i, (sizes, (batch, seq)) in enumerate(cases):
        mine, expected = _gpt_pair(t, 5100 + i, **sizes)
        ids = torch.randint(sizes["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(5110 + i))
        with torch.no_grad():
            y = expected(ids)
        t.close(mine(ids), y, atol=1e-6, rtol=1e-6, what=f"case {i}")


@hidden_test("5.1")
def float32_default_and_tied_gradient(t):
    """a float32 model gives float32 logits; a change to the token table changes the output scores"""
    sizes = {"vocab_size": 11, "context_length": 5, "d_model": 8, "n_layers": 1, "n_heads": 2}
    ref = t.reference("gpt")
    torch.manual_seed(5200)
    expected = ref.GPT(ref.GPTConfig(**sizes)).eval()
    lib = t.learner("gpt")
    mine = lib.GPT(lib.GPTConfig(**sizes))
    mine.load_state_dict(dict(expected.state_dict()))
    mine.eval()
    ids = torch.tensor([[1, 4, 9, 2]])
    with torch.no_grad():
        y = expected(ids)
    t.close(mine(ids), y, atol=1e-5, rtol=1e-5, what="float32 logits")
    state = dict(expected.state_dict())
    state["embed.token.weight"] = state["embed.token.weight"].clone()
    state["embed.token.weight"][10] += 1.0  # token 10 is not in ids: only the output projection sees it
    mine.load_state_dict(state)
    expected.load_state_dict(state)
    with torch.no_grad():
        y = expected(ids)
    t.close(mine(ids), y, atol=1e-5, rtol=1e-5, what="logits after changing an unused row of the token table")


@hidden_test("5.1")
def dropout_only_in_training(t):
    """with dropout=0.2, evaluation mode is exact and training mode is random"""
    sizes = {"vocab_size": 17, "context_length": 8, "d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.2}
    mine, expected = _gpt_pair(t, 5300, **sizes)
    ids = torch.randint(17, (2, 8), generator=torch.Generator().manual_seed(5301))
    with torch.no_grad():
        y = expected(ids)
    t.close(mine(ids), y, atol=1e-6, rtol=1e-6, what="evaluation mode")
    mine.train()
    a, b = mine(ids), mine(ids)
    t.true(not torch.allclose(a, b), "in training mode dropout must act")


@hidden_test("5.1")
def dropout_placement(t):
    """in training, dropout acts in the embedding and the blocks only, not on the final norm or the logits"""
    sizes = {"vocab_size": 16, "context_length": 8, "d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.5}
    _, expected = _gpt_pair(t, 5310, **sizes)
    state = {name: p.clone() for name, p in expected.state_dict().items()}
    for name, p in state.items():  # every block adds exactly nothing to the stream
        if name.endswith(("attn.out_proj.weight", "attn.out_proj.bias", "ffn.fc_out.weight", "ffn.fc_out.bias")):
            p.zero_()
    row = torch.tensor([3, 1, 4, 15, 9, 2, 6, 5])
    eye = torch.eye(16, dtype=torch.float64)
    state["embed.token.weight"] = eye  # the logits are the normalised stream itself
    state["embed.position.weight"] = 1.0 - eye[row]  # token + position is a vector of ones at every position
    state["ln_f.weight"], state["ln_f.bias"] = torch.ones(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    mine = learner_model(t, "gpt", "GPT", state, t.learner("gpt").GPTConfig(**sizes), train=True)
    logits = mine(row.repeat(8, 1)).detach().reshape(64, 16)
    # Dropout on the embedding leaves zeros and twos, which the final norm maps to two values per row.
    t.true(all(len(r.unique()) <= 2 for r in logits), "each position's logits should take at most two values")
    share = (logits < 0).double().mean().item()
    t.true(abs(share - 0.5) < 0.1, "the embedding should be dropped once, and nothing after the final norm")


@hidden_test("5.1", inputs=True)
def errors_name_the_lengths(t):
    """too long a sequence names its length and the context length; 3-D ids and float ids raise ValueError"""
    lib = t.learner("gpt")
    mine = lib.GPT(lib.GPTConfig(vocab_size=10, context_length=6, d_model=8, n_layers=1, n_heads=2))
    message = t.raises(ValueError, mine, torch.zeros(2, 13, dtype=torch.int64))
    t.true("13" in message and "6" in message, "the message should name both lengths")
    t.raises(ValueError, mine, torch.zeros(1, 2, 3, dtype=torch.int64))
    t.raises(ValueError, mine, torch.zeros(1, 3))


# -- 5.2 count_parameters -----------------------------------------------------------------------------


@hidden_test("5.2")
def matches_built_models(t):
    """equals the parameter count of a built model for several small configurations, with and without biases"""
    lib, ref = t.learner("gpt"), t.reference("gpt")
    cases = [
        dict(vocab_size=7, context_length=3, d_model=4, n_layers=1, n_heads=1),
        dict(vocab_size=101, context_length=33, d_model=24, n_layers=3, n_heads=4),
        dict(vocab_size=50, context_length=10, d_model=12, n_layers=2, n_heads=3, bias=False),
        dict(vocab_size=1, context_length=1, d_model=2, n_layers=5, n_heads=2, bias=False),
    ]
    for i, sizes in enumerate(cases):
        expected = sum(p.numel() for p in ref.GPT(ref.GPTConfig(**sizes)).parameters())
        t.equal(lib.count_parameters(lib.GPTConfig(**sizes)), expected, what=f"case {i}")


@hidden_test("5.2")
def large_configurations(t):
    """GPT-2 sizes with a padded vocabulary, a longer context, no biases (by formula)"""
    lib, ref = t.learner("gpt"), t.reference("gpt")
    cases = [
        ("124M", {"vocab_size": 50304}),
        ("355M", {"context_length": 2048}),
        ("774M", {"bias": False}),
        ("1558M", {"vocab_size": 32000, "bias": False}),
    ]
    for size, overrides in cases:
        expected = ref.count_parameters(ref.GPTConfig.gpt2(size, **overrides))
        t.equal(lib.count_parameters(lib.GPTConfig.gpt2(size, **overrides)), expected, what=f"{size} {overrides}")


@hidden_test("5.2")
def returns_a_python_int(t):
    """the count is a Python int, also for a model of one layer"""
    lib = t.learner("gpt")
    n = lib.count_parameters(lib.GPTConfig(vocab_size=3, context_length=2, d_model=2, n_layers=1, n_heads=1))
    t.equal(type(n), int, what="type")


@hidden_test("5.2", inputs=True)
def rejects_what_is_not_a_config(t):
    """None instead of a GPTConfig raises ValueError"""
    t.raises(ValueError, t.learner("gpt").count_parameters, None)


@hidden_test("5.2")
def beyond_any_buildable_model(t):
    """a configuration far too large to build is counted by formula, exactly, as a Python int beyond 2**63"""
    lib, ref = t.learner("gpt"), t.reference("gpt")
    sizes = {"vocab_size": 10**15, "context_length": 10**9, "d_model": 10**4, "n_layers": 1000, "n_heads": 8}
    for bias in (True, False):
        expected = ref.count_parameters(ref.GPTConfig(**sizes, bias=bias))
        t.equal(lib.count_parameters(lib.GPTConfig(**sizes, bias=bias)), expected, what=f"bias={bias}")


# -- 5.3 cross_entropy_loss ---------------------------------------------------------------------------


def _case(seed, batch, seq, vocab, scale, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, seq, vocab, generator=g, dtype=dtype)
    return logits, torch.randint(vocab, (batch, seq), generator=g)


@hidden_test("5.3")
def matches_torch_on_many_shapes(t):
    """shapes from (1, 1, 2) to (4, 9, 300), logits scaled from 0.01 to 50 (float64)"""
    lib = t.learner("training")
    for i, (batch, seq, vocab, scale) in enumerate(
        [(1, 1, 2, 1.0), (4, 9, 300, 5.0), (2, 3, 7, 0.01), (3, 4, 10, 50.0)]
    ):
        logits, targets = _case(5300 + i, batch, seq, vocab, scale)
        expected = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        t.close(lib.cross_entropy_loss(logits, targets), expected, atol=1e-9, rtol=1e-9, what=f"case {i}")


@hidden_test("5.3")
def float32_and_extreme_values(t):
    """float32 logits give a float32 scalar; logits of ±1e4 stay finite and exact"""
    lib = t.learner("training")
    logits, targets = _case(5310, 2, 5, 9, 3.0, dtype=torch.float32)
    expected = F.cross_entropy(logits.reshape(-1, 9), targets.reshape(-1))
    t.close(lib.cross_entropy_loss(logits, targets), expected, atol=1e-5, rtol=1e-5, what="float32")
    logits, targets = _case(5311, 2, 3, 6, 1e4)
    expected = F.cross_entropy(logits.reshape(-1, 6), targets.reshape(-1))
    t.close(lib.cross_entropy_loss(logits, targets), expected, atol=1e-6, rtol=1e-9, what="logits of size 1e4")


@hidden_test("5.3")
def does_not_modify_inputs(t):
    """the logits and targets passed in are left unchanged"""
    lib = t.learner("training")
    logits, targets = _case(5320, 2, 4, 5, 2.0)
    l0, t0 = logits.clone(), targets.clone()
    lib.cross_entropy_loss(logits, targets)
    t.equal(logits, l0, what="logits after the call")
    t.equal(targets, t0, what="targets after the call")


@hidden_test("5.3", inputs=True)
def rejects_bad_shapes(t):
    """targets with another batch or length, 3-D targets or 1-D logits raise ValueError"""
    lib = t.learner("training")
    logits = torch.zeros(3, 4, 5)
    for bad in (
        torch.zeros(2, 4, dtype=torch.int64),
        torch.zeros(3, 5, dtype=torch.int64),
        torch.zeros(3, 4, 1, dtype=torch.int64),
    ):
        t.raises(ValueError, lib.cross_entropy_loss, logits, bad)
    t.raises(ValueError, lib.cross_entropy_loss, torch.zeros(5), torch.zeros(1, dtype=torch.int64))


@hidden_test("5.3")
def differentiable_and_not_in_place(t):
    """logits that require grad give a loss that requires grad, and are not changed in place"""
    lib = t.learner("training")
    logits, targets = _case(5330, 3, 4, 6, 2.0)
    expected = F.cross_entropy(logits.reshape(-1, 6), targets.reshape(-1))
    leaf = logits.clone().requires_grad_(True)  # an in-place change of a leaf that requires grad raises
    loss = lib.cross_entropy_loss(leaf, targets)
    t.true(loss.requires_grad is True, "the loss must stay connected to the logits for autograd")
    t.close(loss, expected, atol=1e-9, rtol=1e-9, what="loss")
    t.equal(leaf.detach(), logits, what="logits after the call")


# -- 5.4 train_step -----------------------------------------------------------------------------------

TRAIN_SIZES = {"vocab_size": 23, "context_length": 7, "d_model": 12, "n_layers": 2, "n_heads": 3}


def _training_pair(t, seed, **overrides):
    """A reference GPT in float64 and the learner's GPT with the same weights, both in training mode."""
    lib, ref = t.learner("gpt"), t.reference("gpt")
    sizes = dict(TRAIN_SIZES, **overrides)
    torch.manual_seed(seed)
    expected = ref.GPT(ref.GPTConfig(**sizes)).double()
    mine = learner_model(t, "gpt", "GPT", expected.state_dict(), lib.GPTConfig(**sizes), train=True)
    return mine, expected


def _batches(seed, n, batch=4, seq=7):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(23, (batch, seq + 1), generator=g)
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


def _compare(t, mine, expected, what):
    for name in (
        "embed.token.weight",
        "embed.position.weight",
        "blocks.1.attn.v_proj.bias",
        "blocks.0.ln_2.weight",
        "ln_f.weight",
    ):
        t.close(
            t.value(mine.get_parameter(name).detach()),
            expected.get_parameter(name).detach(),
            atol=1e-9,
            rtol=1e-7,
            what=f"{what}: {name}",
        )


@hidden_test("5.4")
def matches_reference_steps_with_weight_decay(t):
    """four steps with weight decay 0.1 (make_optimizer's groups) equal the reference's"""
    mine, expected = _training_pair(t, 5400)
    lib, ref = t.learner("training"), t.reference("training")
    opt_mine = lib.make_optimizer(mine, lr=3e-3, weight_decay=0.1)
    opt_ref = ref.make_optimizer(expected, lr=3e-3, weight_decay=0.1)
    for i, (x, y) in enumerate(_batches(5401, 4)):
        t.close(
            lib.train_step(mine, opt_mine, x, y),
            ref.train_step(expected, opt_ref, x, y),
            atol=1e-9,
            rtol=1e-9,
            what=f"loss of step {i + 1}",
        )
    _compare(t, mine, expected, "after four steps")


@hidden_test("5.4")
def clipping_and_mode(t):
    """clipping at 0.1 and at 1e3 (no effect); a model in evaluation mode stays in it"""
    for k, norm in enumerate((0.1, 1e3)):
        mine, expected = _training_pair(t, 5410 + k, dropout=0.0)
        mine.eval()
        expected.eval()
        lib, ref = t.learner("training"), t.reference("training")
        opt_mine, opt_ref = lib.make_optimizer(mine, lr=1e-2), ref.make_optimizer(expected, lr=1e-2)
        for x, y in _batches(5415 + k, 2):
            lib.train_step(mine, opt_mine, x, y, max_grad_norm=norm)
            ref.train_step(expected, opt_ref, x, y, max_grad_norm=norm)
        _compare(t, mine, expected, f"max_grad_norm={norm}")
        t.equal(t.value(mine.training), False, what="model.training after the steps")


@hidden_test("5.4")
def the_loss_goes_down(t):
    """twenty steps on one batch lower its loss a lot; every returned loss is a float"""
    mine, _ = _training_pair(t, 5420)
    lib = t.learner("training")
    opt = lib.make_optimizer(mine, lr=1e-2, weight_decay=0.0)
    ((x, y),) = _batches(5421, 1, batch=2, seq=6)
    losses = [lib.train_step(mine, opt, x, y) for _ in range(20)]
    t.true(all(type(v) is float for v in losses), "train_step must return Python floats")
    t.true(losses[-1] < 0.5 * losses[0], "the loss on a repeated batch should at least halve in 20 steps")


@hidden_test("5.4", inputs=True)
def rejects_a_bad_clip_norm(t):
    """max_grad_norm of 0, -1 or a string raises ValueError"""
    mine, _ = _training_pair(t, 5430)
    lib = t.learner("training")
    opt = lib.make_optimizer(mine)
    ((x, y),) = _batches(5431, 1)
    t.raises(ValueError, lib.train_step, mine, opt, x, y, max_grad_norm=0)
    t.raises(ValueError, lib.train_step, mine, opt, x, y, max_grad_norm=-1.0)
    t.raises(ValueError, lib.train_step, mine, opt, x, y, max_grad_norm="1.0")


@hidden_test("5.4")
def trains_in_the_callers_mode(t):
    """with dropout: a model in evaluation mode steps without dropout and stays so; one in training mode keeps it"""
    lib, ref = t.learner("training"), t.reference("training")
    ((x, y),) = _batches(5441, 1)
    mine, expected = _training_pair(t, 5440, dropout=0.5)
    mine.eval()
    expected.eval()
    opt_mine, opt_ref = lib.make_optimizer(mine, lr=1e-2), ref.make_optimizer(expected, lr=1e-2)
    t.close(
        lib.train_step(mine, opt_mine, x, y),
        ref.train_step(expected, opt_ref, x, y),
        atol=1e-9,
        rtol=1e-9,
        what="loss of a step in evaluation mode",
    )
    _compare(t, mine, expected, "after a step in evaluation mode")
    t.equal(t.value(mine.training), False, what="model.training after a step in evaluation mode")
    mine, expected = _training_pair(t, 5442, dropout=0.5)
    with torch.no_grad():
        evaluation_loss = F.cross_entropy(expected.eval()(x).reshape(-1, 23), y.reshape(-1)).item()
    loss = lib.train_step(mine, lib.make_optimizer(mine, lr=1e-2), x, y)
    t.true(abs(loss - evaluation_loss) > 1e-6, "a model in training mode must be trained with its dropout active")
    t.equal(t.value(mine.training), True, what="model.training after a step in training mode")


# -- 5.5 next_token_probs -----------------------------------------------------------------------------


def _logits(seed, *shape, scale=2.0, dtype=torch.float64):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _probs_match_the_reference(t, logits, kwargs, what):
    """The learner's ``next_token_probs(logits, **kwargs)`` equals the reference's, to float64 rounding."""
    lib, ref = t.learner("sampling"), t.reference("sampling")
    expected = ref.next_token_probs(logits, **kwargs)
    t.close(lib.next_token_probs(logits, **kwargs), expected, atol=1e-12, rtol=1e-9, what=what)


@hidden_test("5.5")
def matches_the_reference_on_combinations(t):
    """temperature, top-k, top-p and their combinations on (batch, vocab) and (batch, seq, vocab) logits"""
    cases = [
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 1.3, "top_p": 0.6},
        {"top_k": 8, "top_p": 0.9},
        {"temperature": 0.25, "top_k": 40, "top_p": 0.5},
        {"top_p": 0.999},
        {"top_k": 1, "top_p": 0.3},
    ]
    for i, kwargs in enumerate(cases):
        logits = _logits(5500 + i, 3, 2, 31) if i % 2 else _logits(5500 + i, 4, 31)
        _probs_match_the_reference(t, logits, kwargs, f"case {i}")


@hidden_test("5.5")
def top_k_comes_before_top_p(t):
    """with both filters, top-p acts on the renormalised top-k distribution"""
    lib = t.learner("sampling")
    probs = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    # top_k=2 keeps 0.4 and 0.3 -> 4/7 and 3/7; top_p=0.5 then keeps only 4/7 (4/7 >= 0.5)
    t.close(
        lib.next_token_probs(probs.log(), top_k=2, top_p=0.5),
        torch.tensor([1.0, 0, 0, 0], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    # top_k=3 keeps 0.4, 0.3, 0.2 -> 4/9, 3/9, 2/9; top_p=0.62 then keeps the first two (4/9 < 0.62 <= 7/9)
    t.close(
        lib.next_token_probs(probs.log(), top_k=3, top_p=0.62),
        torch.tensor([4 / 7, 0, 3 / 7, 0], dtype=torch.float64),
        atol=1e-12,
        rtol=1e-9,
    )


@hidden_test("5.5")
def sums_to_one_and_keeps_dtype(t):
    """float32 input stays float32, rows sum to 1, filtered entries are exactly 0, the input is unchanged"""
    lib = t.learner("sampling")
    logits = _logits(5520, 5, 50, dtype=torch.float32)
    before = logits.clone()
    p = lib.next_token_probs(logits, temperature=0.9, top_k=10, top_p=0.8)
    t.true(p.dtype == torch.float32 and tuple(p.shape) == (5, 50), "float32 (5, 50) expected")
    t.close(p.sum(-1), torch.ones(5), atol=1e-5, rtol=0, what="row sums")
    t.true(bool(((p == 0).sum(-1) >= 40).all()), "top_k=10 must zero at least 40 of 50 entries")
    t.equal(logits, before, what="logits after the call")
    one = lib.next_token_probs(torch.tensor([0.3]))
    t.close(one, torch.tensor([1.0]), atol=1e-7, rtol=0, what="a vocabulary of one token")


@hidden_test("5.5", inputs=True)
def rejects_bad_settings(t):
    """float top_k, integer logits, temperature 0 and top_p of -0.1 raise ValueError"""
    lib = t.learner("sampling")
    logits = torch.zeros(3, 4)
    t.raises(ValueError, lib.next_token_probs, logits, top_k=2.5)
    t.raises(ValueError, lib.next_token_probs, torch.zeros(3, 4, dtype=torch.int64))
    t.raises(ValueError, lib.next_token_probs, logits, temperature=0)
    t.raises(ValueError, lib.next_token_probs, logits, top_p=-0.1)


@hidden_test("5.5")
def integer_settings(t):
    """an int temperature and top_p=1 (an int) are accepted numbers"""
    logits = _logits(5530, 4, 12)
    for kwargs in ({"temperature": 2}, {"top_p": 1}, {"temperature": 3, "top_k": 4, "top_p": 1}):
        _probs_match_the_reference(t, logits, kwargs, f"{kwargs}")


@hidden_test("5.5")
def top_p_ties_and_the_exact_boundary(t):
    """tied probabilities: the earlier token comes first; a prefix whose mass equals top_p is enough"""
    lib = t.learner("sampling")
    logits = torch.zeros(2, 4, dtype=torch.float64)  # four tokens of probability 0.25, exactly
    t.close(
        lib.next_token_probs(logits, top_p=0.5),
        torch.tensor([[0.5, 0.5, 0, 0]] * 2, dtype=torch.float64),
        atol=1e-12,
        rtol=0,
        what="top_p=0.5",
    )
    t.close(
        lib.next_token_probs(logits, top_p=0.75),
        torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0]] * 2, dtype=torch.float64),
        atol=1e-12,
        rtol=0,
        what="top_p=0.75",
    )
    tied = torch.tensor([1.0, 2.0, 1.0, 2.0, 0.0], dtype=torch.float64)  # the two largest have about 0.35 each
    t.close(
        lib.next_token_probs(tied, top_p=0.3),
        torch.tensor([0, 1.0, 0, 0, 0], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
        what="the first of two tied tokens",
    )


@hidden_test("5.5", inputs=True)
def rejects_scalars_and_lists(t):
    """0-d logits and a list of logits raise ValueError"""
    lib = t.learner("sampling")
    t.raises(ValueError, lib.next_token_probs, torch.tensor(1.5))
    t.raises(ValueError, lib.next_token_probs, [0.5, 1.5])


# -- 5.6 generate -------------------------------------------------------------------------------------

SAMPLING_SIZES = {"vocab_size": 29, "context_length": 6, "d_model": 12, "n_layers": 2, "n_heads": 3}


def _sampling_pair(t, seed, **overrides):
    """A reference GPT with lively float64 weights and the learner's GPT with the same weights."""
    lib, ref = t.learner("gpt"), t.reference("gpt")
    sizes = dict(SAMPLING_SIZES, **overrides)
    torch.manual_seed(seed)
    expected = ref.GPT(ref.GPTConfig(**sizes)).double().eval()
    with torch.no_grad():
        for name, p in expected.named_parameters():
            p.normal_(1.0 if name.endswith("weight") and p.ndim == 1 else 0.0, 0.5)
    mine = learner_model(t, "gpt", "GPT", expected.state_dict(), lib.GPTConfig(**sizes))
    return mine, expected


def _prompt(seed, batch, seq):
    return torch.randint(29, (batch, seq), generator=torch.Generator().manual_seed(seed))


@hidden_test("5.6")
def matches_the_reference_when_sampling(t):
    """seeded sampling with temperature, top-k and top-p, batch of 3, prompts longer than the context"""
    lib, ref = t.learner("sampling"), t.reference("sampling")
    mine, expected = _sampling_pair(t, 5600)
    cases = [
        ({"temperature": 0.8, "seed": 1}, (3, 2)),
        ({"temperature": 1.0, "top_k": 5, "seed": 2}, (2, 9)),
        ({"temperature": 1.2, "top_p": 0.9, "seed": 3}, (1, 4)),
    ]
    for i, (kwargs, (batch, seq)) in enumerate(cases):
        ids = _prompt(5610 + i, batch, seq)
        t.equal(lib.generate(mine, ids, 8, **kwargs), ref.generate(expected, ids, 8, **kwargs), what=f"case {i}")


@hidden_test("5.6")
def greedy_and_zero_new_tokens(t):
    """greedy continuation of 10 tokens equals the reference; max_new_tokens=0 returns the prompt"""
    lib, ref = t.learner("sampling"), t.reference("sampling")
    mine, expected = _sampling_pair(t, 5620, bias=False)
    ids = _prompt(5621, 2, 3)
    t.equal(lib.generate(mine, ids, 10, temperature=0, top_k=3), ref.generate(expected, ids, 10, temperature=0))
    t.equal(lib.generate(mine, ids, 0, temperature=0.7, seed=0), ids, what="no new tokens")


@hidden_test("5.6")
def evaluation_mode_inside(t):
    """a model with dropout in training mode generates as in evaluation mode and is left in training mode"""
    lib, ref = t.learner("sampling"), t.reference("sampling")
    mine, expected = _sampling_pair(t, 5630, dropout=0.5)
    mine.train()
    ids = _prompt(5631, 2, 2)
    t.equal(
        lib.generate(mine, ids, 6, temperature=0.9, seed=11), ref.generate(expected, ids, 6, temperature=0.9, seed=11)
    )
    t.equal(t.value(mine.training), True, what="model.training afterwards")


@hidden_test("5.6", inputs=True)
def rejects_bad_arguments(t):
    """a float max_new_tokens, an empty prompt or float ids raise ValueError"""
    lib = t.learner("sampling")
    mine, _ = _sampling_pair(t, 5640)
    t.raises(ValueError, lib.generate, mine, torch.tensor([[1, 2]]), 2.0)
    t.raises(ValueError, lib.generate, mine, torch.zeros(1, 0, dtype=torch.int64), 2)
    t.raises(ValueError, lib.generate, mine, torch.zeros(1, 2), 2)


@hidden_test("5.6")
def mode_restored_in_evaluation_and_after_errors(t):
    """a model in evaluation mode stays in it; one in training mode is back in it when the model raises inside"""
    lib = t.learner("sampling")
    mine, _ = _sampling_pair(t, 5650)
    lib.generate(mine, _prompt(5651, 2, 3), 3, temperature=0.9, seed=1)
    t.equal(t.value(mine.training), False, what="model.training after generate in evaluation mode")
    mine.train()
    t.raises(Exception, lib.generate, mine, torch.tensor([[1, 29]]), 3)  # id 29 is outside the vocabulary
    t.equal(t.value(mine.training), True, what="model.training after the model raised inside generate")


@hidden_test("5.6")
def int_temperature_one_token_prompts_and_fresh_randomness(t):
    """an int temperature, one-token prompts; without a seed two calls sample differently"""
    lib, ref = t.learner("sampling"), t.reference("sampling")
    mine, expected = _sampling_pair(t, 5660)
    ids = _prompt(5661, 3, 1)
    t.equal(lib.generate(mine, ids, 6, temperature=2, seed=5), ref.generate(expected, ids, 6, temperature=2, seed=5))
    t.equal(lib.generate(mine, ids, 4, temperature=0), ref.generate(expected, ids, 4, temperature=0), what="greedy")
    a, b = lib.generate(mine, ids, 20, temperature=5.0), lib.generate(mine, ids, 20, temperature=5.0)
    t.true(not torch.equal(a, b), "without a seed, two calls should not sample the same tokens")


# -- 5.7 sliding_windows ------------------------------------------------------------------------------


def _windows_match_the_reference(t, ids, context_length, stride, what):
    lib, ref = t.learner("data"), t.reference("data")
    expected = ref.sliding_windows(ids, context_length, stride)
    t.equal(lib.sliding_windows(ids, context_length, stride), expected, what=what)


@hidden_test("5.7")
def matches_the_reference_on_many_sizes(t):
    """lengths from exactly one window to many, strides from 1 to past the context (gaps), one-token windows"""
    ids = torch.randint(1000, (61,), generator=torch.Generator().manual_seed(5700))
    for context_length in (1, 5, 8):
        for stride in (1, 3, context_length, context_length + 1, context_length + 4):
            for length in (context_length + 1, context_length + stride, context_length + stride + 1, 61):
                what = f"context {context_length}, stride {stride}, {length} tokens"
                _windows_match_the_reference(t, ids[:length], context_length, stride, what)


@hidden_test("5.7")
def window_count_at_the_edges(t):
    """a window needs its last target: 12 tokens, context 5, stride 3 give 3 windows, 11 tokens 2 and 6 tokens 1"""
    lib = t.learner("data")
    for length, count in ((12, 3), (11, 2), (9, 2), (8, 1), (6, 1)):
        inputs, targets = lib.sliding_windows(torch.arange(100, 100 + length), 5, 3)
        starts = 100 + 3 * torch.arange(count)[:, None]
        t.equal(inputs, starts + torch.arange(5), what=f"inputs of {length} tokens")
        t.equal(targets, starts + torch.arange(1, 6), what=f"targets of {length} tokens")


@hidden_test("5.7")
def every_integer_dtype_gives_int64(t):
    """uint8, int8, int16, int32 and int64 ids all give int64 windows with the same values"""
    values = torch.randint(120, (17,), generator=torch.Generator().manual_seed(5710))
    expected = t.reference("data").sliding_windows(values, 4, 3)
    lib = t.learner("data")
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        t.equal(lib.sliding_windows(values.to(dtype), 4, 3), expected, what=f"{dtype}")


@hidden_test("5.7", inputs=True)
def rejects_bad_ids_and_sizes(t):
    """too few tokens, 2-D, float, bool or list ids, and a context or stride of 0, True or 2.0 raise ValueError"""
    lib = t.learner("data")
    ids = torch.arange(20)
    bad_ids = (torch.arange(6), ids.view(4, 5), ids.double(), ids > 3, list(range(20)), torch.tensor(3))
    for bad in bad_ids:
        t.raises(ValueError, lib.sliding_windows, bad, 6, 2)
    for context_length, stride in ((0, 1), (4, 0), (True, 1), (4, True), (4.0, 1), (4, 2.0), (-2, 1), (4, -1)):
        t.raises(ValueError, lib.sliding_windows, ids, context_length, stride)


# -- 5.8 lr_at ----------------------------------------------------------------------------------------


@hidden_test("5.8")
def matches_torch_schedulers_on_many_runs(t):
    """several warm-ups (none, 1, 2, most of the run), run lengths, rates and floors equal PyTorch's schedulers"""
    lib = t.learner("training")
    for max_lr, warmup_steps, total_steps, min_lr in (
        (6e-4, 10, 100, 6e-5),
        (1.0, 2, 3, 0.0),
        (0.3, 0, 25, 0.01),
        (2.5, 1, 9, 0.5),
        (1e-2, 45, 50, 1e-3),
        (5e-3, 7, 200, 5e-3),
    ):
        for step, expected in enumerate(torch_schedule(max_lr, warmup_steps, total_steps, min_lr)):
            got = lib.lr_at(step, max_lr, warmup_steps, total_steps, min_lr)
            t.close(got, expected, atol=1e-15, rtol=1e-9, what=f"warm-up {warmup_steps} of {total_steps}, step {step}")


@hidden_test("5.8")
def the_boundaries_exactly(t):
    """max_lr / W at step 0, max_lr at W - 1 and W, just above min_lr at T - 1, min_lr at T and long after"""
    lib, ref = t.learner("training"), t.reference("training")
    args = (3e-3, 20, 300, 3e-4)
    for step in (0, 1, 18, 19, 20, 21, 150, 298, 299, 300, 301, 1000, 10**9):
        t.close(lib.lr_at(step, *args), ref.lr_at(step, *args), atol=1e-18, rtol=1e-12, what=f"step {step}")


@hidden_test("5.8")
def the_floor_after_the_run(t):
    """after the last step the rate stays at min_lr, where the cosine would have risen again"""
    lib = t.learner("training")
    for step in (41, 55, 60, 79, 80, 150):
        t.close(lib.lr_at(step, 1.0, 0, 40, 0.2), 0.2, atol=1e-15, rtol=0, what=f"step {step} of a 40-step run")


@hidden_test("5.8")
def python_floats_from_ints(t):
    """integer rates give Python floats in the warm-up, the decay and after the run; min_lr == max_lr is flat"""
    lib = t.learner("training")
    for step, expected in ((0, 1.0), (1, 2.0), (6, 1.5), (10, 1.0), (11, 1.0), (500, 1.0)):
        got = lib.lr_at(step, 2, 2, 10, 1)
        t.equal(type(got), float, what=f"type at step {step}")
        t.close(got, expected, atol=1e-12, rtol=0, what=f"step {step}")
    for step in (3, 9, 10, 20):
        t.close(lib.lr_at(step, 0.5, 4, 10, 0.5), 0.5, atol=1e-15, rtol=0, what=f"flat schedule, step {step}")


@hidden_test("5.8", inputs=True)
def rejects_bad_schedules(t):
    """float, bool or negative steps, a warm-up of the run's length or more, max_lr <= 0, min_lr outside [0, max_lr]"""
    lib = t.learner("training")
    for args in (
        (1.0, 1.0, 2, 10, 0.1),
        (True, 1.0, 2, 10, 0.1),
        (-3, 1.0, 2, 10, 0.1),
        (0, 1.0, 10, 10, 0.1),
        (0, 1.0, 11, 10, 0.1),
        (0, 1.0, -1, 10, 0.1),
        (0, 1.0, 2.0, 10, 0.1),
        (0, 1.0, 2, 10.0, 0.1),
        (0, 1.0, False, 10, 0.1),
        (0, 0.0, 2, 10, 0.0),
        (0, -1.0, 2, 10, 0.0),
        (0, "1e-3", 2, 10, 0.0),
        (0, 1.0, 2, 10, -0.1),
        (0, 1.0, 2, 10, 1.5),
        (0, 1.0, 2, 10, None),
    ):
        t.raises(ValueError, lib.lr_at, *args)


# -- 5.9 clip_grad_norm -------------------------------------------------------------------------------


def _params(t, grads):
    """Parameters with these gradients (None: none), made where the learner's code runs."""
    values = [torch.zeros(1) if g is None else torch.zeros_like(g) for g in grads]
    return t.learner("checks.ch05").parameters_with_grads(values, list(grads))


def _grads_after(t, params, n):
    return [t.value(params.get_parameter(str(i)).grad) for i in range(n)]


def _clip_matches_the_reference(t, grads, max_norm, what, how="iterable", atol=1e-12, rtol=1e-12):
    """The learner's clip_grad_norm and the reference agree on the returned norm and the clipped gradients."""
    ref = t.reference("training")
    expected_params = [torch.nn.Parameter(torch.zeros(1) if g is None else torch.zeros_like(g)) for g in grads]
    for p, g in zip(expected_params, grads):
        p.grad = None if g is None else g.clone()
    expected_norm = ref.clip_grad_norm(expected_params[0] if how == "tensor" else expected_params, max_norm)
    params = _params(t, grads)
    argument = {"generator": params.parameters, "tensor": lambda: params.get_parameter("0")}.get(how, lambda: params)()
    norm = t.learner("training").clip_grad_norm(argument, max_norm)
    t.close(norm, expected_norm, atol=atol, rtol=rtol, what=f"{what}: the returned norm")
    for i, (got, p) in enumerate(zip(_grads_after(t, params, len(grads)), expected_params)):
        if p.grad is None:
            t.equal(got, None, what=f"{what}: gradient {i}")
        else:
            t.close(got, p.grad, atol=atol, rtol=rtol, what=f"{what}: gradient {i}")
    return params


def _scaled(seed, scale, *shape, dtype=torch.float64):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@hidden_test("5.9")
def matches_the_reference_on_many_gradients(t):
    """one to five gradients of many shapes, norms far above, near and below max_norm (float64)"""
    cases = [
        ([_scaled(5900, 10.0, 7, 3)], 1.0),
        ([_scaled(5901, 0.1, 4), _scaled(5902, 0.1, 2, 3), _scaled(5903, 0.1, 1)], 0.7),
        ([_scaled(5904 + i, 50.0, 3, 2) for i in range(5)], 2.5),
        ([_scaled(5910, 1.0, 30), _scaled(5911, 1e-3, 30)], 3.0),
        ([_scaled(5912, 1e4, 2, 2, 2)], 1e-3),
    ]
    for i, (grads, max_norm) in enumerate(cases):
        _clip_matches_the_reference(t, grads, max_norm, f"case {i}")


@hidden_test("5.9")
def the_factor_includes_the_epsilon(t):
    """a norm of exactly max_norm is still scaled by max_norm / (norm + 1e-6); far above, the 1e-6 still shows"""
    _clip_matches_the_reference(t, [torch.tensor([0.6, 0.8], dtype=torch.float64)], 1.0, "norm 1, max_norm 1")
    _clip_matches_the_reference(t, [torch.tensor([3e-6, 4e-6], dtype=torch.float64)], 1e-6, "norm 5e-6, max_norm 1e-6")


@hidden_test("5.9")
def float32_and_mixed_dtypes(t):
    """float32 gradients give a float32 norm and stay float32; float32 with float64 gives a float64 norm"""
    grads = [_scaled(5920, 5.0, 6, 4, dtype=torch.float32), _scaled(5921, 5.0, 9, dtype=torch.float32)]
    _clip_matches_the_reference(t, grads, 1.0, "float32", atol=1e-6, rtol=1e-5)
    mixed = [_scaled(5922, 5.0, 6, 4, dtype=torch.float32), _scaled(5923, 5.0, 9)]
    _clip_matches_the_reference(t, mixed, 1.0, "float32 and float64", atol=1e-6, rtol=1e-5)


@hidden_test("5.9")
def a_single_tensor_and_a_generator(t):
    """a single parameter instead of a list, and a generator of parameters gone through once"""
    _clip_matches_the_reference(t, [_scaled(5930, 4.0, 5, 5)], 1.5, "a single tensor", how="tensor")
    grads = [_scaled(5931, 4.0, 5, 5), None, _scaled(5932, 4.0, 3), None]
    _clip_matches_the_reference(t, grads, 1.5, "a generator with missing gradients", how="generator")


@hidden_test("5.9")
def no_gradients_at_all(t):
    """parameters without any gradient: the result is tensor(0.) and nothing changes"""
    lib = t.learner("training")
    params = _params(t, [None, None])
    t.equal(lib.clip_grad_norm(params, 1.0), torch.tensor(0.0), what="the returned norm")
    t.equal(_grads_after(t, params, 2), [None, None], what="the gradients")
    t.equal(lib.clip_grad_norm(_params(t, []), 1.0), torch.tensor(0.0), what="no parameters")


@hidden_test("5.9")
def in_place_and_int_max_norm(t):
    """the gradient tensors themselves are scaled (not replaced); an int max_norm is accepted"""
    grads = [_scaled(5940, 3.0, 4, 4), _scaled(5941, 3.0, 4)]
    params = _clip_matches_the_reference(t, grads, 2, "max_norm=2")
    given = t.value(params.given_grads)
    for i, (before, after) in enumerate(zip(given, _grads_after(t, params, 2))):
        t.equal(before, after, what=f"the gradient tensor {i} that was there before the call")


@hidden_test("5.9", inputs=True)
def rejects_bad_max_norms(t):
    """max_norm of 0, -0.5, True, None or a string raises ValueError"""
    lib = t.learner("training")
    for max_norm in (0, -0.5, True, None, "1.0"):
        t.raises(ValueError, lib.clip_grad_norm, _params(t, [torch.ones(3)]), max_norm)
