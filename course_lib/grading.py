"""The one harness every graded test cell goes through.

A *check* is a small function ``check(t)`` that drives an exercise through the :class:`Tester`
``t`` and states what must hold. :func:`run_checks` runs the checks of one exercise, prints a
line per check and raises :class:`ExerciseFailed` if any failed, so the notebook cell fails.

The same checks run in two places:

- **in the learner's notebook** (and the book build): ``t.learner("tokenization")`` is the
  ``course_lib.tokenization`` module itself, called in-process;
- **in the instructor's grader**, which installs a :class:`Backend` of its own with
  :func:`use_backend`: there the learner's module lives in another process and
  ``t.learner(...)`` returns a stand-in whose calls cross to it. Only plain values come back, so
  every comparison below happens in the grader's clean process. Hidden tests also get
  ``t.reference(...)``: the instructor's reference implementation, from which expected values
  are computed.

Visible checks live in ``course_lib/checks/``; hidden tests are the instructor's, never released.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import exercises

_VISIBLE: dict[str, list[Callable]] = {}


class CheckFailed(AssertionError):
    """One check found the learner's result wrong."""


class ExerciseFailed(AssertionError):
    """Some checks of an exercise failed (raised after all of them ran)."""


def visible_check(exercise_id: str, *, inputs: bool = False):
    """Register the decorated function as a visible check of ``exercise_id``; its docstring names it.

    ``inputs=True`` marks a check of input validation (a clear error for bad input): such checks
    are graded in a cell of their own, so that they carry at most a tenth of the points.
    """

    def register(check):
        check.inputs = bool(inputs)
        _VISIBLE.setdefault(exercise_id, []).append(check)
        return check

    return register


def visible_checks(exercise_id: str, *, inputs: bool | None = False) -> list[Callable]:
    """The visible checks of ``exercise_id``: of the idea (default), of input validation
    (``inputs=True``) or all of them (``inputs=None``), in the order they are written."""
    entry = exercises.get(exercise_id)
    importlib.import_module(f"course_lib.checks.ch{entry.chapter:02d}")
    return select(_VISIBLE.get(exercise_id, []), inputs)


def select(checks: list[Callable], inputs: bool | None) -> list[Callable]:
    """The checks of the kind asked for: ``inputs=True`` input validation, ``False`` the idea, ``None`` all."""
    return [check for check in checks if inputs is None or getattr(check, "inputs", False) == inputs]


# --------------------------------------------------------------------------------------
# Where the learner's code runs
# --------------------------------------------------------------------------------------


class GradingError(RuntimeError):
    """The grading machine failed, not the learner's code: no verdict may be recorded."""


class Backend(Protocol):
    """Where the checks of one exercise find the learner's code.

    The learner's notebook uses :class:`InProcess`. The instructor's grader installs its own
    backend with :func:`use_backend` (a sandboxed worker whose results cross as plain values):
    this package knows nothing of how that works.
    """

    #: Seconds all the checks of one exercise may take together, or ``None`` for no limit.
    budget: float | None

    def module(self, name: str) -> Any:
        """The learner's ``course_lib.<name>`` (or a stand-in for it)."""

    def value(self, obj: Any) -> Any:
        """The plain value of an attribute of the learner's code."""

    def describe(self, error: BaseException) -> tuple[list[str], str]:
        """The class names (most derived first) and message of an exception the learner's code raised.

        No class names (``[]``) when the learner's code failed without raising (a timeout, a crash).
        Raises :class:`GradingError` if ``error`` is a failure of the grading machine itself.
        """

    def recover(self, error: BaseException) -> None:
        """Called after a check failed with ``error``, before the next check runs."""

    def close(self) -> None:
        """Called once the exercise's checks have run."""


