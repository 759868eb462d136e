"""Reference solutions for Chapter 5 (course_lib/training.py)."""

from __future__ import annotations

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
    from course_lib.training import cross_entropy_loss

    if max_grad_norm is not None and (type(max_grad_norm) not in (int, float) or not max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be None or a positive number, got {max_grad_norm!r}")
    optimizer.zero_grad()
    loss = cross_entropy_loss(model(inputs), targets)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()
