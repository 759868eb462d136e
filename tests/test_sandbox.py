"""The instructor's side of grading: the wire format between grader and worker, and the sandboxed
worker that runs a learner's code (a copy of ``course_lib`` with a crafted exercise module).

The worker tests need root and util-linux's ``mount``, as the grader does; elsewhere they skip.
"""

from __future__ import annotations

from course_lib import grading

import base64
import collections
import io
import json
import math
import os
import shutil
import socket
import struct
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from grader import sandbox as sandbox_module
from grader import wire
from grader.fill import fill_module
from grader.sandbox import LearnerRaised, Patience, Remote, Sandbox, SandboxBackend, SandboxError, Worker

# -- the wire format ---------------------------------------------------------------------------------


def _no_keep(obj):
    pytest.fail(f"a plain value became a handle: {type(obj).__name__}")


def _no_handle(*args):
    pytest.fail(f"decode made a handle: {args}")


def _round_trip(value):
    tagged = wire.encode(value, _no_keep)
    text = json.dumps(tagged, allow_nan=False)  # what send() does: strict JSON
    return wire.decode(json.loads(text), _no_handle)


def _same(actual, expected, where="value"):
    """Equal, and of exactly the same type, all the way down (a tuple is not a list)."""
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
    if type(expected) is float:
        if math.isnan(expected):
            assert math.isnan(actual), where
        else:
            assert actual == expected and math.copysign(1, actual) == math.copysign(1, expected), where
    elif type(expected) in (list, tuple):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _same(a, e, f"{where}[{i}]")
    elif type(expected) is dict:
        assert len(actual) == len(expected), where
        for (ka, va), (ke, ve) in zip(actual.items(), expected.items()):
            _same(ka, ke, f"{where} key")
            _same(va, ve, f"{where}[{ke!r}]")
    elif type(expected) in (set, frozenset):
        assert actual == expected, where
        for a in actual:  # members keep their exact types too
            [e] = [e for e in expected if e == a]
            _same(a, e, f"{where} member")
    elif type(expected) is torch.Tensor:
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert actual.requires_grad == expected.requires_grad, where
        assert actual.device.type == "cpu"

        def bits(t):
            return t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)

        assert torch.equal(bits(actual), bits(expected)), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, where


PLAIN = [
    None,
    True,
    False,
    0,
    -1,
    2**200,
    -(2**100),
    1.5,
    -0.0,
    1e308,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "héllo 👋 \x00 \ud7ff",
    "\ud83d\ude00 is two code points, 😀 one",  # a surrogate pair: JSON alone would join it into one
    "lone \udc80 and \ud800",
    "nan",
    b"",
    b"\x00\xff" * 3,
    bytes(range(256)),
    [],
    [1, [2, [3, []]]],
    (),
    (1,),
    (1, (2, "x"), [()]),
    {},
    {"k": {"n": None}, 3: b"x", None: 1.5, (1, 2): [3], (1, (2,)): (), frozenset({1}): "f", b"b": True},
    set(),
    {1, "a", (2, 3), None, b"z"},
    frozenset({b"x", 1.5, frozenset({2})}),
    {frozenset({1, 2}), frozenset()},
    [{"a": (set(), frozenset())}, ({1: {2: [None]}},)],
]


@pytest.mark.parametrize("value", PLAIN, ids=[f"{type(v).__name__}-{i}" for i, v in enumerate(PLAIN)])
def test_plain_values_round_trip_with_their_exact_types(value):
    _same(_round_trip(value), value)


def _tensors():
    g = torch.Generator().manual_seed(0)
    yield torch.arange(6).reshape(2, 3)
    yield torch.randn(3, 4, generator=g)
    yield torch.randn(5, generator=g, dtype=torch.float64)
    yield torch.randn(2, 2, generator=g).to(torch.float16)
    yield torch.randn(7, generator=g).to(torch.bfloat16)
    for dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        yield torch.randint(-100 if dtype != torch.uint8 else 0, 100, (4,), generator=g).to(dtype)
    yield torch.tensor([True, False, True])
    yield torch.tensor([1 + 2j, -3.5j], dtype=torch.complex64)
    yield torch.randn(3, generator=g, dtype=torch.complex128)
    yield torch.tensor(3.5)  # 0-d
    yield torch.tensor(7)
    yield torch.empty(0, 3)
    yield torch.empty(0, dtype=torch.bool)
    yield torch.randn(2, 3, generator=g).requires_grad_()
    yield torch.arange(12.0).reshape(3, 4).t()  # not contiguous
    yield torch.arange(3.0).expand(4, 3)  # stride 0
    yield torch.tensor([float("nan"), float("inf"), -0.0, 1e-45])
    yield torch.tensor([1 + 2j, 3 - 4j]).conj()  # a conjugate view
    yield torch.tensor([1 + 2j, 3 - 4j]).conj().imag  # a negative view


