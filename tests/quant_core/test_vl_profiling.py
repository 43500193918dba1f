"""vLLM's profiling of a vision-language model's encoder (quant_core/engines/vllm.py: `qwen_encoder_dummy`,
`qwen_encoder_profile`): ``GPUModelRunner.profile_run`` encodes a dummy batch of the processor's largest images or
videos, keeps the outputs in the encoder cache, then runs the text pass and the sampler; the peak of the two is what
vLLM reserves before sizing the KV cache."""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import device_facts, get_device, get_preset
from quant_core.engines import BatchLimits, Stage
from quant_core.engines.torch_cuda import blas_workspace_bytes
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_encoders import (
    pixtral_encoder_dummy,
    pixtral_encoder_profile,
    qwen3_vl_video_resize,
    qwen_encoder_dummy,
    qwen_encoder_profile,
    rotary_cache_bytes,
)
from quant_core.engines.vllm_sampler import sampler_state_bytes
from quant_core.formats import float_format, int4
from quant_core.hf_config import model_from_hf_config
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec
from tests.quant_core.test_hf_config import GEMMA_3_27B_IT

#: the catalog devices the figures below are charged on
A100_40GB = device_facts("a100-40gb")
A100_80GB = device_facts("a100-80gb")
H100 = device_facts("h100-80gb")
L4 = device_facts("l4")

GIB = 1 << 30


def _stage(spec: ModelSpec, tensor_parallel: int = 1) -> Stage:
    return Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True)


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_qwen2_5_vl_profiles_the_video_vllm_logs_as_its_worst_case(version: str) -> None:
    # vLLM's own warning for Qwen2.5-VL-7B-Instruct at max_model_len 128000 (vllm-project/vllm PR #12604, the
    # Qwen2.5-VL pull request, 2025-02-04 log): "131072 tokens in total, out of which {'image': 16384, 'video':
    # 114688} are reserved for multi-modal embeddings": the largest image (max_pixels 12,845,056 = 3,584^2 px,
    # 256 x 256 patches of 14 px, merged 2 x 2) is 16,384 tokens, and the dummy video is 14 frames (7 pairs) of it.
    spec = get_preset("qwen2.5-vl-7b-instruct")
    worst = qwen_encoder_dummy(spec, version, 8192, 128000)
    assert worst is not None
    assert (worst.modality, worst.items, worst.tokens_per_item, worst.budget) == ("video", 1, 114688, 114688)
    assert worst.patches == 114688 * 4
    # the frames fit max_model_len (qwen2_vl.py get_num_frames_with_most_features): one pair below 32,768 tokens,
    # one more pair per 16,384, at most 14 frames
    groups = {context: qwen_encoder_dummy(spec, version, 8192, context) for context in
              (4096, 16000, 32768, 49151, 65536, 262144)}
    assert {context: dummy.tokens_per_item // 16384 for context, dummy in groups.items() if dummy} == {
        4096: 1, 16000: 1, 32768: 2, 49151: 2, 65536: 4, 262144: 7}


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_qwen3_vl_profiles_its_largest_image_whatever_the_context(version: str) -> None:
    # Qwen3-VL's image processor: size.longest_edge 16,777,216 = 4,096^2 px, 256 x 256 patches of 16 px merged
    # 2 x 2 = 16,384 tokens; its dummy video (qwen3_vl.py get_max_video_tokens: two frames of the video processor's
    # 25,165,824 / 2 px) is 12,288 tokens, so the image is profiled, one per 16,384-token budget.
    spec = get_preset("qwen3-vl-4b-instruct")
    for context in (4096, 262144):
        dummy = qwen_encoder_dummy(spec, version, 8192, context)
        assert dummy is not None
        assert (dummy.modality, dummy.items, dummy.tokens_per_item, dummy.budget, dummy.patches) == (
            "image", 1, 16384, 16384, 65536)
    # a batch budget above an item encodes as many items as fit it (encoder_budget.py _get_max_items)
    larger = qwen_encoder_dummy(spec, version, 40000, 4096)
    assert larger is not None and (larger.items, larger.budget, larger.patches) == (2, 40000, 2 * 65536)


