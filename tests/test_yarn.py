"""Chapter 15 §7's YaRN on the reference solutions, against Hugging Face's ``_compute_yarn_parameters`` (the
``"yarn"`` entry of ``ROPE_INIT_FUNCTIONS``), its ``DeepseekV3RotaryEmbedding`` tables and ``DeepseekV3Attention``
scale, the YaRN paper's formulas written out here, and every number the chapter states.

The modules built with YaRN (MLA, V3.2's indexer, the whole model) are compared with Hugging Face's in
``test_mla.py``, ``test_sparse_attention.py`` and ``test_deepseek.py``.
"""

from __future__ import annotations

from course_lib import yarn
from course_lib.deepseek import DeepSeekConfig
from course_lib.mla import MultiHeadLatentAttention, rope_with_base
from course_lib.yarn import YaRN

import itertools
import logging
import math

import pytest
import torch
from transformers import DeepseekV3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def hf_config(dim: int, base: float, factor: float, original: int, beta_fast=32.0, beta_slow=1.0, **more):
    """A DeepseekV3Config whose RoPE is ``dim`` features of YaRN (its context ``factor × original``, as it expects)."""
    parameters = {
        "rope_type": "yarn",
        "rope_theta": base,
        "factor": factor,
        "original_max_position_embeddings": original,
    }
    parameters |= {"beta_fast": beta_fast, "beta_slow": beta_slow, **more}
    return DeepseekV3Config(
        qk_rope_head_dim=dim, rope_parameters=parameters, max_position_embeddings=max(1, round(factor * original))
    )


# V3's, then odd ones: tiny and wide heads, large bases, factors below 2 and non-integer, contexts of 1 to 8,192
# positions (1 and 5: the whole ramp clamped to pair 0, where HF's 0.001 keeps it from dividing by zero).
SETTINGS = list(
    itertools.product((64, 2, 10, 18, 128), (10000.0, 500000.0), (40.0, 1.0, 1.5, 6.5), (4096, 1, 5, 37, 8192))
) + [(64, 10000.0, 40.0, 4096, 16.0, 2.0), (18, 1.0e6, 8.0, 300, 64.0, 0.25)]


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_frequencies_are_hugging_faces_bit_for_bit(setting, caplog):
    with caplog.at_level(logging.ERROR, logger="transformers"):
        expected, _ = ROPE_INIT_FUNCTIONS["yarn"](hf_config(*setting))
    actual = yarn.yarn_frequencies(*setting)
    assert actual.dtype == torch.float32 and actual.shape == (setting[0] // 2,)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_the_paper_s_rule_fast_pairs_kept_slow_ones_divided():
    """YaRN §3.2 written out: a pair turning more than β_fast times in the original context keeps θ, one turning
    fewer than β_slow times gets θ / s, and V3's ramp runs between pairs 10 and 23 (the chapter's numbers)."""
    dim, base, factor, original = 64, 10000.0, 40.0, 4096
    theta = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    turns = original * theta / (2 * math.pi)
    f = yarn.yarn_frequencies(dim, base, factor, original).double()
    kept, divided = torch.isclose(f, theta, rtol=1e-6), torch.isclose(f, theta / factor, rtol=1e-6)
    assert kept[turns > 32].all() and divided[turns < 1].all()
    assert kept.nonzero().flatten().tolist() == list(range(11))  # pairs 0-10: at least 32 turns
    assert divided.nonzero().flatten().tolist() == list(range(23, 32))  # pairs 23-31
    gamma = (theta - f) / (theta - theta / factor)  # the share interpolated, on the ramp between
    torch.testing.assert_close(gamma[11:23], (torch.arange(11, 23, dtype=torch.float64) - 10) / 13, rtol=0, atol=1e-6)
    torch.testing.assert_close(yarn.yarn_frequencies(dim, base, 1.0, original).double(), theta, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((7, 1e4, 4.0, 16), "dim must be a positive even int"),
        ((True, 1e4, 4.0, 16), "dim must be a positive even int"),
        ((8, 1.0, 4.0, 16), "base must be a finite number > 1"),
        ((8, 1e4, 0.5, 16), "factor must be a finite number >= 1"),
        ((8, 1e4, float("nan"), 16), "factor must be a finite number >= 1"),
        ((8, 1e4, 4.0, 0), "original_context must be a positive int"),
        ((8, 1e4, 4.0, 16.0), "original_context must be a positive int"),
        ((8, 1e4, 4.0, 16, 1.0, 32.0), "beta_fast > beta_slow > 0"),
        ((8, 1e4, 4.0, 16, 32.0, 0.0), "beta_fast > beta_slow > 0"),
    ],
)
def test_bad_arguments_are_refused_clearly(args, message):
    with pytest.raises(ValueError, match=message):
        yarn.yarn_frequencies(*args)


