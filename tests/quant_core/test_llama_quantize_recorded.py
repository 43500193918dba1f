"""nibble's llama.cpp mixes against llama-quantize itself: recorded per-tensor types and tensor bytes.

`data/llama_quantize/recorded.json` holds what llama-quantize (llama.cpp vendored by PyPI's
llama-cpp-python 0.3.36, built here with cmake, CPU only) wrote for small random models of twenty-one
configurations (llama, qwen2 with widths 256 does not divide and tied embeddings, qwen3, gemma2,
phi3, qwen3_moe with 4 experts, mixtral with 8, qwen2_moe with 4 experts and a gated shared expert, phimoe with
4 experts, LayerNorm, attention and lm_head biases, llama4 with 4 experts, a shared expert and dense layers between,
Qwen2.5-VL's language model as llama.cpp's qwen2vl arch at 8 and 80 layers, Qwen3-VL's as qwen3vl, Qwen3-VL-MoE's
as qwen3vlmoe with 4 fused experts, mistral3's language model as llama.cpp's mistral3 arch
beside its Pixtral tower, minimax_m2 as minimax-m2 with 4 experts, full-width q/k norms and the router bias,
GLM-4-0414 as glm4 with q/k/v biases, four norms a layer and its fused gate_up_proj,
OLMo 2 and Olmo 3 as olmo2, Seed-OSS as seed_oss, SmolLM3 as smollm3)
in every file type nibble plans; `record.py` beside it wrote the inputs and ran the tool.  The tests compare with the
recording, never run the tool.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from quant_core.gguf_mix import ModelFacts, tensor_type
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import inventory
from quant_core.schemes import gguf_scheme, scheme_bytes
from quant_core.specs import ModelSpec

DATA = Path(__file__).resolve().parent / "data" / "llama_quantize"
RECORDED: list[dict[str, Any]] = json.loads((DATA / "recorded.json").read_text()) \
    if (DATA / "recorded.json").is_file() else []
sys.path.insert(0, str(DATA))
from record import MODELS, gguf_names  # noqa: E402  (the recorder's own name mapping, one place)


@pytest.mark.skipif(not RECORDED, reason="no llama-quantize recording")
def test_the_recording_covers_every_file_type_and_every_model_of_the_recorder() -> None:
    assert {record["file_type"] for record in RECORDED} == {"gguf-q4_0", "gguf-q4_k_s", "gguf-q4_k_m",
                                                           "gguf-q5_k_m", "gguf-q6_k", "gguf-q8_0"}
    assert {record["model"] for record in RECORDED} == {name for name, _arch, _config in MODELS}
    assert len(RECORDED) == 6 * len(MODELS)


def _language_model(record: dict[str, Any]) -> ModelSpec:
    """The recorded model without its vision tower: convert_hf_to_gguf.py writes a tower to an mmproj file apart."""
    spec = model_from_hf_config(record["config"], name=record["model"])
    return ModelSpec.from_dict({**spec.to_dict(), "vision": None})


@pytest.mark.parametrize("record", RECORDED, ids=lambda r: f"{r['model']}-{r['file_type']}")
def test_every_tensor_gets_the_type_llama_quantize_gave_it(record: dict[str, Any]) -> None:
    spec = _language_model(record)
    facts = ModelFacts.of(spec)
    predicted = {}
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for name, _shape in gguf_names(spec, entry):
                predicted[name.replace("{i}", str(layer))] = tensor_type(record["file_type"], entry, layer, facts)
    assert predicted == record["types"]


@pytest.mark.parametrize("record", RECORDED, ids=lambda r: f"{r['model']}-{r['file_type']}")
def test_tensor_bytes_equal_llama_quantize_output_to_the_byte(record: dict[str, Any]) -> None:
    spec = model_from_hf_config(record["config"], name=record["model"])
    # a vision tower (Mistral 3's Pixtral) is llama.cpp's separate mmproj file, F16 (F32 when 1-D), which
    # llama-quantize never reads: the plan holds it beside the language model's file the tool wrote
    mmproj = sum(entry.total_elements * (2 if len(entry.shape) >= 2 else 4) for entry in inventory(spec)
                 if entry.role == "vision")
    assert scheme_bytes(spec, gguf_scheme(record["file_type"])) - mmproj == record["tensor_bytes"]