def test_vllm_0_11_profiles_qwen3_vl_with_a_video_resized_by_its_video_processor() -> None:
    # vLLM 0.11's qwen3_vl.py: the dummy video starts at two frames of the largest image (4,096 px) and gains frames
    # while every clip up to it stays within max_model_len tokens, at most 24,576; the video processor
    # (video_preprocessor_config.json: size 4,096 to 25,165,824 px for the whole clip) shrinks each frame.
    # Two frames: 3,520 px (220 x 220 patches of 16 px, one pair: 12,100 tokens); three: 2,880 px, two pairs,
    # 16,200 tokens, the most of any frame count, so from a 16,200-token context the loop runs to the cap: 24,576
    # frames of 32 px (2 x 2 patches), 12,288 tokens.  Each is counted at 12.5 tokens per token (a timestamp and the
    # vision start/end around it): the encoder budget.
    spec = get_preset("qwen3-vl-4b-instruct")
    assert VllmProfile("0.11").activation_context_steps(spec, BatchLimits(8192, 1024, 16000)) == (16200,)
    below = qwen_encoder_dummy(spec, "0.11", 8192, 16199)
    above = qwen_encoder_dummy(spec, "0.11", 8192, 16200)
    assert below is not None and above is not None
    assert (below.modality, below.items, below.tokens_per_item, below.budget, below.patches) == (
        "video", 1, 12100, 151250, 48400)
    assert (above.tokens_per_item, above.budget, above.patches) == (12288, 153600, 49152)
    # one item of 48,400 patches (H = 1,024, I = 4,096, 3 deepstack mergers, projection 2,560):
    #   pixel_values 48,400 x 1,536 x 2 = 148,684,800
    #   one block: max(0.11's attention 3H + 9H = 12,288, MLP max(2H + 2I, 3H + I) = 10,240) elements
    #   x 2 x 48,400 = 1,189,478,400; deepstack features 3 x 12,100 x 2,560 x 2 = 185,856,000
    #   outputs widened to the 151,250-row budget (profile_run's new_zeros((encoder_budget, hidden))):
    #   151,250 x 2,560 x (1 + 3) x 2 = 3,097,600,000
    profile = qwen_encoder_profile(spec, "0.11", 1, 8192, 16000)
    assert profile is not None
    assert profile[:2] == (148_684_800 + 1_189_478_400 + 185_856_000, 148_684_800 + 3_097_600_000)
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    answer = plan(spec, hardware, Workload(16000, 1), PlanOptions(engine_version="0.11"))
    text = VllmProfile("0.11").activation(_stage(replace(spec, vision=None)), BatchLimits(8192, 1024, 16000)).bytes
    deepstack = 3 * 8192 * 2560 * 2
    # under the text pass (1,024 x 151,936 x 38-byte sampler, 5.6 GiB) vLLM still holds those 3.0 GiB
    assert answer.primary.devices[0].activation_bytes == text + deepstack + profile[1]
    assert any("encoder budget of 151250 tokens, and widens the outputs" in warning for warning in answer.warnings)


def test_qwen2_5_vl_7b_encoder_bytes_follow_vllms_code() -> None:
    # One 16,384-token video item at max_model_len 16,000: n = 65,536 patches (H = 1,280, I = 3,420, bf16):
    #   pixel_values, cast to bf16 by call_hf_processor: 65,536 x (3 x 2 x 14 x 14 = 1,176) x 2 = 154,140,672
    #   one block's peak, eager with native SiluAndMul: max(attention 3H + 8H = 14,080,
    #   MLP max(4H + 4I = 18,800, 5H + 3I = 16,660)) = 18,800 elements x 2 bytes x 65,536 = 2,464,153,600
    #   encoder outputs kept: 16,384 rows x 3,584 (the language model's width) x 2 = 117,440,512
    spec = get_preset("qwen2.5-vl-7b-instruct")
    profile = qwen_encoder_profile(spec, "0.19", 1, 8192, 16000)
    assert profile is not None
    peak, held, basis = profile
    assert peak == 154_140_672 + 2_464_153_600
    assert held == 154_140_672 + 117_440_512
    assert "1 dummy video item(s) of 16384 tokens" in basis
    # tensor parallel 2 splits the MLP's width, not the hidden states or the pixels: max(4H + 2I = 11,960,
    # 5H + 1.5I = 11,530, attention 3H + 4H = 8,960) = 11,960 elements
    split = qwen_encoder_profile(spec, "0.19", 2, 8192, 16000)
    assert split is not None and split[0] == 154_140_672 + 65536 * 11960 * 2
    # vLLM 0.11's attention makes q, k and v contiguous before rotating (3H + 9H/t): still below its MLP here
    old = qwen_encoder_profile(spec, "0.11", 1, 8192, 16000)
    assert old is not None and old[:2] == (peak, held)


