"""Chapter 14 — the capstone experiment: a mini-DeepSeek against a dense model, trained on the same tokens.

The mini-DeepSeek is :class:`course_lib.deepseek.DeepSeek` (MLA, a dense first layer then MoE layers with shared and
fine-grained experts, group-limited sigmoid routing balanced by the bias rule, one MTP module), trained by
:func:`course_lib.deepseek.train_step`. The baseline is Part II's dense :class:`course_lib.llama.Llama` (multi-head
attention, a SwiGLU in every block) whose SwiGLU width is chosen so that its parameters equal the mini-DeepSeek's
**active** parameters (:func:`dense_twin`); it trains with :func:`course_lib.training.train_step`. Both follow
:func:`course_lib.training.train`'s recipe (AdamW with its weight decay, a warm-up and a cosine decay, clipping at 1)
on the same batches of Part III's corpus (:func:`course_lib.data.plays_corpus`), and are measured on the same held-out
batches.

- :func:`mini_config` and :func:`dense_twin`: the two models' sizes;
- :func:`train_run`: one model's training, with the held-out loss against tokens and against wall time, and the
  expert loads of every step;
- :func:`mtp_acceptance`: how often the MTP module's guess is the main model's own greedy choice one step later;
- :func:`compare`: both runs; :func:`main`: the command ``python -m course_lib.capstone --steps N``, which prints the
  results and can store them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import deepseek, llama, moe, training
from .data import get_batch

#: The longer run the chapter quotes, stored by
#: ``python -m course_lib.capstone --steps 1500 --out course_lib/results/ch14_capstone.json`` (in the package, so that a
#: released chapter folder, which carries ``course_lib/``, has it too).
RESULTS = Path(__file__).resolve().parent / "results" / "ch14_capstone.json"


def mini_config(vocab_size: int, context_length: int = 32, **overrides) -> deepseek.DeepSeekConfig:
    """The mini-DeepSeek: width 64, 4 heads, 3 layers (1 dense, then 2 MoE), MLA ranks 32 (queries) and 16 (latent),
    head widths 12 + 4 (RoPE) and 16 (values), 12 routed experts of width 32 in 4 groups (2 kept), top-2, 1 shared,
    route scale 2.5, one MTP module."""
    fields = dict(
        vocab_size=vocab_size,
        d_model=64,
        n_layers=3,
        n_heads=4,
        d_ff=100,
        context_length=context_length,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=12,
        qk_rope_head_dim=4,
        v_head_dim=16,
        n_routed_experts=12,
        n_shared_experts=1,
        n_activated_experts=2,
        moe_d_ff=32,
        n_groups=4,
        n_limited_groups=2,
        route_scale=2.5,
        n_dense_layers=1,
        n_mtp_layers=1,
    )
    return deepseek.DeepSeekConfig(**{**fields, **overrides})


def dense_twin(config: deepseek.DeepSeekConfig, n_heads: int | None = None) -> llama.LlamaConfig:
    """The dense Llama with ``config``'s width, layers, vocabulary and context, and the SwiGLU width that makes its
    parameters closest to ``config``'s active parameters (:func:`~course_lib.deepseek.count_parameters` with
    ``active=True``, the MTP module left out: it is a training aid, not part of the model that answers)."""
    target = deepseek.count_parameters(config, active=True)
    base = llama.LlamaConfig(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=n_heads or config.n_heads,
        d_ff=1,
        context_length=config.context_length,
    )
    per_unit = 3 * config.d_model * config.n_layers  # one more unit of d_ff: three matrices' rows/columns per layer
    d_ff = 1 + round((target - llama.count_parameters(base)) / per_unit)
    if d_ff < 1:
        raise ValueError("the dense model's attention alone already exceeds the active parameters")
    return base.__class__(**{**base.__dict__, "d_ff": d_ff})


def components(config: deepseek.DeepSeekConfig, active: bool = False) -> dict[str, int]:
    """The parameters of ``config``'s model by component, all copies together (``active=True``: those one token
    uses): the pieces of :func:`~course_lib.deepseek.parameter_breakdown` times the number of layers holding them.
    They add up to :func:`~course_lib.deepseek.count_parameters` with ``mtp=True``."""
    parts, c = deepseek.parameter_breakdown(config), config
    experts = c.n_activated_experts if active else c.n_routed_experts
    moe_layers = c.n_moe_layers + c.n_mtp_layers  # each MTP module's block is an MoE block
    return {
        "embedding (Ch. 2)": parts["embedding"],
        "attention: MLA and its norms (Ch. 10)": (c.n_layers + c.n_mtp_layers)
        * (parts["attention"] + parts["block_norms"]),
        "dense SwiGLU (Ch. 6)": c.n_dense_layers * parts["dense_ffn"],
        "routed experts (Ch. 11)": moe_layers * experts * parts["expert"],
        "shared experts (Ch. 11)": moe_layers * parts["shared_experts"],
        "routers (Ch. 11)": moe_layers * parts["router"],
        "MTP projections and norms (Ch. 12)": c.n_mtp_layers * parts["mtp_extra"],
        "final norm and output head (Ch. 5)": parts["final_norm"] + parts["head"],
    }


def _loads(model) -> list[list[int]]:
    return [layer.last_load.tolist() for layer in moe.moe_layers(model)]


@torch.no_grad()
def mtp_acceptance(model: deepseek.DeepSeek, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The share of held-out positions where MTP depth 1's guess equals the main model's own greedy next-next token.

    At position ``i`` the MTP module, given the true token ``t_{i+1}``, guesses ``t_{i+2}``; the main model, reading
    the same text up to ``t_{i+1}``, chooses its greedy token at position ``i + 1``. Were the MTP guess used as a draft
    for speculative decoding (Chapter 12), this is the rate at which the main model would accept it.
    """
    was_training = model.training
    model.eval()
    agree = total = 0
    for x, _ in batches:
        logits, (depth1, *_) = model(x, mtp=True)  # depth1: (batch, T - 1, vocab)
        agree += int((depth1.argmax(-1) == logits[:, 1:].argmax(-1)).sum())
        total += depth1.shape[0] * depth1.shape[1]
    model.train(was_training)
    return agree / total


