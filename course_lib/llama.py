"""Part II's model — Llama: GPT-2's stack with Chapters 6–9's upgrades, and a loader for its checkpoints.

Llama [Touvron et al., 2023] keeps GPT-2's shape (embeddings, a stack of pre-norm blocks, a final
norm, a score per token) and changes four things in the block:

    h   = x + Attention(RMSNorm_1(x))      # RMSNorm (Chapter 6), RoPE on q and k (Chapter 7)
    out = h + SwiGLU(RMSNorm_2(h))         # a gated feed-forward of three matrices (Chapter 6)

No position table is added to the embeddings: positions enter the attention scores by rotating the
queries and keys. Llama 2 70B and Llama 3 share each key/value head among several query heads
(grouped-query attention, Chapter 9). The layers carry Hugging Face's names (``model.embed_tokens``,
``model.layers.N.self_attn.q_proj``, ..., ``lm_head``), so a Hugging Face checkpoint loads directly
with :meth:`Llama.from_pretrained`. With a :class:`~course_lib.kv_cache.KVCache`, the model
decodes one token at a time (Chapter 8).

Everything here is finished code: the exercises are the layers it is built from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache, cached_attention
from .layers import RMSNorm, SwiGLU
from .rope import RotaryEmbedding

#: The released models the presets describe, from each checkpoint's published ``config.json`` on the
#: Hugging Face Hub (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
#: ``num_key_value_heads``, ``intermediate_size``, ``vocab_size``, ``rope_theta``, ``rms_norm_eps``)
#: and the papers' context lengths: Llama 2 (Touvron et al., 2023, arXiv:2307.09288, Table 1: a 4k
#: context, grouped-query attention in 70B), Llama 3 (Dubey et al., 2024, arXiv:2407.21783, Table 3;
#: meta-llama/Meta-Llama-3-8B's ``max_position_embeddings`` 8192 and ``rope_theta`` 500000) and
#: Mistral 7B (Jiang et al., 2023, arXiv:2310.06825, Table 1: context_len 8192, 8 kv heads; its
#: sliding window of 4096 is not part of this configuration, see :mod:`course_lib.memory`).
#: Fields: d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab_size, context_length, rope_base.
PRESETS = {
    "Llama-2-7B": (4096, 32, 32, 32, 11008, 32000, 4096, 10000.0),
    "Llama-2-13B": (5120, 40, 40, 40, 13824, 32000, 4096, 10000.0),
    "Llama-2-70B": (8192, 80, 64, 8, 28672, 32000, 4096, 10000.0),
    "Llama-3-8B": (4096, 32, 32, 8, 14336, 128256, 8192, 500000.0),
    "Llama-3-70B": (8192, 80, 64, 8, 28672, 128256, 8192, 500000.0),
    "Mistral-7B": (4096, 32, 32, 8, 14336, 32000, 8192, 10000.0),
}

#: The parameter counts Meta and Hugging Face publish for these checkpoints (the sum of the tensors'
#: sizes in each release); :func:`count_parameters` reproduces them.
PUBLISHED_PARAMETERS = {
    "Llama-2-7B": 6_738_415_616,
    "Llama-2-13B": 13_015_864_320,
    "Llama-2-70B": 68_976_648_192,
    "Llama-3-8B": 8_030_261_248,
    "Llama-3-70B": 70_553_706_496,
}


def _is_positive_int(value) -> bool:
    return type(value) is int and value > 0


def _is_positive_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


@dataclass
class LlamaConfig:
    """The sizes of a Llama-style model.

    Attributes:
        vocab_size: the number of token ids (Llama 2: 32,000; Llama 3: 128,256).
        d_model: the width of every token vector (``hidden_size``).
        n_layers: the number of blocks.
        n_heads: query heads per block; must divide ``d_model``.
        d_ff: the hidden width of the SwiGLU feed-forward (``intermediate_size``; Chapter 6's
            ``llama_ffn_dim`` gives Meta's rule for it).
        context_length: the most positions the model reads (``max_position_embeddings``); the RoPE
            tables and a cache cover this many.
        n_kv_heads: key/value heads per block; ``None`` (the default) means ``n_heads`` (multi-head
            attention), 1 is multi-query attention, anything between that divides ``n_heads`` is
            grouped-query attention (Chapter 9). After construction it is always an ``int``.
        rope_base: the base of RoPE's frequencies (``rope_theta``: 10,000; Llama 3: 500,000).
        norm_eps: the RMSNorms' ``eps`` (``rms_norm_eps``; Llama 2 and 3: 1e-5).
        tie_embeddings: whether the output projection is the token table (GPT-2's tying); the
            Llama 2 and 3 models above do not tie, their smaller Llama 3.2 siblings do.

    The width of one head, ``head_dim = d_model // n_heads``, is a property; it must be even,
    since RoPE rotates features in pairs.

    Raises:
        ValueError: for a size that is not a positive ``int``, ``n_heads`` not dividing ``d_model``,
            ``n_kv_heads`` not dividing ``n_heads``, an odd ``head_dim``, a ``rope_base`` that is not a
            finite number above 1, a non-positive ``norm_eps`` or a ``tie_embeddings`` that is not a bool.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    context_length: int
    n_kv_heads: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "context_length"):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if not _is_positive_int(self.n_kv_heads):
            raise ValueError(f"n_kv_heads must be None or a positive int, got {self.n_kv_heads!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}): "
                "each key/value head serves the same number of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = d_model / n_heads = {self.head_dim} must be even: RoPE rotates features in pairs"
            )
        if not (_is_positive_number(self.rope_base) and self.rope_base > 1):
            raise ValueError(f"rope_base must be a finite number above 1, got {self.rope_base!r}")
        if not _is_positive_number(self.norm_eps):
            raise ValueError(f"norm_eps must be a positive number, got {self.norm_eps!r}")
        if type(self.tie_embeddings) is not bool:
            raise ValueError(f"tie_embeddings must be True or False, got {self.tie_embeddings!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> LlamaConfig:
        """The configuration of a released model named in :data:`PRESETS`; ``overrides`` replace fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(PRESETS)}")
        d, layers, heads, kv_heads, d_ff, vocab, context, base = PRESETS[name]
        fields = dict(
            vocab_size=vocab,
            d_model=d,
            n_layers=layers,
            n_heads=heads,
            n_kv_heads=kv_heads,
            d_ff=d_ff,
            context_length=context,
            rope_base=base,
        )
        return cls(**{**fields, **overrides})

    @classmethod
    def llama2(cls, size: str = "7B", **overrides) -> LlamaConfig:
        """Llama 2 ``"7B"``, ``"13B"`` or ``"70B"`` (Touvron et al., 2023)."""
        return cls._sized("Llama-2", size, ("7B", "13B", "70B"), overrides)

    @classmethod
    def llama3(cls, size: str = "8B", **overrides) -> LlamaConfig:
        """Llama 3 ``"8B"`` or ``"70B"`` (Dubey et al., 2024)."""
        return cls._sized("Llama-3", size, ("8B", "70B"), overrides)

    @classmethod
    def mistral(cls, size: str = "7B", **overrides) -> LlamaConfig:
        """Mistral ``"7B"`` (Jiang et al., 2023): Llama's architecture with 8 key/value heads. Its
        sliding-window attention is not modelled; within its 4,096-token window it computes the same."""
        return cls._sized("Mistral", size, ("7B",), overrides)

    @classmethod
    def _sized(cls, family: str, size: str, sizes: tuple[str, ...], overrides: dict) -> LlamaConfig:
        if size not in sizes:
            raise ValueError(f"unknown {family} size {size!r}; choose from {', '.join(sizes)}")
        return cls.preset(f"{family}-{size}", **overrides)


def count_parameters(config: LlamaConfig) -> int:
    """The exact number of parameters of ``Llama(config)``, from the sizes alone (a Python ``int``).

    Per block: the query and output projections ``2 d · H hd``, the key and value projections
    ``2 d · KV hd``, the SwiGLU's three matrices ``3 d d_ff`` and two RMSNorm scales ``2 d``; no
    biases anywhere. Around the blocks: the token table ``V d``, the final norm ``d`` and the
    output projection ``V d`` unless it is tied to the table.
    """
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"config must be a LlamaConfig, got {type(config).__name__}")
    c = config
    d, hd = c.d_model, c.head_dim
    attention = 2 * d * c.n_heads * hd + 2 * d * c.n_kv_heads * hd
    block = attention + 3 * d * c.d_ff + 2 * d
    output = 0 if c.tie_embeddings else c.vocab_size * d
    return c.vocab_size * d + c.n_layers * block + d + output


# --------------------------------------------------------------------------------------
# The layers
# --------------------------------------------------------------------------------------


class LlamaAttention(nn.Module):
    """Causal self-attention with rotary positions and ``n_kv_heads`` key/value heads.

    Attributes:
        q_proj: ``nn.Linear(d_model, n_heads * head_dim, bias=False)``.
        k_proj, v_proj: ``nn.Linear(d_model, n_kv_heads * head_dim, bias=False)`` each.
        o_proj: ``nn.Linear(n_heads * head_dim, d_model, bias=False)``.

    Query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``, as Hugging Face's
    ``repeat_kv`` and PyTorch's ``enable_gqa`` pair them.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}"

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        cache: KVCache | None = None,
        layer: int = 0,
        offset: int = 0,
    ) -> torch.Tensor:
        """Attend from the ``seq`` positions ``offset ... offset + seq - 1`` of ``x``, ``(batch, seq, d_model)``.

        Without a cache the positions see each other causally. With one, this call's keys and
        values are written into ``cache`` (layer ``layer``) after those of the earlier positions,
        and the queries attend to all of them.
        """
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, H, seq, hd)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (batch, KV, seq, hd)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, offset=offset), rope(k, offset=offset)  # positions are rotated in; v is not
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (batch, H, seq, hd)
        else:
            k, v = cache.update(layer, k, v, offset)  # every position so far: (batch, KV, offset + seq, hd)
            groups = self.n_heads // self.n_kv_heads
            if groups > 1:  # a copy per query head (Chapter 9 shows how to avoid it)
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            out = cached_attention(q, k, v)  # (batch, H, seq, hd)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))


