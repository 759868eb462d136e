"""Visible checks of Chapter 5 — GPT-2 end to end.

Expected values are written out or computed here with PyTorch's own operations: a small GPT-2
written as plain functions (``torch.nn.functional.layer_norm``, ``linear``, ``gelu``,
``scaled_dot_product_attention``), ``torch.nn.functional.cross_entropy``, ``torch.softmax``,
``torch.optim.AdamW``, ``torch.multinomial``, ``Tensor.unfold``, PyTorch's learning-rate schedulers
(``LinearLR``, ``CosineAnnealingLR``, ``SequentialLR``) and ``torch.nn.utils.clip_grad_norm_``. Most
checks run in float64.
"""

from course_lib.checks import learner_model
from course_lib.grading import visible_check

import math

import torch
import torch.nn.functional as F

F64 = torch.float64


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _ids(seed: int, vocab: int, *shape: int) -> torch.Tensor:
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def _gpt_state(seed, vocab, context, d, n_layers, bias=True, scale=0.3):
    """A GPT state dict (the course's parameter names) with seeded float64 weights."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=gen, dtype=F64)

    state = {"embed.token.weight": rnd(vocab, d), "embed.position.weight": rnd(context, d)}
    layers = [
        ("attn.q_proj", d, d),
        ("attn.k_proj", d, d),
        ("attn.v_proj", d, d),
        ("attn.out_proj", d, d),
        ("ffn.fc_in", 4 * d, d),
        ("ffn.fc_out", d, 4 * d),
    ]
    for i in range(n_layers):
        for name, out_f, in_f in layers:
            state[f"blocks.{i}.{name}.weight"] = rnd(out_f, in_f) / math.sqrt(in_f) / scale
            if bias:
                state[f"blocks.{i}.{name}.bias"] = rnd(out_f)
        for ln in ("ln_1", "ln_2"):
            state[f"blocks.{i}.{ln}.weight"] = rnd(d, mean=1.0)
            if bias:
                state[f"blocks.{i}.{ln}.bias"] = rnd(d)
    state["ln_f.weight"] = rnd(d, mean=1.0)
    if bias:
        state["ln_f.bias"] = rnd(d)
    return state


def _functional_gpt(state, ids, n_layers, n_heads, eps=1e-5):
    """GPT-2's forward pass from plain PyTorch functions: the expected logits."""
    w = state.get
    batch, seq = ids.shape
    d = w("embed.token.weight").shape[1]
    x = w("embed.token.weight")[ids] + w("embed.position.weight")[:seq]
    for i in range(n_layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), w(p + "ln_1.weight"), w(p + "ln_1.bias"), eps)
        q, k, v = (
            F.linear(h, w(p + f"attn.{n}.weight"), w(p + f"attn.{n}.bias"))
            .view(batch, seq, n_heads, d // n_heads)
            .transpose(1, 2)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, d)
        x = x + F.linear(a, w(p + "attn.out_proj.weight"), w(p + "attn.out_proj.bias"))
        h = F.layer_norm(x, (d,), w(p + "ln_2.weight"), w(p + "ln_2.bias"), eps)
        h = F.gelu(F.linear(h, w(p + "ffn.fc_in.weight"), w(p + "ffn.fc_in.bias")), approximate="tanh")
        x = x + F.linear(h, w(p + "ffn.fc_out.weight"), w(p + "ffn.fc_out.bias"))
    x = F.layer_norm(x, (d,), w("ln_f.weight"), w("ln_f.bias"), eps)
    return x @ w("embed.token.weight").T


def _learner_gpt(t, state, **sizes):
    return learner_model(t, "gpt", "GPT", state, t.learner("gpt").GPTConfig(**sizes))


# -- 5.1 GPT.forward ------------------------------------------------------------------------------

SMALL = {"vocab_size": 23, "context_length": 8, "d_model": 16, "n_layers": 2, "n_heads": 4}


@visible_check("5.1")
def matches_gpt2_written_with_torch_functions(t):
    """logits (batch, seq, vocab) equal GPT-2's forward written with torch functions (float64, 2 layers)"""
    state = _gpt_state(1, 23, 8, 16, 2)
    model = _learner_gpt(t, state, **SMALL)
    ids = _ids(2, 23, 3, 6)
    t.close(model(ids), _functional_gpt(state, ids, 2, 4), atol=1e-6, rtol=1e-6, what="logits")


@visible_check("5.1")
def output_projection_is_the_token_table(t):
    """no bias and a single token: the logits are ln_f(x) @ W_token.T, computed by hand"""
    sizes = dict(SMALL, bias=False, n_layers=1)
    state = _gpt_state(3, 23, 8, 16, 1, bias=False)
    model = _learner_gpt(t, state, **sizes)
    ids = torch.tensor([[7]])
    t.close(model(ids), _functional_gpt(state, ids, 1, 4), atol=1e-6, rtol=1e-6, what="logits of one token")


@visible_check("5.1")
def later_tokens_do_not_change_earlier_logits(t):
    """causality: changing the last two tokens leaves the logits of the first four unchanged"""
    model = _learner_gpt(t, _gpt_state(4, 23, 8, 16, 2), **SMALL)
    ids = _ids(5, 23, 2, 6)
    other = ids.clone()
    other[:, 4:] = (other[:, 4:] + 1) % 23
    a, b = model(ids), model(other)
    t.close(b[:, :4], a[:, :4], atol=1e-12, rtol=0, what="logits of positions 0-3")
    t.true(not torch.allclose(a[:, 4:], b[:, 4:]), "the logits of the changed positions must change")


@visible_check("5.1", inputs=True)
def rejects_too_long_or_misshapen_ids(t):
    """a sequence longer than the context, or 1-D ids, raises ValueError"""
    lib = t.learner("gpt")
    model = lib.GPT(lib.GPTConfig(**SMALL))
    message = t.raises(ValueError, model, torch.zeros(1, 9, dtype=torch.int64))
    t.true(
        "9" in message and "8" in message, f"the message should name the length 9 and the context 8, got {message!r}"
    )
    t.raises(ValueError, model, torch.zeros(5, dtype=torch.int64))


# -- 5.2 count_parameters -------------------------------------------------------------------------


@visible_check("5.2")
def the_four_gpt2_sizes(t):
    """GPT-2 124M, 355M, 774M and 1558M: 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200"""
    lib = t.learner("gpt")
    expected = {"124M": 124_439_808, "355M": 354_823_168, "774M": 774_030_080, "1558M": 1_557_611_200}
    for size, count in expected.items():
        t.equal(lib.count_parameters(lib.GPTConfig.gpt2(size)), count, what=f"GPT-2 {size}")


@visible_check("5.2")
def a_tiny_model_by_hand(t):
    """vocab 10, context 4, d_model 8, one layer: 1,000 parameters with biases, 904 without"""
    lib = t.learner("gpt")
    sizes = {"vocab_size": 10, "context_length": 4, "d_model": 8, "n_layers": 1, "n_heads": 2}
    # 10*8 + 4*8 embeddings; block 12*64 + 13*8 = 872; final norm 16 -> 1000
    t.equal(lib.count_parameters(lib.GPTConfig(**sizes)), 1000, what="with biases")
    # no biases: 112 + (4*64 + 8*64 + 2*8) + 8 = 904
    t.equal(lib.count_parameters(lib.GPTConfig(bias=False, **sizes)), 904, what="without biases")


@visible_check("5.2", inputs=True)
def rejects_what_is_not_a_config(t):
    """an int or a dict instead of a GPTConfig raises ValueError"""
    lib = t.learner("gpt")
    t.raises(ValueError, lib.count_parameters, 124)
    t.raises(ValueError, lib.count_parameters, {"d_model": 768})


# -- 5.3 cross_entropy_loss -----------------------------------------------------------------------


@visible_check("5.3")
def matches_torch_cross_entropy(t):
    """equals F.cross_entropy on the flattened (batch * seq, vocab) logits (float64)"""
    lib = t.learner("training")
    logits, targets = 3.0 * _randn(10, 2, 5, 11), _ids(11, 11, 2, 5)
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    t.close(lib.cross_entropy_loss(logits, targets), expected, atol=1e-9, rtol=1e-9, what="loss")


@visible_check("5.3")
def uniform_logits_give_ln_vocab(t):
    """equal logits over 50,257 tokens give ln(50257) ≈ 10.825, whatever the targets"""
    lib = t.learner("training")
    logits = torch.full((1, 3, 50257), 4.0, dtype=F64)
    expected = torch.tensor(math.log(50257), dtype=F64)
    t.close(lib.cross_entropy_loss(logits, torch.tensor([[0, 17, 50256]])), expected, atol=1e-9, rtol=1e-9)


@visible_check("5.3")
def large_logits_stay_finite(t):
    """logits of ±1000 do not overflow: the loss is 2000 for a target scored -1000 against +1000"""
    lib = t.learner("training")
    logits = torch.tensor([[[1000.0, -1000.0], [1000.0, -1000.0]]], dtype=F64)
    t.close(
        lib.cross_entropy_loss(logits, torch.tensor([[0, 1]])),
        torch.tensor(1000.0, dtype=F64),
        atol=1e-9,
        rtol=1e-9,
        what="mean of 0 and 2000",
    )


@visible_check("5.3", inputs=True)
def rejects_mismatched_shapes(t):
    """targets whose shape is not logits' (batch, seq), or 2-D logits, raise ValueError"""
    lib = t.learner("training")
    t.raises(ValueError, lib.cross_entropy_loss, torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.int64))
    t.raises(ValueError, lib.cross_entropy_loss, torch.zeros(10, 7), torch.zeros(10, dtype=torch.int64))


