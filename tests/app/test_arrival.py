"""Quantizing an upload while it arrives (app/arrival.py, `quantize_file(..., arrival=...)`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from app.arrival import ArrivalRecorder, ArrivalWaiter, UploadIncomplete
from app.jobs import QuantizeJob, ReadLimits, quantize_file
from quant_core.errors import TensorFileError
from tests.tensor_files import load_safetensors, npy_bytes

LIMITS = ReadLimits(64, 1 << 26, 1 << 16)


def test_waiter_returns_once_the_bytes_have_arrived(tmp_path: Path) -> None:
    recorder = ArrivalRecorder(tmp_path / "a.arrival")
    waiter = ArrivalWaiter(recorder.path)
    timer = threading.Timer(0.05, recorder.advance, args=(100,))
    timer.start()
    assert waiter.wait_bytes(100) == 100
    assert waiter.waited_seconds > 0.0
    timer.join()


def test_waiter_raises_when_the_upload_is_abandoned(tmp_path: Path) -> None:
    recorder = ArrivalRecorder(tmp_path / "a.arrival")
    recorder.advance(10)
    threading.Timer(0.02, recorder.abandon).start()
    with pytest.raises(UploadIncomplete):
        ArrivalWaiter(recorder.path).wait_bytes(20)


def test_waiter_gives_up_when_nothing_arrives_for_its_patience(tmp_path: Path) -> None:
    recorder = ArrivalRecorder(tmp_path / "a.arrival")
    recorder.advance(10)
    waiter = ArrivalWaiter(recorder.path, patience_seconds=0.05)
    with pytest.raises(UploadIncomplete, match="no bytes arrived"):
        waiter.wait_bytes(20)
    with pytest.raises(UploadIncomplete, match="no bytes arrived"):
        waiter.final_size()


def test_waiter_raises_when_the_upload_completes_short(tmp_path: Path) -> None:
    recorder = ArrivalRecorder(tmp_path / "a.arrival")
    recorder.complete(10)
    waiter = ArrivalWaiter(recorder.path)
    assert waiter.wait_bytes(10) == 10 and waiter.final_size() == 10
    with pytest.raises(UploadIncomplete):
        waiter.wait_bytes(11)


def _arrive(content: bytes, path: Path, recorder: ArrivalRecorder, chunk: int = 1 << 14) -> threading.Thread:
    """Write `content` to `path` chunk by chunk, slowly, as the upload handler does."""
    path.write_bytes(b"")

    def run() -> None:
        with path.open("r+b", buffering=0) as handle:
            for start in range(0, len(content), chunk):
                time.sleep(0.002)
                handle.write(content[start:start + chunk])
                recorder.advance(min(len(content), start + chunk))
        recorder.complete(len(content))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _without_seconds(report: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(report))
    for tensor in copy["tensors"]:
        del tensor["seconds"]
    return copy


def _run_arriving(tmp_path: Path, content: bytes, kind: str, output: str = "report") -> tuple[dict[str, Any], Path]:
    path = tmp_path / "upload"
    recorder = ArrivalRecorder(tmp_path / "upload.arrival")
    job = QuantizeJob(path, kind, None, ("rtn",), 128, False, None, LIMITS, threads=2)  # type: ignore[arg-type]
    sender = _arrive(content, path, recorder)
    out = tmp_path / "out.safetensors"
    try:
        report = quantize_file(job, output, None if output == "report" else out, arrival=recorder.path)  # type: ignore[arg-type]
    finally:
        sender.join()
    return report, out


def _run_complete(tmp_path: Path, content: bytes, kind: str, output: str = "report") -> tuple[dict[str, Any], Path]:
    path = tmp_path / "complete"
    path.write_bytes(content)
    job = QuantizeJob(path, kind, None, ("rtn",), 128, False, None, LIMITS, threads=2)  # type: ignore[arg-type]
    out = tmp_path / "complete-out.safetensors"
    return quantize_file(job, output, None if output == "report" else out), out  # type: ignore[arg-type]


def test_an_arriving_npy_gives_the_report_of_the_complete_file(tmp_path: Path) -> None:
    weights = np.random.default_rng(1).standard_normal((1024, 2048)).astype(np.float32)
    arriving, _ = _run_arriving(tmp_path, npy_bytes(weights), "npy")
    complete, _ = _run_complete(tmp_path, npy_bytes(weights), "npy")
    assert _without_seconds(arriving) == _without_seconds(complete)


def test_an_arriving_safetensors_writes_the_file_of_the_complete_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    content = save_safetensors({"a.weight": rng.standard_normal((256, 512)).astype(np.float32),
                                "a.bias": rng.standard_normal(256).astype(np.float32),
                                "b.weight": rng.standard_normal((512, 256)).astype(np.float16)})
    arriving, arriving_file = _run_arriving(tmp_path, content, "safetensors", "nibble")
    complete, complete_file = _run_complete(tmp_path, content, "safetensors", "nibble")
    assert _without_seconds(arriving)["tensors"] == _without_seconds(complete)["tensors"]
    assert arriving["passthrough"] == complete["passthrough"]
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
        load_safetensors(arriving_file.read_bytes()).values(), load_safetensors(complete_file.read_bytes()).values(),
        strict=True))


def test_an_upload_longer_than_its_header_declares_is_incomplete(tmp_path: Path) -> None:
    weights = np.ones((64, 256), dtype=np.float32)
    with pytest.raises(UploadIncomplete):
        _run_arriving(tmp_path, npy_bytes(weights) + b"trailing", "npy")


def test_an_upload_that_ends_early_is_incomplete(tmp_path: Path) -> None:
    weights = np.ones((64, 256), dtype=np.float32)
    with pytest.raises(UploadIncomplete):
        _run_arriving(tmp_path, npy_bytes(weights)[:-100], "npy")


def test_an_unreadable_header_is_reported_as_for_a_complete_file(tmp_path: Path) -> None:
    content = b"\x93NUMPY\x01\x00" + (20).to_bytes(2, "little") + b"{'descr': '<f4', oops" + bytes(64)
    with pytest.raises(TensorFileError):
        _run_arriving(tmp_path, content, "npy")


def test_a_header_declaring_more_than_the_upload_limit_is_not_streamed(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    recorder = ArrivalRecorder(tmp_path / "upload.arrival")
    declared = npy_bytes(np.ones((64, 256), dtype=np.float32))
    sent = declared[:-1024]  # the client stops early, as it would once answered 413
    limits = ReadLimits(64, 1 << 26, 1 << 16, max_file_bytes=len(declared) - 1)
    job = QuantizeJob(path, "npy", None, ("rtn",), 128, False, None, limits)
    sender = _arrive(sent, path, recorder)
    try:
        # streamed, the job would extend the file to the declared size and end with UploadIncomplete;
        # not streamed, it waits for the whole upload and reads it as a complete (short) file
        with pytest.raises(TensorFileError, match="data bytes"):
            quantize_file(job, "report", None, arrival=recorder.path)
    finally:
        sender.join()
    assert path.stat().st_size == len(sent)
