"""How long each chapter notebook takes alone and beside busy processes: a benchmark, not a test.

    PYTHONPATH=. .venv/bin/python -m bench.notebooks                      # every chapter, beside 1 busy process
    PYTHONPATH=. .venv/bin/python -m bench.notebooks --busy 2 book/ch05_gpt2.ipynb

Each notebook runs in a fresh kernel whose environment holds no thread settings, as when a learner
opens it in plain Jupyter (on the references: ``COURSE_LIB_SOLUTIONS=1``). It runs once alone and
once while ``--busy`` other processes spin on the CPU, alternately, ``--repeat`` times; the
report is the best time of each and their ratio. The course's target: beside one busy process, at
most twice the time alone (what ``course_lib.threads`` is for).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent


def run_once(path: Path) -> float:
    """Seconds to execute the notebook at ``path`` in a fresh kernel started from the repository."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter in book/")
    parser.add_argument("--busy", type=int, default=1, help="processes spinning beside the notebook (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind; the best counts (default 1)")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith(("OMP_", "MKL_", "COURSE_LIB_", "PYTEST_"))]:
        del os.environ[name]  # the kernel inherits this environment: none of the course's settings
    os.environ["COURSE_LIB_SOLUTIONS"] = "1"
    os.environ["PYTHONPATH"] = str(REPO)
    notebooks = args.notebooks or sorted((REPO / "book").glob("ch[0-9][0-9]_*.ipynb"))
    print(f"{'notebook':<36}{'alone':>9}{f'beside {args.busy} busy':>18}{'ratio':>8}")
    for path in notebooks:
        alone, loaded = [], []
        for _ in range(args.repeat):
            alone.append(run_once(path))
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            try:
                loaded.append(run_once(path))
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()
        best, worst = min(alone), min(loaded)
        print(f"{path.stem:<36}{best:>8.1f}s{worst:>17.1f}s{worst / best:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
