"""Chapter 14's experiment: the models' sizes, the component counts against V3's published totals, and the command."""

from course_lib import capstone, deepseek, llama

import json

import pytest
import torch


@pytest.mark.parametrize("active", [False, True])
def test_components_add_up_to_v3s_published_counts(active):
    v3 = deepseek.DeepSeekConfig.v3()
    parts = capstone.components(v3, active=active)
    assert sum(parts.values()) == deepseek.count_parameters(v3, active=active, mtp=True)
    # Without the MTP module: the V3 report's 671B total and 37B active (tests/test_deepseek.py checks them).
    main_only = deepseek.count_parameters(v3, active=active)
    assert (int(main_only / 1e9) if active else round(main_only / 1e9)) == (37 if active else 671)


def test_the_dense_twin_has_the_mini_deepseeks_active_parameters():
    config = capstone.mini_config(vocab_size=384)
    dense = capstone.dense_twin(config)
    active = deepseek.count_parameters(config, active=True)
    # One unit of the SwiGLU width is 3 · d_model · n_layers parameters: the closest width is within half of it.
    assert abs(llama.count_parameters(dense) - active) <= 3 * config.d_model * config.n_layers / 2
    assert abs(llama.count_parameters(dense) - active) / active < 0.005
    assert sum(p.numel() for p in llama.Llama(dense).parameters()) == llama.count_parameters(dense)
    assert deepseek.count_parameters(config) > 1.8 * active  # the MoE holds far more than a token uses


def test_mtp_acceptance_counts_agreements():
    config = deepseek.DeepSeekConfig.tiny()
    torch.manual_seed(0)
    model = deepseek.DeepSeek(config)
    x = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    rate = capstone.mtp_acceptance(model, [(x, x)])
    with torch.no_grad():
        logits, (depth1,) = model(x, mtp=True)
    assert rate == (depth1.argmax(-1) == logits[:, 1:].argmax(-1)).double().mean().item()
    assert 0 <= rate <= 1 and model.training  # the mode it was in


def test_the_command_on_a_few_steps(tmp_path, capsys):
    out = tmp_path / "results.json"
    args = ["--steps", "3", "--batch-size", "2", "--context-length", "8", "--vocab-size", "300", "--max-chars", "20000"]
    results = capstone.main([*args, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "bigram count model" in printed and "mini-DeepSeek" in printed and "MTP acceptance" in printed
    stored = json.loads(out.read_text())
    assert stored["steps"] == 3 and set(stored["history"]) == {"mini-DeepSeek", "dense"}
    for name in ("mini-DeepSeek", "dense"):
        assert len(stored["history"][name]["val"]) == 4  # before the first step and after each
        assert stored[name]["tokens"] == 3 * 2 * 8
    assert results["mini-DeepSeek"]["active"] == deepseek.count_parameters(capstone.mini_config(300, 8), active=True)


def test_the_stored_run_is_the_documented_command():
    """The chapter quotes course_lib/results/ch14_capstone.json: it must be what the documented command writes."""
    stored = json.loads(capstone.RESULTS.read_text())
    assert stored["command"] == "python -m course_lib.capstone --steps 1500 --out course_lib/results/ch14_capstone.json"
    config = capstone.mini_config(vocab_size=384)
    assert stored["mini-DeepSeek"]["active"] == deepseek.count_parameters(config, active=True)
    assert stored["dense"]["parameters"] == llama.count_parameters(capstone.dense_twin(config))
    assert stored["mini-DeepSeek"]["tokens"] == stored["dense"]["tokens"] == 1500 * 16 * 32
    assert stored["mini-DeepSeek"]["held_out"] < stored["bigram"] and stored["dense"]["held_out"] < stored["bigram"]
