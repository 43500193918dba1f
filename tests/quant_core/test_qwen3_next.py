"""Qwen3-Next (Qwen3-Next-80B-A3B-Instruct/Thinking) planned as its checkpoints hold it and vLLM loads and caches it.

The config under data/qwen3_next/ is the published config.json's keys (sources in that folder's README.md).
Independent counts: transformers 5.23 builds Qwen3NextForCausalLM from it on the meta device (no memory).  The KV
cache follows vLLM's hybrid KV cache manager (vllm/model_executor/models/config.py HybridAttentionMambaModelConfig in
v0.11, vllm/platforms/interface.py _align_hybrid_block_size later; vllm/v1/core/kv_cache_utils.py;
vllm/v1/kv_cache_interface.py MambaSpec; mamba_utils.py MambaStateShapeCalculator.gated_delta_net_state_shape), and
is checked against a public vLLM start-up log of the model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from quant_core.catalog import get_device
from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, quantize_checkpoint
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile, gdn_forward_bytes_per_token, hybrid_kv_capacity
from quant_core.engines.vllm_encoders import rotary_cache_bytes
from quant_core.engines.vllm_releases import mamba_cache_mode, startup_memory
from quant_core.errors import InvalidSpec, MissingConfigKey, UnsupportedArchitecture
from quant_core.formats import float_format
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import DEFAULT_POLICY, inventory, parameter_count
from quant_core.kv_cache import hybrid_kv, kv_bytes_per_token, kv_cache_bytes, linear_state_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import gguf_scheme
from quant_core.specs import ModelSpec
from quant_core.tensorio import read_safetensors
from quant_core.tensorio.checkpoint_headers import HeaderTensor
from tests.checkpoints import write_llama_checkpoint

GIB = 1 << 30
MIB = 1 << 20
CONFIG = Path(__file__).resolve().parent / "data" / "qwen3_next" / "qwen3-next-80b-a3b-instruct.json"


def load() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(CONFIG.read_text())
    return config


def spec_of(**changes: Any) -> ModelSpec:
    return model_from_hf_config({**load(), **changes}, name="qwen3-next-80b-a3b-instruct")


def built_by_transformers(config: dict[str, Any]) -> dict[str, int]:
    """Elements of every parameter transformers 5.23's Qwen3NextForCausalLM has for `config`, by name (routed
    experts fused in memory as one [experts, ...] tensor per projection and layer)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    return {name: parameter.numel() for name, parameter in model.named_parameters()}


# transformers 5.23 builds 79,674,391,296 parameters for the config (checked live below), the total a public
# parameter-count test asserts for Qwen/Qwen3-Coder-Next, the same architecture and sizes ("Published total minus
# inactive expert tensors = 3,874,929,408" active); NVIDIA's NIM card for qwen/qwen3-next-80b-a3b-instruct says
# "Total Parameters: 80B, Active Parameters: 3.9B".
TOTAL, ACTIVE = 79_674_391_296, 3_874_929_408


def test_qwen3_next_counts_every_parameter_transformers_builds() -> None:
    count = parameter_count(spec_of())
    assert (count.total, count.active_per_token) == (TOTAL, ACTIVE)
    assert round(count.total / 1e9) == 80 and round(count.active_per_token / 1e9, 1) == 3.9
    print(f"Qwen3-Next-80B-A3B: {count.total:,} parameters, {count.active_per_token:,} active per token")


def test_transformers_builds_as_many_qwen3_next_parameters_role_by_role() -> None:
    built = built_by_transformers(load())
    count = parameter_count(spec_of())
    assert sum(built.values()) == count.total == TOTAL

    def of(*parts: str) -> int:
        return sum(n for name, n in built.items() if any(part in name for part in parts))

    assert of(".mlp.experts.") == count.by_role["expert"] == 48 * 512 * 3 * 512 * 2048
    assert of(".mlp.gate.", ".shared_expert_gate.") == count.by_role["router"]
    assert of(".shared_expert.") == count.by_role["mlp"]
    assert of("in_proj_qkvz", "in_proj_ba", "out_proj", ".self_attn.q_proj", ".self_attn.k_proj",
              ".self_attn.v_proj", ".self_attn.o_proj") == count.by_role["attention"]
    assert of(".conv1d.", ".dt_bias", ".A_log") == count.by_role["other"]
    assert of("norm") == count.by_role["norm"]
    assert of("embed_tokens") == count.by_role["embedding"] == of("lm_head") == count.by_role["lm_head"]


def test_qwen3_next_lists_the_tensors_its_checkpoint_holds() -> None:
    # The names transformers saves and vLLM's qwen3_next.py loads (per-expert 2-D experts, as the published shards
    # hold them): 36 Gated DeltaNet layers (3 of every 4), 12 gated full-attention layers, a sparse block in each
    rows = {row.name: row for row in inventory(spec_of())}
    linear = tuple(i for i in range(48) if (i + 1) % 4)
    full = (3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47)
    p, a = "model.layers.{i}.linear_attn", "model.layers.{i}.self_attn"
    assert {name: (row.shape, row.role, row.layers) for name, row in rows.items() if name.startswith((p, a))} == {
        f"{p}.in_proj_qkvz.weight": ((2 * 2048 + 2 * 4096, 2048), "attention", linear),  # q, k (16 x 128), v, z
        f"{p}.in_proj_ba.weight": ((64, 2048), "attention", linear),  # beta and alpha for 32 value heads
        f"{p}.conv1d.weight": ((8192, 1, 4), "other", linear),  # depthwise over q, k and v
        f"{p}.dt_bias": ((32,), "other", linear),
        f"{p}.A_log": ((32,), "other", linear),
        f"{p}.norm.weight": ((128,), "norm", linear),
        f"{p}.out_proj.weight": ((2048, 4096), "attention", linear),
        f"{a}.q_proj.weight": ((2 * 16 * 256, 2048), "attention", full),  # the second half gates the output
        f"{a}.k_proj.weight": ((512, 2048), "attention", full),
        f"{a}.v_proj.weight": ((512, 2048), "attention", full),
        f"{a}.o_proj.weight": ((2048, 4096), "attention", full),
        f"{a}.q_norm.weight": ((256,), "norm", full),
        f"{a}.k_norm.weight": ((256,), "norm", full),
    }
    mlp = "model.layers.{i}.mlp"
    assert (rows[f"{mlp}.gate.weight"].shape, rows[f"{mlp}.gate.weight"].role) == ((512, 2048), "router")
    assert (rows[f"{mlp}.shared_expert_gate.weight"].shape, rows[f"{mlp}.shared_expert_gate.weight"].role) == \
        ((1, 2048), "router")
    up = rows[f"{mlp}.experts.{{e}}.up_proj.weight"]
    assert (up.shape, up.count, up.active_per_layer) == ((512, 2048), 48 * 512, 10)
    assert rows[f"{mlp}.shared_expert.down_proj.weight"].shape == (2048, 512)
    assert f"{mlp}.up_proj.weight" not in rows  # no dense layer: decoder_sparse_step 1, mlp_only_layers []
    assert sum(row.count for row in rows.values()) == 74_391
    assert unread_config_keys(load()) == ()


