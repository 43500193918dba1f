"""The shared real-model fixtures (`../shared/fixtures` beside the repository) for every test module.

Tests that read them are marked `needs_fixtures` and skip, saying why, when the folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.hf_config import model_from_hf_config
from quant_core.specs import ModelSpec

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "ground_truth.json").is_file(),
                                    reason=f"fixtures folder {FIXTURES} is absent")


def ground_truth() -> list[dict[str, Any]]:
    """The entries of ground_truth.json (empty when the fixtures are absent)."""
    if not (FIXTURES / "ground_truth.json").is_file():
        return []
    entries: list[dict[str, Any]] = json.loads((FIXTURES / "ground_truth.json").read_text())["models"]
    return entries


def spec_of(model_id: str) -> ModelSpec:
    """The spec parsed from fixture config `models/<model_id>.json`."""
    return model_from_hf_config(json.loads((FIXTURES / "models" / f"{model_id}.json").read_text()))


GROUND_TRUTH = ground_truth()
