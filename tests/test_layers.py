"""Chapter 4's layers on the reference solutions, against PyTorch's own ``nn.LayerNorm`` and
``F.gelu`` in float64 to tight tolerances; plus the feed-forward network, input validation,
gradients, dropout and determinism.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import layers as ly

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close as _close
from conftest import seeded_randn as _randn

F64 = torch.float64


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


# -- 4.1 LayerNorm --------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 7), (2, 4, 16), (2, 3, 4, 9)])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layer_norm_matches_pytorch(shape, bias, eps):
    d = shape[-1]
    ours = ly.LayerNorm(d, eps=eps, bias=bias).double()
    theirs = torch.nn.LayerNorm(d, eps=eps, bias=bias, dtype=F64)
    with torch.no_grad():
        ours.weight.copy_(1.0 + _randn(1, d))
        if bias:
            ours.bias.copy_(_randn(2, d))
    theirs.load_state_dict(ours.state_dict())
    x = 5.0 + 3.0 * _randn(3, *shape)
    _close(ours(x), theirs(x), tol=1e-6)
    assert ours(x).dtype == F64 and ours(x).shape == x.shape


def test_layer_norm_initial_state_and_statistics():
    ln = ly.LayerNorm(10)
    assert torch.equal(ln.weight, torch.ones(10)) and torch.equal(ln.bias, torch.zeros(10))
    assert ly.LayerNorm(10, bias=False).bias is None
    assert [n for n, _ in ly.LayerNorm(10).named_parameters()] == ["weight", "bias"]
    y = ln.double()(_randn(4, 6, 10))
    _close(y.mean(-1), torch.zeros(6, dtype=F64))
    _close(y.var(-1, unbiased=False), torch.ones(6, dtype=F64), tol=1e-3)


def test_layer_norm_gradients_match_pytorch():
    x1 = _randn(5, 3, 8).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    ours, theirs = ly.LayerNorm(8).double(), torch.nn.LayerNorm(8, dtype=F64)
    ours(x1).pow(3).sum().backward()
    theirs(x2).pow(3).sum().backward()
    _close(x1.grad, x2.grad, tol=1e-8)
    _close(ours.weight.grad, theirs.weight.grad, tol=1e-8)
    _close(ours.bias.grad, theirs.bias.grad, tol=1e-8)


def test_layer_norm_float32():
    x = _randn(6, 2, 5, 12, dtype=torch.float32)
    y = ly.LayerNorm(12)(x)
    assert y.dtype == torch.float32
    _close(y, F.layer_norm(x, (12,)), tol=1e-5)


@pytest.mark.parametrize("bad", [torch.zeros(2, 7), torch.zeros(8, 2), torch.tensor(1.0)])
def test_layer_norm_rejects_the_wrong_width(bad):
    with pytest.raises(ValueError, match="d_model=8"):
        ly.LayerNorm(8)(bad)


@pytest.mark.parametrize("args", [(0,), (-1,), (2.0,), (4, 0.0), (4, -1e-5)])
def test_layer_norm_rejects_bad_settings(args):
    with pytest.raises(ValueError):
        ly.LayerNorm(*args)


# -- 4.2 gelu -------------------------------------------------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_pytorch_with_gradients(approximate):
    x1 = torch.cat([torch.linspace(-30, 30, 2001, dtype=F64), 3 * _randn(7, 100)]).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ly.gelu(x1, approximate=approximate), F.gelu(x2, approximate=approximate)
    _close(y1, y2, tol=1e-10)
    y1.sum().backward()
    y2.sum().backward()
    _close(x1.grad, x2.grad, tol=1e-10)


def test_gelu_default_is_exact_and_known_values():
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    _close(ly.gelu(x), x * ly.standard_normal_cdf(x))
    _close(ly.gelu(x), torch.tensor([-0.15865525393145707, 0.0, 0.8413447460685429], dtype=F64))
    assert ly.gelu(torch.zeros(2, 3, dtype=torch.float32), "tanh").dtype == torch.float32


@pytest.mark.parametrize("bad", ["exact", "TANH", "", None, 0])
def test_gelu_rejects_unknown_forms(bad):
    with pytest.raises(ValueError, match=r"none.*tanh"):
        ly.gelu(torch.zeros(3), approximate=bad)


def test_gelu_rejects_integer_tensors():
    with pytest.raises(ValueError, match="floating"):
        ly.gelu(torch.arange(3))


# -- 4.3 FeedForward ------------------------------------------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_ff", [None, 6])
def test_feed_forward_matches_its_formula(approximate, bias, d_ff):
    torch.manual_seed(0)
    ffn = ly.FeedForward(8, d_ff=d_ff, bias=bias, approximate=approximate).double().eval()
    assert ffn.fc_in.out_features == (d_ff or 32) and ffn.fc_out.in_features == (d_ff or 32)
    x = _randn(8, 2, 5, 8)
    expected = ffn.fc_out(F.gelu(ffn.fc_in(x), approximate=approximate))
    _close(ffn(x), expected)


@pytest.mark.parametrize("d", [1, 32, 768])
def test_feed_forward_parameter_count(d):
    assert sum(p.numel() for p in ly.FeedForward(d).parameters()) == 8 * d * d + 5 * d == ly.feed_forward_parameters(d)
    assert sum(p.numel() for p in ly.FeedForward(d, 3, bias=False).parameters()) == ly.feed_forward_parameters(
        d, 3, False
    )


def test_feed_forward_dropout_and_determinism():
    torch.manual_seed(1)
    ffn = ly.FeedForward(16, dropout=0.5).double()
    x = _randn(9, 4, 8, 16)
    ffn.eval()
    y = ffn(x)
    assert torch.equal(y, ffn(x))
    ffn.train()
    torch.manual_seed(2)
    a = ffn(x)
    torch.manual_seed(2)
    assert torch.equal(a, ffn(x))  # seeded: reproducible
    kept = a != 0
    assert 0.4 < kept.double().mean().item() < 0.6
    _close(a[kept], 2 * y[kept])


def test_feed_forward_gradients_reach_every_parameter():
    ffn = ly.FeedForward(8).double()
    ffn(_randn(10, 3, 8)).sum().backward()
    for name, p in ffn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_feed_forward_validation():
    with pytest.raises(ValueError, match="d_model=8"):
        ly.FeedForward(8)(torch.zeros(2, 32))
    for kwargs in (
        {"d_model": 0},
        {"d_model": 4, "d_ff": 0},
        {"d_model": 4, "dropout": 1.5},
        {"d_model": 4, "approximate": "erf"},
    ):
        with pytest.raises(ValueError):
            ly.FeedForward(**kwargs)