class LlamaBlock(nn.Module):
    """One Llama block (Hugging Face's ``LlamaDecoderLayer``): two pre-norm residual sub-layers.

    Attributes:
        input_layernorm: ``RMSNorm(d_model, norm_eps)`` before attention.
        self_attn: :class:`LlamaAttention`.
        post_attention_layernorm: ``RMSNorm(d_model, norm_eps)`` before the feed-forward.
        mlp: ``SwiGLU(d_model, d_ff)`` (``gate_proj``, ``up_proj``, ``down_proj``).
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x, rope, cache=None, layer=0, offset=0):
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, layer, offset)  # (batch, seq, d_model)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """The stack without the output projection (Hugging Face's ``LlamaModel``).

    Attributes:
        embed_tokens: ``nn.Embedding(vocab_size, d_model)``.
        layers: ``n_layers`` :class:`LlamaBlock` s.
        norm: the final ``RMSNorm(d_model, norm_eps)``.
        rotary_emb: one ``RotaryEmbedding(head_dim, context_length, rope_base)`` shared by every
            layer (split halves, Hugging Face's convention); its tables are not in the state dict.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.rotary_emb = RotaryEmbedding(c.head_dim, c.context_length, base=float(c.rope_base))

    def forward(self, ids, cache=None, offset=0):
        x = self.embed_tokens(ids)  # (batch, seq, d_model): no position vector is added
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rotary_emb, cache, i, offset)
        return self.norm(x)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class Llama(nn.Module):
    """A Llama-style language model: ids ``(batch, seq)`` to next-token logits ``(batch, seq, vocab)``.

    Args:
        config: a :class:`LlamaConfig`.

    Attributes:
        config: the configuration.
        model: the :class:`LlamaModel` stack (``model.embed_tokens``, ``model.layers``, ``model.norm``).
        lm_head: ``nn.Linear(d_model, vocab_size, bias=False)``; with ``tie_embeddings`` its weight
            *is* ``model.embed_tokens.weight``.

    The state dict's names are Hugging Face's ``LlamaForCausalLM``'s. Initialisation follows
    Hugging Face's: every matrix and the token table from a normal distribution with standard
    deviation 0.02, the RMSNorm scales at one.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"config must be a LlamaConfig, got {type(config).__name__}")
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, offset: int = 0) -> torch.Tensor:
        """The logits of the tokens ``ids`` standing at positions ``offset ... offset + seq - 1``.

        Without a cache (the default), ``ids`` is the whole text so far and ``offset`` is 0. With a
        :class:`~course_lib.kv_cache.KVCache` (built by ``KVCache.for_model(model, batch)``), ``ids``
        holds only the tokens not yet seen: all of the prompt at first (*prefill*, ``offset=0``),
        then one new token at a time with ``offset`` the number of tokens before it. Each layer
        appends its keys and values to the cache and attends to everything stored there, so the
        logits are those of the full forward pass over the whole text.

        Raises:
            ValueError: if ``ids`` is not a 2-D integer tensor with at least one token, ``offset`` is
                not an ``int >= 0``, the positions run past the context length, or the cache does not
                fit the model (layers, heads, head width, batch or dtype).
        """
        if (
            not isinstance(ids, torch.Tensor)
            or ids.ndim != 2
            or ids.shape[1] < 1
            or ids.dtype.is_floating_point
            or ids.dtype.is_complex
            or ids.dtype == torch.bool
        ):
            raise ValueError(
                f"ids must be an integer tensor of shape (batch, seq) with seq >= 1, got {getattr(ids, 'shape', ids)!r}"
            )
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        seq, context = ids.shape[1], self.config.context_length
        if offset + seq > context:
            raise ValueError(
                f"positions {offset} to {offset + seq - 1} run past the context length {context} "
                f"(offset {offset} + {seq} tokens)"
            )
        if cache is not None:
            self._check_cache(cache, ids.shape[0])
        return self.lm_head(self.model(ids, cache, offset))  # (batch, seq, vocab)

    def _check_cache(self, cache, batch: int) -> None:
        if not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache, got {type(cache).__name__}")
        c = self.config
        expected = (c.n_layers, batch, c.n_kv_heads, c.head_dim, self.lm_head.weight.dtype)
        got = (cache.n_layers, cache.batch, cache.n_kv_heads, cache.head_dim, cache.dtype)
        if got != expected:
            raise ValueError(
                f"the cache has (layers, batch, kv heads, head_dim, dtype) = {got}, the model needs {expected}: "
                "build it with KVCache.for_model(model, batch)"
            )

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        use_cache: bool = True,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Extend ``ids`` by ``max_new_tokens`` tokens, as Chapter 5's ``sampling.generate`` does
        (``temperature=0``: greedy); with ``use_cache`` (the default) through a KV cache
        (:func:`course_lib.kv_cache.generate`: the prompt and the new tokens must fit the context),
        without it by recomputing the whole text for every token."""
        if use_cache:
            from .kv_cache import generate

            return generate(self, ids, max_new_tokens, temperature, top_k, top_p, seed)
        from .sampling import generate

        return generate(self, ids, max_new_tokens, temperature, top_k, top_p, seed)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> Llama:
        """Load a Hugging Face Llama checkpoint directory (``config.json`` and ``model.safetensors``).

        Any number of key/value heads, any RoPE base (``rope_theta``, at the top level of the
        configuration or in ``rope_parameters``), tied or untied embeddings (a tied checkpoint may
        omit ``lm_head.weight``). The state dict's names are Hugging Face's, so the weights load as
        they are; split-halves RoPE is Hugging Face's convention, and the course's.

        Returns:
            A :class:`Llama` in evaluation mode, in ``dtype``.

        Raises:
            ValueError: if a file or a key is missing, a shape does not fit, or the checkpoint uses
                something this model does not have (biases, another activation, scaled RoPE, a
                head width other than ``hidden_size / num_attention_heads``, a sliding window).
        """
        from safetensors.torch import load_file

        folder = Path(path)
        config_file, weights_file = folder / "config.json", folder / "model.safetensors"
        for needed in (config_file, weights_file):
            if not needed.is_file():
                raise ValueError(f"{folder} is not a Llama checkpoint: {needed.name} is missing")
        hf = json.loads(config_file.read_text(encoding="utf-8"))
        config = _config_from_hf(hf)
        state = load_file(str(weights_file))
        if config.tie_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as the token table, when it is saved at all
        model = cls(config)
        expected = model.state_dict()
        if config.tie_embeddings:
            del expected["lm_head.weight"]
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"the checkpoint has no {missing[0]!r} ({len(missing)} tensors missing)")
        for name, value in expected.items():
            if state[name].shape != value.shape:
                raise ValueError(f"{name!r} must have shape {tuple(value.shape)}, got {tuple(state[name].shape)}")
        model.load_state_dict(state, strict=False)  # extra entries (old rotary buffers) are ignored
        return model.to(dtype).eval()


