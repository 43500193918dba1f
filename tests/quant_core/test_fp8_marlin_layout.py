"""What vLLM holds for fp8 [128, 128]-block weights it runs weight-only on Marlin, beyond the checkpoint's bytes.

Read in vLLM 0.11.0, 0.19.0 and 0.33.0 (quantization/utils/marlin_utils_fp8.py, the same in all three):
``prepare_fp8_layer_for_marlin`` (linear layers) and ``prepare_fp8_moe_layer_for_marlin`` (routed experts) repack
the fp8 weights at their size (``gptq_marlin_repack``, 8 bits) and turn the float32 block scales
``[ceil(N / 128), ceil(K / 128)]`` into scales of the model's 16-bit dtype, one per output row and 128-wide group:
``scales.to(layer.orig_dtype)``, ``repeat_interleave(block_n)``, ``[..., :size_n]``, ``marlin_permute_scales`` ->
``[ceil(K / 128), N]``, put in place of the old ones (``replace_parameter``).  That is ``2 x N x ceil(K / 128)``
bytes where the checkpoint holds ``4 x N x K / 16,384``: 64 times more, held after loading, so inside vLLM's "Model
loading took" and out of its KV budget.

While loading, prepare_fp8_layer_for_marlin packs a linear layer's loaded ``N x K`` fp8 weight into an int32
transposed copy (``pack_fp8_to_int32``, ``qweight.T.contiguous()``) and writes gptq_marlin_repack's output beside
both: ``2 x N x K`` bytes at once (0.33 zero-pads the copy to ``marlin_padded_nk`` first).  The loader runs each
module's process_weights_after_loading after all weights are loaded, one at a time, so the largest layer's (or a MoE
layer's expert repack, when larger) is what loading needs beyond the weights.

Where Marlin runs them: below compute capability 8.9 for the experts in every release (0.11 Fp8MoEMethod
``use_marlin``; 0.19/0.33 fused_moe/oracle/fp8.py select_fp8_moe_backend, TritonExperts taking fp8 only from 8.9);
below 8.9 for the linear layers in 0.11 and 0.19 (0.19 MarlinFP8ScaledMMLinearKernel.is_supported refuses 89 and up)
and below 9.0 in 0.33 (``_POSSIBLE_FP8_BLOCK_KERNELS``: DeepGEMM and CUTLASS's block kernel need 9.0, Marlin comes
next and no longer refuses 8.9).
"""

from __future__ import annotations

import pytest

from quant_core.catalog import device_facts, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_linear import _marlin_padded_nk, fp8_marlin_linear_repack_bytes, fp8_marlin_scale_bytes
from quant_core.formats import fp8
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

GIB = 1 << 30
A100 = device_facts("a100-80gb")


def _stage(name: str, tensor_parallel: int) -> Stage:
    spec = get_preset_info(name).spec
    return Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True)


def test_one_fp8_block_layer_on_marlin_holds_16_bit_group_scales_64_times_the_block_scales() -> None:
    # MiniMax-M2.5's qkv_proj at TP 4: N = (48 / 4 + 2 x 8 / 4) x 128 = 2048, K = 3072.
    # Marlin: 2 x 2048 x 3072 / 128 = 98,304 bytes; the checkpoint's blocks: 16 x 24 x 4 = 1,536 bytes
    assert fp8_marlin_scale_bytes(2048, 3072) == 98_304 - 1_536
    # K not a multiple of 128 rounds its groups up: ceil(200 / 128) = 2 groups; nibble's charge's lower bound
    # 256 x 200 / 4096 = 12.5 -> 12
    assert fp8_marlin_scale_bytes(256, 200) == 2 * 256 * 2 - 12


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_minimax_fp8_experts_on_a100_hold_marlin_scales(version: str) -> None:
    # TP 4: each rank holds all 256 experts at 1536 / 4 = 384 rows, hidden 3072, 62 MoE layers.
    #   w13 (N 768, K 3072): 2 x 768 x 24 = 36,864 held, 768 x 3072 / 4096 = 576 charged: 36,288
    #   w2 (N 3072, K 384): 2 x 3072 x 3 = 18,432 held, 3072 x 384 / 4096 = 288 charged: 18,144
    # (36,288 + 18,144) x 256 experts x 62 layers = 863,944,704 bytes (0.80 GiB) a rank
    term = VllmProfile(version).expert_layout(_stage("minimax-m2.5", 4), "fp8-block128", A100)
    assert term is not None and term.bytes == 863_944_704
    assert "prepare_fp8_moe_layer_for_marlin" in term.basis


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_minimax_fp8_linear_layers_on_a100_hold_marlin_scales(version: str) -> None:
    # TP 4, per layer: qkv_proj (N 2048, K 3072): 98,304 - 1,536 = 96,768; o_proj (N 3072, K 12 x 128 = 1536):
    # 2 x 3072 x 12 = 73,728 - 3072 x 1536 / 4096 = 1,152: 72,576.  169,344 x 62 layers = 10,499,328
    term = VllmProfile(version).linear_layout(_stage("minimax-m2.5", 4), "fp8-block128", A100)
    assert term is not None and term.bytes == 10_499_328
    assert "prepare_fp8_layer_for_marlin" in term.basis


