"""The one harness every graded test cell goes through.

A *check* is a small function ``check(t)`` that drives an exercise through the :class:`Tester`
``t`` and states what must hold. :func:`run_checks` runs the checks of one exercise, prints a
line per check and raises :class:`ExerciseFailed` if any failed, so the notebook cell fails.

The same checks run in two places:

- **in the learner's notebook** (and the book build): ``t.learner("tokenization")`` is the
  ``course_lib.tokenization`` module itself, called in-process;
- **in the instructor's grader**, which sets ``COURSE_GRADER_SUBMISSION``: the learner's module
  lives in a sandboxed worker process (see ``grader/sandbox.py``) and ``t.learner(...)`` returns
  a stand-in whose calls cross to it. Only plain values come back, so every comparison below
  happens in the grader's clean process. Hidden tests also get ``t.reference(...)``: the
  instructor's reference implementation, from which expected values are computed.

Visible checks live in ``course_lib/checks/``; hidden tests live in the instructor's notebook.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import exercises

#: Set by the instructor's grader only: the folder holding the submission's ``course_lib``.
SUBMISSION_ENV = "COURSE_GRADER_SUBMISSION"

_VISIBLE: dict[str, list[Callable]] = {}


class CheckFailed(AssertionError):
    """One check found the learner's result wrong."""


class ExerciseFailed(AssertionError):
    """Some checks of an exercise failed (raised after all of them ran)."""


def visible_check(exercise_id: str):
    """Register the decorated function as a visible check of ``exercise_id``; its docstring names it."""

    def register(check):
        _VISIBLE.setdefault(exercise_id, []).append(check)
        return check

    return register


def visible_checks(exercise_id: str) -> list[Callable]:
    entry = exercises.get(exercise_id)
    importlib.import_module(f"course_lib.checks.ch{entry.chapter:02d}")
    return list(_VISIBLE.get(exercise_id, []))


# --------------------------------------------------------------------------------------
# Where the learner's code runs
# --------------------------------------------------------------------------------------


class _InProcess:
    """The learner's own modules, called directly (notebook, progress command, book build)."""

    def module(self, name: str):
        return importlib.import_module(f"course_lib.{name}")

    def value(self, obj):
        return obj

    def recover(self, error: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


class _Sandboxed:
    """The learner's modules in a sandboxed worker, started on first use and after a crash."""

    def __init__(self, package_dir: Path):
        self.package_dir = package_dir
        self.worker = None

    def module(self, name: str):
        from grader.sandbox import Remote, Worker

        if self.worker is None:
            self.worker = Worker(self.package_dir)
        return Remote(self.worker, f"course_lib.{name}", [])

    def value(self, obj):
        from grader.sandbox import Remote

        return obj.fetch() if isinstance(obj, Remote) else obj

    def recover(self, error: BaseException) -> None:
        from grader.sandbox import SandboxError

        if isinstance(error, SandboxError):
            self.close()  # the next check gets a fresh worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def _backend():
    submission = os.environ.get(SUBMISSION_ENV)
    return _Sandboxed(Path(submission)) if submission else _InProcess()


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
            return where, f"expected {expected.dtype} of shape {tuple(expected.shape)}, got {actual.dtype} of shape {tuple(actual.shape)}"
        import torch

        return None if torch.equal(actual, expected) else (where, "tensors differ")
    if actual != expected:
        return where, f"expected {_short(expected)}, got {_short(actual)}"
    return None


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
            self._fail(what, f"expected {expected.dtype} of shape {tuple(expected.shape)}, got {actual.dtype} of shape {tuple(actual.shape)}")
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
        except Exception as err:  # noqa: BLE001 - any exception from the learner's code is judged here
            types, message = _exception_types(err)
            if types is None:
                raise
            if exc_type.__name__ in types:
                return message
            if "NotImplementedError" in types:
                raise
            raise CheckFailed(f"expected {exc_type.__name__}, but it raised {types[0]}: {message[:200]}") from None
        raise CheckFailed(f"expected {exc_type.__name__}, but nothing was raised")


def _exception_types(err: BaseException) -> tuple[list[str] | None, str]:
    """The class names of an exception raised by the learner's code, or ``None`` for a grader error."""
    try:
        from grader.sandbox import LearnerRaised, SandboxError
    except ImportError:
        return [c.__name__ for c in type(err).__mro__], str(err)
    if isinstance(err, SandboxError):
        return None, str(err)
    if isinstance(err, LearnerRaised):
        return err.types, err.message
    return [c.__name__ for c in type(err).__mro__], str(err)


def _explain(err: BaseException) -> str:
    if isinstance(err, CheckFailed):
        return str(err)
    types, message = _exception_types(err)
    if types is None:
        return message
    if "NotImplementedError" in types and message.startswith("Exercise "):
        return message
    return f"raised {types[0]}: {message[:300]}"


def _name(check: Callable) -> str:
    doc = (check.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else check.__name__.replace("_", " ")


def run_checks(exercise_id: str, checks: list[Callable] | None = None, *, hidden: bool = False) -> None:
    """Run the checks of one exercise (default: its visible checks) and report each one.

    Raises:
        ExerciseFailed: if any check failed, after all of them ran.
    """
    __tracebackhide__ = True  # IPython: show the learner the failure, not the harness's frames
    entry = exercises.get(exercise_id)
    checks = visible_checks(exercise_id) if checks is None else list(checks)
    if not checks:
        raise ValueError(f"Exercise {exercise_id} has no checks to run")
    kind = "hidden tests" if hidden else "checks"
    budget = time.monotonic() + float(os.environ.get("COURSE_GRADER_CELL_TIMEOUT", 300))
    backend = _backend()
    lines, passed = [], 0
    try:
        for check in checks:
            if time.monotonic() > budget:
                lines.append(f"  ✗ {_name(check)} — not run: the exercise's time budget is spent")
                continue
            try:
                check(Tester(backend, hidden))
            except Exception as err:  # noqa: BLE001 - every failure is reported, none stops the others
                lines.append(f"  ✗ {_name(check)} — {_explain(err)}")
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