def test_layer_types_and_mlp_only_layers_place_the_layers_as_transformers_does() -> None:
    # Qwen3NextConfig: layer_types when given, else every full_attention_interval-th layer full; a layer is sparse
    # unless in mlp_only_layers or (i + 1) % decoder_sparse_step (then a dense MLP of intermediate_size)
    config = {**load(), "num_hidden_layers": 8, "full_attention_interval": 2, "mlp_only_layers": [0],
              "decoder_sparse_step": 2}
    spec = model_from_hf_config(config)
    assert spec.linear_attention is not None and spec.linear_attention.layers == (0, 2, 4, 6)
    assert spec.moe_layers == (1, 3, 5, 7)
    rows = {row.name: row for row in inventory(spec)}
    assert rows["model.layers.{i}.mlp.up_proj.weight"].shape == (5120, 2048)
    assert parameter_count(spec).total == sum(built_by_transformers(config).values())
    explicit = model_from_hf_config({**config, "layer_types": ["full_attention"] * 2 + ["linear_attention"] * 6})
    assert explicit.linear_attention is not None and explicit.linear_attention.layers == (2, 3, 4, 5, 6, 7)


@pytest.mark.parametrize(("change", "field"), [
    ({"attention_bias": True}, "attention_bias"),  # vLLM reads qkv_bias and gives o_proj none
    ({"attn_output_gate": False}, "attn_output_gate"),  # transformers always gates
    ({"layer_scale": True}, "layer_scale"),  # only vLLM builds attn/ffn_layer_scale
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"layer_types": ["full_attention"] * 47 + ["sliding_attention"]}, "layer_types[47]"),
    ({"linear_num_value_heads": 24}, "linear_num_value_heads"),  # not a multiple of the 16 key heads
])
def test_qwen3_next_configs_nibble_cannot_plan_exactly_are_refused_naming_the_key(change: dict[str, Any],
                                                                                  field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        spec_of(**change)
    assert caught.value.field == field


def test_a_qwen3_next_config_without_its_linear_attention_sizes_is_refused_not_read_as_a_llama() -> None:
    config = load()
    del config["linear_num_value_heads"]
    with pytest.raises(MissingConfigKey) as caught:
        model_from_hf_config(config)
    assert "linear_num_value_heads" in str(caught.value)
    # before this adapter: refused as an unknown type whose structural keys a llama reading would leave out
    unknown = {**load(), "model_type": "qwen3_next_like", "architectures": ["Qwen3NextLikeForCausalLM"]}
    with pytest.raises(UnsupportedArchitecture):
        model_from_hf_config(unknown)


def test_a_spec_round_trips_through_its_dict_and_a_layout_without_its_layers_is_refused() -> None:
    spec = spec_of()
    data = spec.to_dict()
    data["linear_attention"] = {field: getattr(spec.linear_attention, field)
                                for field in ("layers", "num_key_heads", "num_value_heads", "key_head_dim",
                                              "value_head_dim", "conv_kernel_size", "ssm_state_dtype")}
    assert ModelSpec.from_dict(data) == spec
    with pytest.raises(InvalidSpec) as caught:
        ModelSpec.from_dict({**data, "linear_attention": None})
    assert caught.value.field == "linear_attention"


# --- the KV cache: full-attention tokens and Gated DeltaNet states, as vLLM's hybrid manager holds them ---------

def test_only_the_twelve_full_attention_layers_cache_per_token() -> None:
    # 12 layers x 2 (K, V) x 2 kv heads x 256 x 2 bytes; the 36 linear layers cache a state per sequence instead
    assert kv_bytes_per_token(spec_of()) == 12 * 2 * 2 * 256 * 2 == 24_576
    assert kv_bytes_per_token(spec_of(), "fp8") == 12_288


@pytest.mark.parametrize(("tensor_parallel", "state", "block", "page"), [
    # conv state (kernel 3 x (2 x 2048 + 4096) / tp) + recurrent (32 / tp x 128 x 128), bf16; the attention block
    # 16 x ceil(state / (16 x per-token page)), the per-token page 2 x max(1, 2 / tp) x 256 x 2 bytes
    (1, 3 * 8192 * 2 + 32 * 128 * 128 * 2, 544, 544 * 2048),
    (2, 3 * 4096 * 2 + 16 * 128 * 128 * 2, 544, 544 * 1024),
    (4, 3 * 2048 * 2 + 8 * 128 * 128 * 2, 272, 272 * 1024),
    (8, 3 * 1024 * 2 + 4 * 128 * 128 * 2, 144, 144 * 1024),
])
def test_vllm_raises_the_attention_block_until_a_page_holds_a_linear_layers_state(
        tensor_parallel: int, state: int, block: int, page: int) -> None:
    hybrid = hybrid_kv(spec_of(), "bf16", tensor_parallel)
    assert linear_state_bytes(spec_of(), tensor_parallel) == hybrid.state_bytes == state
    assert (hybrid.block_size(), hybrid.page_bytes()) == (block, page)
    assert (hybrid.group_size, hybrid.full_groups, hybrid.linear_groups) == (12, 1, 3)
    print(f"TP={tensor_parallel}: state {state:,} bytes, block {block} tokens, page {page:,} bytes "
          f"(padding {100 * (page - state) / state:.2f}%)")


def test_an_fp8_kv_cache_doubles_the_block_and_keeps_the_states_at_16_bits() -> None:
    # mamba_cache_dtype "auto" is the model's dtype whatever --kv-cache-dtype says: the page is the same bytes, the
    # block twice the tokens (16 x ceil(1,097,728 / 16,384) = 1,072)
    bf16, fp8 = hybrid_kv(spec_of(), "bf16"), hybrid_kv(spec_of(), "fp8")
    assert fp8.state_bytes == bf16.state_bytes == 1_097_728
    assert fp8.block_size() == 1072 and fp8.page_bytes() == 1072 * 1024


def test_a_sequence_takes_its_attention_blocks_and_one_block_per_linear_group() -> None:
    hybrid = hybrid_kv(spec_of(), "bf16", 2)
    assert hybrid.blocks_per_sequence(262_144) == 482 + 3  # ceil(262,144 / 544) in the full group, 1 in each other
    assert hybrid.bytes_per_sequence(1) == 4 * 557_056 * 12
    assert kv_cache_bytes(spec_of(), "bf16", 262_144, 2, tensor_parallel=2) == 2 * 485 * 557_056 * 12
    assert kv_cache_bytes(spec_of(), "bf16", 0, 5) == 0


def test_vllms_logged_kv_cache_of_qwen3_next_at_tp_2() -> None:
    # A public start-up log of Qwen3-Next-80B-A3B-Instruct on two H200s, vLLM 0.10.2 (the hybrid code of v0.11:
    # "config.py:390 Setting attention block size to 544 tokens", "config.py:411 Padding mamba page size by 1.49%"),
    # --tensor-parallel-size 2, max model len 262,144: "Available KV cache memory: 44.59 GiB", "GPU KV cache size:
    # 973,760 tokens", "Maximum concurrency for 262,144 tokens per request: 14.77x".
    spec = spec_of()
    hybrid = hybrid_kv(spec, "bf16", 2)
    assert hybrid.block_size() == 544
    assert f"{100 * (hybrid.page_bytes() - hybrid.state_bytes) / hybrid.state_bytes:.2f}" == "1.49"
    stage = Stage(spec, 2, 1, (0, 48), True)
    for version in ("0.11", "0.19"):
        capacity = hybrid_kv_capacity(stage, "bf16", round(44.59 * GIB), 16, 262_144, version, False)
        assert capacity.num_blocks == 7162  # 44.59 GiB // (557,056 x 12)
        assert capacity.tokens == 7162 // 4 * 544 == 973_760
        assert f"{capacity.max_concurrency:.2f}" == "14.77"  # 7,162 / 485
    # vLLM 0.33 on the same pool: tests/quant_core/test_hybrid_prefix_caching.py (prefix caching on by default)


def test_vllms_logged_weights_of_qwen3_next_at_tp_2() -> None:
    # The same log: "Model loading took 74.2812 GiB" per rank.  nibble's bf16 weights per rank, plus the rotary
    # cos/sin cache nibble does not count (262,144 positions x 64 rotary dims, partial_rotary_factor 0.25, x 2
    # bytes = 32 MiB).  nibble now splits conv1d, dt_bias and A_log over the ranks as vLLM does (it held them whole
    # and this test took 36 x 8,192 x 4 x 2 / 2 bytes of conv1d off): 79,725,031,808 bytes, 74.28097 GiB with the
    # cache, 0.00023 GiB under the log
    result = plan(spec_of(), Hardware(get_device("h200").planning_bytes, 2), Workload(262_144, 1),
                  PlanOptions(weight_format=float_format("bf16"), engine_version="0.11"))
    weights = result.primary.devices[0].weights_bytes
    rotary_cache = 262_144 * 64 * 2
    assert weights == 79_725_031_808
    assert abs((weights + rotary_cache) / GIB - 74.2812) < 0.0003


# The public start-up log both tests above read (vLLM 0.10.2, 2 x H200, TP 2, the defaults of a 70 GiB+ device: 8,192
# batched tokens, 1,024 sequences): https://github.com/sungwon-chae/arxiv_confi/blob/
# bd1defe41b7e441c8f90d3ef6f3bd2636cad3f6a/tmp_memo.md, each worker: "Free memory on device (139.21/139.81 GiB) on
# startup. Desired GPU memory utilization is (0.9, 125.83 GiB). Actual usage is 74.28 GiB for weight, 5.58 GiB for
# peak activation, 1.38 GiB for non-torch memory, and 2.37 GiB for CUDAGraph memory" (graphs captured after the KV
# cache is sized, outside the budget); "GPU KV cache size: 973,760 tokens".  Also in data/vllm_logs.json.
LOGGED_TOKENS = 973_760


LOGGED_NON_TORCH_BYTES = round(1.38 * GIB)
#: the total the run's workers report ("139.21/139.81 GiB"): the run is planned on it, not on the catalog's H200 (the
#: smallest public total, 139.72 GiB, sglang#2895), whose pool would be 0.9 x 0.09 GiB smaller than this machine's
LOGGED_TOTAL_BYTES = round(139.81 * GIB)


def test_the_logged_qwen3_next_start_up_on_two_h200s_is_planned_at_or_just_below_vllms_kv_cache() -> None:
    # The whole plan from an H200 of the 139.81 GiB the run reports (LOGGED_TOTAL_BYTES), TP 2, 262,144 tokens, vLLM
    # 0.11 rules with the run's own non-torch figure (runtime.overhead_bytes): vLLM 0.10.2 takes its start-up snapshot
    # before setting up NCCL (v1/worker/gpu_worker.py Worker.init_device, read in the 0.10.2 wheel; 0.11 moved it
    # after), so its 1.38 GiB holds the communicators 0.11 charges outside the budget (the next test)
    result = plan(spec_of(), Hardware(LOGGED_TOTAL_BYTES, 2, "h200"), Workload(262_144, 1),
                  PlanOptions(weight_format=float_format("bf16"), engine_version="0.11",
                              runtime_overhead_bytes=LOGGED_NON_TORCH_BYTES))
    primary, device = result.primary, result.primary.devices[0]
    tokens = primary.kv_capacity_tokens
    assert tokens is not None and 0.995 * LOGGED_TOKENS <= tokens <= LOGGED_TOKENS
    # term by term against the log's line: the rotary cache vLLM counts in its weights (262,144 x 64 x 2 bytes) is
    # nibble's to charge beside the activations, the conv1d nibble holds whole on each rank vLLM splits
    rotary, conv_split = rotary_cache_bytes(spec_of()), 36 * 8192 * 4 * 2 // 2
    assert rotary == 262_144 * 64 * 2
    assert abs((device.weights_bytes + rotary - conv_split) / GIB - 74.28) < 0.005
    assert abs((device.activation_bytes - rotary) / GIB - 5.58) < 0.015  # 1,024 x 151,936 x 38 bytes + hidden states
    assert device.overhead_bytes == LOGGED_NON_TORCH_BYTES  # non-torch memory; no CUDA graphs inside the budget
    assert abs(primary.kv_pool_bytes / GIB - 44.59) < 0.01
    assert "Gated DeltaNet layers add nothing" in result.activation.basis
    assert "rotary cos/sin cache" in result.activation.basis
    print(f"vLLM 0.11, 2 x H200, 262,144 tokens: GPU KV cache size {tokens:,} (vLLM 0.10.2 logged {LOGGED_TOKENS:,}, "
          f"{(tokens - LOGGED_TOKENS) / LOGGED_TOKENS:+.3%}); weights {device.weights_bytes / GIB:.4f} GiB, "
          f"activation {device.activation_bytes / GIB:.4f} GiB, non-torch {device.overhead_bytes / GIB:.4f} GiB, "
          f"KV pool {primary.kv_pool_bytes / GIB:.4f} GiB")


def test_vllm_0_11_would_hold_the_communicators_0_10_2_charged_inside_the_budget_outside_it() -> None:
    # The same run under 0.11's own rules: 0.55 GiB of non-torch memory inside the budget (llm-d's 0.11 TP=2 logs),
    # the NCCL communicators and custom all-reduce in the start-up memory outside it (0.93 GiB above one GPU's 0.61):
    # the pool is the 0.10.2 log's plus the 0.83 GiB 0.11 no longer charges inside the budget
    stage = Stage(spec_of(), 2, 1, (0, 48), True)
    non_torch, startup = VllmProfile("0.11").non_torch(stage), startup_memory(stage, "0.11")
    assert non_torch.bytes == 564 * MIB and startup.bytes == (625 + 953) * MIB
    # every byte 0.10.2 used at start-up (0.60 GiB: 139.81 - 139.21) and after it (1.38 GiB) is charged somewhere
    assert startup.bytes + non_torch.bytes >= round((0.60 + 1.38) * GIB)
    result = plan(spec_of(), Hardware(LOGGED_TOTAL_BYTES, 2, "h200"), Workload(262_144, 1),
                  PlanOptions(weight_format=float_format("bf16"), engine_version="0.11"))
    primary = result.primary
    assert primary.devices[0].overhead_bytes == non_torch.bytes
    assert abs(primary.kv_pool_bytes / GIB - (44.59 + 1.38 - 564 / 1024)) < 0.01
    assert primary.kv_capacity_tokens is not None
    assert 1.015 < primary.kv_capacity_tokens / LOGGED_TOKENS < 1.02
    assert "0.55 GiB per device" in result.runtime_overhead.basis


def test_the_gated_deltanet_layers_add_to_the_profiling_peak_only_where_vllm_runs_their_projections() -> None:
    # v0.10.2/v0.11's Qwen3NextGatedDeltaNet._forward returns at "attn_metadata is None" before in_proj: nothing of
    # it in the peak.  v0.19/v0.33 (gdn_linear_attn.py) run in_proj_qkvz/ba, the unpacking, the gate, the zeroed
    # core output, the gated norm and out_proj, skipping only the core: per token at TP 2, 2 bytes x (3 x 2,048 +
    # (4 x 2,048 + 6 x 4,096 + 2 x 32) / 2 + 2,048) = 49,216 bytes; from v0.19 the fused-MoE caches (TritonExperts'
    # workspace, 8,192 x 10 x (max(256, 2,048) + max(512, 2,048)) x 2 = 671,088,640 bytes) stay held from the first
    # MoE layer on, so a later DeltaNet layer's peak is its projections beside them: 8,192 x 49,216 + 671,088,640 =
    # 1,074,266,112 bytes, above an attention layer's 8,192 x 2 x (3 x 2,048 + 4,608) + 671,088,640
    stage, limits = Stage(spec_of(), 2, 1, (0, 48), True), BatchLimits(8192, 1024)
    assert gdn_forward_bytes_per_token(spec_of(), 2) == 2 * (3 * 2048 + (4 * 2048 + 6 * 4096 + 2 * 32) // 2 + 2048)
    assert "add nothing" in VllmProfile("0.11").activation(stage, limits).basis
    later = VllmProfile("0.19").activation(stage, limits).basis
    assert "in_proj_qkvz" in later and "(0.38 GiB" in later  # 8,192 x 49,216 bytes
    assert "forward pass of max_num_batched_tokens=8192 tokens at 2 bytes per element (1.00 GiB)" in later
    assert "beside the fused-MoE caches" in later
    # where the DeltaNet is the widest layer (a dense Qwen3-Next whose MLP is narrowed to 512: the widest other
    # layer is full attention's q/k/v/o, 2 x (3 x 2,048 + (2 x 16 + 2 x 2) x 256) = 30,720 bytes a token, against
    # the DeltaNet's 2 x (3 x 2,048 + 4 x 2,048 + 6 x 4,096 + 64 + 2,048) = 82,048) its projections are the forward
    # pass from v0.19 on, not in v0.11 (the sampler over one sequence is smaller than either); in every release the
    # cuBLAS workspaces PyTorch keeps from the first matrix product are charged beside it (33 MiB off the catalog)
    narrow = spec_of(num_experts=0, num_experts_per_tok=0, mlp_only_layers=list(range(48)), intermediate_size=512)
    narrow_stage, one_sequence = Stage(narrow, 1, 1, (0, 48), False), BatchLimits(8192, 1)
    gdn, other = gdn_forward_bytes_per_token(narrow, 1), 30_720
    assert gdn == 82_048
    rotary = rotary_cache_bytes(narrow)
    assert VllmProfile("0.11").activation(narrow_stage, one_sequence).bytes == 8192 * other + rotary + 33 * 2**20
    assert VllmProfile("0.19").activation(narrow_stage, one_sequence).bytes == 8192 * gdn + rotary + 33 * 2**20


def test_the_rotary_dimensions_come_from_the_partial_rotary_factor() -> None:
    # partial_rotary_factor 0.25 of 256 (vLLM's get_rope: int(head_size x factor)); Qwen3.5 keeps it in
    # rope_parameters; a factor outside (0, 1] is refused naming the key
    assert spec_of().rotary_dim == 64 and spec_of(partial_rotary_factor=0.5).rotary_dim == 128
    assert model_from_hf_config(load_qwen3_5()).rotary_dim == 64
    with pytest.raises(InvalidSpec) as caught:
        spec_of(partial_rotary_factor=1.5)
    assert caught.value.field == "partial_rotary_factor"


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_a_plan_never_promises_more_sequences_or_context_than_vllm_holds(version: str) -> None:
    spec = spec_of()
    result = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 4), Workload(262_144, 1),
                  PlanOptions(weight_format=float_format("bf16"), engine_version=version))
    primary = result.primary
    assert primary.engine_max_concurrency is not None
    assert primary.max_concurrent_sequences == int(primary.engine_max_concurrency) > 1
    # one sequence more than the plan's does not fit in the pool vLLM sizes: its blocks are over the pool's (two
    # state blocks per linear group on 0.33, which runs prefix caching by default: test_hybrid_prefix_caching.py)
    hybrid = hybrid_kv(spec, "bf16", 4, mamba_cache_mode=mamba_cache_mode(version))
    group_block = hybrid.page_bytes() * hybrid.group_size
    assert (primary.max_concurrent_sequences + 1) * hybrid.blocks_per_sequence(262_144) * group_block > \
        primary.kv_pool_bytes >= primary.max_concurrent_sequences * hybrid.blocks_per_sequence(262_144) * group_block
    print(f"vLLM {version}, 4 x H100, 262,144 tokens: {primary.max_concurrent_sequences} sequences, "
          f"engine concurrency {primary.engine_max_concurrency:.2f}, GPU KV cache size {primary.kv_capacity_tokens:,}")