# -- 5.4 train_step -------------------------------------------------------------------------------


def _torch_adamw_steps(state, batches, n_layers, n_heads, lr, max_grad_norm=None):
    """The expected parameters and losses after AdamW steps on the functional GPT (no weight decay)."""
    params = {k: v.clone().requires_grad_(True) for k, v in state.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        logits = _functional_gpt(params, x, n_layers, n_heads)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
        opt.step()
        losses.append(loss.item())
    return {k: v.detach() for k, v in params.items()}, losses


TRAIN = {"vocab_size": 19, "context_length": 6, "d_model": 8, "n_layers": 1, "n_heads": 2}


def _batch(seed):
    ids = _ids(seed, 19, 3, 7)
    return ids[:, :-1], ids[:, 1:]


@visible_check("5.4")
def one_step_is_one_adamw_step(t):
    """returns the batch's loss before the update as a float; the weights move as torch's AdamW moves them"""
    state = _gpt_state(20, 19, 6, 8, 1)
    model = _learner_gpt(t, state, **TRAIN)
    model.train()
    opt = t.learner("training").make_optimizer(model, lr=0.01, weight_decay=0.0)
    x, y = _batch(21)
    loss = t.learner("training").train_step(model, opt, x, y)
    expected, losses = _torch_adamw_steps(state, [(x, y)], 1, 2, lr=0.01)
    t.equal(type(loss), float, what="type of the returned loss")
    t.close(loss, losses[0], atol=1e-9, rtol=1e-9, what="returned loss")
    for name in ("embed.token.weight", "blocks.0.attn.q_proj.weight", "ln_f.bias"):
        t.close(t.value(model.get_parameter(name).detach()), expected[name], atol=1e-9, rtol=1e-7, what=name)


@visible_check("5.4")
def three_steps_clear_the_gradients(t):
    """three steps on three batches equal three AdamW steps (gradients are zeroed between steps)"""
    state = _gpt_state(22, 19, 6, 8, 1)
    model = _learner_gpt(t, state, **TRAIN)
    lib = t.learner("training")
    opt = lib.make_optimizer(model, lr=0.01, weight_decay=0.0)
    batches = [_batch(23 + i) for i in range(3)]
    got = [lib.train_step(model, opt, x, y) for x, y in batches]
    expected, losses = _torch_adamw_steps(state, batches, 1, 2, lr=0.01)
    for i, (loss, expected_loss) in enumerate(zip(got, losses)):
        t.close(loss, expected_loss, atol=1e-9, rtol=1e-9, what=f"loss of step {i + 1}")
    t.close(
        t.value(model.get_parameter("blocks.0.ffn.fc_in.weight").detach()),
        expected["blocks.0.ffn.fc_in.weight"],
        atol=1e-9,
        rtol=1e-7,
        what="fc_in.weight after three steps",
    )


@visible_check("5.4")
def clips_the_gradient_norm(t):
    """with max_grad_norm=0.05 the step equals AdamW after torch's clip_grad_norm_"""
    state = _gpt_state(27, 19, 6, 8, 1)
    model = _learner_gpt(t, state, **TRAIN)
    lib = t.learner("training")
    opt = lib.make_optimizer(model, lr=0.01, weight_decay=0.0)
    batches = [_batch(28 + i) for i in range(2)]
    for x, y in batches:
        lib.train_step(model, opt, x, y, max_grad_norm=0.05)
    expected, _ = _torch_adamw_steps(state, batches, 1, 2, lr=0.01, max_grad_norm=0.05)
    t.close(
        t.value(model.get_parameter("embed.position.weight").detach()),
        expected["embed.position.weight"],
        atol=1e-9,
        rtol=1e-7,
        what="position table after two clipped steps",
    )


# -- 5.5 next_token_probs -------------------------------------------------------------------------


@visible_check("5.5")
def temperature_scales_the_logits(t):
    """with no filtering the result is softmax(logits / T) for T = 0.5, 1, 2 (float64, (batch, vocab))"""
    lib = t.learner("sampling")
    logits = 2.0 * _randn(40, 3, 9)
    for temperature in (0.5, 1.0, 2.0):
        t.close(
            lib.next_token_probs(logits, temperature=temperature),
            torch.softmax(logits / temperature, dim=-1),
            atol=1e-12,
            rtol=1e-9,
            what=f"temperature {temperature}",
        )


@visible_check("5.5")
def top_k_keeps_the_k_largest_and_ties(t):
    """top_k=2 of [3, 2, 2, 0, 1] keeps 3 and both 2s; top_k=1 is one-hot; top_k ≥ vocab keeps all"""
    lib = t.learner("sampling")
    logits = torch.tensor([3.0, 2.0, 2.0, 0.0, 1.0], dtype=F64)
    kept = torch.softmax(torch.tensor([3.0, 2.0, 2.0], dtype=F64), dim=0)
    expected = torch.cat([kept, torch.zeros(2, dtype=F64)])
    t.close(lib.next_token_probs(logits, top_k=2), expected, atol=1e-12, rtol=1e-9, what="top_k=2")
    t.close(
        lib.next_token_probs(logits, top_k=1),
        torch.tensor([1.0, 0, 0, 0, 0], dtype=F64),
        atol=1e-12,
        rtol=0,
        what="top_k=1",
    )
    t.close(lib.next_token_probs(logits, top_k=50), torch.softmax(logits, 0), atol=1e-12, rtol=1e-9, what="top_k=50")


@visible_check("5.5")
def top_p_keeps_the_nucleus(t):
    """probabilities [0.5, 0.3, 0.15, 0.05]: top_p=0.75 keeps two, 0.85 three, 0.4 one, 1.0 all"""
    lib = t.learner("sampling")
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3], dtype=F64)  # not sorted: the order must not matter
    logits = probs.log()
    cases = {0.75: [0.0, 0.5, 0.0, 0.3], 0.85: [0.15, 0.5, 0.0, 0.3], 0.4: [0.0, 1.0, 0.0, 0.0], 1.0: probs.tolist()}
    for top_p, kept in cases.items():
        kept = torch.tensor(kept, dtype=F64)
        t.close(
            lib.next_token_probs(logits, top_p=top_p), kept / kept.sum(), atol=1e-12, rtol=1e-9, what=f"top_p={top_p}"
        )


