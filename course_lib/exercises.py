"""The exercise registry and the switch that runs the package on the reference solutions.

Every exercise is a function or method in a ``course_lib`` module, decorated with
:func:`exercise`. The decorator records the exercise in :data:`REGISTRY` and wraps the
function so that, when the environment variable ``COURSE_LIB_SOLUTIONS`` is set to ``1``,
a call runs the reference in ``solutions/`` instead of the learner's body. The switch is
read at call time, so importing ``course_lib`` never needs the references, and learners
(who have no ``solutions/``) never need the switch.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import operator
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

#: The course_lib modules that hold exercises, in chapter order. Importing all of them fills
#: the registry; ``course_lib.exercises.all_exercises()`` does exactly that.
EXERCISE_MODULES = (
    "tokenization",
    "embeddings",
    "attention",
    "layers",
    "block",
    "gpt",
    "data",
    "training",
    "sampling",
    "rope",
    "kv_cache",
    "memory",
    "gqa",
    "mla",
    "moe",
    "mtp",
    "quantization",
    "fp8",
    "deepseek",
    "long_context",
    "ring",
    "sparse_attention",
    "hyper_connections",
    "yarn",
)

SOLUTIONS_ENV = "COURSE_LIB_SOLUTIONS"


@dataclass(frozen=True)
class Exercise:
    """One exercise: where it lives and what it is worth."""

    id: str  # "1.3": chapter 1, exercise 3
    title: str
    module: str  # "tokenization" (a module of course_lib)
    qualname: str  # "train_bpe" or "BPETokenizer.encode"
    points: int

    @property
    def chapter(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def number(self) -> int:
        return int(self.id.split(".")[1])

    @property
    def path(self) -> str:
        """The file a learner edits, relative to the folder that holds ``course_lib``."""
        return f"course_lib/{self.module}.py"

    @property
    def location(self) -> str:
        return f"`{self.qualname}` in {self.path}"

    def not_implemented_message(self) -> str:
        return f"Exercise {self.id} — {self.location} is not implemented yet"


REGISTRY: dict[str, Exercise] = {}


def _sort_key(exercise_id: str) -> tuple[int, int]:
    chapter, number = exercise_id.split(".")
    return int(chapter), int(number)


def exercise(exercise_id: str, title: str, points: int):
    """Register the decorated function as exercise ``exercise_id`` worth ``points`` points."""

    if not (isinstance(exercise_id, str) and re.fullmatch(r"[1-9][0-9]*\.[1-9][0-9]*", exercise_id)):
        raise ValueError(f"exercise id must look like '3.2', got {exercise_id!r}")
    if not (type(points) is int and points > 0):
        raise ValueError(f"points must be a positive int, got {points!r}")

    def decorate(fn):
        module = fn.__module__
        if module == "__main__":  # `python -m course_lib.training`: the module's real name is in its spec
            module = sys.modules["__main__"].__spec__.name
        module = module.rpartition(".")[2]
        entry = Exercise(exercise_id, title, module, fn.__qualname__, points)
        known = REGISTRY.get(exercise_id)
        if known is not None and (known.module, known.qualname) != (entry.module, entry.qualname):
            raise ValueError(f"exercise {exercise_id} is registered twice: {known.location} and {entry.location}")
        REGISTRY[exercise_id] = entry

        @functools.wraps(fn)
        def run(*args, **kwargs):
            if solutions_enabled():
                return reference(entry)(*args, **kwargs)
            try:
                return fn(*args, **kwargs)
            except NotImplementedError as err:
                if _is_the_stub(err, fn):  # a bare `raise NotImplementedError`: the registry says which one
                    raise NotImplementedError(entry.not_implemented_message()) from None
                raise

        run.exercise = entry
        return run

    return decorate


def _is_the_stub(err: NotImplementedError, fn) -> bool:
    """Whether ``err`` is the stub's own bare ``raise NotImplementedError`` (not one from deeper code)."""
    frame = err.__traceback__.tb_next if err.__traceback__ else None  # the frame of ``fn`` itself
    return not err.args and frame is not None and frame.tb_next is None and frame.tb_frame.f_code is fn.__code__


def solutions_enabled() -> bool:
    value = os.environ.get(SOLUTIONS_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{SOLUTIONS_ENV} must be '1' (use the references) or '0'/unset, got {value!r}")
    return value == "1"


@functools.cache
def reference(entry: Exercise):
    """The reference implementation of ``entry``, from the ``solutions`` package."""
    try:
        module = importlib.import_module(f"solutions.{entry.module}")
    except ModuleNotFoundError as err:
        raise RuntimeError(
            f"{SOLUTIONS_ENV}=1 asks for the reference of Exercise {entry.id}, but the package "
            f"'solutions' is not importable here ({err}). Learners: unset {SOLUTIONS_ENV}."
        ) from None
    return operator.attrgetter(entry.qualname)(module)


def all_exercises() -> list[Exercise]:
    """Every exercise of the course, in chapter order (imports every exercise module)."""
    for name in EXERCISE_MODULES:
        importlib.import_module(f"course_lib.{name}")
    return [REGISTRY[key] for key in sorted(REGISTRY, key=_sort_key)]


def get(exercise_id: str) -> Exercise:
    exercises = {e.id: e for e in all_exercises()}
    if exercise_id not in exercises:
        raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(exercises)}")
    return exercises[exercise_id]


def chapter_exercises(chapter: int) -> list[Exercise]:
    return [e for e in all_exercises() if e.chapter == chapter]


def implementation(entry: Exercise):
    """The learner's function or method object for ``entry`` (the decorated wrapper)."""
    module = importlib.import_module(f"course_lib.{entry.module}")
    return operator.attrgetter(entry.qualname)(module)


def package_root() -> Path:
    """The folder that holds the ``course_lib`` package."""
    return Path(inspect.getfile(all_exercises)).resolve().parent.parent