def test_the_longest_context_ends_on_a_whole_attention_block() -> None:
    # 32 sequences on 2 H100s: the longest context is a whole number of 544-token blocks (the states take theirs)
    result = plan(spec_of(), Hardware(get_device("h100-80gb").planning_bytes, 4), Workload(4096, 256),
                  PlanOptions(engine_version="0.19"))
    longest = result.primary.max_context_length
    assert longest is not None and result.primary.context_limited_by == "memory" and longest % 272 == 0
    hybrid = hybrid_kv(spec_of(), "bf16", 4)
    group_block = hybrid.page_bytes() * hybrid.group_size
    pool = result.primary.kv_pool_bytes
    assert 256 * hybrid.blocks_per_sequence(longest) * group_block <= pool
    assert 256 * hybrid.blocks_per_sequence(longest + 1) * group_block > pool


def test_hybrid_layouts_nibble_cannot_make_exact_are_refused_naming_the_field() -> None:
    spec = spec_of()
    h100 = Hardware(get_device("h100-80gb").planning_bytes, 4)
    with pytest.raises(InvalidSpec) as caught:  # stages of 9, 10, 10, 10 and 9 layers: releases group them apart
        plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 5), Workload(4096, 1),
             PlanOptions(pipeline_parallel=5, tensor_parallel=1))
    assert caught.value.field == "parallel.pipeline"
    with pytest.raises(InvalidSpec) as caught:  # v0.11 raises the block from 16 whatever is asked
        plan(spec, h100, Workload(4096, 1), PlanOptions(block_size=32, engine_version="0.11"))
    assert caught.value.field == "kv_cache.block_size"
    assert plan(spec, h100, Workload(4096, 1), PlanOptions(block_size=32, engine_version="0.19")).primary.fits
    with pytest.raises(InvalidSpec) as caught:  # 20 full and 28 linear layers: releases group them differently
        plan(spec_of(layer_types=["full_attention"] * 20 + ["linear_attention"] * 28), h100, Workload(4096, 1))
    assert caught.value.field == "layer_types"