@visible_check("5.5", inputs=True)
def rejects_bad_settings(t):
    """temperature ≤ 0, top_k < 1, top_p outside (0, 1] raise ValueError"""
    lib = t.learner("sampling")
    logits = torch.zeros(2, 5)
    for kwargs in ({"temperature": 0.0}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        t.raises(ValueError, lib.next_token_probs, logits, **kwargs)


# -- 5.6 generate ---------------------------------------------------------------------------------

GEN = {"vocab_size": 17, "context_length": 8, "d_model": 16, "n_layers": 2, "n_heads": 2}


def _expected_generation(state, ids, new, temperature, seed=None, context=8):
    """The recipe of the docstring, with the functional GPT and torch.multinomial."""
    g = None if seed is None else torch.Generator().manual_seed(seed)
    out = ids
    for _ in range(new):
        logits = _functional_gpt(state, out[:, -context:], 2, 2)[:, -1, :]
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=g)
        out = torch.cat([out, nxt], dim=1)
    return out


@visible_check("5.6")
def greedy_decoding(t):
    """temperature=0 appends the argmax token each step: (batch, seq + new) int64, starting with the prompt"""
    state = _gpt_state(50, 17, 8, 16, 2, scale=1.0)
    model = _learner_gpt(t, state, **GEN)
    ids = _ids(51, 17, 2, 3)
    out = t.learner("sampling").generate(model, ids, 5, temperature=0)
    t.equal(out, _expected_generation(state, ids, 5, 0), what="greedy continuation")


