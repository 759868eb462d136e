"""Run a learner's ``course_lib`` in a sandbox and call into it.

Each submission gets a sandbox of its own: a process in new mount, network and PID namespaces,
forked by a *factory* that has imported torch once for all of them (see ``grader/worker.py``).
Before it runs a line of learner code:

- the instructor's repository and ``COURSE_DIR`` (source notebooks, ``solutions/``, the
  gradebook, other students' work) are covered by empty tmpfs mounts, and the rest of the file
  system is read-only, except small tmpfs mounts that hold the learner's package (read-only) and
  the workers' folders;
- it has no network, sees no other process, and runs as ``nobody`` with no capabilities (as a
  user without privileges it runs in a nested user namespace instead);
- address space, CPU time, processes, open files and file sizes are capped with ``setrlimit``.

The sandbox's template process forks a fresh worker for each exercise's checks. The grader waits
on each call with a wall-clock deadline and kills the whole namespace when it is overrun.
``COURSE_GRADER_SANDBOX=none`` runs without namespaces (limits and deadlines only), for machines
without them; do not grade untrusted work that way.
"""

from __future__ import annotations

from course_lib import threads
from course_lib.grading import GradingError

import atexit
import contextlib
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grader import wire

HERE = Path(__file__).resolve().parent
ENDED_WHY = "sys.exit, os._exit, a crash or a resource limit?"
NOBODY = 65534


