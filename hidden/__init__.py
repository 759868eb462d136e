"""Hidden tests: instructors only, never released (``make release`` refuses a release that holds them).

``hidden/chNN.py`` holds Chapter NN's hidden tests, each a check ``test(t)`` of a
:class:`course_lib.grading.Tester` registered with :func:`hidden_test`. A chapter notebook's
hidden cell holds nbgrader's hidden-test markers around one call, ``run_hidden("N.M")``; the
grader's judge runs that cell against the learner's code in the sandbox.
"""

from __future__ import annotations

from course_lib import exercises
from course_lib.grading import run_checks, select

import importlib
from collections.abc import Callable

_TESTS: dict[str, list[Callable]] = {}


def hidden_test(exercise_id: str, *, inputs: bool = False):
    """Register the decorated function as a hidden test of ``exercise_id``; its docstring names it.

    ``inputs=True`` marks a test of input validation, graded apart (see ``grading.visible_check``).
    """

    def register(test: Callable) -> Callable:
        test.inputs = bool(inputs)
        tests = _TESTS.setdefault(exercise_id, [])
        if test.__name__ in {known.__name__ for known in tests}:
            raise ValueError(f"Exercise {exercise_id} has two hidden tests named {test.__name__}")
        tests.append(test)
        return test

    return register


def hidden_tests(exercise_id: str, *, inputs: bool | None = False) -> list[Callable]:
    """The hidden tests of ``exercise_id`` in the order they are written: of the idea (default), of
    input validation (``inputs=True``) or all of them (``inputs=None``)."""
    entry = exercises.get(exercise_id)
    importlib.import_module(f"hidden.ch{entry.chapter:02d}")
    return select(_TESTS.get(exercise_id, []), inputs)


def run_hidden(exercise_id: str, *, inputs: bool = False) -> None:
    """Run the hidden tests of ``exercise_id`` (with ``inputs=True``, its hidden input checks) and
    report each one (what a notebook's hidden and input cells call)."""
    __tracebackhide__ = True
    run_checks(exercise_id, hidden_tests(exercise_id, inputs=inputs), hidden=True, inputs=inputs)
