"""The small pieces of the clear errors every module raises: how a value is described, and the check of a
positive ``int`` (a ``bool`` refused). One place, so that every message reads the same."""

from __future__ import annotations

import torch


def describe(value) -> str:
    """``"a torch.float32 tensor of shape (2, 3)"`` for a tensor, ``"a list"`` for anything else."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def check_positive_int(name: str, value) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is an ``int`` (not a ``bool``) of at least 1."""
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