def _setting(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def load_factor() -> float:
    """How many times slower than alone a process runs now: the 1-minute load per core, from 1 up to 10.

    ``COURSE_GRADER_LOAD_FACTOR`` fixes it instead (``1``: no scaling), for a benchmark that measures
    what the deadlines cost on a quiet machine while it runs on a busy one.
    """
    if os.environ.get("COURSE_GRADER_LOAD_FACTOR"):
        return float(os.environ["COURSE_GRADER_LOAD_FACTOR"])
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 1.0
    return min(10.0, max(1.0, load / threads.cores()))


def deadline(name: str, default: float) -> float:
    """A wall-clock limit in seconds: the setting ``name`` (or ``default``), scaled by :func:`load_factor`.

    A correct answer must not run out of time because other work shares the machine.
    """
    return float(os.environ.get(name, default)) * load_factor()


class SandboxError(Exception):
    """The worker crashed, timed out or broke the protocol: whatever was asked of it failed.

    ``kind`` says how, for the instructor's report: ``"hung"`` (a call overran its deadline),
    ``"budget"`` (the submission's time was spent), ``"exited"`` (the process ended: ``sys.exit``,
    ``os._exit``, a crash), ``"memory"`` (the memory cap), or ``"broken"`` (the protocol).
    """

    def __init__(self, why: str, kind: str = "broken"):
        super().__init__(why)
        self.kind = kind


class Patience:
    """How long one submission's calls may take, and what its exercises have done so far.

    Each call waits ``COURSE_GRADER_CALL_TIMEOUT`` seconds (10); once a call of the submission has
    overrun it, its later calls wait ``COURSE_GRADER_HUNG_CALL_TIMEOUT`` (2, still several times the
    slowest correct call); and all of them together fit in ``COURSE_GRADER_SUBMISSION_BUDGET`` (240),
    counted from the submission's start. Each is scaled by the load when it starts (:func:`deadline`).
    An exercise whose function hung or hit the memory cap fails its other checks at once, with the same
    reason (``stuck``), and what the report flags is kept in ``flags``.
    """

    def __init__(self, budget: float | None = None):
        self.budget = deadline("COURSE_GRADER_SUBMISSION_BUDGET", 240) if budget is None else budget
        self.ends_at = time.monotonic() + self.budget
        self.hung = False
        self.stuck: dict[str, SandboxError] = {}  # exercise id -> why its checks now fail at once
        self.flags: list[dict] = []  # {"exercise", "kind", "detail"}

    def call_deadline(self) -> tuple[float, str]:
        """The seconds the next call may take, and the kind of failure overrunning them is."""
        per_call = (
            deadline("COURSE_GRADER_HUNG_CALL_TIMEOUT", 2) if self.hung else deadline("COURSE_GRADER_CALL_TIMEOUT", 10)
        )
        left = self.ends_at - time.monotonic()
        if left <= 0:
            raise SandboxError(self.spent(), kind="budget")
        return (per_call, "hung") if per_call <= left else (left, "budget")

    def spent(self) -> str:
        return f"not run: the submission's time budget ({self.budget:.0f} s) is spent"

    def flag(self, exercise: str | None, kind: str, detail: str) -> None:
        entry = {"exercise": exercise, "kind": kind, "detail": detail[:300]}
        if entry not in self.flags:
            self.flags.append(entry)


class LearnerRaised(Exception):
    """The learner's code raised; ``types`` names the exception's classes, most derived first."""

    def __init__(self, types: list[str], message: str):
        super().__init__(f"{types[0] if types else 'Exception'}: {message}")
        self.types = types
        self.message = message


def _limits() -> dict[str, int]:
    """The ``setrlimit`` caps of a sandbox (``RLIMIT_NPROC`` applies only where it runs as a user of its own)."""
    return {
        "RLIMIT_AS": _setting("COURSE_GRADER_MEMORY_MB", 4096) << 20,
        "RLIMIT_CPU": _setting("COURSE_GRADER_CPU_SECONDS", 600),
        "RLIMIT_FSIZE": 64 << 20,
        "RLIMIT_NOFILE": 256,
        "RLIMIT_CORE": 0,
        "RLIMIT_NPROC": 256,  # counted per user: once the sandbox runs as nobody, this caps fork bombs
    }


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _namespace_script(hidden: list[Path], package: Path, run_root: Path, src_dir: Path, hold: Path) -> str:
    """The shell script that builds the sandbox's file system, run as root inside the new namespaces.

    ``package`` receives a read-only copy of ``src_dir`` (the learner's package); ``run_root`` is
    the only place the sandbox's user may write.
    """
    q = shlex.quote
    lines = ["set -eu", "mount --make-rprivate /", "mount -t proc -o nosuid,nodev,noexec proc /proc"]
    prefixes = {Path(p).absolute() for p in (sys.prefix, sys.base_prefix)}
    keep = sorted(p for p in prefixes if any(_under(p, h) or _under(p.resolve(), h) for h in hidden))
    for i, path in enumerate(keep):  # the interpreter must stay reachable when it lives in a hidden folder
        lines.append(f"mkdir -p {q(str(hold / str(i)))} && mount --bind {q(str(path))} {q(str(hold / str(i)))}")
    lines += [f"mount -t tmpfs -o size=1m,mode=0755 tmpfs {q(str(h))}" for h in hidden]
    for i, path in enumerate(keep):
        lines.append(f"mkdir -p {q(str(path))} && mount --bind {q(str(hold / str(i)))} {q(str(path))}")
    lines += [
        f"mount -t tmpfs -o size=64m,mode=0755 tmpfs {q(str(package))}",
        f"cp -R {q(str(src_dir))}/. {q(str(package))}/",
        f"chmod -R a+rX {q(str(package))}",
        f"mount -o remount,ro {q(str(package))}",
        f"mount -t tmpfs -o size=256m,mode=0755 tmpfs {q(str(run_root))}",
        "[ ! -d /dev/shm ] || mount -t tmpfs -o size=16m tmpfs /dev/shm",
        "mount -o remount,bind,ro /",
    ]
    if os.geteuid() == 0:
        lines.append(f"chown {NOBODY}:{NOBODY} {q(str(run_root))}")
    return "\n".join(lines)


def hidden_paths() -> list[Path]:
    """The folders the learner's code must not see: the instructor's repository and ``COURSE_DIR``."""
    paths = [HERE.parent]
    for extra in [os.environ.get("COURSE_DIR", "")] + os.environ.get("COURSE_GRADER_HIDE", "").split(os.pathsep):
        if extra:
            paths.append(Path(extra).resolve())
    # A folder inside another hidden one (COURSE_DIR inside the repository, by default) is hidden with it.
    return sorted(p for p in set(paths) if p.is_dir() and not any(p != q and _under(p, q) for q in paths))


SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}


class Factory:
    """The process that forks sandboxes (``grader/worker.py --factory``): one per grading process.

    It has imported torch and what else the course uses, and nothing of the instructor's: each
    sandbox it forks starts with them imported, in milliseconds.
    """

    _instance: Factory | None = None

    def __init__(self):
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-B", str(HERE / "worker.py"), "--factory", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=dict(SANDBOX_ENV, HOME="/nonexistent"),
            )
        self.control.settimeout(deadline("COURSE_GRADER_START_TIMEOUT", 60))
        try:
            ready = json.loads(self.control.recv(1 << 16) or b"null")
        except (OSError, ValueError) as err:
            ready = repr(err)
        if ready != {"ready": True}:
            self.close()
            raise SandboxError(f"the sandbox factory did not start ({ready})")

    @classmethod
    def get(cls) -> Factory:
        """The running factory of this process, started (again) if need be."""
        if cls._instance is None or cls._instance.process.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def spawn(self, spec: dict, fds: list[int]) -> int:
        """Fork a sandbox with ``fds`` as its stdin, stdout and stderr; return its process id."""
        try:
            socket.send_fds(self.control, [json.dumps(spec).encode()], fds)
            reply = json.loads(self.control.recv(1 << 16) or b"null")
        except (OSError, ValueError) as err:
            self.close()
            raise SandboxError(f"the sandbox factory failed ({err})") from None
        if type(reply) is not dict or type(reply.get("pid")) is not int:
            self.close()
            raise SandboxError(f"the sandbox factory answered {reply!r}")
        return reply["pid"]

    def close(self) -> None:
        self.control.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if Factory._instance is self:
            Factory._instance = None


