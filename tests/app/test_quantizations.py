"""POST /v1/quantize, /v1/quantize/compare and /v1/dequantize through the test client."""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import gguf
import ml_dtypes
import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors

from quant_core.formats import int4
from quant_core.quantize import dequantize, quantize
from tests.app.conftest import client_with
from tests.tensor_files import load_safetensors, npy_bytes


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)


def test_quantize_npy_report_defaults(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))})
    assert response.status_code == 200
    body = response.json()
    assert body["method"] == "rtn" and body["format"] == "int4-g128-asym"
    (entry,) = body["tensors"]
    assert entry["name"] == "weight" and entry["shape"] == [64, 256] and entry["group_size"] == 128
    # 64 x 256 at g128 asym: 8192 B codes + 128 groups x 2 B scales + 64 B zeros = 8512 B = 4.15625 bits/weight
    assert entry["bytes"] == {"input": 64 * 256 * 4, "output": 8512, "predicted": 8512}
    assert entry["bits_per_weight"] == 4.15625
    reference = quantize(weights, int4(128), "rtn").quality
    assert entry["quality"]["relative_error"] == reference.relative_error
    assert entry["seconds"] >= 0


def test_quantize_safetensors_passes_through_what_it_cannot_quantize(client: TestClient,
                                                                     weights: np.ndarray) -> None:
    payload = save_safetensors({"layer.weight": weights, "layer.bias": weights[0].copy(),
                                "ids": np.arange(8, dtype=np.int64).reshape(2, 4)})
    body = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)},
                       data={"method": "clip", "group_size": "64", "symmetric": "true"}).json()
    assert [t["name"] for t in body["tensors"]] == ["layer.weight"]
    assert body["tensors"][0]["format"] == "int4-g64-sym"
    reasons = {p["name"]: p["reason"] for p in body["passthrough"]}
    assert "1-D" in reasons["layer.bias"] and "int64" in reasons["ids"]


def test_quantize_include_pattern_selects_tensors(client: TestClient, weights: np.ndarray) -> None:
    payload = save_safetensors({"a.q_proj.weight": weights, "a.k_proj.weight": weights})
    body = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)},
                       data={"include": "*q_proj*"}).json()
    assert [t["name"] for t in body["tensors"]] == ["a.q_proj.weight"]
    assert "include pattern" in body["passthrough"][0]["reason"]


def test_quantize_bfloat16_safetensors(client: TestClient, weights: np.ndarray) -> None:
    payload = save_safetensors({"w": weights.astype(ml_dtypes.bfloat16)})
    body = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)}).json()
    assert body["tensors"][0]["bytes"]["input"] == 64 * 256 * 2


def test_quantize_nibble_output_then_dequantize_equals_core(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"output": "nibble", "method": "hqq"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert "attachment" in response.headers["content-disposition"]
    summary = json.loads(response.headers["x-nibble-report"])
    assert summary["quantized_tensors"] == 1 and summary["file_bytes"] == len(response.content)
    back = client.post("/v1/dequantize", files={"file": ("q.safetensors", response.content)})
    assert back.status_code == 200
    restored = load_safetensors(back.content)["weight"]
    expected = dequantize(quantize(weights, int4(128, zero="fp16"), "hqq"), np.float32)  # HQQ keeps fp16 zeros
    assert restored.dtype == np.float32
    assert np.array_equal(restored, expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dequantize_to_16_bit(client: TestClient, weights: np.ndarray, dtype: str) -> None:
    quantized = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                            data={"output": "nibble"}).content
    back = client.post("/v1/dequantize", files={"file": ("q.safetensors", quantized)}, data={"dtype": dtype})
    assert back.status_code == 200
    restored = load_safetensors(back.content)["weight"]
    target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    assert restored.dtype == target
    assert np.array_equal(restored, dequantize(quantize(weights, int4(128), "rtn"), target))


def test_compare_gives_each_method_side_by_side(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize/compare", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"methods": "rtn,clip,hqq"})
    assert response.status_code == 200
    (row,) = response.json()["tensors"]
    assert [r["method"] for r in row["results"]] == ["rtn", "clip", "hqq"]
    errors = {r["method"]: r["quality"]["relative_error"] for r in row["results"]}
    assert row["best_method"] == min(errors, key=errors.__getitem__)
    assert errors["clip"] <= errors["rtn"]


def test_gptq_with_calibration_reports_output_error(client: TestClient, weights: np.ndarray) -> None:
    calibration = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    body = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)),
                                              "calibration": ("x.npy", npy_bytes(calibration))},
                       data={"method": "gptq"}).json()
    quality = body["tensors"][0]["quality"]
    assert quality["output_relative_error"] is not None and quality["eval_rows"]


