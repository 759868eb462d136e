"""Chapter 11's Mixture of Experts on the reference solutions, against its public references:
Hugging Face's ``DeepseekV3TopkRouter`` and ``DeepseekV3MoE`` (built offline from tiny random
configurations of odd shapes, with a nonzero routing bias, weights copied through
``experts_from_hf``), DeepSeek-V3's reference ``Gate`` for the softmax router (deepseek-ai/DeepSeek-V3,
``inference/model.py``: group max without a bias, no renormalisation), the balance losses'
equations (V3 report eq. 17-20; DeepSeekMoE eq. 12-14), and every number Chapter 11 states.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import llama, moe
from course_lib.deepseek import DeepSeekConfig, count_parameters, parameter_breakdown

import math

import pytest
import torch
from conftest import seeded_randn as _randn
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE, DeepseekV3TopkRouter

F32, F64 = torch.float32, torch.float64


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _hf_config(config: DeepSeekConfig) -> DeepseekV3Config:
    hf = DeepseekV3Config(**config.hf_kwargs())
    hf._experts_implementation = "eager"  # the plain loop over experts, as a standalone module needs
    return hf


def _hf_moe(config: DeepSeekConfig, seed: int) -> DeepseekV3MoE:
    """Hugging Face's MoE layer with random weights and a nonzero routing bias."""
    hf = DeepseekV3MoE(_hf_config(config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*hf.parameters(), hf.gate.e_score_correction_bias):
            tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))
    return hf.eval()


CONFIGS = [
    DeepSeekConfig.tiny(),  # 12 experts in 4 groups (2 kept), top-3, 1 shared, width 48
    DeepSeekConfig.tiny(d_model=37, n_routed_experts=10, n_groups=5, n_limited_groups=3, n_activated_experts=4),
    DeepSeekConfig.tiny(d_model=29, n_routed_experts=9, n_groups=1, n_limited_groups=1, n_activated_experts=2,
                        moe_d_ff=11, n_shared_experts=2, route_scale=1.0),
    DeepSeekConfig.tiny(d_model=33, n_routed_experts=16, n_groups=8, n_limited_groups=4, n_activated_experts=8,
                        moe_d_ff=7, norm_topk_prob=False),
]  # fmt: skip


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"d{c.d_model}-E{c.n_routed_experts}-k{c.n_activated_experts}"
)
def test_moe_equals_hugging_face(config):
    """Hugging Face's DeepseekV3MoE, weights and bias copied across: equal outputs to 1e-5 in float32."""
    hf = _hf_moe(config, seed=config.d_model)
    ours = moe.MoE(config).eval()
    ours.load_state_dict(moe.experts_from_hf(hf.state_dict()))
    for shape in ((1, 1), (3, 7), (2, 13)):
        x = _randn(shape[0] * 10 + shape[1], *shape, config.d_model, dtype=F32)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), hf(x), atol=1e-5, rtol=1e-5)
        _, _, hf_indices = hf.gate(x)
        load = torch.bincount(hf_indices.flatten(), minlength=config.n_routed_experts)
        assert torch.equal(ours.last_load, load)


@pytest.mark.parametrize("config", CONFIGS[:2])
def test_router_equals_hugging_face_as_sets(config):
    """The same experts per token as DeepseekV3TopkRouter (which returns them unsorted), the same gates."""
    hf = _hf_moe(config, seed=7)
    router = moe.Router(config)
    router.load_state_dict(hf.gate.state_dict())
    x = _randn(1, 40, config.d_model, dtype=F32)
    weights, indices = router(x)
    _, hf_weights, hf_indices = hf.gate(x)
    ours_sorted, order = indices.sort(dim=-1)
    theirs_sorted, hf_order = hf_indices.sort(dim=-1)
    assert torch.equal(ours_sorted, theirs_sorted)
    torch.testing.assert_close(weights.gather(1, order), hf_weights.gather(1, hf_order), atol=1e-6, rtol=1e-6)
    assert set(router.state_dict()) == set(DeepseekV3TopkRouter(_hf_config(config)).state_dict())


