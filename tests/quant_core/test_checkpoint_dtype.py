"""A GPTQ or AWQ job result that vLLM 0.11 / 0.19 load with their float16-only kernels says float16 in config.json.

vLLM's ``--dtype auto`` runs the config's dtype (config/model.py ``_get_and_verify_dtype``, the root config's
``dtype`` first: transformers_utils/model_arch_config_convertor.py ``get_torch_dtype``); gptq.py's and awq.py's
``get_supported_act_dtypes`` are ``[torch.half]``, so a bfloat16 config is refused ("torch.bfloat16 is not supported
for quantization method gptq", config/vllm.py ``_get_quantization_config``).  Asymmetric GPTQ is not Marlin
(gptq_marlin.py's TYPE_MAP is symmetric only), nor GPTQ / AWQ in groups of 256 (``MARLIN_SUPPORTED_GROUP_SIZES``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, quantize_checkpoint
from quant_core.checkpoint.output import float16_dtype_note, output_config
from quant_core.tensorio.awq import awq_scheme_config
from quant_core.tensorio.gptq import gptq_scheme_config
from tests.checkpoints import write_llama_checkpoint

ASYMMETRIC = gptq_scheme_config(128, False, act_order=False)
SYMMETRIC = gptq_scheme_config(128, True, act_order=False)


def _job(tmp_path: Path, **fields: Any) -> tuple[dict[str, Any], list[str]]:
    """The tiny llama (config torch_dtype bfloat16) quantized by a job of `fields`: its config.json and notes."""
    write_llama_checkpoint(tmp_path / "src", shards=1)
    checkpoint = open_checkpoint(tmp_path / "src")
    options = CheckpointOptions(**fields)
    report = quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "out",
                                 tmp_path / "parts")
    config: dict[str, Any] = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"] == report["quantization_config"]
    return config, report["engine_notes"]


def test_an_asymmetric_gptq_result_of_a_bfloat16_model_says_float16_and_the_report_says_why(tmp_path: Path) -> None:
    config, notes = _job(tmp_path, output="gptq")
    assert config["torch_dtype"] == "float16"
    (note,) = notes
    assert "config.json says torch_dtype float16 (the source's: bfloat16)" in note
    assert "torch.bfloat16 is not supported for quantization method gptq" in note


def test_transformers_reads_the_float16_that_vllm_takes_for_dtype_auto(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _job(tmp_path, output="gptq")
    # what vLLM's get_torch_dtype reads: getattr(hf_config, "dtype")
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert getattr(loaded, "dtype", None) == torch.float16 or loaded.torch_dtype == torch.float16


@pytest.mark.parametrize("fields", [{"output": "gptq", "symmetric": True}, {"output": "awq"},
                                    {"output": "compressed-tensors"}])
def test_results_vllm_runs_through_marlin_or_compressed_tensors_keep_the_sources_dtype(
        tmp_path: Path, fields: dict[str, Any]) -> None:
    config, notes = _job(tmp_path, **fields)
    assert config["torch_dtype"] == "bfloat16"
    assert not any("config.json says torch_dtype float16" in note for note in notes)


@pytest.mark.parametrize(("source", "expected"), [
    ({"torch_dtype": "bfloat16"}, {"torch_dtype": "float16"}),
    ({"dtype": "bfloat16"}, {"dtype": "float16"}),  # transformers 4.56+: no torch_dtype added beside it
    ({"torch_dtype": "float32"}, {"torch_dtype": "float16"}),  # --dtype auto runs float32 configs in bfloat16
    ({"model_type": "llama"}, {"torch_dtype": "float16"}),  # none: vLLM would read the tensors' bfloat16
    ({"torch_dtype": "float16"}, {"torch_dtype": "float16"}),
])
def test_the_config_dtype_is_written_float16_under_the_key_the_source_uses(
        source: dict[str, Any], expected: dict[str, str]) -> None:
    written = output_config(source, ASYMMETRIC)
    assert {key: written[key] for key in ("torch_dtype", "dtype") if key in written} == expected
    assert written["quantization_config"] == ASYMMETRIC
    assert (float16_dtype_note(source, ASYMMETRIC) is None) is (source.get("torch_dtype") == "float16")


@pytest.mark.parametrize(("quantization_config", "float16"), [
    (ASYMMETRIC, True), (SYMMETRIC, False), (gptq_scheme_config(256, True, act_order=False), True),
    (gptq_scheme_config(None, True, act_order=False), False), (awq_scheme_config(128), False),
    (awq_scheme_config(256), True), ({"quant_method": "compressed-tensors"}, False),
])
def test_only_configs_vllm_loads_without_marlin_are_written_float16(quantization_config: dict[str, Any],
                                                                     float16: bool) -> None:
    written = output_config({"torch_dtype": "bfloat16"}, quantization_config)
    assert written["torch_dtype"] == ("float16" if float16 else "bfloat16")
    assert (float16_dtype_note({"torch_dtype": "bfloat16"}, quantization_config) is not None) is float16