def test_gptq_act_order_output_stores_its_g_idx_and_autogptqs_layer_follows_it(client: TestClient,
                                                                               weights: np.ndarray) -> None:
    # the method is listed, but every request for it was a 422 ("act-order needs g_idx, which only the
    # layout='gptq' payload stores"): the form has no layout field, and output=gptq is the layout that stores it
    import torch
    from safetensors.torch import load as load_torch

    from tests.quant_core.tensorio.test_reference_libraries import reference_module

    calibration = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    calibration[:, 200:] *= 8.0  # the last columns matter most: act-order moves them first
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)),
                                                  "calibration": ("x.npy", npy_bytes(calibration))},
                           data={"method": "gptq-act-order", "output": "gptq"})
    assert response.status_code == 200, response.text
    stored = load_torch(response.content)
    expected = quantize(weights, int4(128, layout="gptq"), "gptq-act-order", calibration, min_zero=1)
    assert expected.g_idx is not None and not np.array_equal(expected.g_idx, np.arange(256) // 128)
    np.testing.assert_array_equal(stored["weight.g_idx"].numpy(), expected.g_idx)
    layer = reference_module("auto-gptq", "auto_gptq/nn_modules/qlinear/qlinear_cuda.py").QuantLinear(
        4, 128, 256, 64, bias=False)
    for part in ("qweight", "qzeros", "scales", "g_idx"):
        getattr(layer, part).copy_(stored[f"weight.{part}"])
    with torch.no_grad():  # its output on the identity is Wᵀ, in fp16
        decoded = layer(torch.eye(256, dtype=torch.float16)).to(torch.float32).numpy().T
    np.testing.assert_array_equal(decoded, dequantize(expected, np.float16).astype(np.float32))


@pytest.mark.parametrize(("output", "fields"), [
    ("awq", {}), ("compressed-tensors", {}), ("gguf", {"group_size": "32", "symmetric": "true"}),
])
def test_gptq_act_order_to_an_output_without_g_idx_is_422_naming_the_method(
        client: TestClient, weights: np.ndarray, output: str, fields: dict[str, str]) -> None:
    # refused naming 'format', a field the form does not have, after the whole GPTQ sweep had run
    calibration = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)),
                                                  "calibration": ("x.npy", npy_bytes(calibration))},
                           data={"method": "gptq-act-order", "output": output, **fields})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "method" and f"output {output} cannot store" in error["message"]


def test_gptq_act_order_under_a_budget_keeps_the_g_idx_of_the_format_it_chose(
        client: TestClient, weights: np.ndarray, tmp_path: Path) -> None:
    # the budget measured each group size without the GPTQ layout: the same 422 as without a budget
    from quant_core.tensorio import read_nibble_safetensors

    calibration = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)),
                                                  "calibration": ("x.npy", npy_bytes(calibration))},
                           data={"method": "gptq-act-order", "output": "nibble", "bits_per_weight": "5"})
    assert response.status_code == 200, response.text
    (tmp_path / "q.safetensors").write_bytes(response.content)
    stored = read_nibble_safetensors(tmp_path / "q.safetensors")[0]["weight"]
    assert stored.format.layout == "gptq" and stored.g_idx is not None
    expected = quantize(weights, stored.format, "gptq-act-order", calibration)
    np.testing.assert_array_equal(dequantize(stored), dequantize(expected))


def test_a_width_the_group_size_does_not_divide_is_422_naming_the_tensor(client: TestClient) -> None:
    # the refusal said "in_features 96 is not a multiple of group_size 64" and no more: which of the upload's
    # tensors, the client had to find out
    content = save_safetensors({"model.layers.0.a.weight": np.ones((8, 128), np.float32),
                                "model.layers.0.b.weight": np.ones((8, 96), np.float32)})
    response = client.post("/v1/quantize", files={"file": ("m.safetensors", content)}, data={"group_size": "64"})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "group_size"
    assert error["message"] == ("tensor model.layers.0.b.weight: in_features 96 is not a multiple of group_size 64; "
                                "choose a group size that divides it, or 'row' (a whole row per group)")


