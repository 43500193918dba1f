"""Upload spools reused across requests (app/spool.py), through a real uvicorn with its process pool.

Each upload's file part goes to an unnamed temp file that the next upload overwrites;
these tests check that a later, smaller or shorter upload is quantized from
its own bytes only, never from what an earlier upload left in the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.jobs import QuantizeJob, ReadLimits, quantize_file
from tests.e2e.conftest import start_server
from tests.tensor_files import npy_bytes

FIELDS = {"method": "rtn", "group_size": "128", "output": "report"}  # sent before the file: the job starts early


@pytest.fixture(scope="module")
def reusing_server() -> Iterator[str]:
    with start_server({"NIBBLE_SPOOL_KEEP_BYTES": str(64 << 20), "NIBBLE_POOL_WORKERS": "1"}) as base_url:
        yield base_url


def _post(base_url: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/quantize", data=FIELDS, files={"file": ("w.npy", content)}, timeout=120)


def _figures(report: dict[str, object]) -> list[tuple[object, ...]]:
    return [(t["name"], t["shape"], t["bytes"], t["quality"]) for t in report["tensors"]]  # type: ignore[index]


def _local_report(tmp_path: Path, content: bytes) -> dict[str, object]:
    path = tmp_path / "w.npy"
    path.write_bytes(content)
    job = QuantizeJob(path, "npy", None, ("rtn",), 128, False, None, ReadLimits(4096, 1 << 28, 1 << 24))
    return quantize_file(job, "report", None)


def test_a_smaller_upload_after_a_larger_one_is_quantized_from_its_own_bytes(reusing_server: str,
                                                                            tmp_path: Path) -> None:
    large = npy_bytes(np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32))
    small = npy_bytes(np.random.default_rng(2).standard_normal((256, 512), dtype=np.float32))
    for content in (large, small, large, small):
        answer = _post(reusing_server, content)
        assert answer.status_code == 200, answer.text
        assert _figures(answer.json()) == _figures(_local_report(tmp_path, content))


def test_an_upload_shorter_than_its_header_after_a_larger_one_is_refused(reusing_server: str) -> None:
    large = npy_bytes(np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32))
    assert _post(reusing_server, large).status_code == 200
    # the same header, half the data: the spool still held the whole earlier file when this one began
    short = large[: len(large) // 2]
    answer = _post(reusing_server, short)
    assert answer.status_code in (400, 422), answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert _post(reusing_server, large).status_code == 200  # and the server goes on