def test_converters_round_trip_with_a_prefix():
    """experts_from_hf then experts_to_hf gives Hugging Face's tensors back, at any prefix."""
    hf = _hf_moe(CONFIGS[0], seed=3)
    state = {f"model.layers.5.mlp.{name}": value for name, value in hf.state_dict().items()}
    ours = moe.experts_from_hf(state)
    assert "model.layers.5.mlp.experts.11.down_proj.weight" in ours
    back = moe.experts_to_hf(ours)
    assert set(back) == set(state)
    for name, value in state.items():
        assert torch.equal(back[name], value), name


def test_gates_come_from_the_unbiased_scores_and_sort_descending():
    logits = torch.tensor([[0.3, -0.2, 1.0, 0.1]], dtype=F64)
    bias = torch.tensor([0.0, 2.0, 0.0, 0.0], dtype=F64)
    weights, indices = moe.route(logits, bias, 2, norm_topk_prob=False)
    assert indices.tolist() == [[1, 2]]
    torch.testing.assert_close(weights, torch.sigmoid(logits[:, [1, 2]]))


def test_masking_with_zero_would_pick_a_discarded_group():
    """The chapter's example: with negative biased scores, a 0 in place of -inf selects from a dropped group."""
    logits, bias = torch.zeros(1, 4, dtype=F64), torch.tensor([-0.6, -0.7, -0.9, -0.9], dtype=F64)
    _, indices = moe.route(logits, bias, 1, 2, 1)
    assert indices.tolist() == [[0]]
    choice = torch.sigmoid(logits) + bias
    assert int(torch.where(torch.tensor([True, True, False, False]), choice, 0.0).argmax()) == 2  # the bug


def _deepseek_gate(scores_logits, top_k, n_groups, n_limited, scale):
    """DeepSeek-V3's reference Gate for softmax scores without a bias (V2's router), written with its steps."""
    scores = scores_logits.softmax(dim=-1)
    grouped = scores.view(scores.shape[0], n_groups, -1)
    keep = grouped.amax(dim=-1).topk(n_limited, dim=-1).indices
    mask = torch.ones(scores.shape[0], n_groups, dtype=torch.bool).scatter_(1, keep, False)
    masked = grouped.masked_fill(mask[..., None], float("-inf")).flatten(1)
    indices = masked.topk(top_k, dim=-1).indices
    return scores.gather(1, indices) * scale, indices


def test_softmax_router_equals_deepseeks_gate():
    logits = _randn(5, 20, 16)
    weights, indices = moe.route(logits, None, 6, 8, 3, 16.0, "softmax", False)
    want_w, want_i = _deepseek_gate(logits, 6, 8, 3, 16.0)
    assert torch.equal(indices, want_i)  # no ties in random data; topk sorts descending
    torch.testing.assert_close(weights, want_w)


def test_gradients_reach_the_router_and_the_affinities():
    logits = _randn(6, 5, 8).requires_grad_()
    weights, _ = moe.route(logits, torch.zeros(8, dtype=F64), 2, 4, 2, 2.5)
    weights.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    scores = _randn(7, 2, 6, 8).sigmoid().requires_grad_()
    moe.sequence_balance_loss(scores, torch.randint(8, (2, 6, 1)), 0.1).backward()
    assert scores.grad.abs().sum() > 0


def test_each_expert_runs_once_per_call():
    """Dispatch grouped by expert: one call per expert that received tokens, not one per token."""
    layer = moe.MoE(CONFIGS[0])
    calls = [0] * CONFIGS[0].n_routed_experts
    for i, expert in enumerate(layer.experts):
        expert.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    layer(_randn(8, 4, 25, 48, dtype=F32))
    assert calls == [int(n > 0) for n in layer.last_load.tolist()]


def test_expert_balance_loss_is_deepseekmoes():
    """DeepSeekMoE eq. 12-14 over all tokens: f_i = N'/(K'T) · count, P_i = mean affinity."""
    scores = _randn(8, 30, 6).softmax(dim=-1)
    indices = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(i))[:2] for i in range(30)])
    f = 6 / (2 * 30) * torch.bincount(indices.flatten(), minlength=6).double()
    expected = 0.01 * (f * scores.mean(dim=0)).sum()
    torch.testing.assert_close(moe.expert_balance_loss(scores, indices), expected)
    with pytest.raises(ValueError, match="sum to one"):
        moe.expert_balance_loss(scores * 2, indices)