def test_gptq_without_calibration_is_422(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))}, data={"method": "gptq"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "calibration"


def test_upload_that_is_neither_npy_nor_safetensors_is_415(client: TestClient) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", b"PK\x03\x04 a zip file, not a tensor")})
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"


def test_non_multipart_body_is_415(client: TestClient) -> None:
    response = client.post("/v1/quantize", json={"file": "x"})
    assert response.status_code == 415


def _raw_multipart(content: bytes, closing: bool = True) -> tuple[bytes, dict[str, str]]:
    boundary = "nibble-test-boundary-42"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="w.npy"\r\n\r\n'.encode()
            + content + (f"\r\n--{boundary}--\r\n".encode() if closing else b""))
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_a_body_cut_off_without_its_closing_boundary_is_400_naming_the_file(client: TestClient,
                                                                          weights: np.ndarray) -> None:
    body, headers = _raw_multipart(npy_bytes(weights), closing=False)
    response = client.post("/v1/quantize", content=body, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "file"
    assert "without its closing delimiter" in response.json()["detail"]


def test_an_npy_shorter_than_its_header_declares_is_a_4xx_problem(client: TestClient, weights: np.ndarray) -> None:
    # the parser sees the closing delimiter and the reader refuses the short file, however the body is cut
    body, headers = _raw_multipart(npy_bytes(weights)[:-100])
    response = client.post("/v1/quantize", content=body, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "file"


def test_an_npy_longer_than_its_header_declares_is_422(client: TestClient, weights: np.ndarray) -> None:
    body, headers = _raw_multipart(npy_bytes(weights) + b"trailing")
    response = client.post("/v1/quantize", content=body, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_missing_file_field_is_400(client: TestClient) -> None:
    body, content_type = _multipart([("method", None, b"rtn")])
    response = client.post("/v1/quantize", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "file"
    response = client.post("/v1/quantize", files={"other": ("w.npy", b"\x93NUMPY")})
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["field"] == "other" and "'file'" in error["message"]


def test_pickled_npy_is_refused_and_never_unpickled(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # type: ignore[return-value]

    array = np.empty(1, dtype=object)
    array[0] = Trap()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    response = client.post("/v1/quantize", files={"file": ("evil.npy", buffer.getvalue())})
    assert response.status_code == 422
    assert not marker.exists()
    assert pickle  # the payload above is a real pickle stream


def test_corrupt_safetensors_header_is_422(client: TestClient) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 9999]}}'
    payload = struct.pack("<Q", len(header)) + header + b"\0" * 64
    response = client.post("/v1/quantize", files={"file": ("bad.safetensors", payload)})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "file"


def test_nan_in_a_tensor_is_422_naming_it(client: TestClient, weights: np.ndarray) -> None:
    poisoned = weights.copy()
    poisoned[5, 9] = np.nan
    payload = save_safetensors({"good": weights, "model.layers.3.mlp.up_proj.weight": poisoned})
    response = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)})
    assert response.status_code == 422
    assert "model.layers.3.mlp.up_proj.weight" in response.json()["detail"]
    assert "[5, 9]" in response.json()["detail"]


def test_group_size_that_does_not_divide_is_422(client: TestClient) -> None:
    odd = np.ones((8, 100), dtype=np.float32)
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(odd))}, data={"group_size": "64"})
    assert response.status_code == 422
    assert "100" in response.json()["detail"] and "64" in response.json()["detail"]


def test_bad_form_values_are_422_naming_the_field(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"output": "zip", "group_size": "many"})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"output", "group_size"}


def test_unknown_method_lists_close_names(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))}, data={"method": "rnt"})
    assert response.status_code == 422
    assert "rtn" in response.json()["close"]


