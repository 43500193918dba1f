"""The layers vLLM fuses from separate checkpoint tensors, and the ones a plan stores in part.

The rule mirrored: vLLM builds one layer of the modules its model class's ``packed_modules_mapping`` names
(vllm/model_executor/models/llama.py ``"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj":
["gate_proj", "up_proj"]``) and of a layer's routed experts (FusedMoE), and refuses one whose parts are stored
differently: vLLM 0.19 quantization/utils/quant_utils.py lines 457-478 (``is_layer_skipped``: "Detected some
but not all shards of {prefix} are quantized"), utils/gptq_utils.py lines 97-120, compressed_tensors/utils.py
lines 34-64 ("Found a different quantization schemes"), compressed_tensors_moe.py lines 121-147 (one scheme for
a layer's experts).  vLLM cannot be installed here, so the tests state that rule on names.
"""

from __future__ import annotations

import pytest

from quant_core.checkpoint import (
    fused_layers,
    split_between,
    split_fused_groups,
    split_group_notes,
    vllm_packed_modules,
)
from quant_core.checkpoint.fused_groups import (
    PASSED_THROUGH,
    QUANTIZED,
    SIXTEEN_BIT,
    compact_names,
    compact_numbers,
)

LAYERS = 28  # Qwen2.5-7B's num_hidden_layers


def attention(layers: int, projections: tuple[str, ...]) -> list[str]:
    return [f"model.layers.{layer}.self_attn.{projection}.weight" for layer in range(layers)
            for projection in projections]


def test_k_proj_alone_passed_through_splits_every_layers_qkv_proj_in_one_note() -> None:
    groups = split_between({"model_type": "qwen2"}, attention(LAYERS, ("q_proj", "v_proj", "o_proj")),
                           attention(LAYERS, ("k_proj",)))
    assert len(groups) == LAYERS
    assert groups[3].module == "model.layers.3.self_attn" and groups[3].fused == "qkv_proj"
    assert groups[3].parts == (("q_proj", QUANTIZED), ("k_proj", PASSED_THROUGH), ("v_proj", QUANTIZED))
    assert split_group_notes(groups, "gptq") == [
        "model.layers.{0..27}.self_attn: k_proj passed through, q_proj and v_proj quantized. vLLM fuses q_proj, "
        "k_proj and v_proj into one qkv_proj and refuses it stored in part (utils/gptq_utils.py: \"Detected some "
        "but not all shards ... are quantized\"): exclude or include q_proj, k_proj and v_proj together"]


def test_a_whole_group_passed_through_or_quantized_is_no_split() -> None:
    everything = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert split_between({"model_type": "llama"}, attention(LAYERS, ("o_proj",)),
                         attention(LAYERS, ("q_proj", "k_proj", "v_proj"))) == []
    assert split_between({"model_type": "llama"}, attention(LAYERS, everything), []) == []
    # o_proj and down_proj are layers of their own: passing one through splits nothing
    assert split_between({"model_type": "llama"}, attention(LAYERS, ("q_proj", "k_proj", "v_proj")),
                         attention(LAYERS, ("o_proj",))) == []


def test_layers_split_differently_get_a_note_each_and_the_layer_ranges_are_compacted() -> None:
    mlp = [f"model.layers.{layer}.mlp.{name}.weight" for layer in range(6) for name in ("gate_proj", "up_proj")]
    passed = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight",
              "model.layers.4.mlp.up_proj.weight", "model.layers.2.mlp.gate_proj.weight"]
    groups = split_between({"model_type": "llama"}, [name for name in mlp if name not in passed], passed)
    notes = split_group_notes(groups, "awq")
    assert [note.split(":")[0] for note in notes] == ["model.layers.{0..1,4}.mlp", "model.layers.2.mlp"]
    assert notes[1].startswith("model.layers.2.mlp: gate_proj passed through, up_proj quantized.")
    assert notes[0].startswith("model.layers.{0..1,4}.mlp: up_proj passed through, gate_proj quantized. vLLM fuses "
                               "gate_proj and up_proj into one gate_up_proj")
    assert "utils/quant_utils.py" in notes[0]  # AWQ's rule: is_layer_skipped


