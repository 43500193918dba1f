"""The packaged catalogs: devices with sourced memory sizes, and model presets equal to their configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quant_core.catalog import (
    DATA_DIR,
    device_from_bytes,
    get_device,
    get_preset,
    get_preset_info,
    list_devices,
    list_presets,
)
from quant_core.errors import InvalidSpec, UnknownName
from quant_core.hf_config import model_from_hf_config

MODELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "models"
needs_fixtures = pytest.mark.skipif(not MODELS.is_dir(), reason=f"fixtures folder {MODELS} is absent")
FIXTURE_IDS = sorted(path.stem for path in MODELS.glob("*.json")) if MODELS.is_dir() else []
REQUIRED_DEVICES = ("h100-80gb", "h200", "a100-40gb", "a100-80gb", "l40s", "l4", "a10g", "t4", "rtx-4090",
                    "rtx-3090", "mi300x")


@pytest.mark.parametrize("device_id", REQUIRED_DEVICES)
def test_required_devices_have_an_exact_byte_size_and_a_source(device_id: str) -> None:
    device = get_device(device_id)
    assert isinstance(device.memory_bytes, int) and device.memory_bytes > 10**9
    assert device.source and device.name and device.vendor


def test_h100_80gb_is_80_gib() -> None:
    # NVIDIA datasheet "80 GB" of HBM3, read in binary units: 80 x 2^30
    assert get_device("h100-80gb").memory_bytes == 85_899_345_920


def test_device_lookup_is_case_insensitive_and_unknown_ids_suggest_close_ones() -> None:
    assert get_device(" H100-80GB ") == get_device("h100-80gb")
    with pytest.raises(UnknownName) as caught:
        get_device("h100-80")
    assert "h100-80gb" in caught.value.close


def test_device_ids_are_unique() -> None:
    ids = [device.id for device in list_devices()]
    assert len(ids) == len(set(ids)) >= len(REQUIRED_DEVICES)


def test_device_from_bytes_validates_the_size() -> None:
    assert device_from_bytes(24 * 2**30).memory_bytes == 24 * 2**30
    with pytest.raises(InvalidSpec) as caught:
        device_from_bytes(0)
    assert caught.value.field == "memory_bytes"


@needs_fixtures
@pytest.mark.parametrize("model_id", FIXTURE_IDS)
def test_every_fixture_has_a_preset_equal_to_its_parsed_config(model_id: str) -> None:
    config = json.loads((MODELS / f"{model_id}.json").read_text())
    assert get_preset(model_id) == model_from_hf_config(config, name=model_id)


def test_presets_are_nibble_specs_not_copied_configs() -> None:
    for path in sorted((DATA_DIR / "models").glob("*.json")):
        record = json.loads(path.read_text())
        assert set(record) - {"quantization_config", "mtp_layers"} == {"id", "display_name", "hf_repo", "source",
                                                                       "spec"}, \
            path.name
        assert record["id"] == path.stem
    assert len(list_presets()) >= 27


@needs_fixtures
@pytest.mark.parametrize("model_id", FIXTURE_IDS)
def test_a_preset_ships_the_quantization_config_of_its_config_json_and_no_other(model_id: str) -> None:
    config = json.loads((MODELS / f"{model_id}.json").read_text())
    assert get_preset_info(model_id).quantization_config == config.get("quantization_config")
    assert get_preset_info(model_id).mtp_layers == config.get("num_nextn_predict_layers", 0)


def test_preset_lookup_by_hf_repo_and_close_names_for_unknown_ids() -> None:
    assert get_preset("meta-llama/Llama-3.1-8B").name == "llama-3.1-8b"
    assert get_preset_info("llama-3.1-8b").display_name == "Llama 3.1 8B"
    with pytest.raises(UnknownName) as caught:
        get_preset("llama-3.1-7b")
    assert "llama-3.1-8b" in caught.value.close


def test_list_presets_is_sorted_by_id() -> None:
    ids = [preset.id for preset in list_presets()]
    assert ids == sorted(ids)
