"""Chapter 5's GPT on the reference solutions: logits against Hugging Face's GPT2LMHeadModel with
the same weights (through the checkpoint loader), the parameter count by formula against built
models and the published GPT-2 sizes, weight tying, initialisation, causality and validation; and
its two settings of ``kernels``, PyTorch's fused ones and the course's own code, which must be the
same model (parameters, state dicts, logits, gradients, dropout) however fast each is.
"""

from __future__ import annotations

from course_lib import attention, exercises, gpt
from course_lib import block as bl
from course_lib.checks import seeded_randn

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


# -- kernels="fused" (the default) and kernels="course": one model, two implementations -----------


def _pair(seed=0, **sizes):
    """The same seeded float64 GPT with fused kernels and with the course's own layers (LayerNorms made lively)."""
    torch.manual_seed(seed)
    fused = gpt.GPT(gpt.GPTConfig(**sizes)).double()
    with torch.no_grad():
        for name, p in fused.named_parameters():
            p.normal_(1.0 if p.ndim == 1 and name.endswith("weight") else 0.0, 0.3)
    course = gpt.GPT(gpt.GPTConfig(**sizes, kernels="course")).double()
    course.load_state_dict(fused.state_dict())
    return fused, course


@pytest.mark.parametrize(
    "sizes, batch, seq",
    [
        (dict(vocab_size=37, context_length=13, d_model=24, n_layers=2, n_heads=3), 3, 13),
        (dict(vocab_size=11, context_length=7, d_model=10, n_layers=3, n_heads=5, eps=0.1), 2, 5),
        (dict(vocab_size=53, context_length=9, d_model=12, n_layers=1, n_heads=1, bias=False), 1, 1),
        (dict(vocab_size=29, context_length=21, d_model=36, n_layers=2, n_heads=6), 5, 17),
    ],
)
def test_fused_and_course_kernels_agree_on_logits_and_gradients(sizes, batch, seq):
    fused, course = _pair(seq, **sizes)
    assert fused.config.kernels == "fused" and course.config.kernels == "course"
    ids = torch.randint(sizes["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(batch))
    targets = torch.randint(sizes["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seq))
    for model in (fused, course):
        torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten()).backward()
    torch.testing.assert_close(fused(ids), course(ids), atol=1e-12, rtol=1e-12)
    grads = dict(course.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-12, rtol=1e-12, msg=name)


def test_kernels_share_parameters_names_and_initial_values():
    torch.manual_seed(3)
    fused = gpt.GPT(gpt.GPTConfig(**SMALL))
    torch.manual_seed(3)
    course = gpt.GPT(gpt.GPTConfig(**SMALL, kernels="course"))
    a, b = fused.state_dict(), course.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert gpt.GPTConfig(**SMALL).kernels == "fused"  # the default
    one = fused.blocks[0]
    assert type(one.attn) is attention.FusedMultiHeadAttention and type(fused.ln_f) is bl.FusedLayerNorm
    assert isinstance(one.attn, attention.MultiHeadAttention) and type(one.ffn) is bl.FusedFeedForward
    assert type(course.blocks[0].attn) is attention.MultiHeadAttention
    assert course.blocks[0].attn.last_weights is None
    course(torch.zeros(1, 4, dtype=torch.int64))
    assert course.blocks[0].attn.last_weights.shape == (1, 4, 4, 4)  # the course's layer still records them


def test_fused_kernels_dropout_acts_in_training_only():
    sizes = dict(SMALL, dropout=0.3)
    fused, course = _pair(4, **sizes)
    ids = torch.randint(37, (2, 12), generator=torch.Generator().manual_seed(4))
    fused.eval()
    course.eval()
    torch.testing.assert_close(fused(ids), course(ids), atol=1e-12, rtol=1e-12)
    fused.train()
    assert not torch.allclose(fused(ids), fused(ids))
    # Attention dropout alone: nothing else in the layer is dropped, and evaluation is exact.
    torch.manual_seed(5)
    layer = attention.FusedMultiHeadAttention(16, 4, dropout=0.5).double()
    x = seeded_randn(6, 2, 9, 16)
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)
    reference = attention.MultiHeadAttention(16, 4, dropout=0.5).double().eval()
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer.eval()(x), reference(x), atol=1e-12, rtol=1e-12)
    # The feed-forward output: each number zeroed with probability p, the others scaled by 1 / (1 - p).
    ffn = bl.FusedFeedForward(16, dropout=0.5).double()
    kept = ffn.train()(x)
    full = ffn.eval()(x)
    dropped = kept == 0
    assert 0.4 < dropped.double().mean().item() < 0.6
    torch.testing.assert_close(kept[~dropped], 2 * full[~dropped], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_fused_attention_keeps_the_contract_with_masks(causal):
    torch.manual_seed(7)
    course = attention.MultiHeadAttention(12, 3, causal=causal).double().eval()
    fused = attention.FusedMultiHeadAttention(12, 3, causal=causal).double().eval()
    fused.load_state_dict(course.state_dict())
    x = seeded_randn(8, 3, 7, 12)
    padding = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    padding[1, ..., :4] = False  # sequence 1: its first four keys are padding
    padding[2] = False  # sequence 2: every key is hidden, so every query gets zeros
    window = torch.ones(7, 7, dtype=torch.bool).tril(2).triu(-2)
    for mask in (None, padding, window, padding & window):
        torch.testing.assert_close(fused(x, mask), course(x, mask), atol=1e-12, rtol=1e-12)
    assert fused.last_weights is None
    assert torch.equal(fused(x, padding)[2], fused.out_proj.bias.expand(7, 12))


def test_fused_layers_keep_the_errors():
    layer = attention.FusedMultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="bool"):
        layer(torch.zeros(2, 3, 8), torch.ones(3, 3))
    with pytest.raises(ValueError, match="broadcast"):
        layer(torch.zeros(2, 3, 8), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="d_model=8"):
        bl.FusedLayerNorm(8)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="d_model=8"):
        bl.FusedFeedForward(8)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="kernels"):
        gpt.GPTConfig(**SMALL, kernels="flash")
    with pytest.raises(ValueError, match="kernels"):
        bl.TransformerBlock(8, 2, kernels=True)


