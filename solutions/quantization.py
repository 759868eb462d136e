"""Reference solutions for Chapter 13 (course_lib/quantization.py)."""

from __future__ import annotations

from course_lib.quantization import SCALE_EPS

import torch


def absmax_quantize(x, bits, dim=None, group_size=None):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor with at least one dimension, got {got}")
    if type(bits) is not int or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}")
    if dim is not None and group_size is not None:
        raise ValueError("give dim (one scale per channel) or group_size (one per group), not both")
    if dim is not None and (type(dim) is not int or not -x.ndim <= dim < x.ndim):
        raise ValueError(f"dim must be a dimension of x (which has {x.ndim}), got {dim!r}")
    if group_size is not None and (type(group_size) is not int or group_size < 1 or x.shape[-1] % group_size):
        raise ValueError(f"group_size must be a positive int dividing x.shape[-1] = {x.shape[-1]}, got {group_size!r}")
    qmax = 2 ** (bits - 1) - 1
    x = x.float()
    if group_size is not None:
        groups = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)  # (..., n_groups, g)
        amax = groups.abs().amax(dim=-1)  # (..., n_groups)
    elif dim is not None:
        others = [d for d in range(x.ndim) if d != dim % x.ndim]
        amax = x.abs().amax(dim=others, keepdim=True)  # x's size at dim, 1 elsewhere
    else:
        amax = x.abs().amax().reshape([1] * x.ndim)
    scale = (amax / qmax).clamp(min=SCALE_EPS)
    per_number = scale.repeat_interleave(group_size, dim=-1) if group_size is not None else scale
    q = torch.round(x / per_number).clamp(-qmax, qmax)
    return q.to(torch.int8), scale


def zero_point_quantize(x, bits, dim=None, group_size=None):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor with at least one dimension, got {got}")
    if type(bits) is not int or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int from 1 to 8, got {bits!r}")
    if dim is not None and group_size is not None:
        raise ValueError("give dim (one scale per channel) or group_size (one per group), not both")
    if dim is not None and (type(dim) is not int or not -x.ndim <= dim < x.ndim):
        raise ValueError(f"dim must be a dimension of x (which has {x.ndim}), got {dim!r}")
    if group_size is not None and (type(group_size) is not int or group_size < 1 or x.shape[-1] % group_size):
        raise ValueError(f"group_size must be a positive int dividing x.shape[-1] = {x.shape[-1]}, got {group_size!r}")
    qmax = 2**bits - 1
    x = x.float()
    if group_size is not None:
        groups = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)  # (..., n_groups, g)
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)  # (..., n_groups)
    elif dim is not None:
        others = [d for d in range(x.ndim) if d != dim % x.ndim]
        lo, hi = x.amin(dim=others, keepdim=True), x.amax(dim=others, keepdim=True)
    else:
        lo, hi = x.amin().reshape([1] * x.ndim), x.amax().reshape([1] * x.ndim)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # the range always holds 0, which must be exact
    scale = ((hi - lo) / qmax).clamp(min=SCALE_EPS)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    if group_size is not None:
        per_scale, per_zero = scale.repeat_interleave(group_size, -1), zero_point.repeat_interleave(group_size, -1)
    else:
        per_scale, per_zero = scale, zero_point
    q = (torch.round(x / per_scale) + per_zero).clamp(0, qmax)
    return q.to(torch.uint8), scale, zero_point.to(torch.int32)
