"""Chapter 5's GPT on the reference solutions: logits against Hugging Face's GPT2LMHeadModel with
the same weights (through the checkpoint loader), the parameter count by formula against built
models and the published GPT-2 sizes, weight tying, initialisation, causality and validation.
"""

from __future__ import annotations

from course_lib import gpt

import json
import math

import pytest
import torch

F64 = torch.float64
SMALL = dict(vocab_size=37, context_length=12, d_model=16, n_layers=2, n_heads=4)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _hf_checkpoint(tmp_path, seed=0, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    sizes = dict(
        vocab_size=53,
        n_positions=16,
        n_embd=24,
        n_layer=2,
        n_head=3,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
    )
    sizes.update(overrides)
    torch.manual_seed(seed)
    config = GPT2Config(**sizes)
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # livelier weights than the default init, LayerNorms included
        for name, p in model.named_parameters():
            p.normal_(1.0 if ".ln_" in name and name.endswith("weight") else 0.0, 0.2)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def test_from_pretrained_matches_hugging_face_logits(tmp_path):
    hf = _hf_checkpoint(tmp_path)
    ours = gpt.GPT.from_pretrained(tmp_path)
    assert not ours.training
    assert ours.config == gpt.GPTConfig(vocab_size=53, context_length=16, d_model=24, n_layers=2, n_heads=3)
    ids = torch.randint(53, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config.json is missing"):
        gpt.GPT.from_pretrained(tmp_path)
    _hf_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 30
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape"):
        gpt.GPT.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model.safetensors is missing"):
        gpt.GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "size, expected", [("124M", 124_439_808), ("355M", 354_823_168), ("774M", 774_030_080), ("1558M", 1_557_611_200)]
)
def test_count_parameters_gives_the_released_gpt2_sizes(size, expected):
    n = gpt.count_parameters(gpt.GPTConfig.gpt2(size))
    assert n == expected and type(n) is int


@pytest.mark.parametrize("overrides", [{}, {"bias": False}, {"n_layers": 1, "vocab_size": 2}, {"context_length": 1}])
def test_count_parameters_equals_a_built_model(overrides):
    config = gpt.GPTConfig(**{**SMALL, **overrides})
    assert gpt.count_parameters(config) == sum(p.numel() for p in gpt.GPT(config).parameters())


def test_gpt2_small_builds_with_its_count():
    model = gpt.GPT(gpt.GPTConfig.gpt2("124M"))
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


def test_output_projection_is_tied_and_logits_are_the_formula():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(**SMALL)).double().eval()
    names = [n for n, _ in model.named_parameters()]
    assert not any("lm_head" in n or "out_head" in n for n in names)
    ids = torch.randint(37, (2, 9))
    x = model.embed(ids)
    for block in model.blocks:
        x = block(x)
    expected = model.ln_f(x) @ model.embed.token.weight.T
    torch.testing.assert_close(model(ids), expected, atol=1e-12, rtol=1e-12)
    model(ids).sum().backward()
    assert model.embed.token.weight.grad is not None and model.embed.token.weight.grad.abs().sum() > 0


def test_gpt2_initialisation():
    torch.manual_seed(0)
    config = gpt.GPTConfig(vocab_size=500, context_length=64, d_model=128, n_layers=8, n_heads=4)
    model = gpt.GPT(config)
    block = model.blocks[3]
    assert abs(block.attn.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(block.ffn.fc_out.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(block.attn.out_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert torch.equal(block.attn.q_proj.bias, torch.zeros(128))
    assert abs(model.embed.token.weight.std().item() - 0.02) < 0.002


def test_causality_shapes_and_determinism():
    torch.manual_seed(1)
    model = gpt.GPT(gpt.GPTConfig(**SMALL)).eval()
    ids = torch.randint(37, (2, 12))
    other = ids.clone()
    other[:, 7:] = 0
    a, b = model(ids), model(other)
    assert a.shape == (2, 12, 37) and a.dtype == torch.float32
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
    torch.testing.assert_close(model(ids), a, atol=0, rtol=0)


def test_forward_validation():
    model = gpt.GPT(gpt.GPTConfig(**SMALL))
    with pytest.raises(ValueError, match=r"13.*12"):
        model(torch.zeros(1, 13, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch, seq"):
        model(torch.zeros(12, dtype=torch.int64))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"d_model": 10, "n_heads": 4}, "divisible"),
        ({"n_layers": 0}, "n_layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"vocab_size": 2.0}, "vocab_size"),
        ({"eps": 0}, "eps"),
        ({"bias": 1}, "bias"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        gpt.GPTConfig(**{**SMALL, **bad})


def test_gpt2_sizes_and_unknown_size():
    assert gpt.GPTConfig.gpt2("1558M").n_heads == 25 and gpt.GPTConfig.gpt2("355M").d_model == 1024
    assert gpt.GPTConfig.gpt2("124M", dropout=0.1).dropout == 0.1
    with pytest.raises(ValueError, match="124M, 355M, 774M, 1558M"):
        gpt.GPTConfig.gpt2("7B")
    with pytest.raises(ValueError, match="GPTConfig"):
        gpt.GPT({"d_model": 8})
    with pytest.raises(ValueError, match="GPTConfig"):
        gpt.count_parameters(3)
