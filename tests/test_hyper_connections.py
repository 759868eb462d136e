"""Chapter 15 §6's manifold-constrained hyper-connections on the reference solutions, against Hugging Face's
``DeepseekV4HyperConnection`` and ``DeepseekV4DecoderLayer`` (built offline from a tiny configuration of odd
sizes, random weights) and against the definition of a doubly-stochastic matrix.
"""

from __future__ import annotations

from course_lib import hyper_connections as hc

import pytest
import torch
from conftest import seeded_randn
from test_sparse_attention import _v4_config
from torch import nn
from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4DecoderLayer, DeepseekV4HyperConnection


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _config(n_streams: int = 3, n_iters: int = 7):
    """One sliding-window layer with a small MoE, n_streams residual streams."""
    return _v4_config(
        hc_mult=n_streams,
        hc_sinkhorn_iters=n_iters,
        num_hidden_layers=1,
        layer_types=["sliding_attention"],
        mlp_layer_types=["moe"],
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=7,
        o_groups=2,
        o_lora_rank=5,
    )


def _randomise(module: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("n_streams, n_iters", [(3, 7), (4, 20), (2, 1)])
def test_hyper_connection_equals_hugging_face(n_streams, n_iters):
    config = _config(n_streams, n_iters)
    hf = DeepseekV4HyperConnection(config)
    _randomise(hf, n_streams)
    ours = hc.HyperConnection(12, n_streams, n_iters, config.hc_eps, config.rms_norm_eps)
    ours.load_state_dict(hf.state_dict())
    streams = seeded_randn(1, 2, 5, n_streams, 12, dtype=torch.float32)
    with torch.no_grad():
        for mine, theirs in zip(ours(streams), hf(streams)):
            torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


class _Scaled(nn.Module):
    """A stand-in block (attention or MLP): a fixed linear map, so the test sees only the mHC wiring."""

    def __init__(self, seed: int, returns_tuple: bool):
        super().__init__()
        self.weight, self.returns_tuple = seeded_randn(seed, 12, 12, dtype=torch.float32), returns_tuple

    def forward(self, x, **kwargs):
        return (x @ self.weight, None) if self.returns_tuple else x @ self.weight


def test_mhc_update_is_hugging_faces_decoder_layer():
    """The layer's two residual updates (around attention and around the MLP) with stand-in blocks."""
    config = _config()
    layer = DeepseekV4DecoderLayer(config, 0).eval()
    _randomise(layer, 3)
    layer.self_attn, layer.mlp = _Scaled(10, True), _Scaled(11, False)
    attn_hc, ffn_hc = (hc.HyperConnection(12, 3, 7, config.hc_eps, config.rms_norm_eps) for _ in range(2))
    attn_hc.load_state_dict(layer.attn_hc.state_dict())
    ffn_hc.load_state_dict(layer.ffn_hc.state_dict())
    streams = seeded_randn(2, 2, 5, 3, 12, dtype=torch.float32)
    with torch.no_grad():
        expected = layer(streams)
        post, comb, x = attn_hc(streams)
        streams = hc.mhc_update(streams, layer.self_attn(layer.input_layernorm(x))[0], post, comb)
        post, comb, x = ffn_hc(streams)
        mine = hc.mhc_update(streams, layer.mlp(layer.post_attention_layernorm(x)), post, comb)
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


def test_sinkhorn_converges_to_a_doubly_stochastic_matrix():
    m = hc.sinkhorn_knopp(seeded_randn(4, 6, 5, 5), 300, 0.0)
    torch.testing.assert_close(m.sum(-1), torch.ones(6, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(m.sum(-2), torch.ones(6, 5), atol=1e-5, rtol=0)
    assert (m > 0).all()


def test_mixing_gain_stays_one_for_doubly_stochastic_products():
    doubly = hc.sinkhorn_knopp(seeded_randn(5, 60, 4, 4), 200, 0.0).double()
    torch.testing.assert_close(hc.mixing_gain(doubly), torch.ones(60, dtype=torch.float64), atol=1e-5, rtol=0)
    free = torch.eye(4, dtype=torch.float64) + 0.3 * seeded_randn(6, 60, 4, 4)  # unconstrained, near the identity
    gains = hc.mixing_gain(free)
    assert gains[-1] > 10 * gains[0]
    by_hand = (free[0] @ free[1]).abs().sum(-1).max()
    torch.testing.assert_close(gains[1], by_hand)
