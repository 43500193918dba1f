"""A checkpoint quantized by a /v1/jobs job, downloaded, and read by the engines' own libraries.

compressed-tensors: transformers (with compressed-tensors) loads the directory on CPU; GPTQ and AWQ: the
reference libraries' own decoders (AutoGPTQ's ``QuantLinear``, AutoAWQ's ``dequantize_gemm``, loaded as in
tests/quant_core/tensorio/test_reference_libraries.py), and transformers itself, which loads both through
GPTQModel (``quantizers/quantizer_gptq.py`` with optimum, ``quantizers/quantizer_awq.py``); GGUF: gguf-py's
reader.  Every quantized weight must equal nibble's own dequantization of the same tensor, and every other
tensor the source's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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

from quant_core.checkpoint import (
    DEFAULT_EXCLUDE,
    CheckpointOptions,
    candidate_formats,
    open_checkpoint,
    plan_checkpoint,
    read_tensor,
)
from quant_core.quantize import QuantizedTensor, dequantize, quantize
from quant_core.tensorio import write_safetensors
from tests.app.conftest import client_with
from tests.app.test_jobs_budget import STATISTICS, importance_vectors
from tests.checkpoints import HEADS, KV_HEADS, LAYERS, llama_tensors, write_llama_checkpoint
from tests.e2e.gptqmodel_child import TOKENS
from tests.quant_core.tensorio.gptq_loader_rules import gptqmodel_quantizes, optimum_quantizes
from tests.quant_core.tensorio.test_reference_libraries import reference_module

REPOSITORY = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    # transformers says the loading attribute passed (dequantize=True) overrides the checkpoint's: what is meant
    pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning"),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_llama_checkpoint(root / "llama", shards=3)
    write_llama_checkpoint(root / "qwen2", shards=2, family="qwen2")  # q/k/v biases, tied embeddings
    (root / STATISTICS).parent.mkdir()
    write_safetensors(root / STATISTICS, importance_vectors())
    return root


@pytest.fixture(scope="module")
def client(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with client_with(state_dir=tmp_path_factory.mktemp("state"), data_dir=source) as test_client:
        yield test_client


def run_job(client: TestClient, target: Path, model: str = "llama", **fields: Any) -> dict[str, Any]:
    """Submit a job on the test llama (or the source's `model`), watch it to the end, download every file into
    `target`."""
    job = client.post("/v1/jobs", json={"source": {"path": model}, **fields})
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


def nibble_quantized(source: Path, fields: dict[str, Any], model: str = "llama") -> dict[str, QuantizedTensor]:
    """nibble's own quantization (`quantize`, in this process) of each tensor the job's plan quantizes."""
    options = CheckpointOptions(**fields)
    checkpoint = open_checkpoint(source / model)
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


@pytest.mark.parametrize("fields", [
    {"group_size": 256},  # only down_proj (in_features 256) can take it: the rest pass through
    {"exclude": [*DEFAULT_EXCLUDE, "*layers.1.mlp.down_proj*"]},
], ids=["group-size", "exclude"])
def test_a_gptq_checkpoint_with_linear_layers_left_unquantized_tells_the_loaders_and_autogptq_decodes_the_rest(
        client: TestClient, source: Path, tmp_path: Path, fields: dict[str, Any]) -> None:
    autogptq = reference_module("auto-gptq", "auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py")
    run_job(client, tmp_path / "out", output="gptq", **fields)
    loaded = shard_tensors(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert config == json.loads((tmp_path / "out" / "quantize_config.json").read_text())
    expected = nibble_quantized(source, {"output": "gptq", **{k: tuple(v) if isinstance(v, list) else v
                                                              for k, v in fields.items()}})
    stored = sorted(name.removesuffix(".qweight") for name in loaded if name.endswith(".qweight"))
    assert stored == sorted(name.removesuffix(".weight") for name in expected)
    linear = [name.removesuffix(".weight") for name in llama_tensors() if name.startswith("model.layers.")
              and name.endswith("_proj.weight")]
    for loader_quantizes in (gptqmodel_quantizes, optimum_quantizes):  # each loader builds GPTQ layers of those
        assert sorted(module for module in linear if loader_quantizes(config, module)) == stored
    written = llama_tensors()
    for module in sorted(set(linear) - set(stored)):  # and finds the others' weights as they were
        np.testing.assert_array_equal(loaded[f"{module}.weight"].float().numpy(),
                                      as_float32(written[f"{module}.weight"]), err_msg=module)
    for name, q in expected.items():
        prefix = name.removesuffix(".weight")
        out_features, in_features = q.shape
        layer = autogptq.QuantLinear(4, config["group_size"], in_features, out_features, bias=False)
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


#: the GPTQ and AWQ results transformers loads through GPTQModel: (source model, output, job fields) by case
GPTQMODEL_CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gptq-asymmetric": ("llama", "gptq", {}),
    "gptq-symmetric": ("llama", "gptq", {"symmetric": True}),
    "gptq-group-64": ("llama", "gptq", {"group_size": 64}),
    "gptq-exclude": ("llama", "gptq", {"exclude": [*DEFAULT_EXCLUDE, "*layers.1.mlp.down_proj*"]}),  # one left bf16
    "gptq-qwen2": ("qwen2", "gptq", {}),  # q/k/v with biases, tied embeddings
    "awq-llama": ("llama", "awq", {}),
    "awq-qwen2": ("qwen2", "awq", {}),
}


@pytest.fixture(scope="module")
def gptqmodel_loaded(client: TestClient, tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[str, tuple[Path, dict[str, torch.Tensor], dict[str, str]]]:
    """Each case's job result, and what transformers, through GPTQModel, holds once it has loaded it: each decoder
    linear layer's weight (out x in) and bias, the logits on ``TOKENS``, and each layer's class
    (tests/e2e/gptqmodel_child.py, one child process for every case).  Skips when GPTQModel is not installed
    (`make test` installs it: pyproject.toml, [tool.nibble] reference-decoders and the dev extra); installed,
    any failure of the child fails the tests."""
    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("gptqmodel is not installed: `make test` installs it (pyproject.toml [tool.nibble] "
                    "reference-decoders, pip install --no-deps)")
    root = tmp_path_factory.mktemp("gptqmodel")
    arguments = []
    for case, (family, output, fields) in GPTQMODEL_CASES.items():
        run_job(client, root / case, family, output=output, **fields)
        arguments += [str(root / case), str(root / f"{case}.safetensors")]
    child = subprocess.run([sys.executable, "-m", "tests.e2e.gptqmodel_child", *arguments], cwd=REPOSITORY,
                           capture_output=True, text=True, timeout=900, check=False)
    assert child.returncode == 0, child.stderr[-6000:]
    results = {}
    for case in GPTQMODEL_CASES:
        with safetensors.safe_open(str(root / f"{case}.safetensors"), "pt") as loaded:
            classes = json.loads(loaded.metadata()["classes"])
            results[case] = (root / case, {key: loaded.get_tensor(key) for key in loaded.keys()}, classes)  # noqa: SIM118
    return results


def dense_logits(checkpoint: Path, quantized: dict[str, QuantizedTensor], family: str) -> torch.Tensor:
    """The logits on ``TOKENS`` of the checkpoint's model as a plain float32 transformers model holding the
    source's tensors, each quantized weight replaced by nibble's own dequantization rounded to fp16 once."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = json.loads((checkpoint / "config.json").read_text())
    del settings["quantization_config"]
    dense = AutoModelForCausalLM.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings),
                                             dtype=torch.float32)
    state = {name: torch.from_numpy(as_float32(array)) for name, array in llama_tensors(family=family).items()}
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])  # tied
    for name, q in quantized.items():
        state[name] = torch.from_numpy(dequantize(q, np.float16).astype(np.float32))
    assert not dense.load_state_dict(state, strict=True).missing_keys
    with torch.no_grad():
        return dense(torch.tensor(TOKENS)).logits  # type: ignore[no-any-return]


