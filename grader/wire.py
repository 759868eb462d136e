"""The wire format between the trusted grader and a sandboxed worker running learner code.

Values cross as JSON with type tags. Only plain data can cross: ``None``, ``bool``, ``int``,
``float``, ``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset`` and
``torch.Tensor``, each recognised by its *exact* type. Anything else a learner's code returns
stays in the worker and crosses as a handle. The grader decodes with :func:`decode`, which
builds nothing but those plain types, so no object the learner made (one that fakes ``==``,
say) can reach a comparison.

This module is also the first part of the worker's program (see :mod:`grader.worker`): it must
stay self-contained, importing only the standard library (and torch lazily).
"""

import base64
import json
import math
import struct
import sys

MAX_MESSAGE = 256 << 20  # bytes in one message
MAX_DEPTH = 64
TENSOR_DTYPES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
)


class WireError(Exception):
    """A message that does not follow the wire format."""


def encode(value, keep, depth=0):
    """Tag ``value`` for JSON; ``keep(obj)`` stores a non-plain object and returns its handle tag."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind is str and any("\ud800" <= c <= "\udfff" for c in value):  # JSON would join a surrogate pair
        return {"t": "str", "v": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")}
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
    if kind is bytes:
        return {"t": "bytes", "v": base64.b64encode(value).decode("ascii")}
    if kind in (list, tuple, set, frozenset):
        items = sorted(value, key=repr) if kind in (set, frozenset) else value
        return {"t": kind.__name__, "v": [encode(v, keep, depth + 1) for v in items]}
    if kind is dict:
        return {"t": "dict", "v": [[encode(k, keep, depth + 1), encode(v, keep, depth + 1)] for k, v in value.items()]}
    torch = sys.modules.get("torch")
    if torch is not None and kind is torch.Tensor and str(value.dtype).replace("torch.", "") in TENSOR_DTYPES:
        flat = value.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return {
            "t": "tensor",
            "dtype": str(value.dtype).replace("torch.", ""),
            "shape": list(value.shape),
            "requires_grad": bool(value.requires_grad),
            "v": base64.b64encode(raw).decode("ascii"),
        }
    return keep(value)


def decode(obj, handle, depth=0):
    """Rebuild plain values from tagged JSON; ``handle(id, type_name, path)`` resolves a handle."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    kind = type(obj)
    if obj is None or kind is bool or kind is int or kind is str or kind is float:
        return obj
    if kind is not dict or type(obj.get("t")) is not str:
        raise WireError(f"unexpected JSON value of type {kind.__name__}")
    tag = obj["t"]
    if tag == "float" and obj.get("v") in ("nan", "inf", "-inf"):
        return float(obj["v"])
    if tag == "bytes" and type(obj.get("v")) is str:
        return base64.b64decode(obj["v"], validate=True)
    if tag == "str" and type(obj.get("v")) is str:
        try:
            return base64.b64decode(obj["v"], validate=True).decode("utf-8", "surrogatepass")
        except ValueError as err:  # not base64, or not UTF-8
            raise WireError(f"malformed string: {type(err).__name__}") from None
    if tag in ("list", "tuple", "set", "frozenset") and type(obj.get("v")) is list:
        items = [decode(v, handle, depth + 1) for v in obj["v"]]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict" and type(obj.get("v")) is list:
        out = {}
        for pair in obj["v"]:
            if type(pair) is not list or len(pair) != 2:
                raise WireError("malformed dict entry")
            out[decode(pair[0], handle, depth + 1)] = decode(pair[1], handle, depth + 1)
        return out
    if tag == "tensor":
        return _decode_tensor(obj)
    if tag == "handle" and type(obj.get("id")) is int and type(obj.get("type")) is str:
        path = obj.get("path", [])
        if type(path) is not list or not all(type(name) is str for name in path):
            raise WireError("malformed handle path")
        return handle(obj["id"], obj["type"][:100], path)
    raise WireError(f"unknown or malformed tag {tag[:40]!r}")


def _decode_tensor(obj):
    import torch

    dtype, shape = obj.get("dtype"), obj.get("shape")
    if dtype not in TENSOR_DTYPES or type(shape) is not list or any(type(d) is not int or d < 0 for d in shape):
        raise WireError("malformed tensor")
    raw = base64.b64decode(obj.get("v", ""), validate=True)
    torch_dtype = getattr(torch, dtype)
    numel = math.prod(shape)
    if len(raw) != numel * torch.empty(0, dtype=torch_dtype).element_size():
        raise WireError("tensor data does not match its shape and dtype")
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    tensor = flat.view(torch_dtype).reshape(shape).clone()
    return tensor.requires_grad_(True) if obj.get("requires_grad") is True and tensor.is_floating_point() else tensor


def send(stream, message):
    """Write one length-prefixed JSON message to a binary stream."""
    data = json.dumps(message, allow_nan=False).encode("utf-8")
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def parse(data):
    """Parse the body of one message (bytes) into JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise WireError(f"unreadable message: {type(err).__name__}") from None


def read_exact(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError("stream closed")
        data += chunk
    return data


def receive(stream):
    """Read one length-prefixed JSON message from a binary stream (blocking)."""
    (size,) = struct.unpack(">Q", read_exact(stream, 8))
    if size > MAX_MESSAGE:
        raise WireError(f"message of {size} bytes is over the {MAX_MESSAGE}-byte limit")
    return parse(read_exact(stream, size))
