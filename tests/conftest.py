"""Shared fixtures. The suite runs with COURSE_LIB_SOLUTIONS=1 (set by `make test`); tests that need
the learner's starting state switch it off with the ``stubs`` fixture."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# course_lib before torch (the sort order keeps it first): importing it sets the threads and wait policy torch reads.
from course_lib.checks import seeded_randn  # noqa: E402, F401 - the one seeded-tensor helper, for the tests

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def stubs(monkeypatch):
    """Run course_lib on the learner's stubs (the switch is read at call time)."""
    monkeypatch.setenv("COURSE_LIB_SOLUTIONS", "0")


@pytest.fixture
def references(monkeypatch):
    """Run course_lib on the reference solutions."""
    monkeypatch.setenv("COURSE_LIB_SOLUTIONS", "1")


def python_env(**extra: str) -> dict[str, str]:
    """An environment for subprocesses that import course_lib from this repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_LIB_", "COURSE_GRADER_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@torch.no_grad()
def randomize_weights_(module: torch.nn.Module) -> None:
    """Give a Hugging Face module random weights, in place, from torch's global generator (seed it first).

    Its own initialisation leaves norm scales at exactly 1 and some vectors at 0, which would hide a mistake in
    how they are used: so norm parameters become ``1 + 0.2 * N(0, 1)``, matrices ``N(0, 1) / sqrt(fan_in)`` (outputs
    of a useful size), and the other vectors (V4's sinks and position biases) ``N(0, 1)``.
    """
    for name, p in module.named_parameters():
        if "norm" in name:
            p.copy_(1 + 0.2 * torch.randn_like(p))
        else:
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 1.0))


def assert_close(actual, expected, tol=1e-10):
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)