TENSORS = list(_tensors())


@pytest.mark.parametrize("tensor", TENSORS, ids=[f"{t.dtype}-{tuple(t.shape)}-{i}" for i, t in enumerate(TENSORS)])
def test_tensors_round_trip(tensor):
    back = _round_trip(tensor)
    expected = tensor.detach().resolve_conj().resolve_neg().clone().requires_grad_(tensor.requires_grad)
    _same(back, expected)
    assert back.is_contiguous() and not back.is_conj()
    if tensor.requires_grad:
        assert back.is_leaf
    _same(_round_trip({"t": [tensor, (tensor,)]}), {"t": [expected, (expected,)]})


class MyList(list):
    pass


class MyInt(int):
    pass


class MyStr(str):
    pass


class MyFloat(float):
    pass


class MyTuple(tuple):
    pass


class MyDict(dict):
    pass


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


class EqualList(list):
    def __eq__(self, other):
        return True


NOT_PLAIN = [
    MyList([1, 2]),
    MyInt(3),
    MyStr("a"),
    MyFloat(1.0),
    MyTuple((1,)),
    MyDict(a=1),
    collections.OrderedDict(a=1),
    collections.defaultdict(list),
    AlwaysEqual(),
    EqualList([1]),
    torch.nn.Parameter(torch.ones(2)),
    torch.zeros(2, dtype=torch.uint16),
    object(),
    range(3),
    bytearray(b"x"),
    memoryview(b"x"),
    1 + 2j,
    len,
]


@pytest.mark.parametrize("obj", NOT_PLAIN, ids=[type(o).__name__ for o in NOT_PLAIN])
def test_anything_else_becomes_a_handle(obj):
    kept = []

    def keep(o):
        kept.append(o)
        return {"t": "handle", "id": len(kept), "type": type(o).__name__}

    tagged = wire.encode([1, obj, {"k": obj}], keep)
    assert len(kept) == 2 and kept[0] is obj and kept[1] is obj
    assert tagged["v"][1] == {"t": "handle", "id": 1, "type": type(obj).__name__}

    made = []

    def handle(handle_id, type_name, path):
        made.append((handle_id, type_name, path))
        return ("HANDLE", handle_id)

    back = wire.decode(json.loads(json.dumps(tagged)), handle)
    assert back == [1, ("HANDLE", 1), {"k": ("HANDLE", 2)}]
    assert made == [(1, type(obj).__name__, []), (2, type(obj).__name__, [])]


def test_handles_carry_their_path_and_a_short_type_name():
    seen = []
    wire.decode({"t": "handle", "id": 4, "type": "X" * 500, "path": ["a", "b"]}, lambda *args: seen.append(args))
    assert seen == [(4, "X" * 100, ["a", "b"])]


def _tensor_tag(dtype="float32", shape=(2,), data=b"\x00" * 8, **extra):
    return {"t": "tensor", "dtype": dtype, "shape": list(shape), "v": base64.b64encode(data).decode(), **extra}


def _nested(depth):
    tagged = 0
    for _ in range(depth):
        tagged = {"t": "list", "v": [tagged]}
    return tagged


