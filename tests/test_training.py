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