def test_dequantize_refuses_a_file_not_written_by_nibble(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/dequantize", files={"file": ("m.safetensors", save_safetensors({"w": weights}))})
    assert response.status_code == 422


@pytest.mark.parametrize(("output", "says"), [("gptq", "a GPTQ or AWQ checkpoint (qweight tensors)"),
                                              ("awq", "a GPTQ or AWQ checkpoint (qweight tensors)"),
                                              ("compressed-tensors", "a compressed-tensors checkpoint")])
def test_dequantize_of_an_engine_format_says_its_loader_reads_it(client: TestClient, weights: np.ndarray,
                                                                output: str, says: str) -> None:
    # nibble's own gptq download sent back was "nibble.format is None, expected 'nibble-int4/1'", no more
    engine_file = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))}, data={"output": output})
    assert engine_file.status_code == 200, engine_file.text
    response = client.post("/v1/dequantize", files={"file": ("w.safetensors", engine_file.content)})
    assert response.status_code == 422 and says in response.json()["detail"]
    assert "output=nibble" in response.json()["detail"]


def test_upload_over_the_limit_is_413_and_leaves_no_temp_files(weights: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as spool, client_with(max_upload_bytes=4096, temp_dir=spool) as small:
        response = small.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))})
        assert response.status_code == 413
        body = response.json()
        assert body["limit"] == "max_upload_bytes" and body["maximum"] == 4096 and body["value"] > 4096
        assert list(Path(spool).iterdir()) == []  # a refused upload is deleted before the answer
        ok = small.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights[:2, :128]))})
        assert ok.status_code == 200
        assert emptied(Path(spool)), "an answered upload was not deleted"  # by a spool thread, as the answer leaves


def emptied(directory: Path, seconds: float = 10.0) -> bool:
    """Whether `directory` is empty, or becomes so within `seconds`."""
    deadline = time.monotonic() + seconds
    while any(directory.iterdir()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_upload_over_the_limit_without_content_length_is_cut_off_while_streaming(weights: np.ndarray) -> None:
    boundary = "nibbleboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.npy\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    data = npy_bytes(weights)

    def stream() -> object:
        yield head
        for start in range(0, len(data), 4096):
            yield data[start:start + 4096]
        yield f"\r\n--{boundary}--\r\n".encode()

    with tempfile.TemporaryDirectory() as spool, client_with(max_upload_bytes=8192, temp_dir=spool) as small:
        response = small.post("/v1/quantize", content=stream(),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413
        assert response.json()["limit"] == "max_upload_bytes"
        assert list(Path(spool).iterdir()) == []


def test_tensor_count_over_the_limit_is_413(weights: np.ndarray) -> None:
    payload = save_safetensors({f"t{i}": weights[:1, :128].copy() for i in range(5)})
    with client_with(max_tensors=4) as small:
        response = small.post("/v1/quantize", files={"file": ("m.safetensors", payload)})
    assert response.status_code == 413
    assert response.json()["value"] == 5


@pytest.mark.parametrize(("output", "group_size", "symmetric", "suffix"), [
    ("gptq", "128", "false", ".safetensors"),
    ("awq", "128", "false", ".safetensors"),
    ("compressed-tensors", "128", "true", ".safetensors"),
    ("gguf", "32", "true", ".gguf"),
])
def test_quantize_exports_download_a_file(client: TestClient, weights: np.ndarray, output: str, group_size: str,
                                          symmetric: str, suffix: str) -> None:
    payload = save_safetensors({"model.layers.0.mlp.up_proj.weight": weights})
    response = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)},
                           data={"output": output, "group_size": group_size, "symmetric": symmetric})
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].endswith(f'{suffix}"')
    summary = json.loads(response.headers["x-nibble-report"])
    assert summary["file_bytes"] == len(response.content) > 0
    if suffix == ".safetensors":
        assert summary["quantization_config"]
        assert load_safetensors(response.content)
        header_size = int.from_bytes(response.content[:8], "little")
        written = json.loads(json.loads(response.content[8: 8 + header_size])["__metadata__"]["nibble.report"])
    else:
        assert response.content[:4] == b"GGUF"
        with tempfile.NamedTemporaryFile(suffix=".gguf") as handle:
            handle.write(response.content)
            handle.flush()
            field = gguf.GGUFReader(handle.name).fields["nibble.report"]
            written = json.loads(bytes(field.parts[field.data[0]]).decode())
    # the file carries the report: the figures a report request gives for the same upload and scheme
    report = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)},
                         data={"output": "report", "group_size": group_size, "symmetric": symmetric}).json()
    assert [(t["name"], t["quality"]) for t in written["tensors"]] == [(t["name"], t["quality"])
                                                                       for t in report["tensors"]]


