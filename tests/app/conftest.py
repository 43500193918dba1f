"""Test clients over apps built with test settings (a thread pool keeps the suite fast)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"


def make_settings(**overrides: Any) -> Settings:
    """Default settings, independent of NIBBLE_* variables, with `overrides`."""
    values: dict[str, Any] = {"pool_kind": "thread", **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """A client of the app under default limits (thread pool)."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client


def client_with(**overrides: Any) -> TestClient:
    """A client of an app with some settings changed; use it as a context manager."""
    return TestClient(create_app(make_settings(**overrides)))


def safetensors_header(tensors: dict[str, tuple[str, list[int], int]]) -> bytes:
    """A safetensors header (8-byte length + JSON) for tensors given as name -> (dtype, shape, bytes)."""
    header, offset = {}, 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text
