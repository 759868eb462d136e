"""Reference solution for Chapter 15, §7 (course_lib/yarn.py)."""

from __future__ import annotations

import math

import torch


def yarn_frequencies(dim, base, factor, original_context, beta_fast=32.0, beta_slow=1.0):
    def number(value):
        return type(value) in (int, float) and math.isfinite(value)

    if type(dim) is not int or dim < 2 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    if not (number(base) and base > 1):
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    if not (number(factor) and factor >= 1):
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    if type(original_context) is not int or original_context < 1:
        raise ValueError(f"original_context must be a positive int, got {original_context!r}")
    if not (number(beta_fast) and number(beta_slow) and beta_fast > beta_slow > 0):
        raise ValueError(
            f"beta_fast and beta_slow must be finite with beta_fast > beta_slow > 0, got {beta_fast!r}, {beta_slow!r}"
        )

    def index_of(turns):  # the real pair index whose frequency turns `turns` times in the original context
        return dim * math.log(original_context / (turns * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(index_of(beta_fast)), 0)  # faster pairs than this keep their frequency
    high = min(math.ceil(index_of(beta_slow)), dim - 1)  # slower ones are divided by the factor
    if low == high:
        high += 0.001  # a ramp of (almost) no width: no division by zero
    wavelength_steps = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # 1 / θ_i, (dim // 2,)
    interpolated = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)  # γ_i
    kept = 1 - interpolated
    return 1.0 / (factor * wavelength_steps) * (1 - kept) + 1.0 / wavelength_steps * kept