def _configs_of_an_up_proj_only_export(client: TestClient, weights: np.ndarray, output: str) -> list[dict[str, Any]]:
    """The quantization_config of an export whose include leaves down_proj out: in the answer's header, and in
    the report the file's own metadata carries."""
    payload = save_safetensors({"model.layers.0.mlp.up_proj.weight": weights,
                                "model.layers.0.mlp.down_proj.weight": weights})
    response = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)},
                           data={"output": output, "include": "*up_proj*"})
    assert response.status_code == 200, response.text
    header_size = int.from_bytes(response.content[:8], "little")
    written = json.loads(json.loads(response.content[8: 8 + header_size])["__metadata__"]["nibble.report"])
    return [json.loads(response.headers["x-nibble-report"])["quantization_config"], written["quantization_config"]]


def test_gptq_export_of_a_selection_tells_the_loaders_which_linear_weights_it_left_unquantized(
        client: TestClient, weights: np.ndarray) -> None:
    # (GPTQModel/vLLM read dynamic, transformers modules_in_block_to_quantize: quant_core/tensorio/gptq.py)
    for config in _configs_of_an_up_proj_only_export(client, weights, "gptq"):
        assert config["dynamic"] == {r"-:^model\.layers\.\d+\.mlp\.down_proj$": {}}
        assert config["modules_in_block_to_quantize"] == [["mlp.up_proj"]]


def test_awq_export_of_a_selection_names_the_weights_it_left_out_in_the_files_report_too(
        client: TestClient, weights: np.ndarray) -> None:
    # the answer said modules_to_not_convert ["...down_proj"], the report in the file's metadata null
    for config in _configs_of_an_up_proj_only_export(client, weights, "awq"):
        assert config["modules_to_not_convert"] == ["model.layers.0.mlp.down_proj"]


def test_gguf_export_of_an_asymmetric_scheme_is_422(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"output": "gguf", "group_size": "128"})
    assert response.status_code == 422


def test_hqq_keeps_its_fp16_zero_by_default_and_rounds_it_when_asked(client: TestClient,
                                                                     weights: np.ndarray) -> None:
    # HQQ's own format stores the optimised zero as fp16: 4 + 32/128 = 4.25 bits per weight at g128
    upload = {"file": ("w.npy", npy_bytes(weights))}
    default = client.post("/v1/quantize", files=upload, data={"method": "hqq"}).json()["tensors"][0]
    rounded = client.post("/v1/quantize", files=upload, data={"method": "hqq", "zero": "int4"}).json()["tensors"][0]
    assert default["bits_per_weight"] == 4.25 and default["format"] == "int4-g128-asym-fp16zero"
    assert rounded["bits_per_weight"] == 4.15625 and rounded["format"] == "int4-g128-asym"
    assert default["quality"]["sqnr_db"] > rounded["quality"]["sqnr_db"]


def test_hqq_to_an_engine_format_stores_4_bit_zeros(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"method": "hqq", "output": "gptq", "zero": "auto"})
    assert response.status_code == 200


def test_compare_shows_hqq_at_its_own_size_beside_rtn(client: TestClient, weights: np.ndarray) -> None:
    body = client.post("/v1/quantize/compare", files={"file": ("w.npy", npy_bytes(weights))},
                       data={"methods": "rtn,hqq"}).json()
    results = {r["method"]: r for r in body["tensors"][0]["results"]}
    assert results["rtn"]["bits_per_weight"] == 4.15625
    assert results["hqq"]["bits_per_weight"] == 4.25


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "nibble-test-boundary") -> tuple[bytes, str]:
    """A multipart body with its parts in the order given: (field, file name or None, content)."""
    body = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_fields_sent_after_the_file_still_decide_the_job(client: TestClient, weights: np.ndarray) -> None:
    body, content_type = _multipart([("output", None, b"report"), ("file", "w.npy", npy_bytes(weights)),
                                     ("method", None, b"clip"), ("group_size", None, b"64")])
    response = client.post("/v1/quantize", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    (entry,) = response.json()["tensors"]
    assert entry["method"] == "clip" and entry["group_size"] == 64
    assert entry["quality"]["relative_error"] == quantize(weights, int4(64), "clip").quality.relative_error


def test_a_field_sent_twice_is_422_rather_than_one_value_taken(client: TestClient, weights: np.ndarray) -> None:
    body, content_type = _multipart([("method", None, b"rtn"), ("file", "w.npy", npy_bytes(weights)),
                                     ("method", None, b"clip")])
    response = client.post("/v1/quantize", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "method" and "sent 2 times" in error["message"]


def test_compare_refuses_a_method_listed_twice(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize/compare", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"methods": "rtn,clip,rtn"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "methods"


def test_calibration_sent_after_the_file_is_used(client: TestClient, weights: np.ndarray) -> None:
    calibration = np.random.default_rng(5).standard_normal((32, 256)).astype(np.float32)
    body, content_type = _multipart([("method", None, b"rtn"), ("file", "w.npy", npy_bytes(weights)),
                                     ("calibration", "x.npy", npy_bytes(calibration))])
    response = client.post("/v1/quantize", content=body, headers={"Content-Type": content_type})
    (entry,) = response.json()["tensors"]
    assert entry["quality"]["output_relative_error"] is not None


def test_an_npy_cut_short_gets_the_error_of_a_complete_file(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)[:-64])})
    assert response.status_code == 422
    assert "data bytes" in response.json()["detail"]


