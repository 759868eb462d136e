"""Chapter 11 — Mixture of Experts: many feed-forward networks, a few of them per token.

A dense block sends every token through one SwiGLU (Chapter 6). A Mixture-of-Experts (MoE) layer
holds ``N_r`` routed experts, each a smaller SwiGLU, and a router that sends each token to ``K_r`` of
them, so the layer's parameters grow with ``N_r`` while a token's arithmetic grows with ``K_r``.
DeepSeekMoE [Dai et al., 2024, arXiv:2401.06066] cuts the experts finer and adds shared experts
that every token uses; DeepSeek-V3 [DeepSeek-AI, 2024, arXiv:2412.19437, §2.1.2] routes on
sigmoid affinities, limits each token to a few groups of experts, and balances the experts' load
with a bias that moves the selection, not the gates. Everything carries Hugging Face's names
(``DeepseekV3MoE``: ``gate.weight``, ``gate.e_score_correction_bias``, ``shared_experts.*``), except
the routed experts, which are a list of Chapter 6's ``SwiGLU`` here and one stacked tensor there:
:func:`experts_from_hf` and :func:`experts_to_hf` convert both ways.

- :func:`route` (Exercise 11.1): V3's router on plain tensors, and V2's softmax router;
- :class:`Router`: the gate's weight and routing bias, calling :func:`route`;
- :class:`MoE`: router, routed experts and shared experts; its forward (Exercise 11.2) groups the
  tokens by expert and records each expert's load;
- :func:`sequence_balance_loss` (Exercise 11.3), V3's sequence-wise balance loss, and
  :func:`expert_balance_loss`, DeepSeekMoE's expert-level one;
- :func:`update_bias` (Exercise 11.4), V3's auxiliary-loss-free balancing rule, and
  :func:`max_violation`, the imbalance it is judged by;
- :func:`feed_forward_costs` and :func:`expert_combinations` for the chapter's counts, and
  :func:`moe_llama`, :func:`moe_layers`, :func:`train_moe` and :func:`dense_twin` for its experiment;
- :func:`experts_from_hf` and :func:`experts_to_hf`, the converters between the two layouts of the experts.

Exercises in this module: 11.1 :func:`route`, 11.2 :meth:`MoE.forward`, 11.3
:func:`sequence_balance_loss`, 11.4 :func:`update_bias`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .deepseek import DeepSeekConfig, parameter_breakdown
from .exercises import exercise
from .layers import SwiGLU
from .llama import Llama, LlamaConfig

# --------------------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------------------


@exercise("11.1", "DeepSeek-V3's router", points=4)
def route(
    logits: torch.Tensor,
    bias: torch.Tensor | None,
    top_k: int,
    n_groups: int = 1,
    n_limited_groups: int = 1,
    route_scale: float = 1.0,
    score_func: str = "sigmoid",
    norm_topk_prob: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``top_k`` experts for every token and the gate (weight) of each, as DeepSeek-V3 does.

    Work in ``dtype = torch.promote_types(logits.dtype, torch.float32)`` (float32, or float64 for
    float64 logits). For each token (row of ``logits``):

    1. Affinities: ``s = sigmoid(logits)`` (``score_func="sigmoid"``, V3) or ``s = softmax(logits)``
       over the experts (``"softmax"``, V2).
    2. Selection scores: ``c = s + bias`` (``bias`` ``None`` means zeros). The bias moves the
       *selection* only; it never enters a gate.
    3. Group-limited routing: the ``N`` experts form ``n_groups`` groups of ``N / n_groups``
       consecutive experts (group ``g`` is experts ``g·N/n_groups ... (g+1)·N/n_groups - 1``). A group's
       score is the sum of its two highest ``c`` (of its one ``c`` when the groups have one expert)
       for ``"sigmoid"``, its highest ``c`` for ``"softmax"``. The ``n_limited_groups`` groups with the
       highest scores are kept (ties: the lower group index first); in the others every ``c`` becomes
       ``-inf`` (not 0: a selection score may be negative, and a 0 would beat it).
    4. Top-k: the ``top_k`` experts with the highest ``c`` after masking, **in descending order of
       ``c``, ties to the lower expert index** (a stable sort: ``torch.topk`` promises neither).
    5. Gates: the *unbiased* affinities ``s`` of those experts, divided by their sum if
       ``norm_topk_prob``, then multiplied by ``route_scale``.

    With ``n_groups == n_limited_groups`` no expert is masked. The gates are differentiable with
    respect to ``logits`` (gather them from ``s``; the indices carry no gradient).

    Args:
        logits: ``(tokens, N)``, the router's logits, floating point.
        bias: ``None`` or a floating-point tensor of shape ``(N,)`` (V3's ``e_score_correction_bias``).
        top_k: experts per token, a positive ``int``.
        n_groups: a positive ``int`` dividing ``N``.
        n_limited_groups: groups kept, a positive ``int``, at most ``n_groups``.
        route_scale: a positive number (V3: 2.5).
        score_func: ``"sigmoid"`` or ``"softmax"``.
        norm_topk_prob: a ``bool``.

    Returns:
        ``(weights, indices)``: ``weights`` of shape ``(tokens, top_k)`` in ``dtype``, and ``indices``
        of shape ``(tokens, top_k)``, ``int64``, in the order of step 4.

    Raises:
        ValueError: if ``logits`` is not a 2-D floating-point tensor; ``bias`` is neither ``None`` nor a
            floating-point tensor of shape ``(N,)``; ``top_k``, ``n_groups`` or ``n_limited_groups`` is
            not a positive ``int`` (``bool`` refused); ``top_k > N``; ``n_groups`` does not divide ``N``;
            ``n_limited_groups > n_groups``; the kept groups hold fewer than ``top_k`` experts
            (``n_limited_groups · N / n_groups < top_k``); ``route_scale`` is not a positive finite
            number; ``score_func`` is unknown; or ``norm_topk_prob`` is not a ``bool``.

    Example:
        >>> logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]])
        >>> weights, indices = route(logits, None, top_k=2)
        >>> indices
        tensor([[1, 3]])
    """
    raise NotImplementedError