def decoder_linear(written: dict[str, NDArray[Any]]) -> list[str]:
    return [name.removesuffix(".weight") for name in written if name.startswith("model.layers.")
            and name.endswith("_proj.weight")]


def assert_biases(loaded: dict[str, torch.Tensor], written: dict[str, NDArray[Any]], module: str) -> None:
    """A GPTQModel layer holds the source's (bf16) bias as fp16; a layer without one has none."""
    if f"{module}.bias" in written:
        np.testing.assert_array_equal(loaded[f"{module}.bias"].numpy(),
                                      as_float32(written[f"{module}.bias"]).astype(np.float16), err_msg=module)
    else:
        assert f"{module}.bias" not in loaded, module


@pytest.mark.parametrize("case", [case for case in GPTQMODEL_CASES if case.startswith("gptq")])
def test_transformers_loads_the_gptq_checkpoint_through_gptqmodel_with_nibbles_weights(
        gptqmodel_loaded: dict[str, tuple[Path, dict[str, torch.Tensor], dict[str, str]]], source: Path,
        case: str) -> None:
    family, _, fields = GPTQMODEL_CASES[case]
    checkpoint, loaded, classes = gptqmodel_loaded[case]
    expected = nibble_quantized(source, {"output": "gptq", **{k: tuple(v) if isinstance(v, list) else v
                                                              for k, v in fields.items()}}, family)
    written = llama_tensors(family=family)
    linear = decoder_linear(written)
    assert sorted(classes) == sorted(linear)
    for module in linear:
        if f"{module}.weight" not in expected:  # left unquantized: a plain Linear with the source's weight
            assert classes[module] == "torch.nn.modules.linear.Linear", (module, classes[module])
            np.testing.assert_array_equal(loaded[f"{module}.weight"].numpy(), as_float32(written[f"{module}.weight"]),
                                          err_msg=module)
            continue
        assert classes[module] == "gptqmodel.nn_modules.qlinear.torch.TorchLinear", (module, classes[module])
        # TorchLinear's own dequantization (in its scales' fp16) is nibble's value rounded to fp16 once, bit for bit
        q = expected[f"{module}.weight"]
        np.testing.assert_array_equal(loaded[f"{module}.weight"].to(torch.float32).numpy(),
                                      dequantize(q, np.float16).astype(np.float32), err_msg=module)
        assert_biases(loaded, written, module)
    assert len(expected) == len(linear) - ("exclude" in fields)
    # TorchLinear multiplies the float32 input by its fp16 weights cast to float32: the dense twin's product
    torch.testing.assert_close(loaded["logits"], dense_logits(checkpoint, expected, family), rtol=0, atol=1e-5)