def test_fused_block_matches_hugging_face_gpt2_block():
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    config = GPT2Config(n_embd=20, n_head=4, n_positions=16, resid_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(9)
    hf = GPT2Block(config).double().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    ours = bl.TransformerBlock(20, 4, kernels="fused").double().eval().load_hf_gpt2_block(hf.state_dict())
    x = seeded_randn(10, 2, 11, 20)
    with torch.no_grad():
        expected = hf(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(ours(x), expected, atol=1e-10, rtol=1e-10)


def test_from_pretrained_with_either_kernels_matches_hugging_face(tmp_path):
    hf = _hf_checkpoint(tmp_path, seed=2)
    ids = torch.randint(53, (2, 15), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(ids).logits
    for kernels in ("fused", "course"):
        ours = gpt.GPT.from_pretrained(tmp_path, kernels=kernels)
        assert ours.config.kernels == kernels and not ours.training
        torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=1e-5)


def test_without_chapter_3_fused_runs_and_course_names_the_exercise(monkeypatch):
    """A learner's Chapter 5 folder with every exercise solved but Chapter 3's: the default model
    needs nothing from Chapter 3, and kernels="course" says which exercise is missing."""
    fused, course = _pair(11, **SMALL)
    ids = torch.randint(37, (2, 6), generator=torch.Generator().manual_seed(11))
    expected = course(ids)
    for entry in exercises.all_exercises():
        owner, _, method = entry.qualname.rpartition(".")
        if entry.chapter != 3 and owner:  # the other chapters' methods, solved (their references)
            module = __import__(f"course_lib.{entry.module}", fromlist=[owner])
            monkeypatch.setattr(getattr(module, owner), method, exercises.reference(entry))
    monkeypatch.setenv("COURSE_LIB_SOLUTIONS", "0")  # Chapter 3's exercises are the stubs again
    with pytest.raises(NotImplementedError, match=r"Exercise 3\.3 .*MultiHeadAttention\.forward"):
        course(ids)
    torch.testing.assert_close(fused(ids), expected, atol=1e-12, rtol=1e-12)
