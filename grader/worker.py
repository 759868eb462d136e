"""The programs that run learner code: a factory of sandboxes, a template in each, a worker per exercise.

Importing torch takes a second or two, and more for its optimizers: longer than most exercises'
checks. So nothing here imports it twice. One *factory* process per judge (``python -I worker.py
--factory FD``, started by :mod:`grader.sandbox`) imports the libraries the course uses — never
``course_lib``, never anything of the instructor's — and then, for each submission, forks a
sandbox: it applies the limits, enters new mount, network and PID namespaces, runs the mount
script the grader sent (hiding the repository, making the file system read-only), drops to
``nobody`` without capabilities, and becomes that sandbox's *template*, PID 1 of its namespace.

The template talks to the grader over the pipes it was handed as stdin and stdout. For each
``{"op": "fork"}`` it copies the learner's package into a fresh folder and forks a *worker*, which
imports the learner's ``course_lib`` from there and answers calls until ``{"op": "exit"}``. When
the worker is gone, whatever it started is killed, its folder removed, and the template reports
``{"ended": exit_status}``: the next worker starts from the same clean state.

A worker is untrusted the moment learner code is imported, which is why the grader believes
nothing from it but plain values decoded by :func:`wire.decode`. Anything the learner's code
prints goes to stderr.
"""

import contextlib
import ctypes
import importlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire import WireError, decode, encode, receive, send

sys.path.pop(0)