def test_update_bias_in_the_layer():
    layer = moe.MoE(CONFIGS[0])
    with pytest.raises(ValueError, match="forward"):
        layer.update_bias()
    layer(_randn(9, 2, 10, 48, dtype=F32))
    load = layer.last_load.double()
    layer.update_bias(0.5)
    torch.testing.assert_close(layer.gate.e_score_correction_bias, 0.5 * torch.sign(load.mean() - load).float())


def test_max_violation():
    assert moe.max_violation(torch.tensor([4, 4, 4])) == 0.0
    assert moe.max_violation(torch.tensor([0, 0, 0, 12])) == 3.0
    assert moe.max_violation(torch.tensor([1.0, 3.0])) == 0.5
    for bad in (torch.zeros(3), torch.zeros(0), torch.ones(2, 2)):
        with pytest.raises(ValueError):
            moe.max_violation(bad)


def test_feed_forward_costs_of_v3():
    """V3: 256 routed experts + 1 shared of width 2048 at d = 7168, 8 active (report §4.2)."""
    v3 = DeepSeekConfig.v3()
    costs = moe.feed_forward_costs(v3)
    expert = 3 * 7168 * 2048
    assert costs["moe_parameters"] == 257 * expert + 256 * 7168 == 11_320_164_352
    assert costs["moe_active_parameters"] == 9 * expert + 256 * 7168
    assert costs["moe_flops"] == 2 * costs["moe_active_parameters"]
    assert costs["dense_d_ff"] == 257 * 2048 + 256 // 3 and costs["dense_flops"] == 2 * costs["moe_parameters"]
    parts = parameter_breakdown(v3)
    assert costs["moe_parameters"] == 256 * parts["expert"] + parts["shared_experts"] + parts["router"]
    # The whole model's inactive parameters are the unused routed experts of its 58 MoE layers.
    assert count_parameters(v3) - count_parameters(v3, active=True) == 58 * (256 - 8) * expert
    assert count_parameters(v3) == 671_026_404_352


def test_fine_grained_segmentation_counts():
    """DeepSeekMoE §3.1: 16 experts top-2 against 64 experts top-8 (each split in 4): equal parameters and compute."""
    assert moe.expert_combinations(16, 2) == 120
    assert moe.expert_combinations(64, 8) == 4_426_165_368 == math.comb(64, 8)


def test_moe_llama_and_training_are_deterministic():
    lc = llama.LlamaConfig(vocab_size=50, d_model=24, n_layers=2, n_heads=4, d_ff=32, context_length=8)
    mc = DeepSeekConfig.tiny(d_model=24, n_routed_experts=6, n_groups=3, n_limited_groups=2, n_activated_experts=2,
                             moe_d_ff=8, kv_lora_rank=4, q_lora_rank=None)  # fmt: skip
    ids = torch.randint(50, (400,), generator=torch.Generator().manual_seed(0))
    runs = []
    for balance in ("none", "aux", "bias", "bias"):
        model = moe.moe_llama(lc, mc, seed=1)
        assert len(moe.moe_layers(model)) == 2
        runs.append(moe.train_moe(model, ids, 6, 4, 8, balance=balance, gamma=0.01))
        biases = [layer.gate.e_score_correction_bias for layer in moe.moe_layers(model)]
        assert all(bias.abs().sum() > 0 for bias in biases) == (balance == "bias")
    assert runs[2] == runs[3]
    assert runs[0]["loss"][0] == runs[1]["loss"][0]  # the balance loss is added after the language-model loss
    assert all(sum(load) == 4 * 8 * 2 for step in runs[0]["load"] for load in step)
    assert moe.dense_twin(lc, mc).d_ff == 8 * 3
    with pytest.raises(ValueError):
        moe.train_moe(model, ids, 1, 4, 8, balance="both")