def test_an_invalid_field_after_the_file_is_422(client: TestClient, weights: np.ndarray) -> None:
    body, content_type = _multipart([("method", None, b"rtn"), ("file", "w.npy", npy_bytes(weights)),
                                     ("group_size", None, b"100")])
    response = client.post("/v1/quantize", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"group_size"}


def test_an_npy_cut_short_with_a_field_after_it_gets_the_error_of_a_complete_file(client: TestClient,
                                                                                weights: np.ndarray) -> None:
    body, content_type = _multipart([("method", None, b"rtn"), ("file", "w.npy", npy_bytes(weights)[:-64]),
                                     ("group_size", None, b"64")])
    response = client.post("/v1/quantize", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422
    assert "data bytes" in response.json()["detail"]


@pytest.mark.parametrize("values", [0.0, 1e-45], ids=["all zeros", "subnormal"])
def test_a_tensor_quantized_without_error_reports_null_sqnr_and_exact(client: TestClient, values: float) -> None:
    # SQNR is infinite and strict JSON has no infinity: it used to be a 500
    weights = np.full((64, 256), values, dtype=np.float32)
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))})
    assert response.status_code == 200
    quality = response.json()["tensors"][0]["quality"]
    reference = quantize(weights, int4(128), "rtn").quality
    assert quality["exact"] is (reference.max_abs_error == 0.0)
    assert quality["sqnr_db"] == (None if math.isinf(reference.sqnr_db) else reference.sqnr_db)
    compared = client.post("/v1/quantize/compare", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"methods": "rtn,clip"})
    assert compared.status_code == 200 and compared.json()["tensors"][0]["best_method"] in ("rtn", "clip")


def test_a_tensor_with_more_dimensions_than_numpy_holds_is_422(client: TestClient) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 100 + "), }"
    header = header.ljust(((len(header) + 11) // 64 + 1) * 64 - 11) + "\n"
    raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(4)
    response = client.post("/v1/quantize", files={"file": ("w.npy", raw)})
    assert response.status_code == 422
    assert "more than 64 dimensions" in response.json()["detail"]  # refused at the 65th, not counted to 100


def test_dequantize_of_an_npy_is_415_saying_it_reads_nibble_safetensors(client: TestClient,
                                                                       weights: np.ndarray) -> None:
    response = client.post("/v1/dequantize", files={"file": ("w.npy", npy_bytes(weights))})
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert ".safetensors" in response.json()["detail"]


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_calibration_that_fits_no_tensor_is_422_not_dropped(client: TestClient, weights: np.ndarray,
                                                            method: str) -> None:
    calibration = np.ones((64, 100), dtype=np.float32)  # the weights have 256 in_features
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)),
                                                  "calibration": ("x.npy", npy_bytes(calibration))},
                           data={"method": method})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "calibration" and "100 columns" in error["message"]


def test_a_tensor_the_calibration_does_not_fit_says_it_was_quantized_without_it(client: TestClient,
                                                                                weights: np.ndarray) -> None:
    narrow = np.random.default_rng(2).standard_normal((16, 128)).astype(np.float32)
    payload = save_safetensors({"wide.weight": weights, "narrow.weight": narrow})
    calibration = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    body = client.post("/v1/quantize", files={"file": ("m.safetensors", payload),
                                              "calibration": ("x.npy", npy_bytes(calibration))}).json()
    entries = {t["name"]: t for t in body["tensors"]}
    assert entries["wide.weight"]["quality"]["output_relative_error"] is not None
    assert "note" not in entries["wide.weight"]
    assert entries["narrow.weight"]["quality"]["output_relative_error"] is None
    assert "calibration not used" in entries["narrow.weight"]["note"]