class Router(nn.Module):
    """DeepSeek-V3's gate (Hugging Face's ``DeepseekV3TopkRouter``): a linear map to one logit per
    routed expert, and :func:`route`.

    Args:
        config: a :class:`~course_lib.deepseek.DeepSeekConfig` (its ``d_model``, ``n_routed_experts``,
            ``n_activated_experts``, ``n_groups``, ``n_limited_groups``, ``route_scale``,
            ``score_func`` and ``norm_topk_prob``).

    Attributes:
        weight: ``(n_routed_experts, d_model)``, a parameter (normal, standard deviation 0.02).
        e_score_correction_bias: ``(n_routed_experts,)``, a persistent buffer of zeros: the bias of
            the auxiliary-loss-free rule, changed by :func:`update_bias`, never by gradients.
        last_scores: the affinities ``s`` of the last call, ``(tokens, n_routed_experts)`` (``None``
            before the first call), kept with their gradient for a balance loss.

    The logits are computed in ``torch.promote_types(x.dtype, torch.float32)``, as Hugging Face
    computes them in float32 whatever the model's dtype.
    """

    def __init__(self, config: DeepSeekConfig):
        super().__init__()
        if not isinstance(config, DeepSeekConfig):
            raise ValueError(f"config must be a DeepSeekConfig, got {type(config).__name__}")
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts))
        self.last_scores: torch.Tensor | None = None

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"experts={c.n_routed_experts}, top_k={c.n_activated_experts}, groups={c.n_limited_groups} of "
            f"{c.n_groups}, score_func={c.score_func!r}, route_scale={c.route_scale}"
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights, indices)`` of :func:`route` for the ``tokens`` rows of ``x``, ``(tokens, d_model)``."""
        c = self.config
        dtype = torch.promote_types(x.dtype, torch.float32)
        logits = F.linear(x.to(dtype), self.weight.to(dtype))  # (tokens, experts)
        self.last_scores = logits.sigmoid() if c.score_func == "sigmoid" else logits.softmax(dim=-1)
        bias = self.e_score_correction_bias.to(dtype)
        return route(
            logits,
            bias,
            c.n_activated_experts,
            c.n_groups,
            c.n_limited_groups,
            c.route_scale,
            c.score_func,
            c.norm_topk_prob,
        )


# --------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------


class MoE(nn.Module):
    """DeepSeek's Mixture-of-Experts feed-forward (Hugging Face's ``DeepseekV3MoE``).

    Args:
        config: a :class:`~course_lib.deepseek.DeepSeekConfig`.

    Attributes:
        gate: a :class:`Router`.
        experts: ``n_routed_experts`` ``layers.SwiGLU(d_model, moe_d_ff)`` in an ``nn.ModuleList``.
        shared_experts: one ``SwiGLU(d_model, moe_d_ff * n_shared_experts)`` (the shared experts side
            by side are one wider SwiGLU, as Hugging Face stores them), or ``None`` without shared experts.
        last_load: after a call, ``(n_routed_experts,)`` ``int64``: how many tokens each routed expert
            received (``None`` before the first call).
        last_indices: after a call, the experts chosen, ``(*x.shape[:-1], n_activated_experts)``.
    """

    def __init__(self, config: DeepSeekConfig):
        super().__init__()
        if not isinstance(config, DeepSeekConfig):
            raise ValueError(f"config must be a DeepSeekConfig, got {type(config).__name__}")
        self.config = config
        self.d_model = config.d_model
        self.n_experts, self.top_k = config.n_routed_experts, config.n_activated_experts
        self.gate = Router(config)
        self.experts = nn.ModuleList(SwiGLU(config.d_model, config.moe_d_ff) for _ in range(config.n_routed_experts))
        shared = config.moe_d_ff * config.n_shared_experts
        self.shared_experts = SwiGLU(config.d_model, shared) if shared else None
        self.last_load: torch.Tensor | None = None
        self.last_indices: torch.Tensor | None = None

    @exercise("11.2", "The MoE forward: dispatch and combine", points=4)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Send every token of ``x`` to its experts and add up what they return, weighted by the gates.

        1. Route: flatten ``x`` to ``(tokens, d_model)`` and call ``self.gate`` on it, which returns
           ``(weights, indices)``, both ``(tokens, top_k)``.
        2. Dispatch, grouped by expert: there are ``tokens · top_k`` (token, expert) copies. Sort them
           by expert (``torch.argsort`` of the flattened indices), count each expert's copies
           (``torch.bincount``) and run each expert that received any **once**, on all of its tokens
           together. A Python loop over the experts is fine; a loop over tokens is not.
        3. Combine: multiply each expert output by its gate, cast to ``x.dtype`` and add it into the
           row of its token (``index_add_``). A token's routed output is
           ``sum_j weights[t, j] · experts[indices[t, j]](x_t)``.
        4. Add ``self.shared_experts(x)`` (when there are shared experts) and reshape to ``x.shape``.

        Record ``self.last_load``: the ``int64`` tensor ``(n_routed_experts,)`` counting the copies
        sent to each expert in this call (it sums to ``tokens · top_k``), and ``self.last_indices``,
        the chosen experts, ``indices`` reshaped to ``(*x.shape[:-1], top_k)``. Store them without
        gradient. ``x`` is not modified; autograd differentiates the result with respect to the
        experts' weights, the router's weight and ``x``.

        Equal (to rounding) to Hugging Face's ``DeepseekV3MoE`` holding the same weights and routing bias.

        Args:
            x: a floating-point tensor of shape ``(..., d_model)`` (at least 2-D) in the dtype of the
                experts' weights.

        Returns:
            A tensor of the shape and dtype of ``x``.

        Raises:
            ValueError: if ``x`` is not a floating-point tensor of at least two dimensions whose last
                is ``d_model`` (the message names the width expected and the one given).

        Example:
            >>> moe = MoE(DeepSeekConfig.tiny())  # width 48, 12 experts, 3 per token
            >>> moe(torch.randn(2, 5, 48)).shape, int(moe.last_load.sum())
            (torch.Size([2, 5, 48]), 30)
        """
        raise NotImplementedError

    @torch.no_grad()
    def update_bias(self, gamma: float = 1e-3, load: torch.Tensor | None = None) -> None:
        """V3's auxiliary-loss-free step for this layer: the routing bias moves by :func:`update_bias`
        (in place, outside autograd) of ``load``, by default the load of the last call (distributed
        training passes that load summed over the processes)."""
        if load is None:
            if self.last_load is None:
                raise ValueError("update_bias needs the load of a forward pass: call the layer first")
            load = self.last_load
        bias = self.gate.e_score_correction_bias
        bias.copy_(update_bias(bias, load, gamma))