def test_vllm_refuses_tensor_parallel_sizes_the_linear_heads_cannot_follow() -> None:
    profile = VllmProfile()
    assert profile.refusal(spec_of(), 16, 1) is None
    odd = spec_of(linear_num_key_heads=12, linear_num_value_heads=36, num_attention_heads=24, num_key_value_heads=8)
    reason = profile.refusal(odd, 8, 1)
    assert reason is not None and "linear_num_key_heads" in reason
    few_experts = spec_of(num_experts=8, num_experts_per_tok=2)
    reason = profile.refusal(few_experts, 16, 1)
    assert reason is not None and "8 experts" in reason


def test_qwen3_next_gguf_formats_are_refused_naming_the_format() -> None:
    # llama.cpp's converter splits in_proj_qkvz into attn_qkv and attn_gate (typed differently by llama-quantize)
    # and writes the MTP layer as an extra block: not sized, refused
    with pytest.raises(InvalidSpec) as caught:
        plan(spec_of(), Hardware(80 * GIB, 2), Workload(4096, 1), PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))
    assert caught.value.field == "format" and "in_proj_qkvz" in str(caught.value)


# --- checkpoints: the MTP layer set apart, jobs passing through what vLLM keeps at 16 bits -----------------------

def _mtp_tensors(spec: ModelSpec) -> list[HeaderTensor]:
    """Qwen3-Next's multi-token-prediction layer as the checkpoints hold it (mtp.*: vLLM's qwen3_next_mtp.py reads
    fc, the two pre-fc norms, the final norm and one gated full-attention MoE layer)."""
    hidden = spec.hidden_size
    tensors = [HeaderTensor("mtp.fc.weight", "BF16", (hidden, 2 * hidden), 2 * hidden * 2 * hidden)]
    tensors += [HeaderTensor(f"mtp.{name}.weight", "BF16", (hidden,), 2 * hidden)
                for name in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm")]
    full = next(i for i in range(spec.num_layers) if spec.linear_attention and i not in spec.linear_attention.layers)
    for entry in inventory(spec):
        if full in entry.layers and ".linear_attn." not in entry.name:
            for expert in range(entry.per_layer):
                name = entry.name.replace("model.layers.{i}", "mtp.layers.0").replace("{e}", str(expert))
                tensors.append(HeaderTensor(name, "BF16", entry.shape, 2 * entry.elements))
    return tensors


def test_a_qwen3_next_checkpoints_mtp_layer_is_set_apart_and_the_rest_planned() -> None:
    spec = spec_of()
    planned = [HeaderTensor(entry.name.replace("{i}", str(layer)).replace("{e}", str(expert)), "BF16", entry.shape,
                            2 * entry.elements)
               for entry in inventory(spec) for layer in entry.layers or (-1,) for expert in range(entry.per_layer)]
    mtp = _mtp_tensors(spec)
    _scheme, summary = checkpoint_scheme(spec, planned + mtp, mtp_layers=1)
    assert summary.unknown == () and summary.bytes == 2 * TOTAL
    # fc, 3 norms; q/k/v/o, q/k norms, 2 layer norms, router, 512 x 3 experts, shared expert (3) and its gate
    assert summary.mtp_tensors == len(mtp) == 4 + 4 + 2 + 2 + 1 + 512 * 3 + 3 + 1 == 1553
    mtp_parameters = sum(tensor.bytes for tensor in mtp) // 2
    assert mtp_parameters == 1_650_471_424
    print(f"Qwen3-Next-80B-A3B checkpoint: {TOTAL + mtp_parameters:,} parameters with its MTP layer")


TINY = {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "hidden_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "intermediate_size": 256, "vocab_size": 96, "max_position_embeddings": 256, "linear_num_key_heads": 2,
        "linear_num_value_heads": 4, "linear_key_head_dim": 32, "linear_value_head_dim": 32,
        "linear_conv_kernel_dim": 4, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
        "shared_expert_intermediate_size": 128, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "full_attention_interval": 4, "torch_dtype": "bfloat16"}


def test_a_qwen3_next_checkpoint_job_quantizes_what_vllm_quantizes_and_passes_the_rest_through(
        tmp_path: Path) -> None:
    # A small random checkpoint named as Qwen3-Next's are (with its MTP layer), through a compressed-tensors job with
    # the default include/exclude: the linear layers vLLM builds with the checkpoint's quantization config (the
    # DeltaNet's in_proj_qkvz, in_proj_ba, out_proj; q/k/v/o; experts; the shared expert) are quantized, as nibble's
    # INT4 plan prices them; conv1d (3-D), dt_bias, A_log, the norms, the router and shared_expert_gate (vLLM builds
    # them with quant_config=None), embedding, lm_head and the whole mtp.* layer pass through as stored
    spec = model_from_hf_config(TINY)
    rng = np.random.default_rng(0)
    tensors: dict[str, Any] = {}
    expected = set()
    headers = [HeaderTensor(entry.name.replace("{i}", str(layer)).replace("{e}", str(expert)), "BF16", entry.shape,
                            2 * entry.elements)
               for entry in inventory(spec) for layer in entry.layers or (-1,) for expert in range(entry.per_layer)]
    quantized_rows = {entry.name for entry in inventory(spec) if DEFAULT_POLICY.quantizes(entry)}
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                if entry.name in quantized_rows:
                    expected.add(name.removesuffix(".weight"))
    for tensor in [*headers, *_mtp_tensors(spec)]:
        tensors[tensor.name] = (rng.standard_normal(tensor.shape, dtype=np.float32) * 0.05).astype(ml_dtypes.bfloat16)
    write_llama_checkpoint(tmp_path / "src", shards=2, tensors=tensors)
    (tmp_path / "src" / "config.json").write_text(json.dumps(TINY))
    checkpoint = open_checkpoint(tmp_path / "src")
    options = CheckpointOptions()
    plans = plan_checkpoint(checkpoint, options)
    assert {p.tensor.name.removesuffix(".weight") for p in plans if p.quantized} == expected
    reasons = {p.tensor.name: p.reason or "" for p in plans}
    assert reasons["model.layers.0.linear_attn.conv1d.weight"].startswith("3-D tensor")
    assert "multi-token-prediction" in reasons["mtp.layers.0.mlp.experts.0.up_proj.weight"]
    assert "multi-token-prediction" in reasons["mtp.fc.weight"]
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    written = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert set(written["config_groups"]["group_0"]["targets"]) == expected
    assert "mtp.fc" in written["ignore"] and "mtp.layers.0.self_attn.q_proj" in written["ignore"]
    stored: dict[str, Any] = {}
    for shard in sorted((tmp_path / "out").glob("model-*.safetensors")):
        stored.update(read_safetensors(shard))
    for name in ("model.layers.0.linear_attn.conv1d.weight", "model.layers.0.linear_attn.A_log",
                 "model.layers.0.linear_attn.dt_bias", "model.layers.0.linear_attn.norm.weight",
                 "model.layers.0.mlp.gate.weight", "model.layers.0.mlp.shared_expert_gate.weight",
                 "mtp.fc.weight", "lm_head.weight", "model.embed_tokens.weight"):
        np.testing.assert_array_equal(stored[name], tensors[name])


def test_the_plan_says_how_vllm_holds_the_linear_layers_states() -> None:
    result = plan(spec_of(), Hardware(get_device("h100-80gb").planning_bytes, 4), Workload(32_768, 8))
    note = next(warning for warning in result.warnings if "Gated DeltaNet" in warning)
    assert "274,432 bytes" in note and "272 tokens" in note and "278,528 bytes" in note


@pytest.mark.parametrize(("stages", "full", "linear"), [(2, 6, 18), (3, 4, 12), (4, 3, 9), (6, 2, 6), (12, 1, 3)])
def test_pipeline_stages_of_whole_layer_patterns_are_grouped_alike_by_every_release(stages: int, full: int,
                                                                                    linear: int) -> None:
    # v0.11 groups each worker's layers (groups of min(full, linear)); later releases the whole model's (groups of
    # 12, the linear ones layers[i::3]) projected on each worker: the same groups when a stage holds whole 4-layer
    # patterns, here every divisor of 12 stages
    spec = spec_of()
    size = 48 // stages
    for stage in range(stages):
        hybrid = hybrid_kv(spec, "bf16", 1, (stage * size, (stage + 1) * size))
        assert (hybrid.full_layers, hybrid.linear_layers, hybrid.group_size) == (full, linear, full)
        assert (hybrid.full_groups, hybrid.linear_groups, hybrid.block_size()) == (1, 3, 544)
    with pytest.raises(InvalidSpec) as caught:  # layers 0-8 (2 full, 7 linear): v0.11 makes 5 groups of 2, later 4 of 3
        hybrid_kv(spec, "bf16", 1, (0, 9))
    assert caught.value.field == "parallel.pipeline"


def test_vllm_builds_qwen3_nexts_embedding_and_lm_head_on_every_pipeline_stage() -> None:
    # qwen3_next.py: Qwen3NextModel.__init__ creates embed_tokens and Qwen3NextForCausalLM.__init__ the lm_head with
    # no get_pp_group() test (v0.11 and May 2026); the final norm is a PPMissingLayer off the last rank
    spec = spec_of()
    note = VllmProfile().vocabulary_on_every_stage(spec)
    assert note is not None and "qwen3_next.py" in note
    result = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 4), Workload(32_768, 4),
                  PlanOptions(pipeline_parallel=2, tensor_parallel=2))
    first, _, last, _ = result.primary.devices
    vocabulary = 2 * 151936 * 2048 * 2 // 2 + 2048 * 2  # embedding and lm_head split over 2 ranks, the final norm
    assert first.unread_weights_bytes == vocabulary - 151936 * 2048 * 2 // 2
    assert last.unread_weights_bytes == 151936 * 2048 * 2 // 2
    assert result.primary.max_concurrent_sequences == int(result.primary.engine_max_concurrency or 0)


