"""DeepSeek's configuration and parameter counts against the published figures and Hugging Face's model."""

from course_lib.deepseek import DeepSeek, DeepSeekConfig, count_parameters, parameter_breakdown
from course_lib.yarn import YaRN

import pytest
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM


def hf_parameters(config: DeepSeekConfig) -> int:
    # Built on the meta device: shapes without memory, so even V3's 671B count costs nothing.
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(DeepseekV3Config(**config.hf_kwargs()))
    return sum(p.numel() for p in model.parameters())


def test_v3_matches_the_published_counts():
    v3 = DeepSeekConfig.v3()
    # Hugging Face's DeepseekV3ForCausalLM with V3's config (its defaults are V3's released config.json).
    assert count_parameters(v3) == 671_026_404_352 == hf_parameters(v3)
    # The V3 report's abstract: "671B total parameters with 37B activated for each token".
    assert round(count_parameters(v3) / 1e9) == 671
    assert count_parameters(v3, active=True) == 37_552_282_624
    assert int(count_parameters(v3, active=True) / 1e9) == 37


def test_v3_shapes_are_the_reports():
    v3 = DeepSeekConfig.v3()
    assert (v3.n_layers, v3.d_model, v3.n_heads, v3.vocab_size) == (61, 7168, 128, 129280)
    assert (v3.q_lora_rank, v3.kv_lora_rank, v3.qk_nope_head_dim, v3.qk_rope_head_dim, v3.v_head_dim) == (
        1536,
        512,
        128,
        64,
        128,
    )
    assert (v3.n_routed_experts, v3.n_shared_experts, v3.n_activated_experts, v3.moe_d_ff) == (256, 1, 8, 2048)
    assert (v3.n_groups, v3.n_limited_groups, v3.route_scale, v3.n_dense_layers, v3.d_ff) == (8, 4, 2.5, 3, 18432)
    assert v3.qk_head_dim == 192 and v3.n_moe_layers == 58 and v3.n_mtp_layers == 1
    # The default DeepseekV3Config is V3's released configuration without its context extension: the same fields.
    assert DeepSeekConfig.from_hf(DeepseekV3Config().to_dict()) == v3.replace(context_length=4096, yarn=None)
    # The released config.json (deepseek-ai/DeepSeek-V3) stretches 4,096 positions 40 times with YaRN.
    released = {
        **DeepseekV3Config().to_dict(),
        "max_position_embeddings": 163840,
        "rope_theta": 10000,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
    }
    released.pop("rope_parameters", None)
    assert DeepSeekConfig.from_hf(released) == v3
    assert v3.context_length == v3.yarn.factor * v3.yarn.original_context
    assert round(v3.yarn.softmax_factor, 4) == 1.8739 and v3.yarn.table_factor == 1.0


def test_v2_matches_its_report():
    # V2 report abstract: "236B total parameters, of which 21B are activated for each token".
    v2 = DeepSeekConfig.v2()
    assert round(count_parameters(v2) / 1e9) == 236
    assert round(count_parameters(v2, active=True) / 1e9) == 21
    with pytest.raises(ValueError, match="sigmoid"):
        v2.hf_kwargs()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"q_lora_rank": None, "n_shared_experts": 2, "n_dense_layers": 0},
        {"n_layers": 2, "n_dense_layers": 2, "n_shared_experts": 0, "d_model": 40, "n_heads": 5},
    ],
)
def test_counts_equal_hugging_faces_module(overrides):
    config = DeepSeekConfig.tiny(**overrides)
    assert count_parameters(config) == hf_parameters(config)


def test_mtp_modules_and_active_counts():
    config = DeepSeekConfig.tiny()
    parts = parameter_breakdown(config)
    moe_block = parts["attention"] + parts["block_norms"] + 12 * parts["expert"] + parts["shared_experts"]
    moe_block += parts["router"]
    assert count_parameters(config, mtp=True) - count_parameters(config) == parts["mtp_extra"] + moe_block
    inactive = config.n_moe_layers * (12 - 3) * parts["expert"]
    assert count_parameters(config) - count_parameters(config, active=True) == inactive
    # MTP's extra parameters: two RMSNorms, the 2d -> d projection, the norm before the head.
    assert parts["mtp_extra"] == 48 + 48 + 96 * 48 + 48