def experts_from_hf(state: dict) -> dict:
    """A state dict in Hugging Face's layout (``...experts.gate_up_proj`` ``(N, 2I, d)``, whose first
    ``I`` rows per expert are the gate's; ``...experts.down_proj`` ``(N, d, I)``) in the course's:
    ``...experts.{i}.gate_proj.weight`` ``(I, d)``, ``up_proj`` ``(I, d)``, ``down_proj`` ``(d, I)``.
    Every other entry is kept as it is. Works for any prefix (a whole model's state dict)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            gate, up = tensor.chunk(2, dim=1)  # (N, I, d) each
            for i in range(tensor.shape[0]):
                out[f"{prefix}{i}.gate_proj.weight"] = gate[i].clone()
                out[f"{prefix}{i}.up_proj.weight"] = up[i].clone()
        elif name.endswith("experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for i in range(tensor.shape[0]):
                out[f"{prefix}{i}.down_proj.weight"] = tensor[i].clone()
        else:
            out[name] = tensor
    return out


def experts_to_hf(state: dict) -> dict:
    """The inverse of :func:`experts_from_hf`: the course's per-expert SwiGLU weights stacked into
    Hugging Face's ``experts.gate_up_proj`` and ``experts.down_proj``."""
    out, stacks = {}, {}
    for name, tensor in state.items():
        head, sep, tail = name.rpartition("experts.")
        index, _, rest = tail.partition(".")
        if sep and index.isdigit() and rest in ("gate_proj.weight", "up_proj.weight", "down_proj.weight"):
            stacks.setdefault(head + sep, {}).setdefault(rest, {})[int(index)] = tensor
        else:
            out[name] = tensor
    for prefix, parts in stacks.items():
        n = len(parts["down_proj.weight"])
        gate = torch.stack([parts["gate_proj.weight"][i] for i in range(n)])  # (N, I, d)
        up = torch.stack([parts["up_proj.weight"][i] for i in range(n)])
        out[f"{prefix}gate_up_proj"] = torch.cat([gate, up], dim=1)  # (N, 2I, d): the gate's rows first
        out[f"{prefix}down_proj"] = torch.stack([parts["down_proj.weight"][i] for i in range(n)])  # (N, d, I)
    return out


