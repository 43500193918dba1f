"""``nibble``: tables for people, ``--json`` identical to the API, locally and against a real server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from app.cli import run
from tests.e2e.conftest import REPO_ROOT, start_server

PLAN_ARGS = ["plan", "--model", "llama-3.1-70b", "--device", "h100-80gb", "--count", "2", "--context", "32768",
             "--sequences", "8"]
PLAN_BODY = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
             "workload": {"context_length": 32768, "concurrent_sequences": 8}}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with start_server() as base_url:
        yield base_url


def nibble(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    rng = np.random.default_rng(11)
    path = tmp_path / "in.safetensors"
    save_file({"layers.0.q_proj.weight": rng.standard_normal((64, 256)).astype(np.float32),
               "layers.0.k_proj.weight": rng.standard_normal((32, 256)).astype(np.float32),
               "layers.0.norm.weight": np.ones(256, np.float32)}, str(path))
    return path


@pytest.mark.parametrize("extra", [
    [],
    ["--kv-dtype", "fp8", "--group-size", "64", "--symmetric"],
    ["--memory-utilization", "0.95", "--format", "bf16"],
])
def test_plan_json_locally_and_remotely_equals_post_v1_plan(server: str, extra: list[str]) -> None:
    status, local, _ = nibble(*PLAN_ARGS, *extra, "--json")
    remote_status, remote, _ = nibble(*PLAN_ARGS, *extra, "--json", "--url", server)
    body: dict[str, object] = {**PLAN_BODY}
    if extra and extra[0] == "--kv-dtype":
        body.update(kv_cache={"dtype": "fp8"}, weights={"group_size": 64, "symmetric": True})
    elif extra:
        body.update(runtime={"memory_utilization": 0.95}, weights={"format": "bf16"})
    api = httpx.post(server + "/v1/plan", json=body, timeout=30).json()
    assert status == remote_status == 0
    assert json.loads(local) == api
    assert json.loads(remote) == api


def test_plan_table_shows_gib_per_device_for_both_formats_with_verdicts() -> None:
    status, out, _ = nibble(*PLAN_ARGS)
    assert status == 0
    assert "GiB (1 GiB = 2^30 bytes)" in out
    lines = out.splitlines()
    # 2 devices x 2 formats; Llama-3.1-70B bf16 weights split over 2 ranks: 65.71 GiB each.
    bf16_rows = [line for line in lines if line.startswith("bf16 (16.000 b/w)")]
    int4_rows = [line for line in lines if line.startswith("int4 (")]
    assert len(bf16_rows) == len(int4_rows) == 2
    assert bf16_rows[0].split()[4] == "65.71" and bf16_rows[0].split()[-1] == "NO"
    assert int4_rows[0].split()[-1] == "yes"
    assert any(line.startswith("bf16: DOES NOT FIT") for line in lines)
    assert any(line.startswith("int4: FITS") for line in lines)
    assert any(line.startswith("warning: ") and "KV cache" in line for line in lines)


def test_plan_from_a_config_file_with_a_raw_memory_size(tmp_path: Path) -> None:
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    status, out, _ = nibble("plan", "--config", str(path), "--memory-bytes", str(24 * 2**30), "--json")
    assert status == 0
    answer = json.loads(out)
    assert answer["hardware"]["capacity_bytes"] == 24 * 2**30
    assert answer["kv_cache"]["bytes_per_token"] == 131072  # 32 x 8 x 128 x 2 x 2


def test_errors_print_the_problem_and_exit_1(server: str) -> None:
    status, _, err = nibble("plan", "--model", "llama-3.1-70x", "--device", "h100-80gb")
    assert status == 1
    assert "model.preset" in err and "llama-3.1-70b" in err
    status, _, err = nibble("plan", "--model", "llama-3.1-8b", "--device", "h100-80gb", "--context", "0",
                            "--url", server)
    assert status == 1
    assert "workload.context_length" in err


def test_inspect_a_config_file_and_a_preset(tmp_path: Path, server: str) -> None:
    status, out, _ = nibble("inspect", "--preset", "llama-3.1-8b")
    assert status == 0
    assert out.startswith("llama-3.1-8b (llama): 8,030,261,248 parameters")
    assert "bf16 131,072" in out
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama"}))
    status, _, err = nibble("inspect", str(config))
    assert status == 1 and "hidden_size" in err
    _, local, _ = nibble("inspect", "--preset", "qwen3-8b", "--json")
    _, remote, _ = nibble("inspect", "--preset", "qwen3-8b", "--json", "--url", server)
    assert json.loads(local) == json.loads(remote)


def test_quantize_locally_writes_the_file_with_a_progress_line_per_tensor(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.safetensors"
    status, out, err = nibble("quantize", str(checkpoint), "-o", str(output), "--method", "hqq", "--format", "gptq")
    assert status == 0
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split("] ")[1].split(" ")[0] for line in progress] == ["1/2", "2/2"]
    assert progress[-1].startswith("[" + "#" * 24 + "]")
    assert "2 tensors quantized by hqq, 1 passed through" in out
    stored = load_file(str(output))
    assert stored["layers.0.q_proj.qweight"].shape == (256 // 8, 64)  # GPTQ: int32 rows of 8 nibbles
    assert "layers.0.norm.weight" in stored


def test_quantize_against_a_server_gives_the_same_file_as_locally(checkpoint: Path, tmp_path: Path,
                                                                  server: str) -> None:
    local, remote = tmp_path / "local.safetensors", tmp_path / "remote.safetensors"
    assert nibble("quantize", str(checkpoint), "-o", str(local), "--method", "rtn", "--quiet")[0] == 0
    status, out, _ = nibble("quantize", str(checkpoint), "-o", str(remote), "--method", "rtn", "--url", server)
    assert status == 0 and "2 tensors quantized" in out
    local_tensors, remote_tensors = load_file(str(local)), load_file(str(remote))
    assert local_tensors.keys() == remote_tensors.keys()
    for name in local_tensors:
        np.testing.assert_array_equal(local_tensors[name], remote_tensors[name])


def test_compare_table_and_json_locally_and_remotely(tmp_path: Path, server: str) -> None:
    path = tmp_path / "in.npy"
    np.save(path, np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32))
    status, out, _ = nibble("compare", str(path), "--methods", "rtn,clip,hqq")
    assert status == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("weight ")]
    assert [row[2] for row in rows] == ["rtn", "clip", "hqq"]
    # 64 x 256 at g128 asymmetric: 4-bit zeros for rtn and clip, HQQ's fp16 zeros for hqq
    assert [(row[3], row[4]) for row in rows] == [("8,512", "4.156"), ("8,512", "4.156"), ("8,704", "4.250")]
    assert sum(row[-1] == "best" for row in rows) == 1
    _, local, _ = nibble("compare", str(path), "--methods", "rtn,clip", "--json")
    _, remote, _ = nibble("compare", str(path), "--methods", "rtn,clip", "--json", "--url", server)
    strip = lambda report: [[{k: v for k, v in r.items() if k != "seconds"} for r in t["results"]]  # noqa: E731
                            for t in json.loads(report)["tensors"]]  # seconds are per-run timings
    assert strip(local) == strip(remote)


def test_console_script_is_installed_and_prints_help() -> None:
    result = subprocess.run([sys.executable, "-m", "app.cli", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0
    for command in ("serve", "plan", "inspect", "quantize", "compare"):
        assert command in result.stdout
    script = Path(sys.executable).parent / "nibble"
    if script.exists():
        assert "app.cli" in script.read_text()


def test_quantize_locally_under_a_budget_with_importance_statistics(checkpoint: Path, tmp_path: Path,
                                                                   server: str) -> None:
    from quant_core.tensorio import write_importance_dat

    stats = tmp_path / "imatrix.dat"
    rng = np.random.default_rng(12)
    write_importance_dat(stats, {"layers.0.q_proj.weight": np.exp(rng.standard_normal(256)).astype(np.float32)})
    output = tmp_path / "out.safetensors"
    status, out, err = nibble("quantize", str(checkpoint), "-o", str(output), "--importance", str(stats),
                              "--bits-per-weight", "4.4", "--json", "--quiet")
    assert status == 0, err
    report = json.loads(out)
    assert report["allocation"]["output_bytes"] <= report["allocation"]["budget_bytes"] == int(4.4 * 96 * 256 / 8)
    quality = {t["name"]: t["quality"] for t in report["tensors"]}
    assert quality["layers.0.q_proj.weight"]["weighted_relative_error"] is not None  # the statistics name it
    assert quality["layers.0.k_proj.weight"]["importance_used"] is False  # they do not name this one
    status, _, err = nibble("quantize", str(checkpoint), "-o", str(output), "--bits-per-weight", "4.4",
                            "--url", server)
    assert status == 1 and "locally" in err
