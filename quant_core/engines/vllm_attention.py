"""The attention backend vLLM runs a KV cache on, per release, device, model and cache dtype, at which KV block, and
why none where none does.

vLLM picks one attention backend for a model's layers at start-up (platforms/cuda.py ``get_attn_backend_cls``) from
the device's compute capability, the model (MLA or not, its head size, attention sinks), the model's dtype and the KV
cache dtype; an fp8 cache runs only where the backend it picks takes one, and an MLA model's cache, 16-bit or fp8, is
paged in the blocks of the MLA backend it picks:

* 0.11 chooses by hand: FlexAttention below 8.0, which refuses any quantized cache; on 8.0 and up an fp8 cache goes
  to TRITON_ATTN except on 9.0 (FlashAttention 3) and 10.0 (FlashInfer when installed); MLA runs FlashMLA on 9.x
  (64-token blocks, forced by ``check_and_update_config``), CUTLASS MLA on 10.0 (128, likewise), else Triton MLA
  (the requested block), which refuses an fp8 cache; this for a 16-bit cache as for an fp8 one.
* 0.19 and 0.33 walk a priority list (``_get_backend_priorities``) and take the first backend whose
  ``validate_configuration`` passes (``supports_kv_cache_dtype``, ``supports_compute_capability``, head size, dtype,
  sinks, block size); with none, ``get_attn_backend_cls`` raises "No valid attention backend found".  When
  ``--block-size`` is not given the chosen backend's preferred block is set (platforms/interface.py
  ``update_block_size_for_backend``: FlashMLA 64, FlashInfer MLA 32, CUTLASS MLA 128; FlashAttention MLA and Triton
  MLA keep 16).  A 16-bit MLA cache runs on FlashAttention MLA on 9.x, FlashInfer MLA (or CUTLASS MLA) on 10.x and
  Triton MLA elsewhere; an fp8 one on FlashMLA on 9.x (FlashAttention MLA lists no fp8).
* Triton's kernels read an fp8 cache as ``float8_e4m3fn`` (``current_platform.fp8_dtype()``, e5m2 included), a
  type Triton compiles only from compute capability 8.9 (triton/backends/nvidia/compiler.py ``parse_options``: fp8e4nv
  joins ``supported_fp8_dtypes`` when ``capability >= 89``, through Triton 3.7): 0.11 and 0.19 fail when the kernel
  compiles, "type fp8e4nv not supported in this architecture" (vllm#26431: 0.11.0 on RTX 3090s; vllm#45829 and
  vllm#49077, open, add a software path), and 0.33's TRITON_ATTN and TRITON_MLA refuse it when they are built.
* An MLA backend takes the model's latent head, kv_lora_rank + qk_rope_head_dim (`MLA_LATENT_HEADS`): 0.11 576
  alone, on every backend (`mla_latent_refusal`); 0.19 and 0.33 320 and 576 (0.33 also 512) on FlashMLA, FlashInfer
  MLA and CUTLASS MLA, 576 alone on 0.33's FlashAttention MLA, and any on Triton MLA, which runs the others.  The
  fast kernels check the split only when they first decode: FlashMLA and CUTLASS MLA run 512 + 64 alone, FlashInfer
  MLA also 256 + 64 (`MLA_KERNEL_DIMS`); a model vLLM sends to one with another split is refused.
* A multimodal-prefix model (Gemma 3's ``gemma3``: `MM_PREFIX_MODEL_TYPES`) needs a backend that attends both ways
  over image tokens: Triton under 0.19; under 0.33 TRITON_FLASHINFER on 10.x for heads of 256 and 512, whose only
  kernel block, 64, vLLM sets, TRITON_FLASH_ATTN on 9.x, FlashAttention 4 on 10.x for heads up to 128, else Triton.
* A dense cache pages a multiple of 16 tokens under 0.19 and 0.33 (`DENSE_KERNEL_BLOCK`): another --block-size finds
  no backend under 0.33, and only 0.19's FlexAttention, which takes no fp8 cache and fails to compile its kernel at
  such a block (`_dense_block_refusal`).
* 0.33's own per-token-head caches, ``int8_per_token_head``, ``int4_per_token_head`` and ``fp8_per_token_head``, run
  on TRITON_ATTN alone, for models without MLA with heads of 32 or more, in multiples of 16 tokens: the integer ones
  on any device (7.0 and 7.5 included), the fp8 one from 8.9 (`per_token_head_backend`); 0.11 and 0.19 have none.
* Heads above 256 (a multiple of 8, up to 512): 0.33's FLASH_ATTN takes them wherever FlashAttention 4 is built but
  runs FlashAttention 2 on 10.x (heads FlashInfer, first there, does not take) and 11.x, which raises on them
  (`_wide_head_refusal`); elsewhere FlashInfer (512) or Triton runs them, at the requested block.

`kv_backend` decides it; a dense model's 16-bit cache otherwise stays at the requested block and is not decided here
(heads under 16, which only FlexAttention would take, are `engines.vllm_refusals.head_size_refusal`'s):
every dense backend vLLM picks takes vLLM's default 16 (FlashAttention and Triton ``MultipleOf(16)``, FlashInfer 16,
32, 64...).  The one exception in the code, 0.33's FlashAttention 4 head-256 kernel on 10.x / 11.x and its 128-token
pages (fa_utils.py ``FA4_HD256_PAGE_SIZE``, flash_attn.py ``_get_fa4_hd256_block_size``), is never reached for a
decoder: on 10.x FLASHINFER comes first and takes heads of 256 (with sliding windows and soft-capping) wherever
FlashAttention would, and ``get_flash_attn_version`` picks FA4 by default on 10.x only (FA2 on 11.x).  DeepSeek Sparse
Attention models (their own backends and ``fp8_ds_mla`` cache, `engines.vllm_refusals.dsa_attention_refusal`,
`engines.vllm_dsa.dsa_block_size`) are not decided here.
"""

from __future__ import annotations

from dataclasses import dataclass

from quant_core.specs import ModelSpec

