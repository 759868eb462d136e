"""Write the reference bodies into a learner's exercise file, as a learner who solved everything would.

``fill_module(stub_source, solution_source)`` replaces the body of every ``@exercise`` function or
method in a ``course_lib`` module (or of those named in ``only``) with the body of the same-named
reference in ``solutions/`` (keeping the docstring), and adds the reference module's imports. The
tests use it to prove that a fully solved release earns full marks; the judge uses it to complete
earlier chapters' exercises, so that a chapter's grade never depends on them.

    python -m grader.fill course_lib/tokenization.py solutions/tokenization.py > solved.py
"""

from __future__ import annotations

import ast
import sys
import textwrap


def _exercise_functions(tree: ast.Module):
    """Yield ``(qualname, node)`` for every function decorated with ``@exercise(...)``."""

    def visit(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    call = decorator.func if isinstance(decorator, ast.Call) else decorator
                    if isinstance(call, ast.Name) and call.id == "exercise":
                        yield f"{prefix}{node.name}", node

    yield from visit(tree.body, "")


def _find(tree: ast.Module, qualname: str) -> ast.FunctionDef:
    body, node = tree.body, None
    for name in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name), None)
        if node is None:
            raise KeyError(f"the solutions module has no {qualname}")
        body = node.body
    return node


def _body_lines(node: ast.FunctionDef, lines: list[str]) -> tuple[int, int]:
    """0-based [start, end) line span of the function's body after its docstring."""
    body = node.body
    has_doc = (
        isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    first = body[1] if has_doc and len(body) > 1 else body[0]
    if has_doc and len(body) == 1:
        raise ValueError(f"{node.name} has only a docstring")
    start = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])]) - 1
    return start, node.end_lineno


def fill_module(stub_source: str, solution_source: str, only: set[str] | None = None) -> str:
    """``stub_source`` with the reference body of every exercise in it (of those named in ``only``)."""
    stub_tree, solution_tree = ast.parse(stub_source), ast.parse(solution_source)
    lines = stub_source.splitlines(keepends=True)
    solution_lines = solution_source.splitlines(keepends=True)
    edits = []
    for qualname, node in _exercise_functions(stub_tree):
        if only is not None and qualname not in only:
            continue
        reference = _find(solution_tree, qualname)
        ref_start, ref_end = _body_lines(reference, solution_lines)
        body = textwrap.dedent("".join(solution_lines[ref_start:ref_end]))
        start, end = _body_lines(node, lines)
        indent = " " * node.body[-1].col_offset
        edits.append((start, end, textwrap.indent(body, indent)))
    for start, end, text in sorted(edits, reverse=True):
        lines[start:end] = [text]
    present = {ast.dump(n) for n in stub_tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    imports = [
        ast.get_source_segment(solution_source, n)
        for n in solution_tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        and ast.dump(n) not in present
        and not (
            isinstance(n, ast.ImportFrom) and (n.module == "__future__" or (n.module or "").startswith("course_lib"))
        )
    ]
    last_import = max(n.end_lineno for n in stub_tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    lines.insert(last_import, "".join(f"{line}\n" for line in imports))
    return "".join(lines)


def replace_bodies(source: str, body: str, only: set[str] | None = None) -> str:
    """``source`` with the body of every exercise in it (of those named in ``only``) replaced by ``body``
    (after the docstring): the benchmark and the tests make submissions that hang this way."""
    lines = source.splitlines(keepends=True)
    edits = []
    for qualname, node in _exercise_functions(ast.parse(source)):
        if only is None or qualname in only:
            start, end = _body_lines(node, lines)
            edits.append(
                (start, end, textwrap.indent(textwrap.dedent(body).strip() + "\n", " " * node.body[-1].col_offset))
            )
    for start, end, text in sorted(edits, reverse=True):
        lines[start:end] = [text]
    return "".join(lines)


if __name__ == "__main__":
    stub_path, solution_path = sys.argv[1:3]
    with open(stub_path, encoding="utf-8") as stub, open(solution_path, encoding="utf-8") as solution:
        sys.stdout.write(fill_module(stub.read(), solution.read()))
