"""Issue 17's attack mix: the hostile probe's repros as requests a client puts on the wire.

benchmarks/load_test.py sends them at a steady rate beside its normal load
against a real uvicorn; tests/app/test_attack_mix.py sends each once to the
in-process app and checks it is answered as `status` says, so the mix cannot
rot into requests the server answers for some other reason than the one the
repro is about.  Each builder takes the request's index in the mix, so that a
pattern can differ from one request to the next (issue 17 #5: every distinct
include glob used to leave ~19 MB in fnmatch's cache).
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quant_core import int4, write_nibble_safetensors
from quant_core.quantize import quantize
from tests.tensor_files import npy_bytes

BOUNDARY = "nibble-attack-boundary"
INCLUDE_MAX_CHARACTERS = 1024  # the include field's limit (SECURITY.md, "Cost bounds")
NPY_HEADER_MAX_BYTES = 65536  # a .npy header's limit
NPY_PREFIX = "{'descr':'<f4','fortran_order':False,'shape':("
HOSTILE_HOST = "evil.example"
MAXIMUM_SWEEP: dict[str, Any] = {  # 64 x 64 rows of 64 devices: MAX_SWEEP_ROWS rows, 2^18 device rows
    "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb"},
    "sweep": {"context_lengths": [1024 * (i + 1) for i in range(64)], "concurrent_sequences": list(range(1, 65)),
              "device_counts": [64]},
}

Delivery = Literal["whole", "trickle", "hang-up"]


@dataclass(frozen=True, slots=True)
class HostileRequest:
    """One request of the mix: what is sent, how, and the answer it must get alone.

    `status` is the answer on an idle server.  Under load, a route that takes a
    pool or sweep place before any work (`busy_refusal`) may answer 503 with
    ``Retry-After`` instead.  `delivery`: ``whole``; ``trickle`` (the head a
    byte at a time: slowloris); ``hang-up`` (the client closes once the request
    is sent, without reading the answer: issue 17 #1).
    """

    kind: str
    method: str
    path: str
    status: int
    body: bytes = b""
    content_type: str | None = None
    host: str | None = None  # a Host header sent instead of the server's own address
    busy_refusal: bool = False
    delivery: Delivery = "whole"

    def headers(self) -> dict[str, str]:
        """The request's own headers (Host only when it is part of the attack; Content-Length left to the sender)."""
        headers = {"Host": self.host} if self.host is not None else {}
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return headers

    def head(self, server_host: str) -> bytes:
        """The HTTP/1.1 request head, asking the server to close the connection after its answer."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host or server_host}", "Connection: close"]
        if self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}")
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> bytes:
    """A multipart/form-data body of text `fields` then `files` (name -> bytes), with BOUNDARY."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts += [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
              for name, content in files.items()]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _upload(kind: str, path: str, status: int, fields: dict[str, str], files: dict[str, bytes],
            delivery: Delivery = "whole") -> HostileRequest:
    return HostileRequest(kind, "POST", path, status, _multipart(fields, files),
                          f"multipart/form-data; boundary={BOUNDARY}", busy_refusal=True, delivery=delivery)


def _json(kind: str, path: str, status: int, body: bytes, busy_refusal: bool = False) -> HostileRequest:
    return HostileRequest(kind, "POST", path, status, body, "application/json", busy_refusal=busy_refusal)


@cache
def weights_npy() -> bytes:
    """A small float32 ``64 x 256`` weight as a .npy (the probe's ``w.npy``)."""
    return npy_bytes(np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32))


def npy_v2(header: str, data: bytes = b"\0" * 32) -> bytes:
    """A .npy version 2 file with `header` as its header text (4-byte length field: up to 4 GiB of header)."""
    encoded = header.encode("latin-1")
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(encoded)) + encoded + data


def nested_tuple_npy(repeats: int) -> bytes:
    """Issue 17 #2/#3: a header whose shape is ``"(1,2),"`` `repeats` times (6 bytes each)."""
    return npy_v2(NPY_PREFIX + "(1,2)," * repeats + ")}")


# the most repeats whose header (prefix, runs, ")}") stays within the 64 KiB limit: refused by its parser (422)
NPY_REPEATS_WITHIN_LIMIT = (NPY_HEADER_MAX_BYTES - len(NPY_PREFIX) - 2) // 6
NPY_REPEATS_ONE_MIB = 174_000  # the probe's 1 MiB header: refused by its length field alone (413)


@cache
def nibble_file() -> bytes:
    """A valid nibble file (one tensor ``weight``, rtn int4 g128) to edit into hostile ones."""
    weights = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="nibble-attack-") as directory:
        path = Path(directory) / "q.safetensors"
        write_nibble_safetensors(path, {"weight": quantize(weights, int4(), "rtn", name="weight")})
        return path.read_bytes()


def edited_nibble_file(section: str | None, key: str, value: object) -> bytes:
    """The nibble file with ``description[section][key]`` (or ``description[key]``) of ``weight`` set to `value`."""
    content = nibble_file()
    header_size = int.from_bytes(content[:8], "little")
    header = json.loads(content[8: 8 + header_size])
    descriptions = json.loads(header["__metadata__"]["nibble.tensors"])
    target = descriptions["weight"] if section is None else descriptions["weight"][section]
    target[key] = value
    header["__metadata__"]["nibble.tensors"] = json.dumps(descriptions)
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + content[8 + header_size:]


def surrogate_named_safetensors() -> bytes:
    """Issue 17 #8: a .safetensors whose one tensor is named ``"\\ud800"`` (valid JSON, not Unicode)."""
    header = b'{"\\ud800":{"dtype":"F32","shape":[2,32],"data_offsets":[0,256]}}'
    return len(header).to_bytes(8, "little") + header + b"\0" * 256