def test_qwen3_vl_4b_encoder_bytes_follow_vllms_code() -> None:
    # One 16,384-token image: n = 65,536 patches (H = 1,024, I = 4,096, 3 deepstack mergers, projection 2,560):
    #   pixel_values 65,536 x (3 x 2 x 16 x 16 = 1,536) x 2 = 201,326,592
    #   one block: max(attention 3H + 8H = 11,264, GELU MLP max(2H + 2I = 10,240, 3H + I = 7,168)) = 11,264
    #   elements x 2 x 65,536 = 1,476,395,008; the deepstack features held under the later blocks:
    #   3 x 16,384 x 2,560 x 2 = 251,658,240
    #   outputs kept: 16,384 x 2,560 x (1 + 3) x 2 = 335,544,320
    spec = get_preset("qwen3-vl-4b-instruct")
    profile = qwen_encoder_profile(spec, "0.19", 1, 8192, 16000)
    assert profile is not None
    assert profile[:2] == (201_326_592 + 1_476_395_008 + 251_658_240, 201_326_592 + 335_544_320)


@pytest.mark.parametrize("version", ["0.19", "0.33"])
@pytest.mark.parametrize("model", ["qwen2.5-vl-3b-instruct", "qwen2.5-vl-7b-instruct", "qwen3-vl-2b-instruct",
                                   "qwen3-vl-4b-instruct"])
