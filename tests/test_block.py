"""Chapter 4's transformer block on the reference solutions: against Hugging Face's ``GPT2Block`` with
the same weights (eval mode, float64), against its own pre-norm formula, plus causality, masks,
dropout, validation, gradients and the weight loader.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import block as bl

import math

import pytest
import torch
from conftest import assert_close as _close
from conftest import seeded_randn as _randn

F64 = torch.float64


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _hf_block(seed: int, d_model: int, n_heads: int, eps: float = 1e-5):
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    config = GPT2Config(
        n_embd=d_model, n_head=n_heads, n_positions=64, resid_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=eps
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    block = GPT2Block(config).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    return block


def _hf_forward(block, x):
    seq = x.shape[1]
    mask = torch.zeros(seq, seq, dtype=x.dtype).masked_fill(~torch.ones(seq, seq, dtype=torch.bool).tril(), -math.inf)
    with torch.no_grad():
        out = block(x, attention_mask=mask[None, None])
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(
    "d_model, n_heads, batch, seq, eps", [(16, 4, 2, 7, 1e-5), (24, 3, 1, 1, 1e-5), (32, 8, 3, 12, 1e-2)]
)
def test_block_matches_hugging_face_gpt2_block(d_model, n_heads, batch, seq, eps):
    hf = _hf_block(d_model + seq, d_model, n_heads, eps)
    ours = bl.TransformerBlock(d_model, n_heads, eps=eps).double().eval().load_hf_gpt2_block(hf.state_dict())
    x = _randn(seq, batch, seq, d_model)
    _close(ours(x), _hf_forward(hf, x), tol=1e-6)


def test_loader_with_a_prefix_and_its_errors():
    hf = _hf_block(0, 16, 2)
    state = {f"transformer.h.3.{k}": v for k, v in hf.state_dict().items()}
    ours = bl.TransformerBlock(16, 2).double().eval().load_hf_gpt2_block(state, prefix="transformer.h.3.")
    x = _randn(1, 2, 5, 16)
    _close(ours(x), _hf_forward(hf, x), tol=1e-6)
    with pytest.raises(ValueError, match=r"no 'h.0.attn.c_attn.weight'"):
        bl.TransformerBlock(16, 2).load_hf_gpt2_block(state, prefix="h.0.")
    with pytest.raises(ValueError, match="shape"):
        bl.TransformerBlock(8, 2).load_hf_gpt2_block(hf.state_dict())
    with pytest.raises(ValueError, match="bias=True"):
        bl.TransformerBlock(16, 2, bias=False).load_hf_gpt2_block(hf.state_dict())


def test_block_is_the_pre_norm_formula():
    torch.manual_seed(3)
    block = bl.TransformerBlock(12, 3, d_ff=20, bias=False).double().eval()
    x = _randn(4, 2, 6, 12)
    h = x + block.attn(torch.nn.functional.layer_norm(x, (12,), block.ln_1.weight, None, 1e-5))
    h = h + block.ffn(torch.nn.functional.layer_norm(h, (12,), block.ln_2.weight, None, 1e-5))
    _close(block(x), h)


def test_block_keeps_the_width_and_is_causal():
    torch.manual_seed(4)
    block = bl.TransformerBlock(16, 4).double().eval()
    x = _randn(5, 2, 8, 16)
    y = block(x)
    assert y.shape == x.shape and y.dtype == F64
    x2 = x.clone()
    x2[:, 5:] = _randn(6, 2, 3, 16)
    assert torch.equal(block(x2)[:, :5], y[:, :5])


def test_block_passes_the_extra_mask():
    torch.manual_seed(5)
    block = bl.TransformerBlock(8, 2).double().eval()
    x = _randn(7, 2, 4, 8)
    keep = torch.tensor([[True] * 4, [True, True, False, False]]).view(2, 1, 1, 4)
    y = block(x, keep)
    _close(y[0], block(x[:1])[0])  # nothing masked in the first sequence
    assert not torch.allclose(y[1], block(x[1:])[0])


def test_block_dropout_and_gradients():
    torch.manual_seed(6)
    block = bl.TransformerBlock(16, 4, dropout=0.3).double()
    x = _randn(8, 2, 6, 16).requires_grad_()
    block.eval()
    y = block(x)
    assert torch.equal(y, block(x))
    block.train()
    torch.manual_seed(7)
    a = block(x)
    torch.manual_seed(7)
    assert torch.equal(a, block(x))
    assert not torch.allclose(a, y)
    a.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None, name


def test_block_parameter_count():
    for d in (8, 32, 768):
        assert (
            sum(p.numel() for p in bl.TransformerBlock(d, 4).parameters())
            == 12 * d * d + 13 * d
            == bl.block_parameters(d)
        )
    assert sum(p.numel() for p in bl.TransformerBlock(8, 2, d_ff=5, bias=False).parameters()) == bl.block_parameters(
        8, 5, False
    )


@pytest.mark.parametrize("bad", [torch.zeros(4, 16), torch.zeros(1, 2, 4, 16), torch.zeros(2, 4, 8)])
def test_block_rejects_bad_inputs(bad):
    with pytest.raises(ValueError, match="d_model=16"):
        bl.TransformerBlock(16, 4)(bad)


def test_block_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible"):
        bl.TransformerBlock(10, 3)
    with pytest.raises(ValueError):
        bl.TransformerBlock(8, 2, dropout=2.0)
