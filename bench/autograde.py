"""How long ``make autograde`` takes for a class: a benchmark, not a test.

    PYTHONPATH=. .venv/bin/python -m bench.autograde                  # 4 learners x every chapter
    PYTHONPATH=. .venv/bin/python -m bench.autograde --learners 2 --jobs 1

It releases every chapter into a temporary ``COURSE_DIR``, hands in one solved submission per
learner and chapter (the references filled into the stubs), then times one whole
``python -m grader.course autograde`` — preflight, grading, feedback and export — and checks that
every submission scored full marks. It prints the seconds per submission: the figure the README
and the notes quote (target: at most 3 s per submission on a 2-core machine).
"""

from __future__ import annotations

from course_lib import exercises

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grader.fill import fill_module

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict[str, str], echo: bool = False) -> None:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if echo:
        print(done.stdout, done.stderr, sep="\n")
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def hand_in_solved(root: Path, learners: int) -> int:
    """Copy each released chapter to ``submitted/learnerN/`` with every exercise solved; return how many."""
    count = 0
    for release in sorted((root / "release").iterdir()):
        files = sorted({e.path for e in exercises.chapter_exercises(int(release.name[2:]))})
        for n in range(1, learners + 1):
            folder = root / "submitted" / f"learner{n}" / release.name
            shutil.copytree(release, folder)
            for path in files:
                solution = (REPO / "solutions" / Path(path).name).read_text(encoding="utf-8")
                (folder / path).write_text(fill_module((folder / path).read_text(encoding="utf-8"), solution))
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=4, help="solved submissions per chapter (default 4)")
    parser.add_argument("--jobs", type=int, default=None, help="JOBS for autograde (default: its own default)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show autograde's output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="course-bench-") as tmp:
        root = Path(tmp) / "course"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_LIB_", "COURSE_GRADER_"))}
        env.update(COURSE_DIR=str(root), PYTHONPATH=str(REPO))
        if args.jobs is not None:
            env["JOBS"] = str(args.jobs)
        _run(["grader.course", "release"], env)
        submissions = hand_in_solved(root, args.learners)
        start = time.perf_counter()
        _run(["grader.course", "autograde"], env, echo=args.verbose)
        seconds = time.perf_counter() - start
        with open(root / "grades.csv", newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if row["status"] == "graded"]
        short = [r for r in rows if float(r["score"]) != float(r["max_score"])]
        if len(rows) != submissions or short:
            raise SystemExit(f"expected {submissions} full marks, got {len(rows) - len(short)}: {short[:3]}")
    print(
        f"autograde: {submissions} solved submissions ({args.learners} learners x {submissions // args.learners} "
        f"chapters), JOBS={args.jobs or 'default'}, on {os.cpu_count()} cores: {seconds:.1f} s in all, "
        f"{seconds / submissions:.2f} s per submission"
    )


if __name__ == "__main__":
    main()