def train_run(
    model: torch.nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    steps: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    eval_every: int = 25,
    eval_batches: int = 4,
    mtp_weight: float = 0.3,
    bias_rate: float = 0.01,
    progress: bool = False,
) -> dict[str, list]:
    """Train ``model`` (a ``DeepSeek`` through :func:`~course_lib.deepseek.train_step`, anything else through
    :func:`~course_lib.training.train_step`) with :func:`course_lib.training.train`'s recipe, on batches from
    :func:`~course_lib.data.get_batch` seeded by ``seed`` (two models with the same ``seed`` see the same tokens).

    Returns ``{"train": [training loss per step (the main head's)], "val_tokens": [training tokens seen at each
    held-out measurement], "val": [held-out loss], "seconds": [training seconds before each measurement, held-out
    evaluations not counted], "loads": [per step, each MoE layer's expert loads], "max_violation": [per step, the
    mean over MoE layers of :func:`~course_lib.moe.max_violation`]}``; the held-out batches are ``eval_batches``
    windows of ``val_ids`` from a generator seeded by ``seed + 1``, measured before the first step, every
    ``eval_every`` steps and after the last.
    """
    from tqdm.auto import tqdm

    context = model.config.context_length
    generator = torch.Generator().manual_seed(seed)
    val_generator = torch.Generator().manual_seed(seed + 1)
    val = [get_batch(val_ids, batch_size, context, val_generator) for _ in range(eval_batches)]
    optimizer = training.make_optimizer(model, lr=lr)
    is_deepseek = isinstance(model, deepseek.DeepSeek)
    history: dict[str, list] = {"train": [], "val_tokens": [0], "val": [], "seconds": [0.0]}
    history.update(loads=[], max_violation=[])
    history["val"].append(training.evaluate(model, val))
    model.train()
    seconds = 0.0
    for step in tqdm(range(1, steps + 1), disable=not progress, desc=type(model).__name__, mininterval=1.0):
        training.apply_schedule(optimizer, step - 1, lr, steps)
        x, y = get_batch(train_ids, batch_size, context, generator)  # (batch, context) each
        start = time.perf_counter()
        if is_deepseek:
            window = torch.cat([x, y[:, -1:]], dim=1)  # (batch, context + 1): inputs and targets in one
            losses = deepseek.train_step(model, optimizer, window, mtp_weight=mtp_weight, bias_rate=bias_rate)
            history["train"].append(losses["main"])
            loads = _loads(model)
            history["loads"].append(loads[: model.config.n_moe_layers])  # the main stack's layers
            history["max_violation"].append(
                sum(moe.max_violation(torch.tensor(load)) for load in loads) / len(loads) if loads else 0.0
            )
        else:
            history["train"].append(training.train_step(model, optimizer, x, y, max_grad_norm=1.0))
        seconds += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            history["val_tokens"].append(step * batch_size * context)
            history["val"].append(training.evaluate(model, val))
            history["seconds"].append(seconds)
            model.train()
    model.eval()
    history["val_batches"] = val
    return history


