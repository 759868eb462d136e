"""Part III's model — DeepSeek: its configuration, and its size counted from the configuration alone.

DeepSeek-V2 [DeepSeek-AI, 2024, arXiv:2405.04434] and DeepSeek-V3 [DeepSeek-AI, 2024,
arXiv:2412.19437] keep Llama's shape (Part II: RMSNorm, pre-norm blocks, SwiGLU, RoPE) and change two
things inside every block:

    h   = x + MLA(RMSNorm_1(x))       # Multi-head Latent Attention: a compressed cache (Chapter 10)
    out = h + MoE(RMSNorm_2(h))       # a Mixture of Experts instead of one feed-forward (Chapter 11)

The first ``n_dense_layers`` blocks keep a dense SwiGLU; V3 adds Multi-token Prediction modules
(Chapter 12) and trains in FP8 (Chapter 13). This module holds the one description of those sizes
that every chapter of Part III reads: :class:`DeepSeekConfig`, with V2's and V3's published
configurations, and :func:`count_parameters`, the parameter count by formula (total, active per
token, with or without the MTP modules) — V3's 671B and 37B, V2's 236B and 21B.

Below them, the model itself (:class:`DeepSeekBlock`, :class:`DeepSeekModel`, :class:`DeepSeek`) and its training
step, the capstone of Chapter 14. Exercises in this module: 14.1 :meth:`DeepSeekBlock.forward`, 14.2
:meth:`DeepSeek.forward`, 14.3 :func:`train_step`, 14.4 :meth:`DeepSeek.generate`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .yarn import YaRN

#: The fields of Hugging Face's ``DeepseekV3Config`` (and of DeepSeek's ``config.json`` files) that
#: each :class:`DeepSeekConfig` field corresponds to.
HF_NAMES = {
    "vocab_size": "vocab_size",
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "d_ff": "intermediate_size",
    "context_length": "max_position_embeddings",
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "n_activated_experts": "num_experts_per_tok",
    "moe_d_ff": "moe_intermediate_size",
    "n_groups": "n_group",
    "n_limited_groups": "topk_group",
    "route_scale": "routed_scaling_factor",
    "norm_topk_prob": "norm_topk_prob",
    "n_dense_layers": "first_k_dense_replace",
    "n_mtp_layers": "num_nextn_predict_layers",
    "norm_eps": "rms_norm_eps",
    "rope_interleaved": "rope_interleave",
}


def _is_positive_int(value) -> bool:
    return type(value) is int and value > 0


def _is_positive_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class DeepSeekConfig:
    """The sizes of a DeepSeek-V2/V3-style model (frozen: derive variants with :meth:`replace`).

    Attributes:
        vocab_size: the number of token ids (V3: 129,280).
        d_model: the width of every token vector (``hidden_size``; V3: 7,168).
        n_layers: the number of blocks in the main model, MTP modules not included (V3: 61).
        n_heads: attention heads (V3: 128).
        d_ff: the hidden width of the dense SwiGLU of the first ``n_dense_layers`` blocks (V3: 18,432).
        context_length: the most positions the model reads (``max_position_embeddings``); the RoPE
            tables and a cache cover this many.
        q_lora_rank: the width of the compressed query (V3: 1,536); ``None`` projects queries
            directly, without compression (as DeepSeek-V2-Lite does).
        kv_lora_rank: the width of the latent that keys and values are compressed into (V3: 512).
        qk_nope_head_dim: per head, the query/key features without RoPE (V3: 128).
        qk_rope_head_dim: per head, the query/key features RoPE rotates; the RoPE key is shared by all
            heads (V3: 64). Must be even.
        v_head_dim: per head, the value features (V3: 128).
        n_routed_experts: routed experts per MoE layer (V3: 256).
        n_shared_experts: experts every token goes through (V3: 1).
        n_activated_experts: routed experts each token is sent to, top-k (V3: 8).
        moe_d_ff: the hidden width of one expert's SwiGLU (V3: 2,048).
        n_groups: the routed experts are split into this many equal groups (V3: 8).
        n_limited_groups: a token's experts come from at most this many groups (V3: 4).
        route_scale: the factor the routed experts' gates are multiplied by (V3: 2.5).
        score_func: ``"sigmoid"`` (V3's affinities) or ``"softmax"`` (V2's).
        norm_topk_prob: whether the selected gates are renormalised to sum to one (V3: yes).
        n_dense_layers: the first blocks keep a dense SwiGLU (V3: 3).
        n_mtp_layers: Multi-token Prediction modules (V3: 1; V2: 0).
        rope_base: the base of RoPE's frequencies (``rope_theta``: 10,000).
        norm_eps: the RMSNorms' ``eps`` (1e-6).
        rope_interleaved: whether RoPE rotates adjacent pairs (DeepSeek's layout, Chapter 7) rather
            than the two halves.
        yarn: a :class:`~course_lib.yarn.YaRN` when the context is stretched beyond pre-training (V3: 40 times
            4,096 positions; Chapter 15), else ``None`` (plain RoPE).

    Raises:
        ValueError: for a size that is not a positive ``int``; a rank not smaller than ``d_model``
            (a "compression" that does not compress); an odd ``qk_rope_head_dim``; top-k larger than
            the routed experts; groups that do not divide the routed experts; kept groups that
            cannot supply top-k experts; more dense layers than layers; an unknown ``score_func``; a
            ``yarn`` that is not a ``YaRN`` or ``None``.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    context_length: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    n_activated_experts: int
    moe_d_ff: int
    n_groups: int = 1
    n_limited_groups: int = 1
    route_scale: float = 1.0
    score_func: str = "sigmoid"
    norm_topk_prob: bool = True
    n_dense_layers: int = 1
    n_mtp_layers: int = 1
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    rope_interleaved: bool = True
    yarn: YaRN | None = None

    def __post_init__(self):
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "d_ff",
            "context_length",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "n_routed_experts",
            "n_activated_experts",
            "moe_d_ff",
            "n_groups",
            "n_limited_groups",
        ):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("n_shared_experts", "n_dense_layers", "n_mtp_layers"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.q_lora_rank is not None and not _is_positive_int(self.q_lora_rank):
            raise ValueError(f"q_lora_rank must be None or a positive int, got {self.q_lora_rank!r}")
        for name in ("q_lora_rank", "kv_lora_rank"):
            rank = getattr(self, name)
            if rank is not None and rank >= self.d_model:
                raise ValueError(
                    f"{name} ({rank}) must be smaller than d_model ({self.d_model}): "
                    "a low-rank projection that is not narrower than its input compresses nothing"
                )
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        if self.n_activated_experts > self.n_routed_experts:
            raise ValueError(
                f"n_activated_experts (top-k = {self.n_activated_experts}) cannot exceed "
                f"n_routed_experts ({self.n_routed_experts})"
            )
        if self.n_routed_experts % self.n_groups:
            raise ValueError(
                f"n_groups ({self.n_groups}) must divide n_routed_experts ({self.n_routed_experts}): "
                "the experts are split into equal groups"
            )
        if self.n_limited_groups > self.n_groups:
            raise ValueError(f"n_limited_groups ({self.n_limited_groups}) cannot exceed n_groups ({self.n_groups})")
        if self.n_limited_groups * self.experts_per_group < self.n_activated_experts:
            raise ValueError(
                f"{self.n_limited_groups} kept groups of {self.experts_per_group} experts cannot supply "
                f"top-k = {self.n_activated_experts} experts"
            )
        if self.n_dense_layers > self.n_layers:
            raise ValueError(f"n_dense_layers ({self.n_dense_layers}) cannot exceed n_layers ({self.n_layers})")
        if self.score_func not in ("sigmoid", "softmax"):
            raise ValueError(f"score_func must be 'sigmoid' or 'softmax', got {self.score_func!r}")
        if not _is_positive_number(self.route_scale):
            raise ValueError(f"route_scale must be a positive number, got {self.route_scale!r}")
        if not (_is_positive_number(self.rope_base) and self.rope_base > 1):
            raise ValueError(f"rope_base must be a finite number above 1, got {self.rope_base!r}")
        if not _is_positive_number(self.norm_eps):
            raise ValueError(f"norm_eps must be a positive number, got {self.norm_eps!r}")
        for name in ("norm_topk_prob", "rope_interleaved"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.yarn is not None and not isinstance(self.yarn, YaRN):
            raise ValueError(f"yarn must be a course_lib.yarn.YaRN or None, got {type(self.yarn).__name__}")

    # ---- derived sizes ---------------------------------------------------------------

    @property
    def qk_head_dim(self) -> int:
        """The width of one head's query and key: the part without RoPE plus the rotated part (V3: 192)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        """Blocks whose feed-forward is a Mixture of Experts (V3: 58)."""
        return self.n_layers - self.n_dense_layers

    @property
    def experts_per_group(self) -> int:
        return self.n_routed_experts // self.n_groups

    def replace(self, **changes) -> DeepSeekConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ---- published models and small ones ---------------------------------------------

    @classmethod
    def v3(cls, **overrides) -> DeepSeekConfig:
        """DeepSeek-V3 (671B): the V3 report's §4.2 hyper-parameters and its released ``config.json``
        (the defaults of Hugging Face's ``DeepseekV3Config``). ``context_length`` is the released
        163,840 positions: 4,096 in pre-training, stretched 40 times with YaRN (its ``rope_scaling``,
        §4.3 of the report; Chapter 15). Pass ``yarn=None`` for plain RoPE in a small variant."""
        fields = dict(
            vocab_size=129280,
            d_model=7168,
            n_layers=61,
            n_heads=128,
            d_ff=18432,
            context_length=163840,
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            n_routed_experts=256,
            n_shared_experts=1,
            n_activated_experts=8,
            moe_d_ff=2048,
            n_groups=8,
            n_limited_groups=4,
            route_scale=2.5,
            score_func="sigmoid",
            norm_topk_prob=True,
            n_dense_layers=3,
            n_mtp_layers=1,
            yarn=YaRN(
                factor=40.0, original_context=4096, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0
            ),
        )
        return cls(**{**fields, **overrides})

    @classmethod
    def v2(cls, **overrides) -> DeepSeekConfig:
        """DeepSeek-V2 (236B): the V2 report's §3.1.2 hyper-parameters (60 layers, width 5,120, 128
        heads, d_c 512, d_c' 1,536, d_h^R 64; the first layer dense; 2 shared and 160 routed experts of
        width 1,536, 6 activated; device-limited routing to 3 of 8 groups) with its released
        ``config.json``'s vocabulary (102,400), dense width (12,288), softmax scores without
        renormalisation and route scale 16. V2 has no MTP module."""
        fields = dict(
            vocab_size=102400,
            d_model=5120,
            n_layers=60,
            n_heads=128,
            d_ff=12288,
            context_length=163840,
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            n_routed_experts=160,
            n_shared_experts=2,
            n_activated_experts=6,
            moe_d_ff=1536,
            n_groups=8,
            n_limited_groups=3,
            route_scale=16.0,
            score_func="softmax",
            norm_topk_prob=False,
            n_dense_layers=1,
            n_mtp_layers=0,
        )
        return cls(**{**fields, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> DeepSeekConfig:
        """A small model with V3's structure and odd sizes, for tests and notebooks: width 48, 3
        heads, ranks 24 (queries) and 16 (latent), head widths 10 + 6 (RoPE) and 12 (values), 12 routed
        experts in 4 groups of 3 (2 groups kept, top-3) plus 1 shared, expert width 20, one dense
        layer of width 72 then two MoE layers, vocabulary 101, 64 positions."""
        fields = dict(
            vocab_size=101,
            d_model=48,
            n_layers=3,
            n_heads=3,
            d_ff=72,
            context_length=64,
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_nope_head_dim=10,
            qk_rope_head_dim=6,
            v_head_dim=12,
            n_routed_experts=12,
            n_shared_experts=1,
            n_activated_experts=3,
            moe_d_ff=20,
            n_groups=4,
            n_limited_groups=2,
            route_scale=2.5,
            n_dense_layers=1,
            n_mtp_layers=1,
        )
        return cls(**{**fields, **overrides})

    # ---- Hugging Face ----------------------------------------------------------------

    def hf_kwargs(self) -> dict:
        """Keyword arguments for ``transformers.DeepseekV3Config`` describing the same model.

        Hugging Face's DeepSeek-V3 router is sigmoid-only, so a softmax configuration (V2's) has
        none; DeepSeek-V2 has its own ``deepseek_v2`` model there.
        """
        if self.score_func != "sigmoid":
            raise ValueError("Hugging Face's DeepseekV3Config routes with sigmoid scores; this config uses softmax")
        kwargs = {HF_NAMES[name]: value for name, value in asdict(self).items() if name in HF_NAMES}
        kwargs["num_key_value_heads"] = self.n_heads
        if self.yarn is None:
            kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(self.rope_base)}
        else:
            kwargs["rope_parameters"] = self.yarn.hf_parameters(self.rope_base)
        kwargs["hidden_act"] = "silu"
        kwargs["attention_bias"] = False
        kwargs["tie_word_embeddings"] = False
        return kwargs

    @classmethod
    def from_hf(cls, hf: dict) -> DeepSeekConfig:
        """The configuration a Hugging Face / DeepSeek ``config.json`` describes (a dict).

        A ``rope_scaling`` (or ``rope_parameters``) of type ``"yarn"`` becomes :attr:`yarn`. Raises
        ``ValueError`` for a feature the course's model does not implement: another RoPE scaling
        (linear, dynamic NTK, LongRoPE, Llama 3's), biases on the attention projections, or a scoring
        function other than sigmoid/softmax.
        """
        if not isinstance(hf, dict):
            raise ValueError(f"expected the config.json contents as a dict, got {type(hf).__name__}")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "yarn", None):
            raise ValueError(f"RoPE scaling {kind!r} is not implemented by the course (YaRN is)")
        if hf.get("attention_bias"):
            raise ValueError("attention projections with biases are not implemented by the course")
        fields = {}
        for name, hf_name in HF_NAMES.items():
            if hf_name in hf:
                fields[name] = hf[hf_name]
            elif hf_name == "num_nextn_predict_layers" and "num_mtp_layers" in hf:
                fields[name] = hf["num_mtp_layers"]
        missing = [HF_NAMES[name] for name in ("vocab_size", "d_model", "n_layers", "n_heads") if name not in fields]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        fields.setdefault("n_mtp_layers", 0)
        fields["rope_base"] = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
        fields["score_func"] = hf.get("scoring_func", "sigmoid")
        if kind == "yarn":
            fields["yarn"] = YaRN.from_hf(rope, context_length=hf.get("max_position_embeddings"))
        return cls(**fields)


# --------------------------------------------------------------------------------------
# Parameters, counted from the configuration
# --------------------------------------------------------------------------------------


def _linear(d_in: int, d_out: int) -> int:
    return d_in * d_out  # no biases anywhere in DeepSeek's projections


def _swiglu(d_model: int, d_ff: int) -> int:
    return 3 * d_model * d_ff  # gate, up and down projections


def parameter_breakdown(config: DeepSeekConfig) -> dict[str, int]:
    """The parameters of each kind of component, for one copy of it (Python ``int`` values).

    Keys: ``embedding`` (the token table, ``V d``), ``head`` (the untied output projection, ``V d``),
    ``final_norm``; per block ``attention`` (MLA's projections and its two RMSNorms),
    ``block_norms`` (the two RMSNorms around attention and feed-forward), ``dense_ffn`` (one dense
    SwiGLU), ``expert`` (one routed expert's SwiGLU), ``shared_experts`` (all shared experts of a
    layer), ``router`` (the gate's ``n_routed_experts × d`` matrix; its routing-bias buffer is not a
    parameter); per MTP module ``mtp_extra`` (its two RMSNorms, the ``2d → d`` projection and the norm
    before the shared head), its block being one MoE block.
    """
    if not isinstance(config, DeepSeekConfig):
        raise ValueError(f"config must be a DeepSeekConfig, got {type(config).__name__}")
    c = config
    d, heads = c.d_model, c.n_heads
    if c.q_lora_rank is None:
        query = _linear(d, heads * c.qk_head_dim)
    else:  # down-projection, its RMSNorm, up-projection
        query = _linear(d, c.q_lora_rank) + c.q_lora_rank + _linear(c.q_lora_rank, heads * c.qk_head_dim)
    key_value = (
        _linear(d, c.kv_lora_rank + c.qk_rope_head_dim)  # the latent and the shared RoPE key
        + c.kv_lora_rank  # the latent's RMSNorm
        + _linear(c.kv_lora_rank, heads * (c.qk_nope_head_dim + c.v_head_dim))
    )
    return {
        "embedding": c.vocab_size * d,
        "head": c.vocab_size * d,
        "final_norm": d,
        "attention": query + key_value + _linear(heads * c.v_head_dim, d),
        "block_norms": 2 * d,
        "dense_ffn": _swiglu(d, c.d_ff),
        "expert": _swiglu(d, c.moe_d_ff),
        "shared_experts": _swiglu(d, c.moe_d_ff * c.n_shared_experts) if c.n_shared_experts else 0,
        "router": c.n_routed_experts * d,
        "mtp_extra": 2 * d + _linear(2 * d, d) + d,
    }


def count_parameters(config: DeepSeekConfig, active: bool = False, mtp: bool = False) -> int:
    """The number of parameters of the model ``config`` describes, from the sizes alone (an ``int``).

    ``active=False`` counts every parameter, as Hugging Face's ``DeepseekV3ForCausalLM`` holds them
    (V3: 671,026,404,352 — the V3 report's "671B"); the routing-bias buffers are not parameters.
    ``active=True`` counts those one token's forward pass uses: every routed expert it is not sent
    to is left out, ``n_activated_experts`` of ``n_routed_experts`` remain (V3: 37,552,282,624, the
    report's "37B"; V2: 21.4B of 235.7B, its "21B" and "236B"). The embedding is counted in both,
    as the reports do. ``mtp=True`` adds the MTP modules (each an MoE block, two RMSNorms, a
    ``2d → d`` projection and a norm; the embedding and output head are the main model's, shared).
    """
    parts = parameter_breakdown(config)
    c = config
    experts = c.n_activated_experts if active else c.n_routed_experts
    moe = experts * parts["expert"] + parts["shared_experts"] + parts["router"]
    block = parts["attention"] + parts["block_norms"]
    total = (
        parts["embedding"]
        + parts["head"]
        + parts["final_norm"]
        + c.n_layers * block
        + c.n_dense_layers * parts["dense_ffn"]
        + c.n_moe_layers * moe
    )
    if mtp:
        total += c.n_mtp_layers * (parts["mtp_extra"] + block + moe)
    return total


# --------------------------------------------------------------------------------------
# The model: Chapters 10-12's modules in Llama's frame
# --------------------------------------------------------------------------------------

# Chapters 10-12's modules import DeepSeekConfig from this file, so they are imported as modules
# (bound now, their classes read when a model is built) rather than by name.
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from . import mla as _mla  # noqa: E402
from . import moe as _moe  # noqa: E402
from . import mtp as _mtp  # noqa: E402
from . import sampling as _sampling  # noqa: E402, F401 - generate samples with Chapter 5's next_token_probs
from .exercises import exercise  # noqa: E402
from .layers import RMSNorm, SwiGLU  # noqa: E402


class DeepSeekBlock(nn.Module):
    """One decoder layer: pre-norm MLA, then pre-norm feed-forward — a dense SwiGLU or an MoE.

    Hugging Face's ``DeepseekV3DecoderLayer`` names: ``input_layernorm``, ``self_attn`` (a
    :class:`~course_lib.mla.MultiHeadLatentAttention`), ``post_attention_layernorm`` and ``mlp`` (a
    :class:`~course_lib.layers.SwiGLU` of width ``d_ff`` when ``moe`` is false, else a
    :class:`~course_lib.moe.MoE`).
    """

    def __init__(self, config: DeepSeekConfig, moe: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = _mla.MultiHeadLatentAttention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = _moe.MoE(config) if moe else SwiGLU(config.d_model, config.d_ff)

    @exercise("14.1", "The decoder layer, dense or MoE", points=3)
    def forward(self, x: torch.Tensor, cache=None, layer: int = 0, offset: int = 0) -> torch.Tensor:
        """One decoder layer over ``x`` ``(batch, seq, d_model)`` at positions ``offset ... offset + seq - 1``.

        Two pre-norm residual steps, exactly as Hugging Face's ``DeepseekV3DecoderLayer``::

            h   = x + attention(input_layernorm(x))
            out = h + mlp(post_attention_layernorm(h))

        ``self.mlp`` is a dense SwiGLU or an MoE: the layer calls it the same way either way. The attention is
        chosen by ``cache``:

        - ``cache is None``: the naive MLA over the ``seq`` positions, causal, ``self.self_attn(normed, offset)``;
        - a :class:`~course_lib.mla.LatentCache`: the absorbed MLA, which appends this call's latents to layer
          ``layer`` of the cache and attends over every cached position,
          ``self.self_attn.forward_absorbed(normed, cache, offset, layer)``.

        ``x`` is not modified.

        Args:
            x: a floating-point tensor ``(batch, seq, d_model)`` in the dtype of the layer's weights.
            cache: ``None`` or a ``LatentCache``.
            layer: the index of this layer in the cache (an ``int``).
            offset: the position of ``x[:, 0]`` (an ``int >= 0``; with a cache, the number of positions it holds).

        Returns:
            A tensor of the shape and dtype of ``x``.
        """
        raise NotImplementedError


class DeepSeekModel(nn.Module):
    """The stack without the output head (Hugging Face's ``DeepseekV3Model``): ``embed_tokens``,
    ``layers`` (the first ``n_dense_layers`` dense, the rest MoE) and the final ``norm``."""

    def __init__(self, config: DeepSeekConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(
            DeepSeekBlock(config, moe=i >= config.n_dense_layers) for i in range(config.n_layers)
        )
        self.norm = RMSNorm(config.d_model, config.norm_eps)

    def forward(self, ids: torch.Tensor, cache=None, offset: int = 0) -> torch.Tensor:
        """The final hidden states ``(batch, seq, d_model)``, after the last norm."""
        x = self.embed_tokens(ids)  # (batch, seq, d_model)
        for i, block in enumerate(self.layers):
            x = block(x, cache, i, offset)
        return self.norm(x)


class DeepSeek(nn.Module):
    """A DeepSeek-V3-style language model: :class:`DeepSeekModel`, an untied ``lm_head``, and
    ``n_mtp_layers`` :class:`~course_lib.mtp.MTPModule` s (``mtp``), each with an MoE
    :class:`DeepSeekBlock`, sharing the model's embedding and head.

    The state dict uses Hugging Face's names (``model.embed_tokens``, ``model.layers.N.self_attn...``,
    ``model.layers.N.mlp.experts.E.gate_proj``, ``model.layers.N.mlp.gate.e_score_correction_bias``,
    ``model.norm``, ``lm_head``) plus ``mtp.K...`` for the MTP modules, which Hugging Face's model does
    not hold. Weights are initialised with standard deviation 0.02, as Hugging Face's
    ``initializer_range``; norms at one, routing biases at zero.
    """

    def __init__(self, config: DeepSeekConfig):
        super().__init__()
        if not isinstance(config, DeepSeekConfig):
            raise ValueError(f"config must be a DeepSeekConfig, got {type(config).__name__}")
        self.config = config
        self.model = DeepSeekModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.mtp = nn.ModuleList(
            _mtp.MTPModule(config.d_model, DeepSeekBlock(config, moe=config.n_routed_experts > 0), config.norm_eps)
            for _ in range(config.n_mtp_layers)
        )
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, _moe.Router)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @exercise("14.2", "The full forward, with the MTP depths", points=3)
    def forward(self, ids: torch.Tensor, cache=None, offset: int = 0, mtp: bool = False):
        """The language model's logits for token ids ``(batch, T)`` at positions ``offset ... offset + T - 1``.

        ``logits[b, i]`` scores every candidate for the token after ``ids[b, i]``: it is the untied ``self.lm_head``
        of the stack ``self.model``'s final hidden state (after its last norm) at that position, which has seen
        ``ids[b, :i + 1]`` and, with a ``cache``, every position the cache held before the call (the call appends
        this call's positions to it).

        With ``mtp=True`` (training) the MTP modules ``self.mtp`` run too (Chapter 12), in sequence, with the
        model's own ``self.model.embed_tokens`` and ``self.lm_head``: module ``k`` (``k = 1 ... D``) reads the first
        ``T - k`` representations of depth ``k - 1`` (the final hidden states for ``k = 1``; the previous module's
        block output after that) together with the tokens ``ids[:, k:]``, and gives the logits of depth ``k``,
        ``(batch, T - k, vocab_size)``, whose row ``i`` predicts the token ``k + 1`` places after position ``i``.

        Bad input is refused by ``self._check_ids(ids, cache, offset, mtp)`` (finished code), before any work:
        it raises every ``ValueError`` below.

        Args:
            ids: ``(batch, T)`` ``int64`` (or ``int32``) token ids below ``vocab_size``.
            cache: ``None`` or a :class:`~course_lib.mla.LatentCache` from :meth:`new_cache` (decoding).
            offset: the position of ``ids[:, 0]``; with a cache, the number of positions it already holds.
            mtp: whether to return the MTP depths' logits too (training; no cache then).

        Returns:
            ``logits`` ``(batch, T, vocab_size)``; with ``mtp=True`` the pair ``(logits, per_depth)``, where
            ``per_depth`` is the list of the depths' logits, depth 1 first (empty for a model without MTP modules).

        Raises:
            ValueError: (from ``_check_ids``) for ids that are not a 2-D integer tensor with at least one
                position, positions beyond ``context_length``, ``mtp=True`` with a cache or with ``T <= D``.
        """
        raise NotImplementedError

    def forward_with_mtp(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``self(ids, mtp=True)``: the main logits and each MTP depth's (see :meth:`forward`)."""
        return self(ids, mtp=True)

    @exercise("14.4", "Cached generation over the latent cache", points=3)
    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue ``ids`` by up to ``max_new_tokens`` tokens, reading and writing the absorbed latent cache.

        The work: one forward pass ``self(...)`` over the whole prompt into a new cache (``self.new_cache(batch)``),
        then one forward pass per new token but the last, each reading that token alone, ``(batch, 1)``, at its own
        position. So ``n`` new tokens cost ``n`` forward passes (none for ``n = 0``), and none reads a position twice.

        Each new token is chosen from the logits ``(batch, vocab)`` of the last position read. At
        ``temperature == 0``: greedily, ``argmax`` (the lowest id on a tie), ``top_k`` and ``top_p`` playing no
        part; the tokens are then those of uncached greedy decoding (the model called on the whole sequence for
        every new token). Above 0: drawn by ``torch.multinomial(probs, 1, generator=generator)`` from
        ``probs = course_lib.sampling.next_token_probs(logits, temperature, top_k, top_p)`` (Chapter 5), one call
        per new token for the whole batch, every draw of the call from one ``torch.Generator(device=ids.device)``
        seeded with ``seed`` (``seed=None``: PyTorch's global generator).

        The model runs in eval mode and records no gradient; when the call ends, also by an error,
        ``self.training`` is what it was before. Generation stops when the sequence reaches ``context_length``
        positions (the cache holds no more).

        Args:
            ids: ``(batch, T)`` ``int64`` prompt ids, ``1 <= T <= context_length``.
            max_new_tokens: an ``int >= 0`` (``bool`` refused).
            temperature: ``0`` for greedy decoding, or a positive finite number.
            top_k, top_p: as for ``next_token_probs``, used when sampling.
            seed: ``None`` or an ``int``.

        Returns:
            ``int64`` ``(batch, T + n)``: the prompt followed by ``n = min(max_new_tokens, context_length - T)``
            new tokens. ``ids`` is not modified.

        Raises:
            ValueError: for ids the model refuses (see :meth:`forward`), a ``max_new_tokens`` that is not an
                ``int >= 0``, or a temperature that is negative, not finite or not a number.
        """
        raise NotImplementedError

    def new_cache(self, batch: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None):
        """An empty :class:`~course_lib.mla.LatentCache` for every layer of the model."""
        dtype = self.lm_head.weight.dtype if dtype is None else dtype
        return _mla.LatentCache.for_config(
            self.config, batch, max_seq_len, dtype=dtype, device=self.lm_head.weight.device
        )

    def _check_ids(self, ids, cache=None, offset: int = 0, mtp: bool = False) -> None:
        """The input validation of :meth:`forward` (finished code): a clear ``ValueError`` for bad input."""
        integer = isinstance(ids, torch.Tensor) and ids.dtype in (torch.int32, torch.int64)
        if not integer or ids.ndim != 2:
            got = f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must be an int64 tensor of shape (batch, seq), got {got}")
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        if ids.shape[1] < 1 or offset + ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"positions {offset} to {offset + ids.shape[1] - 1} do not fit the context length "
                f"{self.config.context_length}"
            )
        if type(mtp) is not bool:
            raise ValueError(f"mtp must be True or False, got {mtp!r}")
        if mtp and cache is not None:
            raise ValueError("mtp=True is for training: it takes no cache")
        if mtp and len(self.mtp) >= ids.shape[1]:
            raise ValueError(f"{ids.shape[1]} tokens are too few for {len(self.mtp)} MTP depths")

    @torch.no_grad()
    def load_hf_state_dict(self, state: dict) -> None:
        """Load a Hugging Face ``DeepseekV3ForCausalLM`` state dict (experts stacked or one by one)."""
        own = self.state_dict()
        # Hugging Face builds zero-width shared experts for n_shared_experts = 0; the course builds none.
        state = {k: v for k, v in _moe.experts_from_hf(dict(state)).items() if v.numel() or k in own}
        # The main model only: Hugging Face's model has no MTP modules to copy.
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [name for name in missing if not name.startswith("mtp.")]
        if missing or unexpected:
            raise ValueError(f"state dict does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> DeepSeek:
        """A model read from a checkpoint directory (``config.json`` and ``*.safetensors``): one that
        Hugging Face's ``save_pretrained`` wrote, or DeepSeek's layout, where FP8 weights come with
        their ``weight_scale_inv`` (dequantized here, Chapter 13) and the MTP module ``k`` is stored as
        layer ``n_layers + k`` with copies of the embedding and head."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} holds no config.json")
        hf_config = json.loads((path / "config.json").read_text())
        config = DeepSeekConfig.from_hf(hf_config)
        # DeepSeek's FP8 release: "weight_block_size": [128, 128] (README_WEIGHTS.md)
        block = (hf_config.get("quantization_config") or {}).get("weight_block_size", [128, 128])
        if len(set(block)) != 1:
            raise ValueError(f"only square FP8 blocks are implemented, got weight_block_size {block}")
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{path} holds no .safetensors file")
        state = {}
        for file in files:
            state.update(load_file(file))
        from .fp8 import dequantize_state_dict

        state = _moe.experts_from_hf(dequantize_state_dict(state, block_size=block[0], dtype=dtype))
        renamed = {}
        for name, tensor in state.items():
            parts = name.split(".")
            if name.startswith("model.layers.") and int(parts[2]) >= config.n_layers:
                k = int(parts[2]) - config.n_layers
                rest = ".".join(parts[3:])
                if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                    continue  # copies of the shared embedding and head
                if not rest.startswith(("enorm", "hnorm", "eh_proj", "shared_head")):
                    rest = "block." + rest
                name = f"mtp.{k}.{rest}"
            renamed[name] = tensor
        model = cls(config).to(dtype)
        missing, unexpected = model.load_state_dict(renamed, strict=False)
        if not any(name.startswith("mtp.") for name in renamed):  # Hugging Face's checkpoints hold no MTP module
            missing = [name for name in missing if not name.startswith("mtp.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model


# --------------------------------------------------------------------------------------
# Training: one step of the whole recipe
# --------------------------------------------------------------------------------------


@exercise("14.3", "The training step: main loss, MTP loss, bias update", points=4)
def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    mtp_weight: float = 0.3,
    bias_rate: float | None = 1e-3,
    max_norm: float | None = 1.0,
    reduce_load=None,
) -> dict[str, float]:
    """One optimisation step of DeepSeek-V3's recipe on a batch of token windows ``ids`` ``(batch, T + 1)``.

    The inputs are ``ids[:, :-1]`` and the targets ``ids[:, 1:]`` (both ``(batch, T)``). The loss is
    ``loss = main + mtp_weight * mtp`` (V3 report, eq. 25: lambda = 0.3, then 0.1), from one forward pass
    ``model(inputs, mtp=True)``: ``main`` is the mean next-token cross-entropy of its logits against the targets,
    and ``mtp`` the mean over the ``D`` depths of their cross-entropies, ``course_lib.mtp.mtp_loss(per_depth,
    targets, 1.0)`` (depth ``k`` reads ``targets[:, k:]``), or ``0`` for a model without MTP modules.

    ``model`` is a :class:`DeepSeek` or a wrapper holding one as ``model.module`` (PyTorch's
    ``DistributedDataParallel``). The forward pass goes through ``model(...)``, never ``model.module(...)``: only
    the wrapper's forward makes the backward pass synchronise the gradients between processes.

    What the step changes, in this order:

    - the parameters take one step of ``optimizer`` on the gradient of ``loss`` alone (gradients left from
      before the call play no part), its global norm over all the model's parameters clipped to ``max_norm`` as
      ``torch.nn.utils.clip_grad_norm_`` clips it (``None``: no clipping);
    - then the auxiliary-loss-free balancing (V3 report §2.1.2, Chapter 11), outside autograd: every MoE layer of
      the model (the main stack's, then the MTP modules') has its routing bias ``gate.e_score_correction_bias``
      replaced, in place, by ``course_lib.moe.update_bias(bias, load, bias_rate)``. ``load`` is the layer's
      ``last_load`` from this step's forward pass, or ``reduce_load(load.clone())`` when ``reduce_load`` is given
      (distributed training passes an all-reduce sum, so that every process sees the global load).
      ``bias_rate=None`` leaves the biases as they are.

    Args:
        model: a ``DeepSeek`` (or a wrapper with ``.module``), in training mode.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        ids: ``(batch, T + 1)`` ``int64`` token ids, ``T`` larger than the number of MTP modules.
        mtp_weight: ``lambda``, a finite number ``>= 0``.
        bias_rate: ``gamma``, a positive finite number, or ``None``.
        max_norm: a positive finite number, or ``None``.
        reduce_load: ``None`` or a function from a load tensor to the load to use (it may modify its argument).

    Returns:
        ``{"loss": loss, "main": main, "mtp": mtp}`` as Python ``float`` s (the values before the step).

    Raises:
        ValueError: for ids the model refuses, ``ids`` with fewer than two positions, or a weight, rate or norm
            that is not a finite number in its range (``bool`` refused).
    """
    raise NotImplementedError
