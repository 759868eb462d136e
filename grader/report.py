"""The instructor's report on a graded class: ``make report`` (after ``make autograde``).

    python -m grader.course report     # grades.csv from the gradebook, then <COURSE_DIR>/report/

It reads the gradebook's export (``grades.csv``) and what ``make autograde`` kept of each
submission (``<COURSE_DIR>/.verdicts/``: every test's result and reason, the time it took, and
what the grader noticed), and writes ``<COURSE_DIR>/report/``:

- ``index.html``: per chapter, the score distribution (a histogram), each exercise's and each
  test's pass rate (bar charts), the slowest submissions, and the flagged ones (exited the
  interpreter, hung, hit the memory cap, spent the time budget, patched the harness, had files
  replaced, or failed because of the grading machine), each with the student, the exercise and
  the reason. The figures are PNGs embedded in the page: one file to mail or publish.
- ``submissions.csv``, ``tests.csv`` and ``flags.csv``: the same numbers, for a spreadsheet.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from collections import defaultdict
from pathlib import Path

from grader import course
from grader.judge import EXERCISE_OF_CELL

#: How the report words each kind of flag (see grader/sandbox.py's SandboxError and course.prepare_submissions).
KINDS = {
    "hung": "hung (a call overran its deadline)",
    "budget": "spent the submission's time budget",
    "exited": "exited the interpreter (sys.exit, os._exit, a crash)",
    "memory": "hit the memory cap",
    "patched": "patched the harness",
    "files": "files replaced or removed",
    "broken": "broke the grader's protocol",
    "grading error": "the grading machine failed (no grade recorded)",
}
CHECK_LINE = re.compile(r"^  (✓|✗) (.+?)(?: — (.*))?$")
SLOWEST = 5


def cell_kind(source: str) -> str:
    if "inputs=True" in source:
        return "input checks"
    return "hidden tests" if "run_hidden" in source else "visible checks"


def collect(root: Path) -> dict[str, dict]:
    """Per chapter: its submissions (score, time, status), its tests' results, and its flags."""
    with (root / "grades.csv").open(newline="", encoding="utf-8") as f:
        grades = [row for row in csv.DictReader(f) if row["status"] != "not submitted"]
    chapters: dict[str, dict] = {}
    for row in grades:
        assignment, student = row["assignment"], row["student_id"]
        chapter = chapters.setdefault(
            assignment, {"submissions": [], "tests": defaultdict(lambda: [0, 0]), "exercises": {}, "flags": []}
        )
        state = course.read_state(root, assignment, student) or {}
        score = float(row["score"]) if row["score"] else None
        chapter["submissions"].append(
            {
                "student": student,
                "score": score,
                "max_score": float(row["max_score"]),
                "seconds": state.get("seconds"),
                "status": row["status"],
            }
        )
        for flag in course.read_files_flags(root, assignment, student):
            chapter["flags"].append({"student": student, **flag})
        if row["status"] == "grading error":
            reasons = sorted({v["grading_error"] for v in state.get("verdicts", []) if "grading_error" in v})
            detail = "; ".join(reasons) or "see make autograde's output"
            chapter["flags"].append({"student": student, "exercise": None, "kind": "grading error", "detail": detail})
            continue
        passed_all: dict[str, bool] = {}
        for source, verdict in zip(state.get("sources", []), state.get("verdicts", [])):
            found = EXERCISE_OF_CELL.search(source)
            exercise = found.group(1) if found else "?"
            passed_all[exercise] = passed_all.get(exercise, True) and bool(verdict.get("passed"))
            for line in (verdict.get("stdout") or "").splitlines():
                check = CHECK_LINE.match(line)
                if check:
                    counts = chapter["tests"][(exercise, cell_kind(source), check.group(2))]
                    counts[0] += check.group(1) == "✓"
                    counts[1] += 1
            chapter["flags"] += [{"student": student, **flag} for flag in verdict.get("flags", [])]
        for exercise, passed in passed_all.items():
            counts = chapter["exercises"].setdefault(exercise, [0, 0])
            counts[0] += passed
            counts[1] += 1
    for chapter in chapters.values():  # one line per student, exercise and kind of flag, with every reason
        merged: dict[tuple, list[str]] = {}
        for flag in chapter["flags"]:
            reasons = merged.setdefault((flag["student"], flag.get("exercise") or "", flag["kind"]), [])
            if flag["detail"] not in reasons:
                reasons.append(flag["detail"])
        chapter["flags"] = [
            {"student": student, "exercise": exercise or None, "kind": kind, "detail": "; ".join(reasons)}
            for (student, exercise, kind), reasons in sorted(merged.items())
        ]
    return dict(sorted(chapters.items()))


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(assignment: str, chapter: dict) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of the chapter's histogram and pass-rate bar charts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figures = []
    scored = [s for s in chapter["submissions"] if s["score"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist([100 * s["score"] / s["max_score"] for s in scored], bins=[i * 10 for i in range(11)], color="tab:blue")
    ax.set(title=f"{assignment}: score distribution ({len(scored)} graded)", xlabel="score (% of the maximum)")
    ax.set_ylabel("submissions")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    figures.append(("Score distribution", _png(fig)))

    exercises = sorted(chapter["exercises"], key=lambda e: tuple(int(p) for p in e.split(".")) if e != "?" else ())
    rates = [100 * chapter["exercises"][e][0] / chapter["exercises"][e][1] for e in exercises]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.35 * len(exercises)))
    ax.barh([f"Exercise {e}" for e in exercises], rates, color="tab:green")
    ax.invert_yaxis()
    ax.set(title=f"{assignment}: exercises passed in full", xlabel="submissions (%)", xlim=(0, 100))
    figures.append(("Each exercise's pass rate (all its cells passed)", _png(fig)))

    tests = sorted(chapter["tests"].items())
    labels = [f"{e} {kind.split()[0]}: {name[:60]}" for (e, kind, name), _ in tests]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.22 * len(tests)))
    ax.barh(labels, [100 * passed / total for _, (passed, total) in tests], color="tab:orange")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set(title=f"{assignment}: each test's pass rate", xlabel="submissions passing (%)", xlim=(0, 100))
    figures.append(("Each test's pass rate (visible checks, hidden tests, input checks)", _png(fig)))
    return figures


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def build(root: Path) -> Path:
    """Write ``<root>/report/`` from ``<root>/grades.csv`` and ``<root>/.verdicts/``; return the page's path."""
    chapters = collect(root)
    out = root / "report"
    out.mkdir(exist_ok=True)
    sections, submission_rows, test_rows, flag_rows = [], [], [], []
    for assignment, chapter in chapters.items():
        subs = chapter["submissions"]
        for s in subs:
            submission_rows.append([assignment, s["student"], s["score"], s["max_score"], s["seconds"], s["status"]])
        for (exercise, kind, name), (passed, total) in sorted(chapter["tests"].items()):
            test_rows.append([assignment, exercise, kind, name, passed, total, round(passed / total, 3)])
        for f in chapter["flags"]:
            flag_rows.append([assignment, f["student"], f.get("exercise") or "", f["kind"], f["detail"]])
        slowest = sorted((s for s in subs if s["seconds"] is not None), key=lambda s: -s["seconds"])[:SLOWEST]
        flagged = [
            [f["student"], f.get("exercise") or "(files)", KINDS.get(f["kind"], f["kind"]), f["detail"]]
            for f in chapter["flags"]
        ]
        images = "".join(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, data in _figures(assignment, chapter)
        )
        sections.append(
            f"<h2>{assignment}</h2>"
            f"<p>{len(subs)} submissions, {sum(s['status'] == 'graded' for s in subs)} graded.</p>{images}"
            f"<h3>Slowest submissions</h3>"
            + _table(["student", "seconds", "score"], [[s["student"], s["seconds"], s["score"]] for s in slowest])
            + f"<h3>Flagged ({len({f[0] for f in flagged})} students)</h3>"
            + (_table(["student", "exercise", "what", "reason"], flagged) if flagged else "<p>None.</p>")
        )
    _write_csv(
        out / "submissions.csv", ["assignment", "student", "score", "max_score", "seconds", "status"], submission_rows
    )
    _write_csv(
        out / "tests.csv", ["assignment", "exercise", "cell", "test", "passed", "submissions", "pass_rate"], test_rows
    )
    _write_csv(out / "flags.csv", ["assignment", "student", "exercise", "kind", "reason"], flag_rows)
    page = out / "index.html"
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}img{max-width:100%;display:block;"
        "margin:1em 0}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
    )
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>Grading report</title><style>{style}</style>"
        f"</head><body><h1>Grading report: {html.escape(course.COURSE_ID)}</h1>"
        "<p>Tables for a spreadsheet beside this page: submissions.csv, tests.csv, flags.csv.</p>"
        + "".join(sections)
        + "</body></html>\n",
        encoding="utf-8",
    )
    return page