#: the vLLM cache dtype each of nibble's fp8 KV dtype names is: vLLM's ``fp8`` is e4m3 on CUDA (config/cache.py
#: ``CacheDType``: "CUDA 11.8+ supports fp8 (=fp8_e4m3) and fp8_e5m2")
VLLM_FP8_CACHE_DTYPES: dict[str, str] = {"fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}
#: the vLLM cache dtype of nibble's 16-bit KV dtypes: ``auto``, the model's own 16-bit dtype (config/cache.py
#: ``CacheDType``); every MLA backend that lists ``auto`` also lists float16 and bfloat16, so the choice is the same
VLLM_16BIT_CACHE_DTYPES: dict[str, str] = {"bf16": "auto", "fp16": "auto"}
#: vLLM 0.33's per-token-head caches, by nibble's KV dtype names, which are vLLM's
#: (`formats.VLLM_PER_TOKEN_HEAD_KV_DTYPES`)
VLLM_PER_TOKEN_HEAD_CACHE_DTYPES: dict[str, str] = {"int8_per_token_head": "int8_per_token_head",
                                                    "int4_per_token_head": "int4_per_token_head",
                                                    "fp8_per_token_head": "fp8_per_token_head"}
#: the cache dtypes `kv_backend` decides: a 16-bit cache (``auto``), the fp8 ones and 0.33's per-token-head ones
_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2", *VLLM_PER_TOKEN_HEAD_CACHE_DTYPES)

#: the releases whose backends are decided here (`kv_backend`)
RELEASES = ("0.11", "0.19", "0.33")

#: the lowest compute capability at which Triton compiles ``float8_e4m3fn`` (fp8e4nv)
TRITON_FP8E4NV = (8, 9)

_TRITON_COMPILE = ("its Triton kernels read the cache as float8_e4m3fn (current_platform.fp8_dtype(), e5m2 "
                   "included), which Triton compiles only from compute capability 8.9 (triton/backends/nvidia/"
                   "compiler.py parse_options: fp8e4nv is supported when capability >= 89), so they raise \"type "
                   "fp8e4nv not supported in this architecture\" when they compile, at start-up's CUDA-graph capture "
                   "or the first request (vllm#26431: 0.11.0 on RTX 3090s)")
_NO_BACKEND = "platforms/cuda.py get_attn_backend_cls raises \"No valid attention backend found\""

#: the head sizes FlashAttention takes in 0.11 (v1/attention/backends/flash_attn.py get_supported_head_sizes)
_FLASH_ATTENTION_HEADS_V0_11 = frozenset({32, 64, 96, 128, 160, 192, 224, 256})
#: the head sizes FlashInfer takes (flashinfer.py get_supported_head_sizes): 0.19, and 0.33 with 512
_FLASHINFER_HEADS = {"0.19": frozenset({64, 128, 256}), "0.33": frozenset({64, 128, 256, 512})}
#: the qk_nope_head_dim FlashInfer MLA's kernel takes (flashinfer_mla.py supports_combination, 0.19 and 0.33)
_FLASHINFER_MLA_NOPE = frozenset({64, 128, 192})
#: the latent head (kv_lora_rank + qk_rope_head_dim: vLLM's ``get_head_size`` of an MLA model) each release's MLA
#: backends take: 0.11's MLACommonMetadata validates 576 for every MLA backend; 0.19's and 0.33's MLACommonBackend
#: (model_executor/layers/attention/mla_attention.py get_supported_head_sizes) lists 320 and 576 (0.33 also 512) for
#: FLASHMLA, FLASHINFER_MLA and CUTLASS_MLA, 0.33's FLASH_ATTN_MLA 576 alone (flashattn_mla.py), and TRITON_MLA any
#: (triton_mla.py: an empty list)
MLA_LATENT_HEADS: dict[str, frozenset[int]] = {"0.11": frozenset({576}), "0.19": frozenset({320, 576}),
                                               "0.33": frozenset({320, 512, 576})}
#: the latent heads FLASH_ATTN_MLA takes where they differ from `MLA_LATENT_HEADS`
_FLASH_ATTN_MLA_LATENT_HEADS: dict[str, frozenset[int]] = {"0.33": frozenset({576})}
#: the (kv_lora_rank, qk_rope_head_dim) each fast MLA kernel runs, which vLLM checks only when it first decodes (its
#: backend choice reads the latent's sum alone), with where it raises otherwise, in 0.11 (FlashMLA, CUTLASS MLA),
#: 0.19 and 0.33.  FlashInfer MLA (flashinfer/mla.py _check_trtllm_gen_mla_shape, flashinfer-python 0.6.6 and
#: 0.7.2.post1, the releases' pins: DeepSeek's 512 + 64 and "smaller_mla_dimensions" 256 + 64; 0.7.2 adds 512 + 0,
#: which nibble's MLA has not); CUTLASS MLA (cutlass_mla.py _sm100_cutlass_mla_decode asserts D_latent 512 and
#: D_rope 64, 0.11 too); FlashMLA (vLLM's _flashmla_C dense decode: "Only head_size_k == 576 or 512 is supported",
#: 0.11's "== 576", head_size_v the kv_lora_rank 512)
MLA_KERNEL_DIMS: dict[str, tuple[frozenset[tuple[int, int]], str]] = {
    "FLASHINFER_MLA": (frozenset({(512, 64), (256, 64)}),
                       "FlashInfer's trtllm_batch_decode_with_kv_cache_mla raises ValueError(\"Unsupported MLA "
                       "dimensions, got kv_lora_rank=... and qk_rope_head_dim=...\") (flashinfer/mla.py "
                       "_check_trtllm_gen_mla_shape: 512 + 64 and 256 + 64)"),
    "CUTLASS_MLA": (frozenset({(512, 64)}),
                    "CutlassMLAImpl._sm100_cutlass_mla_decode asserts D_latent == 512 and D_rope == 64 "
                    "(v1/attention/backends/mla/cutlass_mla.py)"),
    "FLASHMLA": (frozenset({(512, 64)}),
                 "FlashMLA's decode kernel (vllm._flashmla_C) raises \"Only head_size_k == 576 or 512 is supported\" "
                 "(0.11's: \"Only head_size_k == 576 is supported\"), the kv_lora_rank its head_size_v"),
}
#: vLLM's default block, which nibble's request carries when none is asked (``CacheConfig.DEFAULT_BLOCK_SIZE``)
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True, slots=True)
class KVBackend:
    """The backend vLLM runs a KV cache on (`kv_backend`): `backend` its name in vLLM (None: no backend vLLM picks
    runs it, and `basis` says why, citing vLLM's code), `block_size` the KV block vLLM sets for it when that is not
    the requested one (None: the requested block)."""

    backend: str | None
    basis: str
    block_size: int | None = None
    #: when no backend runs it: what would, where that is not a 16-bit cache (for an fp8 one) or a block that is a
    #: multiple of 16 (for a 16-bit MLA cache)
    remedy: str | None = None


