"""A 16-bit MLA cache is planned in the KV blocks of the MLA backend vLLM picks, not at vLLM's default 16.

Read from each release's code (`quant_core.engines.vllm_attention`):

* 0.11: platforms/cuda.py ``check_and_update_config`` forces 64-token blocks "for FlashMLA backend" on 9.x
  (``is_flashmla_supported``: Hopper) and 128 "for CUTLASS_MLA backend" on 10.0, whatever --block-size says;
  ``get_attn_backend_cls`` then runs FlashMLA / CUTLASS MLA there and Triton MLA elsewhere (FlashAttention MLA needs
  FA3 on 9.x, where FlashMLA comes first), at the requested block.
* 0.19 and 0.33: ``_get_backend_priorities`` puts FLASH_ATTN_MLA first off 10.x (``supports_compute_capability``:
  9.x; ``supported_kv_cache_dtypes`` auto/float16/bfloat16; kernel blocks ``MultipleOf(16)``, so its preferred block
  is the default 16), FLASHINFER_MLA first on 10.x (kernel blocks 32 and 64: ``get_preferred_block_size`` takes 32,
  which platforms/interface.py ``update_block_size_for_backend`` sets when --block-size is not given), and
  TRITON_MLA (``MultipleOf(16)``) where neither runs: 7.x, 8.x, and 12.x (0.33 lists TRITON_MLA alone there).

vLLM logs ``GPU KV cache size`` as num_blocks x block (0.11, 0.19) or int(num_blocks / ceil(L / block) x L) (0.33),
with num_blocks = available bytes // (block x bytes per token) (v1/core/kv_cache_utils.py), and reserves
ceil(L / block) blocks a request of L tokens: the block moves the tokens, the concurrency and the longest context.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from quant_core.catalog import get_device, get_preset_info
from quant_core.engines.vllm_attention import kv_backend
from quant_core.engines.vllm_refusals import kv_cache_refusal
from quant_core.formats import float_format
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config
from quant_core.specs import ModelSpec

#: DeepSeek-V2-Lite: 27 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes a token
V2_LITE_BYTES_PER_TOKEN = 27 * 576 * 2
#: DeepSeek-V3: 61 layers x 576 x 2 bytes a token
V3_BYTES_PER_TOKEN = 61 * 576 * 2
CONTEXT = 4100  # 257 blocks of 16, 129 of 32, 65 of 64, 33 of 128

LOGS = Path(__file__).parent / "data" / "vllm_logs.json"


def _cdiv(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


# --- the backend and its block, release x device capability ------------------------------------------------------

#: (backend, block vLLM sets when --block-size is not given; None: the default 16) per release and capability
_BACKENDS: dict[str, dict[tuple[int, int], tuple[str, int | None]]] = {
    "0.11": {(7, 0): ("TRITON_MLA", None), (7, 5): ("TRITON_MLA", None), (8, 0): ("TRITON_MLA", None),
             (8, 6): ("TRITON_MLA", None), (8, 9): ("TRITON_MLA", None), (9, 0): ("FLASHMLA", 64),
             (10, 0): ("CUTLASS_MLA", 128), (12, 0): ("TRITON_MLA", None)},
    "0.19": {(7, 0): ("TRITON_MLA", None), (7, 5): ("TRITON_MLA", None), (8, 0): ("TRITON_MLA", None),
             (8, 6): ("TRITON_MLA", None), (8, 9): ("TRITON_MLA", None), (9, 0): ("FLASH_ATTN_MLA", None),
             (10, 0): ("FLASHINFER_MLA", 32), (12, 0): ("TRITON_MLA", None)},
}
_BACKENDS["0.33"] = _BACKENDS["0.19"]


@pytest.mark.parametrize("model", ["deepseek-v2-lite", "deepseek-v3"])
@pytest.mark.parametrize(("release", "capability", "backend", "block"), [
    pytest.param(release, capability, backend, block, id=f"{release}-{capability[0]}.{capability[1]}")
    for release, table in _BACKENDS.items() for capability, (backend, block) in table.items()])
def test_a_16_bit_mla_cache_runs_on_the_mla_backend_vllm_picks_at_its_block(
        model: str, release: str, capability: tuple[int, int], backend: str, block: int | None) -> None:
    found = kv_backend(release, get_preset_info(model).spec, "auto", capability)
    assert found is not None and (found.backend, found.block_size) == (backend, block), found


def test_0_11_forces_flashmla_and_cutlass_mla_blocks_over_a_given_block_size() -> None:
    # check_and_update_config sets block_size = 64 / 128 whenever it differs, a given --block-size included
    spec = get_preset_info("deepseek-v2-lite").spec
    for capability, block in (((9, 0), 64), ((10, 0), 128)):
        assert kv_cache_refusal("0.11", spec, "bf16", capability, 32).block_size == block
    assert kv_cache_refusal("0.11", spec, "bf16", (8, 0), 32).block_size is None


def test_a_given_block_is_kept_by_0_19_where_the_mla_backend_takes_it() -> None:
    spec = get_preset_info("deepseek-v2-lite").spec
    # FLASHINFER_MLA pages multiples of 32 or 64; FLASH_ATTN_MLA any multiple of 16
    assert kv_cache_refusal("0.19", spec, "bf16", (10, 0), 64).block_size is None
    assert kv_cache_refusal("0.19", spec, "bf16", (9, 0), 48).block_size is None
    # a multiple of 16 FLASHINFER_MLA and CUTLASS_MLA cannot page leaves TRITON_MLA at that block
    found = kv_backend("0.19", spec, "auto", (10, 0), requested_block=48)
    assert found is not None and (found.backend, found.block_size) == ("TRITON_MLA", None)


@pytest.mark.parametrize("release", ["0.19", "0.33"])
def test_a_block_no_mla_backend_pages_is_refused(release: str) -> None:
    refused = kv_cache_refusal(release, get_preset_info("deepseek-v2-lite").spec, "bf16", (9, 0), 8)
    assert refused.refusal is not None
    assert "No valid attention backend found" in refused.refusal and "multiple of 16" in refused.refusal


def test_a_dense_models_16_bit_cache_is_not_decided_here() -> None:
    assert kv_backend("0.19", get_preset_info("qwen3-8b").spec, "auto", (10, 0)) is None
    assert kv_cache_refusal("0.11", get_preset_info("qwen3-8b").spec, "bf16", (9, 0), 16).block_size is None


# --- what the block does to the plan: DeepSeek-V2-Lite at 16 bits on one device ----------------------------------

def _plan_v2_lite(device_id: str, release: str, sequences: int = 1) -> Plan:
    device = get_device(device_id)
    return plan(get_preset_info("deepseek-v2-lite").spec, Hardware(device.planning_bytes, 1, device.id, device.name),
                Workload(CONTEXT, sequences),
                PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype="bf16", engine_version=release,
                            memory_utilization=0.9))


def _logged_tokens(release: str, num_blocks: int, block: int) -> int:
    """vLLM's "GPU KV cache size" for a full-attention model (v1/core/kv_cache_utils.py): num_blocks x block up to
    0.19, int(max_concurrency x max_model_len) in 0.33."""
    if release == "0.33":
        return int(num_blocks / _cdiv(CONTEXT, block) * CONTEXT)
    return num_blocks * block


@pytest.mark.parametrize(("release", "device_id", "block"), [
    ("0.11", "h100-80gb", 64), ("0.11", "a100-80gb", 16), ("0.11", "b200", 128),
    ("0.19", "h100-80gb", 16), ("0.19", "a100-80gb", 16), ("0.19", "b200", 32),
    ("0.33", "h100-80gb", 16), ("0.33", "a100-80gb", 16), ("0.33", "b200", 32),
])
def test_deepseek_v2_lite_at_16_bits_is_counted_in_vllms_blocks(release: str, device_id: str, block: int) -> None:
    answer = _plan_v2_lite(device_id, release)
    assert answer.options.block_size == block
    assert answer.kv_bytes_per_token == V2_LITE_BYTES_PER_TOKEN
    # one request of 4,100 tokens reserves ceil(4100 / block) whole blocks
    assert answer.kv_cache_bytes == _cdiv(CONTEXT, block) * block * V2_LITE_BYTES_PER_TOKEN
    primary = answer.primary
    num_blocks = primary.kv_pool_bytes // (block * V2_LITE_BYTES_PER_TOKEN)
    assert primary.kv_capacity_tokens == _logged_tokens(release, num_blocks, block)
    assert primary.engine_max_concurrency == pytest.approx(num_blocks / _cdiv(CONTEXT, block))
    assert primary.max_concurrent_sequences == num_blocks // _cdiv(CONTEXT, block)
    # the longest context for 64 sequences: each holds num_blocks // 64 whole blocks
    many = _plan_v2_lite(device_id, release, 64).primary
    assert many.max_context_length == num_blocks // 64 * block
    noted = [warning for warning in answer.warnings if "-token KV blocks" in warning]
    assert len(noted) == (0 if block == 16 else 1)


@pytest.mark.parametrize(("release", "device_id", "tokens", "sequences", "context"), [
    # pinned from the hand derivation above at this tree's KV pools (bytes the block does not change): the 16-token
    # figures before were 1,310,928 tokens / 318 sequences / 20,480; 4,395,024 / 1,068 / 68,672;
    # 4,454,112 / 1,083 / 69,584; 4,416,162 / 1,077 / 69,200; 0.33 was 4,399,045 / 1,072 / 69,184 (138,408 blocks)
    # with a fixed 0.39 GiB graph estimate, now 386 MiB + (27 layers x 4.25 MiB + deepseek_v2's 709 MiB) x 83 / 51
    # on 10.0's 83 capture sizes, 1.69 GiB (TRITON_MLA: no FlashInfer workspace); then 13,111,296 bytes less pool
    # for Model Runner V2's structured-output bitmask, 1024 x (ceil(102,400 / 32) + 1) x 4 (4,354,613 tokens, 137,011
    # blocks before)
    ("0.11", "h100-80gb", 1_310_912, 315, 20_480),  # 20,483 blocks of 64
    ("0.11", "b200", 4_395_008, 1_040, 68_608),  # 34,336 blocks of 128
    ("0.19", "b200", 4_454_112, 1_079, 69_568),  # 139,191 blocks of 32
    ("0.33", "b200", 4_354_200, 1_062, 68_480),  # 136,998 blocks of 32
])
def test_deepseek_v2_lite_at_16_bits_pinned_figures(release: str, device_id: str, tokens: int, sequences: int,
                                                     context: int) -> None:
    answer = _plan_v2_lite(device_id, release)
    assert (answer.primary.kv_capacity_tokens, answer.primary.max_concurrent_sequences) == (tokens, sequences)
    assert _plan_v2_lite(device_id, release, 64).primary.max_context_length == context


def test_deepseek_v2_lite_on_an_rtx_5090_stays_at_16_token_blocks_on_triton_mla() -> None:
    spec = get_preset_info("deepseek-v2-lite").spec
    for release in ("0.11", "0.19", "0.33"):
        backend = kv_cache_refusal(release, spec, "bf16", (12, 0), 16)
        assert backend.refusal is None and backend.block_size is None
        assert _plan_v2_lite("rtx-5090", release).options.block_size == 16


def test_the_0_19_deepseek_v2_lite_h100_log_pages_16_token_blocks() -> None:
    # llm-d-planner's vLLM 0.19.0 run: 'GPU KV cache size: 1,505,552 tokens' is 94,097 blocks of 16, not a multiple
    # of 64: FLASH_ATTN_MLA, not FlashMLA, runs a 16-bit cache on Hopper from 0.19
    logs = {entry["id"]: entry for entry in json.loads(LOGS.read_text())["logs"]}
    logged = logs["llmdp-v0.19-deepseek-v2-lite-tp1"]
    assert logged["kv_cache_tokens"] == 1_505_552 and logged["kv_cache_tokens"] % 64 == 16
    assert _plan_v2_lite("h100-80gb", "0.19").options.block_size == 16


# --- DeepSeek-V3 as shipped (block fp8) on eight devices ---------------------------------------------------------

@pytest.mark.parametrize(("release", "device_id", "block", "tokens", "sequences"), [
    # 16-token figures before: 638,432 / 155; 630,576 / 153; 616,691 / 150 on H200; 1,130,016 / 274;
    # 1,162,048 / 282; 1,146,372 / 279 on B200.  0.33 was 616,691 / 150 and 1,141,929 / 278 with a fixed 0.39 GiB graph
    # estimate, now 386 MiB + (61 layers x 4.25 MiB + deepseek_v3's 709 MiB) x sizes / 51: 1.32 GiB at the 51 sizes
    # of 9.0, 1.92 GiB at the 83 of 10.0.  Then q_a_proj and kv_a_proj_with_mqa whole on every rank (ReplicatedLinear):
    # 61 x 13,249,796 = 808,237,556 bytes a rank more weights, 11,501 tokens fewer (638,400 / 153, 630,576 / 153,
    # 602,492 / 146; 1,129,984 / 267, 1,162,048 / 281, 1,118,759 / 272 before).  0.33 on B200s runs the block-fp8
    # experts on FlashInfer 0.7.2's TRT-LLM kernels, not Triton's: the sampler pass holds their 8192 x 7168 bf16
    # output, not Triton's 1,879,048,192-byte workspace, 1,761,607,680 bytes a rank more KV cache (1,107,349 / 270
    # before).  Then the bf16 copy of each fp8 kv_b_proj MLA's decode keeps (mla_attention.py
    # process_weights_after_loading: 512 x 16 heads x (128 + 128) x 2 = 4,194,304 bytes a layer, 61 layers):
    # 255,852,544 bytes a rank less KV pool (626,880 / 150, 619,072 / 150, 591,022 / 144; 1,118,464 / 264,
    # 1,150,528 / 278, 1,132,235 / 276 before).  Then 0.11's non-torch memory at 8 ranks, 1,989 MiB rather than TP=2's
    # 564 (vllm_releases._NON_TORCH_V0_11: NCCL's NVLink SHARP buffers and PyTorch's communicator, set up inside the
    # profiling run above two GPUs, from vLLM's Kimi-K2-Thinking recipe run): 1,425 MiB a rank less KV pool, 333
    # blocks of 64 on H200 and 167 of 128 on B200 (623,296 / 149 and 1,114,880 / 263 before).  Then on 10.x (0.19,
    # 0.33) DeepGEMM's packed UE8M0 scales of the linear layers (transform_sf_into_required_layout: 21,329,040 bytes a
    # rank beyond the checkpoint's, test_deep_gemm_requant): 9 blocks of 32 fewer (35,840 -> 35,831 and
    # 35,510 -> 35,501; 1,146,880 / 277 and 1,128,612 / 275 before).  Then 0.33's structured-output bitmask (Model
    # Runner V2's StructuredOutputsWorker, 1024 x (ceil(129,280 / 32) + 1) x 4 = 16,551,936 bytes a last-stage rank):
    # 36,819 -> 36,804 blocks of 16 on H200, 35,501 -> 35,494 of 32 on B200 (587,384 and 1,128,326 tokens before)
    ("0.11", "h200", 64, 601_984, 144), ("0.19", "h200", 16, 615_424, 149), ("0.33", "h200", 16, 587_145, 143),
    ("0.11", "b200", 128, 1_093_504, 258), ("0.19", "b200", 32, 1_146_592, 277), ("0.33", "b200", 32, 1_128_103, 275),
])
def test_deepseek_v3_at_16_bit_kv_on_eight_devices_is_counted_in_vllms_blocks(
        release: str, device_id: str, block: int, tokens: int, sequences: int) -> None:
    info = get_preset_info("deepseek-v3")
    assert info.quantization_config is not None
    scheme = scheme_from_quantization_config(info.quantization_config)
    device = get_device(device_id)
    answer = plan(info.spec, Hardware(device.planning_bytes, 8, device.id, device.name), Workload(CONTEXT, 1),
                  PlanOptions(scheme=scheme, shipped=scheme, engine_version=release))
    assert answer.kv_cache_dtype == "bf16" and answer.options.block_size == block
    assert answer.kv_cache_bytes == _cdiv(CONTEXT, block) * block * V3_BYTES_PER_TOKEN
    primary = answer.primary
    num_blocks = primary.kv_pool_bytes // (block * V3_BYTES_PER_TOKEN)
    assert primary.kv_capacity_tokens == _logged_tokens(release, num_blocks, block) == tokens
    assert primary.max_concurrent_sequences == num_blocks // _cdiv(CONTEXT, block) == sequences


@pytest.mark.parametrize(("release", "blocks"), [("0.11", "64-token blocks on 9.x"),
                                                 ("0.19", "32-token blocks on 10.x"),
                                                 ("0.33", "32-token blocks on 10.x")])
def test_a_device_of_unknown_capability_is_planned_at_the_requested_block_and_told_vllms(release: str,
                                                                                         blocks: str) -> None:
    answer = plan(get_preset_info("deepseek-v2-lite").spec, Hardware(80 * (1 << 30), 1, None, "custom GPU", None),
                  Workload(CONTEXT, 1), PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype="bf16",
                                                    engine_version=release))
    assert answer.options.block_size == 16 and answer.refusal is None
    assert any("compute capability is not known" in warning and blocks in warning
               and "counts it in 16-token blocks" in warning for warning in answer.warnings)


# --- below 8.0 no release runs an MLA model: its prefill is FlashAttention's --------------------------------------

@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
@pytest.mark.parametrize("device_id", ["t4", "v100-32gb"])
def test_an_mla_model_is_refused_below_8_0_for_its_flashattention_prefill(release: str, device_id: str) -> None:
    # Triton MLA would decode it, but 0.11's and 0.19's MLACommonImpl and 0.33's get_mla_prefill_backend_cls run the
    # prefill on vllm_flash_attn's varlen kernel off 10.x, which raises "FlashAttention only supports Ampere GPUs or
    # newer" (vllm#8189) below 8.0; public: vllm#14016 (DeepseekV3ForCausalLM on a 2080 Ti, 7.5, V0, 2025-02)
    device = get_device(device_id)
    answer = plan(get_preset_info("deepseek-v2-lite").spec, Hardware(device.planning_bytes, 1, device.id, device.name),
                  Workload(CONTEXT, 1), PlanOptions(weight_format=float_format("fp16"), kv_cache_dtype="fp16",
                                                    engine_version=release))
    assert answer.refusal is not None and not answer.fits
    assert "FlashAttention only supports Ampere GPUs or newer" in answer.refusal
    assert all(not plan_.fits for plan_ in answer.comparison.values())
    a10 = get_device("a10")  # 8.6: the same prefill runs
    on_ampere = plan(get_preset_info("deepseek-v2-lite").spec, Hardware(a10.planning_bytes, 1, a10.id, a10.name),
                     Workload(CONTEXT, 1), PlanOptions(weight_format=float_format("bf16"), engine_version=release))
    assert on_ampere.refusal is None



@pytest.mark.parametrize(("field", "grown", "per_layer"), [
    # q_lora_rank 1536 -> 1664: q_a_proj gains 128 x 7168 rows, whole on each rank; q_b_proj 128 columns of its
    # 24,576 rows, half on each; q_a_layernorm 128 weights, whole (bf16)
    ("q_lora_rank", 128, 128 * 7168 * 2 + 24_576 * 128 * 2 // 2 + 128 * 2),
    # kv_lora_rank 512 -> 576: kv_a_proj_with_mqa gains 64 x 7168 rows, whole; kv_b_proj 64 columns of its 32,768
    # rows, half; kv_a_layernorm 64 weights, whole
    ("kv_lora_rank", 64, 64 * 7168 * 2 + 32_768 * 64 * 2 // 2 + 64 * 2),
])
def test_every_rank_holds_mlas_down_projections_whole(field: str, grown: int, per_layer: int) -> None:
    # deepseek_v2.py (v0.11, v0.19, v0.33), DeepseekV2MLAAttention: q_a_proj and kv_a_proj_with_mqa are
    # ReplicatedLinear (fused as fused_qkv_a_proj with disable_tp=True where the query is compressed), q_b_proj and
    # kv_b_proj column-parallel: DeepSeek-V3 at bf16 on two ranks
    spec = get_preset_info("deepseek-v3").spec
    larger = replace(spec, **{field: getattr(spec, field) + grown})
    options = PlanOptions(weight_format=float_format("bf16"))

    def rank_weights(model: ModelSpec) -> int:
        return plan(model, Hardware(141 << 30, 2), Workload(4096, 1), options).primary.devices[0].weights_bytes

    assert rank_weights(larger) - rank_weights(spec) == 61 * per_layer