def compare(
    train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int, steps: int, seed: int = 0, **kwargs
) -> dict[str, dict]:
    """The chapter's experiment: the mini-DeepSeek (:func:`mini_config`) and its :func:`dense_twin`, each built
    with ``torch.manual_seed(seed)`` and trained by :func:`train_run` on the same batches.

    Returns ``{"mini-DeepSeek": run, "dense": run}``, each ``{"model", "history", "parameters", "active"}``; the
    mini-DeepSeek's run also holds ``"acceptance"`` (:func:`mtp_acceptance` on the held-out batches).
    """
    config = mini_config(vocab_size, **{k: kwargs.pop(k) for k in ("context_length",) if k in kwargs})
    runs = {}
    for name in ("mini-DeepSeek", "dense"):
        torch.manual_seed(seed)
        if name == "dense":
            dense = dense_twin(config)
            model = llama.Llama(dense)
            params = active = llama.count_parameters(dense)
        else:
            model = deepseek.DeepSeek(config)
            params = deepseek.count_parameters(config)
            active = deepseek.count_parameters(config, active=True)
        history = train_run(model, train_ids, val_ids, steps, seed=seed, **kwargs)
        runs[name] = {"model": model, "history": history, "parameters": params, "active": active}
    runs["mini-DeepSeek"]["acceptance"] = mtp_acceptance(
        runs["mini-DeepSeek"]["model"], runs["mini-DeepSeek"]["history"]["val_batches"]
    )
    return runs


def summary(runs: dict[str, dict], bigram: float) -> dict:
    """The numbers the chapter quotes, as plain values (JSON): per model the final held-out loss, its parameters
    (all and active) and training seconds; the mini-DeepSeek's final MaxVio and MTP acceptance; the bigram loss."""
    out = {"bigram": bigram}
    for name, run in runs.items():
        h = run["history"]
        out[name] = {
            "held_out": h["val"][-1],
            "parameters": run["parameters"],
            "active": run["active"],
            "seconds": h["seconds"][-1],
            "tokens": h["val_tokens"][-1],
        }
    ds = runs["mini-DeepSeek"]
    out["mini-DeepSeek"]["acceptance"] = ds["acceptance"]
    out["mini-DeepSeek"]["max_violation_last_10"] = sum(ds["history"]["max_violation"][-10:]) / min(
        10, len(ds["history"]["max_violation"])
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    """The chapter's longer run: a mini-DeepSeek against a dense model with its active parameters (see ``--help``)."""
    import course_lib

    from .baselines import bigram_loss
    from .data import plays_corpus

    parser = argparse.ArgumentParser(prog="python -m course_lib.capstone", description=main.__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--plays", nargs="*", default=["hamlet"])
    parser.add_argument("--vocab-size", type=int, default=384)
    parser.add_argument("--context-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bias-rate", type=float, default=0.01, help="gamma of the bias rule (V3: 0.001)")
    parser.add_argument("--max-chars", type=int, default=None, help="use only the corpus's first characters (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="write the results as JSON here (the chapter reads course_lib/results/)"
    )
    args = parser.parse_args(argv)
    if type(args.steps) is not int or args.steps < 1:
        raise SystemExit("--steps must be a positive int")
    course_lib.seed_everything(args.seed)
    train_ids, val_ids, bpe = plays_corpus(args.plays, args.vocab_size, max_chars=args.max_chars)
    runs = compare(
        train_ids,
        val_ids,
        bpe.n_vocab,
        args.steps,
        seed=args.seed,
        context_length=args.context_length,
        batch_size=args.batch_size,
        lr=args.lr,
        bias_rate=args.bias_rate,
        eval_every=max(1, args.steps // 20),
        progress=True,
    )
    results = summary(runs, bigram_loss(train_ids, val_ids, bpe.n_vocab))
    results["command"] = "python -m course_lib.capstone " + " ".join(sys.argv[1:] if argv is None else argv)
    results["steps"] = args.steps
    results["history"] = {
        name: {k: run["history"][k] for k in ("val_tokens", "val", "seconds")} for name, run in runs.items()
    }
    print(f"bigram count model: held-out loss {results['bigram']:.3f}")
    for name in runs:
        r = results[name]
        print(
            f"{name}: {r['parameters']:,} parameters ({r['active']:,} active per token), {args.steps} steps, "
            f"held-out loss {r['held_out']:.3f}, {r['seconds']:.0f} s of training"
        )
    ds = results["mini-DeepSeek"]
    print(f"mini-DeepSeek: MaxVio {ds['max_violation_last_10']:.3f} (mean of the last 10 steps), ", end="")
    print(f"MTP acceptance {ds['acceptance']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