@pytest.mark.parametrize("path", ["/v1/quantize", "/v1/quantize/compare"])
def test_an_include_pattern_matching_no_tensor_is_422(client: TestClient, weights: np.ndarray, path: str) -> None:
    payload = save_safetensors({"a.q_proj.weight": weights})
    response = client.post(path, files={"file": ("m.safetensors", payload)},
                           data={"include": "*v_proj*", **({"methods": "rtn,clip"} if "compare" in path else {})})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "include" and "a.q_proj.weight" in error["message"]


def test_a_file_in_a_field_the_route_does_not_read_is_refused_naming_it(client: TestClient,
                                                                         weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)),
                                                  "weights2": ("x.npy", npy_bytes(weights))})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "weights2"


def test_compare_names_the_methods_field_for_an_unknown_method(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize/compare", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"methods": "rtn,bogus"})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "methods" and "bogus" in error["message"]


def test_gptq_output_of_all_positive_weights_stores_zeros_of_at_least_1(client: TestClient) -> None:
    # GPTQ checkpoint v1 stores zero − 1: a zero of 0 (every all-positive group) used to make the export a 422
    weights = np.abs(np.random.default_rng(8).standard_normal((64, 256))).astype(np.float32)
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))}, data={"output": "gptq"})
    assert response.status_code == 200
    stored = load_safetensors(response.content)
    zeros = stored["weight.qzeros"].view(np.uint32)
    nibbles = np.stack([(zeros >> (4 * j)) & 0xF for j in range(8)], axis=-1)
    expected = quantize(weights, int4(128), "rtn", min_zero=1)
    assert expected.zeros is not None
    assert int(expected.zeros.min()) >= 1  # so zero − 1 never smears −1 over the next nibble
    np.testing.assert_array_equal(nibbles.reshape(nibbles.shape[0], -1) + 1, expected.zeros.T)


def test_a_boundary_longer_than_rfc_2046_allows_is_400_naming_the_content_type(client: TestClient) -> None:
    response = client.post("/v1/quantize", content=b"x",
                           headers={"Content-Type": "multipart/form-data; boundary=" + "a" * 300})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "Content-Type"


@pytest.mark.parametrize("calibration", [
    pickle.dumps(np.ones((4, 4))),  # not a .npy at all
    b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}\n" + bytes(16),  # a corrupt header
])
def test_an_unreadable_calibration_file_is_named_as_the_calibration_field(client: TestClient, weights: np.ndarray,
                                                                         calibration: bytes) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights)),
                                                  "calibration": ("x.npy", calibration)}, data={"method": "gptq"})
    assert 400 <= response.status_code < 500
    assert [error["field"] for error in response.json()["errors"]] == ["calibration"]


def test_a_gguf_export_of_another_group_size_names_the_group_size(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                           data={"output": "gguf", "group_size": "128", "symmetric": "true"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["group_size"]


def test_rtn_sym_on_an_asymmetric_scheme_says_its_zeros_are_stored(client: TestClient, weights: np.ndarray) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))}, data={"method": "rtn-sym"})
    (entry,) = response.json()["tensors"]
    assert entry["format"] == "int4-g128-asym" and "send symmetric=true" in entry["note"]


def _file_tensor_bytes(content: bytes, output: str, path: Path) -> tuple[dict[str, int], dict[str, Any]]:
    """The bytes of each tensor of a written file (safetensors header offsets, or GGUF's tensor infos), and the
    report the file holds in its metadata."""
    if output == "gguf":
        path.write_bytes(content)
        reader = gguf.GGUFReader(path)
        field = reader.fields["nibble.report"]
        report = json.loads(bytes(field.parts[field.data[0]]).decode())
        return {tensor.name: int(tensor.n_bytes) for tensor in reader.tensors}, report
    header_size = int.from_bytes(content[:8], "little")
    header = json.loads(content[8:8 + header_size])
    metadata = header.pop("__metadata__")
    report = json.loads(metadata["nibble.report" if output != "nibble" else "report"])
    return {name: end - start for name, (start, end) in
            ((name, entry["data_offsets"]) for name, entry in header.items())}, report


