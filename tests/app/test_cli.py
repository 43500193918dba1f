"""``nibble``: tables for people, ``--json`` identical to the API, locally and against a real server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from app.cli import run
from tests.e2e.conftest import REPO_ROOT, start_server
from tests.threaded_server import silent_listener, uvicorn_in_thread

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


def test_plan_table_names_vllms_token_figure_and_both_concurrencies() -> None:
    status, out, _ = nibble(*PLAN_ARGS, "--engine", "vllm", "--engine-version", "0.19", "--max-num-seqs", "256")
    assert status == 0
    assert "what vLLM logs as 'GPU KV cache size'" in out and "max_num_seqs 256" in out
    assert "vLLM's maximum concurrency for 32,768 tokens per request" in out
    assert "nibble's (sliding-window aware)" in out
    status, out, _ = nibble("plan", "--model", "llama-3.1-70b", "--device", "h100-80gb", "--count", "3")
    assert status == 3 and "NOT DEPLOYABLE: vLLM refuses tensor parallel size 3" in out  # not deployable: exit 3
    assert json.loads(nibble(*PLAN_ARGS, "--engine", "generic", "--json")[1])["kv_cache"]["capacity_tokens"] is None


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
    assert status == remote_status == (0 if api["fits"] else 3)  # bf16 70B on 2 x H100 does not fit: 3
    assert json.loads(local) == api
    assert json.loads(remote) == api


def test_plan_table_shows_gib_per_device_for_both_formats_with_verdicts() -> None:
    status, out, _ = nibble(*PLAN_ARGS)
    assert status == 0
    assert "GiB (1 GiB = 2^30 bytes)" in out
    lines = out.splitlines()
    # 2 identical tensor-parallel ranks share one row per format; Llama-3.1-70B bf16 split over 2: 65.71 GiB each.
    bf16_rows = [line for line in lines if line.startswith("bf16 (16.000 b/w)")]
    int4_rows = [line for line in lines if line.startswith("int4 (")]
    assert len(bf16_rows) == len(int4_rows) == 1
    assert bf16_rows[0].split()[3] == "0-1" and int4_rows[0].split()[4] == "0-1"
    assert bf16_rows[0].split()[4] == "65.71" and bf16_rows[0].split()[-1] == "NO"
    assert int4_rows[0].split()[-1] == "yes"
    assert any(line.startswith("bf16: DOES NOT FIT") for line in lines)
    assert any(line.startswith("int4: FITS") for line in lines)
    assert any(line.startswith("warning: ") and "KV cache" in line for line in lines)


def test_plan_from_a_config_file_with_a_raw_memory_size(tmp_path: Path) -> None:
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
              "max_position_embeddings": 131072}  # without it LlamaConfig's 2048: vLLM refuses the 4096 planned
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


# --- as a person meets it: no tracebacks, exit codes, human units, listings (issue 20) ------------


def nibble_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process: what a terminal shows."""
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_server_is_one_line_on_stderr_and_exit_status_4() -> None:
    result = nibble_process("plan", "--model", "llama-3.1-8b", "--device", "h100-80gb",
                            "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 4
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: cannot reach the nibble server at http://127.0.0.1:")
    assert "Connection refused" in result.stderr


@pytest.mark.parametrize("argv", [["jobs", "watch", "0123"], ["jobs", "status", "0123"], ["jobs", "submit", "llama"]])
def test_jobs_against_an_unreachable_server_exit_4_at_once(argv: list[str]) -> None:
    result = nibble_process(*argv, "--watch" if argv[1] == "submit" else "--json",
                            "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 4
    assert result.stderr.startswith("error: cannot reach the nibble server at http://127.0.0.1:")
    assert result.stderr.count("\n") == 1  # no reconnecting to a server never reached: a wrong --url fails now


def test_a_server_that_never_accepts_is_exit_status_4_within_the_connect_timeout() -> None:
    with silent_listener() as port:
        started = time.monotonic()
        result = nibble_process("devices", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 4 and time.monotonic() - started < 60  # 10 s to connect; it was 300 s
    assert result.stderr == f"error: cannot reach the nibble server at http://127.0.0.1:{port}: timed out " \
                            "(ConnectTimeout)\n"


@pytest.mark.parametrize("argv", [["devices"], ["inspect", "--preset", "qwen3-235b-a22b", "--json"]])
def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly_with_status_141(argv: list[str]) -> None:
    process = subprocess.Popen([sys.executable, "-m", "app.cli", *argv], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.close()  # `nibble ... | head -1` once head has its line
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (141, "")  # as `ls | head` for ls; it was 1 and "error: [Errno 32] Broken pipe"


def test_a_url_without_a_scheme_is_a_usage_error_with_the_fix() -> None:
    result = nibble_process("presets", "--url", "localhost:8000")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == ("nibble: error: --url 'localhost:8000' is not an http:// or https:// address; "
                             "did you mean http://localhost:8000?\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["--context", "eight"], "'eight' is not a token count"),
    (["--memory=-80GiB"], "'-80GiB' is not a size in bytes"),
    (["--count", "two"], "invalid int value: 'two'"),
])
def test_bad_input_is_a_usage_line_not_a_traceback(argv: list[str], message: str) -> None:
    model = ["plan", "--model", "llama-3.1-8b"]
    hardware = [] if any(arg.startswith("--memory") for arg in argv) else ["--device", "h100-80gb"]
    result = nibble_process(*model, *hardware, *argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1  # one line: the problem and where help is
    assert result.stderr.startswith("nibble plan: error: ") and message in result.stderr
    assert result.stderr.endswith("(see nibble plan --help)\n")


def test_an_api_error_in_human_units_is_one_problem_not_a_traceback() -> None:
    result = nibble_process("plan", "--model", "llama-3.1-8b", "--memory", "0GiB")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "memory_bytes" in result.stderr


def test_human_units_reach_the_request_as_bytes_and_tokens() -> None:
    status, out, _ = nibble("plan", "--model", "llama-3.1-8b", "--memory", "80GB", "--context", "8k", "--json")
    answer = json.loads(out)
    assert status == 0
    assert answer["hardware"]["capacity_bytes"] == 80 * 10**9
    assert answer["workload"]["context_length"] == 8192  # "8k" is 8 x 1024 tokens, never 8
    _, out, _ = nibble("plan", "--model", "llama-3.1-8b", "--memory-bytes", "80GiB", "--context", "128K", "--json")
    answer = json.loads(out)
    assert answer["hardware"]["capacity_bytes"] == 80 * 2**30
    assert answer["workload"]["context_length"] == 131072  # Llama 3.1's "128K" = max_position_embeddings


def test_the_table_shows_the_deployed_format_and_says_its_unit() -> None:
    status, out, _ = nibble("plan", "--model", "llama-3.1-70b", "--device", "h100-80gb", "--format", "int8",
                            "--context", "8k")
    assert status == 3  # the deployed format does not fit: 1.32 GiB of KV memory holds 4,320 tokens, not 8,192
    int8_rows = [line for line in out.splitlines() if line.startswith("int8 (")]
    # Llama-3.1-70B at int8 (per-channel fp16 scales): 67.68 GiB of weights on one H100
    assert len(int8_rows) == 1 and "deployed" in int8_rows[0] and "67.68" in int8_rows[0].split()
    assert any(line.startswith("int8: DOES NOT FIT") for line in out.splitlines())
    assert "Sizes in GiB (1 GiB = 2^30 bytes) per device" in out
    _, out, _ = nibble("plan", "--model", "llama-3.1-70b", "--device", "h100-80gb", "--format", "int8",
                       "--unit", "GB")
    assert "Sizes in GB (1 GB = 10^9 bytes) per device" in out
    assert "72.67" in next(row for row in out.splitlines() if row.startswith("int8 (")).split()  # 72,669,806,592 B


def test_exit_status_is_3_when_the_model_does_not_fit_unless_allowed() -> None:
    argv = ("plan", "--model", "llama-3.1-405b", "--device", "h100-80gb")
    status, out, err = nibble(*argv)
    assert status == 3
    assert "int4: DOES NOT FIT" in out
    assert "does not fit at int4" in err
    assert nibble(*argv, "--allow-no-fit")[0] == 0
    assert nibble(*argv, "--json")[0] == 3
    assert nibble("plan", "--model", "llama-3.1-8b", "--device", "h100-80gb")[0] == 0


def test_padding_zero_and_runtime_choices_reach_the_request() -> None:
    from app.cli import build_parser, plan_body
    args = build_parser().parse_args(["plan", "--model", "gpt2", "--device", "h100-80gb", "--pad", "--zero", "fp16",
                                      "--block-size", "32", "--overhead", "2GiB", "--activations", "1.5GiB",
                                      "--max-batched-tokens", "16k", "--float-format", "fp16"])
    body = plan_body(args)
    assert body["weights"] == {"zero": "fp16", "pad": True}
    assert body["kv_cache"] == {"block_size": 32}
    assert body["runtime"] == {"overhead_bytes": 2 * 2**30, "activation_bytes": 3 * 2**29,
                               "max_batched_tokens": 16384, "float_format": "fp16"}
    status, _, err = nibble("plan", "--model", "gpt2", "--device", "h100-80gb", "--format", "bf16", "--pad")
    assert status == 1 and "weights.pad" in err  # sent, and refused where it does not apply


def test_compute_units_reach_the_request_and_size_the_plan_of_a_device_given_in_bytes() -> None:
    from app.cli import build_parser, plan_body
    args = build_parser().parse_args(["plan", "--model", "gpt2", "--memory", "24GiB", "--compute-units", "58"])
    assert plan_body(args)["hardware"] == {"count": 1, "memory_bytes": 24 * 2**30, "compute_units": 58}
    status, out, _ = nibble("plan", "--model", "llama-3.1-8b", "--memory", "24GiB", "--compute-units", "58",
                            "--json")
    answer = json.loads(out)
    assert status == 0 and answer["hardware"]["compute_units"] == 58 and "58 SMs" in answer["activation"]["basis"]
    status, _, err = nibble("plan", "--model", "gpt2", "--device", "l4", "--compute-units", "60")
    assert status == 1 and "hardware.compute_units" in err and "l4 has 58 compute units" in err


def test_a_device_given_in_bytes_takes_its_compute_capability_from_the_command_line() -> None:
    # an H100's bytes, capability and SM count plan as the catalog h100-80gb (tests/app/test_compute_units_api.py
    # compares every field); without the capability a GPTQ asymmetric checkpoint is not checked against the device
    from app.cli import build_parser, plan_body
    args = build_parser().parse_args(["plan", "--model", "gpt2", "--memory", "85899345920", "--compute-capability",
                                      "9.0", "--compute-units", "132"])
    assert plan_body(args)["hardware"] == {"count": 1, "memory_bytes": 85899345920, "compute_capability": "9.0",
                                           "compute_units": 132}
    status, out, _ = nibble("plan", "--model", "llama-3.1-8b", "--memory", "80GiB", "--compute-capability", "9.0",
                            "--json")
    answer = json.loads(out)
    assert status == 0 and answer["hardware"]["compute_capability"] == "9.0"
    status, _, err = nibble("plan", "--model", "gpt2", "--device", "l4", "--compute-capability", "9.0")
    assert status == 1 and "hardware.compute_capability" in err


def test_presets_and_devices_list_the_catalog_locally_and_remotely(server: str) -> None:
    status, out, _ = nibble("presets")
    assert status == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "llama-3.1-70b" in rows and "70.55B" in rows["llama-3.1-70b"].split()  # 70,553,706,496 parameters
    assert "Use an id as --model ID" in out or "use an id as --model ID" in out
    status, out, _ = nibble("devices")
    assert status == 0
    h100 = next(line for line in out.splitlines() if line.startswith("h100-80gb "))
    assert "80.00" in h100.split() and "85,899,345,920" in h100.split()
    assert "79.11" in h100.split()  # what CUDA reports for it, and what plans use
    assert "Memory per device in GiB (1 GiB = 2^30 bytes)" in out
    assert "85.90" in next(line for line in nibble("devices", "--unit", "GB")[1].splitlines()
                           if line.startswith("h100-80gb ")).split()
    for command in ("presets", "devices"):
        local, remote = nibble(command, "--json")[1], nibble(command, "--json", "--url", server)[1]
        api = httpx.get(f"{server}/v1/{'models' if command == 'presets' else 'devices'}", timeout=30).json()
        assert json.loads(local) == json.loads(remote) == api


def test_dequantize_locally_and_remotely_gives_the_tensors_back(checkpoint: Path, tmp_path: Path,
                                                               server: str) -> None:
    packed = tmp_path / "packed.safetensors"
    assert nibble("quantize", str(checkpoint), "-o", str(packed), "--quiet")[0] == 0
    local, remote = tmp_path / "local.safetensors", tmp_path / "remote.safetensors"
    status, out, _ = nibble("dequantize", str(packed), "-o", str(local))
    assert status == 0
    assert out.startswith(f"wrote {local} (") and "2 tensors dequantized to float32, 1 passed through" in out
    assert nibble("dequantize", str(packed), "-o", str(remote), "--url", server)[0] == 0
    original, back, back_remote = load_file(str(checkpoint)), load_file(str(local)), load_file(str(remote))
    for name, array in original.items():
        np.testing.assert_array_equal(back[name], back_remote[name])
        scale = np.abs(array).max()
        assert back[name].dtype == np.float32 and np.abs(back[name] - array).max() <= scale / 7  # one INT4 step


def test_quantize_to_gguf_takes_the_q4_0_scheme_by_itself(checkpoint: Path, tmp_path: Path, server: str) -> None:
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    status, out, err = nibble("quantize", str(checkpoint), "-o", str(local), "--format", "gguf", "--quiet")
    assert status == 0, err
    assert "2 tensors quantized" in out and "4.500 b/w" in out  # Q4_0: 18 bytes per block of 32 weights
    assert nibble("quantize", str(checkpoint), "-o", str(remote), "--format", "gguf", "--url", server)[0] == 0
    assert local.read_bytes()[:4] == remote.read_bytes()[:4] == b"GGUF"
    status, _, err = nibble("quantize", str(checkpoint), "-o", str(local), "--format", "gguf", "--group-size", "128")
    assert status == 1 and "group_size" in err


@pytest.mark.parametrize("command", ["quantize", "dequantize"])
def test_an_output_file_that_is_a_directory_is_refused_before_any_work(checkpoint: Path, tmp_path: Path,
                                                                       command: str) -> None:
    (tmp_path / "taken").mkdir()
    status, out, err = nibble(command, str(checkpoint), "-o", str(tmp_path / "taken"))
    assert (status, out, err) == (1, "", f"error: {tmp_path / 'taken'} is a directory; give a file name (-o)\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.safetensors", "taken"]


def test_the_table_states_the_decode_bound_and_its_basis() -> None:
    status, out, _ = nibble(*PLAN_ARGS)
    assert status == 0
    # per step each rank reads its INT4 weights (18.52 GiB) and its 8 sequences' KV cache (40 GiB) at 3.35 TB/s:
    # 3.35e12 / (19,885,211,648 + 42,949,672,960) = 53.3 tokens/s per sequence, x 8 sequences in all
    assert ("decode speed (upper bound, 8 sequences): bf16 does not fit; int4 <= 53.3 tokens/s per sequence, "
            "426.5 in all") in out
    assert "speed basis: Upper bounds, not predictions" in out and "H100 Tensor Core GPU datasheet" in out


def test_serve_runs_stock_uvicorn_on_the_guarded_loop_with_the_connection_limits_of_security_md(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert nibble("serve", "--port", "8123")[0] == 0
    ((args, kwargs),) = calls
    assert args == ("app.main:app",)
    assert kwargs == {"host": "127.0.0.1", "port": 8123, "workers": 1, "http": "auto",
                      "loop": "app.connections:GuardedEventLoop", "limit_concurrency": 256,
                      "timeout_keep_alive": 5, "backlog": 256, "h11_max_incomplete_event_size": 65536}
    makefile = (REPO_ROOT / "Makefile").read_text()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert ("--loop app.connections:GuardedEventLoop --limit-concurrency 256 --timeout-keep-alive 5 --backlog 256"
            in makefile)
    assert ('"--loop", "app.connections:GuardedEventLoop", "--limit-concurrency", "256", "--timeout-keep-alive", '
            '"5", "--backlog", "256"' in dockerfile)
    assert "app.http_protocol" not in makefile + dockerfile


def test_serve_on_a_port_in_use_exits_1_saying_so_not_uvicorns_3(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    result = nibble_process("serve", "--port", port)
    assert result.returncode == 1  # 3 is plan's "does not fit"; uvicorn's "did not start" was passed through
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (f"error: the server did not start on 127.0.0.1:{port} (uvicorn's "
                                              "exit status 3; its log above says why)")


def test_plan_from_a_local_checkpoint_directory_reads_its_headers_and_config(tmp_path: Path) -> None:
    config = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
              "max_position_embeddings": 4096}  # the context planned (LlamaConfig's default 2048 is below it)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": np.zeros((1000, 256), np.float16),
               "lm_head.weight": np.zeros((1000, 256), np.float16),
               "model.norm.weight": np.zeros((256,), np.float16)}
    for layer in range(2):
        for name, shape in (("self_attn.q_proj", (256, 256)), ("self_attn.k_proj", (128, 256)),
                            ("self_attn.v_proj", (128, 256)), ("self_attn.o_proj", (256, 256)),
                            ("mlp.gate_proj", (512, 256)), ("mlp.up_proj", (512, 256)),
                            ("mlp.down_proj", (256, 512)), ("input_layernorm", (256,)),
                            ("post_attention_layernorm", (256,))):
            tensors[f"model.layers.{layer}.{name}.weight"] = np.zeros(shape, np.float16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    status, out, err = nibble("plan", "--checkpoint", str(tmp_path), "--device", "l4", "--json")
    assert status == 0, err
    answer = json.loads(out)
    assert answer["weights"]["format"] == "checkpoint-f16"
    assert answer["weights"]["bytes"] == sum(array.nbytes for array in tensors.values())
    assert answer["checkpoint"]["unknown_tensors"] == [] and answer["checkpoint"]["mtp_tensors"] == 0


def test_plan_from_a_gptq_checkpoint_directory_warns_that_sym_is_not_known_without_its_quantization_config(
        tmp_path: Path) -> None:
    # `nibble plan --checkpoint DIR` reads the safetensors headers and DIR/config.json: without a quantization_config
    # there no file it reads names sym (the headers do not: AutoGPTQ's and GPTQModel's metadata leave it out), so the
    # plan says it took the weights as symmetric and what vLLM does with asymmetric ones; with one, sym is known
    from quant_core.hf_config import model_from_sizes
    from tests.quant_core.test_vllm_gptq_dtype import TINY_LLAMA, UNKNOWN, gptq_headers

    numpy_dtypes = {"I32": np.int32, "F16": np.float16}
    save_file({tensor.name: np.zeros(tensor.shape, numpy_dtypes[tensor.dtype])
               for tensor in gptq_headers(model_from_sizes(**TINY_LLAMA))}, str(tmp_path / "model.safetensors"))
    config = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
              "max_position_embeddings": 4096}  # the context planned (LlamaConfig's default 2048 is below it)
    args = ("plan", "--checkpoint", str(tmp_path), "--device", "h100-80gb", "--engine-version", "0.19", "--json")
    (tmp_path / "config.json").write_text(json.dumps(config))
    status, out, err = nibble(*args)
    assert status == 0, err
    answer = json.loads(out)
    assert answer["weights"]["format"] == "checkpoint-gptq"
    (warning,) = [warning for warning in answer["warnings"] if UNKNOWN in warning]
    assert "vLLM 0.19 loads them with its gptq kernels" in warning and "--dtype half" in warning
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}}))
    status, out, err = nibble(*args)
    assert status == 0, err
    assert not any(UNKNOWN in warning for warning in json.loads(out)["warnings"])


