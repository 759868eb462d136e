"""Visible checks, one module per chapter (``ch01.py`` holds Chapter 1's), and the helpers every check shares.

Each check is a function of a :class:`course_lib.grading.Tester` registered with
:func:`course_lib.grading.visible_check`. Expected values are written out or computed by
trusted libraries (PyTorch's own operations, tiktoken), never by the code under test.

The helpers below serve the visible checks, the instructors' hidden tests and the unit tests
alike, so a seeded tensor or a learner's model with given weights is made the same way everywhere.
"""

from __future__ import annotations

import torch


def seeded_randn(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard-normal values from a generator of their own, so checks never share random state."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def seeded_ints(seed: int, high: int, *shape: int) -> torch.Tensor:
    """Integers in ``[0, high)`` (token ids, say) from a generator of their own."""
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


def learner_model(t, module: str, name: str, state: dict, *args, train: bool = False, **kwargs):
    """The learner's ``course_lib.<module>.<name>(*args, **kwargs)`` in float64 holding ``state``.

    The model is in evaluation mode unless ``train`` is true. Only plain values cross to the
    grader's sandbox, so the state is passed as a plain ``dict`` and the dtype is set by calling
    the model's own ``double()``.
    """
    model = getattr(t.learner(module), name)(*args, **kwargs)
    model.double()
    model.load_state_dict(dict(state))
    model.train(train)
    return model