_STANDARD_FINDERS = ("_frozen_importlib", "_frozen_importlib_external")
# What the course's modules import, loaded once by the template so that no worker pays for it.
PRELOAD = ("torch", "torch.nn", "torch.nn.functional", "numpy", "regex")
NOBODY = 65534
# Linux's numbers (sched.h, prctl.h, capability.h).
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _set_dumpable(value):
    """A process that is not dumpable cannot be traced or have its memory read by its own children."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing to protect beyond the limits
        _libc().prctl(PR_SET_DUMPABLE, value, 0, 0, 0)


def _preload():
    """Import what the course's modules use, so that each worker starts with it (never ``course_lib``)."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    torch = sys.modules.get("torch")
    if torch is not None:  # an optimizer's first construction imports a second and more of torch's compiler
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def _isolate_imports(run_dir):
    """Make ``course_lib`` importable from ``run_dir`` and from nowhere else."""
    sys.path[:] = [run_dir] + [p for p in sys.path if p and os.path.abspath(p) != run_dir]
    # Editable installs and similar hooks add finders that could supply a course_lib of their own.
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__module__", "") in _STANDARD_FINDERS]
    for name in [m for m in sys.modules if m == "course_lib" or m.startswith("course_lib.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _describe(exc):
    try:
        message = str(exc)
    except BaseException:
        message = "<exception with an unprintable message>"
    return {"types": [c.__name__ for c in type(exc).__mro__][:20], "message": message[:2000]}


# What a submission may not change in the worker (it would change nothing the grader believes, but the
# instructor's report names it): the harness's modules, the builtins and the interpreter's hooks.
WATCHED = ("course_lib.grading", "course_lib.exercises", "builtins")
WATCHED_SYS = ("excepthook", "displayhook", "exit", "settrace", "setprofile", "breakpointhook")


def _harness():
    """``{name: id(value)}`` for what :data:`WATCHED` holds (and the methods of the harness's classes)."""
    found = {f"sys.{name}": id(getattr(sys, name, None)) for name in WATCHED_SYS}
    for module_name in WATCHED:
        module = sys.modules.get(module_name)
        for name, value in list(vars(module).items()) if module else ():
            if name.startswith("__") and module_name != "builtins":
                continue
            found[f"{module_name}.{name}"] = id(value)
            if isinstance(value, type) and getattr(value, "__module__", "") == module_name:
                for attr, member in list(vars(value).items()):
                    found[f"{module_name}.{name}.{attr}"] = id(member)
    return found


def _patched(before):
    """The names of :func:`_harness` that the learner's code rebound or removed (a few, sorted)."""
    try:
        after = _harness()
        return sorted(name for name, ident in before.items() if after.get(name) != ident)[:20]
    except BaseException:
        return ["<the harness could not be inspected>"]


def serve(run_dir, requests, replies):
    """The worker: answer calls into the learner's ``course_lib`` until told to exit."""
    _isolate_imports(run_dir)
    with contextlib.suppress(BaseException):  # the instructor's modules, imported before any of the learner's
        importlib.import_module("course_lib.grading")
    before = _harness()
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

    send(replies, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            request = receive(requests)
        except EOFError:
            return
        if request == {"op": "exit"}:
            patched = _patched(before)
            if patched:
                send(replies, {"patched": patched})
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


def _reap_leftovers(worker_pid):
    """Kill everything the worker started, wherever it went (a daemon, a new session), and reap it."""
    if os.getpid() == 1:  # the sandbox's PID namespace: everything but this process is the worker's
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    # Without namespaces (COURSE_GRADER_SANDBOX=none), the worker's own session is all we can reach.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker_pid, signal.SIGKILL)


def template(package_dir, run_root):
    """The sandbox's template: fork a fresh worker per ``{"op": "fork"}`` until stdin closes."""
    requests = os.fdopen(0, "rb", buffering=0)  # unbuffered: a worker reads the same pipe after the template
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the learner's prints must not mix with replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as PID 1 only signals with handlers arrive; ignore those
    _set_dumpable(0)
    send(replies, {"ready": True})
    count = 0
    while True:
        try:
            request = receive(requests)
        except EOFError:
            return
        if request != {"op": "fork"}:
            return
        count += 1
        run_dir = os.path.join(run_root, f"w{count}")
        shutil.copytree(os.path.join(package_dir, "course_lib"), os.path.join(run_dir, "course_lib"))
        pid = os.fork()
        if pid == 0:  # the worker
            status = 0
            try:
                os.setpgid(0, 0)  # a group of its own: without namespaces, that is what the template can kill
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _set_dumpable(1)
                os.chdir(run_dir)
                os.environ["HOME"] = run_dir
                serve(run_dir, requests, replies)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        _reap_leftovers(pid)
        shutil.rmtree(run_dir, ignore_errors=True)
        send(replies, {"ended": os.waitstatus_to_exitcode(status)})


# -- the factory --------------------------------------------------------------------------


def _apply_limits(limits):
    for name, value in limits.items():
        if name == "RLIMIT_NPROC" and os.geteuid() != 0:
            continue  # counted per user: only meaningful once the sandbox runs as a user of its own
        resource.setrlimit(getattr(resource, name), (value, value))


def _drop_privileges(in_user_namespace):
    """Become ``nobody`` with no capabilities, none to regain (what ``setpriv`` does), or, in the user
    namespace made without root, enter a nested one that holds none and locks the mounts."""
    libc = _libc()
    if in_user_namespace:
        _check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    else:
        for cap in range(64):  # the bounding set: no later exec can bring a capability back
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)  # clears the effective and permitted sets
        header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (twice: 64 bits): all empty
        _check(libc.capset(header, data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _enter_namespaces():
    """New mount, network and PID namespaces (and a user namespace mapping this user to root, without
    root). Returns, whether it made a user namespace, only in the new PID namespace's first process;
    the process that called it waits for that one and exits with its status."""
    libc = _libc()
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
    if uid != 0:
        flags |= CLONE_NEWUSER
    _check(libc.unshare(flags), "unshare")
    if uid != 0:
        for path, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{path}", "w") as f:
                f.write(text)
    child = os.fork()
    if child:  # stay to hold the session; die with the namespace's first process
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    return uid != 0


def _sandbox(spec):
    """In a forked child of the factory: build the sandbox ``spec`` describes and become its template."""
    os.setsid()
    _apply_limits(spec["limits"])
    if spec["mode"] == "namespace":
        in_user_namespace = _enter_namespaces()
        done = subprocess.run(["sh", "-c", spec["script"]], stdin=subprocess.DEVNULL, stdout=2, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the sandbox's mount script failed (exit status {done.returncode})")
        _drop_privileges(in_user_namespace)
    os.chdir(spec["run"])
    os.environ.update(HOME=spec["run"], MPLCONFIGDIR=spec["run"])
    template(spec["package"], spec["run"])


def factory(control_fd):
    """Preload, then fork one sandbox per request on the control socket until it closes.

    A request is one packet, a JSON ``spec`` with three file descriptors: the template's stdin,
    stdout and stderr. The answer is ``{"pid": pid}``: the sandbox's process, whose process group
    the grader kills to stop it.
    """
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the sandboxes that end
    _preload()
    control.send(json.dumps({"ready": True}).encode())
    while True:
        message, fds, _, _ = socket.recv_fds(control, 1 << 20, 3)
        if not message:
            return
        spec = json.loads(message)
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # the control socket above all
                _sandbox(spec)
                os._exit(0)
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
                    sys.stderr.flush()
                os._exit(70)
        for fd in fds:
            os.close(fd)
        control.send(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    factory(int(sys.argv[2]) if sys.argv[1:2] == ["--factory"] else sys.exit("usage: worker.py --factory FD"))
