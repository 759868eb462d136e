"""Chapter 13's FP8 recipe on the reference solutions, against its public references: DeepSeek-V3's
reference inference code (deepseek-ai/DeepSeek-V3 ``inference/kernel.py``: ``act_quant`` with its 1e-4
floor and ``scale_fmt="ue8m0"``, ``weight_quant``, ``weight_dequant``, ``fp8_gemm``;
``inference/bf16_cast_fp8.py``'s ``SKIP_QUANT_PATTERNS``; ``README_WEIGHTS.md``: 128 × 128 blocks, float32
``weight_scale_inv``, edge blocks padded), PyTorch's float8 casts (measured facts the chapter states),
float64 products of the dequantized operands, Hugging Face's ``DeepseekV3ForCausalLM`` (which matrices a
real DeepSeek model has, built offline from a tiny configuration) and the course's ``llama.Llama``
(a checkpoint quantized, saved with safetensors, loaded back dequantized).
"""

from __future__ import annotations

from course_lib import fp8, llama
from course_lib.deepseek import DeepSeekConfig, count_parameters

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_randn as _randn
from safetensors.torch import load_file, save_file

F32, F64, FP8 = torch.float32, torch.float64, torch.float8_e4m3fn


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


# -- PyTorch's casts, as the chapter states them --------------------------------------------------------


def test_pytorch_e4m3fn_cast_saturates_even_infinity():
    x = torch.tensor([500.0, 464.0, float("inf"), -float("inf"), -1000.0, float("nan")])
    assert x.to(FP8).float()[:5].tolist() == [448.0, 448.0, 448.0, -448.0, -448.0]
    assert x.to(FP8).float()[5].isnan()
    # e5m2 is IEEE-like: it rounds to its own grid and keeps infinities.
    assert x.to(torch.float8_e5m2).float()[:5].tolist() == [512.0, 448.0, float("inf"), -float("inf"), -1024.0]


def test_e8m0_cast_rounds_to_nearest_where_deepseek_rounds_up():
    s = torch.tensor([0.3, 0.75, 1.4, 1.5, 5.9, 6.0])
    assert s.to(torch.float8_e8m0fnu).float().tolist() == [0.25, 1.0, 1.0, 2.0, 4.0, 8.0]
    assert torch.exp2(torch.ceil(torch.log2(s))).tolist() == [0.5, 1.0, 2.0, 2.0, 8.0, 8.0]
    # e8m0 has no zero: the smallest pattern is 2^-127.
    assert torch.tensor([0.0]).to(torch.float8_e8m0fnu).float().item() == 2.0**-127


# -- act_quant, weight_quant, weight_dequant ------------------------------------------------------------


def test_act_quant_tiles_scales_and_range():
    x = _randn(1, 4, 3, 256).float() * 10 ** torch.linspace(-2, 2, 256)
    x[0, 0, :128] = 0
    x_fp8, scale = fp8.act_quant(x)
    assert x_fp8.dtype == FP8 and scale.shape == (4, 3, 2) and scale.dtype == F32
    tiles = x.reshape(4, 3, 2, 128)
    assert torch.equal(scale, tiles.abs().amax(-1).clamp(min=1e-4) / 448)
    assert scale[0, 0, 0] == torch.tensor(1e-4) / 448
    values = x_fp8.float().reshape(4, 3, 2, 128)
    assert values.abs().amax(-1)[scale > 1e-4 / 448].eq(448).all()  # each tile's largest becomes +-448
    # one float8 rounding: within 2^-4 of each number, relative to its tile's scale at most one subnormal step
    error = (values * scale[..., None] - tiles).abs()
    assert (error <= tiles.abs() * 2**-4 + scale[..., None] * 2**-10).all()


def test_act_quant_ue8m0_scales_are_powers_of_two_at_or_above():
    x = _randn(2, 5, 128).float() * 3
    _, plain = fp8.act_quant(x)
    x_fp8, scale = fp8.act_quant(x, scale_fmt="ue8m0")
    assert torch.equal(torch.exp2(torch.log2(scale).round()), scale)
    assert (scale >= plain).all() and (scale < 2 * plain).all()
    assert x_fp8.float().abs().max() <= 448