@pytest.mark.parametrize("mscale, mscale_all_dim", [(1.0, 1.0), (0.0, 0.0), (0.707, 0.0), (1.0, 0.5), (0.0, 0.8)])
def test_table_and_softmax_factors_are_hugging_faces(mscale, mscale_all_dim, caplog):
    settings = YaRN(factor=6.5, original_context=16, mscale=mscale, mscale_all_dim=mscale_all_dim)
    with caplog.at_level(logging.ERROR, logger="transformers"):
        config = hf_config(10, 1e4, 6.5, 16, mscale=mscale, mscale_all_dim=mscale_all_dim)
        _, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    assert settings.table_factor == pytest.approx(attention_factor, rel=1e-15)
    tiny = DeepSeekConfig.tiny(yarn=settings, qk_rope_head_dim=10)
    config = DeepseekV3Config(**tiny.hf_kwargs())
    hf_scale = DeepseekV3Attention(config, layer_idx=0).scaling
    ours = MultiHeadLatentAttention(tiny)
    assert ours.scale == pytest.approx(hf_scale, rel=1e-15)
    # The tables: Hugging Face's cos and sin at every position, in the course's split-halves layout.
    hf_rope = DeepseekV3RotaryEmbedding(config)
    positions = torch.arange(config.max_position_embeddings)[None]
    cos, sin = hf_rope(torch.zeros(1, dtype=torch.float32), positions)
    table = rope_with_base(10, 1e4, config.max_position_embeddings, interleaved=False, yarn=settings)
    torch.testing.assert_close(table.cos, cos[0, :, :5], rtol=0, atol=1e-6)
    torch.testing.assert_close(table.sin, sin[0, :, :5], rtol=0, atol=1e-6)


def test_v3_numbers_the_chapter_states():
    v3 = DeepSeekConfig.v3().yarn
    assert (v3.factor, v3.original_context, v3.beta_fast, v3.beta_slow) == (40.0, 4096, 32.0, 1.0)
    assert DeepSeekConfig.v3().context_length == 163_840 == 40 * 4096
    assert round(yarn.yarn_mscale(40.0), 4) == 1.3689 and round(v3.softmax_factor, 3) == 1.874
    assert yarn.yarn_mscale(1.0) == yarn.yarn_mscale(0.5) == 1.0
    # 0.1 ln s + 1 is the paper's sqrt(1/t) (YaRN §3.4, eq. 22), so the scores are multiplied by its square.
    assert v3.softmax_factor == pytest.approx((0.1 * math.log(40) + 1) ** 2, rel=1e-15)


def test_settings_round_trip_and_refuse_what_is_not_implemented():
    settings = YaRN(factor=40.0, original_context=4096, mscale=1.0, mscale_all_dim=1.0)
    assert YaRN.from_hf(settings.hf_parameters(1e4)) == settings
    # A factor left out is the ratio of the two context lengths; zero betas take their defaults, as in HF's code.
    rope = {"type": "yarn", "original_max_position_embeddings": 4096, "beta_fast": 0, "mscale": 1, "mscale_all_dim": 1}
    assert YaRN.from_hf(rope, context_length=163840) == settings
    with pytest.raises(ValueError, match="without factor needs"):
        YaRN.from_hf(rope)
    with pytest.raises(ValueError, match="attention_factor is not implemented"):
        YaRN.from_hf({**rope, "factor": 40, "attention_factor": 0.8})
    for bad, message in [
        (dict(factor=0.5), "factor must be a finite number >= 1"),
        (dict(original_context=0), "original_context must be a positive int"),
        (dict(beta_fast=1.0), "beta_fast must be a finite number > 1.0"),
        (dict(mscale=-1.0), "mscale must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            YaRN(**{"factor": 4.0, "original_context": 16, **bad})
