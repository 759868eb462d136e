"""Chapter 6's layers on the reference solutions, against their public references: ``F.silu``,
``torch.nn.RMSNorm`` and Hugging Face's ``LlamaRMSNorm`` and ``LlamaMLP`` (built offline from tiny
random configs) at odd shapes and tight tolerances, half precision included; Llama's feed-forward
widths against the published ``intermediate_size`` of each model; and every number Chapter 6 states.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import layers as ly

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close as _close
from conftest import seeded_randn as _randn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


# -- 6.1 silu -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 3, 13)])
def test_silu_matches_pytorch_with_gradients(shape):
    x = (3.0 * _randn(1, *shape, 1)).squeeze(-1).requires_grad_()  # the helper needs one dimension at least
    x2 = x.detach().clone().requires_grad_()
    ours, theirs = ly.silu(x), F.silu(x2)
    _close(ours, theirs, tol=1e-14)
    assert ours.shape == x.shape and ours.dtype == F64
    ours.pow(2).sum().backward()
    theirs.pow(2).sum().backward()
    _close(x.grad, x2.grad, tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_silu_keeps_the_dtype(dtype):
    x = (3.0 * _randn(2, 5, 7)).to(dtype)
    y = ly.silu(x)
    assert y.dtype == dtype and y.shape == x.shape
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(y, F.silu(x), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_silu_and_its_gradient_stay_finite_far_from_zero(dtype):
    x = torch.tensor([-1e4, -1e3, -100.0, 0.0, 100.0, 1e3, 1e4], dtype=dtype, requires_grad=True)
    y = ly.silu(x)
    torch.testing.assert_close(y, F.silu(x.detach()), atol=0, rtol=1e-6)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.tensor([0, 0, 0, 0.5, 1, 1, 1], dtype=dtype), atol=1e-6, rtol=0)


def test_silu_known_values_and_input_validation():
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    _close(ly.silu(x), x / (1.0 + torch.exp(-x)), tol=1e-15)
    x = _randn(3, 4)
    before = x.clone()
    ly.silu(x)
    assert torch.equal(x, before)
    for bad in (torch.arange(3), torch.tensor([True]), [1.0], 1.0):
        with pytest.raises(ValueError, match="floating-point"):
            ly.silu(bad)


def test_silu_minimum_is_minus_lambert_w_of_one_over_e():
    """Elfwing et al. (2018) and Ramachandran et al. (2017) note SiLU's minimum, about -0.28 near x = -1.28;
    in closed form it is -W(1/e) at x = -1 - W(1/e)."""
    mpmath = pytest.importorskip("mpmath")
    w = float(mpmath.lambertw(1 / mpmath.e).real)
    x_min, value = ly.silu_minimum()
    assert math.isclose(x_min, -1.0 - w, rel_tol=0, abs_tol=1e-14)
    assert math.isclose(value, -w, rel_tol=0, abs_tol=1e-14)
    grid = torch.linspace(-4, 0, 400_001, dtype=F64)
    values = F.silu(grid)
    assert abs(values.min().item() - value) < 1e-10
    assert abs(grid[values.argmin()].item() - x_min) < 1e-4
    assert round(value, 4) == -0.2785 and round(x_min, 4) == -1.2785


# -- 6.2 RMSNorm ----------------------------------------------------------------------------------


def _hf_rms_norm(d: int, eps: float, weight: torch.Tensor) -> LlamaRMSNorm:
    theirs = LlamaRMSNorm(d, eps=eps).to(weight.dtype)
    with torch.no_grad():
        theirs.weight.copy_(weight)
    return theirs


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [(7,), (1, 1, 7), (3, 5, 13), (2, 3, 4, 13)])
@pytest.mark.parametrize("eps", [1e-6, 1e-5, 0.3])
def test_rms_norm_matches_torch_and_hugging_face(dtype, shape, eps):
    d = shape[-1]
    ours = ly.RMSNorm(d, eps=eps).to(dtype)
    theirs = torch.nn.RMSNorm(d, eps=eps, dtype=dtype)
    with torch.no_grad():
        ours.weight.copy_(1.0 + 0.5 * _randn(1, d))
    theirs.load_state_dict(ours.state_dict())
    x = (2.0 - 3.0 * _randn(2, *shape)).to(dtype)
    y = ours(x)
    assert y.dtype == dtype and y.shape == x.shape
    tol = 1e-13 if dtype == F64 else 2e-6
    torch.testing.assert_close(y, theirs(x), atol=tol, rtol=tol)
    if dtype == torch.float32:  # Hugging Face's computes in float32 whatever the input: equal in float32 only
        torch.testing.assert_close(y, _hf_rms_norm(d, eps, ours.weight.detach())(x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(13,), (3, 5, 7), (2, 9, 64)])
@pytest.mark.parametrize("scale", [1e-2, 1.0, 250.0])
def test_rms_norm_equals_llama_rms_norm_bit_for_bit_in_half_precision(dtype, shape, scale):
    d = shape[-1]
    weight = (1.0 + 0.5 * _randn(3, d)).to(dtype)
    ours = ly.RMSNorm(d, eps=1e-5).to(dtype)
    ours.load_state_dict({"weight": weight})
    x = (scale * _randn(4, *shape)).to(dtype)
    y = ours(x)
    assert y.dtype == dtype
    assert torch.equal(y, _hf_rms_norm(d, 1e-5, weight)(x))
    assert torch.isfinite(y).all()  # a float16 square of 250 * 3 overflows: the statistics are float32


def test_rms_norm_state_dict_copies_to_and_from_hugging_face():
    ours = ly.RMSNorm(11)
    assert [name for name, _ in ours.named_parameters()] == ["weight"]
    assert torch.equal(ours.weight, torch.ones(11))
    theirs = LlamaRMSNorm(11)
    with torch.no_grad():
        theirs.weight.normal_()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = _randn(5, 2, 11, dtype=torch.float32)
    assert torch.equal(ours(x), theirs(x))


def test_rms_norm_gradients_match_torch():
    x1 = _randn(6, 3, 7).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    ours, theirs = ly.RMSNorm(7).double(), torch.nn.RMSNorm(7, eps=1e-6, dtype=F64)
    with torch.no_grad():
        ours.weight.normal_()
    theirs.load_state_dict(ours.state_dict())
    ours(x1).pow(3).sum().backward()
    theirs(x2).pow(3).sum().backward()
    _close(x1.grad, x2.grad, tol=1e-10)
    _close(ours.weight.grad, theirs.weight.grad, tol=1e-10)


def test_rms_norm_invariances():
    """Zhang & Sennrich (2019), Table 1: invariant to re-scaling the input, not to re-centring it."""
    norm = ly.RMSNorm(16, eps=1e-30).double()
    x = 1.0 + _randn(7, 4, 16)
    _close(norm(5.0 * x), norm(x), tol=1e-12)
    assert (norm(x + 3.0) - norm(x)).abs().max() > 0.1
    layer_norm = ly.LayerNorm(16, eps=1e-30).double()
    _close(layer_norm(x + 3.0), layer_norm(x), tol=1e-10)


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 7), torch.zeros(8, 2), torch.tensor(1.0), torch.ones(8, dtype=torch.long)]
)
def test_rms_norm_rejects_bad_inputs(bad):
    with pytest.raises(ValueError, match="d_model=8"):
        ly.RMSNorm(8)(bad)


@pytest.mark.parametrize("args", [(0,), (-1,), (2.0,), (True,), (4, 0.0), (4, -1e-5), (4, True)])
def test_rms_norm_rejects_bad_settings(args):
    with pytest.raises(ValueError):
        ly.RMSNorm(*args)


# -- 6.3 SwiGLU -----------------------------------------------------------------------------------


def _hf_mlp(d_model: int, d_ff: int, bias: bool, dtype: torch.dtype, seed: int) -> LlamaMLP:
    # LlamaMLP reads only the widths, mlp_bias and hidden_act; one head of width 2 keeps the config's own checks quiet.
    config = LlamaConfig(
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=2,
        mlp_bias=bias,
        hidden_act="silu",
    )
    torch.manual_seed(seed)
    mlp = LlamaMLP(config).to(dtype)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0.0, 0.4)
    return mlp


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize(
    ("d_model", "d_ff", "shape"), [(7, 13, (3, 5)), (13, 29, (1, 1)), (5, 8, (2, 3, 4)), (16, 43, ())]
)
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_matches_hugging_face_llama_mlp(dtype, d_model, d_ff, shape, bias):
    theirs = _hf_mlp(d_model, d_ff, bias, dtype, seed=d_model + d_ff)
    ours = ly.SwiGLU(d_model, d_ff, bias=bias).to(dtype)
    ours.load_state_dict(theirs.state_dict())  # the same names: strict loading works
    x = (2.0 * _randn(7, *shape, d_model)).to(dtype)
    with torch.no_grad():
        y, expected = ours(x), theirs(x)
    assert y.dtype == dtype and y.shape == x.shape
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(y, expected, atol=tol, rtol=tol)


def test_swiglu_is_down_of_silu_gate_times_up():
    ours = ly.SwiGLU(6, 10).double()
    assert [n for n, _ in ours.named_parameters()] == ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]
    x = _randn(8, 4, 6)
    w = {n: p.detach() for n, p in ours.named_parameters()}
    expected = F.linear(F.silu(x @ w["gate_proj.weight"].T) * (x @ w["up_proj.weight"].T), w["down_proj.weight"])
    _close(ours(x), expected, tol=1e-12)


def test_swiglu_gradients_reach_every_parameter():
    ours = ly.SwiGLU(8, 12, bias=True)
    ours(_randn(9, 2, 3, 8, dtype=torch.float32)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters())


@pytest.mark.parametrize(("d_model", "d_ff", "bias"), [(4, 8, False), (7, 13, True), (64, 176, False)])
def test_swiglu_parameter_count(d_model, d_ff, bias):
    assert ly.swiglu_parameters(d_model, d_ff, bias) == sum(
        p.numel() for p in ly.SwiGLU(d_model, d_ff, bias).parameters()
    )


def test_swiglu_at_two_thirds_has_the_weights_of_a_4d_feed_forward():
    """Shazeer (2020): the gated variants use d_ff = 2/3 * 4d so the parameter count matches the two-matrix FFN."""
    for d in (3, 48, 768):
        assert ly.swiglu_parameters(d, 8 * d // 3) == ly.feed_forward_parameters(d, 4 * d, bias=False) == 8 * d * d
    assert ly.feed_forward_parameters(4096, bias=False) == 134_217_728
    assert ly.swiglu_parameters(4096, 11008) == 135_266_304


def test_swiglu_validation():
    with pytest.raises(ValueError, match="d_model=8"):
        ly.SwiGLU(8, 16)(torch.zeros(2, 16))
    with pytest.raises(ValueError):
        ly.SwiGLU(8, 16)([0.0] * 8)
    for args in ((0, 4), (4, 0), (4.0, 4), (4, 2.5)):
        with pytest.raises(ValueError):
            ly.SwiGLU(*args)


# -- 6.4 llama_ffn_dim ----------------------------------------------------------------------------

# intermediate_size in each model's config.json on the Hugging Face Hub (meta-llama/Llama-2-7b-hf,
# Llama-2-13b-hf, Llama-2-70b-hf, Meta-Llama-3-8B, Meta-Llama-3-70B, Llama-3.1-405B, Llama-3.2-1B), from the
# dim, multiple_of and ffn_dim_multiplier of Meta's params.json for the same checkpoint.
PUBLISHED = {
    "Llama-2-7B": ((4096, 256, None), 11008),
    "Llama-2-13B": ((5120, 256, None), 13824),
    "Llama-2-70B": ((8192, 4096, 1.3), 28672),
    "Llama-3-8B": ((4096, 1024, 1.3), 14336),
    "Llama-3-70B": ((8192, 4096, 1.3), 28672),
    "Llama-3.1-405B": ((16384, 1024, 1.2), 53248),
    "Llama-3.2-1B": ((2048, 256, 1.5), 8192),
}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_llama_ffn_dim_reproduces_the_published_widths(model):
    args, width = PUBLISHED[model]
    assert ly.llama_ffn_dim(*args) == width
    assert type(ly.llama_ffn_dim(*args)) is int


def test_the_chapters_table_is_the_published_one():
    assert set(ly.LLAMA_FFN_CONFIGS) == {"Llama-2-7B", "Llama-2-13B", "Llama-2-70B", "Llama-3-8B"}
    for name, config in ly.LLAMA_FFN_CONFIGS.items():
        args, width = PUBLISHED[name]
        assert (config["d_model"], config["multiple_of"], config["ffn_dim_multiplier"]) == args
        assert config["intermediate_size"] == width
        assert ly.llama_ffn_dim(*args) == width


def test_llama_ffn_dim_matches_hugging_faces_conversion_rule():
    """transformers' convert_llama_weights_to_hf.py computes multiple_of * ceil(int(m * int(8 n / 3)) / multiple_of)."""
    for n in (1, 7, 64, 100, 777, 4096, 5120, 8192):
        for multiple_of in (1, 7, 64, 256, 1024):
            for m in (None, 0.75, 1.3, 1.5, 2):
                hidden = int((1 if m is None else m) * int(8 * n / 3))
                if hidden < 1:
                    continue
                assert ly.llama_ffn_dim(n, multiple_of, m) == multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@pytest.mark.parametrize(
    "args",
    [
        (0,),
        (4096.0,),
        (True,),
        (4096, 0),
        (4096, 256.0),
        (4096, 256, 0),
        (4096, 256, -1.3),
        (4096, 256, "1.3"),
        (4096, 256, True),
        (4096, 256, float("nan")),
        (4096, 256, float("inf")),
        (1, 256, 0.1),
    ],
)
def test_llama_ffn_dim_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        ly.llama_ffn_dim(*args)


# -- the numbers the chapter states ---------------------------------------------------------------


def test_llama_2_7b_parameter_count_from_these_layers():
    """Touvron et al. (2023) and the Hugging Face checkpoint: Llama-2-7B has 6,738,415,616 parameters. Per block:
    attention 4 d² (no biases), SwiGLU 3 d · 11008, two RMSNorm scales; plus untied embeddings of 32000 tokens and a
    final RMSNorm."""
    d, vocab, layers = 4096, 32000, 32
    with torch.device("meta"):  # shapes only: nothing is allocated
        block = 4 * d * d + sum(p.numel() for p in ly.SwiGLU(d, ly.llama_ffn_dim(d)).parameters())
        block += 2 * sum(p.numel() for p in ly.RMSNorm(d).parameters())
    assert layers * block + 2 * vocab * d + d == 6_738_415_616
