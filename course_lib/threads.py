"""How many threads PyTorch may use: the one place every process of the course gets its answer.

PyTorch's CPU kernels run on an OpenMP pool that, by default, has one thread per core and spins
while it waits. Two such processes on one machine (two test workers, a notebook beside a grading
job, a training script on a busy laptop) fight for the cores: a training step measured 14× slower
that way on a 2-core machine. So, on importing ``course_lib``:

- the OpenMP wait policy is passive (a waiting thread sleeps instead of spinning), where torch
  has not started its pool yet — the chapter notebooks import ``course_lib`` before torch;
- the thread count is ``COURSE_LIB_THREADS`` if set; else, under pytest-xdist, the cores divided
  among its workers (``PYTEST_XDIST_WORKER_COUNT``), at least one; else ``OMP_NUM_THREADS`` if
  set; else the cores this process may use.

Child processes (notebook kernels under nbval and the book build, sandboxed grading workers,
``torchrun`` workers) inherit the same settings through the environment.
"""

from __future__ import annotations

import os
import sys

THREADS_ENV = "COURSE_LIB_THREADS"


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity mask
        return os.cpu_count() or 1


def threads() -> tuple[int, bool]:
    """The number of threads this process should give PyTorch, and whether the course decided it."""
    value = os.environ.get(THREADS_ENV, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value), True
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if workers.isdigit() and int(workers) > 0:
        return max(1, cores() // int(workers)), True
    inherited = os.environ.get("OMP_NUM_THREADS", "")
    if inherited.isdigit() and int(inherited) > 0:
        return int(inherited), False
    return cores(), False


def configure() -> int:
    """Apply the course's thread settings to this process and its future children; return the count."""
    count, decided = threads()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if decided:
            os.environ[name] = str(count)
        else:
            os.environ.setdefault(name, str(count))
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
