"""Visible checks of Chapter 6 — RMSNorm and SwiGLU.

Expected values come from PyTorch's own operations (``torch.nn.functional.silu``,
``torch.nn.functional.rms_norm``, ``torch.nn.functional.linear``), from Hugging Face's
``LlamaRMSNorm`` formula written out in PyTorch operations (for half precision), from the published
widths of Llama's feed-forward layers, or are worked out by hand. Float64 checks use tight
tolerances; half-precision checks ask for the exact numbers.
"""

from course_lib.checks import learner_model, seeded_randn
from course_lib.grading import visible_check

import torch
import torch.nn.functional as F

F64 = torch.float64


# -- 6.1 silu -------------------------------------------------------------------------------------


@visible_check("6.1")
def matches_pytorch_silu(t):
    """matches torch's silu from -20 to 20 (float64) and at -1, 0, 1 (float32)"""
    lib = t.learner("layers")
    x = torch.linspace(-20, 20, 801, dtype=F64)
    t.close(lib.silu(x), F.silu(x), atol=1e-12, rtol=1e-12, what="silu(x), float64")
    t.close(
        lib.silu(torch.tensor([-1.0, 0.0, 1.0])),
        torch.tensor([-0.26894142, 0.0, 0.73105858]),
        atol=1e-6,
        what="silu([-1, 0, 1]) in float32",
    )


@visible_check("6.1")
def large_inputs_and_dtypes(t):
    """stays finite at ±1e4; keeps the shape and dtype (float32, bfloat16)"""
    lib = t.learner("layers")
    for dtype in (torch.float32, F64):
        x = torch.tensor([-1e4, -1e3, -100.0, 100.0, 1e3, 1e4], dtype=dtype)
        t.close(lib.silu(x), F.silu(x), atol=1e-6, rtol=1e-6, what=f"large inputs, {dtype}")
    x = 3.0 * seeded_randn(1, 2, 3, 4, dtype=torch.float32)
    t.close(lib.silu(x), F.silu(x), atol=1e-6, rtol=1e-5, what="a (2, 3, 4) float32 tensor")
    x = x.to(torch.bfloat16)
    t.close(lib.silu(x), F.silu(x), atol=1e-2, rtol=1e-2, what="a (2, 3, 4) bfloat16 tensor")


@visible_check("6.1", inputs=True)
def silu_rejects_what_is_not_floating_point(t):
    """an integer tensor and a list raise ValueError"""
    lib = t.learner("layers")
    t.raises(ValueError, lib.silu, torch.arange(4))
    t.raises(ValueError, lib.silu, [0.5, 1.5])


# -- 6.2 RMSNorm.forward --------------------------------------------------------------------------


def llama_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face's LlamaRMSNorm written out: float32 statistics, cast back, then the scale (hidden tests use it)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@visible_check("6.2")
def matches_pytorch_rms_norm(t):
    """matches torch's rms_norm with a learned scale (float64, (batch, seq, d_model) = (2, 5, 7))"""
    weight = 1.0 + 0.5 * seeded_randn(10, 7)
    norm = learner_model(t, "layers", "RMSNorm", {"weight": weight}, 7)
    x = 3.0 + 2.0 * seeded_randn(11, 2, 5, 7)
    t.close(norm(x), F.rms_norm(x, (7,), weight, eps=1e-6), atol=1e-12, rtol=1e-12)


@visible_check("6.2")
def small_examples_by_hand(t):
    """[3, 4] -> [3, 4] / sqrt(12.5 + eps); a constant vector -> ones (no mean subtracted); zeros -> zeros"""
    norm = learner_model(t, "layers", "RMSNorm", {"weight": torch.ones(2, dtype=F64)}, 2, eps=1e-6)
    x = torch.tensor([[3.0, 4.0], [2.5, 2.5], [0.0, 0.0]], dtype=F64)
    root = torch.sqrt(torch.tensor([12.5 + 1e-6, 6.25 + 1e-6, 1e-6], dtype=F64)).unsqueeze(-1)
    t.close(norm(x), x / root, atol=1e-12, rtol=1e-12, what="RMSNorm(2) of [3, 4], [2.5, 2.5] and [0, 0]")
    wide = learner_model(t, "layers", "RMSNorm", {"weight": torch.ones(5, dtype=F64)}, 5, eps=1.0)
    x = torch.full((5,), 2.0, dtype=F64)
    t.close(wide(x), x / 5**0.5, atol=1e-12, rtol=1e-12, what="eps = 1 inside the square root: 2 / sqrt(4 + 1)")


@visible_check("6.2")
def half_precision_like_llama_rms_norm(t):
    """float16 and bfloat16, values up to ±300: exactly Hugging Face's numbers (float32 inside, cast, then scale)"""
    lib = t.learner("layers")
    for dtype in (torch.float16, torch.bfloat16):
        norm = lib.RMSNorm(13)
        norm.half() if dtype == torch.float16 else norm.bfloat16()  # only plain values cross to the grader's sandbox
        weight = (1.0 + 0.5 * seeded_randn(20, 13)).to(dtype)
        norm.load_state_dict({"weight": weight})
        x = (100.0 * seeded_randn(21, 3, 4, 13)).to(dtype)
        x[0, 0, 0] = 300.0  # its square, 90000, overflows float16 (largest value 65504)
        t.close(norm(x), llama_rms_norm(x, weight, 1e-6), atol=0, rtol=0, what=f"{dtype}")


