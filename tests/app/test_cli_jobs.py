"""``nibble quantize DIR -o OUTDIR`` locally and ``nibble jobs ...`` against a real server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import run
from quant_core.checkpoint import (
    CheckpointOptions,
    attach_importance,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
)
from quant_core.tensorio import write_safetensors
from tests.app.test_jobs_budget import STATISTICS, importance_vectors
from tests.checkpoints import tree_bytes, write_llama_checkpoint
from tests.e2e.conftest import start_server


def nibble(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_llama_checkpoint(root / "llama", shards=2)
    (root / STATISTICS).parent.mkdir()
    write_safetensors(root / STATISTICS, importance_vectors())
    return root


@pytest.fixture(scope="module")
def server(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"NIBBLE_STATE_DIR": str(tmp_path_factory.mktemp("state")), "NIBBLE_DATA_DIR": str(data_root)}
    with start_server(env) as base_url:
        yield base_url


def test_quantize_a_checkpoint_directory_locally_gives_the_jobs_bytes(data_root: Path, tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"),
                              "--max-shard-bytes", "100000")
    assert status == 0, err
    assert out.startswith(f"wrote {tmp_path / 'out'} (compressed-tensors): 14 tensors quantized by rtn, "
                          "7 passed through")
    assert err.count("\n") == 14 and "] 14/14 model.layers.1.mlp.down_proj.weight" in err
    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(max_shard_bytes=100_000)  # one thread per tensor; the CLI used every core
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "ref", tmp_path / "p")
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "ref")


def test_quantize_refuses_a_non_empty_output_directory_and_the_nibble_format(data_root: Path,
                                                                          tmp_path: Path) -> None:
    status, _, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path), "--format", "nibble")
    assert status == 1 and "compressed-tensors, gptq, awq or gguf" in err
    (tmp_path / "x").write_text("taken")
    status, _, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path))
    assert status == 1 and "not empty" in err


def test_jobs_submit_watch_status_list_against_a_server(server: str) -> None:
    status, out, err = nibble("jobs", "submit", "llama", "--format", "awq", "--watch", "--url", server)
    assert status == 0, err
    job_id = out.split()[1].rstrip(":")
    assert out.startswith(f"job {job_id}: succeeded") and "model.safetensors.index.json" in out
    assert "] 14/14 tensors" in err and "(succeeded)" in err
    status, out, _ = nibble("jobs", "status", job_id, "--json", "--url", server)
    assert status == 0 and json.loads(out)["request"]["output"] == "awq"
    status, out, _ = nibble("jobs", "list", "--url", server)
    assert status == 0 and out.startswith(job_id)


def test_jobs_errors_print_the_problem_and_exit_1(server: str) -> None:
    status, _, err = nibble("jobs", "submit", "../etc", "--url", server)
    assert status == 1 and "error: Path outside the data root (403)" in err and "source.path" in err
    status, _, err = nibble("jobs", "status", "nope", "--url", server)
    assert status == 1 and "(404)" in err
    status, _, err = nibble("jobs", "list")
    assert status == 1 and "--url" in err


def test_quantize_a_checkpoint_locally_under_a_budget_with_importance_gives_the_jobs_bytes(
        data_root: Path, tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"),
                              "--importance", str(data_root / STATISTICS), "--bits-per-weight", "4.4")
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "nibble_report.json").read_text())
    allocation = report["allocation"]
    assert f"budget 162,201 bytes: {allocation['output_bytes']:,} written" in out
    assert allocation["output_bytes"] <= 162_201 and len(allocation["formats"]) >= 2
    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(bits_per_weight=4.4)
    plans = attach_importance(plan_checkpoint(checkpoint, options), importance_vectors())
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "ref", tmp_path / "p")
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "ref")


def test_jobs_submit_sends_the_importance_path_and_the_budget(server: str) -> None:
    status, out, err = nibble("jobs", "submit", "llama", "--importance", STATISTICS, "--budget-bytes", "170000",
                              "--watch", "--json", "--url", server)
    assert status == 0, err
    answer = json.loads(out)
    assert answer["request"]["importance"] == STATISTICS and answer["request"]["budget_bytes"] == 170_000
    assert answer["result"]["allocation"]["output_bytes"] <= 170_000
    status, out, err = nibble("jobs", "status", answer["id"], "--url", server)
    assert status == 0 and f"  budget 170,000 bytes: {answer['result']['allocation']['output_bytes']:,} written" in out
    status, _, err = nibble("jobs", "submit", "llama", "--format", "gptq", "--bits-per-weight", "4.5",
                            "--url", server)
    assert status == 1 and "(422)" in err and "output" in err


def test_jobs_submit_takes_gguf_as_q4_0_and_leaves_a_budgets_group_size_to_the_budget(server: str) -> None:
    # before: --group-size defaulted to 128 and was always sent, so --format gguf was refused (Q4_0 is group 32
    # symmetric) and any budget was refused for sending a group size beside it
    status, out, err = nibble("jobs", "submit", "llama", "--format", "gguf", "--watch", "--json", "--url", server)
    assert status == 0, err
    answer = json.loads(out)
    assert answer["state"] == "succeeded" and answer["request"]["group_size"] == 32 and answer["request"]["symmetric"]
    status, out, err = nibble("jobs", "submit", "llama", "--bits-per-weight", "4.6", "--watch", "--json",
                              "--url", server)
    assert status == 0, err
    assert json.loads(out)["result"]["allocation"]["bits_per_weight"] <= 4.6
    status, _, err = nibble("jobs", "submit", "llama", "--bits-per-weight", "4.6", "--group-size", "64",
                            "--url", server)
    assert status == 1 and "(422)" in err and "send the budget without group_size" in err


def test_quantize_a_checkpoint_locally_as_gguf_takes_q4_0s_scheme(data_root: Path, tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"), "--format", "gguf")
    assert status == 0, err
    assert out.startswith(f"wrote {tmp_path / 'out'} (gguf)")
    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(output="gguf", group_size=32, symmetric=True)
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "ref", tmp_path / "p")
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "ref")
