"""The server keeps its upload-chunk buffers' pages (app/allocator.py) instead of faulting them in anew."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from app.allocator import heap_trimmer

REPO_ROOT = Path(__file__).resolve().parents[2]

# Four 256 KiB chunks alive at once, then freed, a hundred times: the pattern of an upload's network chunks.
CHURN = """
import resource, sys
from app.allocator import keep_receive_buffers
if sys.argv[1] == "tuned":
    assert keep_receive_buffers()
def churn():
    for _ in range(100):
        chunks = [bytes(256 * 1024) for _ in range(4)]
        del chunks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True,
                            cwd=REPO_ROOT)
    return int(result.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator only")
def test_tuned_allocator_reuses_freed_chunk_pages_where_the_default_faults_them_in_again() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    # 400 chunks of 64 pages each: the default gives most of them back to the kernel and faults them in again
    assert default > 5_000
    assert tuned < 100


def test_heap_trimmer_is_callable_after_a_job() -> None:
    release = heap_trimmer()
    scratch = [bytearray(1 << 20) for _ in range(8)]
    del scratch
    release()  # returns nothing and does not raise, glibc or not