def test_on_a_24_gb_card_the_encoder_pass_is_vllms_profiling_peak(model: str, version: str) -> None:
    # On an L4 (2,048 batched tokens, 256 sequences: EngineArgs.get_batch_defaults) the text pass of a small VL
    # model peaks near 0.5 GiB, the dummy image or video through the tower near 2 GiB: the plan reserves the latter.
    # Charging only the text pass (nibble before this term) promised 1.1-1.9 GiB of KV cache vLLM does not have.
    spec = get_preset(model)
    profile = VllmProfile(version)
    limits = replace(profile.batch_limits(get_device("l4").planning_bytes, "l4"), max_model_len=16000)
    assert (limits.max_batched_tokens, limits.max_num_seqs) == (2048, 256)
    text = profile.activation(_stage(replace(spec, vision=None)), limits, device=L4).bytes
    encoder = qwen_encoder_profile(spec, version, 1, limits.max_batched_tokens, 16000)
    assert encoder is not None
    deepstack = spec.vision.deepstack_mergers * 2048 * spec.hidden_size * 2 if model.startswith("qwen3") else 0
    charged = profile.activation(_stage(spec), limits, device=L4)
    print(f"{model} on vLLM {version}, L4: text pass {text / GIB:.2f} GiB, encoder peak {encoder[0] / GIB:.2f} GiB, "
          f"charged {charged.bytes / GIB:.2f} GiB")
    # the rotary cos/sin cache (rotary_cache_bytes) is held beside the encoder's peak as beside the text pass, as are
    # the L4's cuBLAS workspaces, taken at the tower's first matrix product (on 0.19; 0.33's init_device takes them
    # before its start-up snapshot, where they are charged instead), and on 0.33 the sampler's penalty state
    # for 256 sequences (Model Runner V2 allocates it with the Sampler, before profiling) and the structured-output
    # grammar bitmask and logits indices made beside it, 256 x (ceil(vocabulary / 32) + 1) int32
    # (gpu/structured_outputs.py StructuredOutputsWorker)
    bitmask = 256 * (-(-spec.vocab_size // 32) + 1) * 4 if version == "0.33" else 0
    blas = (0 if version == "0.33" else blas_workspace_bytes(L4)) + sampler_state_bytes(spec, 256, version) + bitmask
    assert charged.bytes == encoder[0] + deepstack + rotary_cache_bytes(spec, version) + blas
    assert charged.bytes - text - deepstack > 1.1 * GIB
    assert "dummy" in charged.basis and "the text pass:" in charged.basis


def test_on_an_h100_the_text_pass_stays_the_peak_beside_what_the_encoder_leaves() -> None:
    # 8,192 batched tokens and 1,024 sampled rows on an H100: vLLM 0.11's sampler pass (1,024 x 152,064 x 38 bytes,
    # 5.5 GiB) outweighs the encoder, which still leaves its pixel_values and outputs held (0.25 GiB) under it.
    spec = get_preset("qwen2.5-vl-7b-instruct")
    profile = VllmProfile("0.11")
    limits = BatchLimits(8192, 1024, 16000)
    text = profile.activation(_stage(replace(spec, vision=None)), limits).bytes
    encoder = qwen_encoder_profile(spec, "0.11", 1, 8192, 16000)
    assert encoder is not None and encoder[0] < text
    assert profile.activation(_stage(spec), limits).bytes == text + encoder[1]


def test_the_plan_charges_the_dummy_video_of_the_requested_context() -> None:
    # Qwen2.5-VL-7B on one H100 at vLLM 0.19: at max_model_len 131,072 vLLM encodes 14 frames (114,688 tokens,
    # 458,752 patches): 458,752 x (1,176 x 2 bytes of pixel_values + 18,800 x 2 of one block) = 18,328,059,904 bytes,
    # 17.07 GiB of activations, against 2.45 GiB at 16,000; the plan's note says what it charged.
    spec = get_preset("qwen2.5-vl-7b-instruct")
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    short = plan(spec, hardware, Workload(16000, 1), PlanOptions())
    long = plan(spec, hardware, Workload(131072, 1), PlanOptions())
    encoder = qwen_encoder_profile(spec, "0.19", 1, 8192, 131072)
    assert encoder is not None
    assert encoder[0] == 18_328_059_904
    assert long.primary.devices[0].activation_bytes == (encoder[0] + rotary_cache_bytes(spec, "0.19")
                                                        + blas_workspace_bytes(H100))
    assert long.primary.devices[0].activation_bytes > short.primary.devices[0].activation_bytes + 6 * GIB
    assert any("1 dummy video item(s) of 114688 tokens" in warning for warning in long.warnings)
    assert any("the plan charges the requested context's" in warning for warning in short.warnings)


def test_the_longest_context_is_solved_with_the_video_vllm_would_profile_at_it() -> None:
    # Qwen2.5-VL-7B at bf16 on one L4: the dummy video grows by 16,384 tokens of frames from max_model_len 32,768 on,
    # so a context that fits beside the one-pair video (charged at the 4,096 requested) may not fit beside its own.
    # The answer is the longest context that fits when vLLM is started with it: each context range is solved with
    # its own video, and the answer's own plan fits.
    spec = get_preset("qwen2.5-vl-7b-instruct")
    device = get_device("l4")
    hardware = Hardware(device.planning_bytes, 1, "l4")
    options = PlanOptions(weight_format=int4(128))
    answer = plan(spec, hardware, Workload(4096, 1), options).primary
    assert answer.max_context_length is not None
    longest = answer.max_context_length
    at_longest = plan(spec, hardware, Workload(longest, 1), options).primary
    assert at_longest.fits
    assert not plan(spec, hardware, Workload(longest + 1, 1), options).primary.fits
    # the one-pair charge held for every context (the plan's activation at 4,096, given as runtime activation bytes)
    # would have promised a context vLLM cannot start with
    held = plan(spec, hardware, Workload(4096, 1),
                replace(options, activation_bytes=answer.devices[0].activation_bytes)).primary.max_context_length
    assert held is not None and held > longest
    assert not plan(spec, hardware, Workload(held, 1), options).primary.fits
    profile = VllmProfile("0.19")
    limits = replace(profile.batch_limits(device.planning_bytes, "l4"), max_model_len=4096)
    steps = profile.activation_context_steps(spec, limits)
    assert steps == tuple(groups * 16384 for groups in range(2, 8))
    print(f"Qwen2.5-VL-7B INT4 on an L4: longest context {longest} (activation at it "
          f"{at_longest.devices[0].activation_bytes / GIB:.2f} GiB), {held} with the 4,096-token video held")
    assert longest < 131072


def test_mistral_3_profiles_its_largest_images_as_many_as_the_budget_holds() -> None:
    # Mistral Small 3.x: vision_config.image_size 1,540 px, 14-px patches merged 2 x 2: 110 x 110 = 12,100 patches
    # and 55 x 55 = 3,025 embeddings an image; vLLM 0.11 counts the [IMG_BREAK] closing each of the 55 rows (3,080).
    # 8,192 batched tokens hold two images, 2,048 one (its budget raised to the image).
    spec = get_preset("mistral-small-3.2-24b-instruct-2506")
    found = {(version, batched): pixtral_encoder_dummy(spec, version, batched)
             for version in ("0.11", "0.19", "0.33") for batched in (2048, 8192)}
    assert {key: (dummy.items, dummy.tokens_per_item, dummy.budget, dummy.patches) for key, dummy in found.items()
            if dummy} == {("0.11", 2048): (1, 3025, 3080, 12100), ("0.11", 8192): (2, 3025, 8192, 24200),
                          ("0.19", 2048): (1, 3025, 3025, 12100), ("0.19", 8192): (2, 3025, 8192, 24200),
                          ("0.33", 2048): (1, 3025, 3025, 12100), ("0.33", 8192): (2, 3025, 8192, 24200)}


def test_mistral_3_encoder_bytes_follow_vllms_code() -> None:
    # One 1,540-px image on vLLM 0.19 (2,048 batched tokens): n = 12,100 patches, H = 1,024, I = 4,096:
    #   pixel_values 3 x 1,540^2 x 2 = 14,229,600
    #   the dense block-diagonal attention mask (no xformers in 0.19): 12,100^2 x 2 = 292,820,000
    #   one block: max(4H + 4I = 20,480, 5H + 3I = 17,408) elements x 2 x 12,100 = 495,616,000
    #   outputs kept: 3,025 x 5,120 (the language model's width) x 2 = 30,976,000
    spec = get_preset("mistral-small-3.2-24b-instruct-2506")
    profile = pixtral_encoder_profile(spec, "0.19", 1, 2048)
    assert profile is not None
    assert profile[:2] == (14_229_600 + 292_820_000 + 495_616_000, 14_229_600 + 30_976_000)
    assert "dense attention mask" in profile[2]
    # vLLM 0.11 (xformers' block-diagonal bias) and 0.33 (varlen attention over cu_seqlens) build no mask; 0.11
    # widens each image's 3,025 output rows to the 3,080-token budget
    for version, kept_rows in (("0.11", 3080), ("0.33", 3025)):
        other = pixtral_encoder_profile(spec, version, 1, 2048)
        assert other is not None and other[:2] == (14_229_600 + 495_616_000, 14_229_600 + kept_rows * 5120 * 2)


def test_on_a_small_card_vllm_0_19_reserves_the_pixtral_mask_above_the_text_pass() -> None:
    # Mistral Small 3.2 at INT4 on an A100 40GB (2,048 batched tokens, 256 sequences) with vLLM 0.19: the text pass
    # peaks at 0.51 GiB, the tower with its dense mask at 0.75 GiB: the plan reserves the latter, 0.24 GiB the
    # text-only term promised to the KV cache.
    spec = get_preset("mistral-small-3.2-24b-instruct-2506")
    profile = VllmProfile("0.19")
    limits = replace(profile.batch_limits(get_device("a100-40gb").planning_bytes, "a100-40gb"), max_model_len=16000)
    text = profile.activation(_stage(replace(spec, vision=None)), limits, device=A100_40GB).bytes
    encoder = pixtral_encoder_profile(spec, "0.19", 1, limits.max_batched_tokens)
    assert encoder is not None
    charged = profile.activation(_stage(spec), limits, device=A100_40GB).bytes
    print(f"Mistral Small 3.2 on vLLM 0.19, A100 40GB: text pass {text / GIB:.2f} GiB, Pixtral {encoder[0] / GIB:.2f} "
          f"GiB, charged {charged / GIB:.2f} GiB")
    blas = blas_workspace_bytes(A100_40GB)
    assert charged == encoder[0] + rotary_cache_bytes(spec, "0.19") + blas > text + 0.2 * GIB


def test_llama_4_and_gemma_3_keep_the_text_only_profiling_term_and_the_plan_says_so() -> None:
    # Llama 4's tower (mllama4.py) is not sized; the plan's note says its profiling is not modelled.
    spec = get_preset("llama-4-scout-17b-16e-instruct")
    assert qwen_encoder_dummy(spec, "0.19", 8192, 16000) is None and pixtral_encoder_dummy(spec, "0.19", 8192) is None
    limits = BatchLimits(8192, 1024, 16000)
    assert VllmProfile("0.19").activation(_stage(spec), limits) == \
        VllmProfile("0.19").activation(_stage(replace(spec, vision=None)), limits)
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 4, "h100-80gb")
    warnings = plan(spec, hardware, Workload(16000, 1), PlanOptions(weight_format=int4(128))).warnings
    assert any(warning.startswith("Llama 4's vision tower is counted in the weights at 16 bits, but vLLM's "
                                  "profiling run over dummy images through it is not modelled") for warning in warnings)
    # likewise Gemma 3's SigLIP tower (tests/quant_core/test_hf_config.py's published Gemma-3-27B-IT config)
    gemma = model_from_hf_config(GEMMA_3_27B_IT)
    warnings = plan(gemma, Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb"), Workload(16000, 1),
                    PlanOptions(weight_format=int4(128))).warnings
    assert any(warning.startswith("Gemma 3's vision tower is counted in the weights at 16 bits, but vLLM's profiling")
               for warning in warnings)


def test_the_qwen3_vl_video_resize_bounds_the_whole_clip() -> None:
    # transformers' qwen3_vl video smart_resize (vLLM 0.11's video_smart_resize), square 4,096 px frames, factor 32,
    # 4,096 to 25,165,824 px for the clip: 2 frames -> beta = sqrt(2 x 4,096^2 / 25,165,824) = 1.1547 -> 3,520 px;
    # 3 frames -> sqrt(2) -> 2,880 px; 24,576 frames -> beta 128 -> 32 px, the floor of one factor; a 1-px frame
    # pair is raised to the clip's minimum: sqrt(4,096 / 2) / 32 -> 64 px.
    sizes = [qwen3_vl_video_resize(frames, 4096, 32, 4096, 25165824) for frames in (2, 3, 24576)]
    assert sizes == [3520, 2880, 32]
    assert qwen3_vl_video_resize(2, 32, 32, 4096, 25165824) == 64


def test_qwen2_5_vl_3b_at_its_default_context_in_a_quarter_of_an_a100_has_no_kv_pool_as_vllm_said() -> None:
    # vllm-project/vllm#18124 (May 2025, mirrored as QwenLM/Qwen3-VL#1205): "vllm serve Qwen/Qwen2.5-VL-3B-Instruct
    # --gpu-memory-utilization 0.3" on an 80 GB A100 (24 GB for vLLM) stops after loading with "No available memory
    # for the cache blocks".  At the default max_model_len (128,000) vLLM profiles a 14-frame dummy video (114,688
    # tokens, 458,752 patches): 17.07 GiB beside 6.99 GiB of weights.  The run predates the releases nibble models;
    # its dummy sizes are the ones vLLM logged for Qwen2.5-VL since PR #12604, so it is planned on vLLM 0.11.  The
    # text-only term (an A100 runs 2,048 batched tokens and 256 sequences: 1.4 GiB) would have promised a 15 GiB pool.
    spec = get_preset("qwen2.5-vl-3b-instruct")
    hardware = Hardware(get_device("a100-80gb").planning_bytes, 1, "a100-80gb")
    options = PlanOptions(weight_format=float_format("bf16"), memory_utilization=0.3, engine_version="0.11")
    answer = plan(spec, hardware, Workload(128000, 1), options).primary
    assert not answer.fits
    assert answer.kv_pool_bytes is not None and answer.kv_pool_bytes < 0
    assert (answer.devices[0].activation_bytes
            == 18_328_059_904 + rotary_cache_bytes(spec, "0.11") + blas_workspace_bytes(A100_80GB))
    profile = VllmProfile("0.11")
    limits = replace(profile.batch_limits(hardware.capacity_bytes, "a100-80gb"), max_model_len=128000)
    assert (limits.max_batched_tokens, limits.max_num_seqs) == (2048, 256)
    text = profile.activation(_stage(replace(spec, vision=None)), limits).bytes
    text_only = plan(spec, hardware, Workload(128000, 1), replace(options, activation_bytes=text)).primary
    assert text_only.kv_pool_bytes is not None and text_only.kv_pool_bytes > 14 * GIB