MALFORMED = {
    "unknown tag": {"t": "pickle", "v": "gASV"},
    "tag not a string": {"t": 3, "v": []},
    "no tag": {"v": [1]},
    "empty dict": {},
    "raw JSON list": [1, 2],
    "list without items": {"t": "list"},
    "list items not a list": {"t": "tuple", "v": "ab"},
    "dict entries not a list": {"t": "dict", "v": {"a": 1}},
    "dict entry of one": {"t": "dict", "v": [[1]]},
    "dict entry not a list": {"t": "dict", "v": [1]},
    "dict entry of three": {"t": "dict", "v": [[1, 2, 3]]},
    "float not a special": {"t": "float", "v": "1.5"},
    "float as a number": {"t": "float", "v": 1.5},
    "bytes not a string": {"t": "bytes", "v": 5},
    "tensor bad dtype": _tensor_tag(dtype="float8"),
    "tensor object dtype": _tensor_tag(dtype="object"),
    "tensor no dtype": _tensor_tag(dtype=None),
    "tensor negative shape": _tensor_tag(shape=(-2,)),
    "tensor float shape": _tensor_tag(shape=(2.0,)),
    "tensor bool shape": _tensor_tag(shape=(True, 2)),
    "tensor shape not a list": {**_tensor_tag(), "shape": "2"},
    "tensor too few bytes": _tensor_tag(data=b"\x00" * 4),
    "tensor too many bytes": _tensor_tag(data=b"\x00" * 12),
    "tensor no data": {"t": "tensor", "dtype": "int64", "shape": [1]},
    "tensor bytes for another dtype": _tensor_tag(dtype="float64", shape=(2,), data=b"\x00" * 8),
    "handle id a string": {"t": "handle", "id": "1", "type": "X"},
    "handle id a bool": {"t": "handle", "id": True, "type": "X"},
    "handle without type": {"t": "handle", "id": 1},
    "handle path a string": {"t": "handle", "id": 1, "type": "X", "path": "a.b"},
    "handle path of ints": {"t": "handle", "id": 1, "type": "X", "path": [1]},
    "too deep": _nested(wire.MAX_DEPTH + 1),
    "malformed inside a list": {"t": "list", "v": [1, {"t": "nope"}]},
    "malformed dict key": {"t": "dict", "v": [[{"t": "nope"}, 1]]},
    "str not utf-8": {"t": "str", "v": base64.b64encode(b"\xff").decode()},
    "str not base64": {"t": "str", "v": "%%"},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_decode_rejects_malformed_messages(name):
    with pytest.raises(wire.WireError):
        wire.decode(MALFORMED[name], lambda *args: "handle")


@pytest.mark.parametrize("payload", ["!!!!", "QUJ", "QU JD", "QUJD\n", "ÀÁ"])
def test_decode_rejects_data_that_is_not_base64(payload):
    # binascii.Error is a ValueError; Worker.request turns ValueErrors from decode into SandboxError.
    with pytest.raises(ValueError):
        wire.decode({"t": "bytes", "v": payload}, _no_handle)
    with pytest.raises(ValueError):
        wire.decode({"t": "tensor", "dtype": "uint8", "shape": [3], "v": payload}, _no_handle)


def test_depth_limit_on_both_sides():
    deep = 0
    for _ in range(wire.MAX_DEPTH):
        deep = [deep]
    assert _round_trip(deep) == deep  # exactly MAX_DEPTH levels is fine
    with pytest.raises(wire.WireError):
        wire.encode([deep], _no_keep)
    loop = []
    loop.append(loop)
    with pytest.raises(wire.WireError):  # a cycle is too deep, not a RecursionError
        wire.encode(loop, _no_keep)
    assert wire.decode(_nested(wire.MAX_DEPTH), _no_handle) is not None


@pytest.mark.parametrize("data", [b"{", b"", b"\xff\xfe{}", b'{"a": 1', b"[" * 100_000, b'"\xc3"', b"{'a': 1}"])
def test_parse_rejects_what_is_not_json(data):
    with pytest.raises(wire.WireError):
        wire.parse(data)


def test_send_and_receive():
    stream = io.BytesIO()
    message = {"op": "call", "args": wire.encode([1, (2.5, b"\x01")], _no_keep)}
    wire.send(stream, message)
    wire.send(stream, {"ready": True})
    stream.seek(0)
    assert wire.receive(stream) == message
    assert wire.receive(stream) == {"ready": True}
    with pytest.raises(EOFError):
        wire.receive(stream)
    with pytest.raises(ValueError):  # NaN never crosses as bare JSON
        wire.send(io.BytesIO(), {"x": float("nan")})
    with pytest.raises(wire.WireError):
        wire.receive(io.BytesIO(struct.pack(">Q", wire.MAX_MESSAGE + 1)))
    with pytest.raises(EOFError):
        wire.receive(io.BytesIO(struct.pack(">Q", 10) + b"{}"))


# -- the sandboxed worker -----------------------------------------------------------------------------

needs_sandbox = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="the sandbox needs root and mount (util-linux)"
)

