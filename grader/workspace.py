"""A learner studying alone: a workspace of stubs, graded by the real grader with the hidden tests.

    make workspace                      # workspace/ch01/, workspace/ch02/, ...: every chapter as a class gets it
    make grade-workspace                # grade every chapter in workspace/ (or CHAPTERS="ch01 ch03")

``create`` releases every chapter exactly as an instructor does (``python -m grader.course release``,
into the private course directory ``workspace/.course/``) and copies each released folder to
``workspace/<chapter>/``, never over one that exists (that is the learner's work). ``grade`` hands the
chosen chapter folders in as the student ``me`` and runs the instructor's ``make autograde`` on them
(sandbox, visible checks and hidden tests, nbgrader's gradebook and feedback), then prints each
chapter's score and copies nbgrader's feedback page, the one a class would get, to
``workspace/feedback/<chapter>.html``. Run from the repository, which holds the references and hidden
tests (``solutions/``, ``hidden/``) that grading needs.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDENT = "me"


def _course(folder: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_LIB_")}
    env.update(COURSE_DIR=str(folder / ".course"), PYTHONPATH=str(REPO), REGRADE="1")  # your edits: grade again
    env.pop("COURSE_GRADEBOOK_URL", None)  # the workspace's own gradebook, never a class's
    done = subprocess.run([sys.executable, "-m", "grader.course", *args], cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(done.returncode)


def create(folder: Path) -> list[str]:
    """Release every chapter and copy each new one into ``folder``; return the chapters copied."""
    _course(folder, "release")
    copied = []
    for released in sorted((folder / ".course" / "release").iterdir()):
        target = folder / released.name
        if target.exists():
            print(f"kept {target} (your work; delete it to start that chapter again)")
            continue
        shutil.copytree(released, target)
        copied.append(released.name)
        print(f"{target}: {len(list(target.rglob('*.py')))} files, the exercises unsolved")
    print(f"\nOpen a chapter's notebook in {folder}/<chapter>/; grade it with `make grade-workspace`.")
    return copied


def chapters_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("ch[0-9][0-9]") if p.is_dir())


def grade(folder: Path, chapters: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Grade ``chapters`` (default: every chapter in ``folder``) as the student ``me``: {chapter: (score, max)}."""
    chapters = chapters or chapters_in(folder)
    if not chapters:
        raise SystemExit(f"no chapter folders in {folder}: run `make workspace` first")
    root = folder / ".course"
    submitted = root / "submitted" / STUDENT
    shutil.rmtree(submitted, ignore_errors=True)  # only the chapters asked for, as they are now
    for chapter in chapters:
        if not (folder / chapter).is_dir():
            raise SystemExit(f"{folder / chapter} does not exist (chapters here: {', '.join(chapters_in(folder))})")
        shutil.copytree(folder / chapter, submitted / chapter, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    _course(folder, "autograde")
    with (root / "grades.csv").open(newline="", encoding="utf-8") as f:
        rows = {r["assignment"]: r for r in csv.DictReader(f) if r["student_id"] == STUDENT}
    scores = {}
    print()
    for chapter in chapters:
        row = rows[chapter]
        scores[chapter] = (float(row["score"]), float(row["max_score"]))
        page = next((root / "feedback" / STUDENT / chapter).glob("*.html"))
        target = folder / "feedback" / f"{chapter}.html"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(page, target)
        print(f"{chapter}: {scores[chapter][0]:g} / {scores[chapter][1]:g} points; feedback: {target}")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["create", "grade"])
    parser.add_argument("chapters", nargs="*", help="grade only these (ch01 ...); default: every chapter")
    parser.add_argument("--dir", type=Path, default=REPO / "workspace", help="the workspace (default workspace/)")
    args = parser.parse_args()
    folder = args.dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if args.command == "create":
        create(folder)
    else:
        grade(folder, args.chapters)


if __name__ == "__main__":
    main()