@pytest.mark.parametrize("shape", [(256, 384), (576, 200), (130, 7), (1, 1)])
def test_weight_round_trip_and_edge_blocks(shape):
    w = _randn(3, *shape).float() * 0.02
    w_fp8, scale = fp8.weight_quant(w)
    assert scale.shape == (math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)) and scale.dtype == F32
    back = fp8.weight_dequant(w_fp8, scale)
    per_number = scale.repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]]
    assert ((back - w).abs() <= w.abs() * 2**-4 + per_number * 2**-10).all()
    # README_WEIGHTS.md: an edge block is zero-padded to 128 x 128 before its scale is taken; the padding changes
    # no maximum, so the scale of a padded block is that of its real numbers.
    padded = torch.zeros(math.ceil(shape[0] / 128) * 128, math.ceil(shape[1] / 128) * 128)
    padded[: shape[0], : shape[1]] = w
    _, padded_scale = fp8.weight_quant(padded)
    assert torch.equal(padded_scale, scale)


def test_v3_kv_a_proj_has_partial_blocks():
    rows = {name: (r, c) for name, r, c, _ in fp8.fp8_matrices(DeepSeekConfig.v3())}
    assert rows["kv_a_proj_with_mqa"] == (576, 7168)  # 512 + 64 rows: 4.5 blocks of 128
    assert (math.ceil(576 / 128), math.ceil(7168 / 128)) == (5, 56)


# -- fp8_gemm and fp8_linear ----------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "n", "k"), [(7, 300, 256), (3, 129, 384), (5, 64, 200)])
def test_fp8_gemm_equals_the_float64_product_of_the_dequantized_operands(m, n, k):
    a_fp8, a_scale = fp8.weight_quant(_randn(4, m, k).float(), 128)  # any float8 numbers with scales
    a_scale = _randn(5, m, math.ceil(k / 128)).float().exp()
    w_fp8, w_scale = fp8.weight_quant(_randn(6, n, k).float() * 0.05)
    got = fp8.fp8_gemm(a_fp8, a_scale, w_fp8, w_scale)
    a_deq = a_fp8.double() * a_scale.double().repeat_interleave(128, -1)[:, :k]
    w_deq = fp8.weight_dequant(w_fp8, w_scale, dtype=F64)
    expected = a_deq @ w_deq.T
    assert got.dtype == F32
    assert ((got.double() - expected).abs() <= 1e-6 * (a_deq.abs() @ w_deq.abs().T)).all()


def test_fp8_linear_against_the_unquantized_product():
    """The error FP8 itself makes: a few per cent of the product's typical size, measured in the chapter."""
    x = _randn(7, 16, 512).float()
    w = _randn(8, 384, 512).float() * 0.04
    w_fp8, w_scale = fp8.weight_quant(w)
    got = fp8.fp8_linear(x, w_fp8, w_scale)
    exact = F.linear(x, w)
    relative = ((got - exact).norm() / exact.norm()).item()
    assert 1e-3 < relative < 0.05


# -- checkpoints ----------------------------------------------------------------------------------------