def test_deepseek_v3_fp8_on_a100_charges_experts_mla_and_dense_layers() -> None:
    # TP 8, 256 experts 2048 / 8 = 256 wide, hidden 7168, 58 MoE layers:
    #   w13 (N 512, K 7168): 2 x 512 x 56 - 512 x 7168 / 4096 = 57,344 - 896 = 56,448
    #   w2 (N 7168, K 256): 2 x 7168 x 2 - 7168 x 256 / 4096 = 28,672 - 448 = 28,224
    #   (56,448 + 28,224) x 256 x 58 = 1,257,209,856
    stage = _stage("deepseek-v3", 8)
    experts = VllmProfile("0.19").expert_layout(stage, "fp8-block128", A100)
    assert experts is not None and experts.bytes == 1_257_209_856
    # Linear layers, per layer (16 heads a rank, q_lora 1536, kv_lora 512, rope 64, nope 128, v 128):
    #   fused_qkv_a_proj (N 1536 + 576 = 2112, K 7168): 2 x 2112 x 56 - 2112 x 7168 / 4096 = 236,544 - 3,696
    #   q_b_proj (N 16 x 192 = 3072, K 1536): 2 x 3072 x 12 - 3072 x 1536 / 4096 = 73,728 - 1,152
    #   kv_b_proj (N 16 x 256 = 4096, K 512): 2 x 4096 x 4 - 4096 x 512 / 4096 = 32,768 - 512
    #   o_proj (N 7168, K 16 x 128 = 2048): 2 x 7168 x 16 - 7168 x 2048 / 4096 = 229,376 - 3,584
    #   = 232,848 + 72,576 + 32,256 + 225,792 = 563,472 a layer x 61; the 3 dense MLPs 18432 / 8 = 2304 wide:
    #   gate_up (N 4608, K 7168) 2 x 4608 x 56 - 4608 x 7168 / 4096 = 516,096 - 8,064,
    #   down (N 7168, K 2304) 2 x 7168 x 18 - 7168 x 2304 / 4096 = 258,048 - 4,032: 762,048 each;
    #   the shared expert 2048 / 8 = 256 wide in 58 layers: gate_up (N 512, K 7168) 56,448,
    #   down (N 7168, K 256) 28,224: 84,672 each
    #   61 x 563,472 + 3 x 762,048 + 58 x 84,672 = 34,371,792 + 2,286,144 + 4,910,976 = 41,568,912
    linear = VllmProfile("0.19").linear_layout(stage, "fp8-block128", A100)
    assert linear is not None and linear.bytes == 41_568_912


def test_fp8_native_devices_hold_no_marlin_scales() -> None:
    stage = _stage("minimax-m2.5", 4)
    for version in ("0.11", "0.19", "0.33"):
        for device in ("h100-80gb", "l40s", "b200"):
            assert VllmProfile(version).expert_layout(stage, "fp8-block128", device_facts(device)) is None
    # 8.9 runs the linear layers on Marlin in 0.33 only (CUTLASS's block kernel needs 9.0 there)
    l40s = device_facts("l40s")
    assert VllmProfile("0.19").linear_layout(stage, "fp8-block128", l40s) is None
    term = VllmProfile("0.33").linear_layout(stage, "fp8-block128", l40s)
    assert term is not None and term.bytes == 10_499_328


