"""Chapter 15, §5–6 — DeepSeek's sparse attention (V3.2) and DeepSeek-V4's compressed attention.

DeepSeek-V3.2-Exp [DeepSeek-AI, 2025, technical report and ``deepseek-ai/DeepSeek-V3.2-Exp``,
``inference/model.py``] keeps V3's Multi-head Latent Attention (Chapter 10) and adds a *lightning indexer*: a
few cheap heads score every earlier token,

    I[t, s] = sum_j w[t, j] * ReLU(q[t, j] · k[s])        (j over the indexer's heads)

and each query attends only to the ``top_k`` tokens with the highest scores (2,048 in V3.2). The main
attention's cost per token goes from O(L) to O(k) (O(L²) to O(L·k) for a sequence); the indexer itself is
still O(L) per token, but with 64 heads of 128 features, a single shared key and no softmax.

DeepSeek-V4 [Hugging Face ``transformers/models/deepseek_v4``; its docstrings cite the V4 report, §2.3, DeepSeek-AI,
2026, arXiv:2606.19348] goes further: layers keep a sliding window of recent tokens plus *compressed* entries,
each a softmax-gated sum of ``m`` consecutive tokens (``m = 4`` with overlapping windows and the indexer:
compressed sparse attention; ``m' = 128`` without an indexer: heavily compressed attention).

- :func:`lightning_indexer` (Exercise 15.3): the scores and the top-k selection, causal, with a tie rule;
- :class:`LightningIndexer`: V3.2's indexer module (Hugging Face's ``DeepseekV32Indexer`` names);
- :class:`SparseLatentAttention`: MLA whose queries attend, on the latent, to the indexer's tokens only;
- :func:`compress_windows` and :class:`Compressor`: V4's gated pooling of windows into compressed entries;
- :class:`V4Indexer` and :class:`V4Attention` (with :class:`V4AttentionConfig`): V4's whole attention layer of
  each kind (sliding window only, compressed sparse, heavily compressed): the window, the compressed entries, one
  shared key/value head, the sinks and the grouped output projection, with Hugging Face's ``DeepseekV4Attention``
  names and outputs;
- :func:`cache_bytes_per_token` and :func:`attention_macs_per_token`: the chapter's accounting of V3, V3.2, V4.

Simplifications (the chapter states them): no FP8 and no Hadamard rotation in the indexer (DeepSeek's code
quantizes the indexer's queries and keys to FP8 after a Hadamard transform; an orthogonal rotation keeps the
dot products, and FP8 only rounds them), no YaRN in V4's layers (V3.2's use V3's, through the config), no cache for
decoding in the sparse layers (a prompt is processed whole), and the V4 compressor without its decoding state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from .attention import sliding_window_mask
from .deepseek import DeepSeekConfig
from .exercises import exercise
from .layers import RMSNorm
from .long_context import sink_softmax
from .mla import MultiHeadLatentAttention, cache_bytes, rope_with_base
from .rope import apply_rope
from .validation import check_positive_int as _check_positive_int

# DeepSeek-V3.2-Exp's indexer sizes: Hugging Face's DeepseekV32Config defaults (configuration_deepseek_v32.py:
# index_n_heads, index_head_dim, index_topk), the released config's values.
V32_INDEXER = {"index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048}

# DeepSeek-V4's attention sizes: Hugging Face's DeepseekV4Config defaults (configuration_deepseek_v4.py; its
# docstrings name them V4-Flash's). The layer types are the config's default schedule for 43 layers: two
# heavily compressed layers, then compressed-sparse and heavily-compressed layers alternating.
V4_ATTENTION = {
    "num_hidden_layers": 43,
    "num_attention_heads": 64,
    "head_dim": 512,
    "qk_rope_head_dim": 64,
    "sliding_window": 128,
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 512,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "layer_types": ["heavily_compressed_attention"] * 2
    + ["compressed_sparse_attention" if i % 2 else "heavily_compressed_attention" for i in range(41)],
}


# --------------------------------------------------------------------------------------
# The lightning indexer (Exercise 15.3)
# --------------------------------------------------------------------------------------


@exercise("15.3", "The lightning indexer with top-k selection", points=3)
def lightning_indexer(
    q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, top_k: int, causal: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every key for every query with the indexer's heads, and keep each query's ``top_k`` best keys.

    With ``H`` indexer heads, query ``t`` and key ``s``:

        scores[b, t, s] = sum_j  w[b, t, j] * ReLU(q[b, t, j, :] · k[b, s, :])

    one key per position shared by all heads, a weight per query and head, the ReLU on each head's dot
    product *before* the weighting (so a head can only add evidence, in the sign of its weight). Any scaling
    (``head_dim ** -0.5``, ``H ** -0.5``) is already folded into ``w`` by the caller.

    Causality: the queries are the *last* ``seq_q`` positions of the ``seq_k`` keys (a prompt has
    ``seq_q == seq_k``; one decoding step has ``seq_q == 1``), so query ``t`` stands at position
    ``p = seq_k - seq_q + t`` and sees the keys ``0 ... p``. With ``causal=True`` the scores of the keys it
    cannot see are ``-inf``; with ``causal=False`` every key is visible.

    Selection: for each query, ``min(top_k, seq_k)`` slots holding key positions, best score first. Equal
    scores go to the **earlier** position first. When a query sees fewer keys than there are slots, the
    visible keys fill the first slots and the remaining slots hold ``-1`` (never a hidden position).

    Args:
        q: the indexer's queries, a floating-point tensor ``(batch, seq_q, H, d)``.
        k: the indexer's keys, ``(batch, seq_k, d)``, the same dtype as ``q``.
        w: the per-head weights, ``(batch, seq_q, H)``, the same dtype.
        top_k: the number of keys to keep, a positive ``int``.
        causal: a ``bool``, the mask above. With ``causal=True``, ``seq_q <= seq_k``.

    Returns:
        ``(scores, indices)``: ``scores`` a ``torch.float32`` tensor ``(batch, seq_q, seq_k)`` (computed in
        float32 whatever the input dtype, ``-inf`` where hidden); ``indices`` a ``torch.int64`` tensor
        ``(batch, seq_q, min(top_k, seq_k))``. The inputs are not modified.

    Raises:
        ValueError: if ``q``, ``k`` or ``w`` is not a floating-point tensor of the shapes above (batch, heads,
            widths and query counts agreeing, one dtype), if ``top_k`` is not a positive ``int`` (a ``bool``
            is refused), if ``causal`` is not a ``bool``, or if ``causal`` and ``seq_q > seq_k``.

    Example:
        >>> q = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2): two queries, one head
        >>> k = torch.tensor([[[2.0, 0.0], [3.0, 0.0]]])  # (1, 2, 2)
        >>> scores, idx = lightning_indexer(q, k, torch.ones(1, 2, 1), top_k=2)
        >>> scores
        tensor([[[2., -inf],
                 [2., 3.]]])
        >>> idx  # query 0 sees key 0 only: its second slot is -1
        tensor([[[ 0, -1],
                 [ 1,  0]]])
    """
    raise NotImplementedError