def test_the_qwen3_next_preset_is_its_parsed_config_with_one_mtp_layer() -> None:
    from quant_core.catalog import get_preset_info
    info = get_preset_info("qwen3-next-80b-a3b-instruct")
    assert info.spec == model_from_hf_config(load(), name="qwen3-next-80b-a3b-instruct")
    assert info.mtp_layers == 1 and info.quantization_config is None


# --- Qwen3.5 (dense): the same hybrid language model under text_config, beside a Qwen3-VL vision tower -----------

QWEN3_5_9B = Path(__file__).resolve().parent / "data" / "qwen3_next" / "qwen3.5-9b.json"


def load_qwen3_5() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(QWEN3_5_9B.read_text())
    return config


def test_qwen3_5_counts_what_transformers_builds_and_its_checkpoint_holds() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = load_qwen3_5()
    spec = model_from_hf_config(config)
    hf_config = transformers.AutoConfig.for_model(**{key: value for key, value in config.items()
                                                     if key != "architectures"})
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForImageTextToText.from_config(hf_config)
    built = {name: parameter.numel() for name, parameter in model.named_parameters()}
    count = parameter_count(spec)
    assert sum(built.values()) == count.total == 9_409_813_744
    assert sum(n for name, n in built.items() if "visual" in name) == count.by_role["vision"] == 456_010_480
    names = {row.name.replace("{i}", "0") for row in inventory(spec) if 0 in row.layers}
    assert {name for name in built if name.startswith("model.language_model.layers.0.")} == names
    assert unread_config_keys(config) == ()
    # The published index (Qwen/Qwen3.5-9B at revision c2022362, metadata.total_size 19,306,216,416 bytes, as a
    # public test suite quotes it): every tensor nibble plans at 2 bytes, but A_log and the DeltaNet's gated norm in
    # F32 (as the Qwen3.5 checkpoints store them), plus the 15-tensor MTP layer (mtp.fc, three norms and one gated
    # full-attention layer with its dense MLP) at 2 bytes
    stored = sum(row.count * row.elements * (4 if row.name.endswith(("A_log", "linear_attn.norm.weight")) else 2)
                 for row in inventory(spec))
    hidden, width = 4096, 12288
    mtp = (hidden * 2 * hidden + 3 * hidden + 2 * 16 * 256 * hidden + 2 * 4 * 256 * hidden + hidden * 16 * 256
           + 2 * 256 + 2 * hidden + 3 * hidden * width)
    assert stored + 2 * mtp == 19_306_216_416


