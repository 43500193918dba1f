"""``/v1/plan`` and ``/v1/plan/sweep`` as a multipart form: the request's JSON beside the checkpoint's header files.

The JSON form carries headers as base64 within ``max_json_bytes`` (1 MiB); DeepSeek-V3's 163 headers and index
come to 21.6 MB, so the largest checkpoints are planned from their headers through the form.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import client_with, safetensors_header
from tests.checkpoints import deepseek_v3_headers
from tests.shared_fixtures import FIXTURES, needs_fixtures

H200 = 143_771 * 2**20  # nvidia-smi's 143771 MiB
TINY_SPEC = {"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
             "vocab_size": 1000}


EMBEDDING = safetensors_header({"model.embed_tokens.weight": ("BF16", [1000, 256], 512_000)})
LM_HEAD = safetensors_header({"lm_head.weight": ("BF16", [1000, 256], 512_000)})
#: a tensor of each of TINY_SPEC's two layers: with EMBEDDING and LM_HEAD, headers that leave no part of it out
LAYERS = safetensors_header({f"model.layers.{i}.self_attn.q_proj.weight": ("BF16", [256, 256], 131_072)
                             for i in range(2)})


def form(request: dict[str, Any] | None, headers: dict[str, bytes], index: bytes | None = None,
         config: dict[str, Any] | None = None) -> list[tuple[str, tuple[str | None, bytes, str]]]:
    """The multipart parts: the request, one header per file (named by its file name), index and config."""
    parts: list[tuple[str, tuple[str | None, bytes, str]]] = []
    if request is not None:
        parts.append(("request", (None, json.dumps(request).encode(), "application/json")))
    parts += [("header", (name, data, "application/octet-stream")) for name, data in headers.items()]
    if index is not None:
        parts.append(("index", ("model.safetensors.index.json", index, "application/json")))
    if config is not None:
        parts.append(("config", ("config.json", json.dumps(config).encode(), "application/json")))
    return parts


@pytest.fixture(scope="module")
def deepseek_v3() -> tuple[dict[str, Any], dict[str, bytes], bytes, int]:
    if not (FIXTURES / "models" / "deepseek-v3.json").is_file():
        pytest.skip("../shared/fixtures/models is absent")
    config = json.loads((FIXTURES / "models" / "deepseek-v3.json").read_text())
    return (config, *deepseek_v3_headers(config))


@needs_fixtures
def test_deepseek_v3_plans_from_its_163_headers_and_index_over_http(
        client: TestClient, deepseek_v3: tuple[dict[str, Any], dict[str, bytes], bytes, int]) -> None:
    config, headers, index, planned = deepseek_v3
    assert len(headers) == 163 and sum(map(len, headers.values())) + len(index) > 20_000_000
    request = {"hardware": {"memory_bytes": H200, "count": 8}}
    response = client.post("/v1/plan", files=form(request, headers, index, config))
    assert response.status_code == 200, response.text
    answer = response.json()
    # the checkpoint's own bytes: every FP8 weight with its fp32 weight_scale_inv blocks, bf16 the rest
    assert answer["weights"]["format"] == "checkpoint-fp8-block128" and answer["weights"]["bytes"] == planned
    assert answer["checkpoint"]["bytes"] == planned == 673_150_611_808
    assert answer["checkpoint"]["mtp_tensors"] > 0 and answer["checkpoint"]["unknown_tensors"] == []
    assert answer["fits"] is True and answer["comparison"]["bf16"]["fits"] is False
    # as base64 in a JSON body, the same headers are refused before a byte is read: past max_json_bytes
    assert client.post("/v1/plan", content=b" " * (1 << 20 + 1),
                       headers={"Content-Type": "application/json"}).status_code == 413


@needs_fixtures
def test_deepseek_v3_headers_sweep_over_http(
        client: TestClient, deepseek_v3: tuple[dict[str, Any], dict[str, bytes], bytes, int]) -> None:
    config, headers, _index, planned = deepseek_v3
    request = {"model": {"hf_config": config}, "hardware": {"memory_bytes": H200, "count": 8},
               "sweep": {"formats": ["checkpoint", "bf16"], "context_lengths": [4096, 32768]}}
    response = client.post("/v1/plan/sweep", files=form(request, headers))
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert [row["format"] for row in rows] == ["checkpoint-fp8-block128"] * 2 + ["bf16"] * 2
    assert {row["weights_bytes"] for row in rows[:2]} == {planned}


def test_a_form_plans_the_files_own_tensors_as_the_json_form_does(client: TestClient) -> None:

    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    files = {"a.safetensors": EMBEDDING, "b.safetensors": LM_HEAD, "c.safetensors": LAYERS}
    by_form = client.post("/v1/plan", files=form(request, files))
    by_json = client.post("/v1/plan", json={**request, "checkpoint": {"headers": [
        {"file": name, "header_base64": base64.b64encode(data).decode()} for name, data in files.items()]}})
    assert by_form.status_code == by_json.status_code == 200, by_form.text
    assert by_form.json() == by_json.json()
    assert by_form.json()["weights"]["bytes"] == 1_024_000 + 262_144


def test_a_header_part_carrying_tensor_data_is_refused_naming_the_part(client: TestClient) -> None:
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    response = client.post("/v1/plan", files=form(request, {"a.safetensors": EMBEDDING,
                                                            "b.safetensors": LM_HEAD + b"\0" * 100}))
    assert response.status_code == 413
    problem = response.json()
    assert problem["errors"][0]["field"] == "header[1]" and "b.safetensors" in problem["detail"]
    assert problem["value"] == len(LM_HEAD) + 100 and problem["maximum"] == len(LM_HEAD)


@pytest.mark.parametrize(("files", "index", "field", "status", "says"), [
    ({"a.safetensors": EMBEDDING}, {"model.embed_tokens.weight": "a.safetensors", "lm_head.weight": "b.safetensors"},
     "index", 422, "1 not given: b.safetensors"),
    ({"a.safetensors": EMBEDDING, "b.safetensors": LM_HEAD}, {"lm_head.weight": "a.safetensors",
                                                              "model.embed_tokens.weight": "b.safetensors"},
     "index", 422, "the index places tensor"),
    ({"a.safetensors": b"\x05\0\0\0\0\0\0\0{"}, None, "header[0]", 422, "a.safetensors"),
])
def test_headers_that_are_not_the_indexed_checkpoint_are_refused(
        client: TestClient, files: dict[str, bytes], index: dict[str, str] | None, field: str, status: int,
        says: str) -> None:
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    index_bytes = json.dumps({"weight_map": index}).encode() if index is not None else None
    response = client.post("/v1/plan", files=form(request, files, index_bytes))
    assert response.status_code == status, response.text
    assert response.json()["errors"][0]["field"] == field and says in response.json()["detail"]


def test_the_form_refuses_a_missing_request_or_header_and_a_model_given_twice(client: TestClient) -> None:
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    no_request = client.post("/v1/plan", files=form(None, {"a.safetensors": EMBEDDING}))
    assert no_request.status_code == 400 and no_request.json()["errors"][0]["field"] == "request"
    no_header = client.post("/v1/plan", files=form(request, {}))
    assert no_header.status_code == 400 and no_header.json()["errors"][0]["field"] == "header"
    twice = client.post("/v1/plan", files=form(request, {"a.safetensors": EMBEDDING}, config={"model_type": "x"}))
    assert twice.status_code == 422 and twice.json()["errors"][0]["field"] == "model"
    both = client.post("/v1/plan", files=form({**request, "checkpoint": {"headers": [
        {"file": "a.safetensors", "header_base64": "AAAA"}]}}, {"a.safetensors": EMBEDDING}))
    assert both.status_code == 422 and both.json()["errors"][0]["field"] == "checkpoint"
    bad_json = client.post("/v1/plan", files=[("request", (None, b"{", "application/json")),
                                              ("header", ("a.safetensors", EMBEDDING, "application/octet-stream"))])
    assert bad_json.status_code == 400


def test_the_forms_limits_name_their_settings() -> None:
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    with client_with(max_header_bytes=len(LM_HEAD) - 9) as small:  # a part: max_header_bytes + 8
        response = small.post("/v1/plan", files=form(request, {"b.safetensors": LM_HEAD}))
        assert response.status_code == 413
        assert response.json()["limit"] == "max_header_bytes" and response.json()["errors"][0]["field"] == "header[0]"
    with client_with(max_checkpoint_form_bytes=2 * len(LM_HEAD)) as small:
        response = small.post("/v1/plan", files=form(request, {"a.safetensors": EMBEDDING, "b.safetensors": LM_HEAD,
                                                               "c.safetensors": LM_HEAD}))
        assert response.status_code == 413 and response.json()["limit"] == "max_checkpoint_form_bytes"
    with client_with(max_checkpoint_files=3) as small:
        headers = {"a.safetensors": EMBEDDING, "b.safetensors": LM_HEAD, "c.safetensors": LAYERS,
                   **{f"{name}.safetensors": EMBEDDING for name in "defg"}}
        assert small.post("/v1/plan", files=form(request, dict(list(headers.items())[:3]))).status_code == 200
        for count in (4, 7):  # the header part past the limit is refused as it arrives, naming the field and limit
            response = small.post("/v1/plan", files=form(request, dict(list(headers.items())[:count])))
            assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["limit"] == "max_checkpoint_files" and problem["errors"][0]["field"] == "header"
            assert problem["maximum"] == 3 and problem["value"] == 4
        # past the files, the request, index and config, the parser stops at the first part too many
        parts = [*form(request, dict(list(headers.items())[:3])), *[("note", (None, b"1", "text/plain"))] * 4]
        response = small.post("/v1/plan", files=parts)
        assert response.status_code == 400 and "more than 6 parts" in response.json()["detail"]


def test_headers_declaring_more_tensors_than_max_checkpoint_tensors_are_refused_at_the_file_past_it() -> None:
    # a hostile form of four 15 MB headers declaring 1.2 million tensors took 16-18 s of CPU before; a real checkpoint
    # declares at most about 280,000 (a 384-expert int4 one), under the default 524,288
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    headers = {"a.safetensors": EMBEDDING, "b.safetensors": LM_HEAD, "c.safetensors": LAYERS}  # 1 + 1 + 2 tensors
    with client_with(max_checkpoint_tensors=4) as small:
        assert small.post("/v1/plan", files=form(request, headers)).status_code == 200
    with client_with(max_checkpoint_tensors=3) as small:
        for route in ("/v1/plan", "/v1/plan/sweep"):
            body = request if route == "/v1/plan" else {**request, "sweep": {"context_lengths": [4096]}}
            response = small.post(route, files=form(body, headers))
            assert (response.status_code, response.headers["content-type"]) == (413, "application/problem+json")
            problem = response.json()
            assert (problem["limit"], problem["value"], problem["maximum"]) == ("max_checkpoint_tensors", 4, 3)
            assert problem["errors"][0]["field"] == "header"


def test_plans_from_the_form_wait_behind_the_large_sweeps_gate() -> None:
    from app.routers.plans import SweepGate

    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    with client_with(sweep_concurrency=1, sweep_queue=0) as small:
        gate = SweepGate(1, 0, 5)
        gate.admitted = 1  # a large sweep holds the only place
        small.app.state.sweep_gate = gate  # type: ignore[attr-defined]
        refused = small.post("/v1/plan", files=form(request, {"a.safetensors": EMBEDDING}))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert small.post("/v1/plan", json=request).status_code == 200  # a JSON plan is microseconds: ungated


def test_a_gguf_header_part_may_end_anywhere_up_to_its_data_area_and_not_past_it(client: TestClient,
                                                                                tmp_path: Any) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list([f"token-{i}" for i in range(300)])
    writer.add_tensor("token_embd.weight", np.zeros((1000, 256), np.float16))
    writer.add_tensor("output.weight", np.zeros((1000, 256), np.float16))
    for layer in range(2):
        writer.add_tensor(f"blk.{layer}.attn_q.weight", np.zeros((256, 256), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    content = path.read_bytes()
    data_offset = gguf.GGUFReader(str(path)).data_offset
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    for end in (data_offset - 1, data_offset):  # the records end within the alignment padding before the data
        response = client.post("/v1/plan", files=form(request, {"tiny.gguf": content[:end]}))
        assert response.status_code == 200, response.text
        assert response.json()["weights"]["bytes"] == 2 * (2 * 1000 * 256 + 2 * 256 * 256)  # its four f16 tensors
    response = client.post("/v1/plan", files=form(request, {"tiny.gguf": content[:data_offset + 1]}))
    assert response.status_code == 413 and response.json()["errors"][0]["field"] == "header[0]"
    assert response.json()["maximum"] == data_offset


def test_a_file_whose_header_is_given_twice_is_refused_naming_the_second(client: TestClient) -> None:
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    parts = [*form(request, {"a.safetensors": EMBEDDING}), ("header", ("a.safetensors", LM_HEAD, "x/y"))]
    response = client.post("/v1/plan", files=parts)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "header[1]"


def test_a_request_part_nested_past_the_json_parsers_depth_is_400_as_a_json_body_is(client: TestClient) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # past json's recursion bound: it was a 500 (RecursionError)
    parts = [("request", (None, deep, "application/json")),
             ("header", ("a.safetensors", EMBEDDING, "application/octet-stream"))]
    for path in ("/v1/plan", "/v1/plan/sweep"):
        response = client.post(path, files=parts)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert client.post(path, content=deep, headers={"Content-Type": "application/json"}).status_code == 400


def test_a_tensor_declared_by_two_headers_is_refused_naming_the_second_not_counted_twice(client: TestClient) -> None:
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    # it was planned as 2 tensors of 1,024,000 bytes: the embedding counted once per header
    response = client.post("/v1/plan", files=form(request, {"a.safetensors": EMBEDDING, "b.safetensors": EMBEDDING}))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == "header[1]"
    assert "model.embed_tokens.weight" in problem["detail"] and "a.safetensors" in problem["detail"]


@pytest.mark.parametrize(("part", "body", "key"), [
    ("config", b'{"model_type": "llama", "hidden_size": 256, "hidden_size": 4096, "num_hidden_layers": 2, '
               b'"num_attention_heads": 4, "intermediate_size": 512, "vocab_size": 1000}', "hidden_size"),
    ("index", b'{"weight_map": {"model.embed_tokens.weight": "a.safetensors", '
              b'"model.embed_tokens.weight": "b.safetensors"}}', "model.embed_tokens.weight"),
])
def test_a_config_or_index_giving_a_key_twice_is_refused_naming_the_part_not_the_last_one_kept(
        client: TestClient, part: str, body: bytes, key: str) -> None:
    # json.loads keeps the last value: the config was planned at hidden_size 4096 (200), and the index was
    # refused for a shard "not given" that the client had given
    request = {"hardware": {"device": "l4"}} if part == "config" else {"model": {"spec": TINY_SPEC},
                                                                        "hardware": {"device": "l4"}}
    parts = [*form(request, {"a.safetensors": EMBEDDING}), (part, (f"{part}.json", body, "application/json"))]
    response = client.post("/v1/plan", files=parts)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == part and f"{key!r} twice" in problem["detail"]


def test_a_header_part_named_by_the_indexs_relative_path_is_that_shard(client: TestClient) -> None:
    # an index may place shards in a sub-directory; the part named so was cut to "a.safetensors" and the index
    # refused as "1 not given: sub/a.safetensors".  A path the index does not name is still cut to its last part.
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    index = json.dumps({"weight_map": {"model.embed_tokens.weight": "sub/a.safetensors",
                                       "lm_head.weight": "b.safetensors",
                                       **{f"model.layers.{i}.self_attn.q_proj.weight": "c.safetensors"
                                          for i in range(2)}}}).encode()
    response = client.post("/v1/plan", files=form(request, {"sub/a.safetensors": EMBEDDING,
                                                            "/home/me/model/b.safetensors": LM_HEAD,
                                                            "c.safetensors": LAYERS}, index))
    assert response.status_code == 200, response.text
    assert response.json()["weights"]["bytes"] == 1_024_000 + 262_144


def test_headers_that_are_not_all_of_the_configs_model_are_refused_not_planned_as_if_they_were(
        client: TestClient) -> None:
    # Llama-2-7B's config.json (its public sizes) beside its embedding's header alone answered 200 "fits" on an L4
    # with 0.26 GB of weights (0.31 bits per weight): 13.2 GB of its weights were left out
    config = {"_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"],
              "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
              "torch_dtype": "float16"}
    embedding = safetensors_header({"model.embed_tokens.weight": ("BF16", [32000, 4096], 262_144_000)})
    request = {"hardware": {"device": "l4"}}
    by_form = client.post("/v1/plan", files=form(request, {"model-00001-of-00002.safetensors": embedding},
                                                 config=config))
    by_json = client.post("/v1/plan", json={**request, "model": {"hf_config": config}, "checkpoint": {"headers": [
        {"file": "model-00001-of-00002.safetensors", "header_base64": base64.b64encode(embedding).decode()}]}})
    for answer, field in ((by_form, "header"), (by_json, "checkpoint.headers")):
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        assert problem["errors"][0]["field"] == field
        assert problem["detail"].startswith("the safetensors headers hold no tensor of layers 0-31 or the lm_head "
                                            "of meta-llama/Llama-2-7b-hf (32 layers)")
    # and headers of more layers than its config's 32 (none of them multi-token prediction: the config has no
    # num_nextn_predict_layers) are another model's; they were planned as 32 layers, the rest "MTP", not planned
    layers = safetensors_header({f"model.layers.{i}.self_attn.q_proj.weight": ("BF16", [4096, 4096], 33_554_432)
                                 for i in range(40)})
    answer = client.post("/v1/plan", files=form(request, {"a.safetensors": embedding, "b.safetensors": layers},
                                                config=config))
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "header"
    assert answer.json()["detail"].startswith("the headers hold layers 32-39, past the 32 layers")


@pytest.mark.parametrize("part", [("confg", (None, b"{}", "application/json")), ("zzz", (None, b"1", "text/plain")),
                                  ("zzz", ("z.bin", b"1", "application/octet-stream"))])
def test_a_part_the_form_does_not_read_is_refused_naming_it_not_dropped(
        client: TestClient, part: tuple[str, tuple[str | None, bytes, str]]) -> None:
    # the fuzzing hunt of session 18: a text part of another name (a misspelt "config") was silently ignored
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "h100-80gb"}}
    response = client.post("/v1/plan", files=[*form(request, {"model.safetensors": EMBEDDING}), part])
    assert response.status_code == 400, response.text[:300]
    assert response.json()["errors"][0]["field"] == part[0]


def test_header_parts_are_kept_in_memory_up_to_a_bound_and_spooled_past_it_with_the_same_plan(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # a spool file per part cost a form of 4,096 small headers 0.5-2 s of the event loop's CPU (os.open alone)
    import os

    import app.uploads

    spooled: list[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.path.basename(str(path)).startswith("part-"):
            spooled.append(os.path.basename(str(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(app.uploads.os, "open", recording_open)
    request = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    files = {"a.safetensors": EMBEDDING, "b.safetensors": LM_HEAD, "c.safetensors": LAYERS}
    in_memory = client.post("/v1/plan", files=form(request, files))
    assert in_memory.status_code == 200, in_memory.text
    assert spooled == []
    # the request part and the first header fit; the second outgrows the bound part-way (its bytes so far are written
    # first) and the third starts past it
    monkeypatch.setattr(app.uploads, "IN_MEMORY_FILE_BYTES", len(json.dumps(request)) + len(EMBEDDING) + 10)
    past = client.post("/v1/plan", files=form(request, files))
    assert spooled == ["part-2", "part-3"]
    assert past.status_code == 200 and past.json() == in_memory.json()
    assert in_memory.json()["weights"]["bytes"] == 1_024_000 + 262_144
