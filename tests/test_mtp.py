"""Chapter 12's multi-token prediction on the reference solutions, against its public references: Hugging Face's
``MtpLayer`` (transformers' implementation of DeepSeek-V3's MTP module, with a Llama decoder layer as its block) at
odd shapes in float32, PyTorch's cross-entropy for the loss, and the trunk's own greedy decoding (with and without
Chapter 8's KV cache) for speculative decoding; and the chapter's experiment helpers.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import llama, mtp

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_randn as _randn
from transformers import LlamaConfig as HFLlamaConfig
from transformers.modeling_layers import MtpLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


CONFIG = llama.LlamaConfig(vocab_size=37, d_model=20, n_layers=2, n_heads=5, d_ff=28, context_length=48, norm_eps=1e-6)


def _hf_layer_and_ours(config: llama.LlamaConfig, seed: int):
    """Hugging Face's MtpLayer with a LlamaDecoderLayer block, and ours with a LlamaBlock, holding the same weights."""
    hf_config = HFLlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=1,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        max_position_embeddings=config.context_length,
        rms_norm_eps=config.norm_eps,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    theirs = MtpLayer(hf_config, LlamaDecoderLayer, LlamaRMSNorm, 0).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape) * (0.3 if p.ndim > 1 else 0.2) + (1.0 if p.ndim == 1 else 0.0))
    ours = mtp.MTPModule(config.d_model, llama.LlamaBlock(config), config.norm_eps).eval()
    state = {}
    for name, value in theirs.state_dict().items():
        name = name.replace("mtp_block.", "block.").replace("post_norm.", "shared_head.norm.")
        state[name] = value
    ours.load_state_dict(state)
    return hf_config, theirs, ours


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (2, 7), (3, 13)])
def test_module_equals_hugging_face_mtp_layer(batch, seq):
    hf_config, theirs, ours = _hf_layer_and_ours(CONFIG, seed=seq)
    embed = torch.nn.Embedding(CONFIG.vocab_size, CONFIG.d_model)
    head = torch.nn.Linear(CONFIG.d_model, CONFIG.vocab_size, bias=False)
    hidden = _randn(1, batch, seq, CONFIG.d_model, dtype=torch.float32)
    ids = torch.randint(CONFIG.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(2))
    rope = llama.LlamaModel(CONFIG).rotary_emb
    rotary = LlamaRotaryEmbedding(hf_config)
    with torch.no_grad():
        for shift in (0, 1):  # Hugging Face numbers the MTP positions by the embedded tokens: one later
            positions = (torch.arange(seq) + shift)[None].expand(batch, seq)
            expected = theirs(embed(ids), hidden, rotary(hidden, positions), None, positions, None)
            logits, h = ours(hidden, ids, embed, head, rope=rope, offset=shift)
            torch.testing.assert_close(ours.shared_head.norm(h), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits, head(expected), atol=1e-5, rtol=1e-5)


