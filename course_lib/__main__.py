"""``python -m course_lib progress``: the checklist of every exercise, with its visible checks' result.

Run it from the folder that holds ``course_lib`` (a chapter's assignment folder). It exits 0 only
when every visible check of every exercise passes; ``--chapter N`` limits it to one chapter.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys

from . import exercises
from .grading import run_checks, visible_checks

TIME_LIMIT = 120  # seconds for one exercise's visible checks


class _TooSlow(Exception):
    pass


def _alarm(signum, frame):
    raise _TooSlow


def check(entry: exercises.Exercise) -> tuple[bool, str]:
    """Run one exercise's visible checks quietly; return (passed, report)."""
    report = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm) if hasattr(signal, "SIGALRM") else None
    if previous is not None:
        signal.alarm(TIME_LIMIT)
    try:
        with contextlib.redirect_stdout(report):
            run_checks(entry.id)
            if visible_checks(entry.id, inputs=True):  # graded apart, but part of the exercise
                run_checks(entry.id, inputs=True)
        return True, report.getvalue()
    except _TooSlow:
        return False, report.getvalue() + f"  (stopped after {TIME_LIMIT} s: an infinite loop?)\n"
    except Exception as err:
        return False, report.getvalue() or f"  {type(err).__name__}: {err}\n"
    finally:
        if previous is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


def progress(chapter: int | None = None, verbose: bool = False) -> bool:
    entries = [e for e in exercises.all_exercises() if chapter is None or e.chapter == chapter]
    if not entries:
        raise SystemExit(f"no exercises in chapter {chapter}")
    done = 0
    current = None
    for entry in entries:
        if entry.chapter != current:
            current = entry.chapter
            print(f"\nChapter {current}")
        passed, report = check(entry)
        done += passed
        mark = "[x]" if passed else "[ ]"
        print(f"  {mark} {entry.id}  {entry.title}  ({entry.points} pt) — {entry.location}")
        if verbose or (not passed and "not implemented yet" not in report):
            print("".join(f"        {line}\n" for line in report.splitlines()[1:]), end="")
    points = sum(e.points for e in entries)
    print(
        f"\n{done}/{len(entries)} exercises pass their visible checks "
        f"(the grader also runs hidden tests; {points} points in all)."
    )
    return done == len(entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description="The Token's Journey: your progress.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("progress", help="check every exercise against its visible checks")
    command.add_argument("--chapter", type=int, help="only this chapter")
    command.add_argument("-v", "--verbose", action="store_true", help="print every check, passed or not")
    args = parser.parse_args(argv)
    return 0 if progress(args.chapter, args.verbose) else 1


if __name__ == "__main__":
    sys.exit(main())
