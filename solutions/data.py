"""Reference solutions for Chapter 5's data loader (course_lib/data.py)."""

from __future__ import annotations


def sliding_windows(ids, context_length, stride):
    import torch

    integer_dtypes = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype not in integer_dtypes:
        raise ValueError(
            f"ids must be a 1-D integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)} "
            f"of shape {tuple(getattr(ids, 'shape', ()))}"
        )
    for name, value in (("context_length", context_length), ("stride", stride)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if ids.numel() < context_length + 1:
        raise ValueError(
            f"ids has {ids.numel()} tokens; a window of context_length={context_length} "
            f"and its shifted target need at least {context_length + 1}"
        )
    n_windows = (ids.numel() - context_length - 1) // stride + 1
    starts = torch.arange(n_windows) * stride  # (n_windows,): 0, stride, 2 * stride, ...
    offsets = torch.arange(context_length)  # (context_length,)
    positions = starts[:, None] + offsets  # (n_windows, context_length)
    return ids[positions].long(), ids[positions + 1].long()
