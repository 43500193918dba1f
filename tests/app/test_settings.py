"""Settings come from NIBBLE_* variables; lists accept comma-separated values."""

from __future__ import annotations

import pytest

from app.settings import Settings


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIBBLE_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("NIBBLE_API_KEYS", "a, b")
    monkeypatch.setenv("NIBBLE_CORS_ORIGINS", "https://x.example")
    settings = Settings()
    assert settings.max_upload_bytes == 1234
    assert settings.api_keys == ["a", "b"]
    assert settings.cors_origins == ["https://x.example"]


def test_settings_defaults_have_two_workers_and_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NIBBLE_POOL_WORKERS", "NIBBLE_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.pool_workers == 2
    assert settings.api_keys == []
    assert settings.max_upload_bytes == 256 * 1024 * 1024