def _capability_text(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


#: the smallest head TRITON_ATTN takes (triton_attn.py: 0.11's validate_head_size, 0.19's and 0.33's
#: supports_head_size, "head_size >= 32"); below it vLLM falls back to FlexAttention, which takes no fp8 cache
TRITON_MIN_HEAD = 32


def _triton(version: str, capability: tuple[int, int], backend: str, why: str, head: int = TRITON_MIN_HEAD
            ) -> KVBackend:
    """TRITON_ATTN or TRITON_MLA (`backend`) chosen for `why`: running the fp8 cache from 8.9, refused below, and
    for TRITON_ATTN refused for heads under `TRITON_MIN_HEAD` (`head`)."""
    if head < TRITON_MIN_HEAD:
        return KVBackend(None, f"vLLM {version} has no backend for an fp8 cache with heads of {head}: TRITON_ATTN "
                               f"takes heads of {TRITON_MIN_HEAD} or more (triton_attn.py) and FlexAttention, "
                               "left, no quantized cache"
                               + (f": {_NO_BACKEND}" if version != "0.11" else ""))
    if capability >= TRITON_FP8E4NV:
        return KVBackend(backend, f"vLLM {version} runs it on {backend} ({why})")
    where = "triton_attn.py TritonAttentionImpl" if backend == "TRITON_ATTN" else "mla/triton_mla.py TritonMLAImpl"
    refused = (f"its {where}.__init__ raises ValueError(\"FP8 KV cache is not supported by the Triton "
               f"{'attention' if backend == 'TRITON_ATTN' else 'MLA'} backend on ... native FP8 (fp8e4nv) requires "
               "SM89+\")" if version == "0.33" else _TRITON_COMPILE)
    return KVBackend(None, f"vLLM {version} runs an fp8 KV cache on {backend} here ({why}), and {refused}")


def _dense_v0_11(spec: ModelSpec, cache_dtype: str, capability: tuple[int, int], float32: bool) -> KVBackend:
    """0.11's hand-written choice (platforms/cuda.py get_attn_backend_cls, V1 branch)."""
    if capability < (8, 0):
        return KVBackend(None, "vLLM 0.11 runs FlexAttention below compute capability 8.0 (platforms/cuda.py "
                               "get_attn_backend_cls: \"FlexAttention is the default for older GPUs\"), whose "
                               "FlexAttentionImpl raises NotImplementedError(\"FlexAttention does not support "
                               "quantized kv-cache. Yet\") (v1/attention/backends/flex_attention.py)")
    if capability == (10, 0) and spec.head_dim in _FLASHINFER_HEADS["0.19"]:  # 0.11's list is 0.19's
        return KVBackend("FLASHINFER", "vLLM 0.11 prefers FlashInfer on 10.0 when it is installed (the "
                                       "vllm[flashinfer] extra; fp8_e4m3 and fp8_e5m2), else TRITON_ATTN, which "
                                       "compiles fp8 there (platforms/cuda.py get_attn_backend_cls, "
                                       "is_attn_backend_supported)")
    if capability == (9, 0):
        if spec.head_dim not in _FLASH_ATTENTION_HEADS_V0_11 or float32:
            return KVBackend(None, f"vLLM 0.11 falls back to FlexAttention on 9.0 for heads of {spec.head_dim} "
                                   "FlashAttention does not take (get_attn_backend_cls, is_attn_backend_supported),"
                                   " whose FlexAttentionImpl raises NotImplementedError(\"FlexAttention does not "
                                   "support quantized kv-cache. Yet\")")
        if cache_dtype == "fp8_e5m2":
            return KVBackend(None, "vLLM 0.11 runs an fp8 cache on FlashAttention 3 on 9.0 (get_attn_backend_cls)"
                                   ", whose get_fp8_dtype_for_flashattn takes fp8 and fp8_e4m3 only: it raises "
                                   "ValueError(\"Unrecognized FP8 dtype: fp8_e5m2\") (v1/attention/backends/"
                                   "flash_attn.py) when attention first runs")
        return KVBackend("FLASH_ATTN", "vLLM 0.11 runs an fp8 cache on FlashAttention 3 on 9.0 "
                                       "(get_attn_backend_cls; flash_attn_supports_fp8)")
    return _triton("0.11", capability, "TRITON_ATTN",
                   "get_attn_backend_cls sends an fp8 cache to Triton on 8.0 and up except 9.0 and 10.0", spec.head_dim)


def _dense_v0_19_v0_33(version: str, spec: ModelSpec, cache_dtype: str, capability: tuple[int, int],
                       float32: bool) -> KVBackend:
    """0.19's and 0.33's priority walk (platforms/cuda.py _get_backend_priorities, get_valid_backends) for a model
    without MLA: FLASH_ATTN, FLASHINFER, TRITON_ATTN (FLASHINFER first on 10.x), FlexAttention taking no fp8."""
    major = capability[0]
    head = spec.head_dim
    sinks = spec.attention_sinks
    # FlashAttention: an fp8 cache only with FA3 on 9.x (fa_utils.py flash_attn_supports_fp8 in 0.19; 0.33's
    # flash_attn_supports_kv_cache_dtype: fp8_e5m2 never, FA3 on 9.x or FA4 (heads of 512 on 9.x, 10.x))
    if version == "0.19":
        flash_heads = head % 8 == 0 and head <= 256
        flash_fp8 = major == 9
    else:
        # on 10.x fa_utils.py get_flash_attn_version keeps FA4 only for heads up to 128: FA2 for 136-248 and 512
        # ("TMEM capacity limits") and for 256 with a quantized cache (_fa4_hd256_fallback_reason), and FA2 takes no
        # fp8 cache (flash_attn_supports_kv_cache_dtype)
        flash_heads = head % 8 == 0 and (head <= 256 or head == 512)
        flash_fp8 = cache_dtype != "fp8_e5m2" and (major == 9 or (major == 10 and head <= 128))
    flash_attention = (capability >= (8, 0) and flash_heads and flash_fp8 and not float32
                       and (not sinks or capability >= (9, 0)))
    # FlashInfer: 7.5 (0.19; 8.0 in 0.33, "broken on SM75") to 12.1; sinks only with TRT-LLM attention (SM100; 0.33
    # also 9.0 and 12.x, flashinfer.py supports_sink); fp16 and bf16 models
    flashinfer_floor = (7, 5) if version == "0.19" else (8, 0)
    flashinfer_sinks = major == 10 or (version == "0.33" and (capability == (9, 0) or major == 12))
    flashinfer = (flashinfer_floor <= capability <= (12, 1) and head in _FLASHINFER_HEADS[version] and not float32
                  and (not sinks or flashinfer_sinks))
    order = ("FLASHINFER", "FLASH_ATTN") if major == 10 else ("FLASH_ATTN", "FLASHINFER")
    for backend in order:
        if backend == "FLASH_ATTN" and flash_attention:
            if cache_dtype == "fp8_e5m2":  # 0.19 only: its supports_kv_cache_dtype takes any fp8 name
                return KVBackend(None, "vLLM 0.19 picks FLASH_ATTN for an fp8 cache on 9.x (supports_kv_cache_dtype"
                                       " takes any fp8 name), whose get_fp8_dtype_for_flashattn takes fp8 and "
                                       "fp8_e4m3 only: it raises ValueError(\"Unrecognized FP8 dtype: fp8_e5m2\") "
                                       "(v1/attention/backends/flash_attn.py) when attention first runs")
            block = 64 if (version == "0.33" and head == 512 and major == 9) else None
            return KVBackend("FLASH_ATTN", f"vLLM {version} runs it on FLASH_ATTN (FlashAttention "
                                           f"{'4' if head > 256 or major == 10 else '3'} takes an fp8 cache: "
                                           "_get_backend_priorities, fa_utils.py)"
                             + (", whose SM90 fp8 kernel for heads of 512 pages 64 tokens (flash_attn.py "
                                "_get_sm90_fa4_fp8_kv_block_size)" if block else ""), block)
        if backend == "FLASHINFER" and flashinfer:
            return KVBackend("FLASHINFER", f"vLLM {version} runs it on FLASHINFER (_get_backend_priorities; "
                                           "flashinfer.py supported_kv_cache_dtypes lists fp8_e4m3 and fp8_e5m2)")
    return _triton(version, capability, "TRITON_ATTN",
                   "the first backend of _get_backend_priorities whose validate_configuration passes: FLASH_ATTN "
                   f"takes an fp8 cache only on 9.x{' and 10.x (heads up to 128)' if version == '0.33' else ''}, "
                   "FLASHINFER only heads "
                   "of "
                   + "/".join(str(size) for size in sorted(_FLASHINFER_HEADS[version]))
                   + f" from {_capability_text(flashinfer_floor)} without attention sinks (but with TRT-LLM's) in "
                   "fp16/bf16", head)


#: nibble's model types among vLLM's multimodal-prefix language models (``is_mm_prefix_lm``: bidirectional attention
#: over each image's tokens; 0.19 config/model.py and 0.33 transformers_utils/model_arch_config_convertor.py
#: MM_PREFIX_LM_MODELS: bagel, gemma3, molmo2, paligemma, and moondream3 in 0.33): Gemma 3's multimodal
#: ``gemma3`` (Gemma3ForConditionalGeneration), not the text-only ``gemma3_text``.  0.11 has no such attention
MM_PREFIX_MODEL_TYPES = frozenset({"gemma3"})
#: the heads 0.33's Triton composites take (triton_flash_attn.py, triton_flashinfer.py ``head_sizes``)
_COMPOSITE_HEADS = frozenset({256, 512})
#: TRITON_FLASHINFER's only kernel block (triton_flashinfer.py ``kernel_block_sizes=(64,)``), which
#: ``get_preferred_block_size`` takes for vLLM's default 16 does not divide by it
TRITON_FLASHINFER_BLOCK = 64
#: the page FlashAttention 4's SM90 kernel reads an fp8 cache of 512-wide heads in (flash_attn.py
#: ``_get_sm90_fa4_fp8_kv_block_size``, 0.33)
SM90_FA4_FP8_BLOCK = 64


def _mm_prefix_v0_19_v0_33(version: str, spec: ModelSpec, cache_dtype: str, capability: tuple[int, int],
                           requested_block: int, float32: bool) -> KVBackend:
    """0.19's and 0.33's choice for a multimodal-prefix model (`MM_PREFIX_MODEL_TYPES`), whose every attention layer
    asks for a backend that attends both ways over image tokens (attention.py ``use_mm_prefix``; validate_configuration:
    "partial multimodal token full attention not supported").

    0.19: FLASH_ATTN and FLASHINFER have no ``supports_mm_prefix`` (False), TRITON_ATTN and FLEX_ATTENTION have, so
    Triton runs it (FlexAttention for heads under 32, 16-bit only).  0.33 (platforms/cuda.py
    ``_get_backend_priorities`` with ``use_mm_prefix``): on 10.x TRITON_FLASHINFER first (Triton for the image masks,
    FlashInfer for causal queries; heads of 256 and 512, ``device_major=10``, kernel blocks (64,) only, so
    ``update_block_size_for_backend`` sets 64), then FLASHINFER (no mm prefix), FLASH_ATTN (``supports_combination``:
    "mm_prefix ... requires FlashAttention v4", which ``get_flash_attn_version`` resolves on 10.x for heads up to 128,
    not for 256: fa_utils.py ``_fa4_hd256_fallback_reason`` "mm_prefix bidirectional attention", nor 136-248: "TMEM
    capacity"), TRITON_ATTN; on 9.x TRITON_FLASH_ATTN first (Triton + FlashAttention 3/4 on Hopper; heads of 256 and
    512; its kernel blocks those of both: MultipleOf(16), or 64 for FA4's SM90 fp8 kernel of 512-wide heads), then
    FLASH_ATTN (FA4 only, for heads above 256 on SM90; "SM90 FP8 KV with mm_prefix requires Triton"), TRITON_ATTN;
    elsewhere FLASH_ATTN (FA4 is not the version on 8.x, 11.x, 12.x), FLASHINFER (no mm prefix), TRITON_ATTN."""
    head = spec.head_dim
    fp8 = cache_dtype != "auto"
    given = requested_block != DEFAULT_BLOCK_SIZE
    major = capability[0]
    e4m3 = cache_dtype != "fp8_e5m2"
    what = "an fp8 cache" if fp8 else "a 16-bit cache"
    where = f"vLLM {version} runs {what} of a multimodal-prefix model ({spec.model_type}: is_mm_prefix_lm)"
    # the composites keep the base supports_sink (False); FlashAttention takes sinks from 9.0
    if version == "0.33" and not float32:
        composite = head in _COMPOSITE_HEADS and not spec.attention_sinks
        if major == 10 and composite and (not given or requested_block % TRITON_FLASHINFER_BLOCK == 0):
            return KVBackend("TRITON_FLASHINFER",
                             f"{where} on TRITON_FLASHINFER, first of _get_backend_priorities on 10.x for heads of "
                             "256 and 512 (triton_flashinfer.py: Triton attention for the image masks, FlashInfer for "
                             f"causal queries), whose only kernel block is {TRITON_FLASHINFER_BLOCK} tokens "
                             "(kernel_block_sizes=(64,))"
                             + ("" if given else ": platforms/interface.py update_block_size_for_backend sets it when "
                                                 "--block-size is not given"),
                             None if given else TRITON_FLASHINFER_BLOCK)
        if major == 10 and head <= 128 and head % 8 == 0 and e4m3:
            return KVBackend("FLASH_ATTN", f"{where} on FLASH_ATTN: FLASHINFER takes no multimodal prefix "
                                           "(supports_mm_prefix), FlashAttention 4 does, and fa_utils.py "
                                           "get_flash_attn_version resolves FA4 on 10.x for heads up to 128")
        if major == 9 and composite and e4m3:
            paged = SM90_FA4_FP8_BLOCK if fp8 and head == 512 else None
            if paged is None or not given or requested_block % paged == 0:
                return KVBackend("TRITON_FLASH_ATTN",
                                 f"{where} on TRITON_FLASH_ATTN, first of _get_backend_priorities on 9.x for heads of "
                                 "256 and 512 (triton_flash_attn.py: Triton attention for the image masks, "
                                 "FlashAttention for causal queries)"
                                 + ("" if paged is None else
                                    f", whose kernel block is FlashAttention 4's {paged}-token SM90 fp8 page for "
                                    "heads of 512 (flash_attn.py _get_sm90_fa4_fp8_kv_block_size)"),
                                 None if paged is None or given else paged)
        if major == 9 and 256 < head <= 512 and head % 8 == 0 and not fp8:
            return KVBackend("FLASH_ATTN", f"{where} on FLASH_ATTN: FlashAttention 4 runs heads above 256 on 9.x "
                                           "(fa_utils.py get_flash_attn_version) and takes the multimodal prefix")
    why = ("FLASH_ATTN and FLASHINFER take no multimodal prefix (supports_mm_prefix: False in 0.19), TRITON_ATTN does"
           if version == "0.19" else
           "_get_backend_priorities with use_mm_prefix: FLASHINFER takes no multimodal prefix, FLASH_ATTN takes it "
           "with FlashAttention 4 only (10.x heads up to 128, 9.x heads above 256), TRITON_FLASHINFER heads of "
           "256/512 on 10.x, TRITON_FLASH_ATTN heads of 256/512 on 9.x (fp8_e4m3)")
    if fp8:
        return _triton(version, capability, "TRITON_ATTN", why, head)
    if head < TRITON_MIN_HEAD:
        return KVBackend("FLEX_ATTENTION", f"{where} on FLEX_ATTENTION ({why}; TRITON_ATTN takes heads of "
                                           f"{TRITON_MIN_HEAD} or more), at the requested block")
    return KVBackend("TRITON_ATTN", f"{where} on TRITON_ATTN ({why}), at the requested block")


#: the kernel block every dense CUDA backend of 0.19 and 0.33 pages a multiple of (supports_block_size:
#: FLASH_ATTN ``MultipleOf(16)``, FLASHINFER 16/32/64 (and larger on Blackwell), TRITON_ATTN ``block_size % 16``,
#: 0.33's FLEX_ATTENTION ``MultipleOf(16)``; 0.19's FlexAttention keeps the base ``MultipleOf(1)`` but cannot run
#: another block, `_FLEX_BLOCK_V0_19`)
DENSE_KERNEL_BLOCK = 16
#: why 0.19's FlexAttention, which its backend choice lets take any block, fails on one that is not a multiple of 16:
#: with torch 2.10 (0.19's pin) FlexAttentionMetadataBuilder takes the direct build (``is_torch_equal_or_newer
#: ("2.9.0.dev0")``) and get_kernel_options hands the KV block itself to the kernel as BLOCK_N, without the lower
#: bound of 16 its other branch applies; PyTorch's flex template needs BLOCK_N a power of two (``tl.arange(0,
#: BLOCK_N)``) and at least 16 (``tl.dot``).  vllm#41339 (torch 2.10, --block-size 8: "block_size < 16 silently falls
#: back to FLEX_ATTENTION, then crashes in Triton compilation"; vllm#39340), fixed after 0.19 by vllm#41363
#: (FLEX_ATTENTION MultipleOf(16), as in 0.33)
_FLEX_BLOCK_V0_19 = ("FLEX_ATTENTION, which 0.19 lets take any block (the base MultipleOf(1)), takes no fp8 cache, "
                     "and with torch 2.10 hands the block itself to its Triton kernel as BLOCK_N "
                     "(flex_attention.py get_kernel_options, direct build), which the kernel's tl.arange and tl.dot "
                     "do not compile below 16 or off a power of two: Triton compilation fails on the first forward "
                     "pass (vllm#41339, fixed after 0.19 by vllm#41363)")


def _dense_block_refusal(version: str, cache_dtype: str, requested_block: int) -> KVBackend:
    """Why no dense backend of 0.19 or 0.33 runs a ``--block-size`` of `requested_block`, not a multiple of
    `DENSE_KERNEL_BLOCK` (``validate_configuration``: "block_size not supported"): 0.33 finds no backend for any
    cache, 0.19 none for an fp8 one and, for a 16-bit one, FlexAttention, which fails to compile at that block
    (`_FLEX_BLOCK_V0_19`)."""
    left = (_FLEX_BLOCK_V0_19 if version == "0.19" else
            f"FLEX_ATTENTION pages MultipleOf(16) too: {_NO_BACKEND}")
    if version == "0.19" and cache_dtype != "auto":
        left = f"{left}; for an fp8 cache {_NO_BACKEND}"
    return KVBackend(None, f"vLLM {version} pages a dense KV cache only in multiples of {DENSE_KERNEL_BLOCK} tokens, "
                           f"not --block-size {requested_block}: FLASH_ATTN (MultipleOf(16)), FLASHINFER (16, 32, 64) "
                           f"and TRITON_ATTN (block_size % 16) refuse it (supports_block_size), {left}",
                     remedy=f"a --block-size that is a multiple of {DENSE_KERNEL_BLOCK} (kv_cache.block_size) runs "
                            "there")


def mla_latent_head(spec: ModelSpec) -> int:
    """The head vLLM gives an MLA model's attention backends: its latent, kv_lora_rank + qk_rope_head_dim (the
    model config's ``get_head_size``: 0.11 config/model.py, 0.19 and 0.33 transformers_utils/
    model_arch_config_convertor.py)."""
    return spec.kv_lora_rank + spec.qk_rope_head_dim


def mla_latent_refusal(version: str, spec: ModelSpec) -> str | None:
    """Why vLLM `version` runs MLA model `spec` on no device, its latent head being one no MLA backend of the release
    takes, or None: only 0.11, whose MLACommonMetadata (every MLA backend's metadata) validates 576 alone; 0.19 and
    0.33 run any latent on TRITON_MLA (`kv_backend`).  DeepSeek Sparse Attention models are not decided here."""
    if version != "0.11" or not spec.is_mla or spec.has_indexer:
        return None
    latent = mla_latent_head(spec)
    if latent in MLA_LATENT_HEADS[version]:
        return None
    return (f"vLLM 0.11 runs MLA only on a latent head of 576 (kv_lora_rank + qk_rope_head_dim), not "
            f"{spec.kv_lora_rank} + {spec.qk_rope_head_dim} = {latent}: MLACommonMetadata.__post_init__ (v1/attention/"
            "backends/mla/common.py, the metadata of every MLA backend, Triton MLA's included) raises "
            f"ValueError(\"Head size {latent} is not supported by MLACommon. Supported head sizes are: [576]\") "
            "when it first builds attention metadata, at start-up's CUDA-graph capture or the first request")


#: the widest head vLLM's FlashAttention 2 build runs (vllm_flash_attn/_vllm_fa2_C: flash-attn's csrc/flash_attn/
#: flash_api.cpp, "FlashAttention forward only supports head dimension at most 256")
FA2_MAX_HEAD = 256
#: the widest head 0.33's FLASH_ATTN takes where FlashAttention 4 is built for the device, 9.x, 10.x and 11.x
#: (flash_attn.py supports_head_size: ``is_fa_version_supported(4)``, vllm_flash_attn/flash_attn_interface.py
#: ``_is_fa4_supported``)
FA4_MAX_HEAD = 512


def _wide_head_refusal(version: str, spec: ModelSpec, capability: tuple[int, int], float32: bool) -> KVBackend | None:
    """0.33's FLASH_ATTN for a 16-bit cache of heads above 256 on 10.x and 11.x, which it takes but runs on FA2: its
    ``supports_head_size`` lets a multiple of 8 up to 512 through wherever FA4 is built (9.x, 10.x, 11.x), but
    fa_utils.py ``get_flash_attn_version`` resolves FA2 there, on 10.x for any head above 128 but 256 ("FA4 on
    Blackwell does not support head_size=%d due to TMEM capacity limits") and on 11.x always (FA4 is the default on
    10.x only), and FA2 raises on heads above `FA2_MAX_HEAD` when attention first runs.  On 10.x FLASHINFER, first,
    takes heads of 512; on 9.x FA4 runs the wide heads (FA3 upgrades to it above 256).  None where this does not
    apply."""
    head = spec.head_dim
    major = capability[0]
    if (version != "0.33" or float32 or head % 8 or not FA2_MAX_HEAD < head <= FA4_MAX_HEAD
            or (spec.v_head_dim or head) != head or major not in (10, 11)
            or (major == 10 and head in _FLASHINFER_HEADS[version])):
        return None
    first = "after FLASHINFER, which takes heads of 64/128/256/512 only" if major == 10 else "first off 10.x"
    return KVBackend(None, f"vLLM 0.33 picks FLASH_ATTN for heads of {head} on {_capability_text(capability)} "
                           f"({first}; flash_attn.py supports_head_size takes a multiple of 8 up to {FA4_MAX_HEAD} "
                           "where FlashAttention 4 is built), but fa_utils.py get_flash_attn_version runs it on "
                           "FlashAttention 2 there ("
                           + ("\"FA4 on Blackwell does not support head_size=%d due to TMEM capacity limits\""
                              if major == 10 else "FA4 is the default on 10.x only")
                           + "), whose kernel raises \"FlashAttention forward only supports head dimension at most "
                           f"{FA2_MAX_HEAD}\" when attention first runs, at start-up's CUDA-graph capture or the first "
                           "request")


def _mla_kernel_check(version: str, spec: ModelSpec, chosen: KVBackend) -> KVBackend:
    """`chosen`, or why it does not run: the MLA backend vLLM `version` picks for `spec` when its kernel does not run
    the model's kv_lora_rank + qk_rope_head_dim (`MLA_KERNEL_DIMS`), which it checks only when it first decodes."""
    if chosen.backend not in MLA_KERNEL_DIMS:
        return chosen
    dims, raises = MLA_KERNEL_DIMS[chosen.backend]
    if (spec.kv_lora_rank, spec.qk_rope_head_dim) in dims:
        return chosen
    how = ("platforms/cuda.py get_attn_backend_cls / check_and_update_config" if version == "0.11" else
           "the first MLA backend of _get_backend_priorities whose validate_configuration passes, as it lists the "
           f"latent head of {mla_latent_head(spec)}")
    return KVBackend(None, f"vLLM {version} picks {chosen.backend} for it ({how}), but its kernel does not run "
                           f"kv_lora_rank {spec.kv_lora_rank} + qk_rope_head_dim {spec.qk_rope_head_dim}: {raises} "
                           "when it first decodes, at start-up's CUDA-graph capture or the first request",
                     remedy="vLLM's --attention-backend TRITON_MLA, which nibble does not plan, would run it")


def _mla_v0_11(cache_dtype: str, capability: tuple[int, int]) -> KVBackend:
    """0.11's MLA choice, for a 16-bit cache (``auto``) as for an fp8 one: platforms/cuda.py check_and_update_config
    forces FlashMLA's 64-token block on 9.x (``is_flashmla_supported``: Hopper with vllm._flashmla_C) and CUTLASS
    MLA's 128 on 10.0 (``is_device_capability(100)``) whatever --block-size says; get_attn_backend_cls then takes
    CUTLASS MLA at 128, FlashMLA at 64, FlashAttention MLA (FA3 on 9.x, not reached) or Triton MLA."""
    if cache_dtype == "auto":
        where = "a 16-bit MLA cache"
        e5m2 = ""
    else:
        where = "MLA"
        e5m2 = (" (an fp8_e5m2 cache is stored as e5m2 by concat_and_cache_mla but read as e4m3 by the decode kernel:"
                " mla/common.py views it as current_platform.fp8_dtype())" if cache_dtype == "fp8_e5m2" else "")
    if capability == (10, 0):
        return KVBackend("CUTLASS_MLA", f"vLLM 0.11 runs {where} on CUTLASS MLA on 10.0 and forces 128-token KV blocks "
                                        "(platforms/cuda.py check_and_update_config: \"Forcing kv cache block size "
                                        "to 128 for CUTLASS_MLA backend\")" + e5m2, 128)
    if capability[0] == 9:
        reads = "" if cache_dtype == "auto" else "; FlashMLA's fwd_kvcache_mla_fp8 reads the fp8 cache"
        return KVBackend("FLASHMLA", f"vLLM 0.11 runs {where} on FlashMLA on 9.x and forces 64-token KV blocks "
                                     "(platforms/cuda.py check_and_update_config: \"Forcing kv cache block size to "
                                     "64 for FlashMLA backend\")" + reads + e5m2, 64)
    if cache_dtype == "auto":
        return KVBackend("TRITON_MLA", "vLLM 0.11 runs a 16-bit MLA cache on Triton MLA off 9.x and 10.0, at the "
                                       "requested block (platforms/cuda.py get_attn_backend_cls: FlashMLA needs "
                                       "Hopper, FlashAttention MLA FA3 on 9.x, CUTLASS MLA 10.0)")
    return KVBackend(None, "vLLM 0.11 runs MLA on Triton MLA off 9.x and 10.0 (platforms/cuda.py "
                           "get_attn_backend_cls), whose TritonMLAImpl raises NotImplementedError(\"TritonMLA V1 "
                           "with FP8 KV cache not yet supported\") (v1/attention/backends/mla/triton_mla.py)")


#: the kernel block every MLA backend of 0.19 and 0.33 pages in a multiple of: FlashAttention MLA's and Triton MLA's
#: ``MultipleOf(16)`` (get_supported_kernel_block_sizes; FlashMLA 64, FlashInfer MLA 32 or 64, CUTLASS MLA 128)
MLA_KERNEL_BLOCK = 16


def _mla_v0_19_v0_33(version: str, spec: ModelSpec, cache_dtype: str, capability: tuple[int, int],
                     requested_block: int) -> KVBackend:
    """0.19's and 0.33's MLA priority walk (platforms/cuda.py _get_backend_priorities): off 10.x FLASH_ATTN_MLA
    (FA3 on 9.x, 16-bit caches only, blocks of 16), FLASHMLA (dense on 9.x, 64-token blocks), FLASHINFER_MLA (10.x),
    TRITON_MLA (any device, blocks of 16); on 10.x FLASHINFER_MLA (blocks of 32 or 64), (0.33: TOKENSPEED_MLA, fp8
    only,) CUTLASS_MLA (128), FLASH_ATTN_MLA and FLASHMLA (9.x only), TRITON_MLA; 0.33 on 12.x TRITON_MLA."""
    if cache_dtype == "fp8_e5m2":
        return KVBackend(None, f"vLLM {version} has no MLA backend for an fp8_e5m2 cache: FLASH_ATTN_MLA lists no "
                               "fp8, and FLASHMLA, FLASHINFER_MLA, CUTLASS_MLA"
                               + (", TOKENSPEED_MLA" if version == "0.33" else "")
                               + " and TRITON_MLA list fp8 and fp8_e4m3 only (supported_kv_cache_dtypes, "
                               f"v1/attention/backends/mla/): {_NO_BACKEND}")
    given = requested_block != DEFAULT_BLOCK_SIZE
    major = capability[0]
    sixteen_bit = cache_dtype == "auto"
    latent = mla_latent_head(spec)
    # the latent head each backend takes (MLA_LATENT_HEADS): FLASHMLA, FLASHINFER_MLA and CUTLASS_MLA the common
    # list, FLASH_ATTN_MLA its own in 0.33, TRITON_MLA any
    common_head = latent in MLA_LATENT_HEADS[version]
    flash_attn_head = latent in _FLASH_ATTN_MLA_LATENT_HEADS.get(version, MLA_LATENT_HEADS[version])
    heads = "/".join(str(size) for size in sorted(MLA_LATENT_HEADS[version]))

    def fixed(backend: str, sizes: tuple[int, ...], why: str) -> KVBackend | None:
        """`backend` when the request's block suits it (a multiple of one of `sizes`: supports_block_size), at its
        preferred block (the smallest of `sizes`, None when that is vLLM's default) when none is given; None when a
        given block rules it out."""
        if given and all(requested_block % size for size in sizes):
            return None
        preferred = min(sizes)
        block = None if given or preferred == DEFAULT_BLOCK_SIZE else preferred
        return KVBackend(backend, f"vLLM {version} runs {'a 16-bit MLA cache' if sixteen_bit else 'it'} on {backend} "
                                  f"({why})"
                         + ("" if block is None else f", at its {preferred}-token KV blocks (platforms/interface.py "
                                                     "update_block_size_for_backend sets the backend's preferred "
                                                     "block when --block-size is not given)"), block)

    chosen: KVBackend | None = None
    if major == 9:
        if sixteen_bit and flash_attn_head:
            chosen = fixed("FLASH_ATTN_MLA", (MLA_KERNEL_BLOCK,),
                           "first of _get_backend_priorities off 10.x: FlashAttention 3 runs MLA on 9.x, fa_utils.py "
                           "flash_attn_supports_mla; its kernel pages any multiple of 16 tokens")
        if chosen is None and common_head:
            chosen = fixed("FLASHMLA", (64,), ("FLASH_ATTN_MLA takes no fp8 cache" if not sixteen_bit else
                                               f"FLASH_ATTN_MLA takes a latent head of 576 only, not {latent} "
                                               "(flashattn_mla.py get_supported_head_sizes)")
                           + "; FlashMLA dense runs on Hopper")
    elif major == 10 and common_head:
        if spec.qk_nope_head_dim in _FLASHINFER_MLA_NOPE:
            chosen = fixed("FLASHINFER_MLA", (32, 64), "first of _get_backend_priorities on 10.x")
        if chosen is None:
            chosen = fixed("CUTLASS_MLA", (128,), "FLASHINFER_MLA needs qk_nope_head_dim 64, 128 or 192"
                           + (" and the request's block a multiple of 32 or 64" if given else "")
                           + (" (TOKENSPEED_MLA DeepSeek-R1's dims)" if version == "0.33" and not sixteen_bit
                              else ""))
    if chosen is not None:
        return _mla_kernel_check(version, spec, chosen)
    if given and requested_block % MLA_KERNEL_BLOCK:
        return KVBackend(None, f"vLLM {version} pages an MLA cache only in multiples of {MLA_KERNEL_BLOCK} tokens "
                               "(each MLA backend's supports_block_size: FLASH_ATTN_MLA and TRITON_MLA "
                               f"MultipleOf({MLA_KERNEL_BLOCK}), FLASHMLA 64, FLASHINFER_MLA 32 or 64, CUTLASS_MLA "
                               f"128), not --block-size {requested_block}: {_NO_BACKEND}")
    why = ("the MLA backend of _get_backend_priorities left: FLASH_ATTN_MLA and FLASHMLA run on 9.x, FLASHINFER_MLA "
           "and CUTLASS_MLA on 10.x" if common_head else
           f"the only MLA backend that takes a latent head of {latent} (kv_lora_rank {spec.kv_lora_rank} + "
           f"qk_rope_head_dim {spec.qk_rope_head_dim}): FLASHMLA, FLASHINFER_MLA and CUTLASS_MLA take {heads} "
           "(MLACommonBackend get_supported_head_sizes), FLASH_ATTN_MLA "
           + ("576" if version == "0.33" else heads) + ", TRITON_MLA any")
    if sixteen_bit:
        return KVBackend("TRITON_MLA", f"vLLM {version} runs a 16-bit MLA cache on TRITON_MLA ({why}), at the "
                                       "requested block (MultipleOf(16): its preferred block is the default 16)")
    return _triton(version, capability, "TRITON_MLA", why.replace("FLASH_ATTN_MLA and FLASHMLA run",
                                                                  "FLASH_ATTN_MLA takes no fp8 cache, FLASHMLA runs")
                   if common_head else why)


#: the releases whose ``--kv-cache-dtype`` takes the per-token-head caches (config/cache.py ``CacheDType``)
PER_TOKEN_HEAD_RELEASES = ("0.33",)
#: the only backend of 0.33 that lists them (triton_attn.py ``TritonAttentionBackend.supported_kv_cache_dtypes``)
_PER_TOKEN_HEAD_BACKEND = "TRITON_ATTN"
#: the per-token-head cache whose codes are fp8: vLLM's Triton attention refuses it below `TRITON_FP8E4NV`
FP8_PER_TOKEN_HEAD = "fp8_per_token_head"
#: why the integer per-token-head caches compile below 8.0 (V100, T4), where vLLM 0.33 still builds TRITON_ATTN
_INTEGER_BELOW_8_0 = ("; below 8.0 too: TritonAttentionImpl.__init__ refuses only fp8-named caches below 8.9 and a "
                      "bfloat16 one below 8.0, the int8 codes are cast to the query's dtype before tl.dot "
                      "(triton_unified_attention.py _cast_kv_tile) and int4's unpacked to float32 "
                      "(int4_per_token_head.py), no fp8 type, and Triton runs every tl.dot below 8.0 on its FMA path "
                      "(lib/Dialect/TritonGPU/Transforms/AccelerateMatmul.cpp BlockedToMMA: \"Dot op using MMA for "
                      "compute capability ... has been deprecated. It falls back to the FMA path\"), so no MMA the "
                      "device lacks (Turing has no tf32 one for int4's float32 dots) is emitted")


def per_token_head_backend(version: str, spec: ModelSpec, cache_dtype: str, requested_block: int = DEFAULT_BLOCK_SIZE,
                           compute_capability: tuple[int, int] | None = None) -> KVBackend:
    """The backend vLLM `version` runs `spec`'s ``int8_per_token_head``, ``int4_per_token_head`` or
    ``fp8_per_token_head`` cache (`cache_dtype`) on at a ``--block-size`` of `requested_block`, on a device of
    `compute_capability` (None: not known, which decides all but the fp8 one's floor), or why none.

    Only 0.33's ``CacheDType`` has them (0.11's and 0.19's, a ``Literal`` the engine arguments validate, do not), and
    of its CUDA backends only TRITON_ATTN lists them (``supported_kv_cache_dtypes``): FLASH_ATTN, FLASHINFER,
    FLEX_ATTENTION and TURBOQUANT do not, nor any MLA or sparse MLA backend (mla/*.py; MLACommonBackend, whose
    ``customize_spec`` would size a latent page with the two fp32 scales, keeps AttentionBackend's auto / float16 /
    bfloat16), and the Triton composites (TRITON_FLASHINFER, TRITON_FLASH_ATTN) need both halves to take a dtype
    (composite.py ``supports_kv_cache_dtype``), so ``_get_backend_priorities`` ends at TRITON_ATTN, which takes every
    compute capability (``supports_compute_capability``), float32 models, sinks, sliding windows and multimodal
    prefixes, heads of 32 or more (``supports_head_size``) and blocks that are a multiple of 16
    (``supports_block_size``), at the requested block (its preferred block is the default 16).  int4's write kernel
    packs two codes a byte and asserts even K and V heads (int4_per_token_head.py ``reshape_and_cache_int4``).
    ``TritonAttentionImpl.__init__`` raises for any cache dtype starting "fp8" below 8.9 (fp8_per_token_head's codes
    are read as float8_e4m3fn, ``_pth_key_value_caches``, which Triton compiles from 8.9: `TRITON_FP8E4NV`); the
    integer ones compile on 7.0 and 7.5 (`_INTEGER_BELOW_8_0`)."""
    if version not in PER_TOKEN_HEAD_RELEASES:
        return KVBackend(None, f"vLLM {version}'s --kv-cache-dtype has no {cache_dtype}: config/cache.py CacheDType, "
                               "the Literal CacheConfig validates --kv-cache-dtype against, lists auto, the 16-bit and "
                               "the per-tensor fp8 caches (fp8, fp8_e4m3, fp8_e5m2, fp8_inc; 0.19 also fp8_ds_mla) "
                               "only; vLLM 0.33 (runtime.engine_version) runs it")
    where = f"vLLM {version} runs the {cache_dtype} cache on {_PER_TOKEN_HEAD_BACKEND} alone (triton_attn.py " \
            "supported_kv_cache_dtypes; no other backend lists it)"
    if spec.is_mla or spec.has_indexer:
        return KVBackend(None, f"vLLM {version} has no MLA backend for the {cache_dtype} cache: FLASH_ATTN_MLA, "
                               "FLASHMLA, FLASHINFER_MLA, CUTLASS_MLA, TOKENSPEED_MLA, TRITON_MLA and the sparse MLA "
                               f"backends do not list it (supported_kv_cache_dtypes, v1/attention/backends/mla/; "
                               "MLACommonBackend.customize_spec sizes such a page, but no backend takes one): "
                               f"{_NO_BACKEND}",
                         remedy="a 16-bit or fp8 cache (kv_cache.dtype bf16 / fp8) runs there")
    if spec.head_dim < TRITON_MIN_HEAD:
        return KVBackend(None, f"{where}, which takes heads of {TRITON_MIN_HEAD} or more (supports_head_size), not "
                               f"{spec.head_dim}: {_NO_BACKEND}",
                         remedy="a 16-bit cache (kv_cache.dtype bf16) runs there")
    if requested_block % DENSE_KERNEL_BLOCK:
        return KVBackend(None, f"{where}, which pages multiples of {DENSE_KERNEL_BLOCK} tokens (supports_block_size: "
                               f"block_size % 16), not --block-size {requested_block}: {_NO_BACKEND}",
                         remedy=f"a --block-size that is a multiple of {DENSE_KERNEL_BLOCK} (kv_cache.block_size) "
                                "runs there")
    if cache_dtype == "int4_per_token_head" and spec.head_dim % 2:
        return KVBackend(None, f"{where}, whose int4 write kernel packs two codes a byte and asserts even K and V "
                               f"heads (v1/attention/ops/int4_per_token_head.py reshape_and_cache_int4), not "
                               f"{spec.head_dim}",
                         remedy="int8_per_token_head (kv_cache.dtype) runs there")
    if cache_dtype == FP8_PER_TOKEN_HEAD and compute_capability is not None and compute_capability < TRITON_FP8E4NV:
        return KVBackend(None, f"{where}, whose TritonAttentionImpl.__init__ raises ValueError(\"FP8 KV cache is not "
                               "supported by the Triton attention backend on ... native FP8 (fp8e4nv) requires "
                               "SM89+\") for a cache dtype starting fp8 on a device below compute capability "
                               f"{_capability_text(TRITON_FP8E4NV)} (its codes are read as float8_e4m3fn, "
                               "_pth_key_value_caches: Triton's fp8e4nv), not "
                               f"{_capability_text(compute_capability)}",
                         remedy="int8_per_token_head (kv_cache.dtype), the same bytes, runs there")
    below = (_INTEGER_BELOW_8_0 if compute_capability is not None and compute_capability < (8, 0)
             and cache_dtype != FP8_PER_TOKEN_HEAD else "")
    return KVBackend(_PER_TOKEN_HEAD_BACKEND, f"{where}, at the requested block, each head's codes followed by "
                                              "their fp32 scale in the page (TritonAttentionBackend.customize_spec)"
                                              f"{below}")


def kv_backend(version: str, spec: ModelSpec, cache_dtype: str, compute_capability: tuple[int, int],
               requested_block: int = DEFAULT_BLOCK_SIZE, float32: bool = False) -> KVBackend | None:
    """The backend vLLM `version` runs `spec`'s KV cache of vLLM `cache_dtype` (``auto``: a 16-bit cache,
    `VLLM_16BIT_CACHE_DTYPES`; ``fp8_e4m3``, ``fp8_e5m2``; 0.33's per-token-head caches, `per_token_head_backend`)
    on, on a device of `compute_capability`, at a
    ``--block-size`` of `requested_block` (`DEFAULT_BLOCK_SIZE`: not given), with the model in float32 (`float32`:
    FlashAttention and FlashInfer take fp16 and bf16 only), and the block it pages when that is not the requested one,
    or why none does; None for another dtype, a release not read, a dense model's 16-bit cache (but a multimodal-prefix
    model's, `MM_PREFIX_MODEL_TYPES`) or a DeepSeek Sparse Attention model (not decided here)."""
    if cache_dtype in VLLM_PER_TOKEN_HEAD_CACHE_DTYPES and version in RELEASES:
        return per_token_head_backend(version, spec, cache_dtype, requested_block, compute_capability)
    if cache_dtype not in _CACHE_DTYPES or version not in RELEASES or spec.has_indexer:
        return None
    if spec.is_mla:
        if version == "0.11":
            refused = mla_latent_refusal(version, spec)
            if refused:
                return KVBackend(None, refused)
            return _mla_kernel_check(version, spec, _mla_v0_11(cache_dtype, compute_capability))
        return _mla_v0_19_v0_33(version, spec, cache_dtype, compute_capability, requested_block)
    if version != "0.11" and requested_block % DENSE_KERNEL_BLOCK:
        return _dense_block_refusal(version, cache_dtype, requested_block)
    if version != "0.11" and spec.model_type in MM_PREFIX_MODEL_TYPES:
        return _mm_prefix_v0_19_v0_33(version, spec, cache_dtype, compute_capability, requested_block, float32)
    if cache_dtype == "auto":
        return _wide_head_refusal(version, spec, compute_capability, float32)
    if version == "0.11":
        return _dense_v0_11(spec, cache_dtype, compute_capability, float32)
    return _dense_v0_19_v0_33(version, spec, cache_dtype, compute_capability, float32)


def kv_requirement(version: str, spec: ModelSpec, cache_dtype: str) -> str | None:
    """Where vLLM `version` runs `spec`'s fp8 cache (`cache_dtype`), or in which blocks it pages an MLA model's 16-bit
    cache (``auto``), in words, for a plan on a device whose compute capability is not known (which nibble then
    neither refuses nor moves off the requested block), or from which capability it runs 0.33's fp8_per_token_head
    cache; None when it is not decided here (the integer per-token-head caches: the same on every device)."""
    if cache_dtype == FP8_PER_TOKEN_HEAD and version in PER_TOKEN_HEAD_RELEASES:
        return (f"vLLM {version} runs the {cache_dtype} cache of {spec.name} from compute capability "
                f"{_capability_text(TRITON_FP8E4NV)} only: TRITON_ATTN, the only backend that lists it, raises below "
                "(TritonAttentionImpl.__init__: \"native FP8 (fp8e4nv) requires SM89+\"); int8_per_token_head, the "
                "same bytes, runs on every device")
    if cache_dtype not in _CACHE_DTYPES or version not in RELEASES or spec.has_indexer \
            or cache_dtype in VLLM_PER_TOKEN_HEAD_CACHE_DTYPES:  # the same on every device: `per_token_head_backend`
        return None
    latent = mla_latent_head(spec)
    if spec.is_mla and version != "0.11" and latent not in MLA_LATENT_HEADS[version]:
        fp8 = (" (an fp8 cache from 8.9, fp8e4nv; fp8_e5m2 on no device)" if cache_dtype != "auto" else "")
        return (f"vLLM {version} runs the MLA cache of {spec.name}, a latent head of {latent}, on TRITON_MLA alone"
                f"{fp8}, at the requested block: FLASHMLA, FLASHINFER_MLA and CUTLASS_MLA take latent heads of "
                + "/".join(str(size) for size in sorted(MLA_LATENT_HEADS[version])) + " only")
    mm_prefix = version != "0.11" and spec.model_type in MM_PREFIX_MODEL_TYPES
    if mm_prefix and cache_dtype != "auto":
        return (f"vLLM {version} runs an fp8 KV cache for {spec.name}, a multimodal-prefix model (is_mm_prefix_lm), "
                "from 8.9 only: its attention runs on TRITON_ATTN (fp8e4nv from 8.9)"
                + (", TRITON_FLASHINFER on 10.x or TRITON_FLASH_ATTN on 9.x" if version == "0.33" else "")
                + ", FLASH_ATTN and FLASHINFER taking no multimodal prefix")
    if cache_dtype == "auto":
        if mm_prefix and version == "0.33" and spec.head_dim in _COMPOSITE_HEADS and not spec.attention_sinks:
            return (f"vLLM 0.33 pages the 16-bit cache of {spec.name}, a multimodal-prefix model (is_mm_prefix_lm), "
                    f"in {TRITON_FLASHINFER_BLOCK}-token blocks on 10.x (TRITON_FLASHINFER's only kernel block) when "
                    "--block-size is not given, and at the requested block elsewhere")
        head = spec.head_dim
        if (not spec.is_mla and version == "0.33" and head % 8 == 0 and FA2_MAX_HEAD < head <= FA4_MAX_HEAD
                and (spec.v_head_dim or head) == head):
            where = "11.x" if head in _FLASHINFER_HEADS[version] else "10.x and 11.x"
            return (f"vLLM 0.33 runs no 16-bit cache of {spec.name}'s heads of {head} on {where}: FLASH_ATTN takes "
                    f"them there and runs FlashAttention 2, which raises on heads above {FA2_MAX_HEAD} "
                    "(fa_utils.py get_flash_attn_version)")
        if not spec.is_mla:
            return None
        if version == "0.11":
            blocks = ("in 64-token blocks on 9.x (FlashMLA) and 128 on 10.0 (CUTLASS MLA), forced whatever "
                      "--block-size says")
        else:
            blocks = ("in 32-token blocks on 10.x (FlashInfer MLA; 128 with CUTLASS MLA where FlashInfer MLA does not "
                      "take the model) when --block-size is not given")
            if (spec.kv_lora_rank, spec.qk_rope_head_dim) != (512, 64):
                blocks += (f" (of its kv_lora_rank {spec.kv_lora_rank} + qk_rope_head_dim {spec.qk_rope_head_dim}, "
                           "FlashInfer MLA's kernel runs 512 + 64 and 256 + 64 only, and FlashMLA's, which 0.33 picks "
                           "on 9.x for a latent other than 576, and CUTLASS MLA's 512 + 64 only: a device where vLLM "
                           "picks those fails when it first decodes)")
        return (f"vLLM {version} pages the 16-bit MLA cache of {spec.name} {blocks}, and at the requested block "
                "elsewhere")
    if spec.is_mla:
        if version == "0.11":
            where = "on 9.x (FlashMLA, 64-token blocks) and 10.0 (CUTLASS MLA, 128): Triton MLA refuses it"
        elif cache_dtype == "fp8_e5m2":
            where = "on no device: no MLA backend lists fp8_e5m2"
        else:
            where = ("on 9.x (FlashMLA, 64-token blocks), 10.x (FlashInfer MLA or CUTLASS MLA) and, on TRITON_MLA, "
                     "from 8.9 (fp8e4nv)")
            if (spec.kv_lora_rank, spec.qk_rope_head_dim) != (512, 64):
                where += (f"; of its kv_lora_rank {spec.kv_lora_rank} + qk_rope_head_dim {spec.qk_rope_head_dim}, "
                          "FlashMLA's and CUTLASS MLA's kernels run 512 + 64 only, FlashInfer MLA's also 256 + 64")
    elif version == "0.11":
        where = ("on 9.0 (FlashAttention 3" + (", which refuses fp8_e5m2)" if cache_dtype == "fp8_e5m2" else ")")
                 + ", 10.0 and, on TRITON_ATTN, from 8.9 (fp8e4nv): FlexAttention below 8.0 refuses it")
    else:
        floor = "7.5" if version == "0.19" else "8.0"
        where = (f"from 8.9 (TRITON_ATTN's fp8e4nv, FlashAttention 3 on 9.x), and from {floor} on FLASHINFER for heads "
                 "of " + "/".join(str(size) for size in sorted(_FLASHINFER_HEADS[version])) + " without attention "
                 "sinks")
    return f"vLLM {version} runs an fp8 KV cache for {spec.name} {where}"


#: the backends whose metadata builder is TRITON_ATTN's or holds one (the composites' general builder, composite.py
#: ``CompositeAttentionMetadataBuilder``: triton_flashinfer.py and triton_flash_attn.py build TritonAttentionBackend
#: for the image masks), so hold its split-KV decode scratch in 0.19 and 0.33 (`engines.vllm.triton_decode_scratch`)
TRITON_BUILDER_BACKENDS = frozenset({"TRITON_ATTN", "TRITON_FLASHINFER", "TRITON_FLASH_ATTN"})


def _dense_16bit_v0_19_v0_33(version: str, spec: ModelSpec, capability: tuple[int, int], float32: bool) -> str:
    """The backend 0.19's and 0.33's priority walk (platforms/cuda.py ``_get_backend_priorities``) takes for a dense
    model's 16-bit cache, as `_dense_v0_19_v0_33` walks it for an fp8 one without its fp8 tests: FLASH_ATTN from 8.0
    for heads that are a multiple of 8 up to 256 (0.33: or 512 where FlashAttention 4 is built, 9.x to 11.x) in
    fp16/bf16, sinks from 9.0; FLASHINFER (first on 10.x) for heads of 64/128/256 (0.33: 512) from 7.5 (0.33: 8.0) to
    12.1 in fp16/bf16, sinks where TRT-LLM attention runs; else TRITON_ATTN for heads of 32 or more, else
    FLEX_ATTENTION.  The backend chosen where it then fails (`_wide_head_refusal`) is named all the same."""
    major = capability[0]
    head = spec.head_dim
    sinks = spec.attention_sinks
    wide = version == "0.33" and FA2_MAX_HEAD < head <= FA4_MAX_HEAD and major in (9, 10, 11)
    flash_attention = (capability >= (8, 0) and head % 8 == 0 and (head <= FA2_MAX_HEAD or wide) and not float32
                       and (not sinks or capability >= (9, 0)))
    flashinfer_floor = (7, 5) if version == "0.19" else (8, 0)
    flashinfer_sinks = major == 10 or (version == "0.33" and (capability == (9, 0) or major == 12))
    flashinfer = (flashinfer_floor <= capability <= (12, 1) and head in _FLASHINFER_HEADS[version] and not float32
                  and (not sinks or flashinfer_sinks))
    order = (("FLASHINFER", flashinfer), ("FLASH_ATTN", flash_attention))
    for backend, takes in (order if major == 10 else order[::-1]):
        if takes:
            return backend
    return "TRITON_ATTN" if head >= TRITON_MIN_HEAD else "FLEX_ATTENTION"


def attention_backend_name(version: str, spec: ModelSpec, cache_dtype: str, compute_capability: tuple[int, int],
                           requested_block: int = DEFAULT_BLOCK_SIZE, float32: bool = False) -> str | None:
    """The backend vLLM `version` (0.19, 0.33) runs `spec`'s attention on for a KV cache of vLLM `cache_dtype` on a
    device of `compute_capability`: `kv_backend`'s where it decides one, else for a dense model's 16-bit cache
    `_dense_16bit_v0_19_v0_33`'s; None where no backend runs it, for 0.11 (whose builders hold no decode scratch),
    another dtype or a DeepSeek Sparse Attention model."""
    if version not in ("0.19", "0.33") or spec.has_indexer:
        return None
    found = kv_backend(version, spec, cache_dtype, compute_capability, requested_block, float32)
    if found is not None:
        return found.backend
    if cache_dtype != "auto" or spec.is_mla:
        return None
    return _dense_16bit_v0_19_v0_33(version, spec, compute_capability, float32)