atexit.register(lambda: Factory._instance and Factory._instance.close())


class _Channel:
    """The grader's ends of the pipes to a sandbox's template, and the sandbox's process id."""

    def __init__(self, pid: int, stdin: int, stdout: int):
        self.pid = pid
        self.stdin = os.fdopen(stdin, "wb")
        self.stdout = os.fdopen(stdout, "rb", buffering=0)


class Sandbox:
    """A sandbox holding a copy of one learner's ``course_lib``, and the template process inside it.

    The template has imported torch and the rest of what the course uses, never learner code.
    :meth:`worker` forks it into a fresh :class:`Worker` (a few milliseconds instead of the
    seconds an import of torch takes); a worker that crashes or is closed leaves the template as it
    was. A worker that overruns its deadline, or a template that misbehaves, takes the whole sandbox
    down: the next :meth:`worker` starts a new one.

    Args:
        package_dir: a folder holding the ``course_lib`` package to import (copied, never used in place).
        call_timeout: seconds one call may take, wall clock (default: what ``patience`` allows, else
            ``COURSE_GRADER_CALL_TIMEOUT``, scaled by the load when each call starts).
        patience: the submission's :class:`Patience`, when this sandbox grades one.
    """

    def __init__(self, package_dir: Path, call_timeout: float | None = None, patience: Patience | None = None):
        self.package_dir = package_dir
        self.call_timeout = call_timeout
        self.patience = patience
        self.notes: list[str] = []  # what the workers reported of themselves on exit (a patched harness)
        self.process: _Channel | None = None
        self.root: Path | None = None
        self.current: Worker | None = None
        self.last_stderr = ""
        self._strays: list[int] = []  # without namespaces: the workers' process groups, killed on close

    # -- the template process ------------------------------------------------------------

    def start(self) -> None:
        """Fork a sandbox from the factory and wait for its template; :class:`SandboxError` if it does not start."""
        self.root = Path(tempfile.mkdtemp(prefix="course-sandbox-"))
        os.chmod(self.root, 0o755)  # the sandbox's user must reach its folders in here ...
        src, package, run = self.root / "src", self.root / "package", self.root / "run"
        shutil.copytree(
            self.package_dir / "course_lib", src / "course_lib", ignore=shutil.ignore_patterns("__pycache__")
        )
        os.chmod(src, 0o700)  # ... but not this copy, nor any other sandbox's: only root copies it in
        package.mkdir()
        run.mkdir()
        self.stderr_path = self.root / "stderr.txt"
        mode = os.environ.get("COURSE_GRADER_SANDBOX", "namespace")
        spec = {"mode": mode, "package": str(package), "run": str(run), "limits": _limits()}
        if mode == "namespace":
            spec["script"] = _namespace_script(hidden_paths(), package, run, src, self.root / "hold")
        elif mode == "none":
            spec["package"] = str(src)
        else:
            raise SandboxError(f"COURSE_GRADER_SANDBOX must be 'namespace' or 'none', got {mode!r}")
        to_template, from_grader = os.pipe()
        to_grader, from_template = os.pipe()
        stderr = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            pid = Factory.get().spawn(spec, [to_template, from_template, stderr])
        except BaseException:
            os.close(from_grader)
            os.close(to_grader)
            raise
        finally:
            for fd in (to_template, from_template, stderr):
                os.close(fd)
        self.process = _Channel(pid, from_grader, to_grader)
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            ready = self._receive(deadline("COURSE_GRADER_START_TIMEOUT", 60))
        except SandboxError as err:  # no learner code has run yet: this is the sandbox's own failure
            raise SandboxError(f"the sandbox did not start: {err}\n{self.last_stderr}") from None
        if ready != {"ready": True}:
            self.close()
            raise SandboxError("the sandbox's template process did not start")

    def worker(self) -> Worker:
        """A fresh worker with the learner's package imported from a clean copy (the previous one is closed).

        Raises :class:`SandboxError` if no worker can be started, even in a new sandbox.
        """
        if self.current is not None:
            self.current.close()
        for attempt in (1, 2):  # an earlier worker may have left the template unusable: then a new sandbox
            try:
                if self.process is None:
                    self.start()
                self._send({"op": "fork"})
                reply = self._receive(deadline("COURSE_GRADER_START_TIMEOUT", 60))
                if type(reply) is not dict or reply.get("ready") is not True or type(reply.get("pid")) is not int:
                    self._fail(f"the template answered {reply!r:.80} instead of starting a worker")
            except SandboxError as err:
                self.close()
                if attempt == 2:
                    raise SandboxError(f"no sandboxed worker could be started: {err}\n{self.last_stderr}") from None
                continue
            self.current = Worker(self)
            if os.environ.get("COURSE_GRADER_SANDBOX") == "none":  # no namespace to kill it with the template
                self._strays.append(reply["pid"])
            return self.current
        raise AssertionError("unreachable")

    # -- protocol ------------------------------------------------------------------------

    def _send(self, message) -> None:
        if self.process is None:
            raise SandboxError("the sandbox already stopped")
        try:
            wire.send(self.process.stdin, message)
        except (BrokenPipeError, OSError):
            self._fail("the sandbox ended")

    def call_deadline(self) -> tuple[float, str]:
        """Seconds the next call may take, and the kind of failure overrunning them is (see :class:`Patience`)."""
        if self.call_timeout:
            return self.call_timeout, "hung"
        if self.patience is not None:
            return self.patience.call_deadline()
        return deadline("COURSE_GRADER_CALL_TIMEOUT", 10), "hung"

    def _receive(self, timeout: float, late: str = "hung"):
        deadline_at = time.monotonic() + timeout
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
            left = deadline_at - time.monotonic()
            if left <= 0:
                if late == "budget":
                    self._fail(self.patience.spent() if self.patience else f"timed out after {timeout:g} s", late)
                self._fail(f"timed out after {timeout:.3g} s (an infinite loop, or far too slow?)", late)
            if not self._selector.select(left):
                continue
            chunk = os.read(self.process.stdout.fileno(), 1 << 20)
            if not chunk:
                self._fail(f"the process ended — {ENDED_WHY}", "exited")
            self._buffer += chunk

    def _fail(self, why: str, kind: str = "broken"):
        self.last_stderr = self.stderr_tail()
        self.close()
        raise SandboxError(why, kind)

    def close(self) -> None:
        """Kill everything in the sandbox and remove its folder (a later :meth:`worker` starts a new one)."""
        if self.current is not None:
            self.current.process = None
            self.current = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its namespace's first process: all of it dies
            for group in self._strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
            self._strays = []
            for stream in (self.process.stdin, self.process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            self._selector.close()
            self.process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def stderr_tail(self, limit: int = 1500) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except (OSError, AttributeError):
            return ""
        return data[-limit:].decode("utf-8", errors="replace")


class Worker:
    """One worker forked from a :class:`Sandbox`'s template: calls into the learner's ``course_lib``.

    ``process`` is the sandbox's process while the worker lives, and ``None`` once it is gone.
    """

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self.process = sandbox.process
        self.root = sandbox.root

    def request(self, op: str, root, path: list[str], args=(), kwargs=None):
        """Send one call or attribute read; return the decoded value (handles become :class:`Remote`)."""
        if self.process is None:
            raise SandboxError("the worker already stopped")
        message = {"op": op, "ref": {"root": root, "path": list(path)}}
        if op == "call":
            message["args"] = wire.encode(list(args), _no_objects)
            message["kwargs"] = wire.encode(dict(kwargs or {}), _no_objects)
        timeout, late = self.sandbox.call_deadline()
        self.sandbox._send(message)
        try:
            reply = self.sandbox._receive(timeout, late)
        except SandboxError as err:
            if err.kind == "hung" and self.sandbox.patience is not None:
                self.sandbox.patience.hung = True  # from now on, this submission gets less time per call
            raise
        if type(reply) is dict and set(reply) == {"ended"}:  # the worker died; the template is intact
            self.process = None
            self.sandbox.current = None
            raise SandboxError(f"the process ended (exit status {reply['ended']}) — {ENDED_WHY}", "exited")
        if type(reply) is not dict or type(reply.get("ok")) is not bool:
            self.sandbox._fail("sent a malformed reply")
        if not reply["ok"]:
            error = reply.get("error")
            types = error.get("types") if type(error) is dict else None
            message_text = error.get("message") if type(error) is dict else None
            if type(types) is not list or not all(type(t) is str for t in types) or type(message_text) is not str:
                self.sandbox._fail("sent a malformed error")
            raise LearnerRaised(types, message_text)
        try:
            return wire.decode(
                reply.get("value"), lambda handle_id, type_name, path: Remote(self, handle_id, path, type_name)
            )
        except (wire.WireError, ValueError, TypeError, RuntimeError) as err:
            self.sandbox._fail(f"sent a value that cannot be decoded ({err})")

    def close(self) -> None:
        """End this worker; the template then kills whatever it left behind. Closing twice is harmless."""
        if self.process is None:
            return
        self.process = None
        sandbox, sandbox.current = self.sandbox, None
        end = time.monotonic() + deadline("COURSE_GRADER_START_TIMEOUT", 60)
        try:
            sandbox._send({"op": "exit"})
            while (left := end - time.monotonic()) > 0:  # replies the worker still had in flight come first
                reply = sandbox._receive(left)
                if type(reply) is dict and set(reply) == {"ended"}:
                    return
                if type(reply) is dict and set(reply) == {"patched"} and type(reply["patched"]) is list:
                    sandbox.notes += [str(name)[:100] for name in reply["patched"][:20]]
            sandbox.close()
        except SandboxError:
            pass  # the sandbox is closed already; the next worker starts a new one

    def stderr_tail(self, limit: int = 1500) -> str:
        return self.sandbox.stderr_tail(limit)


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


MEMORY_SIGNS = ("MemoryError", "can't allocate memory", "not enough memory", "std::bad_alloc")


class SandboxBackend:
    """The harness's backend in the grader: the learner's modules in a sandboxed worker.

    Each exercise's checks get a fresh worker, forked on first use and again after a crash or a
    timeout. ``sandbox`` is shared by the exercises of one submission (the judge's), or, given a
    folder, a sandbox of this backend's own, stopped by :meth:`close`. A worker that cannot even
    start is the grading machine's failure (:class:`GradingError`), never the learner's.

    ``exercise`` names the exercise whose checks this backend serves (the judge's, with the
    sandbox's :class:`Patience`): once one of its calls has hung or hit the memory cap, every later
    check of that exercise, in this cell or its other cells, fails at once with the same reason.
    """

    def __init__(self, sandbox: Sandbox | Path, exercise: str | None = None):
        self.owned = not isinstance(sandbox, Sandbox)
        self.sandbox = Sandbox(sandbox) if self.owned else sandbox
        self.exercise = exercise
        self.worker: Worker | None = None
        self.budget = deadline("COURSE_GRADER_CELL_TIMEOUT", 300)

    @property
    def patience(self) -> Patience | None:
        return self.sandbox.patience

    def module(self, name: str):
        patience = self.patience
        if patience is not None:
            if self.exercise in patience.stuck:  # this exercise hung already: fail now, for the same reason
                raise patience.stuck[self.exercise]
            if time.monotonic() >= patience.ends_at:
                raise SandboxError(patience.spent(), kind="budget")
        if self.worker is None or self.worker.process is None:
            try:
                self.worker = self.sandbox.worker()
            except (SandboxError, OSError) as err:
                raise GradingError(f"the grader's sandbox could not start: {err}") from None
        return Remote(self.worker, f"course_lib.{name}", [])

    def value(self, obj):
        return obj.fetch() if isinstance(obj, Remote) else obj

    def describe(self, error: BaseException) -> tuple[list[str], str]:
        if isinstance(error, SandboxError):
            self._note(error)
            return [], str(error)
        if isinstance(error, LearnerRaised):
            if any(sign in error.types or sign in error.message for sign in MEMORY_SIGNS):
                cap = _limits()["RLIMIT_AS"] >> 20
                self._note(SandboxError(f"hit the memory cap ({cap} MiB): {error}"[:300], kind="memory"))
            return error.types, error.message
        return [c.__name__ for c in type(error).__mro__], str(error)

    def _note(self, error: SandboxError) -> None:
        """Remember what the report flags, and make a hang or the memory cap stick to this exercise."""
        patience = self.patience
        if patience is None:
            return
        patience.flag(self.exercise, error.kind, str(error))
        if error.kind in ("hung", "memory") and self.exercise is not None:
            patience.stuck.setdefault(self.exercise, error)

    def recover(self, error: BaseException) -> None:
        if isinstance(error, SandboxError):
            self._note(error)
            if self.worker is not None:
                self.worker.close()  # the next check gets a fresh worker
                self.worker = None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.owned:
            self.sandbox.close()
