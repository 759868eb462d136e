"""How long ``make autograde`` takes for a class: a benchmark, not a test.

    PYTHONPATH=. .venv/bin/python -m bench.autograde                  # 4 learners x every chapter
    PYTHONPATH=. .venv/bin/python -m bench.autograde --learners 2 --jobs 1
    PYTHONPATH=. .venv/bin/python -m bench.autograde --hanging        # and one learner whose code loops forever

It releases every chapter into a temporary ``COURSE_DIR``, hands in one solved submission per
learner and chapter (the references filled into the stubs), then times one whole
``python -m grader.course autograde`` — preflight, grading, feedback and export — and checks that
every submission scored full marks. It prints the seconds per submission: the figure the README
and the notes quote (target: at most 3 s per submission on a 2-core machine).

``--hanging`` adds, in every chapter, a submission whose every exercise loops forever (and
``--hog`` one whose every exercise fills memory until the cap): each must score 0 on every test
cell, and the benchmark prints how long each took to judge, per chapter (target: at most 60 s).
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

from grader.course import read_state
from grader.fill import fill_module, replace_bodies

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict[str, str], echo: bool = False) -> None:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if echo:
        print(done.stdout, done.stderr, sep="\n")
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


ADVERSARIES = {  # learner: what each exercise's body does instead of its work
    "hang": "while True:\n    pass",
    "hog": "_hog = []\nwhile True:\n    _hog.append(bytearray(1 << 24))",
}


def hand_in_adversaries(root: Path, names: list[str]) -> None:
    """In every released chapter, a submission per name in ``names``: every exercise does ``ADVERSARIES[name]``."""
    for release in sorted((root / "release").iterdir()):
        entries = exercises.chapter_exercises(int(release.name[2:]))
        for name in names:
            folder = root / "submitted" / name / release.name
            shutil.copytree(release, folder)
            for path in sorted({e.path for e in entries}):
                only = {e.qualname for e in entries if e.path == path}
                (folder / path).write_text(
                    replace_bodies((folder / path).read_text(encoding="utf-8"), ADVERSARIES[name], only)
                )


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
    parser.add_argument("--hanging", action="store_true", help="add a submission that loops forever, per chapter")
    parser.add_argument("--hog", action="store_true", help="add a submission that fills memory, per chapter")
    parser.add_argument("--chapters", default="", help="only these chapters, e.g. ch01,ch05 (default: all)")
    parser.add_argument(
        "--load-factor",
        default="",
        help="COURSE_GRADER_LOAD_FACTOR: fix the deadlines' scaling (1: none, as when idle)",
    )
    args = parser.parse_args()
    adversaries = [name for name, wanted in (("hang", args.hanging), ("hog", args.hog)) if wanted]
    with tempfile.TemporaryDirectory(prefix="course-bench-") as tmp:
        root = Path(tmp) / "course"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_LIB_", "COURSE_GRADER_"))}
        env.update(COURSE_DIR=str(root), PYTHONPATH=str(REPO))
        if args.chapters:
            book = Path(tmp) / "book"
            book.mkdir()
            for chapter in args.chapters.split(","):
                shutil.copy(next((REPO / "book").glob(f"{chapter}_*.ipynb")), book)
            env["COURSE_BOOK_DIR"] = str(book)
        if args.jobs is not None:
            env["JOBS"] = str(args.jobs)
        if args.load_factor:
            env["COURSE_GRADER_LOAD_FACTOR"] = args.load_factor
        _run(["grader.course", "release"], env)
        submissions = hand_in_solved(root, args.learners)
        hand_in_adversaries(root, adversaries)
        start = time.perf_counter()
        _run(["grader.course", "autograde"], env, echo=args.verbose)
        seconds = time.perf_counter() - start
        with open(root / "grades.csv", newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if row["status"] == "graded"]
        solved = [r for r in rows if r["student_id"] not in adversaries]
        short = [r for r in solved if float(r["score"]) != float(r["max_score"])]
        if len(solved) != submissions or short:
            raise SystemExit(f"expected {submissions} full marks, got {len(solved) - len(short)}: {short[:3]}")
        for name in adversaries:
            scored = [r for r in rows if r["student_id"] == name and float(r["score"]) != 0]
            if scored or len([r for r in rows if r["student_id"] == name]) != submissions // args.learners:
                raise SystemExit(f"{name}: expected 0 in every chapter, got {scored[:3]}")
            states = {a.name: read_state(root, a.name, name) for a in sorted((root / "release").iterdir())}
            if any(any(v.get("passed") for v in state["verdicts"]) for state in states.values()):
                raise SystemExit(f"{name}: a test cell passed")
            per_chapter = {a: state["seconds"] for a, state in states.items()}
            print(
                f"{name}: every exercise's code {'loops forever' if name == 'hang' else 'fills memory'}; judged in "
                + ", ".join(f"{a} {t:.1f} s" for a, t in per_chapter.items())
                + f" (at most {max(per_chapter.values()):.1f} s a chapter)"
            )
        if adversaries:
            judging = sum(float(read_state(root, r["assignment"], r["student_id"])["seconds"]) for r in solved)
            print(f"the solved submissions' judging alone (each judge's time): {judging / submissions:.2f} s each")
    chapters = submissions // args.learners
    total = submissions + len(adversaries) * chapters
    print(
        f"autograde: {submissions} solved submissions ({args.learners} learners x {chapters} chapters)"
        + (f" and {total - submissions} adversarial ones" if adversaries else "")
        + f", JOBS={args.jobs or 'default'}, on {os.cpu_count()} cores: {seconds:.1f} s in all, "
        f"{seconds / total:.2f} s per submission"
    )


if __name__ == "__main__":
    main()