def routed_experts(layers: int, experts: int, projections: tuple[str, ...] = ("w1", "w2", "w3")) -> list[str]:
    return [f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{projection}.weight"
            for layer in range(layers) for expert in range(experts) for projection in projections]


def test_a_layers_experts_are_one_fused_layer_w1_and_w3_apart_from_w2_split_it() -> None:
    # Mixtral: vLLM's FusedMoE holds every expert's w1/w3 (w13) and w2 of a layer under one quant method
    passed = routed_experts(32, 8, ("w1", "w3"))
    groups = split_between({"model_type": "mixtral"}, routed_experts(32, 8, ("w2",)), passed)
    assert len(groups) == 32 and groups[0].module == "model.layers.0.block_sparse_moe.experts"
    assert groups[0].fused == "experts"
    assert sorted(groups[0].parts[:3]) == [("0.w1", PASSED_THROUGH), ("0.w2", QUANTIZED), ("0.w3", PASSED_THROUGH)]
    assert split_group_notes(groups, "compressed-tensors") == [
        "model.layers.{0..31}.block_sparse_moe.experts: {0..7}.w1 and {0..7}.w3 passed through, {0..7}.w2 quantized. "
        "vLLM makes one FusedMoE layer of a layer's experts with one scheme (compressed_tensors_moe.py reads expert "
        "0's scheme for all) and fails to load experts stored otherwise: exclude or include every expert's "
        "projections of the layer together"]


def test_one_expert_left_out_splits_its_layer_and_every_expert_left_out_does_not() -> None:
    names = routed_experts(2, 8)
    one = [name for name in names if ".experts.5." in name and "layers.1." in name]
    groups = split_between({"model_type": "mixtral"}, [name for name in names if name not in one], one)
    assert [group.module for group in groups] == ["model.layers.1.block_sparse_moe.experts"]
    layer = [name for name in names if "layers.1." in name]
    assert split_between({"model_type": "mixtral"}, [name for name in names if name not in layer], layer) == []


def test_shared_experts_are_a_gate_up_proj_not_part_of_the_routed_experts() -> None:
    # Qwen2-MoE with a shared expert: vLLM's qwen2_moe.py adds gate_up_proj to its mapping for it
    config = {"model_type": "qwen2_moe", "shared_expert_intermediate_size": 5632}
    shared = ["model.layers.0.mlp.shared_expert.gate_proj.weight", "model.layers.0.mlp.shared_expert.up_proj.weight"]
    groups = split_between(config, shared[:1] + routed_experts(1, 2), shared[1:])
    assert [(group.module, group.fused) for group in groups] == [("model.layers.0.mlp.shared_expert", "gate_up_proj")]


