"""The dense linear layers' kernels: what they hold beyond the checkpoint's bytes.

Machete (``quantization/kernels/mixed_precision/machete.py``), Humming, GPTQ Marlin (``quantization/gptq_marlin.py``,
``utils/marlin_utils.py``: `gptq_marlin_linear_bytes`) and fp8 Marlin (``utils/marlin_utils_fp8.py``:
`fp8_marlin_linear_bytes`) repacks and workspaces, DeepGEMM's requantization of fp8 blocks to UE8M0 scales and the
packed scales it keeps (``utils/fp8_utils.py``: `deep_gemm_requant_bytes`, `deep_gemm_scale_layout_bytes`; and 0.11's
requantization of the routed experts beside them, `deep_gemm_expert_requant_bytes`), the MLA
``kv_b_proj`` copy (``attention/mla``: `mla_kv_b_copy`), and PyTorch's block rounding of the loaded weights
(`weight_allocation_slack`).
"""

from __future__ import annotations

import math

from quant_core.catalog import DeviceFacts
from quant_core.engines.base import Stage, Term
from quant_core.engines.torch_cuda import allocated_block_bytes, compute_units
from quant_core.engines.vllm_parallel import expert_shard, shared_experts_whole
from quant_core.engines.vllm_refusals import GPTQ_MARLIN_FLOORS, INT4_CHECKPOINT_LABEL, weight_format_family
from quant_core.engines.vllm_releases import ACTIVATION_ELEMENT_BYTES, GIB, VOCABULARY_ON_EVERY_STAGE
from quant_core.engines.vllm_sampler import VOCAB_PADDING
from quant_core.formats import WeightFormat, gptq_checkpoint, int4
from quant_core.specs import ModelSpec

#: vLLM 0.33's int4 (WNA16) MoE kernels that run at every rank's whole experts under expert parallelism as at one
#: rank: Marlin's (fused_moe/oracle/int_wna16.py ``_get_priority_backends``: RDNA3, FLASHINFER_TRTLLM, MARLIN, ...)
#: where Humming is not put ahead of it (quantization/utils/humming/priority.py ``_HUMMING_PREFERRED_CAPABILITIES``:
#: compute capability 9.0 only)
HUMMING_PREFERRED_CAPABILITY = (9, 0)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
#: Humming's padding of each expert GEMM in vLLM 0.33 (quantization/utils/humming/moe.py
#: ``_prepare_and_transform_sublayer``: ``pad_n_to_multiple=256, pad_k_to_multiple=128``, humming-kernels 0.1.19
#: transform.py ``prepare_layer_config`` rounds the output size N and the reduction size K up to them)
HUMMING_PAD_N = 256
HUMMING_PAD_K = 128


#: the vLLM model classes whose decoder layers allocate one fused ``QKVParallelLinear`` (q, k and v), a
#: ``RowParallelLinear`` o_proj, and either a ``MergedColumnParallelLinear`` gate_up_proj beside a RowParallelLinear
#: down_proj (Qwen3 takes Qwen2MLP) or a ``FusedMoE`` of ``w13_weight`` [experts, 2 x width / tp, hidden] and
#: ``w2_weight`` [experts, hidden, width / tp] (UnquantizedFusedMoEMethod.create_weights); the embedding and lm_head
#: are VocabParallelEmbedding / ParallelLMHead rows of the vocabulary padded to 64, split over the ranks.  DeepSeek-V2
#: and V3 (deepseek_v2.py, DeepseekV2MLAAttention) hold MLA's projections instead of q/k/v (`_mla_projection_sizes`),
#: their shared experts a DeepseekV2MLP (merged gate_up, down) beside the SharedFusedMoE
FUSED_LINEAR_MODEL_TYPES: dict[str, str] = {
    "llama": "llama.py", "mistral": "llama.py (MistralForCausalLM)", "qwen2": "qwen2.py", "qwen3": "qwen3.py",
    "gemma2": "gemma2.py", "mixtral": "mixtral.py", "qwen3_moe": "qwen3_moe.py", "deepseek_v2": "deepseek_v2.py",
    "deepseek_v3": "deepseek_v2.py"}
#: the weight formats whose tensors vLLM allocates as the checkpoint's shapes at 2 bytes an element
SIXTEEN_BIT_FORMATS = frozenset({"bf16", "fp16"})


#: vLLM releases whose mixed-precision linear kernels (``choose_mp_linear_kernel``, model_executor/kernels/linear)
#: put Machete first on compute capability 9.0 for AWQ's zero-point weights: 0.19's awq_marlin.py
#: ``AWQMarlinLinearMethod`` and 0.33's auto_awq.py ask it (0.11's awq_marlin repacks for Marlin itself)
MACHETE_AWQ_VERSIONS = frozenset({"0.19", "0.33"})
#: Machete's group sizes for 16-bit activations (utils/machete_utils.py ``query_machete_supported_group_sizes``;
#: -1, a whole row, is None here) and its prepacked block (``MACHETE_PREPACKED_BLOCK_SHAPE``: in features a
#: multiple of 64, out features of 128, ``check_machete_supports_shape``)
MACHETE_GROUPS: tuple[int | None, ...] = (None, 64, 128)
MACHETE_BLOCK_IN, MACHETE_BLOCK_OUT = 64, 128


def _dense_linear_shapes(spec: ModelSpec, tensor_parallel: int) -> tuple[tuple[tuple[int, int], ...],
                                                                          tuple[tuple[int, int], ...]]:
    """(in features, out features) of one rank's quantized linear layers in one decoder layer of a model of
    `FUSED_LINEAR_MODEL_TYPES` without MLA: (attention: the QKVParallelLinear qkv_proj of ``heads / tp +
    2 x max(1, kv_heads // tp)`` heads and the RowParallelLinear o_proj; a dense MLP: the MergedColumnParallelLinear
    gate_up_proj and the RowParallelLinear down_proj)."""
    hidden, head_dim = spec.hidden_size, spec.head_dim
    heads, kv_heads = spec.num_attention_heads // tensor_parallel, max(1, spec.num_kv_heads // tensor_parallel)
    width = spec.intermediate_size // tensor_parallel
    return (((hidden, (heads + 2 * kv_heads) * head_dim), (heads * head_dim, hidden)),
            ((hidden, 2 * width), (width, hidden)))


#: Humming's lock buffer of each linear layer (vLLM 0.33 utils/humming.py ``create_humming_locks``: int32,
#: ``num_compute_units x 8``), made in HummingLinearKernel.process_weights_after_loading
HUMMING_LOCKS_PER_SM = 8
#: the group sizes nibble read vLLM 0.33's dense Humming layout for (-1: one scale a row, Humming's group 0)
_HUMMING_DENSE_GROUPS: tuple[int, ...] = (-1, 32, 64, 128)


def humming_linear_bytes(in_features: int, out_features: int, group_size: int, zero_points: bool, bias: bool,
                         device: DeviceFacts) -> int:
    """Bytes vLLM 0.33 holds for one rank's int4 linear layer (``in_features x out_features`` on the rank, the fused
    layer's summed ``output_partition_sizes``) on HummingLinearKernel (kernels/linear/mixed_precision/humming.py),
    beyond the bias nibble charges.  ``prepare_humming_linear_layer_config`` (quantization/utils/humming/linear.py)
    pads N to 256 and K to 128 (``pad_n_to_multiple=256, pad_k_to_multiple=128``; humming-kernels 0.1.19
    transform.py ``check_and_pad_tensors`` pads every tensor to schema/humming.py ``get_tensors_attrs`` of the padded
    shape): the int32 weight ``n x k / 2`` bytes, 16-bit scales ``n x G`` (G = k / g, or 1 for a whole-row group),
    int32 zero points ``n / 8 x G`` where the checkpoint has them, and a bias padded to n with a ``zero_bias`` buffer
    of its size (``2 x 2n`` bytes where nibble charges ``2 x out``); then it deletes every other parameter of the
    layer (a symmetric GPTQ checkpoint's qzeros, the g_idx), and ``create_humming_locks`` adds an int32 lock buffer
    of 8 a streaming multiprocessor (`HUMMING_LOCKS_PER_SM`, `torch_cuda.compute_units` of `device`)."""
    padded_out, padded_in = round_up(out_features, HUMMING_PAD_N), round_up(in_features, HUMMING_PAD_K)
    groups = 1 if group_size == -1 else padded_in // group_size
    units, _ = compute_units(device)
    return (padded_out * padded_in // 2 + 2 * padded_out * groups + (padded_out * groups // 2 if zero_points else 0)
            + (2 * 2 * padded_out - 2 * out_features if bias else 0) + 4 * HUMMING_LOCKS_PER_SM * units)