LEARNER = """
import os
import socket
import sys

import course_lib.grading as _grading

# A module-level side effect: "fix" the grader so that everything compares equal.
_grading._difference = lambda actual, expected, where: None


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


def correct(n):
    return [n, n + 1]


def plain():
    return {
        "list": [1, 2.5, None], "tuple": (True, b"\\x00\\xff"), "set": {1, 2}, (1, 2): frozenset({"a"}), "big": 2**100
    }


def liar():
    return AlwaysEqual()


def type_name(x):
    return type(x).__name__


def fail():
    raise ValueError("bad input 42")


def leave():
    sys.exit(0)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def listdir(path):
    return sorted(os.listdir(path))


def write(path, text):
    with open(path, "w") as f:
        return f.write(text)


def whoami():
    return [os.getuid(), os.geteuid(), os.getgid(), os.getcwd()]


def credentials():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    names = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")
    return {name: fields[name].split() for name in names} | {"groups": os.getgroups()}


def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return "connected"


def import_solutions(repo):
    sys.path.insert(0, repo)
    import solutions.tokenization
    return solutions.tokenization.__file__


def noisy(n):
    print("x" * 100_000)
    sys.stdout.flush()
    os.write(1, b"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02{}")
    sys.__stdout__.write("junk at the end")
    sys.__stdout__.flush()
    return n


def grading_patched():
    import course_lib.grading as g
    return g._difference([1], [2], "result") is None


def limits():
    import resource
    names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_NPROC")
    return {name: resource.getrlimit(getattr(resource, name)) for name in names}


def signal(pid):
    os.kill(pid, 0)
    return "alive"


def allocate():
    return len(bytearray(8 << 30))


def die():
    os._exit(3)


def spin():
    while True:
        pass
"""


