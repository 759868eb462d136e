"""Chapter 5 — teaching a GPT to predict the next token.

Training shows the model a window of text and, at every position, asks for the token that comes
next. The *cross-entropy loss* is the average of ``-log p(correct next token)`` over all positions;
an optimizer nudges every parameter to lower it. A model that knows nothing (uniform guesses over
``V`` tokens) scores ``ln V``; a perfect one scores 0.

Two safeguards keep the steps stable: a learning rate that warms up, then decays along a cosine
(:func:`lr_at`), and gradients clipped to a maximum global norm (:func:`clip_grad_norm`).

Exercises in this module: 5.3 :func:`cross_entropy_loss`, 5.4 :func:`train_step`, 5.8 :func:`lr_at`,
5.9 :func:`clip_grad_norm`.

The longer training run of the chapter is a command::

    python -m course_lib.training --steps 2000
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable

import torch
from torch import nn

from .exercises import exercise


@exercise("5.3", "The next-token cross-entropy loss", points=2)
def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy: ``-log softmax(logits)[target]``, averaged over every
    position of every sequence.

    1. Check the shapes: ``logits`` is ``(batch, seq, vocab)`` and ``targets`` is ``(batch, seq)``
       with the same ``batch`` and ``seq``; otherwise raise ``ValueError``.
    2. Take ``torch.log_softmax`` over the vocabulary (it subtracts the maximum for you, so large
       logits do not overflow).
    3. Pick each position's log-probability of its target with ``torch.gather``.
    4. Return minus their mean.

    Do not call ``torch.nn.functional.cross_entropy`` (or ``nll_loss``): that is what we check
    against.

    Args:
        logits: a floating-point tensor of shape ``(batch, seq, vocab)``.
        targets: an integer tensor (``torch.int64``) of shape ``(batch, seq)``, values in
            ``[0, vocab)``: ``targets[b, i]`` is the token that follows position ``i``.

    Returns:
        A 0-dimensional tensor in the dtype of ``logits``, differentiable with respect to them.

    Raises:
        ValueError: if the shapes are not as above or do not agree.

    Example:
        >>> logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens
        >>> cross_entropy_loss(logits, torch.tensor([[1, 3]]))  # ln 4
        tensor(1.3863)
    """
    raise NotImplementedError


@exercise("5.4", "One training step", points=3)
def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    max_grad_norm: float | None = None,
) -> float:
    """Do one step of gradient descent on one batch and return its loss.

    1. Clear the gradients left by the previous step: ``optimizer.zero_grad()``.
    2. Forward: ``logits = model(inputs)``, then ``loss = cross_entropy_loss(logits, targets)``
       (your Exercise 5.3).
    3. Backward: ``loss.backward()``.
    4. If ``max_grad_norm`` is not ``None``, rescale the gradients so that their global norm is at
       most ``max_grad_norm`` with your Exercise 5.9: ``clip_grad_norm(model.parameters(), max_grad_norm)``.
    5. ``optimizer.step()``.

    Leave the model's mode (training or evaluation) as the caller set it.

    Args:
        model: a module mapping ``(batch, seq)`` ids to ``(batch, seq, vocab)`` logits (a :class:`GPT`).
        optimizer: an optimizer over ``model``'s parameters (e.g. from :func:`make_optimizer`).
        inputs: ``(batch, seq)`` int64 token ids.
        targets: ``(batch, seq)`` int64, the ids that follow ``inputs`` (``inputs`` shifted by one).
        max_grad_norm: ``None`` (no clipping) or a positive number.

    Returns:
        The loss of this batch *before* the update, as a Python ``float``.

    Raises:
        ValueError: if ``max_grad_norm`` is given and not a positive number (and, through
            :func:`cross_entropy_loss`, if the shapes do not agree).

    Example:
        >>> model = GPT(GPTConfig(vocab_size=50, context_length=8, d_model=16, n_layers=1, n_heads=2))
        >>> opt = make_optimizer(model, lr=1e-3)
        >>> x = torch.randint(50, (4, 8)); y = torch.randint(50, (4, 8))
        >>> first = train_step(model, opt, x, y)
        >>> type(first)
        <class 'float'>
    """
    raise NotImplementedError