def test_qwen3_5_keeps_its_recurrent_state_in_float32_as_its_config_says() -> None:
    # mamba_ssm_dtype float32 (vLLM's Qwen3_5ForConditionalGenerationConfig sets mamba_ssm_cache_dtype from it): conv
    # state 3 x 8,192 x 2 bytes, recurrent state 32 x 128 x 128 x 4 bytes; 8 full-attention layers of 4 kv heads x 256
    spec = model_from_hf_config(load_qwen3_5())
    hybrid = hybrid_kv(spec)
    assert hybrid.state_bytes == 3 * 8192 * 2 + 32 * 128 * 128 * 4 == 2_146_304
    assert hybrid.attention_bytes_per_token == 2 * 4 * 256 * 2
    assert (hybrid.block_size(), hybrid.group_size, hybrid.full_groups, hybrid.linear_groups) == (528, 8, 1, 3)
    bf16_state = model_from_hf_config({**load_qwen3_5(), "text_config": {
        **load_qwen3_5()["text_config"], "mamba_ssm_dtype": "bfloat16"}})
    assert hybrid_kv(bf16_state).state_bytes == 3 * 8192 * 2 + 32 * 128 * 128 * 2


def test_qwen3_5_is_planned_by_the_releases_that_have_it() -> None:
    spec = model_from_hf_config(load_qwen3_5())
    h100 = Hardware(get_device("h100-80gb").planning_bytes, 1)
    result = plan(spec, h100, Workload(32_768, 4), PlanOptions(engine_version="0.19"))
    assert result.primary.fits and result.refusal is None
    assert result.primary.max_concurrent_sequences == int(result.primary.engine_max_concurrency or 0)
    refused = plan(spec, h100, Workload(32_768, 4), PlanOptions(engine_version="0.11")).refusal
    assert refused is not None and "Qwen3.5" in refused
    # qwen3_5.py: the embedding on every stage, the norm and lm_head on the last only: the second stage holds an
    # embedding it never runs (248,320 x 4,096 x 2 bytes)
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 2), Workload(4096, 1),
                  PlanOptions(pipeline_parallel=2, tensor_parallel=1))
    assert [device.unread_weights_bytes for device in staged.primary.devices] == [0, 248320 * 4096 * 2]
    with pytest.raises(InvalidSpec) as caught:
        plan(spec, h100, Workload(4096, 1), PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))
    assert caught.value.field == "format"
    with pytest.raises(InvalidSpec) as caught:  # text_config keys are named where they are
        model_from_hf_config({**load_qwen3_5(), "text_config": {**load_qwen3_5()["text_config"],
                                                                "attention_bias": True}})
    assert caught.value.field == "text_config.attention_bias"


