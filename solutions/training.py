"""Reference solutions for Chapter 5 (course_lib/training.py)."""

from __future__ import annotations

import math

import torch


def cross_entropy_loss(logits, targets):
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise ValueError(
            "logits must be a tensor of shape (batch, seq, vocab), "
            f"got {getattr(logits, 'shape', type(logits).__name__)}"
        )
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"targets must have shape (batch, seq) = {tuple(logits.shape[:2])}, "
            f"got {getattr(targets, 'shape', type(targets).__name__)}"
        )
    log_probs = torch.log_softmax(logits, dim=-1)  # (batch, seq, vocab)
    picked = log_probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (batch, seq)
    return -picked.mean()


def train_step(model, optimizer, inputs, targets, max_grad_norm=None):
    from course_lib.training import clip_grad_norm, cross_entropy_loss

    if max_grad_norm is not None and (type(max_grad_norm) not in (int, float) or not max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be None or a positive number, got {max_grad_norm!r}")
    optimizer.zero_grad()
    loss = cross_entropy_loss(model(inputs), targets)
    loss.backward()
    if max_grad_norm is not None:
        clip_grad_norm(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def lr_at(step, max_lr, warmup_steps, total_steps, min_lr):
    for name, value in (("step", step), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if not warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be below total_steps, got {warmup_steps} and {total_steps}")
    if type(max_lr) not in (int, float) or not max_lr > 0:
        raise ValueError(f"max_lr must be a positive number, got {max_lr!r}")
    if type(min_lr) not in (int, float) or not 0 <= min_lr <= max_lr:
        raise ValueError(f"min_lr must be a number between 0 and max_lr = {max_lr}, got {min_lr!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps  # the first step already moves: no step at 0
    if step >= total_steps:
        return float(min_lr)  # the cosine stops at its minimum instead of rising again
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # from 0 to 1
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def clip_grad_norm(parameters, max_norm):
    if type(max_norm) not in (int, float) or not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]  # one pass: a generator is used up
    if not grads:
        return torch.tensor(0.0)
    with torch.no_grad():
        # The norm of the per-tensor norms is the norm of all the gradients as one long vector.
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # 1 when the norm is already small
        for g in grads:
            g.mul_(factor)
    return total