@pytest.mark.parametrize("yarn", [None, YaRN(factor=4.0, original_context=16, mscale=1.0, mscale_all_dim=0.5)])
def test_hugging_face_round_trip(yarn):
    config = DeepSeekConfig.tiny(rope_base=500000.0, n_mtp_layers=2, yarn=yarn)
    hf = DeepseekV3Config(**config.hf_kwargs())
    assert DeepSeekConfig.from_hf(hf.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_activated_experts": 13}, "cannot exceed"),
        ({"n_groups": 5}, "must divide"),
        ({"n_limited_groups": 1, "n_activated_experts": 4}, "cannot supply"),
        ({"kv_lora_rank": 48}, "smaller than d_model"),
        ({"q_lora_rank": 60}, "smaller than d_model"),
        ({"qk_rope_head_dim": 7}, "even"),
        ({"n_dense_layers": 4}, "cannot exceed n_layers"),
        ({"score_func": "relu"}, "sigmoid"),
        ({"d_model": 48.0}, "positive int"),
        ({"n_shared_experts": -1}, ">= 0"),
        ({"norm_topk_prob": 1}, "True or False"),
    ],
)
def test_bad_configs_are_refused_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        DeepSeekConfig.tiny(**overrides)


def test_from_hf_refuses_what_the_course_does_not_implement():
    hf = DeepseekV3Config(**DeepSeekConfig.tiny().hf_kwargs()).to_dict()
    with pytest.raises(ValueError, match="'linear' is not implemented"):
        DeepSeekConfig.from_hf({**hf, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}})
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4, "original_max_position_embeddings": 16}
    with pytest.raises(ValueError, match="attention_factor is not implemented"):
        DeepSeekConfig.from_hf({**hf, "rope_parameters": {**yarn, "attention_factor": 1.2}})
    with pytest.raises(ValueError, match="truncate: false"):
        DeepSeekConfig.from_hf({**hf, "rope_parameters": {**yarn, "truncate": False}})
    with pytest.raises(ValueError, match="needs original_max_position_embeddings"):
        DeepSeekConfig.from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match=r"yarn must be a course_lib\.yarn\.YaRN or None, got dict"):
        DeepSeekConfig.tiny(yarn={"factor": 4.0})
    with pytest.raises(ValueError, match="biases"):
        DeepSeekConfig.from_hf({**hf, "attention_bias": True})
    with pytest.raises(ValueError, match="dict"):
        DeepSeekConfig.from_hf("config.json")


# ---- the full model against Hugging Face's DeepseekV3ForCausalLM ------------------------------------

FULL_MODEL_SHAPES = [
    {},  # one dense layer, two MoE layers, compressed queries
    {"q_lora_rank": None, "n_shared_experts": 2, "n_dense_layers": 0, "rope_base": 500000.0},
    {"n_shared_experts": 0, "n_groups": 1, "n_limited_groups": 1, "n_activated_experts": 5, "d_model": 40},
    {"yarn": YaRN(factor=4.0, original_context=16, mscale=1.0, mscale_all_dim=1.0)},  # V3's context extension
]


def hugging_face_model(config: DeepSeekConfig, seed: int = 0):
    torch.manual_seed(seed)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**config.hf_kwargs(), attn_implementation="eager")).eval()
    with torch.no_grad():  # a routing bias that changes which experts win, as a trained one does
        for name, buffer in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.1)
    return hf


