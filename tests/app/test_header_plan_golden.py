"""Plans from checkpoint headers sent as the multipart form are the answers main gave before the header path was
made cheaper (session 23: entries parsed into tuples as the JSON is read, roles once per name pattern, small
parts kept in memory): what the headers held, the weights planned and each device's weight bytes.

The pins were computed at main 9e51ef3 from the same fixed inputs (``python -m tests.app.test_header_plan_golden``
prints them from whatever tree runs it); each is a digest of those sections with their main figures beside it, so a
change names the figure that moved.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import safetensors_header
from tests.app.test_plan_form import form
from tests.checkpoints import LLAMA_CONFIG, deepseek_v3_headers
from tests.shared_fixtures import FIXTURES

H200 = 143_771 * 2**20
TINY_SPEC = {"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
             "vocab_size": 1000}
#: a DeepSeek-V3 in miniature (its config's keys, small sizes): FP8 weights with their scale blocks, MoE layers,
#: a dense first layer and a multi-token-prediction layer, dealt to 7 shards with an index
SMALL_DEEPSEEK: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 512,
    "intermediate_size": 1024, "moe_intermediate_size": 256, "num_hidden_layers": 4, "first_k_dense_replace": 1,
    "moe_layer_freq": 1, "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4,
    "topk_group": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 128, "q_lora_rank": 256,
    "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64, "vocab_size": 2048,
    "max_position_embeddings": 4096, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]}}


def _raw_header(entries: list[tuple[str, dict[str, Any]]], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors header written key by key as given (entries' keys in any order, offsets as given)."""
    members = ([json.dumps("__metadata__") + ": " + json.dumps(metadata)] if metadata is not None else [])
    members += [json.dumps(name) + ": {" + ", ".join(f"{json.dumps(key)}: {json.dumps(value)}"
                                                      for key, value in entry.items()) + "}"
                for name, entry in entries]
    text = ("{" + ", ".join(members) + "}").encode()
    return struct.pack("<Q", len(text)) + text


def _odd_llama_headers() -> dict[str, bytes]:
    """The tiny llama's tensors in three headers written the ways writers differ: keys in another order than
    dtype, shape, data_offsets, offsets not in name order, ``__metadata__``, two empty tensors at one offset,
    a 0-d tensor and tensors of no module of the model (planned as ``other``)."""
    hidden, inter, vocab = LLAMA_CONFIG["hidden_size"], LLAMA_CONFIG["intermediate_size"], LLAMA_CONFIG["vocab_size"]
    kv = LLAMA_CONFIG["num_key_value_heads"] * LLAMA_CONFIG["head_dim"]
    files: dict[str, bytes] = {}
    for layer in range(LLAMA_CONFIG["num_hidden_layers"]):
        tensors = [(f"model.layers.{layer}.self_attn.{name}.weight", [rows, hidden], "BF16")
                   for name, rows in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv), ("o_proj", hidden))]
        tensors += [(f"model.layers.{layer}.mlp.{name}.weight", shape, "BF16")
                    for name, shape in (("gate_proj", [inter, hidden]), ("up_proj", [inter, hidden]),
                                        ("down_proj", [hidden, inter]))]
        tensors += [(f"model.layers.{layer}.{name}.weight", [hidden], "F32")
                    for name in ("input_layernorm", "post_attention_layernorm")]
        entries, offset = [], 0
        for name, shape, dtype in reversed(tensors):  # offsets in reverse name order
            size = (2 if dtype == "BF16" else 4) * shape[0] * (shape[1] if len(shape) > 1 else 1)
            order = ("shape", "dtype", "data_offsets") if layer else ("dtype", "shape", "data_offsets")
            values = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            entries.append((name, {key: values[key] for key in order}))
            offset += size
        entries += [(f"model.layers.{layer}.extra.empty_{i}", {"dtype": "F32", "shape": [0, 4],
                                                               "data_offsets": [offset, offset]}) for i in (1, 0)]
        entries.append((f"model.layers.{layer}.extra.step", {"dtype": "I64", "shape": [],
                                                             "data_offsets": [offset, offset + 8]}))
        files[f"model-0000{layer + 1}.safetensors"] = _raw_header(entries, {"format": "pt"} if layer else None)
    files["model-embed.safetensors"] = safetensors_header({
        "model.embed_tokens.weight": ("BF16", [vocab, hidden], 2 * vocab * hidden),
        "lm_head.weight": ("BF16", [vocab, hidden], 2 * vocab * hidden),
        "model.norm.weight": ("F32", [hidden], 4 * hidden)})
    return files