@visible_check("6.2", inputs=True)
def rms_norm_rejects_the_wrong_width(t):
    """a last dimension other than d_model raises ValueError"""
    norm = t.learner("layers").RMSNorm(8)
    t.raises(ValueError, norm, torch.zeros(2, 3, 7))
    t.raises(ValueError, norm, torch.zeros(8, 2))


# -- 6.3 SwiGLU.forward ---------------------------------------------------------------------------


def _swiglu_state(seed: int, d_model: int, d_ff: int, bias: bool = False) -> dict:
    state = {
        "gate_proj.weight": seeded_randn(seed, d_ff, d_model) / d_model**0.5,
        "up_proj.weight": seeded_randn(seed + 1, d_ff, d_model) / d_model**0.5,
        "down_proj.weight": seeded_randn(seed + 2, d_model, d_ff) / d_ff**0.5,
    }
    if bias:
        state["gate_proj.bias"] = seeded_randn(seed + 3, d_ff)
        state["up_proj.bias"] = seeded_randn(seed + 4, d_ff)
        state["down_proj.bias"] = seeded_randn(seed + 5, d_model)
    return state


def _swiglu_expected(state: dict, x: torch.Tensor) -> torch.Tensor:
    gate = F.silu(F.linear(x, state["gate_proj.weight"], state.get("gate_proj.bias")))
    up = F.linear(x, state["up_proj.weight"], state.get("up_proj.bias"))
    return F.linear(gate * up, state["down_proj.weight"], state.get("down_proj.bias"))


@visible_check("6.3")
def matches_down_silu_gate_times_up(t):
    """output = down_proj(silu(gate_proj(x)) * up_proj(x)), no biases (float64, (2, 5, 8) -> d_ff 24)"""
    state = _swiglu_state(30, 8, 24)
    ffn = learner_model(t, "layers", "SwiGLU", state, 8, 24)
    x = 2.0 * seeded_randn(31, 2, 5, 8)
    t.close(ffn(x), _swiglu_expected(state, x), atol=1e-12, rtol=1e-10)


@visible_check("6.3")
def with_biases_and_any_leading_dims(t):
    """bias=True, on a 1-D vector and a 4-D tensor (float64)"""
    state = _swiglu_state(40, 6, 10, bias=True)
    ffn = learner_model(t, "layers", "SwiGLU", state, 6, 10, bias=True)
    for shape in ((6,), (2, 3, 4, 6)):
        x = seeded_randn(41, *shape)
        t.close(ffn(x), _swiglu_expected(state, x), atol=1e-12, rtol=1e-10, what=f"shape {shape}")


@visible_check("6.3", inputs=True)
def swiglu_rejects_the_wrong_width(t):
    """an input whose last dimension is not d_model raises ValueError"""
    ffn = t.learner("layers").SwiGLU(8, 24)
    t.raises(ValueError, ffn, torch.zeros(2, 3, 24))


# -- 6.4 llama_ffn_dim ----------------------------------------------------------------------------


@visible_check("6.4")
def reproduces_the_published_widths(t):
    """Llama-2-7B 11008, 13B 13824, 70B 28672 and Llama-3-8B 14336 (intermediate_size in their config.json)"""
    lib = t.learner("layers")
    t.equal(lib.llama_ffn_dim(4096), 11008, what="Llama-2-7B: llama_ffn_dim(4096)")
    t.equal(lib.llama_ffn_dim(5120, 256), 13824, what="Llama-2-13B: llama_ffn_dim(5120, 256)")
    t.equal(lib.llama_ffn_dim(8192, 4096, 1.3), 28672, what="Llama-2-70B: llama_ffn_dim(8192, 4096, 1.3)")
    t.equal(lib.llama_ffn_dim(4096, 1024, 1.3), 14336, what="Llama-3-8B: llama_ffn_dim(4096, 1024, 1.3)")


@visible_check("6.4")
def each_step_by_hand(t):
    """floor(8 * 96 / 3) = 256 stays 256; floor(8 * 100 / 3) = 266 rounds up to 320; floor(1.3 * 10922) = 14198"""
    lib = t.learner("layers")
    t.equal(lib.llama_ffn_dim(96, multiple_of=256), 256, what="llama_ffn_dim(96, multiple_of=256)")
    t.equal(lib.llama_ffn_dim(100, multiple_of=64), 320, what="llama_ffn_dim(100, multiple_of=64)")
    t.equal(lib.llama_ffn_dim(4096, 1), 10922, what="llama_ffn_dim(4096, 1)")
    t.equal(lib.llama_ffn_dim(4096, 1, 1.3), 14198, what="llama_ffn_dim(4096, 1, 1.3)")


@visible_check("6.4", inputs=True)
def ffn_dim_rejects_bad_arguments(t):
    """d_model 0, multiple_of 2.0 and ffn_dim_multiplier -1.3 raise ValueError"""
    lib = t.learner("layers")
    t.raises(ValueError, lib.llama_ffn_dim, 0)
    t.raises(ValueError, lib.llama_ffn_dim, 4096, 2.0)
    t.raises(ValueError, lib.llama_ffn_dim, 4096, 256, -1.3)