@pytest.mark.parametrize(("output", "fields"), [
    ("gptq", {}), ("gptq", {"symmetric": "true"}), ("gptq", {"method": "gptq-act-order"}),
    ("awq", {}), ("awq", {"symmetric": "true"}), ("compressed-tensors", {}),
    ("compressed-tensors", {"symmetric": "true", "group_size": "64"}),
    ("gguf", {"symmetric": "true", "group_size": "32"}), ("nibble", {}), ("nibble", {"method": "hqq"}),
    ("nibble", {"bits_per_weight": "6"})])
def test_the_report_gives_each_weights_bytes_in_the_file_written_beside_its_payload(
        client: TestClient, tmp_path: Path, output: str, fields: dict[str, str]) -> None:
    # bytes.output and .predicted are nibble's payload; a GPTQ file also holds g_idx (and qzeros when symmetric),
    # an AWQ file qzeros when symmetric, compressed-tensors weight_shape: bytes.file is what the file holds
    rng = np.random.default_rng(3)
    tensors = {"model.layers.0.mlp.up_proj.weight": rng.standard_normal((64, 256)).astype(np.float32),
               "model.layers.0.mlp.down_proj.weight": rng.standard_normal((256, 128)).astype(np.float32),
               "model.layers.0.post_attention_layernorm.weight": np.ones(256, dtype=np.float32)}
    calibration = ({"calibration": ("x.npy", npy_bytes(rng.standard_normal((32, 256)).astype(np.float32)))}
                   if fields.get("method", "").startswith("gptq") else {})
    response = client.post("/v1/quantize", files={"file": ("m.safetensors", save_safetensors(tensors)),
                                                  **calibration},
                           data={"output": output, **fields,
                                 **({"include": "*up_proj*"} if calibration else {})})
    assert response.status_code == 200, response.text
    sizes, report = _file_tensor_bytes(response.content, output, tmp_path / "out.gguf")
    passthrough = {entry["name"] for entry in report["passthrough"]}
    for entry in report["tensors"]:
        module = entry["name"].removesuffix("weight")
        stored = {name: size for name, size in sizes.items() if name.startswith(module) and name not in passthrough}
        assert entry["bytes"]["file"] == sum(stored.values()), (entry["name"], stored)
        assert entry["bytes"]["output"] == entry["bytes"]["predicted"] or "bits_per_weight" in fields
    total = sum(entry["bytes"]["file"] for entry in report["tensors"])
    assert report["totals"]["output_file_tensor_bytes"] == total
    assert json.loads(response.headers["x-nibble-report"])["output_file_tensor_bytes"] == total
    assert sum(size for name, size in sizes.items() if name not in passthrough) == total


@pytest.mark.parametrize(("output", "symmetric", "file_bytes"), [
    # 64 x 256 at g128: qweight 8,192 + scales 256 (+ packed zeros 64) is the payload, 8,512 (8,448 symmetric)
    ("gptq", "false", 8_512 + 1_024),  # + g_idx [256] int32
    ("gptq", "true", 8_448 + 64 + 1_024),  # + qzeros [2, 8] int32, stored though symmetric, + g_idx
    ("awq", "false", 8_512), ("awq", "true", 8_448 + 64),  # AWQ stores every zero (8 when symmetric)
    ("compressed-tensors", "false", 8_512 + 16), ("compressed-tensors", "true", 8_448 + 16)])  # + weight_shape
def test_a_checkpoint_outputs_file_bytes_are_the_payload_plus_its_layouts_tensors(
        client: TestClient, weights: np.ndarray, output: str, symmetric: str, file_bytes: int) -> None:
    response = client.post("/v1/quantize", files={"file": ("w.safetensors", save_safetensors({"x.weight": weights}))},
                           data={"output": output, "symmetric": symmetric})
    header_size = int.from_bytes(response.content[:8], "little")
    metadata = json.loads(response.content[8:8 + header_size])["__metadata__"]
    (entry,) = json.loads(metadata["nibble.report"])["tensors"]
    payload = 8_448 if symmetric == "true" else 8_512
    assert entry["bytes"] == {"input": 65_536, "output": payload, "predicted": payload, "file": file_bytes}
