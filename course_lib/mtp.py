"""Chapter 12 — multi-token prediction: DeepSeek-V3's sequential MTP modules, their loss, and speculative decoding.

A language model's head predicts one token ahead. DeepSeek-V3 (DeepSeek-AI, 2024, arXiv:2412.19437, §2.2) adds
``D`` sequential **MTP modules** that predict further: module ``k`` combines the representation of position ``i``
at depth ``k - 1`` (the trunk's final hidden state for ``k = 1``) with the embedding of token ``t_{i+k}``, runs one
transformer block over the sequence, and predicts ``t_{i+k+1}`` with the trunk's own output head:

    h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h_i)])      # (2 d -> d), no bias
    h^k  = Block(h'_{0 .. n-1})                            # causal over the shortened sequence
    P^k  = OutHead(shared_head.norm(h^k))                  # logits of t_{i+k+1}

The embedding and the output head are the trunk's (shared, as in V3); the two RMSNorms, the projection, the block
and the norm before the head belong to the module. The names are those of DeepSeek-V3's checkpoint
(``README_WEIGHTS.md``: ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head``; its block is ``model.layers.61``).

- :class:`MTPModule` is one module, given its block (here a Llama block; the full DeepSeek model gives it a
  DeepSeek decoder layer);
- :func:`mtp_loss` is V3's training objective for the modules, ``lambda / D`` times the sum of their losses;
- :func:`speculative_generate` decodes greedily with module 1 as the draft, and gives the same tokens as plain
  greedy decoding;
- :class:`MTPLlama`, :func:`train_mtp` and :func:`main` are the chapter's finished experiment: Part II's Llama with
  MTP modules, trained with and without their loss (``python -m course_lib.mtp --steps N``).

Exercises in this module: 12.1 :meth:`MTPModule.forward`, 12.2 :func:`mtp_loss`, 12.3 :func:`speculative_generate`.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from .exercises import exercise
from .layers import RMSNorm
from .llama import Llama, LlamaBlock, LlamaConfig
from .validation import check_positive_int as _check_positive_int

#: DeepSeek-V3's MTP loss weight (arXiv:2412.19437, §4.2 "Training Hyper-Parameters"): 0.3 for the first 10T
#: training tokens, 0.1 for the remaining 4.8T; and its number of MTP modules (D = 1).
V3_MTP_WEIGHTS = {"first 10T tokens": 0.3, "remaining 4.8T tokens": 0.1}
V3_MTP_DEPTH = 1

#: What V3's report measures when module 1 drafts for speculative decoding (§5.4.3): the second token is accepted
#: 85% to 90% of the time, and decoding runs 1.8 times as many tokens per second.
V3_SECOND_TOKEN_ACCEPTANCE = (0.85, 0.90)
V3_SPEEDUP_TPS = 1.8


# --------------------------------------------------------------------------------------
# One MTP module
# --------------------------------------------------------------------------------------


class MTPModule(nn.Module):
    """One of DeepSeek-V3's sequential multi-token prediction modules.

    Args:
        d_model: the width of the trunk's hidden states, a positive ``int``.
        block: the module's transformer block, any ``nn.Module`` that maps ``(batch, seq, d_model)`` to the same
            shape causally (here a :class:`~course_lib.llama.LlamaBlock`; extra arguments it needs, such as
            RoPE's tables, are passed through :meth:`forward`'s keyword arguments).
        norm_eps: the RMSNorms' ``eps`` (V3: 1e-6).

    Attributes (DeepSeek-V3's checkpoint names):
        enorm: ``RMSNorm(d_model)`` on the embedding of the next token.
        hnorm: ``RMSNorm(d_model)`` on the previous depth's hidden state.
        eh_proj: ``nn.Linear(2 * d_model, d_model, bias=False)`` on their concatenation, embedding first.
        block: the block above.
        shared_head.norm: ``RMSNorm(d_model)`` before the output head (its own weights; only the head is shared).

    The embedding and the output head are the trunk's, passed to :meth:`forward` at call time, so that they stay
    shared with the trunk (in a state dict they appear once, under the trunk).
    """

    def __init__(self, d_model: int, block: nn.Module, norm_eps: float = 1e-6):
        super().__init__()
        _check_positive_int("d_model", d_model)
        if not isinstance(block, nn.Module):
            raise ValueError(f"block must be an nn.Module, got {type(block).__name__}")
        self.d_model = d_model
        self.enorm = RMSNorm(d_model, norm_eps)
        self.hnorm = RMSNorm(d_model, norm_eps)
        self.eh_proj = nn.Linear(2 * d_model, d_model, bias=False)
        self.block = block
        self.shared_head = nn.Module()  # a container, so that the checkpoint's name shared_head.norm holds
        self.shared_head.norm = RMSNorm(d_model, norm_eps)
        nn.init.normal_(self.eh_proj.weight, mean=0.0, std=0.02)  # as the Llama trunk initialises its matrices

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"

    @exercise("12.1", "The MTP module", points=3)
    def forward(
        self, hidden: torch.Tensor, next_ids: torch.Tensor, embed: nn.Module, head: nn.Module, **block_kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict one token further: combine each position's hidden state with the token that follows it.

        At depth ``k``, ``hidden[:, i]`` is the depth ``k - 1`` representation of position ``i`` (the trunk's final
        hidden state, after its last norm, for ``k = 1``) and ``next_ids[:, i]`` is the token ``t_{i+k}``: the caller
        aligns them (the inputs shifted by ``k``, and the hidden states shortened to match). For every position:

            h'_i = eh_proj(concat(enorm(embed(next_ids_i)), hnorm(hidden_i)))    # the embedding's half first
            h    = self.block(h', **block_kwargs)                                 # over all positions at once
            logits_i = head(shared_head.norm(h_i))                                # the scores of t_{i+k+1}

        ``enorm`` normalises the embedding, ``hnorm`` the hidden state; the concatenation puts the normalised
        embedding in the first ``d_model`` features, as DeepSeek-V3's released weights (and Hugging Face's and
        vLLM's implementations of them) do. ``block_kwargs`` are passed to the block unchanged (a Llama block needs
        ``rope=...``; nothing else is passed to it). ``embed`` and ``head`` are the trunk's modules, used as they
        are.

        Args:
            hidden: ``(batch, n, d_model)``, floating point, in the dtype of the module's weights.
            next_ids: ``(batch, n)`` integer token ids.
            embed: the token embedding, a module mapping ``(batch, n)`` ids to ``(batch, n, d_model)``.
            head: the output head, a module mapping ``(batch, n, d_model)`` to ``(batch, n, vocab)``.
            **block_kwargs: keyword arguments for ``self.block``.

        Returns:
            ``(logits, h)``: the logits ``(batch, n, vocab)`` and the block's output ``h`` ``(batch, n, d_model)``,
            *before* ``shared_head.norm``: the representation the next module (depth ``k + 1``) takes as its
            ``hidden``.

        Raises:
            ValueError: if ``hidden`` is not a 3-D floating-point tensor of width ``d_model`` with at least one
                position, or ``next_ids`` is not an integer tensor of shape ``(batch, n)`` matching it.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------


@exercise("12.2", "The MTP loss", points=3)
def mtp_loss(depth_logits: list[torch.Tensor], targets: torch.Tensor, weight: float) -> torch.Tensor:
    """DeepSeek-V3's multi-token prediction loss: ``weight / D`` times the sum of the ``D`` depths' cross-entropies.

    ``targets`` are the main model's: ``targets[:, i]`` is the token after position ``i``, ``t_{i+1}``, for a window
    of ``T`` positions. Depth ``k`` (``depth_logits[k - 1]``, ``k = 1 ... D``) predicts ``t_{i+k+1}`` at positions
    ``i = 0 ... T - k - 1``, so its targets are ``targets[:, k:]`` and its logits have ``T - k`` positions. Its loss
    ``L_k`` is the mean cross-entropy (natural log) over its valid positions: a target equal to ``-100`` (PyTorch's
    ``ignore_index``) is left out of the mean. The result is

        L_MTP = weight / D * (L_1 + ... + L_D)

    (V3 report, eq. 24-25; V3 uses ``D = 1`` and a weight of 0.3, then 0.1). It is differentiable with respect to
    every depth's logits, and computed in their dtype.

    Args:
        depth_logits: a non-empty list of ``D`` tensors; element ``k - 1`` has shape ``(batch, T - k, vocab)``.
        targets: ``(batch, T)`` integer token ids (``-100``: ignored).
        weight: ``lambda``, a finite number ``>= 0`` (``int`` or ``float``).

    Returns:
        A 0-dim tensor in the logits' dtype.

    Raises:
        ValueError: for an empty list or one that is not a list or tuple of tensors, ``T <= D`` (a window too short
            for the depth), logits of the wrong shape, integer targets of the wrong shape or dtype, a depth with
            no valid target, or a weight that is negative, not finite or not a number.
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# Speculative decoding with the MTP module as the draft
# --------------------------------------------------------------------------------------


def trunk_hidden(trunk: Llama, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's logits ``(batch, seq, vocab)`` and its final hidden states ``(batch, seq, d_model)`` (after its
    last norm: what ``lm_head`` reads, and what MTP module 1 takes), from one forward pass."""
    hidden = trunk.model(ids)  # (batch, seq, d_model)
    return trunk.lm_head(hidden), hidden


@exercise("12.3", "Speculative decoding with the MTP draft", points=4)
def speculative_generate(
    trunk: Llama, mtp: MTPModule, ids: torch.Tensor, max_new_tokens: int
) -> tuple[torch.Tensor, dict[str, int]]:
    """Greedy decoding in which MTP module 1 drafts the token after next, and one trunk pass checks it.

    ``trunk`` is a :class:`~course_lib.llama.Llama` and ``mtp`` an :class:`MTPModule` whose block is a Llama block
    (called with ``rope=trunk.model.rotary_emb``), sharing the trunk's ``model.embed_tokens`` and ``lm_head``. Use
    :func:`trunk_hidden` for the trunk's logits and hidden states. The loop:

    1. One trunk pass over the prompt; the main head's greedy token (the argmax of the last position's logits,
       first index on ties, as ``torch.argmax``) is the next token. Append it.
    2. While tokens remain to produce: MTP module 1 drafts the token after it, from the trunk's hidden states of
       every position so far paired with the tokens that follow them (the last pair: the last hidden state and the
       token just appended); the draft is the argmax of the module's logits at the last position.
    3. One trunk pass over the text plus the draft (a full pass, no cache). Its logits at the position before the
       draft give the main head's greedy choice there: if it equals the draft, the draft is **accepted** and
       appended, and the logits at the draft's own position give the next token, appended too (if room remains);
       if not, the draft is rejected and the main head's choice is appended instead. Go to 2.

    No draft is made once ``max_new_tokens`` tokens are produced, so the last pass is never wasted. Every appended
    token is the main head's greedy choice given the tokens before it, so the result equals plain greedy decoding
    token for token (a causal trunk's logits at a position do not depend on the draft after it).

    ``trunk`` and ``mtp`` run in evaluation mode and are left in the train/eval mode they were in (no gradient is
    needed: ``torch.no_grad()`` saves the memory).

    Args:
        trunk: the main model.
        mtp: MTP module 1 of ``trunk``.
        ids: ``(1, T)`` integer prompt, ``T >= 1`` (one text: each text would accept different drafts).
        max_new_tokens: an ``int >= 0``; the prompt and the new tokens must fit the trunk's context length.

    Returns:
        ``(tokens, stats)``: ``tokens``, ``(1, T + max_new_tokens)`` int64, the prompt then the new tokens; and
        ``stats = {"forwards": trunk passes, "drafted": drafts made, "accepted": drafts accepted}`` (Python ints).
        With ``max_new_tokens = 0``: the prompt and zeros.

    Raises:
        ValueError: if ``ids`` is not a ``(1, T)`` integer tensor with ``T >= 1``, ``max_new_tokens`` is not an
            ``int >= 0`` (a bool is not), or ``T + max_new_tokens`` exceeds ``trunk.config.context_length``.
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The chapter's experiment: a Llama with MTP modules
# --------------------------------------------------------------------------------------


class MTPLlama(nn.Module):
    """Part II's :class:`~course_lib.llama.Llama` with ``depth`` sequential MTP modules (V3: ``depth = 1``).

    Attributes:
        trunk: the :class:`~course_lib.llama.Llama`; its ``model.embed_tokens`` and ``lm_head`` serve the modules too.
        mtp: an ``nn.ModuleList`` of ``depth`` :class:`MTPModule` s, each with a :class:`~course_lib.llama.LlamaBlock`
            of the trunk's configuration.

    The trunk is built first, so with the same seed its initial weights are those of a plain ``Llama(config)``.
    """

    def __init__(self, config: LlamaConfig, depth: int = 1):
        super().__init__()
        _check_positive_int("depth", depth)
        self.config, self.depth = config, depth
        self.trunk = Llama(config)
        self.mtp = nn.ModuleList(MTPModule(config.d_model, LlamaBlock(config), config.norm_eps) for _ in range(depth))
        for module in self.mtp:
            for sub in module.block.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, mean=0.0, std=0.02)

    def forward(self, ids: torch.Tensor, depths: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The main logits ``(batch, T, vocab)`` and the logits of depths ``1 ... depths`` (default: all), depth
        ``k``'s of shape ``(batch, T - k, vocab)``: module ``k`` pairs the first ``T - k`` hidden states of depth
        ``k - 1`` with the tokens ``ids[:, k:]``."""
        depths = self.depth if depths is None else depths
        if type(depths) is not int or not 0 <= depths <= self.depth:
            raise ValueError(f"depths must be an int from 0 to {self.depth}, got {depths!r}")
        if depths >= ids.shape[1]:
            raise ValueError(f"a window of {ids.shape[1]} tokens is too short for {depths} MTP depths")
        logits, hidden = trunk_hidden(self.trunk, ids)
        model = self.trunk.model
        per_depth = chain_depths(
            self.mtp[:depths], hidden, ids, model.embed_tokens, self.trunk.lm_head, rope=model.rotary_emb
        )
        return logits, per_depth


def chain_depths(modules, hidden: torch.Tensor, ids: torch.Tensor, embed: nn.Module, head: nn.Module, **block_kwargs):
    """Run sequential MTP modules on a trunk's final hidden states ``(batch, T, d_model)`` for the tokens ``ids``
    ``(batch, T)``: module ``k`` (from 1) pairs the first ``T - k`` hidden states of depth ``k - 1`` with the tokens
    ``ids[:, k:]``; returns each depth's logits, depth ``k``'s of shape ``(batch, T - k, vocab)``."""
    per_depth = []
    for k, module in enumerate(modules, start=1):
        depth_logits, hidden = module(hidden[:, : ids.shape[1] - k], ids[:, k:], embed, head, **block_kwargs)
        per_depth.append(depth_logits)
    return per_depth


def train_mtp(
    model: MTPLlama,
    ids: torch.Tensor,
    steps: int,
    batch_size: int,
    context_length: int,
    weight: float,
    lr: float = 3e-3,
    seed: int = 0,
    max_grad_norm: float = 1.0,
) -> dict[str, list[float]]:
    """Train ``model`` on random windows of ``ids`` with the loss ``main + mtp_loss(depths, targets, weight)``.

    The recipe of :func:`course_lib.training.train` (AdamW from :func:`~course_lib.training.make_optimizer`, a
    warm-up over ``steps // 20`` steps and a cosine decay to ``lr / 10``, :func:`~course_lib.training.apply_schedule`,
    clipping at ``max_grad_norm``, batches from :func:`~course_lib.data.get_batch` seeded by ``seed``), with MTP's
    loss added. With ``weight = 0`` the modules are not run at all, so the trunk trains exactly as a plain Llama
    with the same seed and batches would.

    Returns:
        ``{"main": [the main head's loss at each step], "mtp": [the MTP term at each step, 0 when weight = 0]}``.
    """
    from .data import get_batch
    from .training import apply_schedule, clip_grad_norm, cross_entropy_loss, make_optimizer

    _check_positive_int("steps", steps)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, lr=lr)
    history: dict[str, list] = {"main": [], "mtp": []}
    model.train()
    for step in range(steps):
        apply_schedule(optimizer, step, lr, steps)
        x, y = get_batch(ids, batch_size, context_length, generator)  # (batch, T) each
        logits, per_depth = model(x, depths=model.depth if weight else 0)
        main = cross_entropy_loss(logits, y)
        extra = mtp_loss(per_depth, y, weight) if weight else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        (main + extra).backward()
        clip_grad_norm(list(model.parameters()), max_grad_norm)
        optimizer.step()
        history["main"].append(main.item())
        history["mtp"].append(extra.item())
    model.eval()
    return history


@torch.no_grad()
def depth_losses(model: MTPLlama, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """The held-out cross-entropy of the main head (first) and of each MTP depth, averaged over ``batches`` of
    ``(inputs, targets)`` (as :func:`course_lib.data.sliding_windows` makes them)."""
    from .training import cross_entropy_loss

    was_training = model.training
    model.eval()
    totals = [0.0] * (model.depth + 1)
    for x, y in batches:
        logits, per_depth = model(x)
        totals[0] += cross_entropy_loss(logits, y).item()
        for k, depth_logits in enumerate(per_depth, start=1):
            totals[k] += F.cross_entropy(depth_logits.flatten(0, 1), y[:, k:].flatten()).item()
    model.train(was_training)
    return [total / len(batches) for total in totals]


def compare_training(
    config: LlamaConfig,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    steps: int,
    weight: float = 0.3,
    depth: int = 1,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, dict]:
    """The chapter's experiment: two :class:`MTPLlama` s from the same seed, trained on the same batches for the same
    steps, one with the MTP loss (``weight``) and one without (``weight = 0``: its trunk is a plain Llama).

    Returns:
        ``{"with MTP": run, "without MTP": run}``, each run ``{"model", "history", "held_out"}`` with
        ``held_out = depth_losses(...)`` on every window of ``val_ids`` (the main head first).
    """
    from .data import sliding_windows

    windows = [sliding_windows(val_ids, config.context_length, config.context_length)]
    runs = {}
    for name, w in (("with MTP", weight), ("without MTP", 0.0)):
        torch.manual_seed(seed)
        model = MTPLlama(config, depth)
        history = train_mtp(model, train_ids, steps, batch_size, config.context_length, w, lr=lr, seed=seed)
        runs[name] = {"model": model, "history": history, "held_out": depth_losses(model, windows)}
    return runs


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """The chapter's longer run: a miniature Llama trained on Shakespeare with and without MTP (see ``--help``)."""
    import course_lib

    from .baselines import bigram_loss
    from .data import plays_corpus

    parser = argparse.ArgumentParser(prog="python -m course_lib.mtp", description=main.__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--plays", nargs="*", default=["hamlet"])
    parser.add_argument("--vocab-size", type=int, default=384)
    parser.add_argument("--context-length", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--d-ff", type=int, default=160)
    parser.add_argument("--depth", type=int, default=1, help="the number of MTP modules (V3: 1)")
    parser.add_argument("--weight", type=float, default=0.3, help="the MTP loss weight lambda (V3: 0.3, then 0.1)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    course_lib.seed_everything(args.seed)
    train_ids, val_ids, bpe = plays_corpus(args.plays, args.vocab_size)
    config = LlamaConfig(
        vocab_size=bpe.n_vocab,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_ff=args.d_ff,
        context_length=args.context_length,
    )
    runs = compare_training(config, train_ids, val_ids, args.steps, args.weight, args.depth, lr=args.lr)
    print(f"bigram count model: held-out loss {bigram_loss(train_ids, val_ids, bpe.n_vocab):.3f}")
    for name, run in runs.items():
        losses = ", ".join(f"depth {k}: {loss:.3f}" for k, loss in enumerate(run["held_out"][1:], start=1))
        print(f"{name}, {args.steps} steps: main head {run['held_out'][0]:.3f} ({losses})")
    return runs


if __name__ == "__main__":
    main()
