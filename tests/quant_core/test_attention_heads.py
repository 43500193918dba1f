"""The attention backend vLLM picks for heads off the common path, and the KV block it pages them in.

Read from each release's code (`quant_core.engines.vllm_attention`):

* MLA: vLLM hands an MLA model's backends its latent head, kv_lora_rank + qk_rope_head_dim (``get_head_size``).
  0.11's MLACommonMetadata, every MLA backend's, validates 576 alone ("Head size ... is not supported by MLACommon.
  Supported head sizes are: [576]", v1/attention/backends/mla/common.py).  0.19's MLACommonBackend lists 320 and 576
  (0.33's 320, 512 and 576) for FlashMLA, FlashInfer MLA and CUTLASS MLA (model_executor/layers/attention/
  mla_attention.py get_supported_head_sizes); 0.33's FlashAttention MLA lists 576 alone (flashattn_mla.py); Triton
  MLA lists none, so takes any (triton_mla.py), and ``validate_configuration``'s "head_size not supported" walks
  ``_get_backend_priorities`` on to it.
* Multimodal-prefix models (Gemma 3's ``gemma3``, in vLLM's MM_PREFIX_LM_MODELS): every attention layer asks for
  ``use_mm_prefix``.  0.19: FLASH_ATTN and FLASHINFER have no supports_mm_prefix, TRITON_ATTN has.  0.33: on 10.x
  TRITON_FLASHINFER first for heads of 256 and 512, whose only kernel block is 64 (triton_flashinfer.py
  ``kernel_block_sizes=(64,)``; ``get_preferred_block_size`` of the default 16 gives 64, which
  platforms/interface.py ``update_block_size_for_backend`` sets); on 9.x TRITON_FLASH_ATTN (Triton + FlashAttention 3,
  kernel blocks MultipleOf(16)); FlashAttention 4 on 10.x for heads up to 128; Triton elsewhere, whose fp8 cache needs
  fp8e4nv (8.9).
* Text-only models with heads of 256 (Gemma 2 9B, Gemma 3 1B): 0.33's FlashAttention 4 head-256 kernel pages 128
  tokens (fa_utils.py FA4_HD256_PAGE_SIZE) but FLASHINFER, first on 10.x, takes those heads, and FA4 is not the
  default on 11.x: the block stays vLLM's default 16 on every device.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import get_device, get_preset_info, list_presets
from quant_core.engines.vllm_attention import kv_backend, kv_requirement, mla_latent_head, mla_latent_refusal
from quant_core.engines.vllm_refusals import kv_cache_refusal
from quant_core.formats import float_format
from quant_core.hf_config import model_from_hf_config
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec

CONTEXT = 4100
CAPABILITIES = ((8, 0), (8, 9), (9, 0), (10, 0), (11, 0), (12, 0))


def _cdiv(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _plan(spec: ModelSpec, device_id: str, release: str, kv_cache_dtype: str = "bf16") -> Plan:
    device = get_device(device_id)
    return plan(spec, Hardware(device.planning_bytes, 1, device.id, device.name), Workload(CONTEXT, 1),
                PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype=kv_cache_dtype, engine_version=release,
                            memory_utilization=0.9))


# --- MLA: the latent head ---------------------------------------------------------------------------------------

V2_LITE = get_preset_info("deepseek-v2-lite").spec
#: kv_lora_rank 256 + qk_rope_head_dim 32: a latent no MLA backend but Triton MLA lists
LATENT_288 = replace(V2_LITE, name="mla-288", kv_lora_rank=256, qk_rope_head_dim=32, head_dim=160)
#: kv_lora_rank 256 + qk_rope_head_dim 64: listed by MLACommonBackend, not by 0.33's FlashAttention MLA
LATENT_320 = replace(V2_LITE, name="mla-320", kv_lora_rank=256)


def test_the_catalogs_mla_models_have_the_576_latent_every_mla_backend_takes() -> None:
    mla = [preset.spec for preset in list_presets() if preset.spec.is_mla]
    assert {spec.name for spec in mla} >= {"deepseek-v2-lite", "deepseek-v3", "deepseek-v3.2", "glm-5.1"}
    for spec in mla:
        assert mla_latent_head(spec) == 576 and mla_latent_refusal("0.11", spec) is None


@pytest.mark.parametrize("release", ["0.19", "0.33"])
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_a_latent_head_only_triton_mla_lists_runs_on_triton_mla_at_the_requested_block(
        release: str, capability: tuple[int, int]) -> None:
    # was FLASH_ATTN_MLA on 9.x and FLASHINFER_MLA at 32 tokens on 10.x, backends whose validate_configuration says
    # "head_size not supported" for 288
    found = kv_backend(release, LATENT_288, "auto", capability)
    assert found is not None and (found.backend, found.block_size) == ("TRITON_MLA", None), found
    assert "latent head of 288" in found.basis
    fp8 = kv_backend(release, LATENT_288, "fp8_e4m3", capability)
    assert fp8 is not None
    assert fp8.backend == ("TRITON_MLA" if capability >= (8, 9) else None), fp8  # Triton's fp8e4nv from 8.9


@pytest.mark.parametrize(("release", "capability", "backend", "block"), [
    ("0.19", (9, 0), "FLASH_ATTN_MLA", None),  # 0.19's FlashAttention MLA inherits [320, 576]
    # FlashInfer's trtllm-gen MLA runs 256 + 64 ("smaller_mla_dimensions", flashinfer 0.6.6 and 0.7.2.post1)
    ("0.19", (10, 0), "FLASHINFER_MLA", 32), ("0.33", (10, 0), "FLASHINFER_MLA", 32),
    ("0.33", (8, 0), "TRITON_MLA", None),
], ids=["0.19-9.0", "0.19-10.0", "0.33-10.0", "0.33-8.0"])
def test_a_320_latent_runs_where_the_mla_backends_list_it(release: str, capability: tuple[int, int], backend: str,
                                                          block: int | None) -> None:
    found = kv_backend(release, LATENT_320, "auto", capability)
    assert found is not None and (found.backend, found.block_size) == (backend, block), found


@pytest.mark.parametrize(("release", "spec", "capability", "cache_dtype", "raises"), [
    # 0.33's FlashAttention MLA lists 576 alone: FLASHMLA is picked for a 16-bit cache of a 320 latent on Hopper,
    # and for any fp8 one there (FlashAttention MLA takes no fp8), and its kernel takes 576 (or 512) only
    ("0.33", LATENT_320, (9, 0), "auto", "Only head_size_k == 576 or 512 is supported"),
    ("0.19", LATENT_320, (9, 0), "fp8_e4m3", "Only head_size_k == 576 or 512 is supported"),
    # FlashInfer MLA refuses qk_nope_head_dim 96 (supports_combination): CUTLASS MLA, whose decode asserts 512 + 64
    ("0.19", replace(LATENT_320, qk_nope_head_dim=96, head_dim=160), (10, 0), "auto", "D_latent == 512"),
    # 288 + 32 sums to 320, which FlashInfer MLA lists, but its kernel runs 512 + 64 and 256 + 64 only
    ("0.33", replace(LATENT_320, kv_lora_rank=288, qk_rope_head_dim=32, head_dim=160), (10, 0), "auto",
     "Unsupported MLA dimensions"),
], ids=["0.33-flashmla-16bit", "0.19-flashmla-fp8", "0.19-cutlass", "0.33-flashinfer-288+32"])
def test_a_latent_vllm_sends_to_a_kernel_that_does_not_run_it_is_refused(
        release: str, spec: ModelSpec, capability: tuple[int, int], cache_dtype: str, raises: str) -> None:
    # was planned on that backend (FLASHMLA at 64 tokens, CUTLASS MLA at 128, FlashInfer MLA at 32)
    found = kv_backend(release, spec, cache_dtype, capability)
    assert found is not None and found.backend is None and raises in found.basis, found
    refused = kv_cache_refusal(release, spec, "bf16" if cache_dtype == "auto" else "fp8", capability, 16)
    assert refused.refusal is not None and "--attention-backend TRITON_MLA" in refused.refusal


@pytest.mark.parametrize("capability", [None, (8, 0), (9, 0), (10, 0), (12, 0)])
@pytest.mark.parametrize("spec", [LATENT_288, LATENT_320], ids=["288", "320"])
def test_0_11_refuses_a_latent_head_other_than_576_on_every_device(capability: tuple[int, int] | None,
                                                                    spec: ModelSpec) -> None:
    # was planned (FlashMLA's 64 on 9.x, CUTLASS MLA's 128 on 10.0, Triton MLA elsewhere)
    refused = kv_cache_refusal("0.11", spec, "bf16", capability, 16)
    assert refused.refusal is not None
    assert f"Head size {mla_latent_head(spec)} is not supported by MLACommon" in refused.refusal
    assert "Supported head sizes are: [576]" in refused.refusal
    assert kv_cache_refusal("0.19", spec, "bf16", capability, 16).refusal is None


@pytest.mark.parametrize(("release", "device_id", "before", "after"), [
    # the 288 latent moves off FlashInfer MLA's 32 on a B200 (0.19: 8,917,568 tokens / 2,160 sequences at 32;
    # 0.33: 8,807,372 / 2,148) to Triton MLA's 16; on an H100 it stays 16 (FLASH_ATTN_MLA before, TRITON_MLA now)
    ("0.19", "b200", 32, 16), ("0.33", "b200", 32, 16), ("0.19", "h100-80gb", 16, 16),
])
def test_a_288_latent_model_is_counted_in_triton_mlas_blocks(release: str, device_id: str, before: int,
                                                              after: int) -> None:
    answer = _plan(LATENT_288, device_id, release)
    per_token = 27 * 288 * 2  # 27 layers x the latent x 2 bytes
    assert answer.refusal is None and answer.kv_bytes_per_token == per_token
    assert answer.options.block_size == after
    assert answer.kv_cache_bytes == _cdiv(CONTEXT, after) * after * per_token
    assert not any("-token KV blocks" in warning for warning in answer.warnings)


def test_a_288_latent_model_is_refused_under_0_11_and_pinned_under_0_19_and_0_33_on_a_b200() -> None:
    assert _plan(LATENT_288, "b200", "0.11").refusal is not None
    # pinned: num_blocks = kv pool // (16 x 15,552), GPU KV cache size num_blocks x 16 (0.19) or
    # int(num_blocks / 257 x 4,100) (0.33); before, at 32-token blocks: 8,917,568 / 2,160 and 8,807,372 / 2,148;
    # 0.33 was 8,841,642 / 2,156 with a fixed 0.39 GiB graph estimate, 1.24 GiB now (83 capture sizes on 10.0 and
    # FlashInfer's workspace, which the estimate measures: `vllm.cuda_graph_estimate`); 0.33 then 13,111,296 bytes
    # less pool for Model Runner V2's structured-output bitmask, 1024 x (ceil(102,400 / 32) + 1) x 4 (8,752,447 / 2,134
    # before)
    for release, tokens, sequences in (("0.19", 8_917_584, 2_168), ("0.33", 8_751_601, 2_134)):
        primary = _plan(LATENT_288, "b200", release).primary
        assert (primary.kv_capacity_tokens, primary.max_concurrent_sequences) == (tokens, sequences)


def test_a_320_latent_on_an_h100_is_refused_under_0_33_and_planned_under_0_19() -> None:
    # before: FLASH_ATTN_MLA at 16 tokens under both, 2,420,292 tokens / 590 sequences under 0.33
    answer = _plan(LATENT_320, "h100-80gb", "0.33")
    assert answer.refusal is not None and not answer.fits and "FLASHMLA" in answer.refusal
    kept = _plan(LATENT_320, "h100-80gb", "0.19")
    assert kept.refusal is None and kept.options.block_size == 16
    assert (kept.primary.kv_capacity_tokens, kept.primary.max_concurrent_sequences) == (2_471_360, 601)


def test_an_unknown_device_is_told_a_288_latent_runs_on_triton_mla_alone() -> None:
    said = kv_requirement("0.33", LATENT_288, "auto")
    assert said is not None and "TRITON_MLA alone" in said and "latent head of 288" in said


# --- multimodal-prefix models: Gemma 3 with its vision tower -------------------------------------------------------

#: google/gemma-3-4b-it's config.json (keys abridged): heads of 256, 29 of 34 layers sliding over 1,024 tokens
GEMMA_3_4B_IT = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
    "text_config": {"head_dim": 256, "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_attention_heads": 8, "num_hidden_layers": 34, "num_key_value_heads": 4,
                    "query_pre_attn_scalar": 256, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024, "vocab_size": 262208},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type":
                      "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
                      "vision_use_head": False}}
GEMMA_3_MM = model_from_hf_config(GEMMA_3_4B_IT, name="gemma-3-4b-it")
GEMMA_3_MM_128 = replace(GEMMA_3_MM, head_dim=128)  # Gemma 3 27B's heads

#: (backend, block vLLM sets; None: the requested one) per release and capability, a 16-bit and an fp8_e4m3 cache
_MM_256: dict[str, dict[tuple[int, int], tuple[tuple[str, int | None], tuple[str | None, int | None]]]] = {
    "0.19": {capability: (("TRITON_ATTN", None), ("TRITON_ATTN" if capability >= (8, 9) else None, None))
             for capability in CAPABILITIES},
    "0.33": {(8, 0): (("TRITON_ATTN", None), (None, None)), (8, 9): (("TRITON_ATTN", None), ("TRITON_ATTN", None)),
             (9, 0): (("TRITON_FLASH_ATTN", None), ("TRITON_FLASH_ATTN", None)),
             (10, 0): (("TRITON_FLASHINFER", 64), ("TRITON_FLASHINFER", 64)),
             (11, 0): (("TRITON_ATTN", None), ("TRITON_ATTN", None)),
             (12, 0): (("TRITON_ATTN", None), ("TRITON_ATTN", None))},
}


@pytest.mark.parametrize(("release", "capability"), [
    pytest.param(release, capability, id=f"{release}-{capability[0]}.{capability[1]}")
    for release, table in _MM_256.items() for capability in table])
def test_gemma_3_with_vision_runs_on_a_backend_that_takes_its_multimodal_prefix(release: str,
                                                                                capability: tuple[int, int]) -> None:
    # was: no decision for a 16-bit cache (16 everywhere), and the text model's FLASH_ATTN / FLASHINFER for fp8
    sixteen_bit, fp8 = _MM_256[release][capability]
    found = kv_backend(release, GEMMA_3_MM, "auto", capability)
    assert found is not None and (found.backend, found.block_size) == sixteen_bit, found
    found = kv_backend(release, GEMMA_3_MM, "fp8_e4m3", capability)
    assert found is not None and (found.backend, found.block_size) == fp8, found


def test_gemma_3_27b_heads_of_128_run_on_flashattention_4_on_10_x_and_triton_elsewhere_under_0_33() -> None:
    for capability in CAPABILITIES:
        found = kv_backend("0.33", GEMMA_3_MM_128, "auto", capability)
        expected = "FLASH_ATTN" if capability[0] == 10 else "TRITON_ATTN"
        assert found is not None and (found.backend, found.block_size) == (expected, None), (capability, found)
    # FlashAttention lists no fp8_e5m2: Triton takes it
    e5m2 = kv_backend("0.33", GEMMA_3_MM_128, "fp8_e5m2", (10, 0))
    assert e5m2 is not None and e5m2.backend == "TRITON_ATTN"


def test_a_given_block_triton_flashinfer_cannot_page_leaves_triton_at_that_block() -> None:
    kept = kv_backend("0.33", GEMMA_3_MM, "auto", (10, 0), requested_block=128)
    assert kept is not None and (kept.backend, kept.block_size) == ("TRITON_FLASHINFER", None)
    moved = kv_backend("0.33", GEMMA_3_MM, "auto", (10, 0), requested_block=32)
    assert moved is not None and (moved.backend, moved.block_size) == ("TRITON_ATTN", None)


@pytest.mark.parametrize(("kv_cache_dtype", "before", "after"), [
    # GPU KV cache size / max concurrent sequences at 16-token blocks before -> 64 now (1,072,688 / 720 and
    # 2,145,376 / 1,442 with a fixed 0.39 GiB graph estimate, before it held the 83 capture sizes of 10.0 and
    # FlashInfer's workspace: `vllm.cuda_graph_estimate`); then 33,566,720 bytes less pool for Model Runner V2's
    # structured-output bitmask, 1024 x (ceil(262,208 / 32) + 1) x 4 (1,051,494 / 706 and 2,102,988 / 1,414 before)
    ("bf16", (1_095_867, 743), (1_051_263, 706)),
    ("fp8", (2_191_737, 1_489), (2_102_526, 1_413)),
])
def test_gemma_3_with_vision_on_a_b200_under_0_33_is_counted_in_64_token_blocks(
        kv_cache_dtype: str, before: tuple[int, int], after: tuple[int, int]) -> None:
    answer = _plan(GEMMA_3_MM, "b200", "0.33", kv_cache_dtype)
    assert answer.refusal is None and answer.options.block_size == 64
    element = 2 if kv_cache_dtype == "bf16" else 1
    per_layer_token = 2 * 4 * 256 * element  # K and V, 4 KV heads of 256
    # the 5 full-attention layers hold ceil(4100 / 64) whole blocks; the 29 sliding ones their window
    full = 5 * _cdiv(CONTEXT, 64) * 64 * per_layer_token
    sliding = answer.kv_cache_bytes - full
    assert sliding == 29 * 1024 * per_layer_token
    assert (answer.primary.kv_capacity_tokens, answer.primary.max_concurrent_sequences) == after != before
    assert any("64-token KV blocks" in warning and "TRITON_FLASHINFER" in warning for warning in answer.warnings)
    assert _plan(GEMMA_3_MM, "b200", "0.19", kv_cache_dtype).options.block_size == 16


@pytest.mark.parametrize("release", ["0.19", "0.33"])
def test_gemma_3_with_vision_refuses_an_fp8_cache_on_an_a100(release: str) -> None:
    # was planned on FLASHINFER (619-625 sequences); Triton, the only backend that takes the multimodal prefix there,
    # reads fp8 as float8_e4m3fn, which Triton compiles from 8.9 only
    answer = _plan(GEMMA_3_MM, "a100-80gb", release, "fp8")
    assert answer.refusal is not None and not answer.fits
    assert "TRITON_ATTN" in answer.refusal and "multimodal" in answer.refusal
    assert _plan(GEMMA_3_MM, "a100-80gb", release, "bf16").refusal is None


def test_an_unknown_device_is_told_gemma_3s_blocks_and_fp8_floor() -> None:
    blocks = kv_requirement("0.33", GEMMA_3_MM, "auto")
    assert blocks is not None and "64-token blocks on 10.x" in blocks
    floor = kv_requirement("0.19", GEMMA_3_MM, "fp8_e4m3")
    assert floor is not None and "from 8.9 only" in floor


# --- text-only heads of 256: FlashInfer, not FlashAttention 4's 128-token pages -----------------------------------

@pytest.mark.parametrize("model", ["gemma-2-9b", "gemma-3-1b-it"])
@pytest.mark.parametrize("release", ["0.19", "0.33"])
def test_text_only_heads_of_256_stay_at_vllms_default_block(model: str, release: str) -> None:
    spec = get_preset_info(model).spec
    assert spec.head_dim == 256
    for capability in CAPABILITIES:
        assert kv_backend(release, spec, "auto", capability) is None
    # on 10.x the fp8 cache of those heads runs on FLASHINFER (first there), never FA4's head-256 kernel
    found = kv_backend(release, spec, "fp8_e4m3", (10, 0))
    assert found is not None and (found.backend, found.block_size) == ("FLASHINFER", None)
    assert _plan(spec, "b200", release).options.block_size == 16


def test_0_33_runs_an_fp8_cache_of_heads_between_128_and_256_on_triton_not_flashattention_on_10_x() -> None:
    # fa_utils.py get_flash_attn_version falls back to FA2 on Blackwell for heads above 128 but 256 ("TMEM capacity
    # limits"), and FA2 takes no fp8 cache: FLASH_ATTN fails validate_configuration; TRITON_ATTN compiles fp8 there
    spec = replace(get_preset_info("qwen3-8b").spec, name="heads-192", head_dim=192)
    found = kv_backend("0.33", spec, "fp8_e4m3", (10, 0))
    assert found is not None and (found.backend, found.block_size) == ("TRITON_ATTN", None), found
    on_hopper = kv_backend("0.33", spec, "fp8_e4m3", (9, 0))
    assert on_hopper is not None and on_hopper.backend == "FLASH_ATTN"


# --- heads above 256: 0.33's FlashAttention takes them on 10.x / 11.x and runs FA2 ------------------------------

def _wide(head: int) -> ModelSpec:
    return replace(get_preset_info("qwen3-8b").spec, name=f"heads-{head}", head_dim=head)


@pytest.mark.parametrize(("head", "capability", "refused"), [
    # FLASHINFER, first on 10.x, takes 512; FLASH_ATTN takes 264-504 there and 264-512 on 11.x (FA4 is built) and
    # get_flash_attn_version runs FA2 ("TMEM capacity limits" on Blackwell; FA2 the default on 11.x)
    (320, (10, 0), True), (384, (10, 3), True), (504, (10, 0), True), (512, (10, 0), False),
    (320, (11, 0), True), (512, (11, 0), True),
    # on 8.x and 12.x FA4 is not built: FLASH_ATTN refuses the heads, FlashInfer (512) or Triton runs them; on 9.x
    # FA3 upgrades to FA4 above 256; a head of 256 is FlashInfer's on 10.x and FA2's own on 11.x
    (320, (8, 0), False), (320, (12, 0), False), (320, (9, 0), False), (256, (11, 0), False), (260, (10, 0), False),
])
def test_0_33_refuses_a_16_bit_cache_of_heads_flashattention_2_runs_above_256(head: int, capability: tuple[int, int],
                                                                              refused: bool) -> None:
    found = kv_cache_refusal("0.33", _wide(head), "bf16", capability, 16)
    assert (found.refusal is not None) == refused, found
    if refused:
        assert "FlashAttention forward only supports head dimension at most 256" in (found.refusal or "")
        assert "kv_cache.dtype fp8" in (found.refusal or "")
        # the fp8 cache those heads run on there: FLASHINFER for 512, TRITON_ATTN (fp8e4nv on 10.x / 11.x) else
        fp8 = kv_backend("0.33", _wide(head), "fp8_e4m3", capability)
        assert fp8 is not None and fp8.backend == ("FLASHINFER" if head == 512 else "TRITON_ATTN"), fp8
    # 0.19's FLASH_ATTN takes heads up to 256 only: FlashInfer or Triton runs them on every device
    assert kv_cache_refusal("0.19", _wide(head), "bf16", capability, 16).refusal is None


def test_a_model_with_heads_of_320_is_refused_on_a_b200_under_0_33_and_planned_elsewhere() -> None:
    # was planned at 16-token blocks on every device
    spec = _wide(320)
    refused = _plan(spec, "b200", "0.33")
    assert refused.refusal is not None and not refused.fits
    assert _plan(spec, "b200", "0.19").refusal is None
    assert _plan(spec, "h100-80gb", "0.33").refusal is None
    assert _plan(spec, "b200", "0.33", "fp8").refusal is None
    said = kv_requirement("0.33", spec, "auto")
    assert said is not None and "10.x and 11.x" in said


@pytest.mark.parametrize(("capability", "backend"), [((9, 0), "FLASHMLA"), ((10, 0), "CUTLASS_MLA")])
def test_0_11_refuses_a_576_latent_split_other_than_512_and_64_where_flashmla_or_cutlass_mla_decodes(
        capability: tuple[int, int], backend: str) -> None:
    # 544 + 32 passes MLACommonMetadata's 576, but FlashMLA's kernel and CUTLASS MLA's decode run 512 + 64 only; was
    # planned at 64 / 128-token blocks
    spec = replace(V2_LITE, name="mla-544-32", kv_lora_rank=544, qk_rope_head_dim=32, head_dim=160)
    found = kv_backend("0.11", spec, "auto", capability)
    assert found is not None and found.backend is None and backend in found.basis, found
    on_ampere = kv_backend("0.11", spec, "auto", (8, 0))
    assert on_ampere is not None and on_ampere.backend == "TRITON_MLA"


@pytest.mark.parametrize("head", [40, 80, 96, 112, 160, 192, 224])
@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
def test_a_16_bit_cache_of_unusual_heads_runs_at_vllms_default_block_on_every_device(head: int, release: str) -> None:
    # a guard (nothing moves): FlashAttention takes any multiple of 8 up to 256 from 8.0 (0.11: 32..256 in steps of
    # 32, else FlexAttention), FlashInfer 64/128/256 (first on 10.x), Triton 32 and more, FlexAttention any; every
    # one of them pages vLLM's default 16 (MultipleOf(16); FlashInfer 16, 32, 64), so no block moves and none refuses
    spec = _wide(head)
    for capability in ((7, 5), *CAPABILITIES):
        found = kv_cache_refusal(release, spec, "bf16", capability, 16)
        assert found.refusal is None and found.block_size is None, (capability, found)


# --- a --block-size no dense backend pages -------------------------------------------------------------------------

@pytest.mark.parametrize(("release", "kv_cache_dtype", "refused"), [
    # 0.33: FLASH_ATTN MultipleOf(16), FLASHINFER 16/32/64, TRITON_ATTN % 16, FLEX_ATTENTION MultipleOf(16)
    ("0.33", "bf16", True), ("0.33", "fp8", True),
    # 0.19: FlexAttention keeps the base MultipleOf(1) but takes no fp8 cache, and its 16-bit kernel does not compile
    # at such a block (vllm#41339: --block-size 8 on torch 2.10, 0.19's pin, "crashes in Triton compilation")
    ("0.19", "bf16", True), ("0.19", "fp8", True),
])
@pytest.mark.parametrize("block", [8, 24, 40])
def test_a_block_that_is_not_a_multiple_of_16_finds_no_dense_backend(release: str, kv_cache_dtype: str,
                                                                     refused: bool, block: int) -> None:
    # was planned at that block on every release (0.19's 16-bit cache until vllm#41339 was read)
    spec = get_preset_info("qwen3-8b").spec
    for capability in ((8, 9), (9, 0), (10, 0)):
        found = kv_cache_refusal(release, spec, kv_cache_dtype, capability, block)
        assert (found.refusal is not None) == refused, (capability, found)
        if refused:
            assert "multiple of 16 (kv_cache.block_size)" in (found.refusal or "")
            if release == "0.19" and kv_cache_dtype == "bf16":
                assert "Triton compilation fails on the first forward pass (vllm#41339" in (found.refusal or "")
                assert "No valid attention backend found" not in (found.refusal or "")
            else:
                assert "No valid attention backend found" in (found.refusal or "")
        assert kv_cache_refusal(release, spec, kv_cache_dtype, capability, block + 8).refusal is None
    # a device of unknown capability may be AMD's, whose backends were not read: not refused
    assert kv_cache_refusal(release, spec, kv_cache_dtype, None, block).refusal is None
