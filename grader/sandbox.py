"""Run a learner's ``course_lib`` in a sandboxed worker process and call into it.

The worker is a fresh Python process started through ``unshare`` (util-linux) in its own mount,
network and PID namespaces. Before it runs a line of learner code:

- the instructor's repository and ``COURSE_DIR`` (source notebooks, ``solutions/``, the
  gradebook, other students' work) are covered by empty tmpfs mounts, and the rest of the file
  system is read-only, except a small tmpfs that holds the learner's package;
- it has no network, sees no other process, and runs as ``nobody`` with no capabilities (as a
  user without privileges it runs in a nested user namespace instead);
- address space, CPU time, processes, open files and file sizes are capped with ``setrlimit``.

The grader waits on each call with a wall-clock deadline and kills the whole namespace when it
is overrun. ``COURSE_GRADER_SANDBOX=none`` runs the worker without namespaces (limits and
deadlines only), for machines without ``unshare``; do not grade untrusted work that way.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from course_lib.grading import GradingError
from grader import wire

HERE = Path(__file__).resolve().parent
NOBODY = 65534


def _setting(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class SandboxError(Exception):
    """The worker crashed, timed out or broke the protocol: whatever was asked of it failed."""


class LearnerRaised(Exception):
    """The learner's code raised; ``types`` names the exception's classes, most derived first."""

    def __init__(self, types: list[str], message: str):
        super().__init__(f"{types[0] if types else 'Exception'}: {message}")
        self.types = types
        self.message = message


def _limits(memory_bytes: int, cpu_seconds: int):
    def apply():
        os.setsid()
        for limit, value in (
            (resource.RLIMIT_AS, memory_bytes),
            (resource.RLIMIT_CPU, cpu_seconds),
            (resource.RLIMIT_FSIZE, 64 << 20),
            (resource.RLIMIT_NOFILE, 256),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(limit, (value, value))
        if os.geteuid() == 0:  # counted per user: once the worker runs as nobody, this caps fork bombs
            resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))

    return apply


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _namespace_script(hidden: list[Path], run_dir: Path, src_dir: Path, hold: Path, command: list[str]) -> str:
    """The shell script that builds the sandbox inside fresh namespaces, then execs ``command``."""
    q = shlex.quote
    lines = ["set -eu", "mount --make-rprivate /"]
    prefixes = {Path(p).absolute() for p in (sys.prefix, sys.base_prefix)}
    keep = sorted(p for p in prefixes if any(_under(p, h) or _under(p.resolve(), h) for h in hidden))
    for i, path in enumerate(keep):  # the interpreter must stay reachable when it lives in a hidden folder
        lines.append(f"mkdir -p {q(str(hold / str(i)))} && mount --bind {q(str(path))} {q(str(hold / str(i)))}")
    lines += [f"mount -t tmpfs -o size=1m,mode=0755 tmpfs {q(str(h))}" for h in hidden]
    for i, path in enumerate(keep):
        lines.append(f"mkdir -p {q(str(path))} && mount --bind {q(str(hold / str(i)))} {q(str(path))}")
    lines += [
        f"mount -t tmpfs -o size=256m,mode=0755 tmpfs {q(str(run_dir))}",
        f"cp -R {q(str(src_dir))}/. {q(str(run_dir))}/",
        "[ ! -d /dev/shm ] || mount -t tmpfs -o size=16m tmpfs /dev/shm",
        "mount -o remount,bind,ro /",
    ]
    if os.geteuid() == 0:
        lines.append(f"chown -R {NOBODY}:{NOBODY} {q(str(run_dir))}")
        drop = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
    else:  # a nested user namespace without root locks the mounts above and holds no capabilities
        drop = ["unshare", "--user"]
    lines.append(f"cd {q(str(run_dir))}")
    lines.append("exec " + " ".join(q(part) for part in drop + command))
    return "\n".join(lines)


def hidden_paths() -> list[Path]:
    """The folders the learner's code must not see: the instructor's repository and ``COURSE_DIR``."""
    paths = [HERE.parent]
    for extra in [os.environ.get("COURSE_DIR", "")] + os.environ.get("COURSE_GRADER_HIDE", "").split(os.pathsep):
        if extra:
            paths.append(Path(extra).resolve())
    # A folder inside another hidden one (COURSE_DIR inside the repository, by default) is hidden with it.
    return sorted(p for p in set(paths) if p.is_dir() and not any(p != q and _under(p, q) for q in paths))


class Worker:
    """One sandboxed worker process holding a copy of a learner's ``course_lib``.

    Args:
        package_dir: a folder holding the ``course_lib`` package to import (copied, never used in place).
        call_timeout: seconds one call may take, wall clock.
    """

    def __init__(self, package_dir: Path, call_timeout: float | None = None):
        self.call_timeout = call_timeout or _setting("COURSE_GRADER_CALL_TIMEOUT", 20)
        self.root = Path(tempfile.mkdtemp(prefix="course-sandbox-"))
        os.chmod(self.root, 0o755)
        src, run, tools = self.root / "src", self.root / "run", self.root / "grader"
        shutil.copytree(package_dir / "course_lib", src / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
        tools.mkdir()
        for name in ("wire.py", "worker.py"):
            shutil.copy(HERE / name, tools / name)
        run.mkdir()
        self.stderr_path = self.root / "stderr.txt"
        command = [sys.executable, "-I", "-B", str(tools / "worker.py"), str(run)]
        mode = os.environ.get("COURSE_GRADER_SANDBOX", "namespace")
        if mode == "namespace":
            if shutil.which("unshare") is None:
                raise SandboxError("the sandbox needs `unshare` (util-linux); see COURSE_GRADER_SANDBOX in the README")
            script = _namespace_script(hidden_paths(), run, src, self.root / "hold", command)
            flags = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
            if os.geteuid() != 0:
                flags = ["--user", "--map-root-user"] + flags
            argv = ["unshare", *flags, "sh", "-c", script]
        elif mode == "none":
            shutil.copytree(src, run, dirs_exist_ok=True)
            argv = command
        else:
            raise SandboxError(f"COURSE_GRADER_SANDBOX must be 'namespace' or 'none', got {mode!r}")
        memory = _setting("COURSE_GRADER_MEMORY_MB", 4096) << 20
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=self.root,
                preexec_fn=_limits(memory, _setting("COURSE_GRADER_CPU_SECONDS", 600)),
                env={
                    "PATH": "/usr/bin:/bin",
                    "HOME": str(run),
                    "LANG": "C.UTF-8",
                    "MPLBACKEND": "Agg",
                    "MPLCONFIGDIR": str(run),
                    "OMP_NUM_THREADS": "1",
                    "PYTHONHASHSEED": "0",
                },
            )
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            ready = self._receive(_setting("COURSE_GRADER_START_TIMEOUT", 60))
        except SandboxError as err:  # no learner code has run yet: this is the sandbox's own failure
            raise SandboxError(f"the sandbox did not start: {err}\n{self.last_stderr}") from None
        if ready != {"ready": True}:
            self.close()
            raise SandboxError("the sandboxed worker did not start")

    # -- protocol ------------------------------------------------------------------------

    def _receive(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buffer) >= 8:
                (size,) = struct.unpack(">Q", self._buffer[:8])
                if size > wire.MAX_MESSAGE:
                    self._fail("sent a message over the size limit")
                if len(self._buffer) >= 8 + size:
                    body, self._buffer = self._buffer[8 : 8 + size], self._buffer[8 + size :]
                    try:
                        return wire.parse(body)
                    except wire.WireError as err:
                        self._fail(str(err))
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"timed out after {timeout:g} s (an infinite loop, or far too slow?)")
            if not self._selector.select(left):
                continue
            chunk = os.read(self.process.stdout.fileno(), 1 << 20)
            if not chunk:
                self.process.wait()
                self._fail(
                    f"the process ended (exit status {self.process.returncode}) — "
                    "sys.exit, os._exit, a crash or a resource limit?"
                )
            self._buffer += chunk

    def _fail(self, why: str):
        self.last_stderr = self.stderr_tail()
        self.close()
        raise SandboxError(why)

    def request(self, op: str, root, path: list[str], args=(), kwargs=None):
        """Send one call or attribute read; return the decoded value (handles become :class:`Remote`)."""
        if self.process is None:
            raise SandboxError("the worker already stopped")
        message = {"op": op, "ref": {"root": root, "path": list(path)}}
        if op == "call":
            message["args"] = wire.encode(list(args), _no_objects)
            message["kwargs"] = wire.encode(dict(kwargs or {}), _no_objects)
        try:
            wire.send(self.process.stdin, message)
        except (BrokenPipeError, OSError):
            self.process.wait()
            self._fail(f"the process ended (exit status {self.process.returncode})")
        reply = self._receive(self.call_timeout)
        if type(reply) is not dict or type(reply.get("ok")) is not bool:
            self._fail("sent a malformed reply")
        if not reply["ok"]:
            error = reply.get("error")
            types = error.get("types") if type(error) is dict else None
            message_text = error.get("message") if type(error) is dict else None
            if type(types) is not list or not all(type(t) is str for t in types) or type(message_text) is not str:
                self._fail("sent a malformed error")
            raise LearnerRaised(types, message_text)
        try:
            return wire.decode(
                reply.get("value"), lambda handle_id, type_name, path: Remote(self, handle_id, path, type_name)
            )
        except (wire.WireError, ValueError, TypeError, RuntimeError) as err:
            self._fail(f"sent a value that cannot be decoded ({err})")

    def close(self):
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                stream.close()
            self._selector.close()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def stderr_tail(self, limit: int = 1500) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", errors="replace")


def _no_objects(obj):
    """Arguments the grader sends are plain data, or objects that already live in the worker."""
    if isinstance(obj, Remote) and type(obj._root) is int:
        return {"t": "handle", "id": obj._root, "type": obj._type_name, "path": obj._path}
    raise TypeError(f"cannot send an object of type {type(obj).__name__} to the learner's code")


class Remote:
    """A stand-in for something that lives in the worker: a module, a function, an object."""

    def __init__(self, worker: Worker, root, path: list[str], type_name: str = ""):
        self._worker, self._root, self._path, self._type_name = worker, root, path, type_name

    def __getattr__(self, name: str) -> Remote:
        if name.startswith("__"):
            raise AttributeError(name)
        return Remote(self._worker, self._root, [*self._path, name])

    def __call__(self, *args, **kwargs):
        return self._worker.request("call", self._root, self._path, args, kwargs)

    def fetch(self):
        """Read this attribute's value from the worker."""
        return self._worker.request("get", self._root, self._path)

    def __repr__(self) -> str:
        where = self._root if isinstance(self._root, str) else f"<{self._type_name or 'object'} #{self._root}>"
        return ".".join([where, *self._path])


class SandboxBackend:
    """The harness's backend in the grader: the learner's modules in a sandboxed worker.

    A fresh worker starts on first use and after a crash or a timeout; a worker that cannot even
    start is the grading machine's failure (:class:`GradingError`), never the learner's.
    """

    def __init__(self, package_dir: Path):
        self.package_dir = package_dir
        self.worker: Worker | None = None
        self.budget = float(_setting("COURSE_GRADER_CELL_TIMEOUT", 300))

    def module(self, name: str):
        if self.worker is None:
            try:
                self.worker = Worker(self.package_dir)
            except (SandboxError, OSError) as err:
                raise GradingError(f"the grader's sandbox could not start: {err}") from None
        return Remote(self.worker, f"course_lib.{name}", [])

    def value(self, obj):
        return obj.fetch() if isinstance(obj, Remote) else obj

    def describe(self, error: BaseException) -> tuple[list[str], str]:
        if isinstance(error, SandboxError):
            return [], str(error)
        if isinstance(error, LearnerRaised):
            return error.types, error.message
        return [c.__name__ for c in type(error).__mro__], str(error)

    def recover(self, error: BaseException) -> None:
        if isinstance(error, SandboxError):
            self.close()  # the next check gets a fresh worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