def _checkpoint_layout(model) -> dict:
    """The state dict of Hugging Face's model with each expert's matrices apart, named as in DeepSeek's
    released checkpoint (``mlp.experts.<e>.gate_proj.weight``, ...); Hugging Face fuses them into 3-D tensors."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix, width = name[: -len("gate_up_proj")], tensor.shape[1] // 2
            for e, matrix in enumerate(tensor):
                state[f"{prefix}{e}.gate_proj.weight"] = matrix[:width]
                state[f"{prefix}{e}.up_proj.weight"] = matrix[width:]
        elif name.endswith("mlp.experts.down_proj"):
            for e, matrix in enumerate(tensor):
                state[f"{name[: -len('down_proj')]}{e}.down_proj.weight"] = matrix
        else:
            state[name] = tensor
    return state


def test_fp8_matrices_are_the_quantized_matrices_of_hugging_faces_model():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepSeekConfig.tiny()
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**config.hf_kwargs()))
    n = sum(p.numel() for p in model.parameters())
    assert n == count_parameters(config)  # what Hugging Face counts (no routing-bias buffer)
    state = _checkpoint_layout(model)
    quantized = {name: t for name, t in state.items() if t.ndim == 2 and fp8.is_quantized_name(name)}
    matrices = fp8.fp8_matrices(config)
    assert sum(t.numel() for t in quantized.values()) == sum(r * c * k for _, r, c, k in matrices)
    assert len(quantized) == sum(k for *_, k in matrices)
    kept = [name for name, t in state.items() if t.ndim == 2 and name not in quantized]
    assert sorted({name.rsplit(".", 2)[-2] for name in kept}) == ["embed_tokens", "gate", "lm_head"]
    # One float32 scale per block of each quantized matrix, as quantize_state_dict stores them (blocks of 8).
    out = fp8.quantize_state_dict(state, block_size=8)
    scales = sum(t.numel() for name, t in out.items() if name.endswith("_scale_inv"))
    blocks = sum(math.ceil(r / 8) * math.ceil(c / 8) * k for _, r, c, k in matrices)
    assert scales == blocks
    quantized_numbers = sum(t.numel() for t in quantized.values())
    assert fp8.model_bytes(config, "fp8", block_size=8) == 2 * (n - quantized_numbers) + quantized_numbers + 4 * blocks


def test_v3_bytes_per_format():
    v3 = DeepSeekConfig.v3()
    n = count_parameters(v3)
    assert n == 671_026_404_352
    assert fp8.model_bytes(v3, "float32") == 4 * n and fp8.model_bytes(v3, "bfloat16") == 2 * n
    quantized = sum(r * c * k for _, r, c, k in fp8.fp8_matrices(v3))
    assert quantized / n > 0.99  # all but the embeddings, the head, the norms and the routers
    blocks = sum(math.ceil(r / 128) * math.ceil(c / 128) * k for _, r, c, k in fp8.fp8_matrices(v3))
    assert fp8.model_bytes(v3, "fp8") == quantized + 4 * blocks + 2 * (n - quantized)
    assert fp8.model_bytes(v3, "int4") < fp8.model_bytes(v3, "fp8") < fp8.model_bytes(v3, "bfloat16")


def test_a_quantized_llama_checkpoint_loads_dequantized(tmp_path):
    config = llama.LlamaConfig(vocab_size=97, d_model=96, n_layers=2, n_heads=4, d_ff=200, context_length=32)
    torch.manual_seed(0)
    model = llama.Llama(config).eval()
    state = fp8.quantize_state_dict(model.state_dict(), block_size=32)
    assert state["model.layers.0.self_attn.q_proj.weight"].dtype == FP8
    assert state["model.layers.0.self_attn.q_proj.weight_scale_inv"].shape == (3, 3)
    assert state["model.embed_tokens.weight"].dtype == F32 and "lm_head.weight_scale_inv" not in state
    save_file(state, tmp_path / "model.safetensors")
    loaded = fp8.dequantize_state_dict(load_file(tmp_path / "model.safetensors"), block_size=32)
    assert set(loaded) == set(model.state_dict())
    restored = llama.Llama(config).eval()
    restored.load_state_dict(loaded)
    ids = torch.randint(97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, after = model(ids), restored(ids)
    assert 0 < (after - before).abs().max() < 0.05 * before.abs().max()


def test_dequantize_state_dict_names_what_is_missing():
    w_fp8, scale = fp8.weight_quant(torch.ones(4, 4), 2)
    with pytest.raises(ValueError, match="scale_inv"):
        fp8.dequantize_state_dict({"a.weight": w_fp8}, block_size=2)
    with pytest.raises(ValueError, match="no weight"):
        fp8.dequantize_state_dict({"a.weight_scale_inv": scale}, block_size=2)
    with pytest.raises(ValueError, match="blocks of 4"):
        fp8.dequantize_state_dict({"a.weight": w_fp8, "a.weight_scale_inv": scale}, block_size=4)