# --------------------------------------------------------------------------------------
# Load balancing
# --------------------------------------------------------------------------------------


@exercise("11.3", "V3's sequence-wise balance loss", points=3)
def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float = 1e-4) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (V3 report §2.1.2, equations 17–20).

    For each sequence of ``T`` tokens, with ``N`` routed experts and ``K`` chosen per token:

        s'_{i,t} = s_{i,t} / sum_j s_{j,t}                    affinities normalised per token
        f_i = N / (K T) · #{t : expert i is among token t's indices}
        P_i = (1 / T) · sum_t s'_{i,t}
        L   = alpha · sum_i f_i P_i

    and the result is the mean of ``L`` over the sequences of the batch. ``f_i`` is a count: it
    carries no gradient; the gradient reaches the router through ``P_i``. With every expert chosen
    equally often (``f_i = 1``) ``L = alpha``, whatever the affinities.

    Args:
        scores: ``(batch, T, N)``, the affinities ``s`` (non-negative, each row with a positive sum;
            the router's ``last_scores``), floating point.
        indices: ``(batch, T, K)`` integer tensor, each token's chosen experts (distinct, in ``[0, N)``).
        alpha: the balance factor, a positive number (V3: 0.0001).

    Returns:
        A 0-dim tensor of the dtype of ``scores``.

    Raises:
        ValueError: if ``scores`` is not a 3-D floating-point tensor; ``indices`` is not an integer
            tensor (``bool`` refused) of shape ``(batch, T, K)`` with ``1 <= K <= N`` matching ``scores``;
            an index lies outside ``[0, N)``; or ``alpha`` is not a positive finite number.

    Example:
        >>> scores = torch.full((1, 4, 4), 0.5)  # one sequence of 4 tokens, 4 experts
        >>> indices = torch.tensor([[[0], [1], [2], [3]]])  # each expert chosen once: balanced
        >>> sequence_balance_loss(scores, indices, alpha=1.0)
        tensor(1.)
    """
    raise NotImplementedError


def expert_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """DeepSeekMoE's expert-level balance loss (Dai et al., 2024, §3.3, equations 12–14), for softmax
    affinities ``scores`` ``(tokens, N)`` and chosen ``indices`` ``(tokens, K)``: ``alpha · sum_i f_i P_i``
    with ``f_i`` and ``P_i`` counted over *all* the tokens (the batch), not per sequence.

    It is :func:`sequence_balance_loss` on one sequence holding every token: softmax rows already
    sum to one, so V3's normalisation changes nothing. ``alpha`` has DeepSeekMoE 2B's value, 0.01."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError(f"scores must be a (tokens, experts) tensor, got {getattr(scores, 'shape', scores)!r}")
    if not torch.allclose(scores.sum(-1), torch.ones((), dtype=scores.dtype), atol=1e-4):
        raise ValueError("expert_balance_loss takes softmax affinities: every row of scores must sum to one")
    return sequence_balance_loss(scores[None], indices[None], alpha)


@exercise("11.4", "The auxiliary-loss-free bias update", points=2)
def update_bias(bias: torch.Tensor, load: torch.Tensor, gamma: float = 1e-3) -> torch.Tensor:
    """DeepSeek-V3's auxiliary-loss-free balancing step (V3 report §2.1.2): the new routing bias

        b_i  <-  b_i + gamma · sign(mean(load) - load_i)

    An overloaded expert (more tokens than the mean) loses ``gamma``, an underloaded one gains it,
    and an expert exactly at the mean keeps its bias (``sign(0) = 0``). Compare each load with the
    mean in float64 (exactly, for counts), then return the result in the dtype of ``bias``.

    Args:
        bias: the routing bias, a 1-D floating-point tensor ``(N,)``. It is **not** modified: the
            result is a new tensor (:meth:`MoE.update_bias` copies it into the layer's buffer).
        load: ``(N,)``, the tokens each expert received in the step (an integer or floating-point
            tensor; ``bool`` refused).
        gamma: the bias update speed, a positive finite number (V3: 0.001 for most of pre-training).

    Returns:
        A new tensor of the shape and dtype of ``bias``.

    Raises:
        ValueError: if ``bias`` is not a 1-D floating-point tensor, ``load`` is not a real tensor of
            the same shape, or ``gamma`` is not a positive finite number (``bool`` refused).

    Example:
        >>> update_bias(torch.zeros(3), torch.tensor([5, 3, 1]), gamma=0.5)  # mean 3
        tensor([-0.5000,  0.0000,  0.5000])
    """
    raise NotImplementedError


def max_violation(load: torch.Tensor) -> float:
    """The maximal violation of a load (Wang et al., 2024, arXiv:2408.15664, §4.1):
    ``max_i load_i / mean(load) - 1``. 0 for a perfectly balanced load; ``N - 1`` when one of ``N``
    experts takes everything."""
    if not isinstance(load, torch.Tensor) or load.ndim != 1 or load.numel() == 0:
        raise ValueError(f"load must be a non-empty 1-D tensor, got {getattr(load, 'shape', load)!r}")
    load = load.double()
    mean = load.mean()
    if not mean > 0:
        raise ValueError("load must have a positive mean")
    return float(load.max() / mean - 1)


# --------------------------------------------------------------------------------------
# What it costs, and a tiny MoE language model
# --------------------------------------------------------------------------------------


def feed_forward_costs(config: DeepSeekConfig) -> dict[str, int]:
    """Parameters and matrix-product FLOPs per token of one MoE layer of ``config`` (Python ints).

    Keys: ``moe_parameters`` (routed and shared experts and the router), ``moe_active_parameters``
    (those one token uses: ``n_activated_experts`` routed experts, the shared ones, the router),
    ``moe_flops`` (``2 ×`` the active parameters: a multiply and an add each), ``dense_d_ff`` (the
    width of one dense SwiGLU with as many parameters as the whole MoE layer) and ``dense_flops``
    (its FLOPs per token: ``2 ×`` all of them).
    """
    c, parts = config, parameter_breakdown(config)
    shared_and_router = parts["shared_experts"] + parts["router"]
    total = c.n_routed_experts * parts["expert"] + shared_and_router
    active = c.n_activated_experts * parts["expert"] + shared_and_router
    return {
        "moe_parameters": total,
        "moe_active_parameters": active,
        "moe_flops": 2 * active,
        "dense_d_ff": total // (3 * c.d_model),
        "dense_flops": 2 * total,
    }


def moe_llama(llama_config: LlamaConfig, moe_config: DeepSeekConfig, seed: int = 0) -> Llama:
    """Chapter 8's :class:`~course_lib.llama.Llama` with every block's SwiGLU replaced by an
    :class:`MoE` of ``moe_config`` (whose ``d_model`` must be the Llama's). Seeded: the same ``seed``
    gives the same weights. The block's other layers (attention, RMSNorms, RoPE) are unchanged."""
    if moe_config.d_model != llama_config.d_model:
        raise ValueError(f"the MoE's d_model ({moe_config.d_model}) must be the model's ({llama_config.d_model})")
    torch.manual_seed(seed)
    model = Llama(llama_config)
    for block in model.model.layers:
        block.mlp = MoE(moe_config)
        for module in block.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)  # Llama's initialisation, as for the dense model
    return model