class LightningIndexer(nn.Module):
    """DeepSeek-V3.2's lightning indexer, with Hugging Face's ``DeepseekV32Indexer`` names.

    Args:
        config: a :class:`~course_lib.deepseek.DeepSeekConfig` with query compression (``q_lora_rank``); this
            reads ``d_model``, ``q_lora_rank``, ``qk_rope_head_dim``, ``context_length``, ``rope_base`` and ``yarn``
            (the indexer's RoPE is the model's, YaRN included; its scores get no YaRN temperature).
        n_heads, head_dim, top_k: the indexer's sizes (V3.2: 64, 128, 2,048; :data:`V32_INDEXER`).

    Attributes:
        wq_b: ``nn.Linear(q_lora_rank, n_heads * head_dim)``, the queries from MLA's compressed query ``c_q``.
        wk: ``nn.Linear(d_model, head_dim)``, one key per token, and k_norm, an ``nn.LayerNorm(head_dim)``.
        weights_proj: ``nn.Linear(d_model, n_heads)``, the per-head weights ``w`` from the hidden state.
        rope: RoPE on the first ``qk_rope_head_dim`` features of each query and key, in split-halves pairing
            (unlike MLA's interleaved pairs in V3's checkpoints: Hugging Face's code says so).

    ``w`` is scaled by ``n_heads ** -0.5`` and ``head_dim ** -0.5``, as in both DeepSeek's and Hugging
    Face's code (ReLU commutes with a positive scale, so folding it into ``w`` is exact).
    """

    def __init__(self, config: DeepSeekConfig, n_heads: int, head_dim: int, top_k: int):
        super().__init__()
        if config.q_lora_rank is None:
            raise ValueError("the indexer reads MLA's compressed query: the config needs a q_lora_rank")
        for name, value in (("n_heads", n_heads), ("head_dim", head_dim), ("top_k", top_k)):
            _check_positive_int(name, value)
        if head_dim < config.qk_rope_head_dim:
            raise ValueError(f"head_dim ({head_dim}) must hold the {config.qk_rope_head_dim} rotated features")
        self.n_heads, self.head_dim, self.top_k = n_heads, head_dim, top_k
        self.rope_dim = config.qk_rope_head_dim
        self.wq_b = nn.Linear(config.q_lora_rank, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(config.d_model, head_dim, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(config.d_model, n_heads, bias=False)
        self.rope = rope_with_base(
            config.qk_rope_head_dim, config.rope_base, config.context_length, interleaved=False, yarn=config.yarn
        )

    def forward(self, x: torch.Tensor, q_resid: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and top-k indices for a prompt ``x`` ``(batch, seq, d_model)`` at positions ``offset ...``,
        ``q_resid`` its compressed query ``(batch, seq, q_lora_rank)``: :func:`lightning_indexer`'s results."""
        batch, seq, _ = x.shape
        r = self.rope_dim
        q = self.wq_b(q_resid).view(batch, seq, self.n_heads, self.head_dim)  # (batch, seq, H, d)
        q_rot = self.rope(q[..., :r].transpose(1, 2), offset).transpose(1, 2)  # rotate per head, positions on dim 2
        q = torch.cat([q_rot, q[..., r:]], dim=-1)
        k = self.k_norm(self.wk(x))  # (batch, seq, d)
        k = torch.cat([self.rope(k[..., :r], offset), k[..., r:]], dim=-1)
        w = self.weights_proj(x) * (self.n_heads**-0.5 * self.head_dim**-0.5)  # (batch, seq, H)
        return lightning_indexer(q, k, w, self.top_k)


class SparseLatentAttention(MultiHeadLatentAttention):
    """DeepSeek-V3.2's attention: MLA (Chapter 10's module, same weights and names) plus a
    :class:`LightningIndexer` (``self.indexer``); each query attends only to the tokens the indexer selects.

    The attention runs on the latent, as in absorbed decoding (Chapter 10): the key up-projection is folded
    into the query, the selected latents and RoPE keys are gathered, ``(batch, seq, top_k, kv_lora_rank)``,
    and the value up-projection applied after the weighted sum. So the score and value work per query is
    ``top_k`` keys, not ``L``. Equal to Hugging Face's ``DeepseekV32Attention`` (eager) with the same weights.
    """

    def __init__(self, config: DeepSeekConfig, index_n_heads: int, index_head_dim: int, index_topk: int):
        super().__init__(config)
        self.indexer = LightningIndexer(config, index_n_heads, index_head_dim, index_topk)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Causal sparse attention over a prompt ``x`` ``(batch, seq, d_model)``; returns ``(batch, seq, d_model)``."""
        q_nope, q_rope = self.queries(x, offset)  # (batch, h, seq, nope), (batch, h, seq, rope)
        latent, rope_key = self.compress(x, offset)  # (batch, seq, r), (batch, seq, rope)
        _, idx = self.indexer(x, self.q_a_layernorm(self.q_a_proj(x)), offset)  # (batch, seq, k)
        h, r = self.n_heads, self.kv_lora_rank
        w_uk, w_uv = self.kv_b_proj.weight.view(h, -1, r).split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
        q_latent = torch.einsum("bhsn,hnr->bhsr", q_nope, w_uk)  # the key up-projection absorbed
        rows = torch.arange(x.shape[0])[:, None, None]
        safe = idx.clamp(min=0)  # -1 slots read token 0 and are masked below
        sel_latent, sel_rope = latent[rows, safe], rope_key[rows, safe]  # (batch, seq, k, r), (batch, seq, k, rope)
        scores = torch.einsum("bhsr,bskr->bhsk", q_latent, sel_latent)
        scores = (scores + torch.einsum("bhse,bske->bhsk", q_rope, sel_rope)) * self.scale
        scores = scores.masked_fill((idx < 0)[:, None], float("-inf"))  # (batch, h, seq, k)
        out_latent = torch.einsum("bhsk,bskr->bhsr", scores.softmax(dim=-1), sel_latent)
        out = torch.einsum("bhsr,hvr->bshv", out_latent, w_uv)  # the value up-projection, after the sum
        return self.o_proj(out.reshape(*x.shape[:2], h * self.v_head_dim))


# --------------------------------------------------------------------------------------
# DeepSeek-V4's compressor
# --------------------------------------------------------------------------------------


def rotate_tail(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """V4's RoPE: rotate the *last* ``r = 2 * cos.shape[-1]`` features of ``x`` in adjacent pairs (DeepSeek's
    interleaved convention), the features before them unchanged. V4 lays each head out as ``[no position | rope]``.

    ``x`` is ``(..., seq, width)``; ``cos`` and ``sin`` are ``(seq, r / 2)``, one row per row of ``x`` (any positions,
    so compressed entries can stand at ``i * rate``). Passing ``-sin`` rotates by minus the angles: the inverse.
    """
    r = 2 * cos.shape[-1]
    return torch.cat([x[..., :-r], apply_rope(x[..., -r:], cos, sin, interleaved=True)], dim=-1)


def compress_windows(kv: torch.Tensor, gate: torch.Tensor, position_bias: torch.Tensor, overlap: bool) -> torch.Tensor:
    """V4's gated pooling: every complete window of ``m`` tokens becomes one entry.

    ``kv`` and ``gate`` are ``(batch, seq, D)`` (``2 * d`` with ``overlap``), ``position_bias`` ``(m, D)``.
    Without overlap (heavily compressed attention) entry ``i`` is ``sum_j softmax_j(gate + bias) * kv`` over
    tokens ``i*m ... i*m + m - 1``, one softmax per feature. With overlap (compressed sparse attention) each
    token carries two halves: entry ``i`` pools, over ``2m`` slots, the first halves of window ``i - 1`` and the
    second halves of window ``i`` (window ``-1`` does not exist: its slots get weight 0). Tokens after the last
    complete window are left out. Returns ``(batch, seq // m, d)`` in float32.
    """
    m = position_bias.shape[0]
    batch, seq, width = kv.shape
    n = seq // m
    if n == 0:  # not one complete window yet
        return kv.new_zeros(batch, 0, width // 2 if overlap else width, dtype=torch.float32)
    kv = kv[:, : n * m].float().view(batch, n, m, width)  # (batch, windows, m, D)
    gate = gate[:, : n * m].float().view(batch, n, m, width) + position_bias.float()
    if overlap:
        d = width // 2
        previous_kv = torch.cat([kv.new_zeros(batch, 1, m, d), kv[:, :-1, :, :d]], dim=1)
        previous_gate = torch.cat([gate.new_full((batch, 1, m, d), float("-inf")), gate[:, :-1, :, :d]], dim=1)
        kv = torch.cat([previous_kv, kv[..., d:]], dim=2)  # (batch, windows, 2m, d)
        gate = torch.cat([previous_gate, gate[..., d:]], dim=2)
    return (kv * gate.softmax(dim=2)).sum(dim=2)


class Compressor(nn.Module):
    """V4's compressor for one layer, with Hugging Face's ``DeepseekV4HCACompressor`` / ``CSACompressor`` names:
    ``kv_proj`` and ``gate_proj`` (``d_model -> D``, ``D = 2 * head_dim`` with ``overlap``), ``position_bias``
    ``(rate, D)``, ``kv_norm`` (an RMSNorm of ``head_dim``), then RoPE (interleaved pairs, base ``rope_base``) on
    the last ``rope_dim`` features at position ``i * rate`` for entry ``i``. A CSA layer's compressor also holds an
    indexer in Hugging Face's code (its ``indexer`` submodule); this one is the pooling alone, and the chapter's
    indexer is :func:`lightning_indexer`. ``max_len`` bounds the positions the RoPE tables cover."""

    def __init__(
        self,
        d_model: int,
        head_dim: int,
        rate: int,
        overlap: bool,
        rope_dim: int,
        rope_base: float = 160000.0,
        max_len: int = 4096,
        eps: float = 1e-6,
    ):
        super().__init__()
        width = 2 * head_dim if overlap else head_dim
        self.rate, self.overlap, self.rope_dim = rate, overlap, rope_dim
        self.kv_proj = nn.Linear(d_model, width, bias=False)
        self.gate_proj = nn.Linear(d_model, width, bias=False)
        self.position_bias = nn.Parameter(torch.zeros(rate, width))
        self.kv_norm = RMSNorm(head_dim, eps=eps)
        self.rope = rope_with_base(rope_dim, rope_base, max_len, interleaved=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The compressed entries of ``x`` ``(batch, seq, d_model)``: ``(batch, seq // rate, head_dim)``, float32."""
        pooled = self.kv_norm(compress_windows(self.kv_proj(x), self.gate_proj(x), self.position_bias, self.overlap))
        # entry i stands at its window's first position
        positions = torch.arange(pooled.shape[1], device=pooled.device) * self.rate
        return rotate_tail(pooled, self.rope.cos[positions], self.rope.sin[positions])


# --------------------------------------------------------------------------------------
# DeepSeek-V4's attention layer
# --------------------------------------------------------------------------------------

#: Hugging Face's names for V4's three kinds of attention layer (``DeepseekV4Config.layer_types``).
V4_LAYER_TYPES = ("sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention")


@dataclass(frozen=True)
class V4AttentionConfig:
    """The sizes one V4 attention layer reads, under ``DeepseekV4Config``'s names; the defaults are that config's
    (V4-Flash's, :data:`V4_ATTENTION`). ``max_len`` is ours: the positions the RoPE tables cover (Hugging Face
    computes its angles on the fly, up to ``max_position_embeddings``, a million)."""

    hidden_size: int = 4096
    num_attention_heads: int = 64
    head_dim: int = 512
    qk_rope_head_dim: int = 64
    q_lora_rank: int = 1024
    sliding_window: int = 128
    o_groups: int = 8
    o_lora_rank: int = 1024
    compress_rates: dict = field(default_factory=lambda: dict(V4_ATTENTION["compress_rates"]))
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    rms_norm_eps: float = 1e-6
    max_len: int = 4096

    @classmethod
    def from_config(cls, config, max_len: int = 4096) -> V4AttentionConfig:
        """The fields above read from a Hugging Face ``DeepseekV4Config`` (or any object with these attributes)."""
        names = [f.name for f in fields(cls) if f.name != "max_len"]
        return cls(**{name: getattr(config, name) for name in names}, max_len=max_len)


def _compressor_settings(c: V4AttentionConfig) -> dict:
    """A :class:`Compressor`'s RoPE and norm settings in a V4 layer: the compressed branch's base, the config's
    epsilon; the same for the layer's entries and its indexer's keys."""
    return dict(rope_dim=c.qk_rope_head_dim, rope_base=c.compress_rope_theta, max_len=c.max_len, eps=c.rms_norm_eps)


def entries_seen(seq: int, n_entries: int, rate: int, device=None) -> torch.Tensor:
    """Which compressed entries each query may read: entry ``i`` pools tokens up to ``i * rate + rate - 1``, so the
    query at position ``t`` sees it once that window is complete, ``i < (t + 1) // rate``. ``(seq, n_entries)`` bool."""
    t = torch.arange(seq, device=device)[:, None]
    i = torch.arange(n_entries, device=device)[None, :]
    return i < (t + 1) // rate


class V4Indexer(Compressor):
    """V4's lightning indexer, with Hugging Face's ``DeepseekV4Indexer`` names. Unlike V3.2's it scores
    *compressed* keys: it is a :class:`Compressor` of its own (overlapping windows of ``rate`` tokens, width
    ``index_head_dim``: ``kv_proj``, ``gate_proj``, ``position_bias``, ``kv_norm``) plus the queries ``q_b_proj``
    (from the layer's compressed query, as in V3.2) and the per-head weights ``scorer.weights_proj``. No LayerNorm
    on the keys (V3.2 has one) and RoPE in adjacent pairs, with the compressed branch's base at every step.

    The scores are :func:`lightning_indexer`'s (``w`` scaled by ``n_heads ** -0.5 * head_dim ** -0.5``, as Hugging
    Face scales them); only the causal rule differs, so the selection is made here: query ``t`` picks among the
    entries :func:`entries_seen` allows.
    """

    def __init__(self, config: V4AttentionConfig):
        c = config
        rate = c.compress_rates["compressed_sparse_attention"]
        super().__init__(c.hidden_size, c.index_head_dim, rate, overlap=True, **_compressor_settings(c))
        self.n_heads, self.head_dim, self.top_k = c.index_n_heads, c.index_head_dim, c.index_topk
        self.q_b_proj = nn.Linear(c.q_lora_rank, c.index_n_heads * c.index_head_dim, bias=False)
        # Hugging Face's DeepseekV4IndexerScorer holds this one weight: a dict keeps its state-dict name.
        self.scorer = nn.ModuleDict({"weights_proj": nn.Linear(c.hidden_size, c.index_n_heads, bias=False)})

    def forward(self, x: torch.Tensor, q_resid: torch.Tensor) -> torch.Tensor:
        """The selected entries for a prompt ``x`` ``(batch, seq, d_model)`` with compressed query ``q_resid``
        ``(batch, seq, q_lora_rank)``: ``(batch, seq, min(top_k, seq // rate))`` int64, ``-1`` in unused slots."""
        batch, seq, _ = x.shape
        keys = super().forward(x)  # (batch, n, d): entry i rotated at position i * rate
        n = keys.shape[1]
        if n == 0:  # fewer tokens than one window: nothing to select
            return torch.zeros(batch, seq, 0, dtype=torch.int64, device=x.device)
        cos, sin = self.rope.cos[:seq], self.rope.sin[:seq]  # queries at positions 0 ... seq - 1
        q = self.q_b_proj(q_resid).view(batch, seq, self.n_heads, self.head_dim)  # (batch, seq, H, d)
        q = rotate_tail(q.transpose(1, 2), cos, sin).transpose(1, 2)  # positions on dim 2 while rotating
        w = self.scorer["weights_proj"](x) * (self.n_heads**-0.5 * self.head_dim**-0.5)  # (batch, seq, H)
        # lightning_indexer's causal rule is one key per position; an entry's rule is entries_seen's.
        scores, _ = lightning_indexer(q.float(), keys, w.float(), self.top_k, causal=False)  # (batch, seq, n)
        scores = scores.masked_fill(~entries_seen(seq, n, self.rate, x.device), float("-inf"))
        best = scores.topk(min(self.top_k, n), dim=-1)
        return best.indices.masked_fill(best.values == float("-inf"), -1)  # early queries see fewer than top_k


class V4Attention(nn.Module):
    """One DeepSeek-V4 attention layer for a whole prompt (no decoding cache), with Hugging Face's
    ``DeepseekV4Attention`` names: its state dict loads with ``strict=True`` and the outputs agree.

    - Queries: ``q_a_proj`` to a compressed query (``q_lora_rank``), ``q_a_norm``, ``q_b_proj`` to all heads, then
      an RMS norm per head without weights (Hugging Face's ``q_b_norm``, which holds no parameter).
    - One key/value head shared by all query heads: ``kv_proj``, ``kv_norm``; the same vector is key *and* value.
    - RoPE (:func:`rotate_tail`) on the last ``qk_rope_head_dim`` features of queries and keys, base
      ``rope_theta`` in sliding-only layers and ``compress_rope_theta`` in compressed ones (the base the
      compressor uses for its entries). Since values carry that rotation too, the output's rotated features are
      turned back by the query's own position: what each value adds then depends on its distance to the query only.
    - Keys: the ``sliding_window`` most recent tokens (the query itself included), plus, for
      ``"heavily_compressed_attention"``, every complete entry of a :class:`Compressor` (rate ``m'``, no overlap),
      and for ``"compressed_sparse_attention"`` the ``index_topk`` complete entries of an overlapping
      :class:`Compressor` (rate ``m``) that its :class:`V4Indexer` (``compressor.indexer``) picks.
    - One softmax over those keys and a learned sink logit per head (``sinks``, gpt-oss's, as in
      :func:`course_lib.long_context.local_attention`), scale ``head_dim ** -0.5``.
    - The grouped output projection: the heads are split into ``o_groups`` groups, each group's concatenated
      outputs projected to ``o_lora_rank`` features by its own block of ``o_a_proj``, then ``o_b_proj`` mixes the
      groups into ``hidden_size``.

    Like Hugging Face's layer (and unlike :class:`SparseLatentAttention`), the selection is a mask over all
    entries, not a gather: the arithmetic is the same, the cost is not (the chapter counts the cost of a gather).
    Not reproduced: YaRN on the compressed branch (configs that set it), and the caches for decoding.
    """

    def __init__(self, config: V4AttentionConfig, layer_type: str):
        super().__init__()
        if layer_type not in V4_LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {V4_LAYER_TYPES}, got {layer_type!r}")
        c = config
        if c.num_attention_heads * c.head_dim % c.o_groups:
            raise ValueError(f"o_groups ({c.o_groups}) must divide num_attention_heads * head_dim")
        self.config, self.layer_type = c, layer_type
        self.n_heads, self.head_dim = c.num_attention_heads, c.head_dim
        self.window, self.eps = c.sliding_window, c.rms_norm_eps
        self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=False)
        self.q_a_norm = RMSNorm(c.q_lora_rank, eps=c.rms_norm_eps)
        self.q_b_proj = nn.Linear(c.q_lora_rank, c.num_attention_heads * c.head_dim, bias=False)
        self.kv_proj = nn.Linear(c.hidden_size, c.head_dim, bias=False)
        self.kv_norm = RMSNorm(c.head_dim, eps=c.rms_norm_eps)
        # o_a_proj holds o_groups blocks of (o_lora_rank, heads * head_dim / o_groups), stacked as one weight.
        self.o_a_proj = nn.Linear(
            c.num_attention_heads * c.head_dim // c.o_groups, c.o_groups * c.o_lora_rank, bias=False
        )
        self.o_b_proj = nn.Linear(c.o_groups * c.o_lora_rank, c.hidden_size, bias=False)
        self.sinks = nn.Parameter(torch.zeros(c.num_attention_heads))
        self.compressor = None
        base = c.rope_theta if layer_type == "sliding_attention" else c.compress_rope_theta
        self.rope = rope_with_base(c.qk_rope_head_dim, base, c.max_len, interleaved=True)
        if layer_type != "sliding_attention":
            sparse = layer_type == "compressed_sparse_attention"
            rate = c.compress_rates[layer_type]
            self.compressor = Compressor(c.hidden_size, c.head_dim, rate, overlap=sparse, **_compressor_settings(c))
            if sparse:
                # Hugging Face keeps the indexer inside the CSA compressor (compressor.indexer.* in its state dict);
                # the compressor never calls it, this layer does.
                self.compressor.indexer = V4Indexer(c)

    def visible_entries(self, x: torch.Tensor, q_resid: torch.Tensor, n: int) -> torch.Tensor:
        """Which of the ``n`` compressed entries each query reads: ``(batch, seq, n)`` bool. All complete ones in a
        heavily compressed layer; the indexer's picks (complete ones only) in a compressed sparse layer."""
        batch, seq, _ = x.shape
        seen = entries_seen(seq, n, self.compressor.rate, x.device).expand(batch, seq, n)
        if self.layer_type == "heavily_compressed_attention":
            return seen
        picks = self.compressor.indexer(x, q_resid)  # (batch, seq, k), -1 in unused slots (it matches no entry)
        return (picks[..., None] == torch.arange(n, device=x.device)).any(dim=-2)

    def attend(self, q: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Every head of ``q`` ``(batch, heads, seq, d)`` over the shared ``keys`` ``(batch, n_keys, d)`` (also the
        values) where ``visible`` ``(batch, seq, n_keys)``, with the sinks; returns ``(batch, heads, seq, d)``."""
        scores = torch.einsum("bhsd,bkd->bhsk", q, keys) * self.head_dim**-0.5
        scores = scores.masked_fill(~visible[:, None], float("-inf"))  # (batch, heads, seq, n_keys)
        return torch.einsum("bhsk,bkd->bhsd", sink_softmax(scores, self.sinks), keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Causal attention over a prompt ``x`` ``(batch, seq, hidden_size)`` at positions ``0 ... seq - 1``;
        returns ``(batch, seq, hidden_size)``."""
        batch, seq, _ = x.shape
        if seq > self.config.max_len:
            raise ValueError(f"the prompt has {seq} tokens, more than max_len ({self.config.max_len})")
        cos, sin = self.rope.cos[:seq], self.rope.sin[:seq]  # (seq, rope / 2)
        q_resid = self.q_a_norm(self.q_a_proj(x))  # (batch, seq, q_lora_rank)
        q = self.q_b_proj(q_resid).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        q = q * torch.rsqrt(q.float().square().mean(-1, keepdim=True) + self.eps).to(q.dtype)  # per head, no weight
        q = rotate_tail(q, cos, sin)  # (batch, heads, seq, head_dim)
        kv = rotate_tail(self.kv_norm(self.kv_proj(x)), cos, sin)  # (batch, seq, head_dim): one head

        visible = sliding_window_mask(seq, self.window, device=x.device).expand(batch, seq, seq)
        if self.compressor is not None:
            entries = self.compressor(x).to(kv.dtype)  # (batch, n, head_dim)
            visible = torch.cat([visible, self.visible_entries(x, q_resid, entries.shape[1])], dim=-1)
            kv = torch.cat([kv, entries], dim=1)  # (batch, seq + n, head_dim)
        out = rotate_tail(self.attend(q, kv, visible), cos, -sin)  # values' rotation undone at the query's position

        g = self.config.o_groups
        grouped = out.transpose(1, 2).reshape(batch, seq, g, -1)  # (batch, seq, groups, heads / groups * head_dim)
        w_a = self.o_a_proj.weight.view(g, self.config.o_lora_rank, -1)  # (groups, o_lora_rank, per group)
        mixed = torch.einsum("bsgi,gri->bsgr", grouped, w_a).flatten(2)  # (batch, seq, groups * o_lora_rank)
        return self.o_b_proj(mixed)


# --------------------------------------------------------------------------------------
# The accounting: cache bytes and attention work per token
# --------------------------------------------------------------------------------------


def cache_bytes_per_token(model: str) -> dict[str, int]:
    """Cache bytes per token of context, all layers, of ``"v3"``, ``"v3.2"`` or ``"v4"``, by part.

    - V3 (:meth:`DeepSeekConfig.v3`): Chapter 10's latent cache, 512 + 64 numbers per layer in bfloat16 (the
      dtype of DeepSeek's ``kv_cache``/``pe_cache`` buffers), from :func:`course_lib.mla.cache_bytes`.
    - V3.2: the same MLA cache plus the indexer's key per layer: ``index_head_dim`` FP8 bytes and one float32
      scale per 128 of them (DeepSeek-V3.2-Exp ``inference/model.py``: ``k_cache`` in ``float8_e4m3fn``,
      ``k_scale_cache`` in float32).
    - V4 (:data:`V4_ATTENTION`): per compressed-sparse layer one entry of ``head_dim`` and one indexer key of
      ``index_head_dim`` every 4 tokens, per heavily compressed layer one entry every 128 tokens, in bfloat16
      (the precision Hugging Face's code stores; DeepSeek's own kernels may store less, which the chapter
      could not check). The sliding windows (128 tokens per layer) are a constant, not per token: left out.
    """
    v3 = DeepSeekConfig.v3()
    mla = cache_bytes(v3, seq_len=1, dtype=torch.bfloat16)
    if model == "v3":
        return {"latent": mla}
    if model == "v3.2":
        d = V32_INDEXER["index_head_dim"]
        return {"latent": mla, "indexer keys": v3.n_layers * (d + 4 * (d // 128))}
    if model == "v4":
        c = V4_ATTENTION
        csa_rate, hca_rate = c["compress_rates"].values()
        n_csa = c["layer_types"].count("compressed_sparse_attention")
        n_hca = c["layer_types"].count("heavily_compressed_attention")
        bf16 = torch.bfloat16.itemsize
        return {
            "compressed (m=4)": n_csa * c["head_dim"] * bf16 // csa_rate,
            "indexer keys": n_csa * c["index_head_dim"] * bf16 // csa_rate,
            "heavily compressed (m'=128)": n_hca * c["head_dim"] * bf16 // hca_rate,
        }
    raise ValueError(f"model must be 'v3', 'v3.2' or 'v4', got {model!r}")


def attention_macs_per_token(kind: str, context: int) -> int:
    """Multiply-accumulates of one layer's attention for one new token after ``context`` tokens (scores and
    weighted sums; projections left out), at the published sizes:

    - ``"v3"``: absorbed MLA (Chapter 10) over every token: 128 heads · (512 + 64 + 512) per token;
    - ``"v3.2"``: the indexer over every token (64 heads · 128) plus MLA over ``min(2048, context)`` tokens;
    - ``"v4 csa"``: a 128-token window and the top 512 of ``context // 4`` compressed entries, 64 heads ·
      (512 + 512) each, plus the indexer (64 · 128) over the compressed entries;
    - ``"v4 hca"``: the window and all ``context // 128`` entries.
    """
    _check_positive_int("context", context)
    v3 = DeepSeekConfig.v3()
    # absorbed MLA per cached token: scores on the latent and the RoPE key, then the weighted sum of latents
    mla = v3.n_heads * (v3.kv_lora_rank + v3.qk_rope_head_dim + v3.kv_lora_rank)
    v32 = V32_INDEXER
    v4 = V4_ATTENTION
    per_entry = v4["num_attention_heads"] * 2 * v4["head_dim"]
    window = min(v4["sliding_window"], context)
    indexer_v4 = v4["index_n_heads"] * v4["index_head_dim"]
    csa_rate, hca_rate = v4["compress_rates"].values()
    if kind == "v3":
        return context * mla
    if kind == "v3.2":
        return context * v32["index_n_heads"] * v32["index_head_dim"] + min(v32["index_topk"], context) * mla
    if kind == "v4 csa":
        entries = context // csa_rate
        return (window + min(v4["index_topk"], entries)) * per_entry + entries * indexer_v4
    if kind == "v4 hca":
        return (window + context // hca_rate) * per_entry
    raise ValueError(f"kind must be 'v3', 'v3.2', 'v4 csa' or 'v4 hca', got {kind!r}")
