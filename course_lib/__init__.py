"""The Token's Journey — the package learners complete, chapter by chapter.

Exercises are functions and methods whose bodies raise ``NotImplementedError`` until the learner
writes them; everything else here is finished and ready to use. ``python -m course_lib progress``
prints the checklist of exercises with the result of their visible checks.
"""

from __future__ import annotations

import os
import random

from . import threads

__all__ = ["device", "seed_everything"]

threads.configure()  # before torch starts its thread pool, wherever that can still be done


def device():
    """The fastest available ``torch.device``: ``cuda``, then ``mps``, then ``cpu``.

    Set ``COURSE_LIB_DEVICE`` (e.g. ``cpu``) to force one; nothing in the course requires a GPU.
    """
    import torch

    forced = os.environ.get("COURSE_LIB_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's (if installed) and PyTorch's random generators."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed)
