"""Chapter 5's training pieces on the reference solutions: the loss against F.cross_entropy, one
training step against a manual one, the optimizer's groups, batching, evaluation and a tiny run.
"""

from __future__ import annotations

from course_lib import data, gpt, training

import math

import pytest
import torch
import torch.nn.functional as F

F64 = torch.float64
TINY = dict(vocab_size=19, context_length=8, d_model=16, n_layers=1, n_heads=2)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


@pytest.mark.parametrize("batch, seq, vocab, scale", [(1, 1, 2, 1.0), (3, 7, 50, 4.0), (2, 5, 1000, 30.0)])
def test_loss_matches_torch_cross_entropy(batch, seq, vocab, scale):
    g = torch.Generator().manual_seed(batch + seq)
    logits = scale * torch.randn(batch, seq, vocab, generator=g, dtype=F64, requires_grad=True)
    targets = torch.randint(vocab, (batch, seq), generator=g)
    ours = training.cross_entropy_loss(logits, targets)
    expected = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=1e-12)
    assert ours.shape == () and ours.dtype == F64
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_torch,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(g_ours, g_torch, atol=1e-12, rtol=1e-12)


def test_loss_of_uniform_logits_is_ln_vocab_and_extremes_are_finite():
    assert training.cross_entropy_loss(
        torch.zeros(2, 3, 50257, dtype=F64), torch.zeros(2, 3, dtype=torch.int64)
    ).item() == pytest.approx(math.log(50257))
    big = torch.tensor([[[1e4, -1e4]]], dtype=F64)
    assert training.cross_entropy_loss(big, torch.tensor([[1]])).item() == pytest.approx(2e4)


def test_loss_validation():
    with pytest.raises(ValueError, match="targets must have shape"):
        training.cross_entropy_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch, seq, vocab"):
        training.cross_entropy_loss(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64))


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(**{**TINY, **overrides})).double()


def test_train_step_equals_a_manual_step():
    a, b = _model(), _model()
    x, y = (
        torch.randint(19, (4, 8), generator=torch.Generator().manual_seed(1)),
        torch.randint(19, (4, 8), generator=torch.Generator().manual_seed(2)),
    )
    opt_a = training.make_optimizer(a, lr=1e-2)
    opt_b = training.make_optimizer(b, lr=1e-2)
    for _ in range(3):
        loss = training.train_step(a, opt_a, x, y, max_grad_norm=0.5)
        opt_b.zero_grad()
        manual = F.cross_entropy(b(x).reshape(-1, 19), y.reshape(-1))
        manual.backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
        opt_b.step()
        assert type(loss) is float and loss == pytest.approx(manual.item(), abs=1e-10)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-10, msg=name)


def test_train_step_lowers_the_loss_on_a_tiny_batch():
    model = _model(3)
    opt = training.make_optimizer(model, lr=1e-2, weight_decay=0.0)
    x, y = torch.randint(19, (2, 8)), torch.randint(19, (2, 8))
    losses = [training.train_step(model, opt, x, y) for _ in range(30)]
    assert losses[-1] < 0.3 * losses[0]
    with pytest.raises(ValueError, match="max_grad_norm"):
        training.train_step(model, opt, x, y, max_grad_norm=0)


def test_make_optimizer_decays_only_matrices():
    model = _model()
    opt = training.make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="lr"):
        training.make_optimizer(model, lr=0)


def test_get_batch_shifts_by_one_and_validates():
    ids = torch.arange(100)
    x, y = data.get_batch(ids, 5, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 10) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)
    x2, _ = data.get_batch(ids, 5, 10, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="at least 11"):
        data.get_batch(torch.arange(10), 1, 10)
    with pytest.raises(ValueError, match="1-D"):
        data.get_batch(torch.zeros(2, 50, dtype=torch.int64), 1, 4)
    with pytest.raises(ValueError, match="batch_size"):
        data.get_batch(ids, 0, 4)


def test_encode_corpus():
    from course_lib.tokenization import BPETokenizer

    tok = BPETokenizer.from_merges([(104, 105)])
    ids = data.encode_corpus("hi hi", tok)
    assert ids.dtype == torch.int64 and ids.tolist() == tok.encode("hi hi")
    with pytest.raises(ValueError, match="non-empty"):
        data.encode_corpus("", tok)


def test_train_and_evaluate_are_reproducible_and_learn():
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8] * 40)
    runs = []
    for _ in range(2):
        model = _model(5).float()
        history = training.train(
            model, ids, 40, 8, 8, lr=1e-2, seed=0, progress=False, val_ids=ids[:100], eval_every=20
        )
        runs.append(history)
    assert runs[0] == runs[1]
    assert len(runs[0]["train"]) == 40 and runs[0]["val_step"] == [20, 40]
    assert runs[0]["val"][-1] < 0.5 * runs[0]["train"][0]
    assert not model.training
    batches = [data.get_batch(ids, 2, 8, torch.Generator().manual_seed(9))]
    model.train()
    assert training.evaluate(model, batches) == pytest.approx(runs[0]["val"][-1], abs=0.5)
    assert model.training  # evaluate restores the mode
    with pytest.raises(ValueError, match="at least one batch"):
        training.evaluate(model, [])


@pytest.mark.parametrize(
    "length, context_length, stride", [(11, 3, 2), (40, 8, 8), (40, 8, 11), (9, 8, 1), (100, 1, 7)]
)
def test_sliding_windows_equal_unfold(length, context_length, stride):
    ids = torch.randint(500, (length,), generator=torch.Generator().manual_seed(length), dtype=torch.int32)
    inputs, targets = data.sliding_windows(ids, context_length, stride)
    windows = ids.long().unfold(0, context_length + 1, stride)  # (n_windows, context_length + 1)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs, windows[:, :-1]) and torch.equal(targets, windows[:, 1:])
    assert len(inputs) == (length - context_length - 1) // stride + 1