@exercise("5.8", "Warm-up and cosine decay of the learning rate", points=2)
def lr_at(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> float:
    """The learning rate of optimizer step ``step`` (counted from 0) of a run of ``total_steps``
    steps: a linear warm-up to ``max_lr``, then a cosine decay to ``min_lr``.

    With ``W = warmup_steps`` and ``T = total_steps``:

    - **warm-up**, ``0 <= step < W``: ``max_lr * (step + 1) / W``, rising in equal increments from
      ``max_lr / W`` at step 0 (no step is spent at a learning rate of 0) to ``max_lr`` at step
      ``W - 1``;
    - **decay**, ``W <= step <= T``: with the progress ``p = (step - W) / (T - W)``, which goes
      from 0 to 1, ``min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2``: ``max_lr`` at step
      ``W``, then down to exactly ``min_lr`` at step ``T``, the step after the last one
      (the last step, ``T - 1``, is a little above ``min_lr``);
    - **after the run**, ``step > T``: ``min_lr`` (the cosine is not continued: it would rise again).

    ``W = 0`` means no warm-up (step 0 is at ``max_lr``); ``min_lr == max_lr`` keeps the rate at
    ``max_lr`` after the warm-up. These are the learning rates that PyTorch's schedulers, stepped
    once after each optimizer step, give for steps ``0 .. T - 1``: for ``W >= 2``, ``SequentialLR``
    of ``LinearLR(start_factor=1 / W, total_iters=W - 1)`` and
    ``CosineAnnealingLR(T_max=T - W, eta_min=min_lr)`` with ``milestones=[W]``; for ``W = 0``, the
    ``CosineAnnealingLR(T_max=T, eta_min=min_lr)`` alone.

    Args:
        step: the number of optimizer steps taken before this one, an ``int`` ``>= 0`` (any
            size: steps past ``T`` are allowed).
        max_lr: the peak learning rate, a positive number (``int`` or ``float``).
        warmup_steps: ``W``, an ``int`` with ``0 <= W < T``.
        total_steps: ``T``, an ``int``: the length of the run.
        min_lr: the final learning rate, a number with ``0 <= min_lr <= max_lr``.

    Returns:
        The learning rate, a Python ``float`` (also when every argument is an ``int``).

    Raises:
        ValueError: if an argument breaks the rules above (``bool`` is not an ``int``, and a
            ``float`` step or step count is refused).

    Example:
        >>> [round(lr_at(s, 1.0, 2, 6, 0.1), 3) for s in range(8)]
        [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1, 0.1]
    """
    raise NotImplementedError


@exercise("5.9", "Clip the gradients by their global norm", points=3)
def clip_grad_norm(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients of ``parameters`` in place so that their global L2 norm is at most
    ``max_norm``, and return the global norm they had before.

    The *global* norm treats all the gradients as one long vector: it is the L2 norm of the
    per-parameter norms, ``sqrt(sum of ||p.grad||^2)``. Every gradient is multiplied in place by
    the same factor ``min(1, max_norm / (total_norm + 1e-6))``, so a gradient whose norm is above
    ``max_norm`` keeps its direction and is brought down to about ``max_norm``, and one below
    it is left as it is (a factor of 1; the ``1e-6`` avoids a division by zero).

    - ``parameters`` is a single tensor or an iterable of tensors: a list, or a generator such as
      ``model.parameters()``, which can be gone through only once.
    - A parameter whose ``.grad`` is ``None`` is skipped. When no parameter has a gradient,
      nothing changes and the result is ``torch.tensor(0.0)``.
    - Gradients keep their dtypes. The norm is computed in the gradients' dtype: float32
      gradients give a float32 norm, and float32 mixed with float64 gives float64 (PyTorch's type
      promotion).

    The numbers are those of ``torch.nn.utils.clip_grad_norm_(parameters, max_norm)``; do not call
    it (nor ``get_total_norm`` or ``clip_grads_with_norm_`` from ``torch.nn.utils``): the checks
    compare with it.

    Args:
        parameters: the tensors (usually ``nn.Parameter`` s) whose ``.grad`` to clip.
        max_norm: the largest global norm allowed, a positive number (``int`` or ``float``).

    Returns:
        The global norm of the gradients before clipping, a 0-dimensional tensor.

    Raises:
        ValueError: if ``max_norm`` is not a positive number (``True`` is not one).

    Example:
        >>> w = torch.zeros(2, requires_grad=True); w.grad = torch.tensor([3.0, 4.0])
        >>> clip_grad_norm([w], 1.0)  # the norm before
        tensor(5.)
        >>> w.grad  # now of norm 1 (up to the 1e-6)
        tensor([0.6000, 0.8000])
    """
    raise NotImplementedError


def apply_schedule(
    optimizer: torch.optim.Optimizer,
    step: int,
    lr: float,
    steps: int,
    warmup_steps: int | None = None,
    min_lr: float | None = None,
) -> float:
    """Set every parameter group of ``optimizer`` to the course's learning rate for optimizer step ``step``
    (counted from 0) of a run of ``steps``: :func:`lr_at` with a warm-up over ``warmup_steps`` steps (default
    ``steps // 20``) to ``lr``, then a cosine decay to ``min_lr`` (default ``lr / 10``, as in GPT-3). Returns the
    rate. Every training loop of the course (:func:`train`, and Part III's and IV's) schedules through it."""
    warmup_steps = steps // 20 if warmup_steps is None else warmup_steps
    min_lr = lr / 10 if min_lr is None else min_lr
    rate = lr_at(step, lr, warmup_steps, steps, min_lr)
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate


def make_optimizer(
    model: nn.Module, lr: float = 3e-4, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW [Loshchilov & Hutter, 2019] over ``model``'s parameters, with weight decay on the
    matrices (every parameter with two or more dimensions: linear weights and embedding tables)
    and none on the vectors (biases and LayerNorm scales and shifts), as is usual for GPTs."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if type(lr) not in (int, float) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if type(weight_decay) not in (int, float) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": float(weight_decay)},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=float(lr), betas=tuple(betas))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The mean loss of ``model`` over ``(inputs, targets)`` batches, in evaluation mode and without
    gradients (the model's mode is restored afterwards). Every batch counts equally."""
    was_training = model.training
    model.eval()
    try:
        losses = [float(cross_entropy_loss(model(x), y)) for x, y in batches]
    finally:
        model.train(was_training)
    if not losses:
        raise ValueError("evaluate needs at least one batch")
    return sum(losses) / len(losses)


def train(
    model: nn.Module,
    ids: torch.Tensor,
    steps: int,
    batch_size: int,
    context_length: int,
    lr: float = 3e-4,
    seed: int = 0,
    progress: bool = True,
    val_ids: torch.Tensor | None = None,
    eval_every: int = 50,
    eval_batches: int = 4,
    max_grad_norm: float | None = 1.0,
    weight_decay: float = 0.1,
    warmup_steps: int | None = None,
    min_lr: float | None = None,
) -> dict[str, list]:
    """Train ``model`` on random windows of the 1-D token tensor ``ids`` for ``steps`` steps of
    :func:`train_step` with :func:`make_optimizer` (AdamW) and gradient clipping at
    ``max_grad_norm`` (:func:`clip_grad_norm`; ``None``: no clipping).

    The learning rate follows :func:`lr_at`: a linear warm-up over ``warmup_steps`` steps (default
    ``steps // 20``) to ``lr``, then a cosine decay to ``min_lr`` (default ``lr / 10``, as in
    GPT-3) at the end of the run. ``warmup_steps=0, min_lr=lr`` gives a constant learning rate.

    Batches come from :func:`course_lib.data.get_batch` with a generator seeded by ``seed``, so a
    run is reproducible. With ``val_ids``, the held-out loss is measured with :func:`evaluate` on
    ``eval_batches`` fixed batches every ``eval_every`` steps and after the last step.

    Returns:
        ``{"train": [loss of each step], "lr": [learning rate of each step], "val_step": [steps
        measured], "val": [held-out losses]}``.
    """
    from tqdm import tqdm  # the plain text bar: it shows in a terminal and in a notebook alike

    from .data import get_batch

    if type(steps) is not int or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if type(eval_every) is not int or eval_every < 1:
        raise ValueError(f"eval_every must be a positive int, got {eval_every!r}")
    warmup_steps = steps // 20 if warmup_steps is None else warmup_steps
    min_lr = lr / 10 if min_lr is None else min_lr
    lr_at(0, lr, warmup_steps, steps, min_lr)  # a bad schedule fails here, before any work
    dev = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    val = []
    if val_ids is not None:
        val_gen = torch.Generator().manual_seed(seed + 1)
        val = [get_batch(val_ids, batch_size, context_length, val_gen) for _ in range(eval_batches)]
        val = [(x.to(dev), y.to(dev)) for x, y in val]
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay)
    history: dict[str, list] = {"train": [], "lr": [], "val_step": [], "val": []}
    model.train()
    bar = tqdm(range(1, steps + 1), disable=not progress, desc="training", mininterval=1.0)
    for step in bar:
        rate = apply_schedule(optimizer, step - 1, lr, steps, warmup_steps, min_lr)  # step counts from 1, lr_at from 0
        x, y = get_batch(ids, batch_size, context_length, generator)
        history["lr"].append(rate)
        history["train"].append(train_step(model, optimizer, x.to(dev), y.to(dev), max_grad_norm=max_grad_norm))
        if val and (step % eval_every == 0 or step == steps):
            history["val_step"].append(step)
            history["val"].append(evaluate(model, val))
            bar.set_postfix(train=f"{history['train'][-1]:.3f}", val=f"{history['val'][-1]:.3f}")
    model.eval()
    return history


def main(argv: list[str] | None = None) -> dict[str, list]:
    """The chapter's longer run: ``python -m course_lib.training --steps 2000`` (see ``--help``).

    Trains a BPE tokenizer on Shakespeare plays, then a small GPT on them (90% train, 10% held out),
    prints the losses and a sample, and saves the weights with ``--out``.
    """
    import course_lib

    from .data import encode_corpus, load_shakespeare
    from .gpt import GPT, GPTConfig
    from .sampling import generate
    from .tokenization import BPETokenizer, train_bpe

    parser = argparse.ArgumentParser(prog="python -m course_lib.training", description=main.__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--plays", nargs="*", default=["hamlet", "macbeth", "king-lear", "othello", "romeo-and-juliet"])
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="the peak learning rate, after the warm-up")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: a twentieth of the steps")
    parser.add_argument("--min-lr", type=float, default=None, help="the final learning rate; default: lr / 10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the trained weights (a state dict) here")
    args = parser.parse_args(argv)

    course_lib.seed_everything(args.seed)
    text = load_shakespeare(args.plays)
    tokenizer = BPETokenizer.from_merges(train_bpe(text, args.vocab_size))
    ids = encode_corpus(text, tokenizer)
    split = int(0.9 * len(ids))
    config = GPTConfig(
        vocab_size=tokenizer.n_vocab,
        context_length=args.context_length,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        dropout=args.dropout,
    )
    model = GPT(config).to(course_lib.device())
    history = train(
        model,
        ids[:split],
        args.steps,
        args.batch_size,
        args.context_length,
        lr=args.lr,
        seed=args.seed,
        val_ids=ids[split:],
        eval_every=max(1, args.steps // 20),
        warmup_steps=args.warmup_steps,
        min_lr=args.min_lr,
    )
    print(
        f"train loss {history['train'][-1]:.3f}, held-out loss {history['val'][-1]:.3f} "
        f"(uniform guessing: ln {config.vocab_size} = {math.log(config.vocab_size):.3f})"
    )
    prompt = torch.tensor([tokenizer.encode("HAMLET:\n")], device=course_lib.device())
    sample = generate(model, prompt, 200, temperature=0.8, top_k=50, seed=args.seed)
    print(tokenizer.decode(sample[0].tolist()))
    if args.out:
        torch.save(model.state_dict(), args.out)
    return history


if __name__ == "__main__":
    main()
