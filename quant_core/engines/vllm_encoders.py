"""The multimodal encoder's profiling pass and the rotary caches vLLM sizes by ``max_model_len``.

``v1/worker/gpu_model_runner.py`` ``_get_mm_dummy_batch`` encodes a dummy batch of the processor's largest images or
videos before the language model's dummy run: Qwen2.5-VL's and Qwen3-VL's (``model_executor/models/qwen2_5_vl.py``,
``qwen3_vl.py``, their processors' ``get_num_frames_with_most_features``) and Pixtral's (``pixtral.py``)
(`encoder_profile`); Qwen3-VL's deepstack buffers; the rotary embeddings' cos/sin caches and M-RoPE positions
(``model_executor/layers/rotary_embedding/``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

from quant_core.engines.vllm_releases import ACTIVATION_ELEMENT_BYTES, DEFAULT_VERSION, GIB
from quant_core.specs import ModelSpec, PixtralVisionTower, Qwen3VisionTower, QwenVisionTower


def deepstack_buffer_bytes(spec: ModelSpec, tokens: int) -> int:
    """The deepstack input buffers vLLM's qwen3_vl.py allocates when it builds a Qwen3-VL model: one
    ``torch.zeros(max_num_batched_tokens, text hidden_size)`` at the model's dtype per deepstack level (held on every
    pipeline stage here, the safe side: releases that build the tower on the first stage only hold them there)."""
    if not isinstance(spec.vision, Qwen3VisionTower):
        return 0
    return spec.vision.deepstack_mergers * tokens * spec.hidden_size * ACTIVATION_ELEMENT_BYTES


#: the models whose decoder layers build multimodal RoPE with ``mrope_positions_factor`` (qwen3_vl.py,
#: qwen3_vl_moe.py, qwen3_5.py), 1 without video pruning, from vLLM 0.33; every other mrope cache, and these in
#: earlier releases, is four times ``max_position`` (mrope.py: "We enlarge max_position_embeddings to 4 times")
_MROPE_POSITIONS_FACTOR_ONE = frozenset({"qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"})


#: model types whose vLLM model class builds its rotary embedding with ``get_rope(..., dtype=torch.float32)``, so
#: the cos/sin cache stays float32: gpt-oss's YaRN (models/gpt_oss.py ``OAIAttention.__init__``, in v0.11, v0.19
#: and v0.33 alike: 131,072 positions x 64 x 4 bytes, 32 MiB on every rank)
ROTARY_CACHE_FP32 = frozenset({"gpt_oss"})


def rotary_cache_positions(spec: ModelSpec, version: str = DEFAULT_VERSION) -> tuple[int, ...]:
    """The positions of each rotary cos/sin cache vLLM `version` builds for `spec` (`ModelSpec.rotary_cache_rows`),
    a multimodal RoPE's multiplied by the release's positions factor (mrope.py ``cache_max_position_num``: 4, or 1
    for the Qwen3-VL family's decoder layers from v0.33)."""
    factor = 1
    if spec.rotary_mrope:
        factor = 1 if version == "0.33" and spec.model_type in _MROPE_POSITIONS_FACTOR_ONE else 4
    return tuple(rows * factor for rows in spec.rotary_cache_rows)


def rotary_cache_bytes(spec: ModelSpec, version: str = DEFAULT_VERSION, element_bytes: int = 2) -> int:
    """The rotary cos/sin caches vLLM builds with the model, ``positions x rotary_dim x 2 bytes`` each: the
    ``cos_sin_cache`` buffer of a RotaryEmbedding class (cos and sin concatenated on the last dimension, so
    ``rotary_dim`` values per position; Phi-3's longrope holds its short and long caches in one
    ``long_short_cos_sin_cache``), cast to the model's 16-bit dtype (``cache.to(dtype)``; DeepSeek's yarn keeps
    fp32 only on its flashinfer path, off under the default torch.compile custom ops), registered with
    ``register_buffer`` and shared by every layer with the same arguments (``get_rope`` caches instances in
    ``_ROPE_DICT``), on every rank; vLLM counts it in "Model loading took" (rotary_embedding/__init__.py, base.py,
    the same in v0.11, v0.19 and v0.33), at 4 bytes a value for the model types whose vLLM model class asks
    ``get_rope(..., dtype=torch.float32)`` (`ROTARY_CACHE_FP32`) or a model run in float32 (`element_bytes` 4, the
    model's dtype).  0 for a model without RoPE."""
    element = 4 if spec.model_type in ROTARY_CACHE_FP32 else element_bytes
    return sum(rotary_cache_positions(spec, version)) * spec.rotary_dim * element


#: the largest image, in pixels, the Hugging Face image processor of each Qwen vision-language model type resizes to,
#: from the published checkpoints' preprocessor_config.json (the same for every size of a family): Qwen2.5-VL's
#: ``max_pixels`` 12,845,056 (3,584 x 3,584) and Qwen3-VL's ``size.longest_edge`` 16,777,216 (4,096 x 4,096).  vLLM's
#: ``get_image_size_with_most_features`` (qwen2_vl.py) builds its dummy image from it
QWEN_VL_MAX_IMAGE_PIXELS: dict[str, int] = {"qwen2_5_vl": 12845056, "qwen3_vl": 16777216, "qwen3_vl_moe": 16777216}
#: Qwen3-VL's video processor (video_preprocessor_config.json ``size.longest_edge``): 25,165,824 pixels over a
#: temporal patch of frames; vLLM 0.19 and 0.33 (qwen3_vl.py, get_max_video_tokens) size the dummy video as two frames
#: of ``longest_edge // temporal_patch_size`` pixels
QWEN3_VL_MAX_VIDEO_PIXELS = 25165824
#: the most frames of a dummy video: qwen2_vl.py ``_MAX_FRAMES_PER_VIDEO`` (Qwen2-VL and Qwen2.5-VL, v0.11 to v0.33)
QWEN2_VL_MAX_DUMMY_FRAMES = 14
#: vLLM 0.11's Qwen3-VL dummy video (qwen3_vl.py): ``_MAX_FRAMES_PER_VIDEO`` frames at most, the frame loop starting
#: at two (``_get_max_video_frames``), each resized by the video processor (`qwen3_vl_video_resize`) from the
#: largest image; ``get_max_video_tokens`` counts 12.5 placeholder tokens per video token (a timestamp and the vision
#: start and end tokens around each), which sizes the encoder budget, not the encoder's input
QWEN3_VL_V011_MAX_DUMMY_FRAMES = 24576
QWEN3_VL_V011_START_FRAMES = 2
QWEN3_VL_V011_VIDEO_TOKEN_FACTOR = 12.5
#: Qwen3-VL's video processor's ``size.shortest_edge`` (video_preprocessor_config.json), the resize's floor
QWEN3_VL_MIN_VIDEO_PIXELS = 4096
#: the dummy batch's pixel_values arrive at the model's dtype: vLLM casts a processor's floating outputs to it
#: (multimodal/processing context.py ``call_hf_processor``, "emulates output.to(dtype=self.model_config.dtype)", in
#: 0.11, 0.19 and 0.33), so the tower's own ``x.to(dtype=self.dtype)`` makes no copy
PIXEL_VALUE_BYTES = ACTIVATION_ELEMENT_BYTES


def qwen3_vl_video_resize(num_frames: int, side: int, factor: int, min_pixels: int, max_pixels: int) -> int:
    """The side a square ``side x side`` dummy frame is resized to in a video of `num_frames` frames: transformers'
    ``smart_resize`` of models/qwen3_vl/video_processing_qwen3_vl.py (vLLM 0.11's ``video_smart_resize``), which
    bounds the whole clip's pixels (frames rounded to pairs) between `min_pixels` and `max_pixels`, in multiples of
    `factor` (patch x merge)."""
    side_bar = round(side / factor) * factor
    frames_bar = round(num_frames / 2) * 2
    if frames_bar * side_bar * side_bar > max_pixels:
        beta = math.sqrt(num_frames * side * side / max_pixels)
        return max(factor, math.floor(side / beta / factor) * factor)
    if frames_bar * side_bar * side_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * side * side))
        return math.ceil(side * beta / factor) * factor
    return side_bar