@visible_check("5.6")
def seeded_sampling_is_reproducible(t):
    """temperature=1.5, seed=7: one generator per call, torch.multinomial; the same seed gives the same text"""
    state = _gpt_state(52, 17, 8, 16, 2, scale=1.0)
    model = _learner_gpt(t, state, **GEN)
    lib = t.learner("sampling")
    ids = _ids(53, 17, 3, 2)
    out = lib.generate(model, ids, 6, temperature=1.5, seed=7)
    t.equal(out, _expected_generation(state, ids, 6, 1.5, seed=7), what="sampled continuation")
    t.equal(lib.generate(model, ids, 6, temperature=1.5, seed=7), out, what="a second call with the same seed")


@visible_check("5.6")
def crops_to_the_context(t):
    """a 10-token prompt and 4 new tokens with a context of 8: only the last 8 tokens are read"""
    state = _gpt_state(54, 17, 8, 16, 2, scale=1.0)
    model = _learner_gpt(t, state, **GEN)
    ids = _ids(55, 17, 1, 10)
    out = t.learner("sampling").generate(model, ids, 4, temperature=0)
    t.equal(out, _expected_generation(state, ids, 4, 0), what="greedy continuation of a long prompt")


@visible_check("5.6")
def restores_the_mode(t):
    """a model in training mode is back in training mode afterwards"""
    model = _learner_gpt(t, _gpt_state(56, 17, 8, 16, 2), **GEN)
    lib = t.learner("sampling")
    model.train()
    lib.generate(model, torch.tensor([[1, 2]]), 2, temperature=0)
    t.equal(t.value(model.training), True, what="model.training after generate")