def bracket_glob(index: int) -> str:
    """Issue 17 #1/#5: a ``[``-heavy include glob of exactly 1,024 characters, distinct for each `index`."""
    tag = str(index)
    shapes = ("[" * INCLUDE_MAX_CHARACTERS, "[!" * (INCLUDE_MAX_CHARACTERS // 2),
              "[" * (INCLUDE_MAX_CHARACTERS - 24) + "*?" * 12)
    shape = shapes[index % len(shapes)]
    return shape[: INCLUDE_MAX_CHARACTERS - len(tag)] + tag


def _surrogate_plan(index: int) -> HostileRequest:
    body = (b'{"model":{"spec":{"name":"\\ud800","hidden_size":4096}},'
            b'"hardware":{"device":"h100-80gb"},"workload":{"context_length":8192}}')
    return _json("surrogate plan model.spec.name", "/v1/plan", 422, body)


def _surrogate_inspect(index: int) -> HostileRequest:
    return _json("surrogate inspect hf_config", "/v1/models/inspect", 422,
                 b'{"hf_config":{"_name_or_path":"\\ud800","model_type":"llama"}}')


def _surrogate_tensor_name(index: int) -> HostileRequest:
    return _upload("surrogate tensor name", "/v1/quantize", 422, {}, {"file": surrogate_named_safetensors()})


def _include_brackets(index: int) -> HostileRequest:
    return _upload("include [ x 1024", "/v1/quantize", 422, {"include": bracket_glob(index)},
                   {"file": weights_npy()})


def _include_brackets_hang_up(index: int) -> HostileRequest:
    return _upload("include [ x 1024, hang-up", "/v1/quantize/compare", 422,
                   {"include": bracket_glob(index), "methods": "rtn,hqq"}, {"file": weights_npy()}, "hang-up")


def _include_over_limit(index: int) -> HostileRequest:
    return _upload("include [ x 1025", "/v1/quantize", 422, {"include": "[" * (INCLUDE_MAX_CHARACTERS + 1)},
                   {"file": weights_npy()})


def _npy_header_near_limit(index: int) -> HostileRequest:
    return _upload("npy header 64 KiB", "/v1/quantize", 422, {}, {"file": nested_tuple_npy(NPY_REPEATS_WITHIN_LIMIT)})


def _npy_header_one_mib(index: int) -> HostileRequest:
    return _upload("npy header 1 MiB", "/v1/quantize", 413, {}, {"file": nested_tuple_npy(NPY_REPEATS_ONE_MIB)})


def _gptq_overflow(index: int) -> HostileRequest:
    calibration = npy_bytes(np.full((64, 256), 1e30, dtype=np.float32))
    return _upload("gptq calibration 1e30", "/v1/quantize", 422, {"method": "gptq"},
                   {"file": weights_npy(), "calibration": calibration})


def _dequantize(kind: str, section: str | None, key: str, value: object, status: int = 422
                ) -> Callable[[int], HostileRequest]:
    def build(index: int) -> HostileRequest:
        return _upload(kind, "/v1/dequantize", status, {}, {"file": edited_nibble_file(section, key, value)})
    return build


def _host_trailing_slash(index: int) -> HostileRequest:
    return HostileRequest("60 KB Host, trailing slash", "GET", "/v1/devices/", 404,
                          host=HOSTILE_HOST + ".a" * 30_000)


def _long_trailing_slash_path(index: int) -> HostileRequest:
    return HostileRequest("60 KB path, trailing slash", "GET", "/v1/models/" + "a/" * 30_000, 404,
                          host=HOSTILE_HOST)


def _trickled_head(index: int) -> HostileRequest:
    return HostileRequest("trickled head", "GET", "/v1/devices/", 404, host=HOSTILE_HOST, delivery="trickle")


def _maximum_sweep(index: int) -> HostileRequest:
    # the one request of the mix a server must serve: the largest sweep its limits allow
    return _json("maximum sweep", "/v1/plan/sweep", 200, json.dumps(MAXIMUM_SWEEP).encode(), busy_refusal=True)


def _sweep_over_limit(index: int) -> HostileRequest:
    sweep = {**MAXIMUM_SWEEP["sweep"], "context_lengths": [1024 * (i + 1) for i in range(65)]}
    return _json("sweep over max_sweep_rows", "/v1/plan/sweep", 413, json.dumps({**MAXIMUM_SWEEP, "sweep": sweep}
                                                                                 ).encode())


# One cycle of the mix (the trickled head is sent on connections of its own, held for the whole attack).
BUILDERS: tuple[Callable[[int], HostileRequest], ...] = (
    _include_brackets,
    _surrogate_plan,
    _npy_header_near_limit,
    _host_trailing_slash,
    _dequantize("nibble group_size 128.0", "format", "group_size", 128.0),
    _include_brackets_hang_up,
    _npy_header_one_mib,
    _surrogate_inspect,
    _gptq_overflow,
    _dequantize("nibble relative_error 400 digits", "quality", "relative_error", 10 ** 400),
    _long_trailing_slash_path,
    _include_over_limit,
    _maximum_sweep,
    _dequantize("nibble layout bogus", "format", "layout", "bogus"),
    _surrogate_tensor_name,
    _sweep_over_limit,
    _dequantize("nibble pad \"no\"", "format", "pad", "no"),
    _dequantize("nibble 536 M elements", None, "shape", [16384, 32768], 413),
)
TRICKLE_BUILDER: Callable[[int], HostileRequest] = _trickled_head