def test_concatenation_is_the_embedding_first():
    """The released weights' order (and Hugging Face's default): a module reading [hidden; embedding] differs."""
    hf_config, theirs, ours = _hf_layer_and_ours(CONFIG, seed=5)
    embed = torch.nn.Embedding(CONFIG.vocab_size, CONFIG.d_model)
    hidden = _randn(3, 2, 6, CONFIG.d_model, dtype=torch.float32)
    ids = torch.randint(CONFIG.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(6)[None].expand(2, 6)
    rotary = LlamaRotaryEmbedding(hf_config)
    with torch.no_grad():
        default = theirs(embed(ids), hidden, rotary(hidden, positions), None, positions, None)
        hf_config.mtp_hidden_states_first = True
        swapped = theirs(embed(ids), hidden, rotary(hidden, positions), None, positions, None)
        _, h = ours(hidden, ids, embed, torch.nn.Identity(), rope=llama.LlamaModel(CONFIG).rotary_emb)
    torch.testing.assert_close(ours.shared_head.norm(h), default, atol=1e-5, rtol=1e-5)
    assert (swapped - default).abs().max() > 1e-2


def test_state_dict_names_are_the_checkpoints():
    names = set(mtp.MTPModule(8, torch.nn.Identity()).state_dict())
    assert names == {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"}
    assert mtp.MTPModule(8, torch.nn.Identity()).eh_proj.weight.shape == (8, 16)


def test_loss_equals_cross_entropy_per_depth_and_v3_weights():
    targets = torch.randint(11, (3, 9), generator=torch.Generator().manual_seed(0))
    depths = [_randn(10 + k, 3, 9 - k, 11) for k in (1, 2, 3)]
    expected = sum(F.cross_entropy(d.flatten(0, 1), targets[:, k:].flatten()) for k, d in enumerate(depths, 1)) / 3
    for weight in mtp.V3_MTP_WEIGHTS.values():
        torch.testing.assert_close(mtp.mtp_loss(depths, targets, weight), weight * expected, atol=1e-12, rtol=1e-12)
    assert mtp.V3_MTP_WEIGHTS == {"first 10T tokens": 0.3, "remaining 4.8T tokens": 0.1}  # arXiv:2412.19437 §4.2
    assert mtp.V3_MTP_DEPTH == 1  # README_WEIGHTS.md: num_nextn_predict_layers = 1


def test_mtp_llama_shapes_shared_head_and_plain_trunk():
    torch.manual_seed(3)
    model = mtp.MTPLlama(CONFIG, depth=2)
    torch.manual_seed(3)
    plain = llama.Llama(CONFIG)
    for name, value in plain.state_dict().items():  # the trunk is built first: the same initial weights
        assert torch.equal(model.trunk.state_dict()[name], value), name
    ids = torch.randint(CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    logits, per_depth = model(ids)
    assert logits.shape == (2, 9, CONFIG.vocab_size)
    assert [d.shape for d in per_depth] == [(2, 8, CONFIG.vocab_size), (2, 7, CONFIG.vocab_size)]
    torch.testing.assert_close(logits, plain(ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match="too short"):
        model(ids[:, :2])
    with pytest.raises(ValueError, match="depth"):
        mtp.MTPLlama(CONFIG, depth=0)


@pytest.mark.parametrize("prompt", [1, 5, 11])
def test_speculation_equals_greedy_with_and_without_the_cache(prompt):
    torch.manual_seed(prompt)
    model = mtp.MTPLlama(dataclasses.replace(CONFIG, vocab_size=5), depth=1).eval()  # few tokens: drafts accepted
    ids = torch.randint(5, (1, prompt), generator=torch.Generator().manual_seed(prompt))
    new = CONFIG.context_length - prompt
    tokens, stats = mtp.speculative_generate(model.trunk, model.mtp[0], ids, new)
    assert torch.equal(tokens, model.trunk.generate(ids, new, use_cache=True, temperature=0))
    assert torch.equal(tokens, model.trunk.generate(ids, new, use_cache=False, temperature=0))
    assert stats["accepted"] > 0 and stats["forwards"] == new - stats["accepted"]  # each acceptance saves a pass
    assert stats["drafted"] == stats["forwards"] - 1


def test_weightless_training_leaves_the_modules_alone_and_main_runs(capsys):
    config = dataclasses.replace(CONFIG, context_length=8)
    ids = torch.randint(CONFIG.vocab_size, (400,), generator=torch.Generator().manual_seed(0))
    runs = mtp.compare_training(config, ids[:300], ids[300:], steps=3, weight=0.3)
    untouched, trained = runs["without MTP"]["model"], runs["with MTP"]["model"]
    torch.manual_seed(0)
    fresh = mtp.MTPLlama(config)
    assert torch.equal(untouched.mtp.state_dict()["0.eh_proj.weight"], fresh.mtp.state_dict()["0.eh_proj.weight"])
    assert not torch.equal(trained.mtp.state_dict()["0.eh_proj.weight"], fresh.mtp.state_dict()["0.eh_proj.weight"])
    assert all(value == 0 for value in runs["without MTP"]["history"]["mtp"])
    assert len(runs["with MTP"]["held_out"]) == 2
    mtp.main(["--steps", "2", "--d-model", "16", "--n-heads", "2", "--d-ff", "24", "--n-layers", "1"])
    assert "main head" in capsys.readouterr().out