@visible_check("5.6", inputs=True)
def rejects_bad_arguments(t):
    """a negative max_new_tokens, a negative temperature or 1-D ids raise ValueError"""
    model = _learner_gpt(t, _gpt_state(56, 17, 8, 16, 2), **GEN)
    lib = t.learner("sampling")
    t.raises(ValueError, lib.generate, model, torch.tensor([[1, 2]]), -1)
    t.raises(ValueError, lib.generate, model, torch.tensor([[1, 2]]), 2, temperature=-0.5)
    t.raises(ValueError, lib.generate, model, torch.tensor([1, 2]), 2)


# -- 5.7 sliding_windows --------------------------------------------------------------------------


def _unfolded(ids, context_length, stride):
    """PyTorch's windows of context_length + 1 tokens: inputs are all but the last, targets all but the first."""
    windows = ids.long().unfold(0, context_length + 1, stride)  # (n_windows, context_length + 1)
    return windows[:, :-1], windows[:, 1:]


@visible_check("5.7")
def matches_unfold(t):
    """(inputs, targets) equal ids.unfold(0, context_length + 1, stride) split by a token: overlaps, tiling, gaps"""
    lib = t.learner("data")
    ids = _ids(70, 50, 23)
    for stride in (2, 4, 6):  # below, equal to and above the context of 4
        inputs, targets = lib.sliding_windows(ids, 4, stride)
        expected_inputs, expected_targets = _unfolded(ids, 4, stride)
        t.equal(inputs, expected_inputs, what=f"inputs, stride {stride}")
        t.equal(targets, expected_targets, what=f"targets, stride {stride}")