def _tiny_4096() -> dict[str, bytes]:
    """4,096 header parts, the most a form holds: the tiny model's three files and 4,093 of one small tensor each."""
    files = {"a.safetensors": safetensors_header({"model.embed_tokens.weight": ("BF16", [1000, 256], 512_000)}),
             "b.safetensors": safetensors_header({"lm_head.weight": ("BF16", [1000, 256], 512_000)}),
             "c.safetensors": safetensors_header({f"model.layers.{i}.self_attn.q_proj.weight":
                                                  ("BF16", [256, 256], 131_072) for i in range(2)})}
    for i in range(4093):
        files[f"x{i:05d}.safetensors"] = safetensors_header({f"model.layers.{i % 2}.extra{i}.weight":
                                                             ("BF16", [4], 8)})
    return files


def header_forms() -> dict[str, list[tuple[str, tuple[str | None, bytes, str]]]]:
    """The forms pinned, by name (DeepSeek-V3's 163 headers only with ../shared/fixtures)."""
    deepseek_headers, deepseek_index, _ = deepseek_v3_headers(SMALL_DEEPSEEK, shards=7)
    tiny = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    forms = {
        "tiny": form(tiny, dict(list(_tiny_4096().items())[:3])),
        "small-deepseek": form({"hardware": {"device": "l4", "count": 2}}, deepseek_headers, deepseek_index,
                                SMALL_DEEPSEEK),
        "odd-llama": form({"hardware": {"device": "l4"}}, _odd_llama_headers(), config=LLAMA_CONFIG),
        "4096-parts": form(tiny, _tiny_4096()),
    }
    if (FIXTURES / "models" / "deepseek-v3.json").is_file():
        config = json.loads((FIXTURES / "models" / "deepseek-v3.json").read_text())
        headers, index, _ = deepseek_v3_headers(config)
        forms["deepseek-v3"] = form({"hardware": {"memory_bytes": H200, "count": 8}}, headers, index, config)
    return forms


def pinned_sections(answer: dict[str, Any]) -> dict[str, Any]:
    """What a plan takes from the headers: the checkpoint's summary, the weights, each device's weight bytes."""
    return {"checkpoint": answer["checkpoint"], "weights": answer["weights"],
            "devices": [device["weights_bytes"] for device in answer["devices"]]}