def test_a_qwen3_5_checkpoint_job_passes_the_vision_tower_and_mtp_layer_through(tmp_path: Path) -> None:
    # A small random Qwen3.5 checkpoint as its checkpoints name it (model.language_model.*, the DeltaNet projections
    # apart, model.visual.*, mtp.*): the language model's linear layers are quantized as the INT4 plan prices them;
    # the tower (nibble plans it at 16 bits), the MTP layer, conv1d, A_log, dt_bias and the norms pass through
    text = {key: value for key, value in TINY.items() if key not in ("architectures", "model_type", "num_experts",
                                                                    "num_experts_per_tok", "moe_intermediate_size",
                                                                    "shared_expert_intermediate_size",
                                                                    "decoder_sparse_step", "mlp_only_layers")}
    config = {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
              "text_config": {**text, "mamba_ssm_dtype": "float32", "mtp_num_hidden_layers": 1},
              "vision_config": {"depth": 1, "hidden_size": 128, "num_heads": 4, "intermediate_size": 128,
                                "out_hidden_size": 128, "num_position_embeddings": 16}}
    spec = model_from_hf_config(config)
    rng = np.random.default_rng(0)
    tensors: dict[str, Any] = {}
    expected = set()
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for copy in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(copy)).replace("{v}", str(copy))
                tensors[name] = (rng.standard_normal(entry.shape, dtype=np.float32) * 0.05).astype(ml_dtypes.bfloat16)
                if DEFAULT_POLICY.quantizes(entry):
                    expected.add(name.removesuffix(".weight"))
    for name, shape in (("mtp.fc.weight", (128, 256)), ("mtp.norm.weight", (128,)),
                        ("mtp.layers.0.self_attn.q_proj.weight", (256, 128)),
                        ("mtp.layers.0.mlp.up_proj.weight", (256, 128))):
        tensors[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(ml_dtypes.bfloat16)
    write_llama_checkpoint(tmp_path / "src", shards=2, tensors=tensors)
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    checkpoint = open_checkpoint(tmp_path / "src")
    plans = plan_checkpoint(checkpoint, CheckpointOptions())
    assert {p.tensor.name.removesuffix(".weight") for p in plans if p.quantized} == expected
    reasons = {p.tensor.name: p.reason or "" for p in plans}
    assert "vision tower" in reasons["model.visual.blocks.0.attn.qkv.weight"]
    assert "multi-token-prediction" in reasons["mtp.layers.0.self_attn.q_proj.weight"]
    assert "model.language_model.layers.0.linear_attn.in_proj_qkv" in expected
    assert "model.language_model.layers.0.linear_attn.in_proj_b" in expected