@visible_check("5.7")
def ten_tokens_by_hand(t):
    """ids 0..9, context 3, stride 2: four windows starting at 0, 2, 4, 6; the last target is token 9"""
    inputs, targets = t.learner("data").sliding_windows(torch.arange(10), 3, 2)
    starts = torch.tensor([[0], [2], [4], [6]])
    t.equal(inputs, starts + torch.arange(3), what="inputs")
    t.equal(targets, starts + torch.arange(1, 4), what="targets")


@visible_check("5.7")
def int32_ids_give_int64(t):
    """int32 ids give int64 windows; exactly context_length + 1 tokens give one window"""
    inputs, targets = t.learner("data").sliding_windows(torch.tensor([5, 3, 8, 1], dtype=torch.int32), 3, 5)
    t.equal(inputs, torch.tensor([[5, 3, 8]]), what="inputs")
    t.equal(targets, torch.tensor([[3, 8, 1]]), what="targets")


@visible_check("5.7", inputs=True)
def rejects_short_text_and_bad_sizes(t):
    """ids of context_length tokens (no room for the last target), a stride of 0 or float ids raise ValueError"""
    lib = t.learner("data")
    t.raises(ValueError, lib.sliding_windows, torch.arange(4), 4, 1)
    t.raises(ValueError, lib.sliding_windows, torch.arange(10), 3, 0)
    t.raises(ValueError, lib.sliding_windows, torch.arange(10.0), 3, 1)


# -- 5.8 lr_at ------------------------------------------------------------------------------------


def torch_schedule(max_lr, warmup_steps, total_steps, min_lr):
    """The learning rate before each of total_steps optimizer steps, from PyTorch's own schedulers:
    SequentialLR(LinearLR, CosineAnnealingLR), or the cosine alone without warm-up (the hidden tests use it too)."""
    import warnings

    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=max_lr)
    sched = torch.optim.lr_scheduler
    cosine = sched.CosineAnnealingLR(opt, T_max=total_steps - warmup_steps, eta_min=min_lr)
    chain = cosine
    if warmup_steps:
        warmup = sched.LinearLR(opt, start_factor=1 / warmup_steps, total_iters=max(warmup_steps - 1, 1))
        chain = sched.SequentialLR(opt, [warmup, cosine], milestones=[warmup_steps])
    rates = []
    with warnings.catch_warnings():  # SequentialLR passes an epoch to step(), which PyTorch deprecates
        warnings.simplefilter("ignore")
        for _ in range(total_steps):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            chain.step()
    return rates


@visible_check("5.8")
def matches_torch_schedulers(t):
    """every step of a 40-step run equals SequentialLR(LinearLR, CosineAnnealingLR), warm-up 5, 3e-3 down to 3e-4"""
    lib = t.learner("training")
    for step, expected in enumerate(torch_schedule(3e-3, 5, 40, 3e-4)):
        t.close(lib.lr_at(step, 3e-3, 5, 40, 3e-4), expected, atol=1e-15, rtol=1e-9, what=f"step {step}")


@visible_check("5.8")
def the_boundaries_by_hand(t):
    """warm-up 4 of 12 steps, 1.0 to 0.1: 0.25 at step 0, 1.0 at steps 3 and 4, 0.55 at 8, 0.1 at 12 and 100"""
    lib = t.learner("training")
    for step, expected in ((0, 0.25), (1, 0.5), (3, 1.0), (4, 1.0), (8, 0.55), (12, 0.1), (100, 0.1)):
        t.close(lib.lr_at(step, 1.0, 4, 12, 0.1), expected, atol=1e-12, rtol=0, what=f"step {step}")
    t.equal(type(lib.lr_at(6, 1.0, 4, 12, 0.1)), float, what="type of the result")


@visible_check("5.8", inputs=True)
def rejects_bad_schedules(t):
    """a warm-up as long as the run, a negative step or min_lr above max_lr raise ValueError"""
    lib = t.learner("training")
    t.raises(ValueError, lib.lr_at, 0, 1.0, 10, 10, 0.1)
    t.raises(ValueError, lib.lr_at, -1, 1.0, 2, 10, 0.1)
    t.raises(ValueError, lib.lr_at, 3, 1.0, 2, 10, 2.0)