def test_transformers_loads_the_asymmetric_gptq_checkpoint_of_a_bfloat16_model_at_its_configs_float16(
        gptqmodel_loaded: dict[str, tuple[Path, dict[str, torch.Tensor], dict[str, str]]], source: Path,
        tmp_path: Path) -> None:
    # the source says torch_dtype bfloat16; vLLM 0.11/0.19 load asymmetric GPTQ with gptq.py, float16 activations
    # only, so the result says float16 (quant_core/checkpoint/output.py output_config) and dtype="auto" takes it
    checkpoint, at_float32, _ = gptqmodel_loaded["gptq-asymmetric"]
    assert json.loads((checkpoint / "config.json").read_text())["torch_dtype"] == "float16"
    target = tmp_path / "auto.safetensors"
    child = subprocess.run([sys.executable, "-m", "tests.e2e.gptqmodel_child", "--dtype", "auto", str(checkpoint),
                            str(target)], cwd=REPOSITORY, capture_output=True, text=True, timeout=900, check=False)
    assert child.returncode == 0, child.stderr[-6000:]
    with safetensors.safe_open(str(target), "pt") as loaded:
        assert loaded.metadata()["dtype"] == "torch.float16"
        for name, q in nibble_quantized(source, {"output": "gptq"}).items():
            np.testing.assert_array_equal(loaded.get_tensor(name).to(torch.float32).numpy(),
                                          dequantize(q, np.float16).astype(np.float32), err_msg=name)
        logits = loaded.get_tensor("logits").to(torch.float32)
    # the same model computed in float16 rather than float32: each product rounded to fp16, ~2^-11 relative
    torch.testing.assert_close(logits, at_float32["logits"], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("case", [case for case in GPTQMODEL_CASES if case.startswith("awq")])
def test_transformers_loads_the_awq_checkpoint_through_gptqmodel_with_nibbles_weights(
        gptqmodel_loaded: dict[str, tuple[Path, dict[str, torch.Tensor], dict[str, str]]], source: Path,
        case: str) -> None:
    family = GPTQMODEL_CASES[case][0]
    checkpoint, loaded, classes = gptqmodel_loaded[case]
    expected = nibble_quantized(source, {"output": "awq"}, family)
    written = llama_tensors(family=family)
    # transformers' AWQ path builds GPTQModel's layers (integrations/awq.py, hf_select_quant_linear_v2)
    assert sorted(classes) == sorted(decoder_linear(written)) == sorted(n.removesuffix(".weight") for n in expected)
    for name, q in expected.items():
        module = name.removesuffix(".weight")
        assert classes[module] == "gptqmodel.nn_modules.qlinear.torch_awq.AwqTorchLinear", (module, classes[module])
        np.testing.assert_array_equal(loaded[name].to(torch.float32).numpy(),
                                      dequantize(q, np.float16).astype(np.float32), err_msg=name)
        assert_biases(loaded, written, module)
    # AwqTorchLinear computes a float32 input in fp16 (torch_awq.py forward): each projection's input and output
    # rounded to fp16, ~2^-11 relative
    torch.testing.assert_close(loaded["logits"], dense_logits(checkpoint, expected, family), rtol=1e-2, atol=1e-2)


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


def budgeted_quantized(source: Path, fields: dict[str, Any], status: dict[str, Any], *, importance: bool = True
                       ) -> dict[str, QuantizedTensor]:
    """nibble's own quantization of each tensor the budgeted job wrote in an int4 format, in that format (and
    with the tensor's importance vector when the job had the statistics)."""
    options = CheckpointOptions(**fields)
    checkpoint = open_checkpoint(source / "llama")
    chosen = {entry["name"]: entry["format"] for entry in status["report"] if "reason" not in entry}
    vectors = importance_vectors()
    quantized = {}
    for plan in plan_checkpoint(checkpoint, options):
        if not plan.quantized:
            continue
        stored = {f.label(): f for f in candidate_formats(plan, options)}[chosen[plan.tensor.name]]
        if stored.name == "int4":
            quantized[plan.tensor.name] = quantize(read_tensor(checkpoint.directory, plan.tensor), stored,
                                                   options.method,
                                                   importance=vectors[plan.tensor.name] if importance else None,
                                                   min_zero=options.min_zero)
    return quantized


def _chosen_formats(status: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["format"] for entry in status["report"] if "reason" not in entry}


def _groups_match_the_report(config: dict[str, Any], formats: dict[str, str]) -> dict[str, Any]:
    """compressed-tensors' own reading of the config: one config group per int4 format, targeting exactly the
    modules the report gives that format; returns the groups (QuantizationScheme) by module."""
    from compressed_tensors.quantization import QuantizationConfig

    parsed = QuantizationConfig.model_validate(config)
    labels = {label for label in formats.values() if label.startswith("int4")}
    assert len(parsed.config_groups) == len(labels)
    by_module = {}
    for group in parsed.config_groups.values():
        label = f"int4-g{group.weights.group_size}-{'sym' if group.weights.symmetric else 'asym'}"
        assert sorted(group.targets) == sorted(name.removesuffix(".weight") for name, chosen in formats.items()
                                               if chosen == label)
        by_module.update(dict.fromkeys(group.targets, group))
    return by_module


def test_compressed_tensors_decompresses_each_module_of_a_budgeted_checkpoint_by_its_own_group(
        client: TestClient, source: Path, tmp_path: Path) -> None:
    from compressed_tensors.compressors import BaseCompressor

    # 5.7 bits per weight: a mix of 16-bit and three int4 schemes with every fused layer (q/k/v, gate/up) kept in
    # one of them, as vLLM needs (compressed_tensors/utils.py should_ignore_layer, 0.19 lines 34-64)
    status = run_job(client, tmp_path / "out", output="compressed-tensors", bits_per_weight=5.7,
                     importance=STATISTICS)
    formats = _chosen_formats(status)
    assert "bf16" in formats.values() and len({f for f in formats.values() if f.startswith("int4")}) >= 3, formats
    for layer in range(2):
        for parent, parts in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj"))):
            assert len({formats[f"model.layers.{layer}.{parent}.{part}.weight"] for part in parts}) == 1, formats
    assert status["engine_notes"] == []
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    groups = _groups_match_the_report(config, formats)
    loaded = shard_tensors(tmp_path / "out")
    expected = budgeted_quantized(source, {"bits_per_weight": 5.7}, status)
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    written = llama_tensors()
    for name, chosen in formats.items():
        prefix = name.removesuffix(".weight")
        if chosen == "bf16":  # in no group: stored as the source's tensor under its own name
            np.testing.assert_array_equal(loaded[name].float().numpy(), as_float32(written[name]), err_msg=name)
            continue
        state = {key.removeprefix(prefix + "."): value for key, value in loaded.items()
                 if key.startswith(prefix + ".weight_")}
        decoded = compressor.decompress(state, groups[prefix])["weight"]
        np.testing.assert_array_equal(decoded.float().numpy(), dequantize(expected[name], np.float16)
                                      .astype(np.float32), err_msg=name)
    print(f"budgeted compressed-tensors (asymmetric): {status['result']['allocation']['formats']}")


def test_transformers_runs_a_budgeted_symmetric_checkpoint_compressed_on_cpu(
        client: TestClient, source: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    fields = {"symmetric": True, "bits_per_weight": 5.7}  # 16-bit, g32 and g64, each fused layer in one
    status = run_job(client, tmp_path / "out", output="compressed-tensors", importance=STATISTICS, **fields)
    formats = _chosen_formats(status)
    assert "bf16" in formats.values() and len({f for f in formats.values() if f.startswith("int4")}) >= 2, formats
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    _groups_match_the_report(config, formats)
    # loaded compressed, as engines load it: each module gets its own config group's scheme.  (transformers'
    # dequantize=True path decompresses every dense module with one group's scheme, get_dense_scheme, so it
    # does not read a mixed config; neither path reads asymmetric zero points packed as compressed-tensors
    # packs them, the test above decodes those with the library itself.)
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    packed_state = packed.state_dict()
    for name, chosen in formats.items():
        assert (f"{name.removesuffix('.weight')}.weight_packed" in packed_state) == (chosen != "bf16"), name
    # the same model with nibble's own dequantized weights (float32: the compressed forward decompresses in the
    # model's dtype)
    expected = budgeted_quantized(source, fields, status)
    dense_state = {name: torch.from_numpy(as_float32(array)) for name, array in llama_tensors().items()}
    for name, q in expected.items():
        dense_state[name] = torch.from_numpy(dequantize(q))
    settings = {key: value for key, value in packed.config.to_dict().items() if key != "quantization_config"}
    dense = AutoModelForCausalLM.from_config(packed.config.__class__.from_dict(settings), dtype=torch.float32)
    assert not dense.load_state_dict(dense_state, strict=True).missing_keys
    tokens = torch.tensor([[1, 5, 9, 40, 2]])
    with torch.no_grad():
        torch.testing.assert_close(packed(tokens).logits, dense(tokens).logits, rtol=0, atol=1e-5)
    print(f"budgeted compressed-tensors (symmetric): {status['result']['allocation']['formats']}")


def test_gguf_reads_a_budgeted_checkpoint_with_a_ggml_type_per_tensor(client: TestClient, source: Path,
                                                                       tmp_path: Path) -> None:
    status = run_job(client, tmp_path / "out", output="gguf", group_size=32, symmetric=True, bits_per_weight=6.0)
    formats = {entry["name"]: entry["format"] for entry in status["report"] if "reason" not in entry}
    assert {"int4-g32-sym", "q8_0"} <= set(formats.values()), formats
    reader = gguf.GGUFReader(tmp_path / "out" / "model.gguf")
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    expected = budgeted_quantized(source, {"output": "gguf", "group_size": 32, "symmetric": True,
                                           "bits_per_weight": 6.0}, status, importance=False)
    written = llama_tensors()
    types = {"int4-g32-sym": gguf.GGMLQuantizationType.Q4_0, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "bf16": gguf.GGMLQuantizationType.BF16}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)

    def as_converted(name: str, rows: NDArray[Any]) -> NDArray[Any]:
        """`rows` in llama.cpp's order: Q and K rows permuted as the converter does for llama (rows commute
        with every row-blocked ggml type)."""
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            return converter_permute(rows, HEADS if "q_proj" in name else KV_HEADS)
        return rows

    for name, chosen in formats.items():
        tensor = tensors[names.get_name(name, try_suffixes=(".weight",))]
        assert tensor.tensor_type == types[chosen], name
        source_weights = as_float32(written[name])
        if chosen == "bf16":
            np.testing.assert_array_equal(np.asarray(tensor.data).view(ml_dtypes.bfloat16).reshape(source_weights.shape),
                                          as_converted(name, written[name]))
            continue
        decoded = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(source_weights.shape)
        if chosen == "q8_0":  # gguf-py's own Q8_0 of the source weights
            reference = gguf.quants.quantize(as_converted(name, source_weights), gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(decoded, gguf.quants.dequantize(reference, gguf.GGMLQuantizationType.Q8_0)
                                          .reshape(source_weights.shape), err_msg=name)
        else:
            np.testing.assert_array_equal(decoded, as_converted(name, dequantize(expected[name])), err_msg=name)
    quantized_bytes = sum(int(tensors[names.get_name(name, try_suffixes=(".weight",))].n_bytes) for name in formats)
    allocation = status["result"]["allocation"]
    assert quantized_bytes == allocation["output_bytes"] <= allocation["budget_bytes"]