def test_sliding_windows_validation():
    with pytest.raises(ValueError, match="at least 5"):
        data.sliding_windows(torch.arange(4), 4, 1)
    for bad in (torch.arange(10.0), torch.arange(10) > 2, torch.zeros(2, 5, dtype=torch.int64), list(range(10))):
        with pytest.raises(ValueError, match="1-D integer tensor"):
            data.sliding_windows(bad, 3, 1)
    for context_length, stride in ((0, 1), (3, 0), (True, 1), (3, 2.0)):
        with pytest.raises(ValueError, match="positive int"):
            data.sliding_windows(torch.arange(10), context_length, stride)


def _torch_schedule(max_lr, warmup_steps, total_steps, min_lr):
    """The rate before each step from PyTorch's LinearLR then CosineAnnealingLR (the cosine alone without warm-up)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = torch.optim.lr_scheduler
    chain = sched.CosineAnnealingLR(opt, T_max=total_steps - warmup_steps, eta_min=min_lr)
    if warmup_steps:
        warmup = sched.LinearLR(opt, start_factor=1 / warmup_steps, total_iters=max(warmup_steps - 1, 1))
        chain = sched.SequentialLR(opt, [warmup, chain], milestones=[warmup_steps])
    rates = []
    for _ in range(total_steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        chain.step()
    return rates


@pytest.mark.parametrize(
    "max_lr, warmup_steps, total_steps, min_lr", [(3e-3, 30, 600, 3e-4), (1.0, 0, 10, 0.0), (2, 1, 5, 1)]
)
def test_lr_at_equals_torch_schedulers(max_lr, warmup_steps, total_steps, min_lr):
    expected = _torch_schedule(max_lr, warmup_steps, total_steps, min_lr)
    ours = [training.lr_at(step, max_lr, warmup_steps, total_steps, min_lr) for step in range(total_steps)]
    assert all(type(rate) is float for rate in ours)
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    for step in (total_steps, total_steps + 1, 10 * total_steps):  # the floor, where the cosine would rise again
        assert training.lr_at(step, max_lr, warmup_steps, total_steps, min_lr) == min_lr


def test_lr_at_boundaries_and_validation():
    assert [training.lr_at(s, 1.0, 4, 12, 0.1) for s in (0, 3, 4, 8, 12)] == pytest.approx([0.25, 1.0, 1.0, 0.55, 0.1])
    for args in (
        (0, 1.0, 4, 4, 0.1),
        (-1, 1.0, 2, 4, 0.1),
        (1.0, 1.0, 2, 4, 0.1),
        (0, 0.0, 2, 4, 0.0),
        (0, 1.0, 2, 4, 2.0),
    ):
        with pytest.raises(ValueError):
            training.lr_at(*args)


def _with_grads(grads):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


@pytest.mark.parametrize("scale, max_norm", [(10.0, 1.0), (0.01, 1.0), (3.0, 2)])
@pytest.mark.parametrize("dtypes", [(F64, F64), (torch.float32, torch.float32), (torch.float32, F64)])
def test_clip_grad_norm_equals_torch(scale, max_norm, dtypes):
    g = torch.Generator().manual_seed(7)
    grads = [
        scale * torch.randn(4, 3, generator=g, dtype=dtypes[0]),
        scale * torch.randn(5, generator=g, dtype=dtypes[1]),
    ]
    ours, theirs = _with_grads(grads), _with_grads(grads)
    theirs.append(torch.nn.Parameter(torch.zeros(2)))  # a parameter without a gradient is skipped
    norm = training.clip_grad_norm(iter(ours + theirs[-1:]), max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert norm.dtype == expected.dtype and norm.shape == ()
    torch.testing.assert_close(norm, expected, atol=1e-12, rtol=1e-12)
    for p, q in zip(ours, theirs):
        assert p.grad.dtype == q.grad.dtype
        torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=1e-12)


def test_clip_grad_norm_edge_cases():
    single = _with_grads([torch.tensor([3.0, 4.0], dtype=F64)])[0]
    grad = single.grad
    assert training.clip_grad_norm(single, 1.0).item() == pytest.approx(5.0)
    assert single.grad is grad  # scaled in place
    torch.testing.assert_close(single.grad, torch.tensor([0.6, 0.8], dtype=F64) * 5 / (5 + 1e-6))
    assert torch.equal(training.clip_grad_norm([torch.nn.Parameter(torch.ones(2))], 1.0), torch.tensor(0.0))
    for max_norm in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="max_norm"):
            training.clip_grad_norm([single], max_norm)


def test_train_follows_the_schedule():
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8] * 40)
    history = training.train(_model(5).float(), ids, 40, 8, 8, lr=1e-2, seed=0, progress=False)
    assert history["lr"] == [training.lr_at(s, 1e-2, 2, 40, 1e-3) for s in range(40)]  # steps // 20, lr / 10
    constant = training.train(
        _model(5).float(), ids, 10, 8, 8, lr=1e-2, seed=0, progress=False, warmup_steps=0, min_lr=1e-2
    )
    assert constant["lr"] == [1e-2] * 10
    with pytest.raises(ValueError, match="warmup_steps"):
        training.train(_model(5).float(), ids, 10, 8, 8, progress=False, warmup_steps=10)