def test_minimax_fp8_plan_on_a100_charges_the_marlin_scales_in_the_runtime_overhead() -> None:
    info = get_preset_info("minimax-m2.5")
    scheme = scheme_from_quantization_config(info.quantization_config)
    answer = plan(info.spec, Hardware(80 * GIB, 4, "a100-80gb"), Workload(8192, 1),
                  PlanOptions(scheme=scheme, engine_version="0.19"))
    assert "prepare_fp8_moe_layer_for_marlin" in answer.runtime_overhead.basis
    assert "prepare_fp8_layer_for_marlin" in answer.runtime_overhead.basis
    h100 = plan(info.spec, Hardware(80 * GIB, 4, "h100-80gb"), Workload(8192, 1),
                PlanOptions(scheme=scheme, engine_version="0.19"))
    assert "Marlin" not in h100.runtime_overhead.basis


def test_minimax_fp8_expert_repack_on_a100_is_a_load_transient_of_two_w13_copies() -> None:
    # TP 4: 256 experts 384 wide, hidden 3072.  repack_weight's list of repacked w13 and its torch.cat, beside the
    # loaded w13, with the last expert's transposed copy: (2 x 256 + 1) x 2 x 384 x 3072 = 1,210,318,848 bytes
    stage = _stage("minimax-m2.5", 4)
    limits = VllmProfile("0.19").batch_limits(80 * GIB, "a100-80gb")
    budget = VllmProfile("0.19").outside_budget(stage, "auto", limits, False, A100, "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == 1_210_318_848
    assert budget.load is None and budget.loads
    # the room still free in the budget then holds it whole, or leaves the rest beside the start-up memory
    assert budget.load_bytes(2 * GIB) == budget.startup.bytes
    assert budget.load_bytes(GIB) == budget.startup.bytes + 1_210_318_848 - GIB
    h100 = VllmProfile("0.19").outside_budget(stage, "auto", limits, False, device_facts("h100-80gb"), "fp8-block128")
    assert h100.repack is None and not h100.loads


def test_minimax_fp8_plan_on_a100_does_not_fit_where_the_expert_repack_has_no_room_to_load() -> None:
    # 4 devices of 59.8 GiB at memory_utilization 0.96, eager: the budget beyond the weights and overhead (the KV
    # pool and profiling peak, still free while loading) is 0.67 GiB and the 2.39 GiB outside it holds the 2.03 GiB
    # start-up memory: serving fits, but repacking one layer's experts needs 1.13 GiB (1,210,318,848 bytes) at once
    info = get_preset_info("minimax-m2.5")
    scheme = scheme_from_quantization_config(info.quantization_config)
    capacity = int(59.8 * GIB)
    answer = plan(info.spec, Hardware(capacity, 4, "a100-80gb"), Workload(1024, 1),
                  PlanOptions(scheme=scheme, engine_version="0.19", memory_utilization=0.96, enforce_eager=True))
    device = answer.primary.devices[0]
    assert device.weights_bytes + device.overhead_bytes + device.kv_cache_bytes <= device.usable_bytes
    assert not answer.primary.fits
    assert any("would run out of memory loading the model" in warning and "prepare_fp8_moe_layer_for_marlin"
               in warning for warning in answer.warnings)


def test_deepseek_v3_block_fp8_experts_under_expert_parallelism_on_h100_flip_one_w13_copy_while_loading() -> None:
    # vLLM 0.19 on 9.0 runs block fp8 experts under expert parallelism on FlashInfer's CUTLASS experts, whose
    # prepare_fp8_moe_layer_for_fi flips w13 into a new tensor beside the loaded one: EP 8 holds 256 / 8 = 32 whole
    # experts, each w13 2 x 2048 x 7168 fp8 bytes: 32 x 29,360,128 = 939,524,096 bytes while a layer loads
    spec = get_preset_info("deepseek-v3").spec
    stage = Stage(spec, 8, 1, (0, spec.num_layers), True, expert_parallel=True)
    limits = VllmProfile("0.19").batch_limits(80 * GIB, "h100-80gb")
    budget = VllmProfile("0.19").outside_budget(stage, "auto", limits, False, device_facts("h100-80gb"),
                                                "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == 939_524_096
    assert "swap_w13_to_w31" in budget.repack.basis
    # without expert parallelism Triton takes them as loaded
    plain = VllmProfile("0.19").outside_budget(Stage(spec, 8, 1, (0, spec.num_layers), True), "auto", limits, False,
                                               device_facts("h100-80gb"), "fp8-block128")
    assert plain.repack is None


def test_qwen3_30b_fp8_per_tensor_on_a100_holds_a_16_bit_scale_per_output_row() -> None:
    # Marlin repeats the one scale of each expert tensor (after Fp8MoEMethod folds w1's and w3's into w13's) to
    # size_n in the model's dtype: TP 1, 128 experts 768 wide, hidden 2048, 48 layers:
    # (2 x 768 + 2048) x 2 bytes x 128 x 48 = 44,040,192 bytes (42 MiB); nibble's 4-byte scales not taken off
    spec = get_preset_info("qwen3-30b-a3b").spec
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    term = VllmProfile("0.19").expert_layout(stage, "fp8-per-tensor", A100)
    assert term is not None and term.bytes == 44_040_192 and "repeat_interleave" in term.basis
    # the linear layers, qkv_proj (32 + 2 x 4) x 128 = 5120 rows and o_proj 2048: (5120 + 2048) x 2 x 48 = 688,128
    linear = VllmProfile("0.19").linear_layout(stage, "fp8-per-tensor-static", A100)
    assert linear is not None and linear.bytes == 688_128
    # 0.33 runs per-tensor fp8 linear layers on CUTLASS from 8.9 (cutlass_fp8_supported), not on Marlin
    assert VllmProfile("0.33").linear_layout(stage, "fp8-per-tensor", device_facts("l40s")) is None
    # a scale a channel is held in 16 bits where the checkpoint's is float32: nothing more to charge
    assert VllmProfile("0.19").expert_layout(stage, "fp8-per-channel", A100) is None


def _llama_70b_fp8() -> tuple[Stage, object]:
    info = get_preset_info("llama-3.1-70b")
    scheme = scheme_from_quantization_config({"quant_method": "fp8", "activation_scheme": "dynamic",
                                              "weight_block_size": [128, 128]})
    return Stage(info.spec, 2, 1, (0, info.spec.num_layers), True), scheme


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_llama_70b_fp8_linear_repack_on_a100_holds_twice_the_largest_layer_while_loading(version: str) -> None:
    # TP 2: the largest layer is gate_up_proj, N = 2 x 28672 / 2 = 28672 rows of K = 8192: 234,881,024 fp8 bytes;
    # its int32 transposed copy and gptq_marlin_repack's output beside the loaded weight: 2 x 234,881,024
    stage, _ = _llama_70b_fp8()
    profile = VllmProfile(version)
    limits = profile.batch_limits(80 * GIB, "a100-80gb")
    budget = profile.outside_budget(stage, "bf16", limits, False, A100, "", "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == 469_762_048
    assert "prepare_fp8_layer_for_marlin" in budget.repack.basis and budget.loads
    # without the linear layers' format nothing is known of their kernel
    assert profile.outside_budget(stage, "bf16", limits, False, A100, "").repack is None


def test_fp8_linear_repack_only_where_marlin_runs_the_linear_layers() -> None:
    stage, _ = _llama_70b_fp8()
    for version in ("0.11", "0.19", "0.33"):
        assert fp8_marlin_linear_repack_bytes(stage, version, "fp8-block128", device_facts("h100-80gb")) is None
    # 8.9: 0.19 runs block fp8 natively, 0.33 still on Marlin (its block kernels need 9.0); per-tensor weights run
    # on CUTLASS from 8.9 in every release
    l40s = device_facts("l40s")
    assert fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-block128", l40s) is None
    term = fp8_marlin_linear_repack_bytes(stage, "0.33", "fp8-block128", l40s)
    assert term is not None and term.bytes == 469_762_048
    assert fp8_marlin_linear_repack_bytes(stage, "0.33", "fp8-per-tensor", l40s) is None
    per_tensor = fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-per-tensor", A100)
    assert per_tensor is not None and per_tensor.bytes == 469_762_048
    # a scale a channel holds no more on Marlin, but its weights are repacked all the same
    per_channel = fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-per-channel", A100)
    assert per_channel is not None and per_channel.bytes == 469_762_048
    assert VllmProfile("0.19").linear_layout(stage, "fp8-per-channel", A100) is None


def test_vllm_033_pads_the_repacked_copy_to_marlins_thread_tiles() -> None:
    # marlin_padded_nk (0.33 marlin_utils.py): (n to 64, k to lcm(128, g)) or (n to 128, k to lcm(64, g)), the
    # smaller area.  GLM-4.5-Air's dense down_proj at TP 4: N 4096, K 10944 / 4 = 2736 (21.375 x 128):
    # groups of 128: (4096, 2816) either way; a whole row: (4096, 2816) against (4096, 2752): the second
    assert _marlin_padded_nk(4096, 2736, 128) == (4096, 2816)
    assert _marlin_padded_nk(4096, 2736, -1) == (4096, 2752)
    # its dense gate_up_proj, N 2 x 2736 = 5472 (85.5 x 64), K 4096: (5504, 4096) either way, so 0.33 repacks
    # 2 x 5504 x 4096 = 45,088,768 bytes where 0.19 repacks 2 x 5472 x 4096 = 44,826,624
    stage = _stage("glm-4.5-air", 4)
    padded = fp8_marlin_linear_repack_bytes(stage, "0.33", "fp8-block128", A100)
    assert padded is not None and padded.bytes == 45_088_768


def test_minimax_fp8_load_transient_is_the_larger_of_the_expert_and_the_linear_repack() -> None:
    # TP 4: the largest linear layer is qkv_proj (N 2048, K 3072): 2 x 6,291,456 = 12,582,912 bytes, under the
    # experts' 1,210,318,848; process_weights_after_loading runs one module at a time, so only the larger counts
    stage = _stage("minimax-m2.5", 4)
    linear = fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-block128", A100)
    assert linear is not None and linear.bytes == 12_582_912
    limits = VllmProfile("0.19").batch_limits(80 * GIB, "a100-80gb")
    budget = VllmProfile("0.19").outside_budget(stage, "bf16", limits, False, A100, "fp8-block128", "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == 1_210_318_848


def test_glm_45_air_fp8_linear_layers_on_a100_hold_marlin_scales() -> None:
    # glm4_moe.py at TP 4: hidden 4096, 96 heads / 4 = 24, 8 kv heads / 4 = 2, head_dim 128, 46 layers, the first
    # dense (Glm4MoeMLP 10944 / 4 = 2736 wide), 45 with a shared expert 1408 / 4 = 352 wide:
    #   qkv_proj (N 28 x 128 = 3584, K 4096): 2 x 3584 x 32 - 3584 = 225,792
    #   o_proj (N 4096, K 3072): 2 x 4096 x 24 - 3072 = 193,536; 419,328 x 46 = 19,289,088
    #   dense gate_up (N 5472, K 4096): 350,208 - 5,472 = 344,736; down (N 4096, K 2736, 22 groups):
    #   180,224 - 2,736 = 177,488: 522,224
    #   shared gate_up (N 704, K 4096): 45,056 - 704 = 44,352; down (N 4096, K 352, 3 groups): 24,576 - 352 =
    #   24,224: 68,576 x 45 = 3,085,920
    #   19,289,088 + 522,224 + 3,085,920 = 22,897,232
    stage = _stage("glm-4.5-air", 4)
    term = VllmProfile("0.19").linear_layout(stage, "fp8-block128", A100)
    assert term is not None and term.bytes == 22_897_232
    # its largest linear layer, the dense gate_up_proj: 2 x 5472 x 4096; the experts' repack, larger, is the one
    # charged: (2 x 128 + 1) x 2 x 352 x 4096 = 741,081,088
    linear = fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-block128", A100)
    assert linear is not None and linear.bytes == 44_826_624
    limits = VllmProfile("0.19").batch_limits(80 * GIB, "a100-80gb")
    budget = VllmProfile("0.19").outside_budget(stage, "bf16", limits, False, A100, "fp8-block128", "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == 741_081_088


def test_deepseek_v32_fp8_linear_layers_on_a100_add_the_indexers_wq_b_and_wk() -> None:
    # DeepSeek-V3's 41,568,912 at TP 8, and in each of the 61 layers the Indexer's ReplicatedLinear (quant_config
    # passed): wq_b (N 64 x 128 = 8192, K 1536): 2 x 8192 x 12 - 3,072 = 193,536; wk (N 128, K 7168):
    # 2 x 128 x 56 - 224 = 14,112.  41,568,912 + 61 x 207,648 = 54,235,440
    term = VllmProfile("0.19").linear_layout(_stage("deepseek-v3.2", 8), "fp8-block128", A100)
    assert term is not None and term.bytes == 54_235_440


def test_seed_oss_fp8_linear_layers_on_a100_hold_marlin_scales_and_repack_gate_up() -> None:
    # seed_oss.py at TP 2: hidden 5120 (40 groups), 80 / 2 = 40 heads, 8 / 2 = 4 kv heads of 128, 64 layers,
    # MLP 27648 / 2 = 13824 wide:
    #   qkv_proj (N 48 x 128 = 6144): 2 x 6144 x 40 - 7,680 = 483,840; o_proj (N 5120, K 5120): 409,600 - 6,400 =
    #   403,200; gate_up (N 27648): 2,211,840 - 34,560 = 2,177,280; down (N 5120, K 13824, 108 groups):
    #   1,105,920 - 17,280 = 1,088,640; 4,152,960 x 64 = 265,789,440
    stage = _stage("seed-oss-36b-instruct", 2)
    term = VllmProfile("0.19").linear_layout(stage, "fp8-block128", A100)
    assert term is not None and term.bytes == 265_789_440
    # gate_up_proj repacked: 2 x 27648 x 5120
    linear = fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-block128", A100)
    assert linear is not None and linear.bytes == 283_115_520


def test_llama_70b_fp8_plan_on_a100_does_not_fit_where_the_linear_repack_has_no_room_to_load() -> None:
    # 2 devices of 38.4 GiB at memory_utilization 0.955, eager, 512 tokens: serving fits, but the budget still free
    # while loading (0.20 GiB: the KV pool and profiling peak) and the 1.73 GiB outside it beside the 1.55 GiB
    # start-up memory cannot hold the 0.44 GiB (469,762,048 bytes) gate_up_proj's repack needs at once
    stage, scheme = _llama_70b_fp8()
    answer = plan(stage.spec, Hardware(int(38.4 * GIB), 2, "a100-80gb"), Workload(512, 1),
                  PlanOptions(scheme=scheme, engine_version="0.19", memory_utilization=0.955, enforce_eager=True,
                              tensor_parallel=2, max_batched_tokens=512, max_num_seqs=1))
    device = answer.primary.devices[0]
    assert device.weights_bytes + device.overhead_bytes + device.kv_cache_bytes <= device.usable_bytes
    assert not answer.primary.fits
    assert any("would run out of memory loading the model" in warning and "prepare_fp8_layer_for_marlin"
               in warning for warning in answer.warnings)


@pytest.mark.parametrize(("release", "tensor_parallel", "capability", "expert_parallel", "refused"), [
    # Qwen3-30B-A3B's 768-wide experts: 96 a rank at TP 8, which no Marlin MoE thread_k (64, 128) divides
    ("0.19", 8, (8, 0), False, True), ("0.11", 8, (8, 6), False, True),
    ("0.19", 4, (8, 0), False, False),  # 192 a rank
    ("0.19", 8, (8, 0), True, False),  # whole experts, 768
    ("0.19", 8, (9, 0), False, False),  # native fp8 experts, not Marlin
    ("0.33", 8, (8, 0), False, False),  # marlin_moe_padded_intermediate pads 96 to 128
])
def test_fp8_experts_whose_rank_width_marlins_thread_tiles_do_not_divide_are_refused_before_0_33(
        release: str, tensor_parallel: int, capability: tuple[int, int], expert_parallel: bool,
        refused: bool) -> None:
    # csrc/moe/marlin_moe_wna16/ops.cu: w2's GEMM has K = the rank's expert width, every thread config a thread_k of
    # 64 or 128, so at 96 marlin_mm fails "Invalid thread config" in the profiling run; 0.11's
    # prepare_moe_fp8_layer_for_marlin and 0.19's prepare_fp8_moe_layer_for_marlin repack the width unpadded.
    # nibble planned it (the failure comes after the weights load)
    spec = get_preset_info("qwen3-30b-a3b").spec
    assert spec.moe_intermediate_size == 768
    why = VllmProfile(release).format_refusal(spec, "fp8-per-tensor", tensor_parallel, expert_parallel, capability)
    assert (why is not None) == refused
    if why is not None:
        assert "96 (768 / 8)" in why and "Invalid thread config" in why and "expert-parallel" in why


def test_a_0_19_plan_of_qwen3_30b_a3b_fp8_per_tensor_on_eight_a100s_is_refused() -> None:
    info = get_preset_info("qwen3-30b-a3b")
    device = device_facts("a100-80gb")
    assert device.compute_capability == (8, 0)
    answer = plan(info.spec, Hardware(80 * GIB, 8, "a100-80gb", "A100 80GB"), Workload(4096, 1),
                  PlanOptions(weight_format=fp8("tensor"), engine_version="0.19"))
    assert answer.refusal is not None and "Marlin MoE kernel" in answer.refusal and "96 (768 / 8)" in answer.refusal


@pytest.mark.parametrize(("version", "expected"), [("0.11", 6_598_368), ("0.19", 6_598_368), ("0.33", 10_192_608)])
def test_qwen3_next_fp8_linear_layers_on_a100_hold_marlin_scales(version: str, expected: int) -> None:
    # qwen3_next.py at TP 4 (Qwen3-Next-80B-A3B: hidden 2048; 36 Gated DeltaNet layers of 16 key and 32 value heads of
    # 128; 12 gated full-attention layers of 16 heads / 4 and 2 KV heads replicated to 1 a rank, head_dim 256; a
    # shared expert 512 / 4 = 128 wide in all 48), each block-fp8 layer (N, K) on Marlin 2 x N x ceil(K / 128) held
    # less N x K / 4096 charged (prepare_fp8_layer_for_marlin):
    #   in_proj_qkvz (N (2 x 2048 + 2 x 4096) / 4 = 3072, K 2048): 98,304 - 1,536 = 96,768
    #   in_proj_ba (N 2 x 32 / 4 = 16, K 2048): 512 - 8 = 504; out_proj (N 2048, K 4096 / 4): 32,768 - 512 = 32,256
    #   129,528 x 36 = 4,663,008
    #   qkv_proj (N (2 x 4 + 2 x 1) x 256 = 2560, the output gate riding on q; K 2048): 81,920 - 1,280 = 80,640;
    #   o_proj (N 2048, K 1024): 32,256; 112,896 x 12 = 1,354,752
    #   shared gate_up (N 256, K 2048): 8,192 - 128 = 8,064; down (N 2048, K 128): 4,096 - 64 = 4,032; x 48 = 580,608
    #   6,598,368 in all; 0.33 pads in_proj_ba's N 16 to Marlin's 64 (marlin_padded_nk): 48 x 2048 fp8 bytes and
    #   2 x 48 x 16 scale bytes more a layer, 99,840 x 36 = 3,594,240
    term = VllmProfile(version).linear_layout(_stage("qwen3-next-80b-a3b-instruct", 4), "fp8-block128", A100)
    assert term is not None and term.bytes == expected
