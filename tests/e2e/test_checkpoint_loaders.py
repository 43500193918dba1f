"""A checkpoint quantized by a /v1/jobs job, downloaded, and read by the engines' own libraries.

compressed-tensors: transformers (with compressed-tensors) loads the directory on CPU; GPTQ and AWQ: the
reference libraries' own decoders (AutoGPTQ's ``QuantLinear``, AutoAWQ's ``dequantize_gemm``, loaded as in
tests/quant_core/tensorio/test_reference_libraries.py); GGUF: gguf-py's reader.  Every quantized weight
must equal nibble's own dequantization of the same tensor, and every other tensor the source's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, read_tensor
from quant_core.quantize import QuantizedTensor, dequantize, quantize
from tests.app.conftest import client_with
from tests.checkpoints import HEADS, KV_HEADS, LAYERS, llama_tensors, write_llama_checkpoint
from tests.quant_core.tensorio.test_reference_libraries import reference_module

pytestmark = [
    pytest.mark.slow,
    # transformers says the loading attribute passed (dequantize=True) overrides the checkpoint's: what is meant
    pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning"),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_llama_checkpoint(root / "llama", shards=3)
    return root


@pytest.fixture(scope="module")
def client(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with client_with(state_dir=tmp_path_factory.mktemp("state"), data_dir=source) as test_client:
        yield test_client


def run_job(client: TestClient, target: Path, **fields: Any) -> dict[str, Any]:
    """Submit a job on the test llama, watch it to the end, download every file into `target`."""
    job = client.post("/v1/jobs", json={"source": {"path": "llama"}, **fields})
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 120
    while (status := client.get(job.json()["url"]).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["state"] == "succeeded", status["error"]
    target.mkdir()
    for file in status["result"]["files"]:
        (target / file["name"]).write_bytes(client.get(file["url"]).content)
    return status


def nibble_quantized(source: Path, fields: dict[str, Any]) -> dict[str, QuantizedTensor]:
    """nibble's own quantization (`quantize`, in this process) of each tensor the job's plan quantizes."""
    options = CheckpointOptions(**fields)
    checkpoint = open_checkpoint(source / "llama")
    return {plan.tensor.name: quantize(read_tensor(checkpoint.directory, plan.tensor), options.scheme,
                                       options.method, min_zero=options.min_zero)
            for plan in plan_checkpoint(checkpoint, options) if plan.quantized}


def shard_tensors(directory: Path) -> dict[str, torch.Tensor]:
    loaded: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("model-*.safetensors")):
        loaded.update(safetensors.torch.load_file(shard))
    return loaded


def as_float32(array: NDArray[Any]) -> NDArray[np.float32]:
    return np.asarray(array, dtype=np.float32)


@pytest.mark.parametrize("symmetric", [False, True])
def test_transformers_loads_the_compressed_tensors_checkpoint_with_nibbles_weights(
        client: TestClient, source: Path, tmp_path: Path, symmetric: bool) -> None:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    status = run_job(client, tmp_path / "out", output="compressed-tensors", symmetric=symmetric)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    # dequantize=True: transformers decompresses every packed weight with compressed-tensors at load
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True))
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    expected = nibble_quantized(source, {"symmetric": symmetric})
    assert len(expected) == len(status["report"]) - 7  # 14 quantized; 7 passed through
    for name, q in expected.items():
        # compressed-tensors multiplies code and fp16 scale in fp16: nibble's value rounded to fp16 once
        np.testing.assert_array_equal(state[name], dequantize(q, np.float16).astype(np.float32), err_msg=name)
    written = llama_tensors()
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.input_layernorm.weight"):
        np.testing.assert_array_equal(state[name], as_float32(written[name]), err_msg=name)
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_transformers_runs_the_symmetric_checkpoint_compressed_on_cpu(client: TestClient, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    run_job(client, tmp_path / "out", output="compressed-tensors", symmetric=True)
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert "model.layers.0.mlp.up_proj.weight_packed" in packed.state_dict()
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True))
    tokens = torch.tensor([[1, 5, 9, 40, 2]])
    with torch.no_grad():
        torch.testing.assert_close(packed(tokens).logits, dense(tokens).logits, rtol=0, atol=1e-5)


def test_autogptq_decodes_the_gptq_checkpoint(client: TestClient, source: Path, tmp_path: Path) -> None:
    autogptq = reference_module("auto-gptq", "auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py")
    run_job(client, tmp_path / "out", output="gptq")
    loaded = shard_tensors(tmp_path / "out")
    quantize_config = json.loads((tmp_path / "out" / "quantize_config.json").read_text())
    assert quantize_config == json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    for name, q in nibble_quantized(source, {"output": "gptq"}).items():
        prefix = name.removesuffix(".weight")
        out_features, in_features = q.shape
        layer = autogptq.QuantLinear(4, 128, in_features, out_features, bias=False)
        for part in ("qweight", "qzeros", "scales", "g_idx"):
            getattr(layer, part).copy_(loaded[f"{prefix}.{part}"])
        with torch.no_grad():
            weight = layer(torch.eye(in_features, dtype=torch.float16)).to(torch.float32).numpy().T
        np.testing.assert_array_equal(weight, dequantize(q, np.float16).astype(np.float32), err_msg=name)


def test_autoawq_decodes_the_awq_checkpoint(client: TestClient, source: Path, tmp_path: Path) -> None:
    autoawq = reference_module("autoawq", "awq/utils/packing_utils.py")
    run_job(client, tmp_path / "out", output="awq")
    loaded = shard_tensors(tmp_path / "out")
    for name, q in nibble_quantized(source, {"output": "awq"}).items():
        prefix = name.removesuffix(".weight")
        decoded = autoawq.dequantize_gemm(loaded[f"{prefix}.qweight"], loaded[f"{prefix}.qzeros"],
                                          loaded[f"{prefix}.scales"].to(torch.float32), 4, 128)
        np.testing.assert_array_equal(decoded.T.numpy(), dequantize(q), err_msg=name)


def converter_permute(rows: NDArray[Any], heads: int) -> NDArray[Any]:
    """convert_hf_to_gguf.py's ``LlamaModel.permute`` (llama.cpp conversion/llama.py), in NumPy."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def test_gguf_reads_the_gguf_checkpoint(client: TestClient, source: Path, tmp_path: Path) -> None:
    status = run_job(client, tmp_path / "out", output="gguf", group_size=32, symmetric=True)
    assert sorted(f["name"] for f in status["result"]["files"]) == ["model.gguf", "nibble_report.json"]
    reader = gguf.GGUFReader(tmp_path / "out" / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    written = llama_tensors()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    # every tensor, in the source's order, under the name llama.cpp loads it by (gguf-py's map)
    assert list(tensors) == [names.get_name(name, try_suffixes=(".weight",)) for name in written]
    for name, q in nibble_quantized(source, {"output": "gguf", "group_size": 32, "symmetric": True}).items():
        tensor = tensors[names.get_name(name, try_suffixes=(".weight",))]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_0
        decoded = gguf.quants.dequantize(tensor.data, gguf.GGMLQuantizationType.Q4_0).reshape(q.shape)
        expected = dequantize(q)
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # rows permuted as the converter does for llama
            expected = converter_permute(expected, HEADS if "q_proj" in name else KV_HEADS)
        np.testing.assert_array_equal(decoded, expected, err_msg=name)
    norm = tensors["output_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32  # llama.cpp reads norms as F32
    np.testing.assert_array_equal(np.asarray(norm.data), written["model.norm.weight"].astype(np.float32))
    embedding = tensors["token_embd.weight"]
    assert embedding.tensor_type == gguf.GGMLQuantizationType.BF16  # passed through as it was
    np.testing.assert_array_equal(np.asarray(embedding.data).view(ml_dtypes.bfloat16).reshape(written[
        "model.embed_tokens.weight"].shape), written["model.embed_tokens.weight"])
    report = json.loads(bytes(reader.fields["nibble.report"].parts[-1]).decode())
    assert report == json.loads((tmp_path / "out" / "nibble_report.json").read_text())