def moe_layers(model: nn.Module) -> list[MoE]:
    """The :class:`MoE` layers of ``model``, in order."""
    return [module for module in model.modules() if isinstance(module, MoE)]


def train_moe(
    model: Llama,
    ids: torch.Tensor,
    steps: int,
    batch_size: int,
    context_length: int,
    balance: str = "none",
    lr: float = 3e-3,
    alpha: float = 1e-4,
    gamma: float = 1e-3,
    seed: int = 0,
    val_batches: list | None = None,
) -> dict[str, list]:
    """Train a model with MoE layers as :func:`course_lib.training.train` does (AdamW with its
    weight decay, warm-up and cosine decay to a tenth, clipping at 1, seeded batches from
    :func:`course_lib.data.get_batch`), with one of three balancing rules:

    - ``"none"``: the language-model loss alone;
    - ``"aux"``: plus :func:`sequence_balance_loss` (factor ``alpha``) of every MoE layer (V3's complementary loss);
    - ``"bias"``: after each step, :meth:`MoE.update_bias` with ``gamma`` on every MoE layer, from the
      load of that step's batch (V3's auxiliary-loss-free rule).

    Returns:
        ``{"loss": [language-model loss per step], "load": [per step, a list of each MoE layer's
        load as a list of ints], "max_violation": [per step, the mean over layers of
        :func:`max_violation`], "val": held-out loss at the end (with ``val_batches``)}``.
    """
    from .data import get_batch
    from .training import apply_schedule, clip_grad_norm, cross_entropy_loss, evaluate, make_optimizer

    if balance not in ("none", "aux", "bias"):
        raise ValueError(f"balance must be 'none', 'aux' or 'bias', got {balance!r}")
    layers = moe_layers(model)
    optimizer = make_optimizer(model, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list] = {"loss": [], "load": [], "max_violation": []}
    model.train()
    for step in range(steps):
        apply_schedule(optimizer, step, lr, steps)
        x, y = get_batch(ids, batch_size, context_length, generator)
        optimizer.zero_grad()
        loss = cross_entropy_loss(model(x), y)
        total = loss
        if balance == "aux":
            for layer in layers:
                scores = layer.gate.last_scores.view(batch_size, context_length, -1)  # (batch, T, N)
                total = total + sequence_balance_loss(scores, layer.last_indices, alpha)
        total.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        if balance == "bias":
            for layer in layers:
                layer.update_bias(gamma)
        loads = [layer.last_load for layer in layers]
        history["loss"].append(float(loss.detach()))
        history["load"].append([load.tolist() for load in loads])
        history["max_violation"].append(sum(max_violation(load) for load in loads) / len(loads))
    model.eval()
    if val_batches is not None:
        history["val"] = evaluate(model, val_batches)
    return history


def dense_twin(llama_config: LlamaConfig, moe_config: DeepSeekConfig) -> LlamaConfig:
    """The dense Llama configuration whose SwiGLU has the width a token uses in ``moe_config``'s MoE
    (``n_activated_experts + n_shared_experts`` experts side by side): the same active parameters,
    the router's excepted."""
    width = moe_config.moe_d_ff * (moe_config.n_activated_experts + moe_config.n_shared_experts)
    return dataclasses.replace(llama_config, d_ff=width)


def expert_combinations(n_experts: int, top_k: int) -> int:
    """The number of different sets of ``top_k`` experts among ``n_experts``: ``C(n_experts, top_k)``."""
    return math.comb(n_experts, top_k)