class InProcess:
    """The learner's own modules, called directly (notebook, progress command, book build)."""

    budget = None

    def module(self, name: str):
        return importlib.import_module(f"course_lib.{name}")

    def value(self, obj):
        return obj

    def describe(self, error: BaseException) -> tuple[list[str], str]:
        return [c.__name__ for c in type(error).__mro__], str(error)

    def recover(self, error: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


_backend_factory: Callable[[], Backend] = InProcess


def use_backend(factory: Callable[[], Backend]) -> None:
    """Make every later :func:`run_checks` call ``factory()`` for the backend of its exercise."""
    global _backend_factory
    _backend_factory = factory


# --------------------------------------------------------------------------------------
# What a check can do
# --------------------------------------------------------------------------------------


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _difference(actual, expected, where: str) -> tuple[str, str] | None:
    """The first place where ``actual`` differs from ``expected`` (types must match exactly)."""
    if type(actual) is not type(expected):
        return where, f"expected a {type(expected).__name__}, got a {type(actual).__name__}"
    if isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            return where, f"expected length {len(expected)}, got {len(actual)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            found = _difference(a, e, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            return where, f"expected keys {_short(sorted(expected, key=repr))}, got {_short(sorted(actual, key=repr))}"
        for key in expected:
            found = _difference(actual[key], expected[key], f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(expected, float) and math.isnan(expected) and math.isnan(actual):
        return None
    if _is_tensor(expected):
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            return (
                where,
                _mismatch(actual, expected),
            )
        import torch

        return None if torch.equal(actual, expected) else (where, "tensors differ")
    if actual != expected:
        return where, f"expected {_short(expected)}, got {_short(actual)}"
    return None


def _mismatch(actual, expected) -> str:
    """What differs between two tensors' dtypes or shapes."""
    found = f"{actual.dtype} of shape {tuple(actual.shape)}"
    return f"expected {expected.dtype} of shape {tuple(expected.shape)}, got {found}"


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")  # a value can only be a tensor if torch is already imported
    return torch is not None and type(value) is torch.Tensor


class Tester:
    """What a check receives: access to the code under test, and assertions that explain failures."""

    def __init__(self, backend, hidden: bool):
        self._backend = backend
        self.hidden = hidden

    def learner(self, module: str):
        """The learner's ``course_lib.<module>`` (in-process, or a stand-in for the sandboxed one)."""
        return self._backend.module(module)

    def reference(self, module: str):
        """The instructor's reference ``course_lib.<module>``: hidden tests only."""
        if not self.hidden:
            raise RuntimeError("visible checks state their expected values; only hidden tests may use references")
        if not exercises.solutions_enabled():
            raise RuntimeError(f"hidden tests need the references: set {exercises.SOLUTIONS_ENV}=1")
        return importlib.import_module(f"course_lib.{module}")

    def value(self, obj):
        """The plain value of an attribute of the learner's code (e.g. ``t.value(tok.vocab)``)."""
        return self._backend.value(obj)

    def _fail(self, where: str, detail: str):
        if self.hidden:  # never show hidden inputs or expected values
            raise CheckFailed(f"wrong result (at {where})" if where != "result" else "wrong result")
        raise CheckFailed(f"{where}: {detail}")

    def equal(self, actual, expected, what: str = "result") -> None:
        """``actual`` must equal ``expected`` exactly, types included (a tuple is not a list)."""
        found = _difference(actual, expected, what)
        if found:
            self._fail(*found)

    def close(self, actual, expected, *, atol: float = 1e-6, rtol: float = 1e-5, what: str = "result") -> None:
        """Tensors (or floats) must agree in type, dtype and shape, and in value to the tolerances."""
        import torch

        if type(actual) is not type(expected):
            self._fail(what, f"expected a {type(expected).__name__}, got a {type(actual).__name__}")
        if not _is_tensor(expected):
            if not math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol):
                self._fail(what, f"expected {expected!r}, got {actual!r}")
            return
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            self._fail(
                what,
                _mismatch(actual, expected),
            )
        if not torch.allclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True):
            gap = (actual.double() - expected.double()).abs().nan_to_num(nan=math.inf).max().item()
            self._fail(what, f"values differ by up to {gap:.3g} (atol={atol:g}, rtol={rtol:g})")

    def true(self, condition: bool, message: str) -> None:
        """``condition`` (computed from plain values) must hold."""
        if condition is not True:
            self._fail("result", message)

    def raises(self, exc_type: type[BaseException], fn, *args, **kwargs) -> str:
        """Calling ``fn(*args, **kwargs)`` must raise ``exc_type``; returns the exception's message."""
        try:
            fn(*args, **kwargs)
        except CheckFailed:
            raise
        except Exception as err:
            types, message = self._backend.describe(err)
            if not types:  # the learner's code failed without raising (a timeout, a crash)
                raise
            if exc_type.__name__ in types:
                return message
            if "NotImplementedError" in types:
                raise
            raise CheckFailed(f"expected {exc_type.__name__}, but it raised {types[0]}: {message[:200]}") from None
        raise CheckFailed(f"expected {exc_type.__name__}, but nothing was raised")


def _explain(err: BaseException, backend: Backend) -> str:
    if isinstance(err, CheckFailed):
        return str(err)
    types, message = backend.describe(err)
    if not types:
        return message
    if "NotImplementedError" in types and message.startswith("Exercise "):
        return message
    return f"raised {types[0]}: {message[:300]}"


def _name(check: Callable) -> str:
    doc = (check.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else check.__name__.replace("_", " ")


def run_checks(
    exercise_id: str, checks: list[Callable] | None = None, *, hidden: bool = False, inputs: bool = False
) -> None:
    """Run the checks of one exercise (default: its visible checks of the idea; with ``inputs=True``,
    its visible checks of input validation) and report each one.

    Raises:
        ExerciseFailed: if any check failed, after all of them ran.
    """
    __tracebackhide__ = True  # IPython: show the learner the failure, not the harness's frames
    entry = exercises.get(exercise_id)
    checks = visible_checks(exercise_id, inputs=inputs) if checks is None else list(checks)
    if not checks:
        raise ValueError(f"Exercise {exercise_id} has no checks to run")
    kind = ("hidden " if hidden else "") + ("input checks" if inputs else "tests" if hidden else "checks")
    backend = _backend_factory()
    deadline = None if backend.budget is None else time.monotonic() + backend.budget
    lines, passed = [], 0
    try:
        for check in checks:
            if deadline is not None and time.monotonic() > deadline:
                lines.append(f"  ✗ {_name(check)} — not run: the exercise's time budget is spent")
                continue
            try:
                check(Tester(backend, hidden))
            except GradingError:
                raise  # the machine failed: no verdict for this exercise at all
            except Exception as err:
                lines.append(f"  ✗ {_name(check)} — {_explain(err, backend)}")
                backend.recover(err)
            else:
                passed += 1
                lines.append(f"  ✓ {_name(check)}")
    finally:
        backend.close()
    print(f"Exercise {entry.id} — {entry.title}: {passed}/{len(checks)} {kind} passed")
    print("\n".join(lines))
    if passed < len(checks):
        raise ExerciseFailed(f"Exercise {entry.id}: {len(checks) - passed} of {len(checks)} {kind} failed")