@pytest.mark.parametrize("overrides", FULL_MODEL_SHAPES)
def test_full_model_equals_hugging_faces(overrides):
    config = DeepSeekConfig.tiny(**overrides)
    hf = hugging_face_model(config)
    model = DeepSeek(config).eval()
    assert sum(p.numel() for p in model.parameters()) == count_parameters(config, mtp=True)
    model.load_hf_state_dict(hf.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(model(ids), expected, rtol=0, atol=1e-5)
        # Prefill then one token at a time over the absorbed latent cache: the same logits.
        cache = model.new_cache(batch=2, max_seq_len=19)
        steps = [model(ids[:, :11], cache, 0)] + [model(ids[:, t : t + 1], cache, t) for t in range(11, 19)]
        torch.testing.assert_close(torch.cat(steps, dim=1), expected, rtol=0, atol=1e-5)


def test_from_pretrained_reads_a_hugging_face_checkpoint(tmp_path):
    config = DeepSeekConfig.tiny(n_mtp_layers=0)
    hf = hugging_face_model(config, seed=3)
    hf.save_pretrained(tmp_path)
    model = DeepSeek.from_pretrained(tmp_path).eval()
    assert model.config == config
    ids = torch.randint(0, config.vocab_size, (1, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-5)


def test_mtp_depths_and_bad_input():
    config = DeepSeekConfig.tiny(n_mtp_layers=2)
    model = DeepSeek(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, per_depth = model.forward_with_mtp(ids)
    assert logits.shape == (2, 9, 101) and [tuple(x.shape) for x in per_depth] == [(2, 8, 101), (2, 7, 101)]
    with pytest.raises(ValueError, match="too few"):
        model.forward_with_mtp(ids[:, :2])
    with pytest.raises(ValueError, match="int64"):
        model(ids.float())
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 65, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"config\.json"):
        DeepSeek.from_pretrained("/nonexistent")


def test_from_pretrained_reads_deepseeks_fp8_layout_with_its_mtp_module(tmp_path):
    """DeepSeek's own release: FP8 weights with block scales, and the MTP module stored as layer n_layers with
    copies of the embedding and head (README_WEIGHTS.md). Loading dequantizes it exactly."""
    from course_lib.fp8 import dequantize_state_dict, quantize_state_dict

    from safetensors.torch import save_file

    config = DeepSeekConfig.tiny()
    torch.manual_seed(5)
    source = DeepSeek(config).eval()
    state = {}
    for name, tensor in source.state_dict().items():
        if name.startswith("mtp.0."):
            rest = name[len("mtp.0.") :].removeprefix("block.")
            name = f"model.layers.{config.n_layers}.{rest}"
        state[name] = tensor
    state[f"model.layers.{config.n_layers}.embed_tokens.weight"] = state["model.embed_tokens.weight"]
    state[f"model.layers.{config.n_layers}.shared_head.head.weight"] = state["lm_head.weight"]
    quantized = quantize_state_dict(state, block_size=16)
    assert quantized["model.layers.0.self_attn.kv_b_proj.weight"].dtype == torch.float8_e4m3fn
    save_file({k: v.clone().contiguous() for k, v in quantized.items()}, tmp_path / "model.safetensors")
    hf = {**config.hf_kwargs(), "quantization_config": {"fmt": "e4m3", "weight_block_size": [16, 16]}}
    (tmp_path / "config.json").write_text(__import__("json").dumps(hf))

    loaded = DeepSeek.from_pretrained(tmp_path).eval()
    # The reference: the source model holding the dequantized weights.
    expected = DeepSeek(config).eval()
    dequantized = dequantize_state_dict(quantize_state_dict(source.state_dict(), block_size=16), block_size=16)
    expected.load_state_dict(dequantized)
    ids = torch.randint(0, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got_logits, got_mtp = loaded.forward_with_mtp(ids)
        want_logits, want_mtp = expected.forward_with_mtp(ids)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_mtp[0], want_mtp[0], rtol=0, atol=1e-6)


# -- Chapter 14: generation and the training step -----------------------------------------------------


def test_generate_is_uncached_greedy_decoding_and_keeps_the_mode():
    config = DeepSeekConfig.tiny(context_length=20)
    torch.manual_seed(0)
    model = DeepSeek(config).train()
    ids = torch.randint(0, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    expected = ids
    with torch.no_grad():
        for _ in range(9):
            expected = torch.cat([expected, model.eval()(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    model.train()
    torch.testing.assert_close(model.generate(ids, 9), expected, rtol=0, atol=0)
    assert model.training
    # 20 positions at most: 15 new tokens, not 30; and a seeded draw is reproducible.
    assert model.generate(ids, 30).shape == (2, 20)
    assert torch.equal(model.generate(ids, 6, 1.0, seed=3), model.generate(ids, 6, 1.0, seed=3))


def _losses_by_hand(model, ids, weight):
    import torch.nn.functional as F

    with torch.no_grad():
        logits, per_depth = model(ids[:, :-1], mtp=True)
        targets = ids[:, 1:]
        main = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        depths = [F.cross_entropy(x.flatten(0, 1), targets[:, k:].flatten()) for k, x in enumerate(per_depth, 1)]
        mtp = sum(depths) / len(depths)
    return float(main + weight * mtp), float(main), float(mtp)


def test_train_step_is_main_plus_lambda_mtp_and_its_losses_fall():
    from course_lib.deepseek import train_step

    config = DeepSeekConfig.tiny(n_mtp_layers=2)
    torch.manual_seed(0)
    model = DeepSeek(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(2))
    first = train_step(model, optimizer, ids, mtp_weight=0.3)
    model.train()
    assert set(first) == {"loss", "main", "mtp"} and all(type(v) is float for v in first.values())
    for _ in range(8):
        expected = _losses_by_hand(model, ids, 0.3)
        got = train_step(model, optimizer, ids, mtp_weight=0.3)
        assert [got["loss"], got["main"], got["mtp"]] == pytest.approx(expected, rel=1e-5)
    assert got["main"] < first["main"] - 0.5 and got["mtp"] < first["mtp"] - 0.5


def test_the_bias_moves_by_the_rate_from_the_steps_load_and_reduce_load():
    from course_lib.deepseek import train_step
    from course_lib.moe import moe_layers

    config = DeepSeekConfig.tiny()
    torch.manual_seed(1)
    model = DeepSeek(config).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(3))
    layers = moe_layers(model)
    assert len(layers) == config.n_moe_layers + config.n_mtp_layers  # the MTP module's MoE is balanced too
    before = [layer.gate.e_score_correction_bias.clone() for layer in layers]
    train_step(model, optimizer, ids, bias_rate=0.25)
    for layer, old in zip(layers, before):
        load = layer.last_load.double()
        expected = old + 0.25 * torch.sign(load.mean() - load).float()
        assert torch.equal(layer.gate.e_score_correction_bias, expected)
        assert not layer.gate.e_score_correction_bias.requires_grad
    # reduce_load replaces each load (here: expert i received i tokens), on a copy of last_load.
    seen = []

    def reduce_load(load):
        seen.append(load)
        load.zero_()
        return load + torch.arange(load.numel())

    before = [layer.gate.e_score_correction_bias.clone() for layer in layers]
    train_step(model, optimizer, ids, bias_rate=0.5, reduce_load=reduce_load)
    assert len(seen) == len(layers) and all(int(layer.last_load.sum()) > 0 for layer in layers)
    n = config.n_routed_experts
    step = 0.5 * torch.sign((n - 1) / 2 - torch.arange(n, dtype=torch.float64)).float()
    for layer, old in zip(layers, before):
        assert torch.equal(layer.gate.e_score_correction_bias, old + step)


def test_train_step_calls_the_wrapper_not_its_module():
    """DistributedDataParallel synchronises gradients only through its own forward: train_step must call it."""
    from course_lib.deepseek import train_step

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    config = DeepSeekConfig.tiny()
    wrapper = Wrapper(DeepSeek(config).train())
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=0.1)
    ids = torch.randint(0, config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    train_step(wrapper, optimizer, ids)
    assert wrapper.calls == 1
    with pytest.raises(ValueError, match="mtp_weight"):
        train_step(wrapper, optimizer, ids, mtp_weight=-1)
    with pytest.raises(ValueError, match="ids"):
        train_step(wrapper, optimizer, ids[:, :1])