def _package(root: Path, source: str) -> Path:
    """A folder holding the repository's course_lib with ``source`` as its tokenization.py."""
    shutil.copytree(REPO / "course_lib", root / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "course_lib" / "tokenization.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return root


def _clean_env(patch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("COURSE_GRADER_") or name == "COURSE_DIR":
            patch.delenv(name)


def _world_readable_dir(prefix: str) -> Path:
    """A folder anyone may read (pytest's own temporary folders are private to root, which would
    hide them from the worker's user whether or not the sandbox hides them)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    (folder / "answers.txt").write_text("the answers")
    (folder / "answers.txt").chmod(0o644)
    return folder


@pytest.fixture(scope="module")
def secret_dir():
    folder = _world_readable_dir("course-test-secret-")
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def public_dir():
    folder = _world_readable_dir("course-test-public-")
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def worker(tmp_path_factory, secret_dir):
    package = _package(tmp_path_factory.mktemp("learner"), LEARNER)
    with pytest.MonkeyPatch.context() as patch:
        _clean_env(patch)
        patch.setenv("COURSE_GRADER_HIDE", str(secret_dir))
        sandbox = Sandbox(package, call_timeout=10)
        started = sandbox.worker()
    yield started
    sandbox.close()


@pytest.fixture
def lib(worker):
    assert worker.process is not None, "an earlier test killed the shared worker"
    return Remote(worker, "course_lib.tokenization", [])


def _fresh(tmp_path, source=LEARNER, call_timeout=3) -> Worker:
    """A worker in a sandbox of its own (``worker.sandbox``)."""
    with pytest.MonkeyPatch.context() as patch:
        _clean_env(patch)
        return Sandbox(_package(tmp_path, source), call_timeout=call_timeout).worker()


def _gone(pid: int, seconds: float = 5) -> bool:
    """Whether process ``pid`` has ended (and been reaped) within ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@needs_sandbox
def test_plain_results_come_back_as_plain_values(lib):
    assert lib.correct(3) == [3, 4] and type(lib.correct(3)) is list
    _same(
        lib.plain(),
        {"list": [1, 2.5, None], "tuple": (True, b"\x00\xff"), "set": {1, 2}, (1, 2): frozenset({"a"}), "big": 2**100},
    )
    assert lib.correct(n=2**70) == [2**70, 2**70 + 1]


@needs_sandbox
def test_an_object_faking_equality_stays_in_the_worker(lib):
    result = lib.liar()
    assert isinstance(result, Remote)
    assert grading._difference(result, [1, 2], "result") == ("result", "expected a list, got a Remote")
    with pytest.raises(grading.CheckFailed):
        grading.Tester(grading.InProcess(), hidden=False).equal(result, [1, 2])
    assert lib.type_name(result) == "AlwaysEqual"  # a handle goes back to the worker as the object itself
    with pytest.raises(TypeError):  # and nothing but plain data and handles can be sent
        lib.correct(object())
    assert lib.correct(1) == [1, 2]


@needs_sandbox
def test_learner_exceptions_are_reported_not_raised(lib):
    with pytest.raises(LearnerRaised) as info:
        lib.fail()
    assert info.value.types[:2] == ["ValueError", "Exception"] and info.value.message == "bad input 42"
    with pytest.raises(LearnerRaised) as info:
        lib.leave()
    assert "SystemExit" in info.value.types
    with pytest.raises(LearnerRaised) as info:
        lib.no_such_function()
    assert "AttributeError" in info.value.types
    assert lib.correct(5) == [5, 6]  # the worker survives all of them


@needs_sandbox
def test_only_course_lib_and_public_attributes_can_be_reached(worker, lib):
    with pytest.raises(AttributeError):
        lib.__builtins__  # noqa: B018 - a dunder never even crosses to the worker
    with pytest.raises(LearnerRaised, match="bad attribute"):
        worker.request("get", "course_lib.tokenization", ["__dict__"])
    with pytest.raises(LearnerRaised, match="bad reference root"):
        worker.request("get", "os", ["environ"])
    with pytest.raises(LearnerRaised, match="unknown handle"):
        worker.request("get", 10_000, [])


@needs_sandbox
def test_the_repository_and_hidden_folders_are_invisible(lib, secret_dir, public_dir):
    # The control: a folder that is not hidden can be read, so what follows is the sandbox's doing.
    assert lib.listdir(str(public_dir)) == ["answers.txt"]
    assert lib.read(str(public_dir / "answers.txt")) == b"the answers"
    solution = REPO / "solutions" / "tokenization.py"
    assert solution.is_file()
    with pytest.raises(LearnerRaised) as info:
        lib.read(str(solution))
    assert "FileNotFoundError" in info.value.types  # not a PermissionError: the folder is empty there
    assert set(lib.listdir(str(REPO))) <= {".venv"}
    with pytest.raises(LearnerRaised) as info:
        lib.read(str(secret_dir / "answers.txt"))
    assert "FileNotFoundError" in info.value.types
    assert lib.listdir(str(secret_dir)) == []
    with pytest.raises(LearnerRaised) as info:
        lib.import_solutions(str(REPO))
    assert "ModuleNotFoundError" in info.value.types


@needs_sandbox
def test_writes_only_in_its_own_folder(lib):
    outside = Path(f"/tmp/x-sandbox-test-{os.getpid()}")
    outside.unlink(missing_ok=True)
    with pytest.raises(LearnerRaised) as info:
        lib.write(str(outside), "escaped")
    assert "OSError" in info.value.types
    assert not outside.exists()
    with pytest.raises(LearnerRaised):
        lib.write(str(REPO / "course_lib" / "x.py"), "escaped")
    assert not (REPO / "course_lib" / "x.py").exists()
    assert lib.write("scratch.txt", "mine") == 4
    assert lib.read("scratch.txt") == b"mine"


@needs_sandbox
def test_runs_as_nobody_in_its_own_folder(lib, worker):
    uid, euid, gid, cwd = lib.whoami()
    assert (uid, euid, gid) == (65534, 65534, 65534)
    assert Path(cwd).parent == worker.root / "run"
    found = lib.credentials()
    assert found["Uid"] == found["Gid"] == ["65534"] * 4 and found["groups"] == []
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert found[caps] == ["0000000000000000"], caps  # no capabilities, none to regain
    assert found["NoNewPrivs"] == ["1"]


@needs_sandbox
def test_no_network_and_no_other_processes(lib):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        with pytest.raises(LearnerRaised) as info:
            lib.connect(port)
        assert "OSError" in info.value.types
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()
    with pytest.raises(LearnerRaised) as info:
        lib.signal(os.getpid())
    assert "ProcessLookupError" in info.value.types


@needs_sandbox
def test_resource_limits(lib):
    found = lib.limits()
    assert found["RLIMIT_AS"] == (4096 << 20,) * 2
    assert found["RLIMIT_CPU"] == (600, 600)
    assert found["RLIMIT_FSIZE"] == (64 << 20,) * 2
    assert found["RLIMIT_NOFILE"] == (256, 256)
    assert found["RLIMIT_CORE"] == (0, 0)


@needs_sandbox
def test_the_number_of_processes_is_capped(lib):
    soft, hard = lib.limits()["RLIMIT_NPROC"]
    assert 0 < hard <= 4096 and soft <= hard


@needs_sandbox
def test_printing_does_not_corrupt_the_protocol(lib, worker):
    assert lib.noisy(7) == 7
    assert lib.correct(1) == [1, 2]
    assert "junk at the end" in worker.stderr_tail()


@needs_sandbox
def test_side_effects_stay_in_the_worker(lib):
    lib.correct(0)  # the learner's module is imported by now
    assert lib.grading_patched() is True
    assert grading._difference([1], [2], "result") == ("result[0]", "expected 2, got 1")


@needs_sandbox
def test_a_process_exit_is_a_sandbox_error_and_the_next_worker_is_fresh(tmp_path):
    worker = _fresh(tmp_path)
    sandbox, pid = worker.sandbox, worker.process.pid
    with pytest.raises(SandboxError, match="ended"):
        Remote(worker, "course_lib.tokenization", []).die()
    assert worker.process is None
    with pytest.raises(SandboxError):
        Remote(worker, "course_lib.tokenization", []).correct(1)
    try:  # the template survives a worker's crash: the next worker comes from the same sandbox
        assert Remote(sandbox.worker(), "course_lib.tokenization", []).correct(1) == [1, 2]
        assert sandbox.process.pid == pid
    finally:
        sandbox.close()


@needs_sandbox
def test_each_worker_starts_clean(tmp_path):
    """What one exercise's worker leaves (module state, files, processes in the background) the next never sees."""
    source = LEARNER + textwrap.dedent(
        """
        import subprocess
        import time

        STATE = []

        def remember(x):
            STATE.append(x)
            return len(STATE)

        def daemon():
            subprocess.Popen(["sh", "-c", "exec sleep 1000"], start_new_session=True)
            time.sleep(0.2)
            return len(processes())

        def processes():
            return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        """
    )
    first = _fresh(tmp_path, source)
    sandbox = first.sandbox
    try:
        lib = Remote(first, "course_lib.tokenization", [])
        assert lib.remember(1) == 1 and lib.remember(2) == 2
        assert lib.write("left-behind.txt", "x") == 1
        assert lib.daemon() == 3  # the template (PID 1), this worker and its sleeping daemon
        lib = Remote(sandbox.worker(), "course_lib.tokenization", [])
        assert lib.remember(1) == 1
        with pytest.raises(LearnerRaised) as info:
            lib.read("left-behind.txt")
        assert "FileNotFoundError" in info.value.types
        found = lib.processes()
        assert len(found) == 2 and found[0] == 1  # the template and this worker: the daemon was killed
    finally:
        sandbox.close()


@needs_sandbox
def test_an_infinite_loop_times_out(tmp_path):
    worker = _fresh(tmp_path, call_timeout=3)
    pid, root = worker.process.pid, worker.root
    start = time.monotonic()
    with pytest.raises(SandboxError, match="timed out"):
        Remote(worker, "course_lib.tokenization", []).spin()
    assert 2.9 <= time.monotonic() - start < 6
    assert worker.process is None and worker.sandbox.process is None and not root.exists()
    assert _gone(pid)


@needs_sandbox
def test_a_huge_allocation_never_succeeds(tmp_path):
    worker = _fresh(tmp_path)
    try:
        Remote(worker, "course_lib.tokenization", []).allocate()
    except LearnerRaised as err:
        assert "MemoryError" in err.types
    except SandboxError:
        pass
    else:
        pytest.fail("allocating 8 GiB succeeded in the sandbox")
    finally:
        worker.sandbox.close()


@needs_sandbox
def test_close_removes_the_sandbox_folder(tmp_path):
    worker = _fresh(tmp_path)
    sandbox = worker.sandbox
    root, pid = worker.root, worker.process.pid
    assert Remote(worker, "course_lib.tokenization", []).correct(2) == [2, 3]
    worker.close()
    assert worker.process is None and root.exists()  # a worker's end leaves the sandbox for the next
    sandbox.close()
    assert not root.exists() and sandbox.process is None
    assert _gone(pid)
    sandbox.close()  # closing twice is harmless


@needs_sandbox
def test_checks_run_through_the_sandbox_when_grading(tmp_path, monkeypatch, capsys):
    """run_checks with the grader's sandbox backend installed: the honest solution passes, an object that fakes
    equality fails, and neither is imported into this process."""
    solved = fill_module(
        (REPO / "course_lib" / "tokenization.py").read_text(), (REPO / "solutions" / "tokenization.py").read_text()
    )
    cheat = solved + textwrap.dedent(
        """
        class _Equal(list):
            def __eq__(self, other):
                return True

        def merge_pair(ids, pair, new_id):
            return _Equal()
        """
    )
    _clean_env(monkeypatch)
    monkeypatch.setenv("COURSE_LIB_SOLUTIONS", "0")  # the worker's code is the learner's, whatever this says
    honest, cheating = _package(tmp_path / "honest", solved), _package(tmp_path / "cheat", cheat)
    monkeypatch.setattr(grading, "_backend_factory", lambda: SandboxBackend(honest))
    grading.run_checks("1.2")
    monkeypatch.setattr(grading, "_backend_factory", lambda: SandboxBackend(cheating))
    with pytest.raises(grading.ExerciseFailed):
        grading.run_checks("1.2")
    out = capsys.readouterr().out
    assert "3/3 checks passed" in out and "0/3 checks passed" in out


@needs_sandbox
def test_course_dir_inside_the_repository_is_hidden_with_it(tmp_path, secret_dir):
    """The default layout: COURSE_DIR is a folder of the repository (and need not exist yet)."""
    with pytest.MonkeyPatch.context() as patch:
        _clean_env(patch)
        patch.setenv("COURSE_DIR", str(REPO / "tests"))
        patch.setenv("COURSE_GRADER_HIDE", f"{REPO / 'course_lib'}:{REPO / 'no-such-folder'}:{secret_dir}")
        sandbox = Sandbox(_package(tmp_path, LEARNER), call_timeout=10)
        started = sandbox.worker()
    try:
        lib = Remote(started, "course_lib.tokenization", [])
        assert lib.correct(1) == [1, 2]
        with pytest.raises(LearnerRaised):
            lib.read(str(REPO / "tests" / "conftest.py"))
    finally:
        sandbox.close()


def test_a_submission_that_hung_gets_less_time_per_call_and_all_its_calls_share_a_budget(monkeypatch):
    monkeypatch.setattr(sandbox_module, "load_factor", lambda: 1.0)
    monkeypatch.setenv("COURSE_GRADER_CALL_TIMEOUT", "10")
    monkeypatch.setenv("COURSE_GRADER_HUNG_CALL_TIMEOUT", "2")
    patience = Patience(budget=30)
    assert patience.call_deadline() == (10, "hung")
    patience.hung = True  # what a call that overran its deadline leaves
    assert patience.call_deadline() == (2, "hung")
    patience.ends_at = time.monotonic() + 1  # less left of the budget than a call may take
    seconds, kind = patience.call_deadline()
    assert kind == "budget" and 0 < seconds <= 1
    patience.ends_at = time.monotonic() - 1
    with pytest.raises(SandboxError, match="time budget") as info:
        patience.call_deadline()
    assert info.value.kind == "budget"


def test_an_exercise_that_hung_fails_its_other_checks_at_once_for_the_same_reason(tmp_path):
    """The backend of a graded exercise: after one of its calls hung, asking for the learner's module fails at
    once (no worker is started) with that very error; another exercise of the submission is not affected."""
    patience = Patience(budget=60)
    shared = Sandbox(tmp_path, patience=patience)  # never started: no check below reaches the learner's code
    hung = SandboxError("timed out after 10 s (an infinite loop, or far too slow?)", kind="hung")
    backend = SandboxBackend(shared, exercise="1.3")
    assert backend.describe(hung) == ([], str(hung))
    backend.recover(hung)
    for _ in range(2):
        with pytest.raises(SandboxError) as info:
            SandboxBackend(shared, exercise="1.3").module("tokenization")
        assert info.value is hung
    assert patience.flags == [{"exercise": "1.3", "kind": "hung", "detail": str(hung)}]
    memory = LearnerRaised(["MemoryError", "Exception"], "")
    other = SandboxBackend(shared, exercise="1.6")
    assert other.describe(memory) == (["MemoryError", "Exception"], "")
    assert patience.stuck["1.6"].kind == "memory" and "memory cap" in str(patience.stuck["1.6"])
    assert "1.4" not in patience.stuck