def machete_zero_point_bytes(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> Term | None:
    """The bytes one rank of vLLM `version` holds for the dense linear layers (attention and dense MLP, `dense_format`
    their label) of a checkpoint with zero points (AWQ; asymmetric compressed-tensors, whose
    ``CompressedTensorsWNA16`` asks the same kernels with ``zero_points=not self.symmetric``) beyond the
    checkpoint's, where Machete runs them: on compute capability 9.0 ``choose_mp_linear_kernel`` takes
    MacheteLinearKernel first for uint4 weights with zero points (0.19 and 0.33, `MACHETE_AWQ_VERSIONS`; group -1,
    64 or 128 and a rank's in/out features multiples of 64/128,
    `MACHETE_GROUPS`), and its ``process_weights_after_loading`` (kernels/linear/mixed_precision/machete.py
    ``transform_w_zp``) unpacks the packed zero points ``[G, out / 8]`` int32 (``G x out / 2`` bytes) and replaces them
    with the zero points pre-multiplied by the scales, ``-scales x zeros`` in the scales' 16-bit dtype: ``G x out x
    2`` bytes, ``1.5 x G x out`` more per layer (the weights are prepacked and the scales kept at their size).
    Models of `FUSED_LINEAR_MODEL_TYPES` without MLA (their shapes per rank: `_dense_linear_shapes`); None for other
    models, formats, releases and devices.  In 0.33 a layer Machete refuses falls to Humming's kernels (prioritized
    ahead of Marlin on 9.0): `humming_linear_bytes` less the checkpoint's ``in x out / 2`` values, ``G x out`` 16-bit
    scales and ``G x out / 2`` packed zero points; in 0.19 such a layer runs Marlin, whose repacked zero points keep
    the checkpoint's bytes."""
    spec = stage.spec
    found = INT4_CHECKPOINT_LABEL.fullmatch(dense_format.removeprefix("checkpoint-"))
    zero_points = found is not None and (found["layout"] == "awq" or (found["layout"] == "compressed-tensors"
                                                                      and found["kind"] == "asym"))
    if (version not in MACHETE_AWQ_VERSIONS or found is None or not zero_points
            or device.compute_capability != HUMMING_PREFERRED_CAPABILITY or device.vendor == "amd"
            or spec.model_type not in FUSED_LINEAR_MODEL_TYPES or spec.is_mla or "-padded" in dense_format
            or "-partial" in dense_format):
        return None
    group = int(found["group"]) if found["group"] else None
    tensor_parallel = stage.tensor_parallel
    attention, mlp = _dense_linear_shapes(spec, tensor_parallel)
    humming = False

    def extra(shapes: tuple[tuple[int, int], ...], biases: tuple[bool, ...]) -> int | None:
        nonlocal humming
        total = 0
        for (in_features, out_features), bias in zip(shapes, biases, strict=True):
            groups = in_features // group if group else 1
            if (group not in MACHETE_GROUPS or in_features % MACHETE_BLOCK_IN or out_features % MACHETE_BLOCK_OUT
                    or (group is not None and in_features % group)):
                if version != "0.33":
                    continue  # 0.19: Marlin, the checkpoint's bytes
                if (group or -1) not in _HUMMING_DENSE_GROUPS or (group is not None and in_features % group):
                    return None  # a Humming layout nibble did not read
                humming = True
                total += (humming_linear_bytes(in_features, out_features, group or -1, True, bias, device)
                          - (in_features * out_features // 2 + 2 * groups * out_features
                             + groups * out_features // 2))
                continue
            total += 3 * groups * out_features // 2
        return total

    held = _stage_dense_sum(stage, extra(attention, (spec.attention_qkv_bias, spec.attention_output_bias)),
                            extra(mlp, (False, False)))
    if not held:
        return None
    humming_basis = ("; the layers Machete refuses run Humming's kernels (prioritize_humming), which pad N to 256 "
                     "and K to 128 and add a lock buffer (quantization/utils/humming/linear.py "
                     "prepare_humming_linear_layer_config, utils/humming.py create_humming_locks)" if humming else "")
    return Term(held, (
        f"vLLM {version} runs the {dense_format} attention and MLP layers on Machete (compute capability 9.0, "
        "choose_mp_linear_kernel), whose process_weights_after_loading replaces each layer's packed qzeros "
        "(G x out / 2 bytes) with 16-bit zero points pre-multiplied by the scales (G x out x 2 bytes; "
        f"kernels/linear/mixed_precision/machete.py transform_w_zp){humming_basis}: {held / GIB:+.2f} GiB a rank "
        "against the checkpoint's"))


def _stage_dense_sum(stage: Stage, per_attention: int | None, per_mlp: int | None) -> int | None:
    """A stage's total of a per-layer figure: `per_attention` on every layer, `per_mlp` on its dense MLP layers
    (all of them, or a MoE model's ``dense_layers``); None where a figure the stage needs is None (not read)."""
    spec = stage.spec
    start, stop = stage.layers
    dense_layers = sum(1 for layer in range(start, stop) if not spec.is_moe or layer in spec.dense_layers)
    if per_attention is None or (per_mlp is None and dense_layers):
        return None
    return (stop - start) * per_attention + dense_layers * (per_mlp or 0)


def compressed_tensors_humming_bytes(stage: Stage, version: str, dense_format: str,
                                     device: DeviceFacts) -> Term | None:
    """The bytes one rank of vLLM 0.33 holds for the dense linear layers of a symmetric compressed-tensors int4
    checkpoint (`dense_format`) beyond the checkpoint's, where ``CompressedTensorsWNA16`` (compressed_tensors/schemes/
    compressed_tensors_wNa16.py, ``choose_mp_linear_kernel``) runs a layer on Humming's kernels: compute capability
    9.0, where Machete refuses it (groups -1, 64, 128 and a rank's in features a multiple of 64, out of 128,
    `MACHETE_GROUPS`) and ``prioritize_humming`` puts Humming ahead of Marlin.  A Humming layer holds
    `humming_linear_bytes` against the checkpoint's ``in x out / 2`` packed values and ``G x out`` 16-bit scales
    (its ``weight_shape``, which Humming deletes, stays charged: the safe side); a Machete layer keeps the
    weights and scales at their size.  Models of `FUSED_LINEAR_MODEL_TYPES` without MLA; None for other models,
    formats, releases and devices, for act order, and where no layer runs Humming."""
    spec = stage.spec
    found = INT4_CHECKPOINT_LABEL.fullmatch(dense_format.removeprefix("checkpoint-"))
    if (version != "0.33" or found is None or found["layout"] != "compressed-tensors" or found["kind"] != "sym"
            or found["act_order"] is not None or device.compute_capability != HUMMING_PREFERRED_CAPABILITY
            or device.vendor == "amd" or spec.model_type not in FUSED_LINEAR_MODEL_TYPES or spec.is_mla
            or "-padded" in dense_format or "-partial" in dense_format):
        return None
    group = int(found["group"]) if found["group"] else -1
    if group not in _HUMMING_DENSE_GROUPS:
        return None
    attention, mlp = _dense_linear_shapes(spec, stage.tensor_parallel)

    def extra(shapes: tuple[tuple[int, int], ...], biases: tuple[bool, ...]) -> int | None:
        total = 0
        for (in_features, out_features), bias in zip(shapes, biases, strict=True):
            if ((None if group == -1 else group) in MACHETE_GROUPS and in_features % MACHETE_BLOCK_IN == 0
                    and out_features % MACHETE_BLOCK_OUT == 0):
                continue  # Machete: the checkpoint's bytes
            if group > 0 and in_features % group:
                return None  # a partial group on the rank: not read
            groups = 1 if group == -1 else in_features // group
            total += (humming_linear_bytes(in_features, out_features, group, False, bias, device)
                      - (in_features * out_features // 2 + 2 * groups * out_features))
        return total

    held = _stage_dense_sum(stage, extra(attention, (spec.attention_qkv_bias, spec.attention_output_bias)),
                            extra(mlp, (False, False)))
    if not held:
        return None
    return Term(held, (
        f"vLLM 0.33 runs the {dense_format} attention and MLP layers Machete refuses on Humming's kernels (compute "
        "capability 9.0, choose_mp_linear_kernel with prioritize_humming), which pad N to 256 and K to 128 and add a "
        "lock buffer a layer (quantization/utils/humming/linear.py prepare_humming_linear_layer_config, utils/"
        f"humming.py create_humming_locks): {held / GIB:+.2f} GiB a rank against the checkpoint's"))
#: Marlin's smallest tile of a rank's linear layer (utils/marlin_utils.py ``verify_marlin_supports_shape``:
#: ``GPTQ_MARLIN_MIN_THREAD_N`` out features, ``GPTQ_MARLIN_MIN_THREAD_K`` in features), which 0.11 and 0.19 require
#: and 0.33 pads to (`FP8_MARLIN_PADDING_VERSIONS`, `_marlin_padded_nk`)
GPTQ_MARLIN_MIN_THREAD_N, GPTQ_MARLIN_MIN_THREAD_K = 64, 128
#: the group sizes nibble read the GPTQ dense layout for, -1 a whole row (AllSpark, which 0.11 and 0.19 list ahead of
#: Marlin for a whole-row group on 8.x, takes only 8-bit weights: utils/allspark_utils.py
#: ``ALLSPARK_SUPPORTED_QUANT_TYPES = [scalar_types.uint8b128]``, so an int4 one runs Marlin; 0.33 has no AllSpark)
_GPTQ_DENSE_GROUPS: tuple[int, ...] = (-1, 32, 64, 128)


def gptq_dense_kernel(version: str, compute_capability: tuple[int, int], in_features: int, out_features: int,
                      group_size: int, act_order: bool, row_parallel: bool) -> str:
    """The kernel vLLM `version` runs one rank's linear layer of a symmetric 4-bit GPTQ checkpoint on (the rank's
    `in_features` x `out_features`; `row_parallel`: a RowParallelLinear whose input is split), as
    ``choose_mp_linear_kernel`` takes the first that can implement it (model_executor/layers/quantization/kernels/
    mixed_precision in 0.11, model_executor/kernels/linear in 0.19 and 0.33): "machete", "marlin", or "" where nibble
    did not read the one it takes.  CutlassW4A8 wants fp8 activations and AllSpark (8.x) 8-bit weights
    (``ALLSPARK_SUPPORTED_QUANT_TYPES``, a whole-row group): neither takes a 4-bit GPTQ layer with 16-bit
    activations.  Machete (compute capability 9.0 only): groups -1, 64 or 128 for 16-bit
    activations, in features a multiple of 64 and out features of 128, and in 0.11 and 0.19 no act order where the
    input is split ("Act reordering currently not supported by Machete, when the input features are partitioned
    across devices").  Marlin: whole groups, and in 0.11 and 0.19 out features a multiple of 64 and in features of
    128; 0.33's MarlinLinearKernel.can_implement takes a misaligned layer ("Tile misalignment is fixed by
    zero-padding at weight prep", `gptq_linear_held_bytes`) and refuses only a group straddling the rank's shard; in
    0.33 on 9.0 ``prioritize_humming`` puts Humming (not read) ahead of it."""
    machete_group = None if group_size == -1 else group_size
    if (compute_capability == HUMMING_PREFERRED_CAPABILITY and machete_group in MACHETE_GROUPS
            and not (act_order and row_parallel) and in_features % MACHETE_BLOCK_IN == 0
            and out_features % MACHETE_BLOCK_OUT == 0):
        return "machete"
    if version == "0.33" and compute_capability == HUMMING_PREFERRED_CAPABILITY:
        return ""
    if in_features % group_size:
        return ""
    if version not in FP8_MARLIN_PADDING_VERSIONS and (out_features % GPTQ_MARLIN_MIN_THREAD_N
                                                       or in_features % GPTQ_MARLIN_MIN_THREAD_K):
        return ""
    return "marlin"


def gptq_linear_held_bytes(version: str, kernel: str, in_features: int, out_features: int, full_in_features: int,
                           group_size: int, act_order: bool) -> int:
    """Bytes vLLM `version` holds after loading for one rank's linear layer of a symmetric 4-bit GPTQ checkpoint
    (``in_features x out_features`` on the rank, ``full_in_features`` before a row-parallel split) on `kernel`
    (`gptq_dense_kernel`).  The method's ``create_weights`` (0.11/0.19 gptq_marlin.py ``GPTQMarlinLinearMethod``,
    0.33 auto_gptq.py ``AutoGPTQLinearMethod``) allocates an int32 ``qweight`` ``[in / 8, out]``, 16-bit ``scales``
    and int32 ``qzeros`` ``[G, out / 8]`` of G groups, and in 0.11/0.19 an int32 ``g_idx`` ``[in]`` (0.33 creates
    none); with act order G is the whole layer's ``full_in_features / g`` (utils/marlin_utils.py
    ``marlin_repeat_scales_on_all_ranks(act_order, ...)``: the scales and zero points of a row-parallel layer are
    loaded whole on every rank), else the rank's ``in_features / g``.  Then the kernel's
    ``process_weights_after_loading``:

    * Marlin (mixed_precision/marlin.py): the weights and scales repacked at their size; the qzeros replaced by an
      empty tensor (``zero_points=False``); with act order ``marlin_sort_g_idx`` keeps the sorted g_idx and the
      int32 ``g_idx_sort_indices`` (``[in]`` each), without it both are emptied.
    * Machete (mixed_precision/machete.py): the weights prepacked at their size, the scales kept; the qzeros and the
      g_idx are left as loaded (it transforms zero points only with ``zero_points``); with act order it also keeps
      the int32 ``argsort(g_idx)`` ``[in]`` for its activation permutation (``act_perm``).

    On Marlin the releases of `FP8_MARLIN_PADDING_VERSIONS` (0.33) first zero-pad a layer its thread tiles do not
    divide to ``marlin_padded_nk`` (``marlin_pad_qweight``, ``marlin_pad_scales``: the weights ``Np x Kp / 2``, the
    scales ``[Kp / g, Np]``) and keep the padded layer."""
    if kernel == "marlin" and version in FP8_MARLIN_PADDING_VERSIONS and not act_order:
        out_features, in_features = _marlin_padded_nk(out_features, in_features, group_size)
    groups = 1 if group_size == -1 else (full_in_features if act_order and kernel == "marlin"
                                         else in_features) // group_size
    held = in_features * out_features // 2 + 2 * groups * out_features
    if kernel == "marlin":
        return held + (2 * 4 * in_features if act_order else 0)
    g_idx = 4 * in_features if version != "0.33" else 0
    return held + groups * out_features // 2 + g_idx + (4 * in_features if act_order else 0)


def _gptq_dense_charge(spec: ModelSpec, stored: WeightFormat, tensor_parallel: int) -> tuple[int, int]:
    """nibble's charge on one rank for one decoder layer's attention (q, k, v, o) and dense MLP (gate, up, down)
    checkpoint tensors in `stored` (`WeightFormat.checkpoint_tensors`: qweight, qzeros, scales, g_idx), as the planner
    splits them: ``ceil(bytes / tp)`` each, a key or value projection ``ceil(bytes / kv_heads)`` where the ranks
    outnumber its heads (planner._replicated_kv_bytes)."""
    hidden, head_dim, width = spec.hidden_size, spec.head_dim, spec.intermediate_size
    heads, kv_heads = spec.num_attention_heads, spec.num_kv_heads

    def split(shape: tuple[int, int], ranks: int) -> int:
        return -(-stored.bytes_for(shape) // ranks)

    kv_ranks = kv_heads if tensor_parallel > kv_heads else tensor_parallel
    attention = (split((heads * head_dim, hidden), tensor_parallel) + 2 * split((kv_heads * head_dim, hidden), kv_ranks)
                 + split((hidden, heads * head_dim), tensor_parallel))
    mlp = 2 * split((width, hidden), tensor_parallel) + split((hidden, width), tensor_parallel)
    return attention, mlp


def gptq_marlin_linear_bytes(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> Term | None:
    """The bytes one rank of vLLM `version` holds for the dense linear layers (attention and dense MLP) of a symmetric
    4-bit GPTQ checkpoint (`dense_format` its label, ``-act-order-`` for ``desc_act: true``) beyond nibble's charge of
    the checkpoint's tensors (`_gptq_dense_charge`): per layer `gptq_linear_held_bytes` on the kernel
    `gptq_dense_kernel` takes, for the QKVParallelLinear qkv_proj and MergedColumnParallelLinear gate_up_proj (their
    inputs whole) and the RowParallelLinear o_proj and down_proj (their inputs split), shapes per rank
    `_dense_linear_shapes`, and on Marlin in 0.11 and 0.19 the layer's workspace (`marlin_linear_workspace_bytes`).
    Positive where act order holds a row-parallel layer's scales whole and the g_idx with its sort indices; negative
    where Marlin frees the qzeros and g_idx nibble charges, and for the g_idx 0.33 never
    creates.  Models of `FUSED_LINEAR_MODEL_TYPES` without MLA or shared experts, groups of 32, 64 or 128 or a whole
    row (-1: one group, act order off as gptq_marlin.py sets ``desc_act = False`` for it), devices of
    `GPTQ_MARLIN_FLOORS`; None elsewhere (asymmetric GPTQ runs other kernels in 0.11/0.19 and is refused in 0.33;
    act order is refused in 0.33: `gptq_act_order_refusal`)."""
    spec = stage.spec
    found = INT4_CHECKPOINT_LABEL.fullmatch(dense_format.removeprefix("checkpoint-"))
    capability = device.compute_capability
    group = int(found["group"]) if found is not None and found["group"] else -1
    if (found is None or found["layout"] != "gptq" or found["kind"] != "sym"
            or group not in _GPTQ_DENSE_GROUPS or "-padded" in dense_format or "-partial" in dense_format
            or version not in GPTQ_MARLIN_FLOORS or capability is None or device.vendor == "amd"
            or capability < GPTQ_MARLIN_FLOORS[version] or spec.model_type not in FUSED_LINEAR_MODEL_TYPES
            or spec.is_mla or spec.shared_expert_width):
        return None
    act_order = found["act_order"] is not None and group > 0
    if act_order and version == "0.33":
        return None  # refused: gptq_act_order_refusal
    tensor_parallel = stage.tensor_parallel
    (qkv, o_proj), (gate_up, down) = _dense_linear_shapes(spec, tensor_parallel)
    kernels: set[str] = set()
    padded: list[str] = []

    def held(column: tuple[int, int], row: tuple[int, int], row_full_in: int,
             biases: tuple[bool, bool] = (False, False)) -> int | None:
        """The held bytes of a column-parallel layer (input whole) and a row-parallel one (input split)."""
        total = 0
        for (in_features, out_features), full_in, split, bias in ((column, column[0], False, biases[0]),
                                                                   (row, row_full_in, tensor_parallel > 1, biases[1])):
            kernel = gptq_dense_kernel(version, capability, in_features, out_features, group, act_order, split)
            if not kernel and version == "0.33" and capability == HUMMING_PREFERRED_CAPABILITY:
                kernels.add("humming")  # prioritize_humming: Humming's kernels where Machete refuses the layer
                total += humming_linear_bytes(in_features, out_features, group, False, bias, device)
                continue
            if not kernel:
                return None
            kernels.add(kernel)
            total += gptq_linear_held_bytes(version, kernel, in_features, out_features, full_in, group, act_order)
            if kernel == "marlin":
                total += marlin_linear_workspace_bytes(version, device)
            if kernel == "marlin" and version in FP8_MARLIN_PADDING_VERSIONS:
                padded_out, padded_in = _marlin_padded_nk(out_features, in_features, group)
                if (padded_out, padded_in) != (out_features, in_features):
                    padded.append(f"{in_features} x {out_features} to {padded_in} x {padded_out}")
                    # the bias too (marlin_pad_dim, marlin_permute_bias): 16-bit, N to Np
                    total += ACTIVATION_ELEMENT_BYTES * (padded_out - out_features) if bias else 0
        return total

    start, stop = stage.layers
    dense_layers = sum(1 for layer in range(start, stop) if not spec.is_moe or layer in spec.dense_layers)
    per_attention = held(qkv, o_proj, spec.num_attention_heads * spec.head_dim,
                         (spec.attention_qkv_bias, spec.attention_output_bias))
    per_mlp = held(gate_up, down, spec.intermediate_size) if dense_layers else 0
    if per_attention is None or per_mlp is None:
        return None
    stored = gptq_checkpoint(None if group == -1 else group, True, found["act_order"] is not None)
    charge_attention, charge_mlp = _gptq_dense_charge(spec, stored, tensor_parallel)
    extra = (stop - start) * (per_attention - charge_attention) + dense_layers * (per_mlp - charge_mlp)
    if not extra:
        return None
    order = ("with act order (desc_act) the row-parallel o_proj and down_proj hold their scales whole "
             "(marlin_repeat_scales_on_all_ranks) and each layer its g_idx and their int32 sort indices "
             "(marlin_sort_g_idx; Machete's act_perm)" if act_order else
             "without act order Marlin empties the qzeros and g_idx (marlin_make_empty_g_idx) and Machete keeps them")
    method = ("gptq_marlin.py GPTQMarlinLinearMethod" if version != "0.33"
              else "auto_gptq.py AutoGPTQLinearMethod, which creates no g_idx")
    humming = ("; Humming (0.33 on 9.0 where Machete refuses a layer: prioritize_humming) pads N to 256 and K to "
               "128, keeps the scales and nothing else of the checkpoint, and adds a lock buffer (quantization/utils/"
               "humming/linear.py prepare_humming_linear_layer_config)" if "humming" in kernels else "")
    tiles = (f"; Marlin zero-pads the layers its thread tiles do not divide (marlin_utils.py marlin_padded_nk, "
             f"marlin_pad_qweight, marlin_pad_scales; in x out {', '.join(dict.fromkeys(padded))}) and keeps them"
             if padded else "")
    workspace = marlin_linear_workspace_bytes(version, device) if "marlin" in kernels else 0
    tiles += (f"; each Marlin layer keeps a {workspace:,}-byte workspace (marlin_make_workspace_new, int32 one a "
              "streaming multiprocessor)" if workspace else "")
    return Term(extra, (
        f"vLLM {version} runs the {dense_format} attention and MLP layers on {' and '.join(sorted(kernels))} "
        f"(choose_mp_linear_kernel): {order}{humming}{tiles}; {extra / GIB:+.2f} GiB a rank against nibble's charge of "
        f"the checkpoint's qweight, qzeros, scales and g_idx ({extra:+,} bytes; {method}; kernels/mixed_precision "
        "marlin.py and machete.py)"))


#: the releases whose Marlin linear layers each keep a workspace: 0.11's awq_marlin.py
#: ``AWQMarlinLinearMethod.process_weights_after_loading`` (``layer.workspace``) and MarlinLinearKernel
#: (kernels/mixed_precision/marlin.py, 0.11 and 0.19: ``self.workspace``), both ``marlin_make_workspace_new``
#: (utils/marlin_utils.py): int32 zeros, one a streaming multiprocessor (``max_blocks_per_sm=1``), made per layer;
#: 0.33's MarlinLinearKernel keeps none (``apply_gptq_marlin_linear(..., workspace=None)``)
MARLIN_LINEAR_WORKSPACE_VERSIONS = frozenset({"0.11", "0.19"})


def marlin_linear_workspace_bytes(version: str, device: DeviceFacts) -> int:
    """The bytes of the workspace one Marlin linear layer of vLLM `version` keeps on `device`: ``4 x`` its streaming
    multiprocessors in the releases of `MARLIN_LINEAR_WORKSPACE_VERSIONS` (`torch_cuda.compute_units`), else 0."""
    if version not in MARLIN_LINEAR_WORKSPACE_VERSIONS:
        return 0
    units, _ = compute_units(device)
    return 4 * units


def int4_zero_point_marlin_held_bytes(version: str, in_features: int, out_features: int, group_size: int,
                                      zero_points: bool, device: DeviceFacts) -> int:
    """Bytes vLLM `version` holds after loading for one rank's AWQ or compressed-tensors int4 linear layer
    (``in_features x out_features`` on the rank, `group_size` -1 for one scale a row) on Marlin, `zero_points` where
    the checkpoint has them (AWQ always, compressed-tensors when asymmetric).  0.11's awq_marlin.py
    ``AWQMarlinLinearMethod.process_weights_after_loading`` and MarlinLinearKernel's (kernels/mixed_precision/
    marlin.py, 0.11, 0.19 and 0.33; 0.19's awq_marlin.py and 0.33's auto_awq.py first turn the AWQ layout into
    GPTQ's, ``_convert_awq_to_standard_format``, at the same bytes): the weight repacked at its size
    (``awq_marlin_repack`` / ``gptq_marlin_repack``: ``in x out / 2``), the 16-bit scales permuted at their size
    (``marlin_permute_scales``: ``G x out x 2``), the zero points unpacked and packed again at their size
    (``awq_to_marlin_zero_points`` / ``marlin_zero_points``: int32 ``[G, out / 8]``, ``G x out / 2`` bytes), g_idx
    and its sort indices empty (no act order), and the workspace (`marlin_linear_workspace_bytes`).  The releases of
    `FP8_MARLIN_PADDING_VERSIONS` (0.33) first zero-pad a layer Marlin's thread tiles do not divide to
    ``marlin_padded_nk`` (``marlin_pad_qweight``; ``marlin_pad_scales`` for the scales and the unpacked zero points):
    the same at ``Np x Kp`` with ``Kp / g`` groups.  A bias (16-bit, ``marlin_permute_bias``) is the caller's."""
    if version in FP8_MARLIN_PADDING_VERSIONS:
        out_features, in_features = _marlin_padded_nk(out_features, in_features, group_size)
    groups = 1 if group_size == -1 else in_features // group_size
    return (in_features * out_features // 2 + ACTIVATION_ELEMENT_BYTES * groups * out_features
            + (groups * out_features // 2 if zero_points else 0) + marlin_linear_workspace_bytes(version, device))


#: bytes of compressed-tensors' ``weight_shape`` (int64 [2]), which every layer keeps (compressed_tensors_wNa16.py
#: ``CompressedTensorsWNA16.create_weights`` registers it; no kernel deletes it on Marlin)
COMPRESSED_TENSORS_WEIGHT_SHAPE_BYTES = 16


def awq_compressed_tensors_marlin_bytes(stage: Stage, version: str, dense_format: str,
                                        device: DeviceFacts) -> Term | None:
    """The bytes one rank of vLLM `version` holds for the dense linear layers (attention and dense MLP) of an AWQ or
    compressed-tensors W4A16 checkpoint (`dense_format` its label) beyond nibble's charge of the checkpoint's tensors
    (`_gptq_dense_charge` of the label's layout: AWQ's qweight, qzeros, scales; compressed-tensors' weight_packed,
    weight_scale, weight_shape and, asymmetric, weight_zero_point), where it runs them on Marlin: every NVIDIA device
    from `GPTQ_MARLIN_FLOORS` but compute capability 9.0, where 0.19 and 0.33 take Machete or Humming
    (`machete_zero_point_bytes`, `compressed_tensors_humming_bytes`; 0.11's awq_marlin.py repacks AWQ for Marlin
    there too).  Per layer `int4_zero_point_marlin_held_bytes` (shapes per rank `_dense_linear_shapes`), with a
    compressed-tensors layer's weight_shape and, in 0.33, a padded bias's ``2 x (Np - N)``.  A layer Marlin's tiles
    do not divide (out features not a multiple of 64 or in features of 128) runs AWQ's own kernel in 0.11 and 0.19
    (awq_marlin.py ``get_quant_method``: ``check_marlin_supports_layer``, then AWQConfig's AWQLinearMethod, the
    checkpoint's tensors as loaded) and is padded in 0.33 (auto_awq.py ``check_marlin_supports_layer(...,
    allow_tile_padding=True)``; MarlinLinearKernel.can_implement).  Models of `FUSED_LINEAR_MODEL_TYPES` without MLA or
    shared experts, groups of 32, 64 or 128 (and a whole row for compressed-tensors, whose scales
    ``[out, 1]`` are whole on every rank); None elsewhere: act order, a group straddling a rank's shard (refused), a
    compressed-tensors layer 0.11/0.19's Marlin refuses (Conch or ExLlama: not read), and where nothing is held beyond
    the checkpoint's (0.33 on aligned layers: the same tensors at their size, no workspace)."""
    spec = stage.spec
    found = INT4_CHECKPOINT_LABEL.fullmatch(dense_format.removeprefix("checkpoint-"))
    capability = device.compute_capability
    if (found is None or found["layout"] not in ("awq", "compressed-tensors") or found["act_order"] is not None
            or found["kind"] == "asym-fp16zero" or "-padded" in dense_format or "-partial" in dense_format
            or version not in GPTQ_MARLIN_FLOORS or capability is None or device.vendor == "amd"
            or capability < GPTQ_MARLIN_FLOORS[version] or spec.model_type not in FUSED_LINEAR_MODEL_TYPES
            or spec.is_mla or spec.shared_expert_width):
        return None
    awq = found["layout"] == "awq"
    group = int(found["group"]) if found["group"] else -1
    if group not in _GPTQ_DENSE_GROUPS or (awq and group == -1):
        return None  # AWQ's whole-row group (group_size = input_size, 0 groups on a split row): not read
    if capability == HUMMING_PREFERRED_CAPABILITY and not (awq and version == "0.11"):
        return None  # Machete or Humming
    zero_points = awq or found["kind"] == "asym"
    padding = version in FP8_MARLIN_PADDING_VERSIONS
    padded: list[str] = []
    own: list[str] = []

    def held(shapes: tuple[tuple[int, int], ...], biases: tuple[bool, ...]) -> int | None:
        total = 0
        for (in_features, out_features), bias in zip(shapes, biases, strict=True):
            if group > 0 and in_features % group:
                return None  # a group straddling the rank's shard: refused
            groups = 1 if group == -1 else in_features // group
            if not padding and (out_features % GPTQ_MARLIN_MIN_THREAD_N or in_features % GPTQ_MARLIN_MIN_THREAD_K):
                if not awq:
                    return None  # compressed-tensors: Conch or ExLlama, not read
                # AWQLinearMethod: the checkpoint's qweight, qzeros and scales as loaded
                own.append(f"{in_features} x {out_features}")
                total += (in_features * out_features // 2 + ACTIVATION_ELEMENT_BYTES * groups * out_features
                          + groups * out_features // 2)
                continue
            total += int4_zero_point_marlin_held_bytes(version, in_features, out_features, group, zero_points, device)
            total += 0 if awq else COMPRESSED_TENSORS_WEIGHT_SHAPE_BYTES
            if padding:
                padded_out, padded_in = _marlin_padded_nk(out_features, in_features, group)
                if (padded_out, padded_in) != (out_features, in_features):
                    padded.append(f"{in_features} x {out_features} to {padded_in} x {padded_out}")
                    total += ACTIVATION_ELEMENT_BYTES * (padded_out - out_features) if bias else 0
        return total

    attention, mlp = _dense_linear_shapes(spec, stage.tensor_parallel)
    start, stop = stage.layers
    dense_layers = sum(1 for layer in range(start, stop) if not spec.is_moe or layer in spec.dense_layers)
    per_attention = held(attention, (spec.attention_qkv_bias, spec.attention_output_bias))
    per_mlp = held(mlp, (False, False)) if dense_layers else 0
    if per_attention is None or per_mlp is None:
        return None
    stored = int4(None if group == -1 else group, found["kind"] == "sym", layout="awq" if awq else "compressed-tensors")
    charge_attention, charge_mlp = _gptq_dense_charge(spec, stored, stage.tensor_parallel)
    extra = (stop - start) * (per_attention - charge_attention) + dense_layers * (per_mlp - charge_mlp)
    if extra <= 0:
        return None
    method = ("awq_marlin.py AWQMarlinLinearMethod" if version == "0.11" else
              "awq_marlin.py AWQMarlinLinearMethod and MarlinLinearKernel" if awq and version == "0.19" else
              "auto_awq.py AutoAWQMarlinLinearMethod and MarlinLinearKernel" if awq else
              "compressed_tensors_wNa16.py CompressedTensorsWNA16 and MarlinLinearKernel")
    workspace = marlin_linear_workspace_bytes(version, device)
    kept = (f"each Marlin layer keeps a {workspace:,}-byte workspace (marlin_make_workspace_new, int32 one a "
            "streaming multiprocessor)" if workspace else "no workspace")
    tiles = (f"; Marlin zero-pads the layers its thread tiles do not divide (marlin_utils.py marlin_padded_nk, "
             f"marlin_pad_qweight, marlin_pad_scales; in x out {', '.join(dict.fromkeys(padded))}) and keeps them"
             if padded else "")
    tiles += (f"; the layers Marlin's tiles do not divide (in x out {', '.join(dict.fromkeys(own))}) run AWQ's own "
              "kernel as loaded (check_marlin_supports_layer, AWQLinearMethod)" if own else "")
    return Term(extra, (
        f"vLLM {version} runs the {dense_format} attention and MLP layers on Marlin ({method}): the weights, "
        f"scales and zero points repacked at their size, {kept}{tiles}; {extra / GIB:+.2f} GiB a rank against "
        f"nibble's charge of the checkpoint's tensors ({extra:+,} bytes)"))


#: the releases that turn an AWQ checkpoint's layout into GPTQ's before any kernel sees it (0.19's awq_marlin.py
#: ``AWQMarlinLinearMethod``, 0.33's auto_awq.py ``AutoAWQMarlinLinearMethod``: ``_convert_awq_to_standard_format``);
#: 0.11's awq_marlin.py repacks the AWQ layout directly (``awq_marlin_repack``)
AWQ_STANDARD_FORMAT_VERSIONS = frozenset({"0.19", "0.33"})


def int4_linear_repack_transient_bytes(version: str, layout: str, in_features: int, out_features: int,
                                       group_size: int) -> int:
    """What one rank holds only while vLLM `version` rewrites one int4 linear layer of `layout` ("gptq", "awq",
    "compressed-tensors", "nvfp4"; ``in_features x out_features`` on the rank) for Marlin, beyond the layer's loaded
    tensors
    (the weight's steps; the scales' and zero points' are a group's fraction of it and come after the weight's
    temporaries are freed, or before they are made):

    * GPTQ, qweight int32 ``[in / 8, out]`` already contiguous: MarlinLinearKernel's ``transform_w_q``
      (kernels/mixed_precision/marlin.py, 0.11, 0.19, 0.33) writes ``gptq_marlin_repack``'s output (``in x out / 2``)
      while the loaded one is bound (``_transform_param`` replaces it after);
    * compressed-tensors, weight_packed ``[out, in / 8]``: ``permute_param_layout_`` makes it a transposed view, and
      ``x.data.contiguous()`` copies it (``in x out / 2``) before the repack's output: ``in x out``;
    * NVFP4, weight uint8 ``[out, in / 2]``: prepare_fp4_layer_for_marlin (quantization/utils/marlin_utils_fp4.py,
      0.11, 0.19, 0.33) repacks ``layer.weight.view(torch.int32).T.contiguous()``: the same ``in x out`` (its
      scales' 16-bit steps after it, a fraction of that);
    * AWQ in 0.11 (awq_marlin.py ``AWQMarlinLinearMethod.process_weights_after_loading``): ``awq_marlin_repack``'s
      output beside the loaded qweight: ``in x out / 2``;
    * AWQ in 0.19 and 0.33 (`AWQ_STANDARD_FORMAT_VERSIONS`), ``_convert_awq_to_standard_format`` unpacks every
      4-bit value to an int32 (``(qw.unsqueeze(-1) >> shifts) & mask``, then ``unpacked[:, :, reverse_order]``,
      each ``4 x in x out`` bytes), keeps that reordered copy bound while it shifts it again (``<< shifts``: another
      ``4 x in x out``) and sums it into the new qweight (``in x out / 2``): ``8.5 x in x out`` bytes, 17 times the
      packed weight, before the kernel's own repack (at most ``in x out`` even padded: smaller).

    0.33 (`FP8_MARLIN_PADDING_VERSIONS`) zero-pads a layer Marlin's tiles do not divide first
    (``marlin_pad_qweight``, ``F.pad``: ``Np x Kp / 2``) and repacks the padded copy: ``Np x Kp`` bytes at once
    (for compressed-tensors the contiguous copy is freed once padded: ``max(in x out / 2 + Np x Kp / 2, Np x Kp)``)."""
    if layout == "awq" and version in AWQ_STANDARD_FORMAT_VERSIONS:
        return 17 * in_features * out_features // 2
    padded_out, padded_in = ((out_features, in_features) if version not in FP8_MARLIN_PADDING_VERSIONS
                             else _marlin_padded_nk(out_features, in_features, group_size))
    padded = padded_out * padded_in
    if padded != out_features * in_features:
        return padded
    return in_features * out_features if layout in ("compressed-tensors", "nvfp4") else in_features * out_features // 2


def machete_linear_repack_transient_bytes(layout: str, in_features: int, out_features: int, act_order: bool) -> int:
    """What one rank holds only while MacheteLinearKernel (compute capability 9.0; mixed_precision/machete.py,
    ``process_weights_after_loading``'s ``transform_w_q``, in 0.11, 0.19 and 0.33 alike) rewrites one int4 linear
    layer of `layout` ("gptq", "awq" after its conversion, "compressed-tensors"; ``in_features x out_features`` on the
    rank) beyond the layer's loaded tensors, each tensor as PyTorch's allocator counts it
    (`torch_cuda.allocated_block_bytes`):

    * without act order: ``permute_param_layout_`` views the packed weight as ``[in / 8, out]`` int32 and
      ``machete_prepack_B(x.data.t().contiguous().t())`` writes the prepacked weight (``_custom_ops.py``
      ``machete_prepack_B_fake``: ``empty_like`` the input, ``in x out / 2`` bytes) while the loaded one is bound.
      GPTQ's qweight, and AWQ's after ``_convert_awq_to_standard_format`` (``new_qw.contiguous()``), are ``[in / 8,
      out]`` contiguous, so ``.t()`` is not and ``.contiguous()`` copies it first: ``2 x in x out / 2``;
      compressed-tensors' weight_packed is ``[out, in / 8]`` (input_dim 1), its permuted view's ``.t()`` is
      contiguous and not copied: the prepacked output alone;
    * with act order (GPTQ ``desc_act``, 0.11 and 0.19 only, a layer whose input is not split):
      ``unpack_quantized_values_into_int32`` (quantization/utils/quant_utils.py) fills an int32 ``[out, in]``
      (``4 x in x out``) from two ``[out, in / 8]`` int32 temporaries at once (``(w >> shift) & mask``);
      ``x_unpacked[perm, :]`` gathers a second ``4 x in x out`` beside it; ``pack_quantized_values_into_int32`` then
      writes an int32 ``[out, in / 8]`` result from two more such temporaries (``(w[..., i::8] & mask) << shift``),
      both unpacked copies and the loaded qweight still bound: ``2 x 4 x in x out + 3 x in x out / 2`` (9.5 times
      ``in x out``, 19 times the packed weight).  The packed result, ``res.permute``, is ``[in / 8, out]`` with
      ``.t()`` contiguous, so the prepack makes no copy; its output (``in x out / 2``) comes after the loaded
      qweight was replaced: ``2 x 4 x in x out + in x out / 2`` beyond it, below the packing step.

    The scales' step (``transform_w_s``: a contiguous copy of ``G x out`` 16-bit values) and the zero points'
    (``transform_w_zp``, int32 and 16-bit ``[G, out]`` copies) come after the weight's temporaries are freed and
    are a group's fraction of them; the int32 ``argsort(g_idx)`` is held after loading
    (`gptq_linear_held_bytes`)."""
    packed = allocated_block_bytes(in_features * out_features // 2)
    if act_order:
        return 2 * allocated_block_bytes(4 * in_features * out_features) + 3 * packed
    return packed if layout == "compressed-tensors" else 2 * packed


def _machete_takes(capability: tuple[int, int], in_features: int, out_features: int, group_size: int) -> bool:
    """Whether ``choose_mp_linear_kernel`` (0.11, 0.19, 0.33) takes MacheteLinearKernel for one rank's AWQ (after its
    conversion, 0.19 and 0.33) or compressed-tensors int4 layer without act order: compute capability 9.0, a group
    Machete supports (`MACHETE_GROUPS`) and the rank's in/out features multiples of 64/128
    (``check_machete_supports_shape``); CutlassW4A8, ahead of it, wants fp8 activations."""
    return (capability == HUMMING_PREFERRED_CAPABILITY
            and (None if group_size == -1 else group_size) in MACHETE_GROUPS
            and in_features % MACHETE_BLOCK_IN == 0 and out_features % MACHETE_BLOCK_OUT == 0)


def int4_marlin_linear_repack_bytes(stage: Stage, version: str, dense_format: str,
                                    device: DeviceFacts) -> Term | None:
    """What one rank holds only while vLLM `version` rewrites its largest int4 linear layer (attention or dense MLP,
    stored as `dense_format`, a GPTQ, AWQ or compressed-tensors checkpoint) for Marlin or Machete, beyond the loaded
    tensors: `int4_linear_repack_transient_bytes` of the layers on Marlin, `machete_linear_repack_transient_bytes` of
    those on Machete (compute capability 9.0), the largest of them.  GPTQ (symmetric): the kernel
    `gptq_dense_kernel` gives (Machete with act order in 0.11 and 0.19 where the layer's input is not split);
    compressed-tensors: Machete where it takes the layer (`_machete_takes`), else Marlin, aligned to its tiles before
    0.33 (0.33 on 9.0 runs Humming there, its steps not read); AWQ: every layer awq_marlin.py / auto_awq.py takes
    (``check_marlin_supports_layer``: aligned to Marlin's tiles before 0.33, whole groups on the rank in 0.33) on any
    device from `GPTQ_MARLIN_FLOORS`, since 0.19 and 0.33 convert the AWQ layout whatever kernel follows (on Machete
    its prepack comes after the conversion's temporaries are freed, and is smaller; Humming's steps not read).  Each
    module's process_weights_after_loading runs after every weight is loaded, one at a time (model_loader/utils.py
    ``process_weights_after_loading``), so only the largest layer's counts, before "Model loading took" is measured
    and the KV cache sized.  Models of `FUSED_LINEAR_MODEL_TYPES` without MLA or shared experts; None elsewhere, for
    GPTQ act order in 0.33 (refused) and where no layer takes these paths.  NVFP4 linear layers: those
    `nvfp4_marlin_linear_bytes` finds on Marlin (`_nvfp4_marlin_repack_bytes`)."""
    if dense_format.removeprefix("checkpoint-") in NVFP4_LABELS:
        return _nvfp4_marlin_repack_bytes(stage, version, dense_format, device)
    spec = stage.spec
    found = INT4_CHECKPOINT_LABEL.fullmatch(dense_format.removeprefix("checkpoint-"))
    capability = device.compute_capability
    if (found is None or "-padded" in dense_format or "-partial" in dense_format or found["kind"] == "asym-fp16zero"
            or version not in GPTQ_MARLIN_FLOORS or capability is None or device.vendor == "amd"
            or capability < GPTQ_MARLIN_FLOORS[version] or spec.model_type not in FUSED_LINEAR_MODEL_TYPES
            or spec.is_mla or spec.shared_expert_width):
        return None
    layout = found["layout"]
    group = int(found["group"]) if found["group"] else -1
    act_order = found["act_order"] is not None and group > 0
    if (group not in _GPTQ_DENSE_GROUPS or (layout == "gptq" and (found["kind"] != "sym" or (act_order
                                                                                          and version == "0.33")))
            or (layout != "gptq" and act_order) or (layout == "awq" and group == -1)):
        return None
    tensor_parallel = stage.tensor_parallel
    (qkv, o_proj), (gate_up, down) = _dense_linear_shapes(spec, tensor_parallel)
    dense = any(not spec.is_moe or layer in spec.dense_layers for layer in range(*stage.layers))
    shapes = ((qkv, False), (o_proj, tensor_parallel > 1)) + (((gate_up, False), (down, tensor_parallel > 1))
                                                              if dense else ())
    aligned_only = version not in FP8_MARLIN_PADDING_VERSIONS
    largest, basis, kernel = 0, "", ""
    for (in_features, out_features), row_parallel in shapes:
        if group > 0 and in_features % group:
            continue  # a group straddling the rank's shard: refused, or AWQ's own kernel as loaded
        aligned = out_features % GPTQ_MARLIN_MIN_THREAD_N == 0 and in_features % GPTQ_MARLIN_MIN_THREAD_K == 0
        if layout == "gptq":
            chosen = gptq_dense_kernel(version, capability, in_features, out_features, group, act_order,
                                       row_parallel)
            if chosen not in ("marlin", "machete"):
                continue
        elif layout == "awq" and version not in AWQ_STANDARD_FORMAT_VERSIONS:
            if aligned_only and not aligned:
                continue
            chosen = "marlin"  # 0.11's awq_marlin.py repacks for Marlin itself, 9.0 too
        elif _machete_takes(capability, in_features, out_features, group):
            chosen = "machete"
        elif aligned_only and not aligned:
            continue  # 0.11/0.19: another kernel (AWQ's own, as loaded)
        elif (layout == "compressed-tensors" and version == "0.33"
              and capability == HUMMING_PREFERRED_CAPABILITY):
            continue  # 0.33 on 9.0: Humming ahead of Marlin (prioritize_humming), its steps not read
        else:
            chosen = "marlin"  # AWQ in 0.33 on 9.0 Humming's after the conversion, which is what is counted
        if chosen == "machete":
            transient = machete_linear_repack_transient_bytes(layout, in_features, out_features, act_order)
            if layout == "awq":  # the conversion first, its temporaries freed before Machete's
                transient = max(transient, int4_linear_repack_transient_bytes(version, layout, in_features,
                                                                               out_features, group))
        else:
            transient = int4_linear_repack_transient_bytes(version, layout, in_features, out_features, group)
        if transient > largest:
            largest, basis, kernel = transient, f"{in_features} x {out_features}", chosen
    if not largest:
        return None
    if layout == "awq" and version in AWQ_STANDARD_FORMAT_VERSIONS:
        how = ("_convert_awq_to_standard_format (awq_marlin.py in 0.19, auto_awq.py in 0.33) unpacks its 4-bit values "
               "to int32, two copies of 4 bytes a weight bound while the new qweight is summed: 17 times the packed "
               "weight" + ("; Machete's prepack after it (a contiguous copy and its output) is smaller"
                           if kernel == "machete" else ""))
    elif kernel == "machete" and act_order:
        how = ("MacheteLinearKernel.process_weights_after_loading (transform_w_q) unpacks the qweight to int32 "
               "[in, out] (unpack_quantized_values_into_int32), gathers it in act order (x_unpacked[perm, :]) and "
               "packs that again (pack_quantized_values_into_int32) with both int32 copies bound beside the loaded "
               "qweight: 19 times the packed weight")
    elif kernel == "machete":
        copy = (" (the permuted weight_packed needs no contiguous copy)" if layout == "compressed-tensors" else
                " beside its contiguous transposed copy")
        how = ("MacheteLinearKernel.process_weights_after_loading (transform_w_q) writes machete_prepack_B's "
               f"output{copy} while the loaded one is bound")
    elif layout == "awq":
        how = "awq_marlin_repack (awq_marlin.py AWQMarlinLinearMethod) writes the Marlin weight beside the loaded one"
    else:
        copy = " beside its contiguous transposed copy" if layout == "compressed-tensors" else ""
        how = (f"gptq_marlin_repack (MarlinLinearKernel.process_weights_after_loading) writes the Marlin weight{copy} "
               "while the loaded one is bound" + ("; 0.33 repacks a zero-padded copy (marlin_pad_qweight) where "
                                                  "marlin_padded_nk pads the layer" if not aligned_only else ""))
    return Term(largest, (
        f"{largest / GIB:.2f} GiB while vLLM {version} rewrites its largest {dense_format} linear layer "
        f"(in x out {basis} on the rank) for {'Machete' if kernel == 'machete' else 'Marlin'}: {how}"))


#: The compute capability from which each vLLM release runs fp8 [128, 128]-block weights natively, below which it runs
#: them weight-only on Marlin (down to the fp8 floor, `CAPABILITY_FLOORS`), as (routed experts, linear layers).
#: Experts: 0.11's Fp8MoEMethod ``use_marlin = not has_device_capability(89)`` (quantization/fp8.py); 0.19 and 0.33's
#: select_fp8_moe_backend (fused_moe/oracle/fp8.py) reach Fp8MoeBackend.MARLIN below 8.9, where TritonExperts'
#: ``_supports_quant_scheme`` takes no fp8 (``has_device_capability((8, 9))``) and DeepGEMM and CUTLASS need 9.0.
#: Linear layers: 0.11's Fp8LinearMethod ``use_marlin = not has_device_capability(89)``; 0.19's
#: ``_POSSIBLE_FP8_KERNELS`` puts MarlinFP8ScaledMMLinearKernel first, whose ``is_supported`` refuses 8.9 and up
#: (kernels/linear/__init__.py, scaled_mm/marlin.py); 0.33's ``_POSSIBLE_FP8_BLOCK_KERNELS`` puts FlashInfer's and
#: DeepGEMM's (9.0 and up), CUTLASS's block kernel (``cutlass_scaled_mm_supports_block_fp8``: 9.0 and up) and B12x
#: (12.x) before Marlin, which no longer refuses 8.9: so below 9.0 (12.x devices, B12x's when installed, not read)
FP8_MARLIN_BELOW: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "0.11": ((8, 9), (8, 9)),
    "0.19": ((8, 9), (8, 9)),
    "0.33": ((8, 9), (9, 0)),
}
#: the side of an fp8 checkpoint's weight blocks, and of the groups Marlin holds their scales in
FP8_BLOCK = 128
#: Where fp8 weights with one scale a tensor run on Marlin: below 8.9 in every release, for the experts as above and
#: for the linear layers too in 0.33, whose ``_POSSIBLE_FP8_KERNELS`` takes CutlassFP8ScaledMMLinearKernel first where
#: ``cutlass_fp8_supported()`` (8.9 and up) and Marlin only after it
FP8_TENSOR_MARLIN_BELOW = (8, 9)
#: the fp8 weight labels whose scales Marlin expands (`fp8_marlin_scale_bytes`), True for [128, 128] blocks; a
#: scale a channel it holds in 16 bits, at most the checkpoint's float32 (nothing charged)
FP8_MARLIN_LABELS: dict[str, bool] = {"fp8-block128": True, "fp8-per-tensor": False, "fp8-per-tensor-static": False}
#: the model classes whose fp8 linear layers nibble lists per rank for `fp8_marlin_linear_bytes`
#: (`_fp8_linear_layers`): those of `FUSED_LINEAR_MODEL_TYPES`, MiniMax-M2 (minimax_m2.py: a QKVParallelLinear
#: qkv_proj and an o_proj, no dense MLP or shared experts), GLM-4.5/4.6 (glm4_moe.py: a QKVParallelLinear qkv_proj,
#: an o_proj, the first_k_dense_replace layers' Glm4MoeMLP of merged gate_up_proj and down_proj, and the shared
#: experts as one such MLP split over the ranks) and DeepSeek Sparse Attention's MLA models (deepseek_v2.py, also
#: GlmMoeDsaForCausalLM: DeepSeek-V3's layers and the Indexer's ReplicatedLinear ``wq_b`` and ``wk``, built with the
#: model's quant_config; ``weights_proj`` with ``quant_config=None``), and the text decoders of the same fused layout
#: (a QKVParallelLinear qkv_proj, an o_proj, a MergedColumnParallelLinear gate_up_proj, a down_proj; vLLM 0.19):
#: gemma3.py, glm4.py (LlamaMLP), olmo2.py (also Olmo3ForCausalLM), phi3.py (LlamaForCausalLM), seed_oss.py,
#: qwen2_5_vl.py (Qwen2Model), qwen3_vl.py (Qwen3's layers), qwen3_vl_moe.py (Qwen3-MoE's), mistral3.py (Llama's);
#: SmolLM3 runs on the Transformers backend with q, k, v, gate and up as separate parallel layers: the same scales,
#: and the fused layer as its largest is the safe side of its repack (`fp8_marlin_linear_repack_bytes`).  The Marlin
#: and DeepGEMM terms take these and the other models of `FP8_LINEAR_MODEL_TYPES` (Qwen3-Next and Qwen3.5's Gated
#: DeltaNet models, Llama 4, gpt-oss), whose layers `_fp8_linear_layers` lists all the same
FP8_MARLIN_MODEL_TYPES = frozenset(FUSED_LINEAR_MODEL_TYPES) | {
    "minimax_m2", "glm4_moe", "deepseek_v32", "glm_moe_dsa", "gemma3_text", "glm4", "olmo2", "olmo3", "phi3",
    "seed_oss", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "mistral3", "smollm3"}
#: the hybrid models of nibble's ``qwen3_next`` layout, whose decoder layers `_fp8_linear_layers` lists from their
#: Gated DeltaNet and gated full-attention projections (`_gated_delta_net_shapes`, `_gated_attention_shapes`):
#: qwen3_next.py (Qwen3NextForCausalLM) and qwen3_5.py (Qwen3_5DecoderLayer: Qwen3.5's dense ``qwen3_5_text`` MLP
#: or Qwen3.5-MoE's sparse block, Qwen3-Next's layers otherwise), vLLM 0.19 and 0.33
GATED_DELTA_NET_MODEL_TYPES = frozenset({"qwen3_next", "qwen3_5", "qwen3_5_moe"})
#: the model types whose fp8 linear layers `_fp8_linear_layers` lists: those of `FP8_MARLIN_MODEL_TYPES`, the Gated
#: DeltaNet models, Llama 4 (llama4.py, 0.19 and 0.33: a QKVParallelLinear qkv_proj and an o_proj, the dense layers'
#: LlamaMLP of ``intermediate_size_mlp`` (nibble's `intermediate_size`), the MoE layers' shared_expert LlamaMLP of
#: the expert width, all with the model's quant_config; the router quant_config=None) and gpt-oss (gpt_oss.py: a
#: qkv_proj and an o_proj with quant_config, no dense MLP or shared expert).  Not listed: Falcon and GPT-2 (their
#: MLPs are not gated; no block-fp8 checkpoint of them is known)
FP8_LINEAR_MODEL_TYPES = FP8_MARLIN_MODEL_TYPES | GATED_DELTA_NET_MODEL_TYPES | {"llama4", "gpt_oss"}


def fp8_marlin_scale_bytes(out_features: int, in_features: int, block: bool = True) -> int:
    """Bytes one rank's fp8 [128, 128]-block layer (``out_features x in_features`` on the rank) holds on Marlin
    beyond the block scales nibble charges for it; with one scale a tensor (`block` False), Marlin's
    ``repeat_interleave(size_n)`` of it to a 16-bit scale an output row: ``2 x N`` bytes, nibble's charge of a few
    bytes a tensor not taken off (the safe side).  prepare_fp8_layer_for_marlin and prepare_fp8_moe_layer_for_marlin
    (quantization/utils/marlin_utils_fp8.py, 0.11, 0.19 and 0.33 alike) turn the float32 block scales
    ``[ceil(N / 128), ceil(K / 128)]`` into group-wise scales of the model's 16-bit dtype
    (``.to(layer.orig_dtype)``, ``repeat_interleave(block_n)``, ``[..., :size_n]``, marlin_permute_scales:
    ``[ceil(K / 128), N]``) and replace the old ones (replace_parameter): ``2 x N x ceil(K / 128)`` bytes held, 64
    times the checkpoint's.  The weights are repacked at their size (gptq_marlin_repack, 8 bits).  Less a lower bound
    of nibble's charge for the checkpoint's scales of the same weights (4 bytes a 128 x 128 block: ``N x K / 4096``),
    so the answer is never below what vLLM holds beyond nibble's charge."""
    if not block:
        return ACTIVATION_ELEMENT_BYTES * out_features
    held = ACTIVATION_ELEMENT_BYTES * out_features * -(-in_features // FP8_BLOCK)
    return held - out_features * in_features // (FP8_BLOCK * FP8_BLOCK // 4)

def _fp8_attention_shapes(spec: ModelSpec, tensor_parallel: int) -> tuple[tuple[int, int], ...]:
    """(out features, in features) of one rank's attention linear layers in one decoder layer: for MLA
    (deepseek_v2.py ``DeepseekV2MLAAttention``) q_proj and the replicated kv_a_proj_with_mqa, or the replicated
    fused_qkv_a_proj and q_b_proj, then kv_b_proj and o_proj (`_mla_projection_sizes`' layers), and with DeepSeek
    Sparse Attention the Indexer's ReplicatedLinear ``wq_b`` [heads x dim, q_lora_rank] and ``wk`` [dim, hidden]
    (deepseek_v2.py ``Indexer``, 0.11, 0.19 and 0.33: built with the model's quant_config); else the
    QKVParallelLinear qkv_proj and the RowParallelLinear o_proj (`_dense_linear_shapes`)."""
    hidden = spec.hidden_size
    if not spec.is_mla:
        return tuple((out_features, in_features)
                     for in_features, out_features in _dense_linear_shapes(spec, tensor_parallel)[0])
    heads = spec.num_attention_heads // tensor_parallel
    query = heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
    latent = spec.kv_lora_rank + spec.qk_rope_head_dim
    compressed = (((query, hidden), (latent, hidden)) if spec.q_lora_rank is None
                  else ((spec.q_lora_rank + latent, hidden), (query, spec.q_lora_rank)))
    indexer = (((spec.index_n_heads * spec.index_head_dim, spec.q_lora_rank or 0), (spec.index_head_dim, hidden))
               if spec.has_indexer else ())
    return (*compressed, (heads * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank),
            (hidden, heads * spec.v_head_dim), *indexer)


def fp8_marlin_device(version: str, device: DeviceFacts, experts: bool, block: bool = True) -> bool:
    """Whether vLLM `version` runs fp8 weights (routed `experts`, else linear layers; [128, 128] blocks where
    `block`, else a scale a tensor) on Marlin on `device` (`FP8_MARLIN_BELOW`, `FP8_TENSOR_MARLIN_BELOW`): a known
    NVIDIA capability below the release's native one."""
    capability = device.compute_capability
    if version not in FP8_MARLIN_BELOW or capability is None or device.vendor == "amd":
        return False
    return capability < (FP8_MARLIN_BELOW[version][0 if experts else 1] if block else FP8_TENSOR_MARLIN_BELOW)


def _gated_delta_net_shapes(spec: ModelSpec, tensor_parallel: int) -> tuple[tuple[int, int], ...]:
    """(out features, in features) of one rank's linear layers in a Gated DeltaNet layer (vLLM 0.19
    layers/mamba/gdn_linear_attn.py, 0.33 layers/mamba/gdn/qwen_gdn_linear_attn.py ``GatedDeltaNetAttention``, each
    built with the model's quant_config): the MergedColumnParallelLinear ``in_proj_qkvz`` of
    ``2 x key_dim + 2 x value_dim`` (Qwen3.5's four checkpoint shards merged into it alike), ``in_proj_ba`` of two
    rows a value head, both split over the ranks, and the RowParallelLinear ``out_proj`` [hidden, value_dim / tp].
    vLLM notes "ba_proj doesn't support blockwise fp8 quantization" (Qwen's FP8 checkpoints leave it unquantized), but
    nibble charges it as quantized like the checkpoint's other projections, so it is listed: the safe side (its
    requant is the smallest of the layer's; on 10.x its packed scales are ~1 KB a layer at TP 1)."""
    linear = spec.linear_attention
    if linear is None:
        return ()
    return (((2 * linear.key_dim + 2 * linear.value_dim) // tensor_parallel, spec.hidden_size),
            (2 * linear.num_value_heads // tensor_parallel, spec.hidden_size),
            (spec.hidden_size, linear.value_dim // tensor_parallel))


def _gated_attention_shapes(spec: ModelSpec, tensor_parallel: int) -> tuple[tuple[int, int], ...]:
    """(out features, in features) of one rank's linear layers in a full-attention layer of a Gated DeltaNet model
    (qwen3_next.py ``Qwen3NextAttention``, 0.19 and 0.33): the QKVParallelLinear qkv_proj of
    ``heads x (1 + attn_output_gate)`` query heads (the output gate rides with q) and the KV heads, and the
    RowParallelLinear o_proj [hidden, heads x head_dim / tp]."""
    heads, kv_heads = spec.num_attention_heads // tensor_parallel, max(1, spec.num_kv_heads // tensor_parallel)
    gate = 2 if spec.attention_output_gate else 1
    return (((gate * heads + 2 * kv_heads) * spec.head_dim, spec.hidden_size),
            (spec.hidden_size, heads * spec.head_dim))


def _fp8_linear_layers(stage: Stage) -> tuple[tuple[int, int, int], ...]:
    """(count, out features, in features) of one rank's quantized linear layers in the stage's decoder layers, for a
    model of `FP8_LINEAR_MODEL_TYPES`: the attention's (`_fp8_attention_shapes`; for a Gated DeltaNet model
    `_gated_delta_net_shapes` in its linear-attention layers and `_gated_attention_shapes` in the others) in every
    layer, the merged gate_up_proj and the down_proj of the dense MLP in the dense layers (every layer of a dense
    model) and of the shared experts in the MoE layers (whole under expert parallelism where
    `shared_experts_whole`).  The routers (``gate``, Qwen3-Next's ``shared_expert_gate``: quant_config=None) are
    not listed, nor a vision tower's layers, which nibble charges at 16 bits (``specs.QUANTIZED_ROLES``)."""
    spec = stage.spec
    tensor_parallel, hidden = stage.tensor_parallel, spec.hidden_size
    start, stop = stage.layers
    dense_layers = sum(1 for layer in range(start, stop) if not spec.is_moe or layer in spec.dense_layers)
    if spec.linear_attention is None or spec.model_type not in GATED_DELTA_NET_MODEL_TYPES:
        found = [(stop - start, out_features, in_features)
                 for out_features, in_features in _fp8_attention_shapes(spec, tensor_parallel)]
    else:
        linear_layers = sum(1 for layer in spec.linear_attention.layers if start <= layer < stop)
        found = [(count, out_features, in_features)
                 for count, shapes in ((linear_layers, _gated_delta_net_shapes(spec, tensor_parallel)),
                                       (stop - start - linear_layers, _gated_attention_shapes(spec, tensor_parallel)))
                 if count for out_features, in_features in shapes]
    if dense_layers:
        width = spec.intermediate_size // tensor_parallel
        found += [(dense_layers, 2 * width, hidden), (dense_layers, hidden, width)]
    if spec.shared_expert_width and stop - start - dense_layers:
        whole = shared_experts_whole(spec, tensor_parallel, stage.data_parallel, stage.expert_parallel)
        width = spec.shared_expert_width // (1 if whole else tensor_parallel)
        found += [(stop - start - dense_layers, 2 * width, hidden), (stop - start - dense_layers, hidden, width)]
    return tuple(found)


def _fp8_marlin_linear_format(stage: Stage, version: str, dense_format: str, device: DeviceFacts,
                              any_fp8: bool = False) -> bool | None:
    """Whether vLLM `version` runs the stage's linear layers, stored as `dense_format`, on Marlin on `device`, as
    `FP8_MARLIN_LABELS`' value (True for [128, 128] blocks), or with `any_fp8` for any fp8 label (a scale a channel
    too, whose weights Marlin repacks all the same: True for any block size); None where it does not or nibble does
    not list the model's layers (`FP8_LINEAR_MODEL_TYPES`)."""
    label = dense_format.removeprefix("checkpoint-")
    block = (label.startswith("fp8-block") if any_fp8 and weight_format_family(label) == "fp8"
             else FP8_MARLIN_LABELS.get(dense_format))
    if (block is None or not fp8_marlin_device(version, device, False, block)
            or stage.spec.model_type not in FP8_LINEAR_MODEL_TYPES):
        return None
    return block


def fp8_marlin_linear_bytes(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> Term | None:
    """The bytes one rank of vLLM `version` holds for the fp8 attention, dense MLP and shared-expert layers beyond
    nibble's charge where it runs them on Marlin (`fp8_marlin_device`): `fp8_marlin_scale_bytes` of each
    (`_fp8_linear_layers`) for the labels of `FP8_MARLIN_LABELS`, and for any fp8 label in the releases of
    `FP8_MARLIN_PADDING_VERSIONS` the zero-padding of the layers Marlin's thread tiles do not divide
    (`fp8_marlin_padding_bytes`; a scale a channel too, whose scales alone hold nothing more).  None elsewhere:
    other formats, devices, releases, and models outside `FP8_LINEAR_MODEL_TYPES`."""
    block = _fp8_marlin_linear_format(stage, version, dense_format, device, any_fp8=True)
    if block is None:
        return None
    labelled = FP8_MARLIN_LABELS.get(dense_format)
    layers = _fp8_linear_layers(stage)
    scales = 0 if labelled is None else sum(count * fp8_marlin_scale_bytes(out_features, in_features, labelled)
                                            for count, out_features, in_features in layers)
    kind = fp8_scale_kind(dense_format)
    padding = sum(count * fp8_marlin_padding_bytes(out_features, in_features, version, kind)
                  for count, out_features, in_features in layers) + _fp8_marlin_bias_padding(stage, version, kind)
    extra = scales + padding
    if extra <= 0:
        return None
    native = FP8_MARLIN_BELOW[version][1] if block else FP8_TENSOR_MARLIN_BELOW
    replaced = ("float32 block scales by 16-bit scales of one 128-wide group per output row, 64 times their size"
                if block else "scale by a 16-bit scale per output row (repeat_interleave)")
    held = (f"replaces each layer's {replaced}" if labelled is not None
            else "holds each layer's scales in 16 bits, no more than the checkpoint's")
    padded = (f"; vLLM {version} zero-pads the weights Marlin's thread tiles do not divide, with their scales and "
              f"bias (marlin_utils.py marlin_padded_nk, marlin_pad_qweight, marlin_pad_scales, marlin_pad_dim: N x K "
              f"to the cheaper of N to 64 and K to 128, or N to 128 and K to 64), {padding:,} bytes of it"
              if padding else "")
    return Term(extra, (
        f"vLLM {version} runs the {dense_format} linear layers weight-only on Marlin below compute capability "
        f"{native[0]}.{native[1]} (MarlinFP8ScaledMMLinearKernel; Fp8LinearMethod.use_marlin in 0.11), whose "
        f"prepare_fp8_layer_for_marlin (quantization/utils/marlin_utils_fp8.py) {held}{padded}: "
        f"{extra / GIB:.2f} GiB a rank beyond nibble's charge of the checkpoint's weights and scales "
        f"({extra:,} bytes)"))


#: the releases whose Marlin weight preparation zero-pads a weight Marlin's thread tiles do not divide and keeps the
#: padded copy (marlin_utils.py ``marlin_padded_nk``, ``marlin_pad_qweight``, ``marlin_pad_scales``: 0.33's
#: prepare_fp8_layer_for_marlin, its MarlinLinearKernel for int4, and ``marlin_moe_padded_intermediate`` in
#: prepare_fp8_moe_layer_for_marlin); 0.11 and 0.19 refuse such a layer or repack it as it is
FP8_MARLIN_PADDING_VERSIONS = frozenset({"0.33"})


def _marlin_padded_nk(size_n: int, size_k: int, group_size: int) -> tuple[int, int]:
    """vLLM 0.33's ``marlin_padded_nk`` (quantization/utils/marlin_utils.py): the smaller of (n to 64, k to
    lcm(128, group)) and (n to 128, k to lcm(64, group)), by area then sum."""
    group = max(group_size, 1)
    candidates = ((round_up(size_n, 64), round_up(size_k, math.lcm(128, group))),
                  (round_up(size_n, 128), round_up(size_k, math.lcm(64, group))))
    return min(candidates, key=lambda nk: (nk[0] * nk[1], nk[0] + nk[1]))


def fp8_scale_kind(label: str) -> str:
    """The scales of an fp8 weight label: "block" ([128, 128] blocks), "tensor" (one a tensor) or "channel"."""
    label = label.removeprefix("checkpoint-")
    return "block" if label.startswith("fp8-block") else "tensor" if label.startswith("fp8-per-tensor") else "channel"


def fp8_marlin_padding_bytes(out_features: int, in_features: int, version: str, scales: str = "block") -> int:
    """Bytes vLLM `version` holds for one rank's fp8 linear layer (``out_features x in_features`` on the rank) on
    Marlin beyond its unpadded Marlin layout, where ``marlin_padded_nk`` pads it (releases of
    `FP8_MARLIN_PADDING_VERSIONS`; 0 elsewhere and for aligned layers).  prepare_fp8_layer_for_marlin
    (quantization/utils/marlin_utils_fp8.py, 0.33) pads the packed weight (``marlin_pad_qweight``) and repacks it at
    ``Np x Kp`` (``gptq_marlin_repack``): ``Np x Kp - N x K`` fp8 bytes more; the 16-bit scales
    (``marlin_pad_scales``, `scales` the checkpoint's): [128, 128] blocks ``[Kp / 128, Np]`` where the unpadded
    ``[ceil(K / 128), N]`` (`fp8_marlin_scale_bytes`), one a tensor ``[1, Np]`` where ``[1, N]``, one a channel
    ``[1, Np]`` against the checkpoint's float32 ``[N]`` (counted only beyond it)."""
    if version not in FP8_MARLIN_PADDING_VERSIONS:
        return 0
    padded_out, padded_in = _marlin_padded_nk(out_features, in_features, FP8_BLOCK if scales == "block" else -1)
    weight = padded_out * padded_in - out_features * in_features
    if scales == "block":
        held = padded_out * padded_in // FP8_BLOCK - out_features * -(-in_features // FP8_BLOCK)
        return weight + ACTIVATION_ELEMENT_BYTES * held
    if scales == "tensor":
        return weight + ACTIVATION_ELEMENT_BYTES * (padded_out - out_features)
    return weight + max(0, ACTIVATION_ELEMENT_BYTES * padded_out - 4 * out_features)


def _fp8_marlin_bias_padding(stage: Stage, version: str, scales: str) -> int:
    """The 16-bit bias columns vLLM `version` adds to the stage's fp8 qkv_proj and o_proj (where the model has those
    biases) on Marlin where ``marlin_padded_nk`` pads their N (prepare_fp8_layer_for_marlin: ``marlin_pad_dim``,
    ``marlin_permute_bias``): ``2 x (Np - N)`` a layer.  MLA and the MLP layers carry no bias in the models of
    `FP8_LINEAR_MODEL_TYPES`."""
    spec = stage.spec
    if version not in FP8_MARLIN_PADDING_VERSIONS or spec.is_mla:
        return 0
    group = FP8_BLOCK if scales == "block" else -1
    (qkv, o_proj), _ = _dense_linear_shapes(spec, stage.tensor_parallel)
    padded = 0
    for (in_features, out_features), bias in ((qkv, spec.attention_qkv_bias), (o_proj, spec.attention_output_bias)):
        if bias:
            padded += ACTIVATION_ELEMENT_BYTES * (_marlin_padded_nk(out_features, in_features, group)[0]
                                                  - out_features)
    return (stage.layers[1] - stage.layers[0]) * padded


def fp8_marlin_linear_repack_bytes(stage: Stage, version: str, dense_format: str,
                                   device: DeviceFacts) -> Term | None:
    """What one rank holds only while vLLM `version` repacks its largest fp8 linear layer for Marlin, beyond the
    layer's loaded weight, where it runs `dense_format` linear layers on Marlin (`_fp8_marlin_linear_format`).
    prepare_fp8_layer_for_marlin (quantization/utils/marlin_utils_fp8.py, 0.11, 0.19 and 0.33) packs the loaded
    ``N x K`` fp8 weight into int32 and makes it contiguous transposed (``pack_fp8_to_int32``, ``qweight.T
    .contiguous()``: a copy of its ``N x K`` bytes), then ``gptq_marlin_repack`` writes the Marlin weight (another
    ``N x K`` bytes) while that copy and the loaded weight are bound; replace_parameter frees the loaded one after:
    ``2 x N x K`` bytes at once (0.33 first zero-pads the copy to ``marlin_padded_nk``: twice the padded size).
    Each layer's process_weights_after_loading runs after every weight is loaded, one module at a time
    (model_loader/utils.py ``process_weights_after_loading``), so only the largest layer's counts.  None where the
    layers do not run on Marlin (for any fp8 scales: Marlin repacks a per-channel layer's weight all the same)."""
    block = _fp8_marlin_linear_format(stage, version, dense_format, device, any_fp8=True)
    if block is None:
        return None
    largest = 0
    for _, out_features, in_features in _fp8_linear_layers(stage):
        if version in FP8_MARLIN_PADDING_VERSIONS:
            out_features, in_features = _marlin_padded_nk(out_features, in_features, FP8_BLOCK if block else -1)
        largest = max(largest, out_features * in_features)
    if not largest:
        return None
    transient = 2 * largest
    return Term(transient, (
        f"{transient / GIB:.2f} GiB while vLLM {version} repacks its largest {dense_format} linear layer for Marlin "
        f"(prepare_fp8_layer_for_marlin, quantization/utils/marlin_utils_fp8.py: the int32 transposed copy of "
        f"the loaded {largest:,}-byte weight and gptq_marlin_repack's output beside it)"))


#: the compute capability from which each vLLM release runs NVFP4 linear layers on Marlin, weight-only
#: (``is_fp4_marlin_supported``, quantization/utils/marlin_utils_fp4.py: ``has_device_capability(80)`` in 0.11, 75 in
#: 0.19 and 0.33), and the one from which it runs them natively instead (``cutlass_fp4_supported``: 10.0; 0.19's
#: nvfp4_utils.py ``select_nvfp4_linear_backend`` takes FlashInfer's or vLLM's CUTLASS first, 0.33's
#: ``_POSSIBLE_NVFP4_KERNELS`` its FlashInfer, B12x and CUTLASS kernels ahead of MarlinNvFp4LinearKernel)
NVFP4_MARLIN_FLOORS: dict[str, tuple[int, int]] = {"0.11": (8, 0), "0.19": (7, 5), "0.33": (7, 5)}
NVFP4_NATIVE_FROM = (10, 0)
#: NVFP4's scale group (16 weights share one fp8 e4m3 scale), which Marlin keeps (``group_size = 16 if is_nvfp4``)
NVFP4_GROUP = 16


#: nibble's labels of NVFP4 weights (WeightFormat.label: with static activation scales "nvfp4-static")
NVFP4_LABELS = ("nvfp4", "nvfp4-static")


def _nvfp4_on_marlin(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> bool:
    """Whether vLLM `version` runs the stage's `dense_format` NVFP4 linear layers on Marlin on `device` (from
    `NVFP4_MARLIN_FLOORS` to below `NVFP4_NATIVE_FROM`, not 0.33 on 9.0: Humming), for a model of
    `FP8_LINEAR_MODEL_TYPES` (`_fp8_linear_layers`)."""
    capability = device.compute_capability
    return not (dense_format.removeprefix("checkpoint-") not in NVFP4_LABELS or version not in NVFP4_MARLIN_FLOORS
                or capability is None or device.vendor == "amd"
                or not NVFP4_MARLIN_FLOORS[version] <= capability < NVFP4_NATIVE_FROM
                or (version == "0.33" and capability == HUMMING_PREFERRED_CAPABILITY)
                or stage.spec.model_type not in FP8_LINEAR_MODEL_TYPES)


def _nvfp4_marlin_repack_bytes(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> Term | None:
    """What one rank holds only while vLLM `version` repacks its largest NVFP4 linear layer for Marlin
    (`int4_linear_repack_transient_bytes` of layout "nvfp4" over `_fp8_linear_layers`), where it runs them there
    (`_nvfp4_on_marlin`); None elsewhere."""
    if not _nvfp4_on_marlin(stage, version, dense_format, device):
        return None
    largest, basis = 0, ""
    for _, out_features, in_features in _fp8_linear_layers(stage):
        transient = int4_linear_repack_transient_bytes(version, "nvfp4", in_features, out_features, NVFP4_GROUP)
        if transient > largest:
            largest, basis = transient, f"{in_features} x {out_features}"
    if not largest:
        return None
    return Term(largest, (
        f"{largest / GIB:.2f} GiB while vLLM {version} repacks its largest {dense_format} linear layer (in x out "
        f"{basis} on the rank) for Marlin: prepare_fp4_layer_for_marlin (quantization/utils/marlin_utils_fp4.py) "
        "makes the weight's int32 transposed copy and gptq_marlin_repack's output beside the loaded one"
        + ("; 0.33 repacks a zero-padded copy (marlin_pad_qweight) where marlin_padded_nk pads the layer"
           if version in FP8_MARLIN_PADDING_VERSIONS else "")))


def nvfp4_marlin_padding_bytes(out_features: int, in_features: int, version: str) -> int:
    """Bytes vLLM `version` holds for one rank's NVFP4 linear layer (``out_features x in_features``) on Marlin beyond
    the checkpoint's, where ``marlin_padded_nk`` pads it (releases of `FP8_MARLIN_PADDING_VERSIONS`; 0 elsewhere and
    for aligned layers): 0.33's prepare_fp4_layer_for_marlin (quantization/utils/marlin_utils_fp4.py) repacks the
    padded weight (``marlin_pad_qweight``: ``Np x Kp / 2`` bytes where the checkpoint's ``N x K / 2``) and pads the
    scales (``marlin_pad_scales`` of the 16-bit copy, then ``nvfp4_marlin_process_scales`` back to one fp8 byte a
    group: ``Np x Kp / 16`` where ``N x K / 16``)."""
    if version not in FP8_MARLIN_PADDING_VERSIONS:
        return 0
    padded_out, padded_in = _marlin_padded_nk(out_features, in_features, NVFP4_GROUP)
    grown = padded_out * padded_in - out_features * in_features
    return grown // 2 + grown // NVFP4_GROUP


def nvfp4_marlin_linear_bytes(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> Term | None:
    """The bytes one rank of vLLM `version` holds for its NVFP4 attention, dense MLP and shared-expert layers
    (`_fp8_linear_layers`, models of `FP8_LINEAR_MODEL_TYPES`) beyond the checkpoint's where it runs them on Marlin:
    from `NVFP4_MARLIN_FLOORS` to below `NVFP4_NATIVE_FROM`, but not 0.33 on 9.0, where ``init_nvfp4_linear_kernel``
    (``_resolve_backend_kernels``: ``prioritize_humming``) puts Humming ahead of Marlin (not read).
    prepare_fp4_layer_for_marlin (quantization/utils/marlin_utils_fp4.py, 0.11, 0.19, 0.33) repacks the uint8
    ``[N, K / 2]`` weight at its size (``gptq_marlin_repack``), turns the fp8 ``[N, K / 16]`` scales into Marlin's
    fp8 ``[K / 16, N]`` (``nvfp4_marlin_process_scales``: one byte a group again) and the global scale into another
    float32: the checkpoint's bytes (a fused layer's few float32 global and input scales not counted either way);
    0.11 and 0.19 also keep a workspace on each layer (``layer.workspace = marlin_make_workspace_new(device)``:
    `marlin_linear_workspace_bytes`), and 0.33 pads the layers Marlin's tiles do not divide
    (`nvfp4_marlin_padding_bytes`, a bias too: ``marlin_pad_dim``).  None elsewhere, and where nothing is held beyond
    the checkpoint's (0.33 with every layer aligned)."""
    if not _nvfp4_on_marlin(stage, version, dense_format, device):
        return None
    layers = _fp8_linear_layers(stage)
    workspace = marlin_linear_workspace_bytes(version, device)
    workspaces = workspace * sum(count for count, _, _ in layers)
    padding = (sum(count * nvfp4_marlin_padding_bytes(out_features, in_features, version)
                   for count, out_features, in_features in layers)
               + _fp8_marlin_bias_padding(stage, version, "tensor"))
    extra = workspaces + padding
    if not extra:
        return None
    kept = (f"keeps a {workspace:,}-byte workspace on each layer (marlin_make_workspace_new, int32 one a streaming "
            "multiprocessor)" if workspace else "keeps no workspace")
    padded = (f"; vLLM {version} zero-pads the weights Marlin's thread tiles do not divide, with their scales and bias "
              f"(marlin_utils.py marlin_padded_nk, marlin_pad_qweight, marlin_pad_scales, marlin_pad_dim), {padding:,} "
              "bytes of it" if padding else "")
    return Term(extra, (
        f"vLLM {version} runs the {dense_format} linear layers weight-only on Marlin below compute capability 10.0 "
        f"(prepare_fp4_layer_for_marlin, quantization/utils/marlin_utils_fp4.py), which repacks the weights and scales "
        f"at their size and {kept}{padded}: {extra / GIB:.2f} GiB a rank beyond the checkpoint's ({extra:,} bytes)"))


#: the compute capabilities on which each release's ``is_deep_gemm_e8m0_used()`` (utils/deep_gemm.py) holds with the
#: default environment, so a block-fp8 linear layer DeepGEMM runs is requantized to power-of-two scales at load
#: (exact (major, minor) pairs, or a family's major): 0.11 on 10.0 (``is_device_capability(100)`` with
#: ``VLLM_USE_DEEP_GEMM_E8M0`` "1"; 9.0 only with ``VLLM_USE_DEEP_GEMM_E8M0_HOPPER``, "0"); 0.19 and 0.33 wherever
#: ``is_deep_gemm_supported()`` holds (``VLLM_USE_DEEP_GEMM_E8M0`` "1", no capability test): platforms/cuda.py
#: ``support_deep_gemm``, 9.0 or the 10.x family in 0.19, and the 12.x family too in 0.33.  DeepGEMM must be
#: importable (utils/import_utils.py ``has_deep_gemm``): vLLM's Docker images install it for 0.11 and 0.19 (as
#: `deep_gemm_moe_warmup` assumes), 0.33's wheel vendors it (``vllm.third_party.deep_gemm``).  Kept apart from
#: `vllm_moe_buffers.DEEP_GEMM_CAPABILITIES`, the grouped-GEMM warm-up's, which is not read for 0.33
DEEP_GEMM_E8M0_CAPABILITIES: dict[str, tuple[tuple[int, int] | int, ...]] = {
    "0.11": ((10, 0),),
    "0.19": ((9, 0), 10),
    "0.33": ((9, 0), 10, 12),
}
#: ``should_use_deepgemm_for_fp8_linear`` (utils/deep_gemm.py): the multiple of 64 (0.11: 128) a layer's output rows
#: on the rank must be, and of 128 its input columns, for DeepGEMM to run it (with a bfloat16 output, the dtype of
#: every block-fp8 checkpoint nibble plans: an fp16 model would not be requantized, the safe side)
DEEP_GEMM_ROW_MULTIPLE: dict[str, int] = {"0.11": 128, "0.19": 64, "0.33": 64}
DEEP_GEMM_COLUMN_MULTIPLE = 128
#: the compute capability majors on which DeepGEMM's ``transform_sf_into_required_layout`` (csrc/apis/layout.hpp)
#: packs a weight's float32 [128, 128]-block scales into UE8M0 exponents (arch_major 10 or 12); on 9 it returns them
#: as they are
DEEP_GEMM_UE8M0_PACKED_MAJORS = frozenset({10, 12})
#: the releases whose linear post-processing (quantization/utils/fp8_utils.py
#: ``deepgemm_post_process_fp8_weight_block``) puts the scales in DeepGEMM's layout after the requant; 0.11's
#: ``maybe_post_process_fp8_weight_block`` only requantizes them in place
DEEP_GEMM_SCALE_LAYOUT_VERSIONS = frozenset({"0.19", "0.33"})
#: utils/deep_gemm.py ``_DEEPGEMM_BLACKWELL_EXCLUDED_MODEL_TYPES``: the text model types (``hf_text_config.model_type``)
#: for which ``should_auto_disable_deep_gemm`` turns DeepGEMM off, by the capability majors it does so on (0.19: the
#: 10.x family; 0.33 ``{"qwen3_5_text": (100, 120), ...}``); 0.11 has no such list
DEEP_GEMM_EXCLUDED_MODEL_TYPES: dict[str, dict[str, tuple[int, ...]]] = {
    "0.19": {"qwen3_5_text": (10,), "qwen3_5_moe_text": (10,)},
    "0.33": {"qwen3_5_text": (10, 12), "qwen3_5_moe_text": (10, 12), "kolibri1": (12,)},
}
#: nibble's model types whose text config vLLM reads under another model type (transformers_utils/configs/qwen3_5.py)
_TEXT_MODEL_TYPES = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}


def deep_gemm_takes_linear(version: str, out_features: int, in_features: int) -> bool:
    """Whether vLLM `version`'s ``should_use_deepgemm_for_fp8_linear`` takes a bf16 block-fp8 layer of
    `out_features` x `in_features` on the rank (`DEEP_GEMM_ROW_MULTIPLE`, `DEEP_GEMM_COLUMN_MULTIPLE`)."""
    return (version in DEEP_GEMM_ROW_MULTIPLE and out_features % DEEP_GEMM_ROW_MULTIPLE[version] == 0
            and in_features % DEEP_GEMM_COLUMN_MULTIPLE == 0)


def _deep_gemm_e8m0_device(version: str, device: DeviceFacts) -> bool | None:
    """Whether vLLM `version` requantizes block-fp8 linear layers for DeepGEMM on `device`
    (`DEEP_GEMM_E8M0_CAPABILITIES`): False on an AMD device and for a release not read; None for a device whose
    compute capability is not known."""
    rules = DEEP_GEMM_E8M0_CAPABILITIES.get(version)
    if rules is None or device.vendor == "amd":
        return False
    capability = device.compute_capability
    if capability is None:
        return None
    return any(rule == capability or rule == capability[0] for rule in rules)


def _deep_gemm_linear_shapes(stage: Stage, version: str, dense_format: str,
                             device: DeviceFacts) -> tuple[tuple[int, int, int], ...]:
    """(count, out features, in features) of the rank's linear layers that vLLM `version` requantizes for DeepGEMM
    on `device` (`_deep_gemm_e8m0_device`; a device of unknown capability counted, the safe side) where they are
    stored as fp8 [128, 128] blocks (`dense_format`): `_fp8_linear_layers` of a model of `FP8_LINEAR_MODEL_TYPES`
    that `deep_gemm_takes_linear`, whatever the model (0.19 Fp8LinearMethod ``block_quant and use_deep_gemm``, 0.33
    DeepGemmFp8BlockScaledMMKernel.can_implement: no model list but the exclusions), unless
    ``should_auto_disable_deep_gemm`` excludes the model on the device's capability (`DEEP_GEMM_EXCLUDED_MODEL_TYPES`:
    Qwen3.5's on Blackwell, rewritten on 9.0); empty elsewhere."""
    spec = stage.spec
    if (dense_format.removeprefix("checkpoint-") != "fp8-block128" or spec.model_type not in FP8_LINEAR_MODEL_TYPES
            or _deep_gemm_e8m0_device(version, device) is False):
        return ()
    excluded = DEEP_GEMM_EXCLUDED_MODEL_TYPES.get(version, {}).get(
        _TEXT_MODEL_TYPES.get(spec.model_type, spec.model_type), ())
    if device.compute_capability is not None and device.compute_capability[0] in excluded:
        return ()
    return tuple(layer for layer in _fp8_linear_layers(stage) if deep_gemm_takes_linear(version, layer[1], layer[2]))


def deep_gemm_requant_peak_bytes(out_features: int, in_features: int) -> int:
    """What one rank holds beside a block-fp8 linear layer's loaded weight (`out_features` N x `in_features` K on the
    rank) while ``requant_weight_ue8m0_inplace`` (quantization/utils/fp8_utils.py, 0.11, 0.19 and 0.33 alike)
    rewrites it to power-of-two scales: ``repeat_interleave`` of the float32 scales over the rows ``[Np, Ks]`` and then
    the columns ``[Np, Ks x 128]`` (Np = N rounded up to 128, Ks = ceil(K / 128); one allocation each), then
    ``w_q.to(torch.float32) * s_exp``: the weight's float32 copy and the product, ``4 x N x K`` bytes each, at once.
    ``per_block_cast_to_fp8`` comes after, its inputs still bound, but compiled by inductor (utils/deep_gemm.py
    ``@torch.compile(dynamic=True, backend=current_platform.simple_compile_backend)``, "inductor") it allocates only
    its fp8 outputs and scales, ~2 x N x K, where the float32 copy was freed: below that peak.  Each tensor as
    PyTorch's allocator counts it (`torch_cuda.allocated_block_bytes`)."""
    rows, groups = round_up(out_features, FP8_BLOCK), -(-in_features // FP8_BLOCK)
    return (allocated_block_bytes(4 * rows * groups) + allocated_block_bytes(4 * rows * groups * FP8_BLOCK)
            + 2 * allocated_block_bytes(4 * out_features * in_features))


def deep_gemm_ue8m0_scale_bytes(out_features: int, in_features: int) -> int:
    """The bytes of a block-fp8 linear layer's scales (`out_features` N x `in_features` K on the rank) in DeepGEMM's
    layout on 10.x and 12.x: ``transform_sf_into_required_layout`` (DeepGEMM csrc/apis/layout.hpp) broadcasts the
    float32 ``[ceil(N / 128), Ks]`` scales to one row per output row and
    ``get_mn_major_tma_aligned_packed_ue8m0_tensor`` (csrc/jit_kernels/impls/smxx_layout.hpp) packs four UE8M0
    exponents an int32 into ``torch::empty_strided({1, N, ceil(Ks / 4)}, {ceil(Ks / 4) x tm, 1, tm})``, tm = N
    rounded up to 4: a storage of ``ceil(Ks / 4) x tm - (tm - N)`` int32."""
    groups = -(-in_features // FP8_BLOCK)
    packed, aligned = -(-groups // 4), round_up(out_features, 4)
    return 4 * (packed * aligned - (aligned - out_features))


def deep_gemm_layout_peak_bytes(out_features: int, in_features: int) -> int:
    """What ``transform_sf_into_required_layout`` holds at once on 10.x / 12.x for a layer of `out_features` N x
    `in_features` K on the rank, after the requant's locals are freed: the int64 ``arange(N)`` (8 N bytes) while
    ``index_select`` broadcasts the scales to float32 ``[N, Ks]``, then that broadcast beside the packed output
    (`deep_gemm_ue8m0_scale_bytes`).  Always far below `deep_gemm_requant_peak_bytes`, so not charged apart."""
    broadcast = 4 * out_features * -(-in_features // FP8_BLOCK)
    return max(8 * out_features + broadcast, broadcast + deep_gemm_ue8m0_scale_bytes(out_features, in_features))


def _deep_gemm_where(version: str, device: DeviceFacts) -> str:
    """Where vLLM `version` requantizes for DeepGEMM, in words, and what of `device` nibble does not know."""
    where = ("on 10.0 (VLLM_USE_DEEP_GEMM_E8M0=1 by default)" if version == "0.11"
             else "on Hopper as on Blackwell (VLLM_USE_DEEP_GEMM_E8M0=1 by default: is_deep_gemm_e8m0_used() tests "
                  "no capability)")
    unknown = ("; this device's compute capability not known: charged as on one DeepGEMM runs on"
               if device.compute_capability is None else "")
    return where + unknown


def deep_gemm_requant_bytes(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> Term | None:
    """What one rank holds only while vLLM `version` requantizes its largest fp8 [128, 128]-block linear layer for
    DeepGEMM (`_deep_gemm_linear_shapes`), beyond the loaded weights: `deep_gemm_requant_peak_bytes` of the layer
    that needs the most.  Fp8LinearMethod.process_weights_after_loading (0.11 and 0.19, quantization/fp8.py; 0.19
    ``use_deep_gemm``) calls ``maybe_post_process_fp8_weight_block``, 0.33's DeepGemmFp8BlockScaledMMKernel (and
    FlashInfer's DeepGEMM kernel through it, kernels/linear/scaled_mm/deep_gemm.py and flashinfer.py)
    ``deepgemm_post_process_fp8_weight_block``; both ``requant_weight_ue8m0_inplace`` where
    ``is_deep_gemm_e8m0_used()``.  Each module is processed after every weight is loaded, one at a time
    (model_loader/utils.py ``process_weights_after_loading``), and the temporaries are freed before "Model loading
    took" is measured: a load transient like Marlin's repack (`fp8_marlin_linear_repack_bytes`; the two never run
    on one device).  None where no layer is requantized."""
    shapes = _deep_gemm_linear_shapes(stage, version, dense_format, device)
    if not shapes:
        return None
    _count, out_features, in_features = max(shapes, key=lambda shape: deep_gemm_requant_peak_bytes(shape[1], shape[2]))
    transient = deep_gemm_requant_peak_bytes(out_features, in_features)
    return Term(transient, (
        f"{transient / GIB:.2f} GiB while vLLM {version} requantizes its largest {dense_format} linear layer "
        f"({out_features} x {in_features} on the rank) to DeepGEMM's power-of-two (UE8M0) block scales "
        "(requant_weight_ue8m0_inplace, quantization/utils/fp8_utils.py: the float32 scales expanded to every "
        "weight, the weight's float32 copy and the dequantized product at once; per_block_cast_to_fp8 compiled by "
        f"inductor), which it does {_deep_gemm_where(version, device)}"))


def deep_gemm_scale_layout_bytes(stage: Stage, version: str, dense_format: str, device: DeviceFacts) -> Term | None:
    """The bytes one rank holds after loading for its DeepGEMM linear layers' scales (`_deep_gemm_linear_shapes`)
    beyond nibble's charge of the checkpoint's, where vLLM `version` (`DEEP_GEMM_SCALE_LAYOUT_VERSIONS`) puts them
    in DeepGEMM's packed UE8M0 layout (`DEEP_GEMM_UE8M0_PACKED_MAJORS`, or a device of unknown capability, the safe
    side): ``deepgemm_post_process_fp8_weight_block`` (quantization/utils/fp8_utils.py) replaces each layer's float32
    scales by ``transform_sf_into_required_layout``'s (`deep_gemm_ue8m0_scale_bytes`, replace_parameter), about 32
    times their size, less a lower bound of nibble's charge for the checkpoint's (4 bytes a 128 x 128 block:
    ``N x K / 4096``, as `fp8_marlin_scale_bytes`).  Inside "Model loading took", so out of the KV budget.  None on
    9.0 (the float32 scales kept) and elsewhere."""
    capability = device.compute_capability
    if version not in DEEP_GEMM_SCALE_LAYOUT_VERSIONS or (
            capability is not None and capability[0] not in DEEP_GEMM_UE8M0_PACKED_MAJORS):
        return None
    shapes = _deep_gemm_linear_shapes(stage, version, dense_format, device)
    extra = sum(count * (deep_gemm_ue8m0_scale_bytes(out_features, in_features)
                         - out_features * in_features // (FP8_BLOCK * FP8_BLOCK // 4))
                for count, out_features, in_features in shapes)
    if extra <= 0:
        return None
    unknown = ("; this device's compute capability not known: charged as on 10.x" if capability is None else "")
    return Term(extra, (
        f"vLLM {version} runs the {dense_format} linear layers on DeepGEMM, whose transform_sf_into_required_layout "
        "(DeepGEMM csrc/apis/layout.hpp, from deepgemm_post_process_fp8_weight_block, quantization/utils/fp8_utils.py) "
        "replaces each layer's float32 block scales by UE8M0 exponents packed four an int32, one row per output row, "
        f"on 10.x and 12.x: {extra / GIB:.2f} GiB a rank beyond nibble's charge of the checkpoint's scales "
        f"({extra:,} bytes){unknown}"))

#: the releases that requantize block-fp8 routed experts to UE8M0 scales whatever kernel serves them, where
#: ``is_deep_gemm_e8m0_used()`` (`DEEP_GEMM_E8M0_CAPABILITIES`): 0.11's Fp8MoEMethod.process_weights_after_loading
#: (quantization/fp8.py, and CompressedTensorsW8A8Fp8MoEMethod's) calls ``requant_weight_ue8m0_inplace`` on w13 and
#: then w2 for every ``block_quant`` layer; 0.19 and 0.33 only on a DeepGEMM expert backend
#: (prepare_fp8_moe_layer_for_deepgemm), which fused_moe/oracle/fp8.py does not choose for block fp8 by default
DEEP_GEMM_EXPERT_REQUANT_VERSIONS = frozenset({"0.11"})


def deep_gemm_expert_requant_peak_bytes(out_features: int, in_features: int, experts: int) -> int:
    """What one rank holds beside a MoE layer's loaded ``[experts, out_features, in_features]`` block-fp8 weight
    while ``requant_weight_ue8m0_inplace`` (quantization/utils/fp8_utils.py) rewrites it one expert at a time: from
    the second expert on, the previous one's float32 ``w_dq`` (4 N K), fp8 ``w_requant`` (N K) and float32
    ``s_requant`` (4 ceil(N / 128) Ks) are still bound while the next ``w_dq`` is computed beside the expanded scales
    (`deep_gemm_requant_peak_bytes`): ``4 Np Ks + 4 Np K + 13 N K + 4 ceil(N / 128) Ks``; one expert alone, the
    linear layer's figure.  Each tensor as PyTorch's allocator counts it (`torch_cuda.allocated_block_bytes`)."""
    first = deep_gemm_requant_peak_bytes(out_features, in_features)
    if experts < 2:
        return first
    groups = -(-in_features // FP8_BLOCK)
    return (first + allocated_block_bytes(4 * out_features * in_features)
            + allocated_block_bytes(out_features * in_features)
            + allocated_block_bytes(4 * -(-out_features // FP8_BLOCK) * groups))


def deep_gemm_expert_requant_bytes(stage: Stage, version: str, device: DeviceFacts,
                                   expert_format: str) -> Term | None:
    """What one rank holds only while vLLM `version` (`DEEP_GEMM_EXPERT_REQUANT_VERSIONS`) requantizes a MoE layer's
    fp8 [128, 128]-block experts (`expert_format`) to UE8M0 scales where ``is_deep_gemm_e8m0_used()``
    (`_deep_gemm_e8m0_device`: 10.0 in 0.11; a device of unknown capability counted, the safe side), beyond the
    layer's loaded weights: `deep_gemm_expert_requant_peak_bytes` of w13 (``2 x width x hidden`` an expert) or of w2
    (``hidden x width``), whichever needs more, for the rank's experts (`expert_shard`).  Freed before "Model loading
    took" is measured: a load transient (`OutsideBudget.repack`).  None elsewhere."""
    spec = stage.spec
    start, stop = stage.layers
    if (version not in DEEP_GEMM_EXPERT_REQUANT_VERSIONS or expert_format.removeprefix("checkpoint-") != "fp8-block128"
            or not spec.is_moe or not any(start <= layer < stop for layer in spec.moe_layers)
            or _deep_gemm_e8m0_device(version, device) is False):
        return None
    experts, width = expert_shard(spec, stage.moe_ranks, stage.expert_parallel and stage.moe_ranks > 1)
    hidden = spec.hidden_size
    w13 = deep_gemm_expert_requant_peak_bytes(2 * width, hidden, experts)
    w2 = deep_gemm_expert_requant_peak_bytes(hidden, width, experts)
    transient, step, rows, columns = max((w13, "w13", 2 * width, hidden), (w2, "w2", hidden, width))
    return Term(transient, (
        f"{transient / GIB:.2f} GiB while vLLM {version} requantizes one MoE layer's {expert_format} experts to "
        "DeepGEMM's power-of-two (UE8M0) block scales (Fp8MoEMethod.process_weights_after_loading, "
        f"quantization/fp8.py: requant_weight_ue8m0_inplace over the rank's {experts} experts' {step}, {rows} x "
        f"{columns} each, one at a time, the previous expert's float32 and fp8 results still bound beside the next "
        "one's expanded scales, float32 copy and dequantized product), which it does "
        f"{_deep_gemm_where(version, device)}"))

def _mla_projection_sizes(spec: ModelSpec, tensor_parallel: int) -> tuple[int, ...]:
    """The elements of each MLA projection weight one rank of deepseek_v2.py's ``DeepseekV2MLAAttention`` allocates:
    without query compression a ColumnParallelLinear ``q_proj`` and a ReplicatedLinear ``kv_a_proj_with_mqa``, with
    it a replicated ``fused_qkv_a_proj`` (q_lora + kv_lora + rope rows) and a ColumnParallelLinear ``q_b_proj``; then
    ``kv_b_proj`` (ColumnParallelLinear) and ``o_proj`` (RowParallelLinear)."""
    hidden, heads = spec.hidden_size, spec.num_attention_heads // tensor_parallel
    query = heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
    latent = spec.kv_lora_rank + spec.qk_rope_head_dim
    if spec.q_lora_rank is None:
        compressed: tuple[int, ...] = (query * hidden, latent * hidden)
    else:
        compressed = ((spec.q_lora_rank + latent) * hidden, query * spec.q_lora_rank)
    return (*compressed, heads * (spec.qk_nope_head_dim + spec.v_head_dim) * spec.kv_lora_rank,
            hidden * heads * spec.v_head_dim)


def mla_kv_b_copy_bytes(spec: ModelSpec, tensor_parallel: int, element_bytes: int = ACTIVATION_ELEMENT_BYTES) -> int:
    """Bytes of the copy of one MLA layer's ``kv_b_proj`` that vLLM holds on one rank after loading where that layer
    is quantized: ``kv_lora_rank x heads / tp x (qk_nope_head_dim + v_head_dim)`` elements of the model's dtype
    (`element_bytes`), as PyTorch's allocator counts one tensor of that size (`torch_cuda.allocated_block_bytes`).

    vLLM's MLA attention computes its decode products in 16-bit ("we currently do not have quantized bmm's which are
    needed for `W_UV` and `W_UK_T`, we just store fp16/bf16 copies"): after the quant methods' own
    ``process_weights_after_loading``, model_loader/utils.py ``process_weights_after_loading`` calls each MLA
    layer's with ``model_config.dtype``, which asks ``get_and_maybe_dequant_weights(kv_b_proj)`` (0.11
    v1/attention/backends/mla/common.py ``MLACommonBaseImpl`` and ``MLACommonImpl``, a local helper; 0.19
    model_executor/layers/attention/mla_attention.py ``MLAAttention``, quantization/utils/quant_utils.py; 0.33 the
    same through ``split_kv_b_proj``).  A quantized layer's answer is a new tensor: ``scaled_dequantize`` for fp8
    without Marlin or DeepGEMM (0.19, 0.33), else the layer applied to an identity matrix of the model's dtype
    (every quantized method; in 0.11 every one), ``[kv_lora_rank, heads x (nope + v)]``.  ``W_UK_T`` and ``W_UV`` are
    two views of it (``view``, ``split``, ``permute``, ``transpose``: no copy), kept for the model's life (0.33
    registers them as parameters, ``replace_parameter``: the same storage), beside ``kv_b_proj`` itself, which the
    prefill still runs (``self.kv_b_proj(kv_c_normed)``).  An unquantized ``kv_b_proj`` gives its own weight (0.11
    ``layer.weight``; 0.19 and 0.33 ``weight.to(out_dtype)``, a no-op: its parameter is allocated in the model's
    dtype, base_loader.py ``set_default_torch_dtype``, and a checkpoint of another 16-bit dtype is cast into it on
    load): no copy.  It happens inside ``load_model``, so vLLM's "Model loading took" (``DeviceMemoryProfiler``)
    counts it and the KV cache has that much less.  ROCm's AITER fp8/fp4 batched GEMMs quantize the copy instead
    (``is_aiter_triton_fp8_bmm_enabled``), off by default (``VLLM_ROCM_USE_AITER`` false): not planned."""
    heads = spec.num_attention_heads // tensor_parallel
    size = spec.kv_lora_rank * heads * (spec.qk_nope_head_dim + spec.v_head_dim) * element_bytes
    return allocated_block_bytes(size)


def mla_kv_b_copy(stage: Stage, version: str, quantized_layers: frozenset[int], draft_layers: int = 0) -> Term | None:
    """The bytes one rank of `stage` holds for the model-dtype copies of its MLA layers' quantized ``kv_b_proj``
    (`mla_kv_b_copy_bytes`): one a layer of the stage in `quantized_layers` (the decoder layers whose ``kv_b_proj``
    the weights store quantized), and on the last stage one for each of `draft_layers` MTP layers where the model's
    last layer's is (deepseek_mtp.py builds each as a ``DeepseekV2DecoderLayer`` with the model's quant_config, and
    the drafter is loaded by the same loader, inside the same "Model loading took").  While a layer is dequantized
    by ``scaled_dequantize`` it also holds float32 copies of the weight, of its broadcast scales and of their
    product (12 bytes an element, then the copy): at most 10 bytes an element of one layer's copy beyond what stays,
    for a moment during the load, when the KV pool and the profiling peak are not allocated yet (not charged); the
    identity path's transient is its ``kv_lora_rank`` square identity (0.5 MiB at 512) and the kernel's input copy.
    None for a model without MLA or where no layer of the stage is quantized."""
    spec = stage.spec
    if not spec.is_mla:
        return None
    start, stop = stage.layers
    layers = sum(1 for layer in quantized_layers if start <= layer < stop)
    drafted = draft_layers if stage.is_last and spec.num_layers - 1 in quantized_layers else 0
    if not layers + drafted:
        return None
    one = mla_kv_b_copy_bytes(spec, stage.tensor_parallel, stage.element_bytes)
    heads = spec.num_attention_heads // stage.tensor_parallel
    draft = f" and its {drafted} MTP layer(s)" if drafted else ""
    return Term((layers + drafted) * one, (
        f"vLLM {version} keeps a {stage.element_bytes * 8}-bit copy of each quantized kv_b_proj for MLA's decode "
        f"products (W_UK_T and W_UV, views of get_and_maybe_dequant_weights' answer; mla_attention.py "
        f"process_weights_after_loading), beside kv_b_proj itself: {spec.kv_lora_rank} x {heads} heads x "
        f"({spec.qk_nope_head_dim} + {spec.v_head_dim}) = {one:,} bytes a layer on a rank, for {layers} layer(s)"
        f"{draft}: {(layers + drafted) * one / GIB:.2f} GiB, inside 'Model loading took'"))


def weight_allocation_slack(stage: Stage, weight_format: str) -> int | None:
    """The bytes PyTorch's caching allocator counts for one rank's weights beyond their size, which vLLM's
    "Model loading took" (``DeviceMemoryProfiler``: ``torch.cuda.max_memory_allocated`` after loading less before)
    and so its KV budget include: every parameter tensor of 10 MiB or more gets a segment rounded up to 2 MiB and
    keeps the remainder when it is 1 MiB or less (`torch_cuda.allocated_block_bytes`).  Computed for the model
    classes of `FUSED_LINEAR_MODEL_TYPES` stored at 16 bits (`weight_format` "bf16" or "fp16"), from the shapes
    their layers allocate on one rank; None for other models and formats, whose tensors vLLM lays out otherwise
    (packed, repacked or fused differently).  Qwen2.5-72B at TP 2: each of the 80 down_proj weights of
    8192 x 14,784 x 2 bytes (231 MiB) holds a 232 MiB segment, 80 MiB in all."""
    spec = stage.spec
    if (spec.model_type not in FUSED_LINEAR_MODEL_TYPES or weight_format not in SIXTEEN_BIT_FORMATS
            or spec.has_indexer):
        return None
    tp, hidden, element = stage.tensor_parallel, spec.hidden_size, ACTIVATION_ELEMENT_BYTES
    start, stop = stage.layers

    def mlp_slack(shapes: tuple[int, ...]) -> int:
        return sum(allocated_block_bytes(size * element) - size * element for size in shapes)

    if spec.is_mla:
        attention = mlp_slack(_mla_projection_sizes(spec, tp))
    else:
        heads, kv_heads = spec.num_attention_heads // tp, max(1, spec.num_kv_heads // tp)
        attention = mlp_slack(((heads + 2 * kv_heads) * spec.head_dim * hidden, hidden * heads * spec.head_dim))
    width = spec.intermediate_size // tp
    dense = mlp_slack((2 * width * hidden, hidden * width))
    moe = 0
    if spec.is_moe:
        experts, expert_width = expert_shard(spec, stage.moe_ranks, stage.expert_parallel)
        moe = mlp_slack((experts * 2 * expert_width * hidden, experts * hidden * expert_width))
        if spec.shared_expert_width:
            shared = spec.shared_expert_width // (1 if shared_experts_whole(
                spec, tp, stage.data_parallel, stage.expert_parallel) else tp)
            moe += mlp_slack((2 * shared * hidden, hidden * shared))
    layers = range(start, stop)
    dense_count = sum(1 for layer in layers if not spec.is_moe or layer in spec.dense_layers)
    slack = (stop - start) * attention + dense_count * dense + (stop - start - dense_count) * moe
    vocabulary_rows = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING // tp
    table = mlp_slack((vocabulary_rows * hidden,))
    everywhere = spec.model_type in VOCABULARY_ON_EVERY_STAGE
    if start == 0 or everywhere:
        slack += table  # embed_tokens
    if (stage.is_last or everywhere) and not spec.tie_word_embeddings:
        slack += table  # lm_head
    return slack