def test_plan_from_a_sharded_checkpoint_over_http_sends_the_headers_as_files_and_agrees_with_local(
        tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.checkpoints import write_llama_checkpoint

    tensors = write_llama_checkpoint(tmp_path / "ckpt", shards=3)
    sent: list[bytes] = []
    post = httpx.Client.post

    def recording_post(self: httpx.Client, url: str, **kwargs: object) -> httpx.Response:
        response = post(self, url, **kwargs)  # type: ignore[arg-type]
        sent.append(response.request.headers["content-type"].encode() + b"\n" + response.request.read())
        return response

    monkeypatch.setattr(httpx.Client, "post", recording_post)
    # the tiny llama states max_position_embeddings 256: vLLM refuses a longer context
    args = ("plan", "--checkpoint", str(tmp_path / "ckpt"), "--device", "l4", "--context", "256", "--json")
    status, remote, err = nibble(*args, "--url", server)
    assert status == 0, err
    local = nibble(*args)[1]
    assert json.loads(remote) == json.loads(local)
    # the index's total_size, every tensor of the tiny llama at bf16
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert json.loads(remote)["weights"]["bytes"] == index["metadata"]["total_size"] == \
        sum(array.nbytes for array in tensors.values())
    # one multipart body: the request, three header parts (no tensor data: the weights' bytes never left) and
    # the index
    (body,) = sent
    assert body.startswith(b"multipart/form-data") and body.count(b'name="header"') == 3
    assert b'name="index"' in body and len(body) < 16_384
    for shard in (tmp_path / "ckpt").glob("*.safetensors"):
        tail = shard.read_bytes()[-64:]
        assert tail not in body


def test_plan_without_a_model_says_what_to_give() -> None:
    status, _, err = nibble("plan", "--device", "l4")
    assert status != 0 and "--model or --config" in err


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


# --- what answers at --url is not always nibble: one line each, and an exit status a CI script can act on --------


def fixed_answer(status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    """An ASGI app answering every request with the same status, type and body (a proxy, another service)."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        fields = [(b"content-type", content_type.encode())] if content_type else []
        fields += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": fields})
        await send({"type": "http.response.body", "body": body})
    return app


NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
NOT_NIBBLE = [
    pytest.param(200, "text/html", b"<html>\n<body>\n<h1>Sign in to the guest Wi-Fi</h1>\n</body>\n</html>",
                 "answered 200 with text/html, not nibble's answer (not JSON): <html> <body> <h1>Sign in", id="html"),
    pytest.param(200, "application/json", b'{"hello": "world"}',
                 "answered 200 with application/json, not nibble's answer (JSON of another shape", id="other-json"),
    pytest.param(502, "text/html", NGINX_502,
                 "502 Bad Gateway: text/html, not a problem document: <html> <head><title>502 Bad Gateway", id="proxy"),
]


@pytest.mark.parametrize(("status", "content_type", "body", "said"), NOT_NIBBLE)
@pytest.mark.parametrize("argv", [["presets"], ["plan", "--model", "llama-3.1-8b", "--device", "h100-80gb"],
                                  ["jobs", "status", "0123"], ["jobs", "watch", "0123"], ["jobs", "list"]],
                         ids=lambda argv: "-".join(argv[:2]))
def test_an_answer_that_is_not_nibbles_is_one_line_and_exit_status_4(argv: list[str], status: int,
                                                                      content_type: str, body: bytes,
                                                                      said: str) -> None:
    with uvicorn_in_thread(fixed_answer(status, content_type, body)) as port:
        result = nibble_process(*argv, "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: no nibble answer at http://127.0.0.1:{port}: ")
    assert said in result.stderr
    assert "Invalid request (422)" not in result.stderr  # the server's answer is not the user's request


@pytest.mark.parametrize("command", ["quantize", "dequantize"])
def test_a_file_answer_that_is_not_nibbles_is_not_written_as_the_output(checkpoint: Path, tmp_path: Path,
                                                                         command: str) -> None:
    page = b"<html><body><h1>Sign in to the guest Wi-Fi</h1></body></html>"  # 200, as a captive portal answers
    with uvicorn_in_thread(fixed_answer(200, "text/html", page)) as port:
        result = nibble_process(command, str(checkpoint), "-o", str(tmp_path / "out.safetensors"), "--url",
                                f"http://127.0.0.1:{port}")
    assert result.returncode == 4 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"error: no nibble answer at http://127.0.0.1:{port}: the server answered 200 with text/html, not nibble's "
        f"answer (a file without nibble's X-Nibble-Report): {page.decode()}; is --url a nibble server?")
    assert not (tmp_path / "out.safetensors").exists()


BUSY = [
    pytest.param(503, "application/problem+json",
                 b'{"type":"urn:nibble:problem:pool-full","title":"Service unavailable","status":503,'
                 b'"detail":"the pool is full","errors":[]}', {"Retry-After": "7"},
                 "is busy: Service unavailable (503): the pool is full; retry after 7 s\n", id="pool-full"),
    pytest.param(503, "text/plain; charset=utf-8", b"Service Unavailable", {},
                 "is busy: Service Unavailable (503): text/plain, not a problem document: Service Unavailable; "
                 "retry later\n", id="uvicorn-limit-concurrency"),
]


@pytest.mark.parametrize(("status", "content_type", "body", "headers", "said"), BUSY)
@pytest.mark.parametrize("argv", [["devices"], ["jobs", "submit", "llama"]], ids=lambda argv: "-".join(argv[:2]))
def test_a_busy_server_is_one_line_with_its_retry_after_and_exit_status_5(argv: list[str], status: int,
                                                                          content_type: str, body: bytes,
                                                                          headers: dict[str, str], said: str) -> None:
    with uvicorn_in_thread(fixed_answer(status, content_type, body, headers)) as port:
        result = nibble_process(*argv, "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 5, result.stderr
    assert result.stderr == f"error: the server at http://127.0.0.1:{port} {said}"


@pytest.mark.parametrize("argv", [
    ["jobs", "status", "0123", "--url", "localhost:8000"],
    ["jobs", "list", "--url", "ftp://example.org"],
    ["jobs", "submit", "llama", "--group-size", "abc", "--url", "http://127.0.0.1:9"],
    ["plan", "--model", "llama-3.1-8b", "--device", "h100-80gb", "--group-size", "abc"],
    ["quantize", "ckpt", "-o", "out", "--group-size", "12x"],
    ["plan", "--model", "llama-3.1-8b", "--device", "h100-80gb", "--group-size", "\u00b2"],  # a digit int() refuses
], ids=["jobs-url-without-scheme", "jobs-url-ftp", "jobs-group-size", "plan-group-size", "quantize-group-size",
        "plan-group-size-superscript"])
def test_a_bad_url_or_group_size_is_a_usage_error_in_every_command(argv: list[str]) -> None:
    result = nibble_process(*argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert ("is not an http:// or https:// address" in result.stderr
            or "is not a group size: give 32, 64, 128, 256 or row" in result.stderr)


def test_a_format_the_engine_refuses_reads_as_refused_not_as_a_negative_shortfall() -> None:
    # vLLM has no int8 KV cache (config/cache.py CacheDType): every format is refused, though INT4's memory
    # (63.88 of 71.20 GiB usable a device) would fit; the table must not say "yes" nor the verdict "-7.32 GiB short"
    status, out, err = nibble("plan", "--model", "llama-3.1-70b", "--device", "h100-80gb", "--count", "2",
                              "--context", "32k", "--sequences", "16", "--kv-dtype", "int8")
    assert status == 3
    rows = [line for line in out.splitlines() if line.startswith(("bf16 (", "int4 ("))]
    assert len(rows) == 2 and all(row.split()[-1] == "refused" for row in rows)
    lines = out.splitlines()
    assert "int4: NOT DEPLOYABLE, the engine refuses it; its memory alone would fit" in lines
    assert any(line.startswith("bf16: NOT DEPLOYABLE, the engine refuses it; nor does its memory fit: device 0 "
                               "needs 111.07 GiB") for line in lines)
    assert "short)" not in out and "-7.32 GiB" not in out
    assert "cannot be deployed by the engine at int4" in err


def test_a_context_above_vllms_derived_length_is_not_deployable_unless_allowed() -> None:
    # gpt2: vLLM derives 1,024 tokens from n_positions and refuses --max-model-len 32768 (config/model.py
    # _get_and_verify_max_len) unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1
    args = ("plan", "--model", "gpt2", "--device", "h100-80gb", "--context", "32k")
    status, out, err = nibble(*args)
    assert status == 3
    assert "int4: NOT DEPLOYABLE, the engine refuses it; its memory alone would fit" in out.splitlines()
    assert "workload.context_length" in out + err and "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in out + err
    status, out, _ = nibble(*args, "--allow-long-max-model-len")
    assert status == 0 and "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in out