@pytest.mark.parametrize(("config", "fused"), [
    ({"model_type": "llama"}, {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}),
    ({"model_type": "mixtral"}, {"qkv_proj": ("q_proj", "k_proj", "v_proj")}),
    ({"model_type": "qwen3_moe"}, {"qkv_proj": ("q_proj", "k_proj", "v_proj")}),
    ({"model_type": "qwen3_moe", "mlp_only_layers": [0]},
     {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}),
    ({"model_type": "qwen2_moe", "shared_expert_intermediate_size": 0}, {"qkv_proj": ("q_proj", "k_proj", "v_proj")}),
    # DeepSeek-V3: q_lora_rank 1536 -> fused_qkv_a_proj; MLA (qk dims 128/64), so no qkv_proj
    ({"model_type": "deepseek_v3", "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64},
     {"gate_up_proj": ("gate_proj", "up_proj"), "fused_qkv_a_proj": ("q_a_proj", "kv_a_proj_with_mqa")}),
    # DeepSeek-V2-Lite: q_lora_rank null -> q_proj is a layer of its own
    ({"model_type": "deepseek_v2", "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64},
     {"gate_up_proj": ("gate_proj", "up_proj")}),
    ({"model_type": "qwen3_5"}, {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                 "gate_up_proj": ("gate_proj", "up_proj"), "in_proj_qkvz": ("in_proj_qkv", "in_proj_z"),
                                 "in_proj_ba": ("in_proj_b", "in_proj_a")}),
    ({"model_type": "phi3"}, {}), ({"model_type": "smollm3"}, {}),
    # bert.py BertModel: "qkv_proj": ["query", "key", "value"] (0.19 line 370; 0.11 line 335; 0.33 line 372)
    ({"model_type": "bert"}, {"qkv_proj": ("query", "key", "value")}),
    ({"model_type": "some_new_llama_like"}, {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                             "gate_up_proj": ("gate_proj", "up_proj")}),
], ids=lambda value: value.get("model_type", "") if isinstance(value, dict) and "model_type" in value else "")
def test_vllms_packed_modules_mapping_per_family(config: dict[str, object], fused: dict[str, tuple[str, ...]]
                                                 ) -> None:
    # vllm/model_executor/models/{llama,mixtral,qwen3_moe,qwen2_moe,deepseek_v2,qwen3_5,phi3}.py (0.19);
    # registry.py: SmolLM3ForCausalLM runs on the Transformers backend
    assert vllm_packed_modules(config) == fused


def test_deepseeks_fused_qkv_a_proj_split_is_found() -> None:
    config = {"model_type": "deepseek_v3", "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64}
    groups = split_between(config, ["model.layers.0.self_attn.q_a_proj.weight"],
                           ["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"])
    assert [(group.module, group.fused) for group in groups] == [("model.layers.0.self_attn", "fused_qkv_a_proj")]


def test_a_budgets_different_int4_schemes_in_one_group_are_a_split_too() -> None:
    # compressed-tensors: q in the g128 config group and k in the g64 one take q's scheme for the whole qkv_proj
    stored = {"model.layers.0.self_attn.q_proj.weight": "int4-g128", "model.layers.0.self_attn.k_proj.weight":
              "int4-g64", "model.layers.0.self_attn.v_proj.weight": "int4-g128"}
    (group,) = split_fused_groups({"model_type": "llama"}, stored)
    assert split_group_notes([group], "compressed-tensors")[0].startswith(
        "model.layers.0.self_attn: q_proj and v_proj int4-g128, k_proj int4-g64. vLLM fuses")


def test_gguf_notes_say_llama_cpp_loads_it_and_vllms_gguf_loader_does_not() -> None:
    groups = split_between({"model_type": "llama"}, attention(2, ("q_proj", "v_proj")), attention(2, ("k_proj",)))
    (note,) = split_group_notes(groups, "gguf")
    assert "llama.cpp loads this GGUF" in note and "vLLM's GGUF loader fuses" in note and "gguf.py" in note


def test_biases_and_other_suffixes_are_not_judged() -> None:
    # a q/k/v bias always passes through; vLLM decides by module, from the weights
    assert split_between({"model_type": "qwen2"}, attention(1, ("q_proj", "k_proj", "v_proj")),
                         ["model.layers.0.self_attn.k_proj.bias"]) == []


@pytest.mark.parametrize(("numbers", "text"), [
    (range(28), "{0..27}"), ([5], "5"), ([0, 1, 2, 3, 5, 9, 10, 11], "{0..3,5,9..11}"), ([3, 1], "{1,3}"),
    (range(0, 40, 2), "{0,2,4,6,8,10,12,14,… (20 in all)}"),
])
def test_compact_numbers(numbers: list[int], text: str) -> None:
    assert compact_numbers(numbers) == text


def test_compact_names_merges_names_differing_in_their_last_number_only() -> None:
    assert compact_names(["model.layers.0.self_attn", "model.layers.1.self_attn", "model.layers.1.mlp", "lm_head"]) \
        == ["model.layers.{0..1}.self_attn", "model.layers.1.mlp", "lm_head"]


def test_past_the_most_notes_the_rest_are_counted() -> None:
    # every layer split a different way: the report says 12 and counts the rest
    names = {f"model.layers.{layer}.mlp.experts.{expert}.w1.weight": PASSED_THROUGH if expert == layer else QUANTIZED
             for layer in range(20) for expert in range(20)}
    notes = split_group_notes(split_fused_groups({"model_type": "mixtral"}, names), "gptq")
    assert len(notes) == 13 and notes[-1] == "and 8 more fused layers stored in part"


def test_a_budgets_16_bit_choice_is_unquantized_to_vllm_like_a_tensor_passed_through() -> None:
    q, k, v = (f"model.layers.0.self_attn.{name}.weight" for name in ("q_proj", "k_proj", "v_proj"))
    assert split_fused_groups({"model_type": "llama"}, {q: PASSED_THROUGH, k: SIXTEEN_BIT, v: PASSED_THROUGH}) == []
    (group,) = split_fused_groups({"model_type": "llama"}, {q: "int4-g32-asym", k: SIXTEEN_BIT, v: "int4-g32-asym"})
    (note,) = split_group_notes([group], "compressed-tensors")
    assert note.startswith(
        "model.layers.0.self_attn: k_proj kept 16-bit by the budget, q_proj and v_proj int4-g32-asym. vLLM fuses")
    assert note.endswith("the budget chose their formats one by one: exclude q_proj, k_proj and v_proj together, "
                         "or quantize without a budget")


def test_hostile_names_with_endless_or_non_ascii_digits_are_names_not_layer_numbers() -> None:
    # int() refuses a string of more than 4,300 digits (Python 3.11); a header may name a tensor so
    huge = "9" * 5000
    names = {f"model.layers.{huge}.self_attn.q_proj.weight": QUANTIZED,
             f"model.layers.{huge}.self_attn.k_proj.weight": PASSED_THROUGH,
             f"model.layers.{huge}.mlp.experts.{huge}.w1.weight": PASSED_THROUGH,
             f"model.layers.{huge}.mlp.experts.0.w1.weight": QUANTIZED,
             "model.layers.\u0663.self_attn.q_proj.weight": QUANTIZED,  # ARABIC-INDIC DIGIT THREE
             "model.layers.\u0663.self_attn.k_proj.weight": PASSED_THROUGH}
    groups = split_fused_groups({"model_type": "mixtral"}, names)
    assert [group.fused for group in groups] == ["qkv_proj", "qkv_proj"]
    notes = split_group_notes(groups, "gptq")
    assert notes[0].startswith(f"model.layers.{huge}.self_attn: k_proj passed through")
    assert notes[1].startswith("model.layers.\u0663.self_attn: k_proj passed through")


def test_fused_layers_lists_each_layers_parts_for_a_budget_to_choose_together() -> None:
    names = [*attention(2, ("q_proj", "k_proj", "v_proj", "o_proj")), "model.layers.0.self_attn.q_proj.bias",
             "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
             "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight",
             *routed_experts(1, 2)]
    assert fused_layers({"model_type": "mixtral"}, names) == [
        tuple(f"model.layers.{layer}.self_attn.{part}.weight" for part in ("q_proj", "k_proj", "v_proj"))
        for layer in range(2)] + [tuple(routed_experts(1, 2))]  # mixtral fuses no gate/up; a part alone is no group
    assert fused_layers({"model_type": "llama"}, names)[2] == ("model.layers.0.mlp.gate_proj.weight",
                                                               "model.layers.0.mlp.up_proj.weight")
    bert = [f"encoder.layer.0.attention.self.{part}.weight" for part in ("query", "key", "value")]
    assert fused_layers({"model_type": "bert"}, [*bert, "encoder.layer.0.attention.output.dense.weight"]) == [
        tuple(bert)]
