"""The program that runs inside the sandbox: it imports the learner's ``course_lib`` and answers calls.

Run as ``python -I worker.py RUN_DIR`` with ``wire.py`` beside it. It reads requests from stdin
and writes replies to what was stdout; anything the learner's code prints goes to stderr. It is
untrusted the moment learner code is imported, which is why the grader believes nothing from it
but plain values decoded by :func:`wire.decode`.
"""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire import WireError, decode, encode, receive, send

sys.path.pop(0)

_STANDARD_FINDERS = ("_frozen_importlib", "_frozen_importlib_external")


def _isolate_imports(run_dir):
    """Make ``course_lib`` importable from ``run_dir`` and from nowhere else."""
    sys.path[:] = [run_dir] + [p for p in sys.path if p and os.path.abspath(p) != run_dir]
    # Editable installs and similar hooks add finders that could supply a course_lib of their own.
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__module__", "") in _STANDARD_FINDERS]
    for name in [m for m in sys.modules if m == "course_lib" or m.startswith("course_lib.")]:
        del sys.modules[name]


def _describe(exc):
    try:
        message = str(exc)
    except BaseException:
        message = "<exception with an unprintable message>"
    return {"types": [c.__name__ for c in type(exc).__mro__][:20], "message": message[:2000]}


def main():
    run_dir = os.path.abspath(sys.argv[1])
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the learner's prints must not mix with replies
    _isolate_imports(run_dir)

    objects = {}

    def keep(obj):
        objects[len(objects) + 1] = obj
        return {"t": "handle", "id": len(objects), "type": type(obj).__name__}

    def lookup(handle_id, _type_name, path=()):
        return resolve({"root": handle_id, "path": path})

    def resolve(ref):
        root, path = ref["root"], ref["path"]
        if type(root) is int:
            if root not in objects:
                raise WireError(f"unknown handle {root}")
            target = objects[root]
        elif type(root) is str and (root == "course_lib" or root.startswith("course_lib.")):
            target = importlib.import_module(root)
            origin = os.path.abspath(getattr(sys.modules["course_lib"], "__file__", "") or "")
            if not origin.startswith(run_dir + os.sep):
                raise ImportError(f"course_lib was imported from {origin}, not from the submission")
        else:
            raise WireError(f"bad reference root {root!r}")
        for name in path:
            if type(name) is not str or name.startswith("__"):
                raise WireError(f"bad attribute name {name!r}")
            target = getattr(target, name)
        return target

    send(replies, {"ready": True})
    while True:
        try:
            request = receive(requests)
        except EOFError:
            return
        try:
            target = resolve(request["ref"])
            if request["op"] == "call":
                args = decode(request["args"], lookup)
                kwargs = decode(request["kwargs"], lookup)
                value = target(*args, **kwargs)
            else:
                value = target
            reply = {"ok": True, "value": encode(value, keep)}
        except BaseException as exc:
            reply = {"ok": False, "error": _describe(exc)}
        send(replies, reply)


if __name__ == "__main__":
    main()