# -- 5.9 clip_grad_norm ---------------------------------------------------------------------------


def parameters_with_grads(values: list, grads: list) -> torch.nn.ParameterList:
    """Parameters holding ``values`` whose ``.grad`` are ``grads`` (``None``: no gradient).

    Checks create them with ``t.learner("checks.ch05").parameters_with_grads(...)``, so that they
    live where the learner's code runs: in the grader that is a sandboxed worker, and a tensor's
    ``.grad`` does not cross to it. ``.given_grads`` keeps the gradient tensors given, to check
    that they are changed in place.
    """
    params = torch.nn.ParameterList([torch.nn.Parameter(v.clone()) for v in values])
    for param, grad in zip(params, grads):
        param.grad = None if grad is None else grad.clone()
    params.given_grads = [param.grad for param in params]
    return params


def _torch_clipped(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_ on parameters with these gradients: (norm, clipped gradients)."""
    params = parameters_with_grads([torch.zeros_like(g) if g is not None else torch.zeros(1) for g in grads], grads)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm, [p.grad for p in params]


def _learner_clipped(t, grads, max_norm, how="iterable"):
    """The learner's clip_grad_norm on worker-side parameters: (returned norm, gradients afterwards)."""
    values = [torch.zeros_like(g) if g is not None else torch.zeros(1) for g in grads]
    params = t.learner("checks.ch05").parameters_with_grads(values, list(grads))
    if how == "generator":
        argument = params.parameters()
    elif how == "tensor":
        argument = params.get_parameter("0")
    else:
        argument = params  # an nn.ParameterList: an iterable of parameters
    norm = t.learner("training").clip_grad_norm(argument, max_norm)
    return norm, [t.value(params.get_parameter(str(i)).grad) for i in range(len(grads))]


@visible_check("5.9")
def matches_torch_clip_grad_norm(t):
    """three float64 gradients of global norm about 17 clipped to 1: the norm before and the gradients equal torch's"""
    grads = [3.0 * _randn(90, 4, 3), 3.0 * _randn(91, 5), 3.0 * _randn(92, 2, 2, 2)]
    norm, clipped = _learner_clipped(t, grads, 1.0)
    expected_norm, expected = _torch_clipped(grads, 1.0)
    t.close(norm, expected_norm, atol=1e-12, rtol=1e-12, what="returned norm")
    for i, (g, e) in enumerate(zip(clipped, expected)):
        t.close(g, e, atol=1e-12, rtol=1e-12, what=f"gradient {i}")


@visible_check("5.9")
def small_gradients_are_left_alone(t):
    """gradients of norm 5 under max_norm 10 are unchanged: [3, 4] gives tensor(5.) and stays [3, 4]"""
    norm, clipped = _learner_clipped(t, [torch.tensor([3.0, 4.0], dtype=F64)], 10.0)
    t.close(norm, torch.tensor(5.0, dtype=F64), atol=1e-12, rtol=0, what="returned norm")
    t.close(clipped[0], torch.tensor([3.0, 4.0], dtype=F64), atol=1e-12, rtol=0, what="gradient")


@visible_check("5.9")
def skips_missing_gradients_in_a_generator(t):
    """model.parameters()-style generator with a parameter that has no .grad: it is skipped, the rest clipped"""
    grads = [2.0 * _randn(93, 3, 3), None, 2.0 * _randn(94, 6)]
    norm, clipped = _learner_clipped(t, grads, 0.5, how="generator")
    expected_norm, expected = _torch_clipped(grads, 0.5)
    t.close(norm, expected_norm, atol=1e-12, rtol=1e-12, what="returned norm")
    t.equal(clipped[1], None, what="the gradient that was None")
    for i in (0, 2):
        t.close(clipped[i], expected[i], atol=1e-12, rtol=1e-12, what=f"gradient {i}")


@visible_check("5.9", inputs=True)
def rejects_a_bad_max_norm(t):
    """max_norm of 0 or -1 raises ValueError"""
    for max_norm in (0, -1.0):
        params = t.learner("checks.ch05").parameters_with_grads([torch.zeros(2)], [torch.ones(2)])
        t.raises(ValueError, t.learner("training").clip_grad_norm, params, max_norm)
