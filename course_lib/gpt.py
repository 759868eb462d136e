"""Chapter 5 — GPT-2 end to end: embeddings, a stack of blocks, a final norm and a score per token.

A GPT reads token ids and returns, at every position, one score (a *logit*) for each token of the
vocabulary: its guess of the token that comes next. GPT-2 [Radford et al., 2019] is

    x = InputEmbedding(ids)                 # (batch, seq, d_model)
    x = block_1(x); ...; x = block_L(x)     # pre-norm transformer blocks (Chapter 4)
    x = ln_f(x)                             # a final LayerNorm
    logits = x @ W_token.T                  # (batch, seq, vocab): the token table, reused

The output projection is *tied* to the token embedding: the same matrix turns ids into vectors
on the way in and vectors into scores on the way out [Press & Wolf, 2017].

Exercises in this module: 5.1 :meth:`GPT.forward`, 5.2 :func:`count_parameters`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .block import FusedLayerNorm, TransformerBlock, check_kernels
from .embeddings import INIT_STD, InputEmbedding
from .exercises import exercise
from .layers import LayerNorm

#: GPT-2's four released sizes (OpenAI's names): (n_layers, d_model, n_heads).
GPT2_SIZES = {"124M": (12, 768, 12), "355M": (24, 1024, 16), "774M": (36, 1280, 20), "1558M": (48, 1600, 25)}


@dataclass
class GPTConfig:
    """The sizes of a GPT-2-style model. The defaults are GPT-2 small ("124M").

    Attributes:
        vocab_size: the number of token ids (GPT-2: 50,257).
        context_length: the most tokens the model reads at once (GPT-2: 1,024).
        d_model: the width of every token vector.
        n_layers: the number of transformer blocks.
        n_heads: attention heads per block; must divide ``d_model``.
        dropout: one dropout probability for embeddings, attention and feed-forward, in ``[0, 1)``.
        bias: whether linear layers and LayerNorms have biases (GPT-2: yes).
        eps: the LayerNorms' ``eps``.
        kernels: what attention, the LayerNorms and GELU run on. ``"fused"`` (the default):
            PyTorch's fused kernels (``scaled_dot_product_attention``, ``layer_norm``, ``gelu``),
            which Chapters 3 and 4 showed compute what your code computes, and faster.
            ``"course"``: your own ``MultiHeadAttention``, ``LayerNorm`` and ``FeedForward``, for
            instance to read a block's attention weights (``last_weights``). The parameters, their
            names and their initial values are the same either way, so a state dict moves between
            the two.

    Raises:
        ValueError: for a non-positive size, ``d_model`` not divisible by ``n_heads``, a dropout
            outside ``[0, 1)``, a non-positive ``eps`` or ``kernels`` neither ``"fused"`` nor ``"course"``.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    dropout: float = 0.0
    bias: bool = True
    eps: float = 1e-5
    kernels: str = "fused"

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if type(self.dropout) not in (int, float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        if type(self.bias) is not bool:
            raise ValueError(f"bias must be True or False, got {self.bias!r}")
        if type(self.eps) not in (int, float) or not self.eps > 0:
            raise ValueError(f"eps must be a positive number, got {self.eps!r}")
        check_kernels(self.kernels)

    @classmethod
    def gpt2(cls, size: str = "124M", **overrides) -> GPTConfig:
        """The configuration of a released GPT-2: ``"124M"``, ``"355M"``, ``"774M"`` or ``"1558M"``.

        ``overrides`` replace any other field (e.g. ``dropout=0.1``).
        """
        if size not in GPT2_SIZES:
            raise ValueError(f"unknown GPT-2 size {size!r}; choose from {', '.join(GPT2_SIZES)}")
        n_layers, d_model, n_heads = GPT2_SIZES[size]
        return cls(**{"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, **overrides})


class GPT(nn.Module):
    """GPT-2: input embedding, ``n_layers`` pre-norm transformer blocks, a final LayerNorm and an
    output projection tied to the token embedding.

    Args:
        config: a :class:`GPTConfig`.

    Attributes:
        config: the configuration.
        embed: ``InputEmbedding(vocab_size, d_model, context_length, dropout)``.
        blocks: an ``nn.ModuleList`` of ``n_layers`` ``TransformerBlock(d_model, n_heads,
            dropout=dropout, bias=bias, eps=eps, kernels=kernels)``.
        ln_f: the final ``LayerNorm(d_model, eps, bias)`` (a ``FusedLayerNorm`` with fused kernels).

    There is no separate output matrix: the logits are ``ln_f(x) @ embed.token.weight.T``.

    Initialisation follows GPT-2: every weight matrix and embedding is drawn from a normal
    distribution with standard deviation 0.02, biases start at zero and LayerNorms at the identity.
    The two projections that write into the residual stream in each block (``attn.out_proj`` and
    ``ffn.fc_out``) get standard deviation ``0.02 / sqrt(2 * n_layers)``: the stream receives
    ``2 * n_layers`` such additions, and scaling each keeps the sum's size steady with depth
    [Radford et al., 2019, section 2.3].
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.embed = InputEmbedding(c.vocab_size, c.d_model, c.context_length, c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_heads, dropout=c.dropout, bias=c.bias, eps=c.eps, kernels=c.kernels)
            for _ in range(c.n_layers)
        )
        self.ln_f = (FusedLayerNorm if c.kernels == "fused" else LayerNorm)(c.d_model, c.eps, c.bias)
        self._init_weights()

    def _init_weights(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.fc_out.weight, mean=0.0, std=residual_std)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def extra_repr(self) -> str:
        return f"tied output projection ({self.config.d_model} -> {self.config.vocab_size})"

    @exercise("5.1", "The whole GPT: from ids to logits", points=3)
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Turn a batch of token ids into next-token logits at every position.

        1. Check that ``ids`` is a 2-D integer tensor ``(batch, seq)`` with ``seq`` at most
           ``self.config.context_length``; otherwise raise ``ValueError`` (for a sequence that is
           too long, name both its length and the context length).
        2. ``x = self.embed(ids)``: ``(batch, seq, d_model)``.
        3. Pass ``x`` through every block of ``self.blocks`` in order (each applies its own causal
           mask), then through ``self.ln_f``.
        4. Project onto the vocabulary with the *tied* token table: ``x @ W.T`` where
           ``W = self.embed.token.weight`` has shape ``(vocab_size, d_model)``.

        Args:
            ids: an integer tensor (``torch.int64``) of shape ``(batch, seq)``,
                ``1 <= seq <= context_length``, with ids in ``[0, vocab_size)``.

        Returns:
            The logits, a tensor of shape ``(batch, seq, vocab_size)`` in the model's dtype. Row
            ``[b, i]`` scores every candidate for the token after ``ids[b, i]``, having seen only
            ``ids[b, :i + 1]``.

        Raises:
            ValueError: if ``ids`` is not a 2-D integer tensor or is longer than the context.

        Example:
            >>> model = GPT(GPTConfig(vocab_size=100, context_length=16, d_model=32, n_layers=2, n_heads=4))
            >>> model(torch.tensor([[5, 7, 5]])).shape
            torch.Size([1, 3, 100])
        """
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, kernels: str = "fused") -> GPT:
        """Load a Hugging Face GPT-2 checkpoint directory (``config.json`` and ``model.safetensors``).

        This reads OpenAI's released weights once they are on disk (for instance a download of the
        Hugging Face ``gpt2`` repository) and equally a checkpoint that ``transformers`` saved with
        ``save_pretrained``. Keys may carry the ``transformer.`` prefix of ``GPT2LMHeadModel`` or
        not (``GPT2Model``); ``lm_head.weight``, if present, must equal the token table (GPT-2 ties
        them). Hugging Face's ``Conv1D`` weights are stored transposed; each block is loaded with
        :meth:`TransformerBlock.load_hf_gpt2_block`. ``kernels`` is the :class:`GPTConfig` field.

        Returns:
            A :class:`GPT` in evaluation mode, in ``dtype``.

        Raises:
            ValueError: if a file or a key is missing, or a shape does not fit the configuration.
        """
        from safetensors.torch import load_file

        folder = Path(path)
        config_file, weights_file = folder / "config.json", folder / "model.safetensors"
        for needed in (config_file, weights_file):
            if not needed.is_file():
                raise ValueError(f"{folder} is not a GPT-2 checkpoint: {needed.name} is missing")
        hf = json.loads(config_file.read_text(encoding="utf-8"))
        try:
            config = GPTConfig(
                vocab_size=hf["vocab_size"],
                context_length=hf["n_positions"],
                d_model=hf["n_embd"],
                n_layers=hf["n_layer"],
                n_heads=hf["n_head"],
                eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                kernels=kernels,
            )
        except KeyError as err:
            raise ValueError(f"config.json has no {err.args[0]!r}") from None
        if hf.get("n_inner") not in (None, 4 * config.d_model):
            raise ValueError(f"this loader expects n_inner = 4 * n_embd = {4 * config.d_model}, got {hf['n_inner']}")
        state = load_file(str(weights_file))
        prefix = "transformer." if any(k.startswith("transformer.") for k in state) else ""

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if prefix + name not in state:
                raise ValueError(f"the checkpoint has no {prefix + name!r}")
            value = state[prefix + name]
            if tuple(value.shape) != shape:
                raise ValueError(f"{prefix + name!r} must have shape {shape}, got {tuple(value.shape)}")
            return value

        model = cls(config)
        d = config.d_model
        with torch.no_grad():
            wte = get("wte.weight", (config.vocab_size, d))
            model.embed.token.weight.copy_(wte)
            model.embed.position.weight.copy_(get("wpe.weight", (config.context_length, d)))
            model.ln_f.weight.copy_(get("ln_f.weight", (d,)))
            model.ln_f.bias.copy_(get("ln_f.bias", (d,)))
            for i, block in enumerate(model.blocks):
                block.load_hf_gpt2_block(state, prefix=f"{prefix}h.{i}.")
        if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], wte):
            raise ValueError("lm_head.weight differs from the token table, but GPT-2 ties them")
        return model.to(dtype).eval()


@exercise("5.2", "Count GPT-2's parameters", points=2)
def count_parameters(config: GPTConfig) -> int:
    """The exact number of parameters of ``GPT(config)``, worked out from the sizes alone.

    Build no model: the count must also be right for configurations far too large to build, and
    exact however large it is, beyond ``2**63`` included. A parameter shared by two layers counts
    once, as in ``model.parameters()``: the output projection *is* the token table and adds
    nothing of its own. With ``config.bias`` false the model has no biases anywhere, neither in
    its linear layers nor as LayerNorm shifts.

    Args:
        config: a :class:`GPTConfig`.

    Returns:
        A Python ``int`` equal to ``sum(p.numel() for p in GPT(config).parameters())``.

    Raises:
        ValueError: if ``config`` is not a :class:`GPTConfig`.

    Example:
        >>> count_parameters(GPTConfig.gpt2("124M"))
        124439808
    """
    raise NotImplementedError