@lru_cache(maxsize=8)
def qwen3_vl_v011_video_table(side: int, patch: int, merge: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(Tokens of a dummy video of n frames for n = 0 .. `QWEN3_VL_V011_MAX_DUMMY_FRAMES`, their running maximum
    from the loop's first step on): vLLM 0.11's ``_get_max_video_frames`` stops before the first frame count whose
    tokens exceed max_model_len, so the frames for a context are found by bisecting the running maximum."""
    factor = patch * merge
    tokens = [0] * (QWEN3_VL_V011_MAX_DUMMY_FRAMES + 1)
    for frames in range(1, QWEN3_VL_V011_MAX_DUMMY_FRAMES + 1):
        resized = qwen3_vl_video_resize(frames, side, factor, QWEN3_VL_MIN_VIDEO_PIXELS, QWEN3_VL_MAX_VIDEO_PIXELS)
        tokens[frames] = -(-frames // 2) * (resized // patch) ** 2 // merge ** 2
    running, highest = [], 0
    for frames in range(QWEN3_VL_V011_START_FRAMES + 1, QWEN3_VL_V011_MAX_DUMMY_FRAMES + 1):
        highest = max(highest, tokens[frames])
        running.append(highest)
    return tuple(tokens), tuple(running)


def _qwen3_vl_v011_video(tower: Qwen3VisionTower, side: int, max_model_len: int) -> int:
    """The frames of vLLM 0.11's Qwen3-VL dummy video at `max_model_len` (``get_num_frames_with_most_features``)."""
    _tokens, running = qwen3_vl_v011_video_table(side, tower.patch_size, tower.spatial_merge_size)
    return QWEN3_VL_V011_START_FRAMES + bisect_right(running, max_model_len)


@dataclass(frozen=True, slots=True)
class EncoderDummy:
    """The multimodal batch vLLM's ``GPUModelRunner.profile_run`` encodes before the text pass: `items` dummy items
    of `modality`, each of `tokens_per_item` encoder output rows (merged patches), for an encoder budget of `budget`
    tokens (``MultiModalBudget.get_encoder_budget``: ``max(max_num_batched_tokens, largest item's tokens)``), and the
    `patches` the vision tower runs over."""

    modality: str
    items: int
    tokens_per_item: int
    budget: int
    patches: int


def qwen_encoder_dummy(spec: ModelSpec, version: str, max_batched_tokens: int,
                       max_model_len: int) -> EncoderDummy | None:
    """The dummy batch vLLM `version` profiles a Qwen2.5-VL or Qwen3-VL model with (None for other models).

    Every dummy frame or image is the processor's largest (`QWEN_VL_MAX_IMAGE_PIXELS`): ``G = max_pixels / patch^2 /
    merge^2`` tokens per temporal group of frames (16,384 for both families).  The modality with the most tokens per
    item is profiled (``get_modality_with_max_tokens``, a tie to "video"):

    * Qwen2.5-VL (qwen2_vl.py, ``get_num_frames_with_most_features``): a video of as many frames as fit
      ``max_model_len`` tokens, at most 14: ``max(1, min(7, max_model_len // G))`` groups of G tokens;
    * Qwen3-VL from 0.19: an image of G tokens (its dummy video, two frames of the video processor's
      ``longest_edge / 2`` pixels, has fewer);
    * Qwen3-VL in 0.11: a video of as many frames (from two, at most 24,576) as keep every shorter clip within
      max_model_len tokens, each frame resized by the video processor (`qwen3_vl_video_resize`: 2 frames of 3,520
      px below a 16,200-token context, 24,576 frames of 32 px from it), counted at 12.5 tokens per video token, so
      the budget is ``int(12.5 x tokens)``.

    ``budget = max(max_num_batched_tokens, item tokens)`` (encoder_cache_manager.py ``compute_mm_encoder_budget``;
    ``encoder_cache_size`` and ``max_num_encoder_input_tokens`` default to ``max_num_batched_tokens``) and
    ``items = budget // item tokens`` (encoder_budget.py ``_get_max_items``; the decoder's limit is never lower)."""
    tower = spec.vision
    if not isinstance(tower, QwenVisionTower | Qwen3VisionTower) or spec.model_type not in QWEN_VL_MAX_IMAGE_PIXELS:
        return None
    merge, temporal = tower.spatial_merge_size, tower.temporal_patch_size
    per_group = QWEN_VL_MAX_IMAGE_PIXELS[spec.model_type] // tower.patch_size ** 2 // merge ** 2
    counted = None
    if isinstance(tower, QwenVisionTower):
        groups = max(1, min(QWEN2_VL_MAX_DUMMY_FRAMES // temporal, max_model_len // per_group))
        modality, tokens = "video", groups * per_group
    elif version == "0.11":
        side = math.isqrt(QWEN_VL_MAX_IMAGE_PIXELS[spec.model_type])
        frames = _qwen3_vl_v011_video(tower, side, max_model_len)
        modality, tokens = "video", qwen3_vl_v011_video_table(side, tower.patch_size, merge)[0][frames]
        counted = int(tokens * QWEN3_VL_V011_VIDEO_TOKEN_FACTOR)
    else:
        video = QWEN3_VL_MAX_VIDEO_PIXELS // temporal // tower.patch_size ** 2 // merge ** 2
        modality, tokens = ("image", per_group) if per_group > video else ("video", video)
    counted = counted or tokens
    budget = max(max_batched_tokens, counted)
    items = max(1, budget // counted)
    return EncoderDummy(modality, items, tokens, budget, items * tokens * merge ** 2)


def qwen_encoder_profile(spec: ModelSpec, version: str, tensor_parallel: int, max_batched_tokens: int,
                         max_model_len: int) -> tuple[int, int, str] | None:
    """(Peak bytes while the vision tower encodes vLLM's dummy batch, bytes it leaves held under the text pass that
    follows, basis) on one rank, for a Qwen2.5-VL or Qwen3-VL model (None for other models).

    Over the dummy batch's ``n`` patches (`qwen_encoder_dummy`), at 2 bytes an element, ``t`` ranks splitting the
    heads and the MLP's width (``mm_encoder_tp_mode`` "weights"), hidden ``H`` and MLP width ``I``:

    * the ``pixel_values`` (``n x channels x temporal x patch^2 x 2``, `PIXEL_VALUE_BYTES`): ``profile_run`` keeps
      the batch (``batched_dummy_mm_inputs``) until it returns, so they are held under the text pass too;
    * one block's peak (the blocks run one after another, eagerly: ``compile_mm_encoder`` is off by default, and with
      ``custom_ops`` "none", the default under torch.compile, RMSNorm and SiluAndMul run their PyTorch-native
      forms): attention ``3H + 8H/t`` in 0.19 and 0.33 (the block input, its norm, the fused qkv, the q/k copy
      rearranged for the rotation and its rotation, the attention output, proj's output:
      ``Qwen2_5_VisionAttention.forward``), ``3H + 9H/t`` in 0.11 (q, k and v made contiguous, then q and k
      concatenated and rotated); Qwen2.5-VL's SwiGLU MLP ``max(4H + 4I/t, 5H + 3I/t)`` (the block input, the attention
      output, the native add-RMSNorm's residual and output, gate_up, and SiluAndMul's silu beside its product, then
      the product and down_proj's output: ``Qwen2_5_VisionBlock``, ``Qwen2_5_VisionMLP``); Qwen3-VL's GELU MLP
      ``max(2H + 2I/t, 3H + I/t)`` (``Qwen3_VisionMLP``: linear_fc1's output is freed once activated);
    * Qwen3-VL's deepstack features (``n/4 x projection`` per deepstack merger) held under the later blocks;
    * the merged output kept in the encoder cache (``n/4 x projection``, times ``1 + deepstack mergers`` for Qwen3-VL,
      which concatenates them), which vLLM 0.11 widens to the budget's rows when an item has fewer
      (``expanded = output.new_zeros((encoder_budget, hidden))``; Qwen2.5-VL's item is the budget)."""
    tower = spec.vision
    dummy = qwen_encoder_dummy(spec, version, max_batched_tokens, max_model_len)
    if dummy is None or not isinstance(tower, QwenVisionTower | Qwen3VisionTower):
        return None
    patches, hidden, width = dummy.patches, tower.hidden_size, tower.intermediate_size // tensor_parallel
    pixels = patches * tower.num_channels * tower.temporal_patch_size * tower.patch_size ** 2 * PIXEL_VALUE_BYTES
    attention = 3 * hidden + (9 if version == "0.11" else 8) * (hidden // tensor_parallel)
    if isinstance(tower, QwenVisionTower):
        mlp, deepstack_levels = max(4 * hidden + 4 * width, 5 * hidden + 3 * width), 0
    else:
        mlp, deepstack_levels = max(2 * hidden + 2 * width, 3 * hidden + width), tower.deepstack_mergers
    block = patches * max(attention, mlp) * ACTIVATION_ELEMENT_BYTES
    rows = dummy.items * dummy.tokens_per_item
    deepstack = deepstack_levels * rows * tower.projection_size * ACTIVATION_ELEMENT_BYTES
    kept_rows = dummy.items * (dummy.budget if version == "0.11" else dummy.tokens_per_item)
    output = kept_rows * tower.projection_size * (1 + deepstack_levels) * ACTIVATION_ELEMENT_BYTES
    peak, held = pixels + block + deepstack, pixels + output
    basis = (f"vLLM {version} first encodes {dummy.items} dummy {dummy.modality} item(s) of {dummy.tokens_per_item} "
             f"tokens (encoder budget {dummy.budget} tokens at max_model_len {max_model_len}; {patches} patches "
             f"of the processor's largest image): {peak / GIB:.2f} GiB at the vision tower's peak ("
             f"pixel_values {pixels / GIB:.2f} GiB, one block's activations {block / GIB:.2f} GiB"
             + (f", deepstack features {deepstack / GIB:.2f} GiB" if deepstack else "")
             + f"), then holds {held / GIB:.2f} GiB (the pixel_values and the encoder cache's outputs) under the text "
             "pass (gpu_model_runner.profile_run, _get_mm_dummy_batch, embed_multimodal)")
    return peak, held, basis


def pixtral_encoder_dummy(spec: ModelSpec, version: str, max_batched_tokens: int) -> EncoderDummy | None:
    """The dummy batch vLLM `version` profiles a Mistral 3 model's Pixtral tower with (None for other models): images
    of ``vision_config.image_size`` square (mistral3.py ``get_image_size_with_most_features``), each ``(image_size /
    patch)^2`` patches and ``(image_size / (patch x merge))^2`` embeddings, counted with the ``[IMG_BREAK]`` closing
    each row in vLLM 0.11 (``get_mm_max_contiguous_tokens``) and as embeddings from 0.19 (``get_num_embeds``), as many
    as ``max(max_num_batched_tokens, one image) // one image``."""
    tower = spec.vision
    if not isinstance(tower, PixtralVisionTower):
        return None
    side = tower.image_size // tower.patch_size
    merged = side // tower.spatial_merge_size
    tokens = merged * merged
    counted = merged * (merged + 1) if version == "0.11" else tokens
    budget = max(max_batched_tokens, counted)
    items = max(1, budget // counted)
    return EncoderDummy("image", items, tokens, budget, items * side * side)


def pixtral_encoder_profile(spec: ModelSpec, version: str, tensor_parallel: int,
                            max_batched_tokens: int) -> tuple[int, int, str] | None:
    """(Peak bytes while the Pixtral tower encodes vLLM's dummy images, bytes held under the text pass, basis) on one
    rank of a Mistral 3 model (None for other models), over the batch's ``n`` patches at 2 bytes an element:

    * the ``pixel_values`` (``channels x image_size^2`` per image, at the model's dtype), held to the end;
    * in vLLM 0.19 only, the block-diagonal attention mask of all the patches, ``n x n`` at the model's dtype
      (pixtral.py ``PixtralHFVisionModel.forward``: without xformers, which 0.11 requires and 0.19 no longer installs,
      transformers' ``generate_block_attention_mask`` feeds ``scaled_dot_product_attention``; 0.33 runs varlen
      attention over ``cu_seqlens``), held through every layer; PyTorch's own attention workspace is not counted;
    * one block's peak: its gated MLP ``max(4H + 4I/t, 5H + 3I/t)`` (the block input, the attention output still
      bound to ``r``, the residual sum, its norm, gate_up, and the native SiluAndMul's silu beside its product, then
      down_proj's output: ``PixtralHFTransformerBlock``, ``PixtralHFMLP``), above its attention;
    * the projector's outputs kept in the encoder cache (``n/4 x projection``), widened to the budget's rows in 0.11."""
    tower = spec.vision
    dummy = pixtral_encoder_dummy(spec, version, max_batched_tokens)
    if dummy is None or not isinstance(tower, PixtralVisionTower):
        return None
    patches, hidden, width = dummy.patches, tower.hidden_size, tower.intermediate_size // tensor_parallel
    pixels = dummy.items * tower.num_channels * tower.image_size ** 2 * PIXEL_VALUE_BYTES
    mask = patches * patches * ACTIVATION_ELEMENT_BYTES if version == "0.19" else 0
    block = patches * max(4 * hidden + 4 * width, 5 * hidden + 3 * width) * ACTIVATION_ELEMENT_BYTES
    kept_rows = dummy.items * (dummy.budget if version == "0.11" else dummy.tokens_per_item)
    output = kept_rows * tower.projection_size * ACTIVATION_ELEMENT_BYTES
    peak, held = pixels + mask + block, pixels + output
    basis = (f"vLLM {version} first encodes {dummy.items} dummy image(s) of {tower.image_size} px ({patches} patches, "
             f"{dummy.tokens_per_item} embeddings each; encoder budget {dummy.budget} tokens): {peak / GIB:.2f} GiB at "
             f"the Pixtral tower's peak (pixel_values {pixels / GIB:.2f} GiB, "
             + (f"the dense attention mask {mask / GIB:.2f} GiB, " if mask else "")
             + f"one block's activations {block / GIB:.2f} GiB), then holds {held / GIB:.2f} GiB (the pixel_values "
             "and the encoder cache's outputs) under the text pass (gpu_model_runner.profile_run, mistral3.py, "
             "pixtral.py)")
    return peak, held, basis


def encoder_profile(spec: ModelSpec, version: str, tensor_parallel: int, max_batched_tokens: int,
                    max_model_len: int) -> tuple[int, int, str] | None:
    """`qwen_encoder_profile` or `pixtral_encoder_profile` for the model's tower; None for a model vLLM profiles
    without images here (no tower, or a tower whose profiling nibble does not size: Llama 4's, Gemma 3's)."""
    return (qwen_encoder_profile(spec, version, tensor_parallel, max_batched_tokens, max_model_len)
            or pixtral_encoder_profile(spec, version, tensor_parallel, max_batched_tokens))