def digest(sections: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


#: main 9e51ef3's answers: the digest of `pinned_sections`, and its figures a change would most likely move (the
#: DeepSeek forms' device bytes re-pinned when MLA's down-projections became whole on every rank; the others' when the
#: embedding and lm_head became the vocabulary padded to a multiple of 64 rows, as vLLM holds it)
PINNED: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("cdaae39e61a0b98713327421faaeedc0138a4923c348d0da8d7952036aa3067f", {
        "format": "bf16",
        "tensors": 4,
        "bytes": 1286144,
        "mtp_tensors": 0,
        "unknown_tensors": 0,
        "by_role": {"lm_head": 512000, "embedding": 512000, "attention": 262144},
        "devices": [1310720],  # 1,286,144 at 9e51ef3: 1,000 tokens held as 1,024 rows (vocab padding), 24 x 256 x 2 x 2
    }),
    "small-deepseek": ("564ce167d2ef2f69355a7a328ec5f2eb4a964a0aa137f17b4dbd121ebc1ceac4", {
        "format": "fp8-block128",
        "tensors": 377,
        "bytes": 27920256,
        "mtp_tensors": 124,
        "unknown_tensors": 0,
        "by_role": {
            "lm_head": 2097152, "embedding": 2097152, "norm": 12288, "mlp": 2753184, "expert": 18878976,
            "router": 49344, "attention": 2032160,
        },
        "devices": [14417056, 14417056],  # 13,990,944 at 9e51ef3: MLA's q_a/kv_a_proj now whole a rank
    }),
    "odd-llama": ("3cccea5b274f631972770fa96dca084a7c7e28082a9de3f37d27f824588e9eec", {
        "format": "bf16",
        "tensors": 27,
        "bytes": 641552,
        "mtp_tensors": 0,
        "unknown_tensors": 6,
        "by_role": {
            "lm_head": 24576, "embedding": 24576, "other": 16, "norm": 2560, "mlp": 393216, "attention": 196608,
        },
        "devices": [657936],  # 641,552 at 9e51ef3: 96 tokens held as 128 rows (vocab padding), 32 x 128 x 2 x 2
    }),
    "4096-parts": ("d8ebe2d520f5a99fb11d3e4ec1269d95aca82f4b275b15d19ef9a87ee9e58793", {
        "format": "bf16",
        "tensors": 4097,
        "bytes": 1318888,
        "mtp_tensors": 0,
        "unknown_tensors": 4093,
        "by_role": {"lm_head": 512000, "embedding": 512000, "other": 32744, "attention": 262144},
        "devices": [1343464],  # 1,318,888 at 9e51ef3: 1,000 tokens held as 1,024 rows, 24 x 256 x 2 x 2
    }),
    "deepseek-v3": ("38b398559c91befc3384da0f68baf5f0cff433c49a53249098b8d3e5f87b5834", {
        "format": "fp8-block128",
        "tensors": 90427,
        "bytes": 673150611808,
        "mtp_tensors": 1564,
        "unknown_tensors": 0,
        "by_role": {
            "lm_head": 1853358080, "embedding": 1853358080, "norm": 2013184, "mlp": 3744330240,
            "expert": 654068416512, "router": 212920320, "attention": 11416215392,
        },
        "devices": [85140130848] * 8,  # 84,331,893,292 at 9e51ef3, + 61 x 13,249,796 (ReplicatedLinear)
    }),
}


@pytest.fixture(scope="module")
def forms() -> dict[str, list[tuple[str, tuple[str | None, bytes, str]]]]:
    return header_forms()


@pytest.mark.parametrize("name", ["tiny", "small-deepseek", "odd-llama", "4096-parts", "deepseek-v3"])
def test_plans_from_header_forms_are_mains_answers(
        client: TestClient, forms: dict[str, list[tuple[str, tuple[str | None, bytes, str]]]], name: str) -> None:
    if name not in forms:
        pytest.skip("../shared/fixtures/models is absent")
    response = client.post("/v1/plan", files=forms[name])
    assert response.status_code == 200, response.text[:500]
    sections = pinned_sections(response.json())
    expected_digest, figures = PINNED[name]
    got = {"format": sections["checkpoint"]["format"], "tensors": sections["checkpoint"]["tensors"],
           "bytes": sections["checkpoint"]["bytes"], "mtp_tensors": sections["checkpoint"]["mtp_tensors"],
           "unknown_tensors": len(sections["checkpoint"]["unknown_tensors"]), "by_role": sections["weights"]["by_role"],
           "devices": sections["devices"]}
    assert got == figures
    assert digest(sections) == expected_digest


if __name__ == "__main__":  # print PINNED from this tree's answers
    from app.main import create_app
    from tests.app.conftest import make_settings

    with TestClient(create_app(make_settings())) as test_client:
        for form_name, parts in header_forms().items():
            answer = test_client.post("/v1/plan", files=parts)
            assert answer.status_code == 200, answer.text[:500]
            pinned = pinned_sections(answer.json())
            shown = {"format": pinned["checkpoint"]["format"], "tensors": pinned["checkpoint"]["tensors"],
                     "bytes": pinned["checkpoint"]["bytes"], "mtp_tensors": pinned["checkpoint"]["mtp_tensors"],
                     "unknown_tensors": len(pinned["checkpoint"]["unknown_tensors"]),
                     "by_role": pinned["weights"]["by_role"], "devices": pinned["devices"]}
            print(f"    {form_name!r}: ({digest(pinned)!r},\n        {shown!r}),")
