"""Chapter 5's sampling on the reference solutions: the filtered distributions (temperature, top-k,
top-p), greedy and seeded generation, context cropping, the model's mode, and validation.
"""

from __future__ import annotations

from course_lib import gpt, sampling

import pytest
import torch

F64 = torch.float64


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def test_temperature_is_softmax_of_scaled_logits():
    logits = torch.randn(4, 30, dtype=F64, generator=torch.Generator().manual_seed(0))
    for temperature in (0.1, 1.0, 3.0):
        torch.testing.assert_close(
            sampling.next_token_probs(logits, temperature), torch.softmax(logits / temperature, -1)
        )
    low = sampling.next_token_probs(logits, 0.1).max(-1).values
    high = sampling.next_token_probs(logits, 3.0).max(-1).values
    assert (low > high).all()  # a low temperature sharpens


def test_top_k_keeps_the_k_largest_with_ties():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, -2.0]], dtype=F64)
    p = sampling.next_token_probs(logits, top_k=2)
    assert (p[0] > 0).tolist() == [False, True, True, True, False]
    torch.testing.assert_close(p.sum(-1), torch.ones(1, dtype=F64))
    torch.testing.assert_close(sampling.next_token_probs(logits, top_k=99), torch.softmax(logits, -1))


def test_top_p_is_the_smallest_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=F64)
    expect = {0.3: [0, 1, 0, 0], 0.75: [0, 1, 0, 1], 0.9: [0, 1, 1, 1], 1.0: [1, 1, 1, 1]}
    for top_p, kept in expect.items():
        p = sampling.next_token_probs(probs.log(), top_p=top_p)
        torch.testing.assert_close(
            p, probs * torch.tensor(kept, dtype=F64) / (probs * torch.tensor(kept, dtype=F64)).sum()
        )
    # a random batch: the kept set's mass reaches top_p and dropping its least likely member would not
    logits = torch.randn(50, 40, dtype=F64, generator=torch.Generator().manual_seed(1))
    full = torch.softmax(logits, -1)
    p = sampling.next_token_probs(logits, top_p=0.7)
    kept_mass = (full * (p > 0)).sum(-1)
    smallest_kept = torch.where(p > 0, full, torch.ones_like(full)).min(-1).values
    assert (kept_mass >= 0.7 - 1e-12).all() and (kept_mass - smallest_kept < 0.7).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
    ],
)
def test_next_token_probs_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampling.next_token_probs(torch.zeros(3), **kwargs)


def _model(**overrides):
    torch.manual_seed(0)
    config = gpt.GPTConfig(
        **{"vocab_size": 23, "context_length": 6, "d_model": 16, "n_layers": 2, "n_heads": 2, **overrides}
    )
    model = gpt.GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def test_greedy_generation_is_the_argmax_loop_with_cropping():
    model = _model().eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    out = sampling.generate(model, ids, 5, temperature=0)
    assert out.shape == (1, 13) and out.dtype == torch.int64 and torch.equal(out[:, :8], ids)
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, model(seq[:, -6:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = _model()
    ids = torch.tensor([[1], [2], [3]])
    a = sampling.generate(model, ids, 20, temperature=1.0, top_k=10, seed=3)
    b = sampling.generate(model, ids, 20, temperature=1.0, top_k=10, seed=3)
    c = sampling.generate(model, ids, 20, temperature=1.0, top_k=10, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_follows_the_distribution():
    model = _model(n_layers=1).eval()
    ids = torch.tensor([[3, 4]]).repeat(4000, 1)
    draws = sampling.generate(model, ids, 1, temperature=1.0, top_k=3, seed=0)[:, -1]
    with torch.no_grad():
        probs = sampling.next_token_probs(model(ids[:1])[:, -1], top_k=3)[0]
    freq = torch.bincount(draws, minlength=23).double() / 4000
    assert set(draws.tolist()) <= set(torch.nonzero(probs).flatten().tolist())
    torch.testing.assert_close(freq, probs.double(), atol=0.03, rtol=0)


def test_generate_restores_mode_and_validates():
    model = _model(dropout=0.3).train()
    ids = torch.tensor([[1, 2]])
    out = sampling.generate(model, ids, 4, temperature=0)
    assert model.training
    assert torch.equal(out, sampling.generate(model.eval(), ids, 4, temperature=0))
    assert torch.equal(sampling.generate(model, ids, 0), ids)
    for args, kwargs in [
        ((ids, -1), {}),
        ((ids, 2), {"temperature": -1}),
        ((torch.tensor([1, 2]), 2), {}),
        ((torch.zeros(1, 0, dtype=torch.int64), 2), {}),
    ]:
        with pytest.raises(ValueError):
            sampling.generate(model, *args, **kwargs)


def test_top_tokens():
    assert sampling.top_tokens(torch.tensor([0.1, 0.6, 0.3]), 2) == [(1, pytest.approx(0.6)), (2, pytest.approx(0.3))]
    with pytest.raises(ValueError):
        sampling.top_tokens(torch.zeros(2, 2))