def _config_from_hf(hf: dict) -> LlamaConfig:
    """A :class:`LlamaConfig` from a Hugging Face ``config.json``, refusing what the model lacks."""
    for key, allowed in (("hidden_act", ("silu",)), ("attention_bias", (False,)), ("mlp_bias", (False,))):
        if hf.get(key, allowed[0]) not in allowed:
            raise ValueError(f"this model supports {key} = {allowed[0]!r} only, the checkpoint has {hf[key]!r}")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for kind in (rope.get("rope_type"), scaling.get("rope_type"), scaling.get("type")):
        if kind not in (None, "default"):
            raise ValueError(f"scaled RoPE ({kind!r}) is not supported; only the default rotation is")
    if hf.get("sliding_window") is not None:
        raise ValueError("sliding-window attention is not supported (its sliding_window is not null)")
    try:
        config = LlamaConfig(
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            context_length=hf["max_position_embeddings"],
            rope_base=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except KeyError as err:
        raise ValueError(f"config.json has no {err.args[0]!r}") from None
    if hf.get("head_dim") not in (None, config.head_dim):
        raise ValueError(
            f"this model needs head_dim = hidden_size / num_attention_heads = {config.head_dim}, "
            f"the checkpoint has {hf['head_dim']}"
        )
    return config
