"""Will it fit?  Per-device memory for a model, hardware and workload, at 16-bit and at INT4.

`plan()` puts on each device its share of the weights, its share of the KV
cache, an activation/workspace estimate and a fixed runtime overhead, and
compares the sum with ``capacity × memory_utilization`` (0.90 by default, as
vLLM's ``gpu_memory_utilization``).  Weights and KV bytes are exact sums over
the tensor inventory and the attention layers; the activation and overhead
terms cannot be exact and carry a `basis` string that says what they assume.

The solvers (longest context, most sequences, fewest devices) search over the
same per-device function.  They do not rebuild the plan at each step: a
`_Layout` holds, per pipeline stage, the terms that do not change with the
variable being solved (weights, overhead) and the per-token KV coefficients,
so one evaluation is a handful of integer operations.

Parallelism follows vLLM:
* tensor parallel (tp): linear layers, vocab-parallel embedding and lm_head
  are split across the tp ranks (each rank holds ``ceil(bytes / tp)`` of a
  sharded tensor); norms, routers and every bias but the routed experts'
  gate/up biases (split as vLLM's FusedMoE splits w13_bias) are counted whole
  on each rank (vLLM splits the biases of the other column-parallel layers, so
  this over-counts by at most those biases, a few MB); KV heads are split with
  ``ceil(n_kv / tp)`` heads per rank (one replicated head per rank when tp
  exceeds them, in the KV cache and in the k/v projections' weights; a tp that
  neither divides nor is a multiple of n_kv is warned about, since vLLM refuses
  it) and an MLA latent is replicated on every rank;
* pipeline parallel (pp): decoder layers are split into contiguous stages as
  vLLM's ``get_pp_indices`` splits them (the remainder goes to the stages
  before the last, from the second-to-last backwards), the embedding sits
  on the first stage, the final norm and lm_head on the last; a tied lm_head
  is a second copy of the embedding on the last stage when pp > 1; where the
  engine's model code builds them on every stage (vLLM's Qwen3-MoE, Mixtral,
  gpt-oss, Gemma 2/3: `EngineProfile.vocabulary_on_every_stage`), every stage
  holds the embedding, final norm and lm_head;
* data parallel (dp, vLLM's ``--data-parallel-size``): dp independent replicas of the tp x pp layout, as vLLM
  0.19 and 0.33 run a model without routed experts (0.11 adds its data-parallel groups' communicators at start-up);
  the workload's sequences are shared among them, each device planned for the fullest replica's share.  A model
  with routed experts (vLLM 0.19 and 0.33, one pipeline stage) spreads its routed experts over all dp x tp ranks
  and gathers every rank's tokens into each MoE layer (`engines.vllm_parallel.moe_dispatched_tokens`); elsewhere
  refused;
* where the engine allocates a family's MoE routers in float32 (vLLM's GLM-4.5:
  `EngineProfile.routers_at_fp32`), the device weights count them at 4 bytes an
  element whatever the format's float type.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import cast

from quant_core.catalog import (
    MAX_COMPUTE_UNITS,
    MAX_DEVICE_BYTES,
    UNKNOWN_DEVICE,
    DeviceFacts,
    device_compute_capability,
    device_compute_units,
    device_facts,
)
from quant_core.engines import ENGINES, BatchLimits, ContextTerm, EngineProfile, KVCapacity, Stage, Term, get_engine
from quant_core.engines.vllm import OutsideBudget
from quant_core.engines.vllm_dsa import DSA_BLOCK_SIZE, dsa_block_size, dsa_block_table_bytes, dsa_mixed_batch_bytes
from quant_core.engines.vllm_encoders import qwen_encoder_dummy
from quant_core.engines.vllm_expert_layouts import moe_wna16_act_order_note
from quant_core.engines.vllm_max_len import ALLOW_LONG_ENV, ALLOW_LONG_WARNING
from quant_core.engines.vllm_parallel import (
    expert_parallel_refusal,
    expert_placement_note,
    expert_ranks_refusal,
    expert_shard,
    moe_data_parallel_format_refusal,
    routed_experts_per_rank,
    shared_experts_whole,
)
from quant_core.engines.vllm_refusals import (
    expert_width_refusal,
    mamba_align_refusal,
    mlp_width_refusal,
    qwen_vision_refusal,
    unknown_gptq_symmetry_note,
    vocabulary_refusal,
)
from quant_core.engines.vllm_releases import (
    CHUNKED_LOCAL_ATTENTION,
    EMBEDDING_ON_EVERY_STAGE,
    MAMBA_CACHE_MODES,
    MOE_DATA_PARALLEL_VERSIONS,
    startup_refusal,
)
from quant_core.engines.vllm_releases import chunked_local_attention as vllm_chunked_local_attention
from quant_core.engines.vllm_releases import mamba_cache_mode as vllm_mamba_cache_mode
from quant_core.engines.vllm_sampler import VOCAB_PADDING
from quant_core.engines.vllm_speculative import SpeculativeDecoding, mtp_front_bytes, speculative_refusal
from quant_core.errors import InvalidSpec, UnknownName
from quant_core.formats import (
    FLOAT32_KV_DTYPE,
    KV_DTYPES,
    VLLM_PER_TOKEN_HEAD_KV_DTYPES,
    WeightFormat,
    float_format,
    int4,
    kv_dtype,
)
from quant_core.identity_memo import IdentityMemo
from quant_core.inventory import ParameterCount, QuantizationPolicy, parameter_count
from quant_core.kv_cache import (
    HybridKV,
    WindowedKV,
    held_tokens,
    held_window,
    hybrid_kv,
    kv_bytes_per_token,
    kv_layers,
    layer_bytes_per_token,
)
from quant_core.schemes import WeightScheme, assign, assigned_bytes, scheme_of, with_partial_groups
from quant_core.slots import slot_constructor
from quant_core.specs import (
    Llama4VisionTower,
    ModelSpec,
    PixtralVisionTower,
    Qwen3VisionTower,
    QwenVisionTower,
    TensorEntry,
    VisionTower,
)

GIB = 1 << 30
AS_SHIPPED = "as_shipped"  # the comparison's key for the checkpoint as its config ships it
CHECKPOINT = "checkpoint"  # ... and for a checkpoint planned from its own headers
DEFAULT_RUNTIME_OVERHEAD_BYTES = GIB
DEFAULT_MAX_BATCHED_TOKENS = 8192
DEFAULT_MAX_NUM_SEQS = 256
MAX_DEVICES_SEARCHED = 1024
MAX_SEQUENCES_SEARCHED = 1 << 24
MAX_CONTEXT_SEARCHED = 1 << 24
#: roles every engine holds whole on each tensor-parallel rank; ``position_embedding`` is GPT-2's learned positions,
#: a plain ``nn.Embedding`` in vLLM's gpt2.py (``GPT2Model.wpe``, v0.11, v0.19 and v0.33), not a vocabulary-parallel one
REPLICATED_ROLES = frozenset({"norm", "router", "bias", "other", "position_embedding"})

RUNTIME_OVERHEAD_BASIS = (
    "fixed {gib:.2f} GiB (2^30 bytes) per device: CUDA context, cuBLAS/NCCL workspaces and "
    "CUDA-graph memory as commonly observed with vLLM; an estimate, override with "
    "runtime_overhead_bytes"
)
ACTIVATION_BASIS = (
    "peak forward activations for one batch of {tokens} tokens (min(max_batched_tokens={max_batched}, "
    "context x sequences)) at 2 bytes: tokens x (4 x hidden + 2 x MLP width per rank + attention "
    "width per rank) plus fp32 logits for {sequences} sampled sequences x vocab per rank; an "
    "estimate, override with activation_bytes"
)


@dataclass(frozen=True, slots=True)
class Hardware:
    """`count` identical devices of `capacity_bytes` each (a catalog device or raw bytes).

    `compute_capability` is the devices' CUDA compute capability ``(major, minor)``, by which the engine refuses
    formats its kernels cannot run there and picks its kernels (`catalog.device_facts`: a device given in bytes
    with a capability is charged as a catalog device of that capability, its SM count aside); when not given it
    is the catalog's for `device_id` (`catalog.device_compute_capability`), and None (not known: no format is
    refused for the device) for hardware given in bytes or a device without one (AMD).  A catalogued device's
    capability is a fact of the GPU: another one given for it is refused (`InvalidSpec`), not planned as a device
    that does not exist.  `compute_units` is the devices' streaming multiprocessors (compute units), by which the
    engine sizes some buffers: the catalog's for `device_id` (another figure is refused as the capability is),
    given for hardware in bytes, else None (not known: the engine takes `catalog.most_compute_units`).
    """

    capacity_bytes: int
    count: int = 1
    device_id: str | None = None
    name: str = ""
    compute_capability: tuple[int, int] | None = None
    compute_units: int | None = None

    def __post_init__(self) -> None:
        self._check_compute_units()
        if self.compute_capability is None:
            if self.device_id:
                object.__setattr__(self, "compute_capability", device_compute_capability(self.device_id))
        elif not (isinstance(self.compute_capability, tuple) and len(self.compute_capability) == 2
                  and all(type(part) is int for part in self.compute_capability)
                  and 1 <= self.compute_capability[0] <= 99 and 0 <= self.compute_capability[1] <= 9):
            raise InvalidSpec("hardware.compute_capability", self.compute_capability,
                              "must be a CUDA compute capability (major, minor), major 1-99 and minor 0-9")
        elif self.device_id and (listed := device_compute_capability(self.device_id)) is not None \
                and listed != self.compute_capability:
            major, minor = self.compute_capability
            raise InvalidSpec("hardware.compute_capability", f"{major}.{minor}",
                              f"{self.device_id} has compute capability {listed[0]}.{listed[1]} (GET /v1/devices); "
                              "give memory_bytes for other hardware")
        if isinstance(self.capacity_bytes, bool) or not isinstance(self.capacity_bytes, int) \
                or self.capacity_bytes <= 0:
            raise InvalidSpec("hardware.memory_bytes", self.capacity_bytes, "must be a positive integer")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count \
                <= MAX_DEVICES_SEARCHED:
            raise InvalidSpec("hardware.count", self.count, f"must be an integer in [1, {MAX_DEVICES_SEARCHED}]")

    def _check_compute_units(self) -> None:
        listed = device_compute_units(self.device_id) if self.device_id else None
        if self.compute_units is None:
            object.__setattr__(self, "compute_units", listed)
        elif type(self.compute_units) is not int or not 1 <= self.compute_units <= MAX_COMPUTE_UNITS:
            raise InvalidSpec("hardware.compute_units", self.compute_units,
                              f"must be an integer in [1, {MAX_COMPUTE_UNITS}]")
        elif listed is not None and listed != self.compute_units:
            raise InvalidSpec("hardware.compute_units", self.compute_units,
                              f"{self.device_id} has {listed} compute units (GET /v1/devices); give memory_bytes "
                              "for other hardware")


@dataclass(frozen=True, slots=True)
class Workload:
    """Tokens held per sequence (`context_length`, prompt + output) and sequences served at once."""

    context_length: int = 4096
    concurrent_sequences: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.context_length, bool) or not isinstance(self.context_length, int) \
                or not 1 <= self.context_length <= MAX_CONTEXT_SEARCHED:
            raise InvalidSpec("workload.context_length", self.context_length,
                              f"must be an integer in [1, {MAX_CONTEXT_SEARCHED}]")
        if isinstance(self.concurrent_sequences, bool) or not isinstance(self.concurrent_sequences, int) \
                or not 1 <= self.concurrent_sequences <= MAX_SEQUENCES_SEARCHED:
            raise InvalidSpec("workload.concurrent_sequences", self.concurrent_sequences,
                              f"must be an integer in [1, {MAX_SEQUENCES_SEARCHED}]")


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """Everything about a plan that has a default.

    `weight_format` is the format the user deploys (INT4 g128 asymmetric by
    default); the 16-bit baseline stores every tensor as `float_format`.
    `policy` says which roles `weight_format` applies to (default: 2-D tensors
    of attention, MLP and expert layers).  `tensor_parallel` defaults to the
    device count divided by `pipeline_parallel`.  `activation_bytes` and
    `runtime_overhead_bytes` replace the estimates when given.  `scheme`, when
    given, is the deployed storage instead of `weight_format` under `policy` (a
    checkpoint as shipped, a GGUF file type); `shipped` is the checkpoint's own
    scheme, shown in the comparison beside 16-bit and INT4.  The comparison names a
    deployed format that is neither by `format_name` (the name the caller asked for it by),
    ``as_shipped`` for the shipped scheme and ``checkpoint`` for a checkpoint's own headers.

    `engine` names the engine profile whose terms the plan uses (`quant_core.engines`:
    ``"vllm"`` at `engine_version`, or ``"generic"``: nibble's workload-sized activation
    estimate and a fixed 1 GiB overhead).  `max_batched_tokens` and `max_num_seqs` are the
    engine's scheduler limits; None takes the engine's default for the device.  `enforce_eager` is vLLM's
    ``--enforce-eager``: no CUDA graph is captured (0.11 and 0.19 then take no memory outside the budget for them,
    0.33 charges no graph estimate inside it).  `config_dtype` is the float format the model's config.json names
    (``torch_dtype``: bf16, fp16 or fp32; None when not known), which vLLM's ``--dtype auto`` runs: with
    `float_format` it gives `model_dtype`.  `engine_version` and `enforce_eager`
    with the generic engine raise `InvalidSpec`: it has neither, and ignoring them would plan something else than
    what was asked.  `expert_parallel` is vLLM's ``--enable-expert-parallel``: a MoE model's routed experts placed
    whole over the tensor-parallel ranks, or the data x tensor ranks at data parallel > 1
    (`engines.vllm_parallel.expert_shard`, `engines.base.Stage.moe_ranks`), the rest still split
    by tensor parallelism; the generic engine has no such placement (`InvalidSpec`), and a model without routed
    experts is refused by `plan`.  `data_parallel` is vLLM's ``--data-parallel-size``: that many replicas of the
    tensor x pipeline layout on ``data x tensor x pipeline`` devices, the workload's sequences shared among them
    (`plan`); for a model with routed experts on vLLM 0.19 and 0.33 the data-parallel ranks' MoE layers form one
    group (`engines.base.Stage.moe_ranks`), elsewhere it is refused at more than one (`_moe_data_parallel_reason`).
    `speculative` is vLLM's ``--speculative-config`` (`engines.vllm_speculative.SpeculativeDecoding`: ``mtp`` or
    ``ngram`` with ``num_speculative_tokens``), ``mtp`` planned on vLLM 0.19 and ``ngram`` on 0.11 and 0.19
    (`engines.vllm_speculative.PLANNED_RELEASES`; `speculative_refusal` says what is refused): the
    MTP layers' weights and KV cache on the last stage (`_build_layout`), the drafter's buffers, passes and graphs
    (`engines.base.BatchLimits.speculative_tokens` and ``draft_layers``); the generic engine runs none (`InvalidSpec`).
    `kv_cache_dtype_auto`: `kv_cache_dtype` is the engine's default (vLLM's
    ``--kv-cache-dtype auto``), not one the caller asked for: where the deployed checkpoint's config quantizes the KV
    cache (`WeightScheme.kv_cache_quant`), the engine may run another (`EngineProfile.checkpoint_kv_cache_dtype`), and
    the plan takes it.
    `allow_long_max_model_len` is vLLM's ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``: without it a context above the length
    the engine derives from the model's config is refused (`EngineProfile.context_refusal`), with it planned with a
    warning (vLLM's: positions past that length give wrong outputs); the generic engine has no such check
    (`InvalidSpec`).
    """

    weight_format: WeightFormat = field(default_factory=int4)
    scheme: WeightScheme | None = None
    shipped: WeightScheme | None = None
    format_name: str | None = None
    float_format: str = "bf16"
    policy: QuantizationPolicy | None = None
    kv_cache_dtype: str = "bf16"
    block_size: int = 16
    tensor_parallel: int | None = None
    pipeline_parallel: int = 1
    memory_utilization: float = 0.90
    runtime_overhead_bytes: int | None = None
    activation_bytes: int | None = None
    max_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    engine: str = "vllm"
    engine_version: str | None = None
    enforce_eager: bool = False
    config_dtype: str | None = None
    expert_parallel: bool = False
    kv_cache_dtype_auto: bool = False
    data_parallel: int = 1
    speculative: SpeculativeDecoding | None = None
    allow_long_max_model_len: bool = False

    def __post_init__(self) -> None:
        if self.kv_cache_dtype not in KV_DTYPES:  # fp32 is the planner's, for a model the engine runs in float32
            raise UnknownName("kv cache dtype", self.kv_cache_dtype, sorted(KV_DTYPES), field="kv_cache.dtype")
        if not isinstance(self.enforce_eager, bool):
            raise InvalidSpec("runtime.enforce_eager", self.enforce_eager, "must be true or false")
        if not isinstance(self.expert_parallel, bool):
            raise InvalidSpec("runtime.expert_parallel", self.expert_parallel, "must be true or false")
        if not isinstance(self.allow_long_max_model_len, bool):
            raise InvalidSpec("runtime.allow_long_max_model_len", self.allow_long_max_model_len,
                              "must be true or false")
        float_format(self.float_format)
        if self.config_dtype is not None:
            float_format(self.config_dtype)
        if self.engine not in ENGINES:
            get_engine(self.engine)  # raises UnknownName listing the engines
        if self.engine_version is not None and not isinstance(self.engine_version, str):
            raise InvalidSpec("runtime.engine_version", self.engine_version, "must be a string")
        get_engine(self.engine, self.engine_version)  # an unknown version raises UnknownName
        if self.engine == "generic":  # vLLM's options would be ignored: say so, never plan as if they applied
            if self.kv_cache_dtype in VLLM_PER_TOKEN_HEAD_KV_DTYPES:
                raise InvalidSpec("kv_cache.dtype", self.kv_cache_dtype,
                                  "vLLM 0.33's own cache (an fp32 scale per token and head), which only that engine "
                                  "runs: plan it with runtime.engine vllm and runtime.engine_version 0.33; the "
                                  "generic engine plans nibble's int8, int4 and fp8")
            if self.engine_version is not None:
                raise InvalidSpec("runtime.engine_version", self.engine_version,
                                  "a vllm release; the generic engine has none (use engine vllm, or drop it)")
            if self.enforce_eager:
                raise InvalidSpec("runtime.enforce_eager", self.enforce_eager,
                                  "vllm's --enforce-eager; the generic engine charges no CUDA graphs to leave out "
                                  "(use engine vllm, or drop it)")
            if self.expert_parallel:
                raise InvalidSpec("runtime.expert_parallel", self.expert_parallel,
                                  "vllm's --enable-expert-parallel; the generic engine places no experts (use engine "
                                  "vllm, or drop it)")
            if self.allow_long_max_model_len:
                raise InvalidSpec("runtime.allow_long_max_model_len", self.allow_long_max_model_len,
                                  "vllm's VLLM_ALLOW_LONG_MAX_MODEL_LEN=1; the generic engine refuses no context to "
                                  "allow (use engine vllm, or drop it)")
            if self.speculative is not None:
                raise InvalidSpec("runtime.speculative", self.speculative.method,
                                  "vllm's --speculative-config; the generic engine runs no drafter (use engine vllm, "
                                  "or drop it)")
        if self.speculative is not None and not isinstance(self.speculative, SpeculativeDecoding):
            raise InvalidSpec("runtime.speculative", self.speculative, "must be a SpeculativeDecoding")
        checks: list[tuple[str, object, bool, str]] = [
            ("kv_cache.block_size", self.block_size, _positive_int(self.block_size, 1 << 20),
             "must be an integer in [1, 1048576]"),
            ("parallel.pipeline", self.pipeline_parallel, _positive_int(self.pipeline_parallel, 1024),
             "must be an integer in [1, 1024]"),
            ("parallel.data", self.data_parallel, _positive_int(self.data_parallel, MAX_DEVICES_SEARCHED),
             f"must be an integer in [1, {MAX_DEVICES_SEARCHED}]"),
            ("runtime.memory_utilization", self.memory_utilization,
             isinstance(self.memory_utilization, int | float) and not isinstance(self.memory_utilization, bool)
             and 0 < self.memory_utilization <= 1, "must be in (0, 1]"),
        ]
        if self.runtime_overhead_bytes is not None:
            checks.append(("runtime.overhead_bytes", self.runtime_overhead_bytes,
                           _non_negative_int(self.runtime_overhead_bytes, MAX_DEVICE_BYTES),
                           f"must be an integer in [0, {MAX_DEVICE_BYTES}] (bytes of one device)"))
        if self.max_batched_tokens is not None:
            checks.append(("runtime.max_batched_tokens", self.max_batched_tokens,
                           _positive_int(self.max_batched_tokens, 1 << 24), "must be an integer in [1, 16777216]"))
        if self.max_num_seqs is not None:
            checks.append(("runtime.max_num_seqs", self.max_num_seqs,
                           _positive_int(self.max_num_seqs, 1 << 24), "must be an integer in [1, 16777216]"))
        if self.tensor_parallel is not None:
            checks.append(("parallel.tensor", self.tensor_parallel,
                           _positive_int(self.tensor_parallel, MAX_DEVICES_SEARCHED),
                           f"must be an integer in [1, {MAX_DEVICES_SEARCHED}]"))
        if self.activation_bytes is not None:
            checks.append(("runtime.activation_bytes", self.activation_bytes,
                           _non_negative_int(self.activation_bytes, MAX_DEVICE_BYTES),
                           f"must be an integer in [0, {MAX_DEVICE_BYTES}] (bytes of one device)"))
        for name, value, ok, reason in checks:
            if not ok:
                raise InvalidSpec(name, value, reason)

    @property
    def model_dtype(self) -> str:
        """The 16-bit dtype the engine runs the model in: ``fp16`` when `float_format` asks it (vLLM's ``--dtype
        half``) or the config names it (`config_dtype`, which ``--dtype auto`` takes: config/model.py
        ``_resolve_auto_dtype``), ``bf16`` otherwise (a bfloat16 config, a float32 or absent one, which ``auto``
        runs in bfloat16 on a device that has it)."""
        return "fp16" if "fp16" in (self.float_format, self.config_dtype) else "bf16"


def _positive_int(value: object, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= maximum


def _non_negative_int(value: object, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


#: a term that cannot be exact, its bytes and the assumption behind them: the engine profiles' own record
Estimate = Term


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One device: what it holds and whether it fits under `usable_bytes`."""

    index: int
    pipeline_stage: int
    tensor_rank: int
    layers: tuple[int, int]
    capacity_bytes: int
    usable_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    used_bytes: int
    headroom_bytes: int
    fits: bool
    #: of `weights_bytes`, the copies of the embedding, final norm and lm_head that the engine builds on this
    #: stage but that only the first or last stage runs (vLLM's Qwen3-MoE, Mixtral, ...: see `plan`)
    unread_weights_bytes: int = 0
    #: what the engine takes on this device outside `usable_bytes`, from the ``capacity - usable`` the budget leaves
    #: free (vLLM: the memory in use at its start-up snapshot, 0.11/0.19's CUDA graphs, DeepSeek Sparse Attention's
    #: late buffers): `fits` is False when it is more than that
    outside_budget_bytes: int = 0


@dataclass(frozen=True, slots=True)
class FormatPlan:
    """The plan for one weight format: totals, devices, verdict and the solved limits.

    `max_context_length` is the longest context that fits for the requested
    sequences, to the token (the KV cache is held in whole blocks, but the
    activation estimate grows with every token), capped by the model's trained
    context (under an engine, the longest it starts the model with: vLLM's derived
    max_model_len, `EngineProfile.context_limit`), or by the search limit (2^24 tokens)
    for a model that states none (`context_limited_by`: "memory", "model" or
    "search_limit"), or None when not even one token fits.  `max_concurrent_sequences` is the most sequences
    that fit at the requested context (0 if none), at most 2^24, the most a
    plan may ask for (`sequences_limited_by`: "memory" or "search_limit").  Where the
    engine refuses the format or layout (`refusal`) neither is solved: None and 0, limited
    by "engine": also when it refuses the requested context (above `EngineProfile.context_limit`), which
    `refusal` then names.
    `kv_pool_bytes` is what the engine leaves for its KV pool on the tightest device
    (usable − weights − activations − overhead; negative when nothing is left);
    `kv_capacity_tokens` is the tokens that pool holds as the engine logs it (vLLM: "GPU KV
    cache size: N tokens", block-rounded as vLLM rounds) and `engine_max_concurrency` the
    engine's own "maximum concurrency" for requests of the workload's context (both None
    for the generic model).  Where every layer holds the whole context (and for hybrid models,
    whose blocks the plan counts as vLLM does) a format that fits has `engine_max_concurrency` at
    least the requested sequences; a hybrid model's `kv_capacity_tokens` in vLLM 0.11 and 0.19
    counts the pool's blocks over every group, linear ones included (`engines.vllm.hybrid_kv_capacity`),
    not context x sequences.  With sliding-window or chunked layers `engine_max_concurrency` may
    be lower than the requested sequences: vLLM's figure reserves one step's tokens in flight for
    every request at once, while the scheduler has one step in flight over them all, so the plan
    charges one sequence that reservation and the others what they hold decoding
    (`kv_cache.WindowedKV`); a format that fits then has it at least 1 (vLLM starts), and
    `kv_capacity_tokens` counts blocks per group, not context x sequences.
    `refusal` says why the engine refuses the layout, or the format on these devices
    (`EngineProfile.device_refusal`: below the release's minimum compute capability
    for it); `fits` is then False.  `min_devices` is the fewest devices
    in tensor parallel (one pipeline stage) that fit the workload, counting
    only degrees engines such as vLLM accept for this model (dividing its
    attention heads; dividing or replicating its key/value heads: see
    `engine_tensor_parallel_sizes`), or None when none up to 1024 does or
    the engine cannot run the format on the device at any count.
    """

    format: str
    weights_bytes: int
    bits_per_weight: float
    weights_by_role: dict[str, int]
    kv_cache_bytes: int
    used_bytes: int
    devices: tuple[DevicePlan, ...]
    fits: bool
    max_context_length: int | None
    context_limited_by: str
    max_concurrent_sequences: int
    sequences_limited_by: str
    min_devices: int | None
    kv_pool_bytes: int = 0
    kv_capacity_tokens: int | None = None
    engine_max_concurrency: float | None = None
    refusal: str | None = None


_new_device_plan = slot_constructor(DevicePlan)
_new_format_plan = slot_constructor(FormatPlan)


@dataclass(frozen=True, slots=True)
class Plan:
    """The answer to "will it fit": the deployed format first, both formats side by side."""

    model: str
    total_parameters: int
    active_parameters_per_token: int
    parameters_by_role: dict[str, int]
    hardware: Hardware
    workload: Workload
    options: PlanOptions
    tensor_parallel: int
    pipeline_parallel: int
    kv_cache_dtype: str
    kv_bytes_per_token: int
    kv_cache_bytes: int
    activation: Estimate
    runtime_overhead: Estimate
    primary: FormatPlan
    comparison: dict[str, FormatPlan]
    warnings: tuple[str, ...]
    engine: str = "vllm"
    engine_version: str | None = None
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    #: vLLM's --data-parallel-size: replicas of the tensor x pipeline layout (`PlanOptions.data_parallel`); `primary`
    #: and `comparison` hold one replica's devices and the deployment's totals (`_over_replicas`)
    data_parallel: int = 1

    @property
    def fits(self) -> bool:
        return self.primary.fits

    @property
    def refusal(self) -> str | None:
        """Why the engine refuses this layout (the plan is then not deployable), or None."""
        return self.primary.refusal


_new_plan = slot_constructor(Plan)


# ---------------------------------------------------------------------------
# The per-format terms, computed once per (spec, format, parallelism)


@dataclass(frozen=True, slots=True)
class _StageKV:
    """KV bytes per token of one stage on one rank: by window (None = full attention)."""

    by_window: tuple[tuple[int | None, int], ...]
    #: a hybrid model's stage (Gated DeltaNet beside full attention): vLLM's blocks and states (`hybrid_kv`), which
    #: replace `by_window`
    hybrid: HybridKV | None = None

    def bytes_per_sequence(self, context_length: int, block_size: int) -> int:
        if self.hybrid is not None:
            return self.hybrid.bytes_per_sequence(context_length, block_size)
        return sum(size * held_tokens(context_length, window, block_size) for window, size in self.by_window)


@dataclass(frozen=True, slots=True)
class _Layout:
    """What does not change while a solver varies context or sequences: per stage, the
    weights on one rank and the KV coefficients of one rank."""

    tensor_parallel: int
    pipeline_parallel: int
    stage_layers: tuple[tuple[int, int], ...]
    stage_weights: tuple[int, ...]
    stage_kv: tuple[_StageKV, ...]
    #: bytes of the embedding, final norm and lm_head on one rank of each stage, when every stage holds them
    vocabulary_on_every_stage: int = 0
    #: per stage, the bytes of those copies that the stage holds but never runs (0 when they sit where used)
    stage_unread: tuple[int, ...] = ()
    #: the weight format of the routed experts (`_expert_format`), by which an engine picks its fused-MoE kernel
    expert_format: str = ""
    #: the one weight format of the decoder's linear layers, embedding and lm_head (`_linear_format`), by which an
    #: engine knows the shapes its allocator rounds (`EngineProfile.weight_allocation`)
    linear_format: str = ""
    #: the routed experts are placed whole over the tensor-parallel ranks (`PlanOptions.expert_parallel`)
    expert_parallel: bool = False
    #: the one weight format of the decoder's attention and MLP linear layers (`_dense_format`), by which an engine
    #: picks its dense kernel and the layout it holds them in (`EngineProfile.linear_layout`)
    dense_format: str = ""
    #: the decoder layers whose MLA ``kv_b_proj`` the weights store quantized (`_quantized_kv_b_layers`), of which the
    #: engine's attention may hold a 16-bit copy (`EngineProfile.attention_weight_copy`)
    quantized_kv_b: frozenset[int] = frozenset()


def _stage_ranges(num_layers: int, stages: int) -> tuple[tuple[int, int], ...]:
    """The ``[start, stop)`` decoder layers of each pipeline stage, as vLLM's ``get_pp_indices``
    (``vllm/distributed/utils.py``) splits them: ``num_layers // stages`` each, and the remainder one
    layer apiece to the stages before the last, counting back from the second-to-last
    (``partitions[-i] += 1`` for ``i`` in ``2 .. remainder + 1``): the last stage also runs the norm,
    lm_head and sampler, and with more than two stages the first keeps the embedding."""
    base, extra = divmod(num_layers, stages)
    sizes = [base] * stages
    for back in range(2, extra + 2):
        sizes[-back] += 1
    ranges = []
    start = 0
    for size in sizes:
        ranges.append((start, start + size))
        start += size
    return tuple(ranges)


#: the vision tower's tensors vLLM shards over the tensor-parallel ranks (siglip.py: QKVParallelLinear,
#: RowParallelLinear and ColumnParallelLinear weights, fc1's bias, a VocabParallelEmbedding of positions); its
#: patch convolution, norms, row-parallel biases and the projector are whole on every rank
_VISION_SHARDED: tuple[str, ...] = (
    "q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "k_proj.bias", "v_proj.bias",
    "out_proj.weight", "fc1.weight", "fc1.bias", "fc2.weight", "position_embedding.weight")
#: ... and Llama 4's (mllama4.py, mm_encoder_tp_mode "weights"): the same linear layers (o_proj for out_proj), the
#: patch embedding's and the projector's ColumnParallelLinear; its class and position embeddings (plain Parameters),
#: norms and row-parallel biases are whole on every rank
_VISION_SHARDED += ("o_proj.weight", "patch_embedding.linear.weight", "multi_modal_projector.linear_1.weight")
#: ... and Mistral 3's Pixtral (pixtral.py's PixtralHFAttention and PixtralHFMLP, mistral3.py's projector): q/k/v/o
#: and the gated MLP's weights (QKV/MergedColumn/RowParallelLinear, no biases), the projector's ColumnParallelLinear
#: linear_1 with its bias and RowParallelLinear linear_2 (its bias whole); the patch convolution, the norms and the
#: patch merger (a plain nn.Linear) are whole on every rank
_VISION_SHARDED += ("gate_proj.weight", "up_proj.weight", "down_proj.weight", "multi_modal_projector.linear_1.bias",
                    "multi_modal_projector.linear_2.weight")
#: ... and Qwen2.5-VL's (qwen2_5_vl.py, mm_encoder_tp_mode "weights"): each block's qkv (QKVParallelLinear, weight
#: and bias), proj and down_proj weights (RowParallelLinear), gate/up_proj weights and biases (a
#: MergedColumnParallelLinear), the merger's mlp.0 (ColumnParallelLinear, weight and bias) and mlp.2 weight
#: (RowParallelLinear); its patch embedding (a ReplicatedLinear), RMSNorms and row-parallel biases are whole
_VISION_SHARDED += ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "mlp.gate_proj.weight",
                    "mlp.gate_proj.bias", "mlp.up_proj.weight", "mlp.up_proj.bias", "mlp.down_proj.weight",
                    "merger.mlp.0.weight", "merger.mlp.0.bias", "merger.mlp.2.weight")
#: ... and Qwen3-VL's (qwen3_vl.py): the same attention, each block's and merger's linear_fc1 (ColumnParallelLinear,
#: weight and bias) and linear_fc2 weight (RowParallelLinear); its patch embedding (a Conv3d), learned positions (an
#: nn.Embedding), LayerNorms and row-parallel biases whole
_VISION_SHARDED += ("linear_fc1.weight", "linear_fc1.bias", "linear_fc2.weight")


#: tensors of a sharded role that engines hold whole on every tensor-parallel rank: DeepSeek Sparse Attention's
#: lightning indexer (vLLM's deepseek_v2.py Indexer: wq_b, wk and weights_proj are ReplicatedLinear, "no tensor
#: parallel, just replicated", in v0.11, v0.19 and v0.33), and MLA's down-projections to the query and key/value
#: latents (deepseek_v2.py DeepseekV2MLAAttention: ``q_a_proj`` and ``kv_a_proj_with_mqa`` are ReplicatedLinear, fused
#: as ``fused_qkv_a_proj`` with ``disable_tp=True`` where the query is compressed, in v0.11, v0.19 and v0.33)
_REPLICATED_NAMES: tuple[str, ...] = (".self_attn.indexer.", ".self_attn.q_a_proj.", ".self_attn.kv_a_proj_with_mqa.")


#: tensors of a replicated role (``other``: no linear layer, never quantized) that vLLM splits over the
#: tensor-parallel ranks: a Gated DeltaNet layer's depthwise ``conv1d`` (a ColumnParallelLinear of ``conv_dim``
#: outputs), ``dt_bias`` and ``A_log`` (``num_v_heads // tp_size`` each, ``sharded_weight_loader(0)``) in
#: qwen3_next.py's Qwen3NextGatedDeltaNet (v0.11), layers/mamba/gdn_linear_attn.py (v0.19) and
#: layers/mamba/gdn/qwen_gdn_linear_attn.py (v0.33); gpt-oss's attention ``sinks`` (gpt_oss.py OAIAttention:
#: ``num_attention_heads // tp_size``, v0.11, v0.19 and v0.33)
_SPLIT_OTHER_NAMES: tuple[str, ...] = (".linear_attn.conv1d.", ".linear_attn.dt_bias", ".linear_attn.A_log",
                                       ".self_attn.sinks")
#: tensors vLLM allocates in float32 whatever the model's dtype: the Gated DeltaNet's ``A_log`` (``torch.empty(...,
#: dtype=torch.float32)`` in the same files and releases) and a sigmoid router's ``e_score_correction_bias``
#: (``nn.Parameter(torch.empty(n_routed_experts, dtype=torch.float32))`` in deepseek_v2.py DeepseekV2MoE and
#: glm4_moe.py Glm4MoE in v0.11, v0.19 and v0.33, minimax_m2.py MiniMaxM2MoE in v0.19 and v0.33), DeepSeek's gate
#: itself in the model's dtype
_FLOAT32_NAMES: tuple[str, ...] = (".linear_attn.A_log", ".e_score_correction_bias")


def _sharded_bytes(one_tensor_bytes: int, entry: TensorEntry, tensor_parallel: int) -> int:
    """Bytes of one tensor of `entry` on one rank: replicated roles whole, the others ``ceil(bytes / tp)``."""
    if entry.name.endswith(_FLOAT32_NAMES):
        one_tensor_bytes = max(one_tensor_bytes, 4 * entry.elements)
    if entry.role == "other" and any(part in entry.name for part in _SPLIT_OTHER_NAMES):
        return -(-one_tensor_bytes // tensor_parallel)
    if entry.role in REPLICATED_ROLES or (entry.role == "vision" and not entry.name.endswith(_VISION_SHARDED)):
        return one_tensor_bytes
    if any(part in entry.name for part in _REPLICATED_NAMES):
        return one_tensor_bytes
    return -(-one_tensor_bytes // tensor_parallel)


def _vocabulary_bytes(one_tensor_bytes: int, entry: TensorEntry, spec: ModelSpec, tensor_parallel: int) -> int:
    """Bytes of one rank's share of the input embedding or the lm_head (a row of role ``embedding`` or ``lm_head``
    whose shape holds the vocabulary): vLLM's VocabParallelEmbedding and ParallelLMHead
    (model_executor/layers/vocab_parallel_embedding.py, v0.11, v0.19 and v0.33) pad the vocabulary to a multiple of
    ``DEFAULT_VOCAB_PADDING_SIZE`` = 64 (``pad_vocab_size``) and give each rank ``num_embeddings_padded / tp`` rows
    (``num_embeddings_per_partition``), so a rank holds the padded rows too: GPT-2's 50,257 tokens are 50,304 rows,
    OLMo 3's 100,278 are 100,288.  Other rows (a per-tensor scale) are split as `_sharded_bytes` splits them."""
    if spec.vocab_size <= 0 or spec.vocab_size not in entry.shape:
        return _sharded_bytes(one_tensor_bytes, entry, tensor_parallel)
    rows = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    return -(-one_tensor_bytes * rows // (spec.vocab_size * tensor_parallel))


def _is_vocabulary(entry: TensorEntry) -> bool:
    """The input embedding or the lm_head (outside the decoder layers), which vLLM builds vocabulary-parallel."""
    return entry.role in ("embedding", "lm_head") and not entry.layers


#: the inventory's shared-expert rows (DeepSeek's ``mlp.shared_experts``, Llama 4's ``feed_forward.shared_expert``)
_SHARED_EXPERT_NAME = ".shared_expert"


def _is_routed_expert(entry: TensorEntry, spec: ModelSpec) -> bool:
    """A row of a MoE layer's routed experts: role ``expert`` (weights, and a quantized checkpoint's scales of them),
    or their biases (gpt-oss's ``experts.gate_up_proj_bias``), which vLLM's FusedMoE holds per expert."""
    return spec.is_moe and (entry.role == "expert" or (entry.role == "bias" and ".experts." in entry.name))


#: the routed experts' gate/up biases, which vLLM's FusedMoE splits over the tensor-parallel ranks as it splits w13
#: (gpt-oss's ``experts.gate_up_proj_bias``; a per-expert ``gate_proj.bias`` / ``up_proj.bias``); the down
#: projection's bias (w2_bias) is whole on every rank
_EXPERT_GATE_UP_BIASES: tuple[str, ...] = ("gate_up_proj_bias", "gate_up_proj.bias", "gate_proj.bias", "up_proj.bias",
                                           "w1.bias", "w3.bias")


def _is_sharded_expert_bias(entry: TensorEntry, spec: ModelSpec) -> bool:
    """A row of the routed experts' gate/up biases, which one tensor-parallel rank holds ``1 / tp`` of: vLLM creates
    ``w13_bias`` as ``[E, 2 x intermediate_size_per_partition]`` and ``w2_bias`` as ``[E, hidden_size]``
    (fused_moe/layer.py ``UnquantizedFusedMoEMethod.create_weights`` in v0.11.0, unquantized_fused_moe_method.py in
    v0.19.0 and v0.33.0, quantization/mxfp4.py ``Mxfp4MoEMethod.create_weights`` in all three), and gpt_oss.py's
    ``load_weights`` loads each rank's ``2 x tp_rank_start : 2 x tp_rank_end`` slice of the checkpoint's
    gate_up_proj_bias and the whole down_proj_bias (zeroed on ranks other than 0, still allocated)."""
    return (entry.role == "bias" and _is_routed_expert(entry, spec)
            and any(part in entry.name for part in _EXPERT_GATE_UP_BIASES))


def _expert_parallel_bytes(one_tensor_bytes: int, entry: TensorEntry, spec: ModelSpec, tensor_parallel: int) -> int:
    """Bytes of one layer's tensors of a routed-expert row on the most loaded rank under expert parallelism: whole
    experts, `engines.vllm_parallel.expert_shard`'s count of the layer's ``E`` (a row of one tensor per expert holds
    that many tensors; a fused row holding every expert, that share of it, rounded up)."""
    local, _ = expert_shard(spec, tensor_parallel, True)
    return -(-one_tensor_bytes * entry.per_layer * local // spec.num_experts)


#: the biases of the decoder's column-parallel linear layers, which vLLM splits with their output rows
#: (layers/linear.py ColumnParallelLinear / MergedColumnParallelLinear / QKVParallelLinear: ``bias`` of
#: ``output_size_per_partition``, loaded by the same shard rule as the weight, v0.11, v0.19 and v0.33): q/k/v_proj
#: (llama.py, qwen2.py, glm4.py, seed_oss.py, gpt_oss.py's qkv_proj), GPT-2's c_attn and c_fc (gpt2.py), Falcon's
#: query_key_value and dense_h_to_4h (falcon.py), a dense MLP's gate/up_proj; a row-parallel layer's bias (o_proj,
#: down_proj, c_proj, dense) is whole on every rank, as is every other bias row
_COLUMN_PARALLEL_BIASES: tuple[str, ...] = (
    ".self_attn.q_proj.bias", ".self_attn.k_proj.bias", ".self_attn.v_proj.bias", ".self_attn.qkv_proj.bias",
    ".attn.c_attn.bias", ".mlp.c_fc.bias", ".self_attention.query_key_value.bias", ".mlp.dense_h_to_4h.bias",
    ".mlp.gate_proj.bias", ".mlp.up_proj.bias", ".mlp.gate_up_proj.bias")


def _is_column_parallel_bias(entry: TensorEntry, spec: ModelSpec) -> bool:
    """A bias row of a decoder layer's column-parallel linear layer (`_COLUMN_PARALLEL_BIASES`), not of the routed
    experts (`_is_sharded_expert_bias`)."""
    return (entry.role == "bias" and bool(entry.layers) and entry.name.endswith(_COLUMN_PARALLEL_BIASES)
            and not _is_routed_expert(entry, spec))


def _is_kv_projection(entry: TensorEntry) -> bool:
    """A separate key or value projection of the decoder (its weight, or a quantized checkpoint's tensors of it, or
    its bias)."""
    return entry.role in ("attention", "bias") and (".self_attn.k_proj." in entry.name
                                                    or ".self_attn.v_proj." in entry.name)


def _replicated_kv_bytes(one_tensor_bytes: int, spec: ModelSpec) -> int:
    """Bytes of a key or value projection on one rank when the tensor-parallel degree exceeds the key/value
    heads: vLLM's QKVParallelLinear gives every rank ``max(1, kv_heads // tp)`` = one whole head (replicated
    ``tp // kv_heads`` times), not ``1 / tp`` of the projection."""
    return -(-one_tensor_bytes // spec.num_kv_heads)


#: the fused query/key/value projections vLLM builds as one QKVParallelLinear: Phi-3's qkv_proj (phi3.py through
#: llama.py), Falcon's query_key_value (falcon.py), GPT-2's c_attn (gpt2.py; MHA, so never more ranks than key/value
#: heads); a quantized checkpoint's tensors of them (qweight, scales, ...) share the module's name
_FUSED_QKV_NAMES: tuple[str, ...] = (".self_attn.qkv_proj.", ".self_attention.query_key_value.", ".attn.c_attn.")


def _is_fused_qkv_projection(entry: TensorEntry) -> bool:
    """A fused query/key/value projection of the decoder (its weight, or a quantized checkpoint's tensors of it, or
    its bias)."""
    return entry.role in ("attention", "bias") and any(part in entry.name for part in _FUSED_QKV_NAMES)


def _fused_qkv_bytes(one_tensor_bytes: int, spec: ModelSpec, tensor_parallel: int) -> int:
    """Bytes of a fused q/k/v projection on one rank: vLLM's QKVParallelLinear (layers/linear.py, v0.11 to v0.19)
    gives each rank ``heads / tp`` query heads and ``max(1, kv_heads / tp)`` whole key and value heads, so its rows
    are ``(heads / tp + 2 × max(1, kv_heads // tp)) × head_dim`` of the tensor's ``(heads + 2 × kv_heads) ×
    head_dim``; where tp exceeds the key/value heads that is more than ``1 / tp`` of the tensor (each key/value
    head replicated ``tp / kv_heads`` times).  A quantized tensor's bytes follow its output rows alike."""
    heads, kv_heads = spec.num_attention_heads, spec.num_kv_heads
    rank_heads = -(-heads // tensor_parallel) + 2 * max(1, kv_heads // tensor_parallel)
    return -(-one_tensor_bytes * rank_heads // (heads + 2 * kv_heads))


#: MiniMax-M2's full-width q/k norms, which vLLM splits over the tensor-parallel ranks
_MINIMAX_M2_SPLIT_NORMS: tuple[str, ...] = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")


def _minimax_m2_norm_bytes(one_tensor_bytes: int, entry: TensorEntry, shards: int) -> int:
    """Bytes of one of MiniMax-M2's q/k norms on one rank: vLLM's minimax_m2.py builds them as
    ``MiniMaxText01RMSNormTP`` (layers/mamba/linear_attn.py), ``torch.ones(int(width / shards))`` in the model's
    dtype, each rank loading its slice: the query norm in tensor-parallel shards, the key norm in
    min(tp, kv_heads) (``weight_shard_world_size=total_num_kv_heads`` where the key/value heads are replicated;
    the first releases split it tp ways there too and could not run that layout: its weight no longer matched a
    rank's key width)."""
    return int(entry.elements / shards) * (one_tensor_bytes // entry.elements)


def _router_bytes(one_tensor_bytes: int, entry: TensorEntry) -> int:
    """Bytes of one tensor of `entry` as an engine that allocates routers in float32 holds it: a ``router`` row at
    4 bytes an element (never less than its format's bytes), any other row as it is."""
    return max(one_tensor_bytes, 4 * entry.elements) if entry.role == "router" else one_tensor_bytes


def _fp32_router_note(engine: EngineProfile, spec: ModelSpec, scheme: WeightScheme, tensor_parallel: int) -> str:
    """The plan's note on routers an engine holds in float32: the bytes that adds over the format's own bytes,
    over all layers (routers are whole on every tensor-parallel rank, split by layer over pipeline stages)."""
    extra = sum((_router_bytes(one, entry) - one) * entry.count for entry, one in _weight_rows(spec, scheme))
    return (f"{engine.routers_at_fp32(spec)}: the device weights count them at 4 bytes an element, "
            f"{extra / GIB:.2f} GiB over the weights' format in all (whole on each of the {tensor_parallel} "
            "tensor-parallel rank(s), split by layer over pipeline stages).")


@lru_cache(maxsize=256)
def _weight_rows(spec: ModelSpec, scheme: WeightScheme) -> tuple[tuple[TensorEntry, int], ...]:
    """Each inventory row (split by format where a scheme mixes them) with the bytes of ONE of its tensors."""
    return assigned_bytes(spec, scheme)


@lru_cache(maxsize=256)
def _weights_by_role(spec: ModelSpec, scheme: WeightScheme) -> dict[str, int]:
    by_role: dict[str, int] = {}
    for entry, one in _weight_rows(spec, scheme):
        by_role[entry.role] = by_role.get(entry.role, 0) + one * entry.count
    return {role: size for role, size in by_role.items() if size}


_parameter_count = lru_cache(maxsize=256)(parameter_count)


def _embedding_on_every_stage(spec: ModelSpec, scheme: WeightScheme, tensor_parallel: int,
                              home: list[int]) -> list[int]:
    """`home` (each stage's tensors outside the layers, where the stages that run them hold them) with a copy of the
    input embedding on every stage after the first, as vLLM's qwen3_5.py builds it (`EMBEDDING_ON_EVERY_STAGE`); the
    last stage's tied lm_head is that copy, which `home` holds already."""
    embedding = sum(_vocabulary_bytes(one, entry, spec, tensor_parallel) * entry.per_layer
                    for entry, one in _weight_rows(spec, scheme) if entry.role == "embedding" and not entry.layers)
    last = len(home) - 1
    return [size + (embedding if stage and not (stage == last and spec.tie_word_embeddings) else 0)
            for stage, size in enumerate(home)]


def _expert_format(spec: ModelSpec, scheme: WeightScheme) -> str:
    """The label of the one weight format a MoE model's routed experts are stored in under `scheme` (``mxfp4``,
    ``fp8-block128``, ``bf16``...; "" when not a MoE model or
    when the scheme does not give one format: a GGUF mix, per-row formats, a checkpoint's own tensors other than
    fp8 [128, 128] blocks, whose ``weight_scale_inv`` tensors say the format of every quantized linear)."""
    if scheme.checkpoint is not None and scheme.checkpoint.format == "fp8-block128" and spec.is_moe:
        return "fp8-block128"
    if not spec.is_moe or scheme.gguf_file_type or scheme.mix or (scheme.checkpoint_rows
                                                                  and not _gptq_headers_with_config(scheme)):
        return ""
    return scheme.quantized.label() if "expert" in scheme.quantized_roles else scheme.unquantized


def _linear_format(spec: ModelSpec, scheme: WeightScheme) -> str:
    """The label of the one format `scheme` stores the decoder's linear layers (attention, MLP and, for a MoE model,
    the experts), the embedding and the lm_head in ("" when they are not all in one format, or when the scheme is a
    GGUF mix, per-row formats or a checkpoint's own tensors)."""
    if scheme.gguf_file_type or scheme.mix or scheme.checkpoint_rows or scheme.keep:
        return ""
    roles = {"attention", "mlp", "embedding", "lm_head"} | ({"expert"} if spec.is_moe else set())
    if roles <= scheme.quantized_roles:
        return scheme.quantized.label()
    if not roles & scheme.quantized_roles:
        return scheme.unquantized
    quantized = scheme.quantized.label()
    return quantized if quantized == scheme.unquantized else ""


def _dense_format(spec: ModelSpec, scheme: WeightScheme) -> str:
    """The label of the one format `scheme` stores the decoder's attention and MLP linear layers in ("" when a GGUF
    mix, per-row formats, a checkpoint's own tensors or kept modules leave them in more than one, or when they are
    not quantized).  A kept module outside them (GPTQ's lm_head, a router) leaves them in one."""
    if (scheme.gguf_file_type or scheme.mix or (scheme.checkpoint_rows and not _gptq_headers_with_config(scheme))
            or not {"attention", "mlp"} <= scheme.quantized_roles):
        return ""
    if scheme.keep and any(chosen != scheme.quantized for entry, chosen in assign(spec, scheme)
                           if entry.role in ("attention", "mlp")):
        return ""
    return scheme.quantized.label()


#: MLA's key/value up-projection as a Hugging Face checkpoint's headers name it (``kv_b_proj``) and a GGUF's
#: (llama.cpp's ``attn_kv_b``)
_KV_B_NAMES = (".kv_b_proj.", ".attn_kv_b.")


@lru_cache(maxsize=256)
def _quantized_kv_b_layers(spec: ModelSpec, scheme: WeightScheme) -> frozenset[int]:
    """The decoder layers of an MLA model whose ``kv_b_proj`` `scheme` stores quantized: by its assigned format
    (`schemes.assign`: a quantized format, a GGUF type other than F32, F16 or BF16, which vLLM's GGUF loader leaves
    unquantized in 0.19, ``unquant_names``), or for a checkpoint's own header rows by its tensors (a row other than
    ``weight``, such as ``weight_scale_inv``, ``qweight`` or ``weight_scale``, or a ``weight`` of under two bytes an
    element: fp8, packed codes, a GGUF block type).  A keep list (``modules_to_not_convert``, ModelOpt's
    ``exclude_modules``) that names the module leaves its layers out.  Empty for a model without MLA."""
    if not spec.is_mla:
        return frozenset()
    layers: set[int] = set()
    if scheme.checkpoint_rows:
        for entry, one in scheme.checkpoint_rows:
            if not any(name in entry.name for name in _KV_B_NAMES):
                continue
            if not entry.name.endswith(".weight") or one < 2 * math.prod(entry.shape):
                layers.update(entry.layers)
        return frozenset(layers)
    for entry, chosen in assign(spec, scheme):
        if (entry.name.endswith("kv_b_proj.weight") and chosen.is_quantized
                and not (chosen.name == "ggml" and chosen.ggml_type in ("F32", "F16", "BF16"))):
            layers.update(entry.layers)
    return frozenset(layers)


def _gptq_headers_with_config(scheme: WeightScheme) -> bool:
    """A GPTQ checkpoint's header rows planned with config.json's quantization_config (`_is_checkpoint_gptq`, its
    `quantized` the config's GPTQ format and its `keep` the config's): the rows are that format's tensors (qweight,
    qzeros, scales, g_idx), so the engine's layout terms for the format (`_dense_format`, `_expert_format`) apply."""
    return _is_checkpoint_gptq(scheme) and scheme.quantized.layout == "gptq"


def _build_layout(spec: ModelSpec, scheme: WeightScheme, kv_dtype_name: str,
                  tensor_parallel: int, pipeline_parallel: int, vocabulary_everywhere: bool = False,
                  fp32_routers: bool = False, mamba_cache_mode: str = "none", chunked_local: bool = True,
                  expert_parallel: bool = False, data_parallel: int = 1, draft_layers: int = 0,
                  draft_front_bytes: int = 0) -> _Layout:
    """Per stage: the weights on one rank and the KV coefficients.  `vocabulary_everywhere` puts the
    tensors outside the decoder layers (embedding, final norm, lm_head) on every stage, as the engine's
    model code does for some families when `pipeline_parallel` > 1; `fp32_routers` holds the rows of role
    ``router`` at 4 bytes an element, as the engine allocates them for some families (`_router_bytes`);
    `mamba_cache_mode` sets the blocks a hybrid model's sequence takes in each linear group (`hybrid_kv`);
    `chunked_local` holds a chunked local attention layer's chunk, not the whole context (`kv_cache.held_window`);
    `expert_parallel` puts the most loaded rank's whole routed experts on each rank (`_expert_parallel_bytes`).
    At `data_parallel` > 1 a MoE model's routed experts are spread over the data x tensor ranks of its MoE layers
    (`engines.base.Stage.moe_ranks`: vLLM's FusedMoEParallelConfig.make), sliced or whole as above, while the rest
    stays split by tensor parallelism alone (replicated across the data-parallel ranks), except the shared experts
    some model classes hold whole under sequence-parallel MoE (`engines.vllm_parallel.shared_experts_whole`).
    `draft_layers` speculative-decoding layers (vLLM's ``mtp``: the checkpoint's MTP layers, `engines.vllm_speculative`)
    run on the last stage: each the model's own decoder layer as the last one is held on a rank (the same module class
    built with the same quant_config) plus `draft_front_bytes` outside it, and each one more full-attention layer of
    the last one's KV bytes a token in the pool."""
    moe_ranks = tensor_parallel * data_parallel if spec.is_moe else tensor_parallel
    whole_shared = shared_experts_whole(spec, tensor_parallel, data_parallel, expert_parallel)
    if pipeline_parallel > spec.num_layers:
        raise InvalidSpec("parallel.pipeline", pipeline_parallel,
                          f"more pipeline stages than the model's {spec.num_layers} layers")
    stages = _stage_ranges(spec.num_layers, pipeline_parallel)
    last = pipeline_parallel - 1
    stage_of = [stage for stage, (start, stop) in enumerate(stages) for _ in range(start, stop)]
    weights = [0] * pipeline_parallel
    last_layer = 0  # the last decoder layer's bytes on one rank, which each draft layer repeats
    home = [0] * pipeline_parallel  # the tensors outside the layers where the stages that run them hold them
    outside = 0  # ... and all of them once (a tied lm_head is the embedding itself)
    for entry, one in _weight_rows(spec, scheme):
        per_rank = _sharded_bytes(_router_bytes(one, entry) if fp32_routers else one, entry,
                                  tensor_parallel) * entry.per_layer
        if _is_vocabulary(entry):
            per_rank = _vocabulary_bytes(one, entry, spec, tensor_parallel) * entry.per_layer
        if _is_column_parallel_bias(entry, spec):
            per_rank = -(-one // tensor_parallel) * entry.per_layer
        if tensor_parallel > spec.num_kv_heads and not spec.is_mla and _is_kv_projection(entry):
            per_rank = _replicated_kv_bytes(one, spec) * entry.per_layer
        if tensor_parallel > spec.num_kv_heads > 0 and not spec.is_mla and _is_fused_qkv_projection(entry):
            per_rank = _fused_qkv_bytes(one, spec, tensor_parallel) * entry.per_layer
        if spec.model_type == "minimax_m2" and entry.name.endswith(_MINIMAX_M2_SPLIT_NORMS):
            per_rank = _minimax_m2_norm_bytes(one, entry, min(tensor_parallel, spec.num_kv_heads)
                                              if entry.name.endswith("k_norm.weight") else tensor_parallel)
        if moe_ranks > tensor_parallel and _is_routed_expert(entry, spec):  # flatten_tp_across_dp: the expert's rows
            per_rank = _sharded_bytes(one, entry, moe_ranks) * entry.per_layer  # over data x tensor ranks
        if moe_ranks > 1 and _is_sharded_expert_bias(entry, spec):
            per_rank = -(-one // moe_ranks) * entry.per_layer
        if expert_parallel and moe_ranks > 1 and _is_routed_expert(entry, spec):
            per_rank = _expert_parallel_bytes(one, entry, spec, moe_ranks)
        if whole_shared and entry.role == "mlp" and _SHARED_EXPERT_NAME in entry.name:
            per_rank = one * entry.per_layer
        if entry.layers:
            for index in entry.layers:  # once per layer, not per layer and stage (4,096 layers x 1,024 stages)
                weights[stage_of[index]] += per_rank
            if draft_layers and spec.num_layers - 1 in entry.layers:
                last_layer += per_rank
            continue
        if entry.role == "vision":  # on every stage, the safe side: vLLM's gemma3_mm.py builds it with no rank test
            weights = [size + per_rank for size in weights]
            continue
        outside += per_rank
        if entry.role in ("embedding", "position_embedding"):
            home[0] += per_rank
            if entry.role == "embedding" and spec.tie_word_embeddings and pipeline_parallel > 1:
                home[last] += per_rank  # the tied lm_head is a second copy on the last stage
        else:  # final norm, lm_head
            home[last] += per_rank
    everywhere = outside if vocabulary_everywhere and pipeline_parallel > 1 else 0
    held = [everywhere] * pipeline_parallel if everywhere else home
    if spec.model_type in EMBEDDING_ON_EVERY_STAGE and not everywhere:
        held = _embedding_on_every_stage(spec, scheme, tensor_parallel, home)
    stage_kv = []
    if spec.linear_attention is not None:  # a hybrid model (Qwen3-Next): vLLM's blocks and states per stage
        stage_kv = [_StageKV((), hybrid_kv(spec, kv_dtype_name, tensor_parallel, layers, mamba_cache_mode))
                    for layers in stages]
    for start, stop in stages if spec.linear_attention is None else ():
        groups: dict[int | None, int] = {}
        for layer in kv_layers(spec)[start:stop]:
            window = held_window(layer, chunked_local)
            groups[window] = groups.get(window, 0) + layer_bytes_per_token(layer, kv_dtype_name, tensor_parallel)
        stage_kv.append(_StageKV(tuple(groups.items())))
    if draft_layers:
        weights[last] += draft_layers * (last_layer + draft_front_bytes)
        draft_kv = draft_layers * layer_bytes_per_token(kv_layers(spec)[-1], kv_dtype_name, tensor_parallel)
        full = dict(stage_kv[last].by_window)
        full[None] = full.get(None, 0) + draft_kv
        stage_kv[last] = _StageKV(tuple(full.items()), stage_kv[last].hybrid)
    return _Layout(tensor_parallel, pipeline_parallel, stages,
                   tuple(size + extra for size, extra in zip(weights, held, strict=True)), tuple(stage_kv),
                   everywhere, tuple(extra - own for extra, own in zip(held, home, strict=True)),
                   _expert_format(spec, scheme), _linear_format(spec, scheme), expert_parallel,
                   _dense_format(spec, scheme), _quantized_kv_b_layers(spec, scheme))


def _hybrid_note(hybrid: HybridKV, block_size: int, tensor_parallel: int, engine: EngineProfile | None) -> str:
    """The plan's note on a hybrid model's KV cache: vLLM's raised attention block, the states per sequence, and the
    prefix-caching mode that sets how many blocks those take (the release's default: `MAMBA_CACHE_MODES`)."""
    block = hybrid.block_size(block_size)
    blocks = "one block" if hybrid.state_blocks == 1 else f"{hybrid.state_blocks} blocks"
    note = (f"The {hybrid.linear_layers} Gated DeltaNet layers hold a fixed state per sequence "
            f"({hybrid.state_bytes:,} bytes each per device at tensor parallel {tensor_parallel}), not tokens: vLLM "
            f"raises the attention block to {block} tokens so that one page ({hybrid.page_bytes(block_size):,} bytes) "
            f"holds a state, pads the states to it, and gives each sequence ceil(tokens / {block}) blocks in "
            f"{hybrid.full_groups} full-attention group(s) and {blocks} in each of {hybrid.linear_groups} linear "
            f"group(s) of {hybrid.group_size} layers; context and sequences are counted in those blocks.")
    if engine is None or engine.name != "vllm":
        return note + " (No engine: one block per linear group, vLLM's count with prefix caching off.)"
    return (note + f" vLLM {engine.version} runs a hybrid model given no prefix-caching flag with "
            f"{MAMBA_CACHE_MODES[engine.version]}; nibble plans that default (plan requests have no prefix-caching "
            "field).")


def _chunked_note(spec: ModelSpec, engine: EngineProfile | None, chunked_local: bool) -> str:
    """The plan's note on chunked local attention (Llama 4): what its layers hold in this engine release and why
    (`engines.vllm_releases.CHUNKED_LOCAL_ATTENTION`)."""
    chunk = spec.attention_chunk_size
    layers = (f"Llama 4's {len(spec.chunked_layers)} chunked local attention layers (its RoPE layers; the other "
              f"{spec.num_layers - len(spec.chunked_layers)} are global)")
    if engine is None or engine.name != "vllm":
        return (f"{layers} are planned at one chunk of {chunk:,} tokens per sequence (rounded up to blocks), what "
                "their attention needs; an engine that allocates them as full attention (vLLM 0.11) holds the whole "
                "context in them.")
    why = CHUNKED_LOCAL_ATTENTION[engine.version]
    if not chunked_local:
        return (f"{layers} are planned as full attention, the whole context per sequence: {why}.  Releases from "
                f"vLLM PR #29627 on hold only the current chunk ({chunk:,} tokens) in them.")
    return (f"{layers} are planned at one chunk of {chunk:,} tokens per sequence (min(context, chunk) rounded up to "
            f"blocks), not the whole context: {why}.  vLLM's \"Maximum concurrency\" reserves for each request a "
            "chunk plus the tokens in flight in those groups (ChunkedLocalAttentionSpec.max_memory_usage_bytes); "
            "vLLM 0.11 (and any release run with VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE=0, "
            "--disable-hybrid-kv-cache-manager, a KV connector or EAGLE) holds the whole context in them.")


def _windowed_note(windowed: WindowedKV, engine: EngineProfile, context_length: int) -> str:
    """The plan's note on a model with windowed layers under vLLM: how its KV cache is charged in vLLM's groups and
    blocks (`kv_cache.WindowedKV`), and why vLLM's own logged figures are not context x sequences."""
    windows = sorted({window for kind, window, _ in windowed.groups if window is not None})
    return (f"vLLM {engine.version} holds this model's layers in groups of {windowed.group_size} by attention kind "
            f"(windows {', '.join(f'{window:,}' for window in windows)} tokens) and frees the blocks behind each "
            f"window: a sequence of {context_length:,} tokens takes {windowed.decode_blocks(context_length):,} "
            f"blocks of the pool while it decodes, and one request at its largest prefill step "
            f"{windowed.peak_blocks(context_length):,} (the window, or chunk, plus the {windowed.in_flight_tokens:,} "
            "tokens in flight: what vLLM needs for one request at start-up, max_memory_usage_bytes).  The plan "
            "charges one sequence that and the others their decoding blocks; vLLM's \"Maximum concurrency\" "
            "(engine_max_concurrency) reserves the tokens in flight for every request at once, so it is lower than "
            "the sequences the pool holds (max_concurrent_sequences), and its \"GPU KV cache size\" "
            "(kv_capacity_tokens) counts blocks per group, not context x sequences.")


# ---------------------------------------------------------------------------
# Evaluating one workload against a layout


@dataclass(frozen=True, slots=True)
class _StageTerms:
    """Per stage of one layout: the bytes that do not vary with context or sequences, and their parts."""

    fixed: tuple[int, ...]
    activations: tuple[int, ...]
    overheads: tuple[int, ...]
    activation_basis: str
    overhead_basis: str
    #: per stage, the engine's activation term that grows with max_model_len (`EngineProfile.context_activation`)
    context: tuple[ContextTerm | None, ...] = ()
    #: per stage, what the engine allocates outside the memory budget (`EngineProfile.outside_budget`)
    outside: tuple[ContextTerm | None, ...] = ()
    #: per stage, its KV cache in the engine's groups and blocks where it has windowed layers
    #: (`EngineProfile.windowed_kv`), which replaces the layers' own figure (`_StageKV.by_window`)
    windowed: tuple[WindowedKV | None, ...] = ()
    #: per stage, one device of it as the engine sees it (`_Evaluator.stage`), which `_kv_capacity` asks about
    stages: tuple[Stage, ...] = ()
    #: the fits predicate of this layout (`_Evaluator.build_predicate`) reads a context only as the whole KV blocks
    #: its full-attention layers hold, so it answers alike for every context of one block: no activation sized by
    #: the workload, no engine term sized by max_model_len (`context`) or outside the budget that grows with it, and
    #: no windowed, chunked or hybrid layers
    block_granular: bool = False

    def kv_bytes(self, layout: _Layout, stage: int, context_length: int, sequences: int, block_size: int) -> int:
        """The KV bytes `sequences` sequences of `context_length` tokens take on one device of `stage`: the
        engine's blocks where it groups windowed layers (`windowed`), else the layers' held tokens."""
        windowed = self.windowed[stage] if self.windowed else None
        if windowed is not None:
            return windowed.bytes(context_length, sequences)
        return layout.stage_kv[stage].bytes_per_sequence(context_length, block_size) * sequences

    def context_bytes(self, stage: int, context_length: int) -> int:
        """The engine's max_model_len-sized activation bytes of `stage` when started for `context_length`."""
        term = self.context[stage] if self.context else None
        return 0 if term is None else term.bytes_at(context_length)

    def outside_bytes(self, stage: int, context_length: int) -> int:
        """What the engine allocates outside the budget on one device of `stage` when started for `context_length`."""
        term = self.outside[stage] if self.outside else None
        return 0 if term is None else term.bytes_at(context_length)


#: `_Evaluator.stage_terms` shared by every plan of the same model, KV dtype, evaluator key and layout (the engine's
#: profiling terms are pure functions of them, and a request asks them once per weight format)
_SHARED_STAGE_TERMS: dict[tuple[object, ...], _StageTerms] = {}

#: `_Evaluator.key_id` by ``(spec, KV dtype, *_Evaluator.key)``: a small integer per distinct evaluator, up to 4096 of
#: them; past that the tuple itself is its own id (never equal to an integer), so ids stay one-to-one with the keys.
#: Never emptied: the stage-terms and predicate caches key on these ids, which must not be given to another key
_EVALUATOR_KEY_IDS: dict[tuple[object, ...], int] = {}


def _evaluator_key_id(key: tuple[object, ...]) -> object:
    """`_Evaluator.key_id` of `key`: hashed here once per plan, where the caches' keys would hash it at every
    lookup."""
    found = _EVALUATOR_KEY_IDS.get(key)
    if found is not None:
        return found
    if len(_EVALUATOR_KEY_IDS) >= 4096:
        return key
    found = _EVALUATOR_KEY_IDS[key] = len(_EVALUATOR_KEY_IDS)
    return found


@dataclass(frozen=True, slots=True)
class _Evaluator:
    """The per-device function the verdict and every solver share.

    ``used(stage) = weights(stage) + overhead(stage) + activations + kv_per_sequence(stage, context)
    × sequences``.  With an engine profile the activations are the engine's profiling peak, a
    constant per stage; with the generic model (no engine, no given activation bytes) they grow
    with the workload up to ``max_batched_tokens``.  A device fits when ``used <= usable`` and what the engine
    allocates outside its budget (`_StageTerms.outside`, by the context it is started for) is at most
    `free_outside_bytes`.
    """

    spec: ModelSpec
    options: PlanOptions
    usable_bytes: int
    engine: EngineProfile | None
    limits: BatchLimits
    #: the devices' compute capability and SM count (`catalog.device_facts`), by which the engine picks its kernels
    device: DeviceFacts = UNKNOWN_DEVICE
    #: ``capacity - usable`` of one device: the memory the budget leaves free, from which the engine takes what it
    #: allocates outside it (`_StageTerms.outside`)
    free_outside_bytes: int = 0
    #: bytes of one element of the dtype the engine runs the model in on these devices (4: float32,
    #: `EngineProfile.model_dtype_bytes`), at which its activation terms are charged
    element_bytes: int = 2
    #: `stage_terms` by (tensor, pipeline, stage layers, expert format)
    _terms: dict[tuple[object, ...], _StageTerms] = field(default_factory=dict)
    #: `key_id`, `vocabulary_everywhere`'s engine fact, `fp32_routers`, `mamba_cache_mode`, `chunked_local`,
    #: `context_steps` and `context_cap` (`_context_cap`):
    #: facts of (engine, model, evaluator) found once here (`__post_init__`), not at every layout, solver or format
    #: that asks them
    _key_id: object = field(init=False, repr=False, compare=False)
    _vocabulary_everywhere: bool = field(init=False, repr=False, compare=False)
    _fp32_routers: bool = field(init=False, repr=False, compare=False)
    _mamba_cache_mode: str = field(init=False, repr=False, compare=False)
    _chunked_local: bool = field(init=False, repr=False, compare=False)
    _context_steps: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _context_cap: tuple[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        engine, spec = self.engine, self.spec
        vllm = engine is not None and engine.name == "vllm"
        facts = (_evaluator_key_id((spec, self.options.kv_cache_dtype, *self.key)),
                 engine is not None and engine.vocabulary_on_every_stage(spec) is not None,
                 engine is not None and engine.routers_at_fp32(spec) is not None,
                 vllm_mamba_cache_mode(engine.version) if engine is not None and vllm else "none",
                 vllm_chunked_local_attention(engine.version) if engine is not None and vllm else True,
                 () if engine is None or self.options.activation_bytes is not None
                 else engine.activation_context_steps(spec, self.limits))
        for name, value in zip(("_key_id", "_vocabulary_everywhere", "_fp32_routers", "_mamba_cache_mode",
                                "_chunked_local", "_context_steps"), facts, strict=True):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_context_cap", _context_cap(self))

    def draft(self) -> tuple[int, int]:
        """(draft layers, bytes outside each one's decoder layer on every rank) of the plan's speculative decoding
        (`_build_layout`): vLLM's MTP layers and their ``eh_proj`` and norms (`mtp_front_bytes`); (0, 0) without a
        drafter model."""
        layers = self.limits.draft_layers
        return layers, mtp_front_bytes(self.spec, self.element_bytes) if layers else 0

    @property
    def variable_activations(self) -> bool:
        return self.engine is None and self.options.activation_bytes is None

    @property
    def key(self) -> tuple[object, ...]:
        options = self.options
        return (self.usable_bytes, options.runtime_overhead_bytes, options.block_size, self.limits,
                options.activation_bytes, options.engine, options.engine_version, self.device,
                self.free_outside_bytes, options.enforce_eager, self.element_bytes, options.expert_parallel,
                options.data_parallel)

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        """The devices' CUDA compute capability (None: not known), by which the engine refuses formats: the
        `device`'s."""
        return self.device.compute_capability

    @property
    def context_steps(self) -> tuple[int, ...]:
        """The contexts from which the engine's profiling peak changes (`EngineProfile.activation_context_steps`;
        none without an engine or with the request's activation bytes)."""
        return self._context_steps

    @property
    def key_id(self) -> object:
        """A small stand-in for ``(spec, KV dtype, *key)`` (`_evaluator_key_id`): equal for evaluators whose terms
        are equal, cheap to hash in the caches' keys (the spec's hash walks every field)."""
        return self._key_id

    def device_refusal(self, weight_formats: tuple[tuple[str, WeightFormat | None], ...],
                       quant_method: str = "") -> str | None:
        """Why the engine cannot run weights stored as `weight_formats` (a scheme's labels and formats,
        `_ModelTerms.formats`, read from a quantization_config of `quant_method`) on these devices at all
        (`EngineProfile.device_refusal`: the release's minimum compute capability for a format, a format it loads
        nowhere or not at the model's dtype), then why its attention runs no KV cache of the plan's dtype there
        (`EngineProfile.kv_cache_backend`: vLLM's fp8 cache), or None."""
        if self.engine is None:
            return None
        for weight_format, stored in weight_formats:
            refused = self.engine.device_refusal(self.spec, weight_format, self.compute_capability, stored,
                                                 self.options.model_dtype, quant_method)
            if refused is not None:
                return refused
        return self.engine.kv_cache_backend(self.spec, self.options.kv_cache_dtype, self.compute_capability,
                                            self.options.block_size).refusal

    def vocabulary_everywhere(self, pipeline_parallel: int) -> bool:
        """Whether every one of `pipeline_parallel` stages holds the embedding, final norm and lm_head:
        the engine's model code for this model builds them on each stage."""
        return pipeline_parallel > 1 and self._vocabulary_everywhere

    def fp32_routers(self) -> bool:
        """Whether the engine allocates this model's MoE routers in float32 (`EngineProfile.routers_at_fp32`)."""
        return self._fp32_routers

    def mamba_cache_mode(self) -> str:
        """The ``mamba_cache_mode`` a hybrid model's linear groups are planned in: the vLLM release's default
        (`engines.vllm_releases.mamba_cache_mode`: "align", two blocks per sequence, where it turns prefix caching on
        for hybrid models), "none" (one block) for the generic estimate."""
        return self._mamba_cache_mode

    def chunked_local(self) -> bool:
        """Whether chunked local attention layers (Llama 4) hold only their chunk: the vLLM release's default
        (`engines.vllm_releases.chunked_local_attention`: from PR #29627, not in 0.11); the attention's own need without
        an engine."""
        return self._chunked_local

    def stage(self, layout: _Layout, stage: int) -> Stage:
        return Stage(self.spec, layout.tensor_parallel, layout.pipeline_parallel, layout.stage_layers[stage],
                     stage == layout.pipeline_parallel - 1, self.element_bytes, layout.expert_parallel,
                     self.options.data_parallel)

    def stage_terms(self, layout: _Layout) -> _StageTerms:
        """Activation and overhead bytes of each stage that do not depend on the workload."""
        key = (layout.tensor_parallel, layout.pipeline_parallel, layout.stage_layers, layout.expert_format,
               layout.linear_format, layout.expert_parallel, layout.dense_format, layout.quantized_kv_b)
        found = self._terms.get(key)
        if found is None:
            shared = (self._key_id, *key)
            found = _SHARED_STAGE_TERMS.get(shared)
            if found is None:
                found = self._stage_terms(layout)
                if len(_SHARED_STAGE_TERMS) < 4096:
                    _SHARED_STAGE_TERMS[shared] = found
            self._terms[key] = found
        return found

    def _stage_terms(self, layout: _Layout) -> _StageTerms:
        options = self.options
        activations, overheads = [], []
        context: list[ContextTerm | None] = []
        outside: list[ContextTerm | None] = []
        windowed: list[WindowedKV | None] = []
        activation_basis = overhead_basis = ""
        stages = tuple(self.stage(layout, index) for index in range(layout.pipeline_parallel))
        for stage in stages:
            outside.append(None if self.engine is None else self.engine.outside_budget(
                stage, options.kv_cache_dtype, self.limits, options.enforce_eager, self.device, layout.expert_format,
                layout.dense_format))
            windowed.append(None if self.engine is None else self.engine.windowed_kv(
                stage, options.kv_cache_dtype, options.block_size, self.limits))
            context.append(None if options.activation_bytes is not None or self.engine is None
                           else self.engine.context_activation(stage, options.kv_cache_dtype, self.limits))
            if options.activation_bytes is not None:
                activation = options.activation_bytes
                activation_basis = "given by the request (runtime.activation_bytes)"
            elif self.engine is None:
                activation = 0  # the generic estimate grows with the workload: see activation_bytes
            else:
                term = self.engine.activation(stage, self.limits, layout.expert_format, self.device)
                activation = term.bytes
                if stage.is_last:
                    activation_basis = term.basis
            if options.runtime_overhead_bytes is not None:
                overhead = options.runtime_overhead_bytes
                overhead_basis = "given by the request (runtime.overhead_bytes)"
            elif self.engine is None:
                overhead = DEFAULT_RUNTIME_OVERHEAD_BYTES
                overhead_basis = RUNTIME_OVERHEAD_BASIS.format(gib=overhead / GIB)
            else:
                non_torch = self.engine.non_torch(stage)
                graphs = self.engine.cuda_graphs(stage, self.limits, options.enforce_eager, options.kv_cache_dtype,
                                                 self.device)
                overhead = non_torch.bytes + graphs.bytes
                overhead_basis = f"non-torch memory: {non_torch.basis}; CUDA graphs: {graphs.basis}"
            layout_term = (None if self.engine is None
                           else self.engine.expert_layout(stage, layout.expert_format, self.device))
            if layout_term is not None:  # weights the engine's kernels hold beyond the checkpoint's
                overhead += layout_term.bytes
                overhead_basis += f"; routed experts' kernel layout: {layout_term.basis}"
            dense_term = (None if self.engine is None
                          else self.engine.linear_layout(stage, layout.dense_format, self.device))
            if dense_term is not None:  # the dense linear layers as the engine's kernels hold them
                overhead += dense_term.bytes
                overhead_basis += f"; linear layers' kernel layout: {dense_term.basis}"
            allocation = None if self.engine is None else self.engine.weight_allocation(stage, layout.linear_format)
            if allocation is not None and allocation.bytes:  # the allocator's rounding of the weights' blocks
                overhead += allocation.bytes
                overhead_basis += f"; weights' allocator blocks: {allocation.basis}"
            copies = (None if self.engine is None or not layout.quantized_kv_b
                      else self.engine.attention_weight_copy(stage, layout.quantized_kv_b, self.limits.draft_layers))
            if copies is not None:  # what the attention copies of its weights after loading (MLA's kv_b_proj)
                overhead += copies.bytes
                overhead_basis += f"; attention's weight copies: {copies.basis}"
            drafted = self.draft_layout_bytes(stage, layout_term, dense_term, allocation)
            if drafted:
                overhead += drafted
                overhead_basis += (f"; the MTP drafter's layers' share of those kernel layouts and allocator blocks "
                                   f"({drafted:,} bytes: each a MoE layer's share of the experts' layout and a "
                                   "decoder layer's average share of the rest)")
            if overhead < 0:  # the kernels' layouts hold less than nibble charges by more than all other overhead
                overhead_basis += (f"; {-overhead:,} bytes of the kernel layouts' saving on the checkpoint's tensors "
                                   "not credited (the runtime overhead is not taken below zero: the safe side)")
                overhead = 0
            activations.append(activation)
            overheads.append(overhead)
        fixed = tuple(a + o for a, o in zip(activations, overheads, strict=True))
        block_granular = (not self.variable_activations and all(term is None for term in context)
                          and all(term is None for term in windowed)
                          and all(term is None or term.bytes_at(1) == term.bytes_at(MAX_CONTEXT_SEARCHED)
                                  for term in outside)
                          and all(kv.hybrid is None and all(window is None for window, _ in kv.by_window)
                                  for kv in layout.stage_kv))
        return _StageTerms(fixed, tuple(activations), tuple(overheads), activation_basis, overhead_basis,
                           tuple(context) if any(term is not None for term in context) else (),
                           tuple(outside) if any(term is not None for term in outside) else (),
                           tuple(windowed) if any(term is not None for term in windowed) else (), stages,
                           block_granular)

    def draft_layout_bytes(self, stage: Stage, experts: Term | None, dense: Term | None,
                           allocation: Term | None) -> int:
        """What the kernel layouts and allocator blocks the engine charges per decoder layer of `stage`
        (`EngineProfile.expert_layout`, ``linear_layout``, ``weight_allocation``) add for the drafter's MTP layers on
        the last stage (`draft`), each a MoE decoder layer like the model's last: the experts' term over the stage's
        MoE layers, the others over all its layers (their average layer, the embedding's and dense MLPs' share
        included: at least an MTP layer's), rounded up; 0 without draft layers."""
        draft_layers = self.limits.draft_layers
        if not draft_layers or not stage.is_last:
            return 0
        start, stop = stage.layers
        moe_layers = sum(1 for layer in range(start, stop) if layer not in self.spec.dense_layers)
        total = 0
        if experts is not None and experts.bytes > 0 and self.spec.is_moe and moe_layers:
            total += -(-experts.bytes * draft_layers // moe_layers)
        for term in (dense, allocation):
            if term is not None and term.bytes > 0:
                total += -(-term.bytes * draft_layers // (stop - start))
        return total

    def activation_coefficients(self, tensor_parallel: int) -> tuple[int, int]:
        """(bytes per batched token, bytes per sampled sequence) of the generic activation estimate."""
        spec = self.spec
        mlp_width = max(spec.intermediate_size if not spec.is_moe or spec.dense_layers else 0,
                        spec.moe_intermediate_size * spec.experts_per_token + spec.shared_expert_width)
        attention_width = (spec.num_attention_heads + 2 * spec.num_kv_heads) * spec.head_dim
        per_token = 2 * (4 * spec.hidden_size + (2 * mlp_width + attention_width) // tensor_parallel)
        per_sampled = 4 * -(-spec.vocab_size // tensor_parallel)
        return per_token, per_sampled

    def variable_activation_bytes(self, context_length: int, sequences: int, tensor_parallel: int) -> int:
        """The generic estimate's activations for a workload (0 when an engine or the request fixes them)."""
        if not self.variable_activations:
            return 0
        per_token, per_sampled = self.activation_coefficients(tensor_parallel)
        batched = self.limits.max_batched_tokens
        return min(batched, context_length * sequences) * per_token + min(sequences, batched) * per_sampled

    def stage_used(self, layout: _Layout, terms: _StageTerms, stage: int, context_length: int,
                   sequences: int) -> tuple[int, int, int, int]:
        """(used, kv cache, activations, overhead) bytes on one device of `stage`."""
        kv = terms.kv_bytes(layout, stage, context_length, sequences, self.options.block_size)
        activations = (terms.activations[stage] + terms.context_bytes(stage, context_length)
                       + self.variable_activation_bytes(context_length, sequences, layout.tensor_parallel))
        used = layout.stage_weights[stage] + kv + activations + terms.overheads[stage]
        return used, kv, activations, terms.overheads[stage]

    def build_predicate(self, layout: _Layout) -> Callable[[int, int], bool]:
        """A fast ``fits(context, sequences)`` for `layout`: the same sum as `stage_used`, with
        everything that does not depend on context and sequences computed once."""
        terms = self.stage_terms(layout)
        budgets = tuple(self.usable_bytes - weights - fixed
                        for weights, fixed in zip(layout.stage_weights, terms.fixed, strict=True))
        # per stage: budget, the bytes per token of its full-attention layers (they hold the whole context, summed
        # once here) and its windowed layers' (window, bytes per token)
        stages = tuple((budget, sum(size for window, size in kv.by_window if window is None),
                        tuple((window, size) for window, size in kv.by_window if window is not None))
                       for budget, kv in zip(budgets, layout.stage_kv, strict=True))
        hybrids = tuple(kv.hybrid for kv in layout.stage_kv)
        # the engine's terms sized from max_model_len (vLLM 0.19's DeepSeek Sparse Attention workspace), per stage
        context_terms = terms.context or (None,) * len(budgets)
        sized_by_context = bool(terms.context)
        # what the engine allocates outside the budget must fit in the memory the budget leaves free; a term that
        # does not grow with the context (never larger at the longest context searched than at one token) is
        # checked once here, not at every call
        free_outside = self.free_outside_bytes
        outside_terms = tuple(term for term in terms.outside if term is not None
                              and term.bytes_at(1) != term.bytes_at(MAX_CONTEXT_SEARCHED))
        if any(term.bytes_at(1) > free_outside for term in terms.outside if term is not None):
            return _never_fits
        if any(_load_outside_bytes(self, layout, terms, stage) > free_outside for stage in range(len(budgets))):
            return _never_fits  # the engine's load does not fit, whatever the context (an MTP drafter's transient)

        def outside_fits(context_length: int) -> bool:
            return all(term.bytes_at(context_length) <= free_outside for term in outside_terms)
        block = self.options.block_size
        batched = self.limits.max_batched_tokens
        variable = self.variable_activations
        per_token, per_sampled = self.activation_coefficients(layout.tensor_parallel)

        def fits(context_length: int, sequences: int) -> bool:
            if outside_terms and not outside_fits(context_length):
                return False
            if variable:
                activations = (min(batched, context_length * sequences) * per_token
                               + min(sequences, batched) * per_sampled)
            else:
                activations = 0
            held_full = -(-context_length // block) * block
            rows = stages if not sized_by_context else tuple(
                (budget - (0 if term is None else term.bytes_at(context_length)), full, windowed)
                for (budget, full, windowed), term in zip(stages, context_terms, strict=True))
            for budget, full, windowed in rows:
                per_sequence = full * held_full
                for window, size in windowed:
                    if window >= context_length:
                        per_sequence += size * held_full
                    else:
                        per_sequence += size * (-(-window // block) * block)
                if per_sequence * sequences + activations > budget:
                    return False
            return True

        def fits_hybrid(context_length: int, sequences: int) -> bool:
            # a hybrid model's stages (Gated DeltaNet beside full attention): vLLM's blocks and states (`HybridKV`)
            if outside_terms and not outside_fits(context_length):
                return False
            activations = (min(batched, context_length * sequences) * per_token
                           + min(sequences, batched) * per_sampled) if variable else 0
            return all(hybrid.bytes_per_sequence(context_length, block) * sequences + activations
                       + (0 if context_term is None else context_term.bytes_at(context_length)) <= budget
                       for (budget, _, _), hybrid, context_term in zip(stages, hybrids, context_terms, strict=True)
                       if hybrid is not None)

        def fits_windowed(context_length: int, sequences: int) -> bool:
            # windowed layers in the engine's groups and blocks (`WindowedKV`): one sequence at its peak step
            if outside_terms and not outside_fits(context_length):
                return False
            activations = (min(batched, context_length * sequences) * per_token
                           + min(sequences, batched) * per_sampled) if variable else 0
            for stage, budget in enumerate(budgets):
                context_term = context_terms[stage]
                if context_term is not None:
                    budget -= context_term.bytes_at(context_length)
                kv = terms.kv_bytes(layout, stage, context_length, sequences, block)
                if kv + activations > budget:
                    return False
            return True

        if any(hybrid is not None for hybrid in hybrids):
            return fits_hybrid
        return fits_windowed if terms.windowed else fits


def _load_outside_bytes(evaluator: _Evaluator, layout: _Layout, terms: _StageTerms, stage: int) -> int:
    """What the engine holds outside its budget on one device of `stage` while it loads (`OutsideBudget.load_bytes`:
    vLLM's MTP drafter's own embedding and heads, held until it shares the target's; a MoE layer's fp8 experts or
    the largest fp8 linear layer while they are repacked for Marlin, or the largest block-fp8 linear layer while
    DeepGEMM requantizes it), given the budget still free then
    (`_load_room`); 0 where the engine holds nothing only while loading."""
    term = terms.outside[stage] if terms.outside else None
    if not isinstance(term, OutsideBudget) or not term.loads:
        return 0
    return term.load_bytes(_load_room(evaluator, layout, terms, stage, term))


def _load_room(evaluator: _Evaluator, layout: _Layout, terms: _StageTerms, stage: int, term: OutsideBudget) -> int:
    """The budget still free on one device of `stage` while the engine loads: ``usable - weights - overhead`` less
    what of the activation term the model holds from its build (`OutsideBudget.load_held`), i.e. the KV pool and the
    profiling peak the engine allocates later; an activation given by the request is not counted (the safe side).
    The overhead's non-torch memory, which partly grows only in the profiling run, is counted whole (the safe
    side)."""
    room = evaluator.usable_bytes - layout.stage_weights[stage] - terms.fixed[stage]
    if evaluator.options.activation_bytes is None:
        room += terms.activations[stage] - term.load_held
    return room


def _never_fits(context_length: int, sequences: int) -> bool:
    """The predicate of a layout whose engine needs more outside its budget than the budget leaves free, whatever
    the context (`_Evaluator.build_predicate`)."""
    return False


class _ModelTerms:
    """Everything about one (model, weight scheme, KV dtype) that a plan reuses: weights by
    role, and per parallel layout the stage terms and the fits predicates.  Built once and
    cached, so a request pays one lookup here and then only integer-keyed dictionary hits."""

    def __init__(self, spec: ModelSpec, scheme: WeightScheme, kv_dtype_name: str) -> None:
        self.spec = spec
        self.scheme = scheme
        self.kv_dtype_name = kv_dtype_name
        self.by_role = _weights_by_role(spec, scheme)
        #: the labels the engine's device check reads, each with its format where there is one: the scheme's, or
        #: each quantized format of a per-tensor mix (a checkpoint's headers and a GGUF mix: the label alone, except
        #: GPTQ headers with config.json's quantization_config, whose format says sym: `_is_checkpoint_gptq`)
        self.formats: tuple[tuple[str, WeightFormat | None], ...] = (
            tuple(sorted({(chosen.label(), chosen) for _, chosen in scheme.mix if chosen.is_quantized},
                         key=lambda pair: pair[0])) or (("mixed", None),) if scheme.mix
            else ((scheme.label(), None if scheme.gguf_file_type or (scheme.checkpoint is not None
                                                                      and scheme.quantized.layout != "gptq")
                   else scheme.quantized),))
        self._layouts: dict[tuple[int, int, bool, bool, str, bool, bool, int, int, int], _Layout] = {}
        self._predicates: dict[tuple[object, ...], Callable[[int, int], bool]] = {}
        self._evaluator_layouts: dict[tuple[int, int, object], _Layout] = {}
        self._accepted: dict[tuple[str, str, bool, tuple[int, int] | None] | None, tuple[int, ...]] = {}
        self._refusals: dict[tuple[str, str, tuple[int, int] | None, str, int], str | None] = {}
        self._layout_refusals: dict[tuple[str, str, int, int, tuple[int, int] | None, str, bool, int, int],
                                    str | None] = {}
        self._kv_bytes_per_token: int | None = None
        self._device_sizes: dict[tuple[object, str], tuple[int, ...] | None] = {}

    def kv_bytes_per_token(self) -> int:
        """`kv_cache.kv_bytes_per_token` of the model at this KV dtype, found once (its cache hashes the spec)."""
        if self._kv_bytes_per_token is None:
            self._kv_bytes_per_token = kv_bytes_per_token(self.spec, self.kv_dtype_name)
        return self._kv_bytes_per_token

    def accepted_sizes(self, engine: EngineProfile | None, expert_parallel: bool = False,
                       compute_capability: tuple[int, int] | None = None) -> tuple[int, ...]:
        """The tensor-parallel sizes the engine accepts for this model in this format on devices of
        `compute_capability`, ascending (`engine_tensor_parallel_sizes` less `EngineProfile.format_refusal`'s and
        `EngineProfile.refusal`'s at one stage: a release that cannot load the model at all accepts none), found once
        per engine and capability."""
        key = None if engine is None else (engine.name, engine.version, expert_parallel, compute_capability)
        found = self._accepted.get(key)
        if found is None:
            label, method = self.scheme.label(), self.scheme.quant_method
            found = tuple(size for size in engine_tensor_parallel_sizes(self.spec, expert_parallel=expert_parallel)
                          if engine is None or (
                              engine.format_refusal(self.spec, label, size, expert_parallel, compute_capability,
                                                    method) is None
                              and engine.refusal(self.spec, size, 1, expert_parallel) is None))
            self._accepted[key] = found
        return found

    def device_refusal(self, evaluator: _Evaluator) -> str | None:
        """`_Evaluator.device_refusal` of this scheme's formats, found once per engine, compute capability, model
        dtype and requested KV block (the attention backend's refusal depends on it: vLLM 0.33 pages no dense cache
        at a block that is not a multiple of 16)."""
        engine = evaluator.engine
        if engine is None:
            return None
        key = (engine.name, engine.version, evaluator.compute_capability, evaluator.options.model_dtype,
               evaluator.options.block_size)
        if key not in self._refusals:
            self._refusals[key] = evaluator.device_refusal(self.formats, self.scheme.quant_method)
        return self._refusals[key]

    def min_device_sizes(self, evaluator: _Evaluator) -> tuple[int, ...] | None:
        """The tensor-parallel sizes `_min_devices` weighs for this format, ascending, whatever the workload: those
        the engine accepts (`accepted_sizes`; at data parallel > 1 without `moe_data_parallel_refusal`; for a hybrid
        model on vLLM those it starts, `_starts_at`) from the fewest whose ranks hold the weights at all (a rank
        holds at least its even share: ``ceil(weights / usable)``, over the data x tensor ranks of a MoE model's
        layers); None where the engine runs the format at no count of these devices (`device_refusal`).  Found once
        per evaluator key and model dtype (the device refusal reads it)."""
        key = (evaluator.key_id, evaluator.options.model_dtype)
        if key in self._device_sizes:
            return self._device_sizes[key]
        found: tuple[int, ...] | None = None
        if self.device_refusal(evaluator) is None:
            data = evaluator.options.data_parallel if self.spec.is_moe else 1  # the MoE layers spread over data x tp
            low = max(1, -(-sum(self.by_role.values()) // max(1, evaluator.usable_bytes * data)))
            sizes = [size for size in self.accepted_sizes(evaluator.engine, evaluator.options.expert_parallel,
                                                          evaluator.compute_capability) if size >= low]
            engine = evaluator.engine
            if engine is not None and data > 1:
                sizes = [size for size in sizes if self.moe_data_parallel_refusal(
                    engine, size, data, evaluator.options.expert_parallel, evaluator.compute_capability) is None]
            if engine is not None and engine.name == "vllm" and self.spec.linear_attention is not None:
                sizes = [size for size in sizes if _starts_at(evaluator, self, size)]
            found = tuple(sizes)
        if len(self._device_sizes) < 4096:
            self._device_sizes[key] = found
        return found

    def refusal(self, evaluator: _Evaluator, tensor_parallel: int, pipeline_parallel: int) -> str | None:
        """Why the engine refuses this model in this format at this parallel layout on these devices
        (`EngineProfile.refusal`, then `device_refusal`, then `EngineProfile.format_refusal`), or None: pure functions
        of the release, the layout, the capability, the model dtype and the requested KV block, found once per them."""
        engine = evaluator.engine
        if engine is None:
            return None
        expert_parallel, data = evaluator.options.expert_parallel, evaluator.options.data_parallel
        key = (engine.name, engine.version, tensor_parallel, pipeline_parallel, evaluator.compute_capability,
               evaluator.options.model_dtype, expert_parallel, evaluator.options.block_size, data)
        if key not in self._layout_refusals:
            self._layout_refusals[key] = (engine.refusal(self.spec, tensor_parallel, pipeline_parallel, expert_parallel)
                                          or self.device_refusal(evaluator)
                                          or engine.format_refusal(self.spec, self.scheme.label(), tensor_parallel,
                                                                   expert_parallel, evaluator.compute_capability,
                                                                   self.scheme.quant_method)
                                          or self.moe_data_parallel_refusal(engine, tensor_parallel, data,
                                                                            expert_parallel,
                                                                            evaluator.compute_capability))
        return self._layout_refusals[key]

    def moe_data_parallel_refusal(self, engine: EngineProfile, tensor_parallel: int, data_parallel: int,
                                  expert_parallel: bool, compute_capability: tuple[int, int] | None) -> str | None:
        """Why vLLM refuses, or nibble does not plan, this MoE model's routed experts in this format spread over the
        ``data x tensor`` ranks of its MoE layers (None at data parallel 1, for a dense model, or when planned):
        what nibble has not read of the format's kernel under data parallelism
        (`engines.vllm_parallel.moe_data_parallel_format_refusal`), then the engine's expert refusals asked at the MoE
        layers' degree (their width split over data x tensor ranks, or whole experts over them)."""
        if data_parallel <= 1 or not self.spec.is_moe:
            return None
        ranks = tensor_parallel * data_parallel
        return (moe_data_parallel_format_refusal(engine.version, _expert_format(self.spec, self.scheme),
                                                 compute_capability)
                or (expert_parallel_refusal(self.spec, engine.version, ranks) if expert_parallel else None)
                or expert_width_refusal(self.spec, ranks, expert_parallel)
                or engine.format_refusal(self.spec, self.scheme.label(), ranks, expert_parallel,
                                         compute_capability, self.scheme.quant_method))

    def layout(self, tensor_parallel: int, pipeline_parallel: int, vocabulary_everywhere: bool = False,
               fp32_routers: bool = False, mamba_cache_mode: str = "none", chunked_local: bool = True,
               expert_parallel: bool = False, data_parallel: int = 1, draft_layers: int = 0,
               draft_front_bytes: int = 0) -> _Layout:
        key = (tensor_parallel, pipeline_parallel, vocabulary_everywhere, fp32_routers, mamba_cache_mode, chunked_local,
               expert_parallel, data_parallel, draft_layers, draft_front_bytes)
        found = self._layouts.get(key)
        if found is None:
            found = _build_layout(self.spec, self.scheme, self.kv_dtype_name, tensor_parallel, pipeline_parallel,
                                  vocabulary_everywhere, fp32_routers, mamba_cache_mode, chunked_local, expert_parallel,
                                  data_parallel, draft_layers, draft_front_bytes)
            if len(self._layouts) < 4096:
                self._layouts[key] = found
        return found

    def layout_for(self, evaluator: _Evaluator, tensor_parallel: int, pipeline_parallel: int) -> _Layout:
        """`layout` at this parallel layout with the evaluator's facts of the engine and model (the embedding on
        every stage, float32 routers, the Mamba cache mode, chunked local attention, expert and data parallelism,
        the drafter's layers), found once per evaluator key (which decides them all)."""
        key = (tensor_parallel, pipeline_parallel, evaluator.key_id)
        found = self._evaluator_layouts.get(key)
        if found is None:
            found = self.layout(tensor_parallel, pipeline_parallel, evaluator.vocabulary_everywhere(pipeline_parallel),
                                evaluator.fp32_routers(), evaluator.mamba_cache_mode(), evaluator.chunked_local(),
                                evaluator.options.expert_parallel, evaluator.options.data_parallel,
                                *evaluator.draft())
            if len(self._evaluator_layouts) < 4096:
                self._evaluator_layouts[key] = found
        return found

    def fits_predicate(self, evaluator: _Evaluator, tensor_parallel: int,
                       pipeline_parallel: int) -> Callable[[int, int], bool]:
        key = (tensor_parallel, pipeline_parallel, evaluator.key_id)
        found = self._predicates.get(key)
        if found is None:
            found = evaluator.build_predicate(self.layout_for(evaluator, tensor_parallel, pipeline_parallel))
            if len(self._predicates) < 4096:
                self._predicates[key] = found
        return found


@lru_cache(maxsize=256)
def _model_terms(spec: ModelSpec, scheme: WeightScheme, kv_dtype_name: str) -> _ModelTerms:
    return _ModelTerms(spec, scheme, kv_dtype_name)


#: `_model_terms` by the spec and scheme objects (a catalog preset and a cached policy scheme come back as the same
#: objects request after request)
_TERMS_BY_IDENTITY: IdentityMemo[_ModelTerms] = IdentityMemo(256)


def _model_terms_of(spec: ModelSpec, scheme: WeightScheme, kv_dtype_name: str) -> _ModelTerms:
    """`_model_terms`, without hashing the spec and scheme (their hashes walk every field) when the same objects
    were planned before."""
    found = _TERMS_BY_IDENTITY.get((spec, scheme), kv_dtype_name)
    return found if found is not None else _TERMS_BY_IDENTITY.put((spec, scheme), kv_dtype_name,
                                                                   _model_terms(spec, scheme, kv_dtype_name))


def _largest(predicate: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest n in [low, high] with predicate(n), for a predicate true up to a point."""
    if not predicate(low):
        return None
    return _largest_above(predicate, low, high)


def _largest_above(predicate: Callable[[int], bool], low: int, high: int) -> int:
    """`_largest` where predicate(low) is known to hold (a solver step found it): not asked again."""
    if high <= low:
        return low
    if predicate(high):
        return high
    while high - low > 1:  # predicate(low) and not predicate(high)
        middle = (low + high) // 2
        if predicate(middle):
            low = middle
        else:
            high = middle
    return low


def _largest_from(predicate: Callable[[int], bool], guess: int, high: int) -> int | None:
    """The largest n in [1, high] with predicate(n) (true up to a point), starting at `guess`.

    A good guess (a lower bound derived from the same terms) makes this a few evaluations:
    gallop up from it while it holds, then bisect; a wrong guess only costs steps.
    """
    guess = min(max(guess, 1), high)
    if not predicate(guess):
        return _largest(predicate, 1, guess - 1) if guess > 1 else None
    low, step = guess, 1
    while low < high:
        upper = min(high, low + step)
        if not predicate(upper):
            return _largest_above(predicate, low, upper - 1)
        low, step = upper, 2 * step
    return low


def _budgets_after_activations(evaluator: _Evaluator, layout: _Layout, sequences: int,
                               context_length: int) -> list[int]:
    """Per stage: usable − weights − fixed terms − the largest variable activations `sequences` can need − the
    engine's max_model_len-sized terms at `context_length` (they grow with it: at the longest context searched,
    a bound for every shorter one)."""
    ceiling = 0
    if evaluator.variable_activations:
        per_token, per_sampled = evaluator.activation_coefficients(layout.tensor_parallel)
        batched = evaluator.limits.max_batched_tokens
        ceiling = batched * per_token + min(sequences, batched) * per_sampled
    terms = evaluator.stage_terms(layout)
    return [evaluator.usable_bytes - weights - fixed - ceiling - terms.context_bytes(stage, context_length)
            for stage, (weights, fixed) in enumerate(zip(layout.stage_weights, terms.fixed, strict=True))]


def _context_cap(evaluator: _Evaluator) -> tuple[int, str]:
    """The longest context the solvers weigh and what sets it ("model" or "search_limit"): under an engine, the
    longest it starts the model with (`EngineProfile.context_limit`: vLLM's derived max_model_len; none when the plan
    lets it start longer, `PlanOptions.allow_long_max_model_len`); else the model's trained context; else the search
    limit."""
    engine, spec = evaluator.engine, evaluator.spec
    if engine is not None:
        if evaluator.options.allow_long_max_model_len:
            return MAX_CONTEXT_SEARCHED, "search_limit"
        limit = engine.context_limit(spec)
        if limit is not None and limit.error is None:
            return min(limit.tokens, MAX_CONTEXT_SEARCHED), "model"
    if spec.max_position_embeddings:
        return spec.max_position_embeddings, "model"
    return MAX_CONTEXT_SEARCHED, "search_limit"


def _max_context(evaluator: _Evaluator, layout: _Layout, fits: Callable[[int, int], bool],
                 sequences: int) -> tuple[int | None, str]:
    block = evaluator.options.block_size
    cap, capped_by = evaluator._context_cap
    if fits(cap, sequences):
        return cap, capped_by
    if not fits(1, sequences):  # not one token (the weights alone overflow): what the searches below would find
        return None, "memory"
    # Lower bound: activations at their ceiling and sliding layers full, the rest of each
    # stage's budget spent on full-attention tokens.
    guess = max(1, cap // block)
    stage_terms = evaluator.stage_terms(layout)
    windowed_stages = stage_terms.windowed or (None,) * len(layout.stage_kv)
    for budget, kv, windowed in zip(_budgets_after_activations(evaluator, layout, sequences, cap), layout.stage_kv,
                                    windowed_stages, strict=True):
        if windowed is not None:  # the engine's blocks (`WindowedKV`): its own bound
            whole = windowed.whole_blocks_within(sequences, budget)
            if whole is not None:
                guess = min(guess, whole)
            continue
        full = sum(size for window, size in kv.by_window if window is None)
        sliding = sum(size * held_tokens(window, window, block) for window, size in kv.by_window
                      if window is not None)
        if full:
            guess = min(guess, (budget - sliding * sequences) // (sequences * full * block))
        if kv.hybrid is not None:  # whole attention blocks after each sequence's states, in the plan's blocks
            hybrid = kv.hybrid
            group_block = hybrid.page_bytes(block) * hybrid.group_size
            whole = ((budget // (sequences * group_block) - hybrid.linear_groups * hybrid.state_blocks)
                     // hybrid.full_groups)
            guess = min(guess, whole * hybrid.block_size(block) // block)
    blocks = _largest_from(lambda n: fits(n * block, sequences), guess, max(1, cap // block))
    # Within the next block the KV cache holds as much as for its last token, while the activation estimate
    # still grows token by token: the longest context may end part-way into it.  The search found `first` to fit
    # (one token fits: asked above), so it is not asked again; and where the predicate reads the context only as
    # whole blocks (`_StageTerms.block_granular`), every context of the next block is answered as its last token
    # was by the search (the next block does not fit): `first` is the longest.
    first = 1 if blocks is None else blocks * block
    if blocks is not None and blocks < max(1, cap // block) and stage_terms.block_granular:
        return first, "memory"
    return _largest_above(lambda n: fits(n, sequences), first, min(cap, first + block - 1)), "memory"


def _max_context_started_at_it(evaluator: _Evaluator, terms: _ModelTerms, layout: _Layout,
                               fits: Callable[[int, int], bool], workload: Workload) -> tuple[int | None, str]:
    """The longest context that fits when the engine is started with it as its ``max_model_len``.

    Most engine terms do not depend on the context, and `_max_context` answers with the plan's own predicate.  When
    the engine's profiling peak grows with ``max_model_len`` (`EngineProfile.activation_context_steps`: vLLM's dummy
    video for Qwen2.5-VL), the contexts are cut at those steps, the activation is constant within each range, and the
    answer is the longest context that fits within its own range's activation."""
    sequences = workload.concurrent_sequences
    steps = evaluator.context_steps
    if not steps:
        return _max_context(evaluator, layout, fits, sequences)
    best: tuple[int | None, str] = (None, "memory")
    for low, high in zip((1, *steps), (*(step - 1 for step in steps), None), strict=True):
        # the plan's evaluator (device, free memory, capability) started for contexts from `low`, its own caches
        ranged = replace(evaluator, limits=replace(evaluator.limits, max_model_len=low), _terms={})
        longest, limited_by = _max_context(ranged, layout, terms.fits_predicate(ranged, layout.tensor_parallel,
                                                                                layout.pipeline_parallel), sequences)
        if longest is None or longest < low:
            continue
        if high is not None and longest > high:
            longest, limited_by = high, "memory"
        if best[0] is None or longest > best[0]:
            best = (longest, limited_by)
    return best


def _max_sequences(evaluator: _Evaluator, layout: _Layout, fits: Callable[[int, int], bool],
                   context_length: int) -> int:
    # Upper bound: activations are never negative, so no stage holds more sequences than its
    # budget over one sequence's KV cache.  Lower bound: variable activations at their ceiling,
    # which for n sequences is at most max_batched_tokens × per-token + n × per-sampled bytes.
    high = MAX_SEQUENCES_SEARCHED
    guess = MAX_SEQUENCES_SEARCHED
    if evaluator.variable_activations:
        per_token, per_sampled = evaluator.activation_coefficients(layout.tensor_parallel)
        variable, per_sequence_activations = evaluator.limits.max_batched_tokens * per_token, per_sampled
    else:
        variable, per_sequence_activations = 0, 0
    terms = evaluator.stage_terms(layout)
    for stage, weights in enumerate(layout.stage_weights):
        per_sequence = layout.stage_kv[stage].bytes_per_sequence(context_length, evaluator.options.block_size)
        budget = evaluator.usable_bytes - weights - terms.fixed[stage] - terms.context_bytes(stage, context_length)
        windowed = terms.windowed[stage] if terms.windowed else None
        if windowed is not None:  # the engine's blocks (`WindowedKV`): at most these, exactly these without activations
            most = windowed.most_sequences(context_length, budget)
            high = min(high, max(1, most))
            guess = min(guess, windowed.most_sequences(context_length, budget - variable
                                                       - per_sequence_activations * most))
            continue
        if per_sequence > 0:
            high = min(high, max(1, budget // per_sequence))
        guess = min(guess, (budget - variable) // (per_sequence + per_sequence_activations or 1))
    return _largest_from(lambda n: fits(context_length, n), guess, high) or 0


def _sequences_limited_by(sequences: int) -> str:
    """Why `_max_sequences` stopped where it did: memory, or the search limit (the largest count a plan takes)."""
    return "search_limit" if sequences >= MAX_SEQUENCES_SEARCHED else "memory"


@lru_cache(maxsize=256)
def engine_tensor_parallel_sizes(spec: ModelSpec, limit: int = MAX_DEVICES_SEARCHED,
                                 expert_parallel: bool = False) -> tuple[int, ...]:
    """Tensor-parallel degrees up to `limit` that engines such as vLLM accept for `spec`, ascending.

    The degree must divide the attention heads, and divide the key/value heads
    or be a multiple of them (each rank then holds a replica); MLA models
    (a latent KV cache) have no key/value-head condition.  A spec without
    attention heads constrains nothing.  Under `expert_parallel` the routed experts' width need not divide
    (`engines.vllm_refusals.expert_width_refusal`), and a MoE model takes no more ranks than routed experts
    (`engines.vllm_parallel.expert_ranks_refusal`).
    """
    heads, kv_heads = spec.num_attention_heads, spec.num_kv_heads
    if heads <= 0:
        return tuple(range(1, limit + 1))
    # Llama 4's and Pixtral's vision towers split their own heads over the same ranks (vLLM's mllama4.py and
    # pixtral.py assert they divide)
    vision_heads = (spec.vision.num_attention_heads if isinstance(spec.vision, Llama4VisionTower | PixtralVisionTower)
                    else None)
    # qwen2_5_vl.py's and qwen3_vl.py's divisions of their towers
    qwen_tower = spec.vision if isinstance(spec.vision, QwenVisionTower | Qwen3VisionTower) else None
    return tuple(size for size in range(1, min(heads, limit) + 1)
                 if heads % size == 0 and (spec.kv_lora_rank > 0 or kv_heads <= 0
                                           or kv_heads % size == 0 or size % kv_heads == 0)
                 and (vision_heads is None or vision_heads % size == 0)
                 and (qwen_tower is None or qwen_vision_refusal(qwen_tower, size) is None)
                 and mlp_width_refusal(spec, size) is None
                 and vocabulary_refusal(spec, size) is None
                 and expert_width_refusal(spec, size, expert_parallel) is None
                 and not (expert_parallel and expert_ranks_refusal(spec, size)))


def _min_devices(evaluator: _Evaluator, terms: _ModelTerms, workload: Workload) -> int | None:
    """The fewest devices, in a tensor-parallel layout engines accept, that fit the workload (None: none does).

    A rank holds at least its even share of the weights, so fewer than
    ceil(weights / usable) devices cannot fit; and per-rank usage never grows
    with more ranks, so "does not fit" is a prefix of the accepted sizes: bisect them.  Except that one device
    starts with no tensor-parallel communicator, which every rank of two or more holds outside the budget
    (`engines.vllm_releases.startup_memory`): one device is tried first, then the larger sizes bisected.  And a DeepSeek
    Sparse Attention model on vLLM 0.19, whose fp8 mixed-batch kernel buffers appear outside the budget once a
    rank holds fewer than 32 heads (`engines.vllm_dsa.dsa_mixed_batch_bytes`): its sizes are tried in order.  The sizes
    weighed do not depend on the workload (`_ModelTerms.min_device_sizes`).
    """
    def fits_on(devices: int) -> bool:
        fits = terms.fits_predicate(evaluator, devices, 1)
        return fits(workload.context_length, workload.concurrent_sequences)

    sizes = terms.min_device_sizes(evaluator)
    if sizes is None:  # no count of these devices runs the format
        return None
    if evaluator.spec.has_indexer and evaluator.engine is not None:
        return next((size for size in sizes if fits_on(size)), None)
    if sizes and sizes[0] == 1:
        if fits_on(1):
            return 1
        sizes = sizes[1:]
    if not sizes or not fits_on(sizes[-1]):
        return None
    first, last = 0, len(sizes) - 1  # sizes[last] fits
    while first < last:
        middle = (first + last) // 2
        if fits_on(sizes[middle]):
            last = middle
        else:
            first = middle + 1
    return sizes[last]


def _starts_at(evaluator: _Evaluator, terms: _ModelTerms, tensor_parallel: int) -> bool:
    """Whether the engine starts this model at `tensor_parallel` ranks (one stage) with the plan's scheduler limits:
    vLLM's Mamba "align" mode refuses a hybrid model whose raised attention block, which depends on the degree,
    exceeds ``max_num_batched_tokens`` (`engines.vllm_refusals.mamba_align_refusal`; a plan at that degree is refused
    naming
    ``runtime.max_batched_tokens``), so the fewest devices never name such a degree.  `_min_devices` asks it for a
    hybrid model under vLLM only."""
    engine = evaluator.engine
    if engine is None or engine.name != "vllm" or evaluator.spec.linear_attention is None:
        return True
    hybrid = terms.layout_for(evaluator, tensor_parallel, 1).stage_kv[0].hybrid
    return hybrid is None or mamba_align_refusal(hybrid, engine.version, evaluator.options.block_size,
                                                 evaluator.limits.max_batched_tokens) is None


def _kv_capacity(evaluator: _Evaluator, layout: _Layout, stage_terms: _StageTerms,
                 context_length: int) -> tuple[int, KVCapacity | None]:
    """(KV pool bytes, the engine's capacity) on the tightest device: vLLM gives every worker the
    smallest worker's block count, so the stage that holds the fewest tokens decides."""
    pools = [evaluator.usable_bytes - weights - fixed - stage_terms.context_bytes(stage, context_length)
             for stage, (weights, fixed) in enumerate(zip(layout.stage_weights, stage_terms.fixed, strict=True))]
    engine = evaluator.engine
    if engine is None:
        return min(pools), None
    capacities = [engine.kv_capacity(stage, evaluator.options.kv_cache_dtype, max(0, pool),
                                     evaluator.options.block_size, context_length, evaluator.limits)
                  for stage, pool in zip(stage_terms.stages, pools, strict=True)]
    if len(capacities) == 1:  # one stage: it is the tightest
        return pools[0], capacities[0]
    tightest = min(range(len(pools)), key=lambda stage: capacities[stage].tokens)
    return pools[tightest], capacities[tightest]


def _format_plan(terms: _ModelTerms, hardware: Hardware, workload: Workload, tensor_parallel: int,
                 evaluator: _Evaluator, total_parameters: int, kv_total: int) -> FormatPlan:
    options = evaluator.options
    layout = terms.layout_for(evaluator, tensor_parallel, options.pipeline_parallel)
    stage_terms = evaluator.stage_terms(layout)
    by_role = terms.by_role
    total_weights = sum(by_role.values())
    devices: list[DevicePlan] = []
    used_total, all_fit = 0, True  # per stage, for its tensor_parallel devices (not summed device by device)
    for stage, layers in enumerate(layout.stage_layers):
        used, kv, activations, overhead = evaluator.stage_used(layout, stage_terms, stage, workload.context_length,
                                                               workload.concurrent_sequences)
        outside = max(stage_terms.outside_bytes(stage, workload.context_length),
                      _load_outside_bytes(evaluator, layout, stage_terms, stage))
        stage_fits = used <= evaluator.usable_bytes and outside <= evaluator.free_outside_bytes
        same = (layers, hardware.capacity_bytes, evaluator.usable_bytes, layout.stage_weights[stage], kv,
                activations, overhead, used, evaluator.usable_bytes - used, stage_fits)
        used_total += used * tensor_parallel
        all_fit = all_fit and stage_fits
        unread = layout.stage_unread[stage]  # every tensor-parallel rank of a stage holds the same
        # positional: a frozen dataclass's keyword call costs more, and a plan builds one per device of each format
        devices.extend(_new_device_plan(stage * tensor_parallel + rank, stage, rank, *same, unread, outside)
                       for rank in range(tensor_parallel))
    engine = evaluator.engine
    context_refusal = None if engine is None else engine.context_refusal(evaluator.spec, workload.context_length,
                                                                          options.allow_long_max_model_len)
    refusal = terms.refusal(evaluator, tensor_parallel, options.pipeline_parallel) or context_refusal
    if refusal is None:
        fits = terms.fits_predicate(evaluator, tensor_parallel, options.pipeline_parallel)
        max_context, limited_by = _max_context_started_at_it(evaluator, terms, layout, fits, workload)
        max_sequences = _max_sequences(evaluator, layout, fits, workload.context_length)
        sequences_limited_by = _sequences_limited_by(max_sequences)
    else:  # the engine runs no context and no sequence of this format in this layout, whatever the memory
        max_context, limited_by, max_sequences, sequences_limited_by = None, "engine", 0, "engine"
    pool, capacity = _kv_capacity(evaluator, layout, stage_terms, workload.context_length)
    return _new_format_plan(
        format=terms.scheme.label(),
        weights_bytes=total_weights,
        bits_per_weight=8 * total_weights / total_parameters,
        weights_by_role=dict(by_role),
        kv_cache_bytes=kv_total,
        used_bytes=used_total,
        devices=tuple(devices),
        fits=refusal is None and all_fit,
        max_context_length=max_context,
        context_limited_by=limited_by,
        max_concurrent_sequences=max_sequences,
        sequences_limited_by=sequences_limited_by,
        min_devices=None if context_refusal else _min_devices(evaluator, terms, workload),
        kv_pool_bytes=pool,
        kv_capacity_tokens=None if capacity is None else capacity.tokens,
        engine_max_concurrency=None if capacity is None else capacity.max_concurrency,
        refusal=refusal,
    )


_DEFAULT_WORKLOAD = Workload()
_INT4 = int4()  # the comparison's INT4 format (g128 asymmetric), built once: a WeightFormat checks its fields
_DEFAULT_OPTIONS = PlanOptions()


@lru_cache(maxsize=8)
def _default_policy(float_format_name: str) -> QuantizationPolicy:
    return QuantizationPolicy(unquantized_format=float_format_name)


@dataclass(frozen=True, slots=True)
class _PlanSetup:
    """What `plan` derives from its model, hardware and options alone, whatever the workload: the options as planned
    (the engine's KV dtype and block), the parallel degrees, the engine and its limits, the evaluator, the schemes
    of the comparison and their terms, and the notes made on the way.  Found once per (spec, hardware, options)
    objects (`_plan_setup_of`), so a request that changes only the context or the sequences (the web page's
    sliders, a sweep's rows, `fit.fit_plan`'s steps) plans from the same setup."""

    options: PlanOptions
    tensor: int
    counts: ParameterCount
    #: `counts.by_role` without the roles the model has none of: each plan takes a copy (`Plan.parameters_by_role`)
    parameters_by_role: dict[str, int]
    usable: int
    engine: EngineProfile | None
    element_bytes: int
    limits: BatchLimits
    device: DeviceFacts
    #: None where the engine's profiling peak depends on the context it is started with
    #: (`EngineProfile.activation_context_steps`): `plan` makes it for the requested one
    evaluator: _Evaluator | None
    baseline: WeightScheme
    deployed: WeightScheme
    quantized: WeightScheme
    #: the checkpoint as shipped, planned beside the deployed weights when they are not it (None: not planned)
    shipped: WeightScheme | None
    #: the comparison's key of the deployed scheme (None: its format's label)
    primary_key: str | None
    #: the deployed scheme is the comparison's INT4 or 16-bit one (`primary_key`), planned once
    primary_compared: bool
    notes: tuple[str, ...]


def _plan_setup(spec: ModelSpec, hardware: Hardware, options: PlanOptions) -> _PlanSetup:
    """`plan`'s checks of the layout and options (`InvalidSpec`), and everything it plans from them that does not
    depend on the workload (`_PlanSetup`)."""
    policy = options.policy or _default_policy(options.float_format)
    pipeline, data = options.pipeline_parallel, options.data_parallel
    if options.tensor_parallel is None and hardware.count % (pipeline * data):  # the tensor degree would be derived
        stages = f"the {pipeline} pipeline stages" if data == 1 else \
            f"data ({data}) x pipeline ({pipeline}) = {data * pipeline}"
        raise InvalidSpec("hardware.count", hardware.count, f"the device count is not a multiple of {stages}")
    tensor = options.tensor_parallel if options.tensor_parallel is not None else hardware.count // (pipeline * data)
    if tensor < 1 or tensor * pipeline * data != hardware.count:
        degrees = f"tensor ({tensor}) x pipeline ({pipeline})" if data == 1 else \
            f"data ({data}) x tensor ({tensor}) x pipeline ({pipeline})"
        raise InvalidSpec("parallel.tensor", tensor, f"{degrees} must equal the device count ({hardware.count})")
    if data > 1 and spec.is_moe:
        moe_engine = get_engine(options.engine, options.engine_version)
        moe_version = None if moe_engine is None or moe_engine.name != "vllm" else moe_engine.version
        if moe_version not in MOE_DATA_PARALLEL_VERSIONS or pipeline > 1:
            raise InvalidSpec("parallel.data", data, _moe_data_parallel_reason(
                spec, data, tensor, pipeline, options.expert_parallel, moe_version,
                _batch_limits(moe_engine, hardware, options).max_batched_tokens))
    if options.expert_parallel and not spec.is_moe:
        raise InvalidSpec("runtime.expert_parallel", options.expert_parallel,
                          f"expert parallelism needs routed experts; {spec.name} has none (vLLM's "
                          "_verify_with_expert_parallelism: \"Number of experts in the model must be greater than 0 "
                          "when expert parallelism is enabled\")")
    counts = _parameter_count(spec)
    usable = math.floor(hardware.capacity_bytes * options.memory_utilization)
    engine = get_engine(options.engine, options.engine_version)
    if options.speculative is not None and engine is not None:
        refused = speculative_refusal(spec, engine.version, options.speculative, pipeline)
        if refused is not None:
            raise InvalidSpec(refused[0], _speculative_value(refused[0], options.speculative, pipeline,
                                                             engine.version), refused[1])
    notes: list[str] = []
    if options.kv_cache_dtype_auto and engine is not None:
        options = _checkpoint_kv_options(options, engine, notes)
    element_bytes = 2 if engine is None else engine.model_dtype_bytes(spec, hardware.compute_capability)
    if element_bytes == 4 and kv_dtype(options.kv_cache_dtype).bits == 16:
        # vLLM's kv_cache_dtype "auto" (nibble's bf16/fp16) takes the model's dtype: float32 pages
        options = _float32_kv_options(options)
    options = _engine_block_size(spec, engine, options, notes, hardware.compute_capability)
    limits = _batch_limits(engine, hardware, options)
    device = device_facts(hardware.device_id, hardware.compute_capability, hardware.compute_units)
    # the engine's profiling peak depends on the context it is started with: `plan` makes the evaluator at the
    # requested one (the other models keep one activation per layout, and their cached terms, whatever the context)
    evaluator = None if engine is not None and engine.activation_context_steps(spec, limits) else _Evaluator(
        spec, options, usable, engine, limits, device, free_outside_bytes=hardware.capacity_bytes - usable,
        element_bytes=element_bytes)

    baseline = _policy_scheme(float_format(options.float_format), policy)
    deployed = options.scheme or _policy_scheme(options.weight_format, policy)
    if _is_checkpoint_gptq(deployed) and options.shipped is not None and options.shipped.quantized.layout == "gptq":
        # the headers' GPTQ weights as config.json's quantization_config says they are stored (sym, desc_act, its
        # kept modules): the engine's device check (`_ModelTerms.formats`) and its layout terms
        # (`_gptq_headers_with_config`) read it; the bytes stay the headers'
        deployed = replace(deployed, quantized=options.shipped.quantized, keep=options.shipped.keep)
    if deployed.checkpoint is not None and options.shipped is not None and options.shipped.quant_method == "modelopt":
        # the headers' weights are loaded by the method config.json's quantization_config names, whose floors are
        # its own (`WeightScheme.quant_method` reads `origin`); the rows and the label stay the headers'
        deployed = replace(deployed, origin=options.shipped.origin)
    if element_bytes == 4:
        baseline, deployed = _at_float32(baseline), _at_float32(deployed)
        if deployed.checkpoint_rows or deployed.gguf_file_type or deployed.mix:
            notes.append(f"The deployed {deployed.label()} weights are planned at their stored bytes: their 16-bit "
                         "tensors, which the engine loads as float32 here, are not told apart from the rest, so up "
                         "to twice those tensors' bytes are not charged.")
    deployed, note = with_partial_groups(spec, deployed)
    notes.extend(deployed.notes)
    if note:
        notes.append(note)
    if deployed.is_nibble_int4:
        quantized = deployed
    else:
        int4_scheme = _policy_scheme(_INT4, policy)
        quantized, _ = with_partial_groups(spec, _at_float32(int4_scheme) if element_bytes == 4 else int4_scheme)
    primary_compared = deployed in (quantized, baseline)
    if primary_compared:
        primary_key: str | None = "int4" if deployed == quantized else options.float_format
    elif options.scheme is not None and options.scheme == options.shipped:
        primary_key = AS_SHIPPED
    elif options.scheme is not None and options.scheme.checkpoint is not None:
        primary_key = CHECKPOINT
    else:
        primary_key = options.format_name or None  # the primary plan's format then names it
    shipped = options.shipped
    if shipped is not None and shipped != options.scheme:
        shipped, _ = with_partial_groups(spec, _at_float32(shipped) if element_bytes == 4 else shipped)
    else:
        shipped = None
    return _PlanSetup(options, tensor, counts, {role: count for role, count in counts.by_role.items() if count},
                      usable, engine, element_bytes, limits, device, evaluator, baseline, deployed, quantized, shipped,
                      primary_key, primary_compared, tuple(notes))


#: `_plan_setup` by the spec, hardware and options objects: a catalog preset comes back as the same object, and the
#: app's Hardware and PlanOptions are made once per combination of a request's values (`app.schemas.plans`)
_PLAN_SETUPS: IdentityMemo[_PlanSetup] = IdentityMemo(256)


def _plan_setup_of(spec: ModelSpec, hardware: Hardware, options: PlanOptions) -> _PlanSetup:
    """`_plan_setup`, found once per (spec, hardware, options) objects; a plan from a checkpoint's headers (its
    options hold every tensor's row, and are the request's own) or of one of `fit.fit_plan`'s mixes (options made
    for that one step) is set up each time, not kept: it would only push out the setups requests come back to."""
    found = _PLAN_SETUPS.get((spec, hardware, options), ())
    if found is not None:
        return found
    setup = _plan_setup(spec, hardware, options)
    if options.scheme is not None and (options.scheme.checkpoint is not None or options.scheme.mix):
        return setup
    return _PLAN_SETUPS.put((spec, hardware, options), (), setup)


def plan(spec: ModelSpec, hardware: Hardware, workload: Workload | None = None,
         options: PlanOptions | None = None) -> Plan:
    """Plan `spec` on `hardware` for `workload`, at the deployed format and at 16-bit and INT4.

    Per device: ``used = weights + kv_cache + activations + runtime_overhead`` against
    ``usable = floor(capacity × memory_utilization)``; `fits` when used ≤ usable on every
    device; headroom = usable − used (negative when it does not fit).  `comparison` always
    holds the 16-bit (`options.float_format`) and INT4 plans (the requested int4 format, or
    g128 asymmetric when the deployed format is not int4).
    """
    workload = workload or _DEFAULT_WORKLOAD
    setup = _plan_setup_of(spec, hardware, options or _DEFAULT_OPTIONS)
    options, engine, limits, evaluator = setup.options, setup.engine, setup.limits, setup.evaluator
    tensor, pipeline, data = setup.tensor, options.pipeline_parallel, options.data_parallel
    counts, usable, deployed = setup.counts, setup.usable, setup.deployed
    deployment = workload
    if data > 1:  # each replica plans its share of the sequences: the rank that gets the most
        workload = Workload(workload.context_length, -(-workload.concurrent_sequences // data))
    if evaluator is None:  # the engine's profiling peak depends on the context: plan it at the requested one
        limits = replace(limits, max_model_len=workload.context_length)
        evaluator = _Evaluator(spec, options, usable, engine, limits, setup.device,
                               free_outside_bytes=hardware.capacity_bytes - usable, element_bytes=setup.element_bytes)
    notes = list(setup.notes)
    known_terms: list[tuple[WeightScheme, _ModelTerms]] = []

    def terms_of(scheme: WeightScheme) -> _ModelTerms:
        # the plan asks a scheme's terms up to three times (KV, its format plan, the primary layout): one lookup
        for known, terms in known_terms:
            if known is scheme:
                return terms
        terms = _model_terms_of(spec, scheme, options.kv_cache_dtype)
        known_terms.append((scheme, terms))
        return terms

    draft_layers, draft_front = evaluator.draft()
    kv_total = terms_of(setup.baseline).layout(
        1, 1, mamba_cache_mode=evaluator.mamba_cache_mode(), chunked_local=evaluator.chunked_local(),
        draft_layers=draft_layers, draft_front_bytes=draft_front).stage_kv[0] \
        .bytes_per_sequence(workload.context_length, options.block_size) * deployment.concurrent_sequences

    def format_plan(scheme: WeightScheme) -> FormatPlan:
        found = _format_plan(terms_of(scheme), hardware, workload, tensor, evaluator, counts.total, kv_total)
        return found if data == 1 else _over_replicas(found, data)

    comparison = {options.float_format: format_plan(setup.baseline), "int4": format_plan(setup.quantized)}
    if setup.primary_compared:
        primary = comparison[cast(str, setup.primary_key)]
    else:
        primary = format_plan(deployed)
        comparison[setup.primary_key or primary.format] = primary
    if setup.shipped is not None:
        comparison[AS_SHIPPED] = format_plan(setup.shipped)

    primary_layout = terms_of(deployed).layout_for(evaluator, tensor, pipeline)
    primary_terms = evaluator.stage_terms(primary_layout)
    if primary_layout.vocabulary_on_every_stage and engine is not None:
        notes.append(f"{engine.vocabulary_on_every_stage(spec)}: each of the {pipeline} stages holds "
                     f"{primary_layout.vocabulary_on_every_stage / GIB:.2f} GiB of them per device, which its KV "
                     "cache cannot use.")
    if evaluator.fp32_routers() and engine is not None:
        notes.append(_fp32_router_note(engine, spec, deployed, tensor))
    if options.expert_parallel and engine is not None and data == 1:  # at data > 1 the data-parallel note places them
        notes.append(expert_placement_note(spec, engine.version, tensor))
    if data > 1:
        notes.append(_data_parallel_note(data, tensor, pipeline, deployment, workload, engine, spec,
                                         options.expert_parallel, limits.max_batched_tokens))
    hybrid = primary_layout.stage_kv[0].hybrid
    if hybrid is not None:
        notes.append(_hybrid_note(hybrid, options.block_size, tensor, engine))
    if spec.chunked_layers:
        notes.append(_chunked_note(spec, engine, evaluator.chunked_local()))
    windowed_kv = primary_terms.windowed[0] if primary_terms.windowed else None
    if windowed_kv is not None and engine is not None:
        notes.append(_windowed_note(windowed_kv, engine, workload.context_length))
    # the ranks of a stage hold the same: one device per stage (the first of each) is enough
    busiest = max(primary.devices[::tensor], key=lambda device: device.activation_bytes)
    if evaluator.variable_activations:
        activation_basis = ACTIVATION_BASIS.format(
            tokens=min(limits.max_batched_tokens, workload.context_length * workload.concurrent_sequences),
            max_batched=limits.max_batched_tokens,
            sequences=min(workload.concurrent_sequences, limits.max_batched_tokens))
    else:
        activation_basis = primary_terms.activation_basis
        if primary_terms.context and (last := primary_terms.context[-1]) is not None:
            activation_basis += f"; plus {last.basis_at(workload.context_length)}"
    if engine is not None and engine.name == "vllm":
        notes.extend(_late_buffer_notes(spec, engine.version, workload, options, tensor, limits))
        if _is_checkpoint_gptq(deployed) and deployed.quantized.layout != "gptq":
            notes.append(unknown_gptq_symmetry_note(engine.version))
        moe_ranks = tensor * data if spec.is_moe else tensor  # the MoE layers' group (Stage.moe_ranks)
        act_order = moe_wna16_act_order_note(spec, primary_layout.expert_format, moe_ranks,
                                             options.expert_parallel and moe_ranks > 1, engine.version,
                                             evaluator.device)
        if act_order is not None:
            notes.append(act_order)
    notes.extend(_outside_budget_warning(primary, evaluator, primary_layout, workload))
    if engine is not None and options.allow_long_max_model_len:
        notes.extend(_long_context_note(engine, spec, workload.context_length))
    activation = Estimate(busiest.activation_bytes, activation_basis)
    overhead_basis = primary_terms.overhead_basis
    outside_term = max((term for term in primary_terms.outside if term is not None), default=None,
                       key=lambda term: term.bytes_at(workload.context_length))
    if outside_term is not None:
        free = (hardware.capacity_bytes - usable) / GIB
        overhead_basis += (f"; outside the budget, from the {free:.2f} GiB per device it leaves free (not in this "
                           f"figure): {outside_term.basis_at(workload.context_length)}")
    overhead = Estimate(max(primary_terms.overheads), overhead_basis)
    kv_per_token = terms_of(setup.baseline).kv_bytes_per_token()
    return _new_plan(
        model=spec.name,
        total_parameters=counts.total,
        active_parameters_per_token=counts.active_per_token or counts.total,
        parameters_by_role=dict(setup.parameters_by_role),
        hardware=hardware, workload=deployment, options=options,
        tensor_parallel=tensor, pipeline_parallel=pipeline,
        kv_cache_dtype=options.kv_cache_dtype,
        kv_bytes_per_token=kv_per_token,
        kv_cache_bytes=primary.kv_cache_bytes,
        activation=activation, runtime_overhead=overhead,
        primary=primary, comparison=comparison,
        warnings=(*notes, *_warnings(spec, hardware, workload, options, tensor, primary, comparison,
                                     deployed.quant_method)),
        engine=options.engine,
        engine_version=None if engine is None else engine.version,
        max_batched_tokens=limits.max_batched_tokens,
        max_num_seqs=limits.max_num_seqs,
        data_parallel=data,
    )


def mix_format_refusals(spec: ModelSpec, hardware: Hardware, weight_formats: Iterable[WeightFormat],
                        options: PlanOptions | None = None) -> dict[str, str]:
    """Why the engine of `options` refuses a per-tensor mix (`WeightScheme.mix`, `fit.fit_plan`'s) for holding
    tensors stored as each of `weight_formats` on `hardware`'s devices, by label, for those it refuses (a 16-bit
    format, any format without an engine, is never refused): the check `plan` makes of each quantized format of a
    mix (`_ModelTerms.formats`, asked by `_Evaluator.device_refusal` through `EngineProfile.device_refusal` at the
    devices' compute capability and the model's dtype, with no quantization_config's method), asked of each format
    alone without planning.  What the engine refuses of every mix (the model's attention on the device: the check of
    a mix without quantized tensors) is not a format's: none is refused for it, and the plan of any mix says it.
    The setup is made for this call and not kept (`_plan_setup_of`: a fit's options are made for it)."""
    setup = _plan_setup(spec, hardware, options or _DEFAULT_OPTIONS)
    engine, capability, model_dtype = setup.engine, setup.device.compute_capability, setup.options.model_dtype
    if engine is None or engine.device_refusal(spec, "mixed", capability, None, model_dtype) is not None:
        return {}
    refused: dict[str, str] = {}
    for weight_format in weight_formats:
        label = weight_format.label()
        if weight_format.is_quantized and label not in refused:
            reason = engine.device_refusal(spec, label, capability, weight_format, model_dtype)
            if reason is not None:
                refused[label] = reason
    return refused


def _over_replicas(found: FormatPlan, data: int) -> FormatPlan:
    """`found`, one data-parallel replica's plan (its devices, at its share of the sequences), as the deployment of
    `data` identical replicas: the memory used over all its devices, the most sequences over all replicas (each runs
    its own scheduler and KV pool: `data` times one replica's, at most the search limit), and the fewest devices at
    this data-parallel degree (`data` times one replica's).  The KV capacity stays one replica's, as each engine
    logs its own."""
    sequences, limited_by = found.max_concurrent_sequences * data, found.sequences_limited_by
    if sequences > MAX_SEQUENCES_SEARCHED:
        sequences, limited_by = MAX_SEQUENCES_SEARCHED, "search_limit"
    return replace(found, used_bytes=found.used_bytes * data, max_concurrent_sequences=sequences,
                   sequences_limited_by=limited_by,
                   min_devices=None if found.min_devices is None else found.min_devices * data)


def _moe_data_parallel_reason(spec: ModelSpec, data: int, tensor: int, pipeline: int, expert_parallel: bool,
                              version: str | None, max_batched_tokens: int) -> str:
    """Why nibble does not plan `spec`, a model with routed experts, at data parallel `data` (x tensor `tensor` x
    pipeline `pipeline`) on this engine: vLLM does not run its data-parallel ranks as independent replicas
    (``FusedMoEParallelConfig.make``, fused_moe/config.py: every MoE layer spread over the data x tensor ranks, each
    gathering every rank's tokens), and nibble sized that only for vLLM 0.19 and 0.33 at one pipeline stage
    (`engines.vllm_releases.MOE_DATA_PARALLEL_VERSIONS`, `engines.vllm_parallel.moe_dispatched_tokens`).  0.11 gathers
    with the same default backend (``VLLM_ALL2ALL_BACKEND`` allgather_reducescatter), but its ``FusedMoE.forward_impl``
    (fused_moe/layer.py) picks its kernels before the oracles (DeepGEMM for block fp8, fused_experts chunked at
    32,768 tokens) and routes FlashInfer CUTLASS at dp > 1 to ``forward_impl_chunked`` (``VLLM_MOE_DP_CHUNK_SIZE``):
    on the gathered rows, not read.  The generic engine has no such placement.  Pipeline stages
    with MoE data parallelism: not read."""
    ranks = data * tensor
    if expert_parallel:
        placed = (f"whole experts, {routed_experts_per_rank(spec.num_experts, ranks)} of the {spec.num_experts} "
                  "routed experts on the most loaded rank (determine_expert_map)")
    else:
        placed = (f"each routed expert's {spec.moe_intermediate_size}-wide intermediate sliced over them "
                  f"({spec.moe_intermediate_size / ranks:g} a rank: flatten_tp_across_dp)")
    if version is None:
        why = "the generic engine has no MoE data-parallel placement; plan it with engine vllm (0.19 or 0.33)"
    elif version not in MOE_DATA_PARALLEL_VERSIONS:
        why = (f"nibble plans it for vLLM 0.19 and 0.33 only: vLLM {version}'s FusedMoE.forward_impl "
               "(fused_moe/layer.py) picks its kernels before the oracles and routes FlashInfer CUTLASS at dp > 1 to "
               "forward_impl_chunked; its kernels on the gathered rows were not read")
    else:
        why = (f"nibble has not read MoE data parallelism with {pipeline} pipeline stages; use parallel.pipeline 1")
    return (f"vLLM's data-parallel ranks of a model with routed experts are not independent replicas: "
            f"FusedMoEParallelConfig.make (fused_moe/config.py) spreads each MoE layer over all data x tensor = "
            f"{ranks} ranks ({placed}) while attention, shared experts and dense layers stay split by tensor "
            f"parallel {tensor} alone, and each MoE layer gathers every data-parallel rank's tokens (the default "
            "all2all backend, allgather_reducescatter: AgRsAll2AllManager.dispatch, device_communicators/all2all.py; "
            f"in the profiling run data x max_num_batched_tokens = {data} x {max_batched_tokens:,} = "
            f"{data * max_batched_tokens:,} rows of the {spec.hidden_size}-wide hidden state on every rank). {why}")


def _data_parallel_note(data: int, tensor: int, pipeline: int, deployment: Workload, replica: Workload,
                        engine: EngineProfile | None, spec: ModelSpec, expert_parallel: bool,
                        max_batched_tokens: int) -> str:
    """What data parallelism `data` means in the plan: replicas with their own schedulers and KV pools, the
    sequences shared among them, the figures per device one replica's, and how the engine runs them (for a model with
    routed experts, vLLM's MoE layers spread over the data x tensor ranks: `_moe_placement_text`)."""
    if spec.is_moe:
        how = _moe_placement_text(spec, data, tensor, expert_parallel, max_batched_tokens)
    elif engine is not None and engine.name == "vllm":
        how = ("vLLM 0.19 and 0.33 start the data-parallel ranks of a model without routed experts as independent "
               "engines (v1/engine/core.py run_engine_core: \"Non-MoE DP ranks are completely independent, so treat "
               "like DP=1\"); 0.11 keeps them in one data-parallel group, whose communicators are charged at start-up "
               "(engines.vllm_releases.data_parallel_groups)")
    else:
        how = "replicas of the generic estimate, nothing shared"
    ranks = "data-parallel ranks (not replicas: their MoE layers are one group, below)" if spec.is_moe else "replicas"
    return (f"Data parallel {data}: {data} {ranks} of tensor {tensor} x pipeline {pipeline}, "
            f"{data * tensor * pipeline} devices, each replica with its own scheduler (max_num_seqs each) and KV "
            f"pool. The {deployment.concurrent_sequences} sequence(s) are shared among them: each device is planned "
            f"for the most a replica gets, {replica.concurrent_sequences}; devices lists one replica's (the others "
            "hold the same), the KV capacity is one replica's, and the most sequences, used bytes and fewest devices "
            f"are the deployment's ({data} x one replica's). {how}.")


def _moe_placement_text(spec: ModelSpec, data: int, tensor: int, expert_parallel: bool,
                        max_batched_tokens: int) -> str:
    """How vLLM 0.19 and 0.33 place and run a MoE model at data parallel `data` x tensor `tensor`, with the per-rank
    figures the plan charges (`engines.vllm_parallel.moe_dispatched_tokens`)."""
    ranks = data * tensor
    if expert_parallel:
        most, least = (routed_experts_per_rank(spec.num_experts, ranks),
                       routed_experts_per_rank(spec.num_experts, ranks, ranks - 1))
        placed = (f"whole routed experts over the {ranks} ranks, {most} of the {spec.num_experts} on the most loaded "
                  f"rank{'' if most == least else f' ({least} on the last)'}, each {spec.moe_intermediate_size} wide "
                  "(ep_size = data x tensor, determine_expert_map)")
    else:
        placed = (f"each of the {spec.num_experts} routed experts' {spec.moe_intermediate_size}-wide intermediate "
                  f"sliced over the {ranks} ranks, {spec.moe_intermediate_size // ranks} a rank "
                  "(flatten_tp_across_dp: tp_size = data x tensor)")
    sequence_parallel = expert_parallel and tensor > 1
    rows = data * tensor * -(-max_batched_tokens // tensor) if sequence_parallel else data * max_batched_tokens
    gather = (f"each tensor-parallel rank its ceil({max_batched_tokens:,} / {tensor}) share "
              "(use_sequence_parallel_moe), over the expert group" if sequence_parallel else
              f"{max_batched_tokens:,} from each data-parallel rank")
    if shared_experts_whole(spec, tensor, data, expert_parallel):
        rest = (f"while attention and dense layers stay split by tensor parallel {tensor} alone (whole on every "
                "data-parallel rank) and the shared experts are whole on every rank (use_sequence_parallel_moe: the "
                "model class builds them with disable_tp and runs them on each tensor-parallel rank's share of the "
                "tokens)")
    else:
        rest = (f"while attention, shared experts and dense layers stay split by tensor parallel {tensor} alone "
                "(whole on every data-parallel rank)")
    return (f"vLLM runs the {data} data-parallel ranks of a model with routed experts as one deployment: "
            f"FusedMoEParallelConfig.make (fused_moe/config.py) places {placed}, {rest}. "
            "Each MoE layer gathers every rank's tokens through the default all2all backend, "
            "allgather_reducescatter (AgRsAll2AllManager.dispatch, device_communicators/all2all.py): in the "
            f"profiling run {rows:,} rows ({gather}), on which the fused-MoE workspace is sized (the activation's "
            "basis gives it); the data-parallel and expert groups' communicators are charged at start-up, and the "
            "CUDA graphs the rows their MoE layers gather, on the safe side (no vLLM code sizes graphs under data "
            "parallelism)")


def _checkpoint_kv_options(options: PlanOptions, engine: EngineProfile, notes: list[str]) -> PlanOptions:
    """`options` with the KV dtype the engine runs by default for the deployed checkpoint, whose config quantizes the
    KV cache (`WeightScheme.kv_cache_quant`: the shipped scheme's, or for a checkpoint's headers its config's), and
    the engine's note in `notes` (`EngineProfile.checkpoint_kv_cache_dtype`); `options` itself where the deployed
    weights are no checkpoint's (a format asked, which is another checkpoint) or its config names no KV cache."""
    scheme = options.scheme
    if scheme is not None and scheme.checkpoint is not None and options.shipped is not None:
        scheme = options.shipped  # the headers' checkpoint, served with the config.json beside them
    if scheme is None or scheme != options.shipped or not scheme.kv_cache_quant:
        return options
    checkpoint_kv, note = engine.checkpoint_kv_cache_dtype(scheme.kv_cache_quant)
    notes.append(f"{note}.")
    return options if checkpoint_kv is None else replace(options, kv_cache_dtype=checkpoint_kv)


def _engine_block_size(spec: ModelSpec, engine: EngineProfile | None, options: PlanOptions,
                       notes: list[str], compute_capability: tuple[int, int] | None = None) -> PlanOptions:
    """`options` at the KV block the engine runs `spec` at on a device of `compute_capability`: vLLM's DeepSeek
    Sparse Attention block (`engines.vllm_dsa.dsa_block_size`), or the block of the attention backend it runs the plan's
    KV dtype on (`EngineProfile.kv_cache_backend`: FlashMLA's 64 tokens for an fp8 MLA cache on Hopper), with a note
    in `notes` when it is not the requested one."""
    if engine is None or engine.name != "vllm":
        return options
    block, note = dsa_block_size(spec, engine.version, options.block_size)
    if note is None:
        backend = engine.kv_cache_backend(spec, options.kv_cache_dtype, compute_capability, options.block_size)
        if backend.refusal is not None or backend.block_size is None:
            return options
        block = backend.block_size
        note = (f"Planned at {block}-token KV blocks, not the requested {options.block_size}: {backend.basis}; the "
                "KV capacity and context are counted in its blocks.")
    notes.append(note)
    return replace(options, block_size=block)


def _is_checkpoint_gptq(scheme: WeightScheme) -> bool:
    """Whether `scheme` is GPTQ read from a checkpoint's headers (``checkpoint-gptq``).  No safetensors header names
    ``sym`` (`engines.vllm_refusals.unknown_gptq_symmetry_note`): its `quantized` format is the one config.json's GPTQ
    ``quantization_config`` gives when the plan has it (`PlanOptions.shipped`), and otherwise not a GPTQ format at all
    (the plan then takes the weights as symmetric and warns)."""
    return scheme.checkpoint is not None and scheme.checkpoint.format == "gptq"


def _late_buffer_notes(spec: ModelSpec, version: str, workload: Workload, options: PlanOptions, tensor_parallel: int,
                       limits: BatchLimits) -> list[str]:
    """What vLLM takes from the GPU that its memory profiling does not count, outside ``gpu_memory_utilization``: the
    DeepSeek Sparse Attention indexer's expanded block table (`engines.vllm_dsa.dsa_block_table_bytes`, allocated after
    the KV cache is sized) and the fp8 mixed-batch attention's kernel buffers (`engines.vllm_dsa.dsa_mixed_batch_bytes`,
    allocated while serving).  Not charged inside the budget, whose KV capacity is the one vLLM computes, but named;
    with the CUDA graphs they must fit in the memory the budget leaves free (`_outside_budget_warning`)."""
    table = dsa_block_table_bytes(spec, version, workload.context_length, limits)
    kernel = dsa_mixed_batch_bytes(spec, version, options.kv_cache_dtype, tensor_parallel, limits)
    notes = []
    if table:
        notes.append(f"vLLM {version} allocates DeepSeek Sparse Attention's expanded block table, "
                     f"max_num_batched_tokens={limits.max_batched_tokens} x ceil(max_model_len="
                     f"{workload.context_length} / {DSA_BLOCK_SIZE}) int32 ({table / GIB:.2f} GiB per device; "
                     "indexer.py, DeepseekV32IndexerMetadataBuilder), after it has sized the KV cache: it is outside "
                     "gpu_memory_utilization, like its CUDA graphs, so it is not charged inside the budget and comes "
                     "from the memory the budget leaves free.")
    if kernel:
        notes.append(f"With an fp8 KV cache and {spec.num_attention_heads // tensor_parallel} attention heads a "
                     f"device (under 32), vLLM {version} runs every token of a step through FlashMLA's fp8 sparse "
                     f"decode kernel, which allocates up to {kernel / GIB:.2f} GiB per device for a step of "
                     f"{limits.max_batched_tokens} tokens (the query padded to 64 heads, its output and fp32 split "
                     "accumulators: flashmla_sparse.py, FlashMLA sparse_decode.h) that the start-up profiling does "
                     "not see (vllm#53413): not charged inside the budget; it is counted against the memory the "
                     "budget leaves free, and grows with max_batched_tokens.")
    return notes


def _outside_budget_warning(primary: FormatPlan, evaluator: _Evaluator, layout: _Layout,
                            workload: Workload) -> list[str]:
    """Why the plan does not fit when what the engine takes outside its budget (`_StageTerms.outside`: vLLM's memory
    in use at start-up, 0.11/0.19's CUDA graphs, DeepSeek Sparse Attention's late buffers) is more than the
    ``capacity - usable`` the budget leaves free on a device, with the figures, the release, vLLM's own error when it
    would refuse to start (`engines.vllm_releases.startup_refusal`) and the remedies; nothing when it fits."""
    engine, options, free = evaluator.engine, evaluator.options, evaluator.free_outside_bytes
    need, stage = max(((device.outside_budget_bytes, device.pipeline_stage)
                       for device in primary.devices[::layout.tensor_parallel]),  # a stage's ranks hold the same
                      default=(0, 0))
    if engine is None or need <= free:
        return []
    context = workload.context_length
    terms = evaluator.stage_terms(layout)
    term = terms.outside[stage] if terms.outside else None
    basis = "" if term is None else f" ({term.basis_at(context)})"
    capacity = evaluator.usable_bytes + free
    # the largest utilization that leaves `need` free: capacity - floor(capacity x u) >= need
    highest = math.floor((1 - need / capacity) * 100) / 100
    remedies = [f"lower memory_utilization to {highest:.2f} or less (if the rest still fits)" if highest > 0
                else "use a device with more memory"]
    eager = None if options.enforce_eager else engine.outside_budget(
        evaluator.stage(layout, stage), options.kv_cache_dtype, evaluator.limits, True, evaluator.device,
        layout.expert_format, layout.dense_format)
    if not options.enforce_eager and (eager is None or eager.bytes_at(context) <= free):
        remedies.append("run with enforce_eager (no CUDA graphs, slower decoding)")
    if isinstance(term, OutsideBudget) and term.startup.bytes > free:
        refusal = startup_refusal(engine.version, capacity, term.startup.bytes, options.memory_utilization)
        return [f"Does not fit: vLLM {engine.version} would refuse to start (\"{refusal}\"): the "
                f"{term.startup.bytes / GIB:.2f} GiB per device in use at its start-up snapshot is more than the "
                f"{free / GIB:.2f} GiB per device gpu_memory_utilization={options.memory_utilization:g} leaves free, "
                f"where it needs {need / GIB:.2f} GiB outside the budget{basis}: {', or '.join(remedies)}."]
    loading = _load_outside_bytes(evaluator, layout, terms, stage)
    if isinstance(term, OutsideBudget) and term.loads and loading > term.bytes_at(context):
        room = _load_room(evaluator, layout, terms, stage, term)
        drafter = term.load is not None and (term.repack is None or term.load.bytes >= term.repack.bytes)
        return [f"Does not fit: vLLM {engine.version} would run out of memory loading "
                f"{'the MTP drafter' if drafter else 'the model'}: "
                f"{term.load_basis(room)}, {loading / GIB:.2f} GiB per device outside the budget, more than the "
                f"{free / GIB:.2f} GiB per device it leaves free (memory_utilization only moves the transient "
                "between the two): use devices with more memory, or more of them."]
    warming = "warming DeepGEMM's kernels up, " if isinstance(term, OutsideBudget) and term.warmup else ""
    return [f"Does not fit: vLLM {engine.version} allocates {need / GIB:.2f} GiB per device outside "
            f"gpu_memory_utilization={options.memory_utilization:g}{basis}, more than the {free / GIB:.2f} GiB "
            f"per device the budget leaves free, so it would run out of memory {warming}capturing its CUDA graphs or "
            f"serving a full batch: {', or '.join(remedies)}."]


def _speculative_value(field_name: str, speculative: SpeculativeDecoding, pipeline_parallel: int,
                       version: str) -> object:
    """The value of `field_name` a speculative-decoding refusal names (`speculative_refusal`)."""
    values: dict[str, object] = {"runtime.engine_version": version, "parallel.pipeline": pipeline_parallel,
                                 "runtime.speculative.num_speculative_tokens": speculative.num_speculative_tokens}
    return values.get(field_name, speculative.method)


def _batch_limits(engine: EngineProfile | None, hardware: Hardware, options: PlanOptions) -> BatchLimits:
    """The scheduler limits of the plan: the request's, else the engine's default for the device
    (the generic model: 8192 batched tokens, 256 sequences)."""
    if engine is None:
        default = BatchLimits(DEFAULT_MAX_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS)
    else:
        default = engine.batch_limits(hardware.capacity_bytes, hardware.device_id or hardware.name)
    speculative = options.speculative
    return BatchLimits(options.max_batched_tokens or default.max_batched_tokens,
                       options.max_num_seqs or default.max_num_seqs,
                       speculative_tokens=0 if speculative is None else speculative.num_speculative_tokens,
                       draft_layers=0 if speculative is None else speculative.draft_layers)



def _float32_kv_options(options: PlanOptions) -> PlanOptions:
    """`options` with the float32 KV cache of a model the engine runs in float32 (`formats.FLOAT32_KV_DTYPE`): a
    dtype the planner derives, never one a request names, so set past `PlanOptions`' check of requested dtypes."""
    derived = copy.copy(options)
    object.__setattr__(derived, "kv_cache_dtype", FLOAT32_KV_DTYPE.name)
    return derived


@lru_cache(maxsize=64)
def _at_float32(scheme: WeightScheme) -> WeightScheme:
    """`scheme` as an engine that runs the model in float32 holds it: its 16-bit tensors at 4 bytes an element (vLLM
    loads a checkpoint's bf16/fp16 tensors into parameters of the model's dtype), its quantized tensors as they
    are.  A checkpoint's own tensors, a GGUF mix and a per-tensor mix are kept as they are (their float rows are
    not told apart here: said in the plan's note)."""
    if scheme.checkpoint_rows or scheme.gguf_file_type or scheme.mix:
        return scheme
    quantized = float_format("fp32") if scheme.quantized.name in ("bf16", "fp16") else scheme.quantized
    return replace(scheme, quantized=quantized, unquantized="fp32")


@lru_cache(maxsize=64)
def _policy_scheme(weight_format: WeightFormat, policy: QuantizationPolicy) -> WeightScheme:
    """`weight_format` on the tensors `policy` quantizes, its float format elsewhere."""
    return scheme_of(weight_format, policy.unquantized_format, policy.quantized_roles)


def _qwen_vision_note(spec: ModelSpec, hardware: Hardware, options: PlanOptions, workload: Workload) -> str:
    """What the plan charges for vLLM's profiling of a Qwen2.5-VL or Qwen3-VL vision tower (`qwen_encoder_dummy`)."""
    family = "Qwen2.5-VL" if isinstance(spec.vision, QwenVisionTower) else "Qwen3-VL"
    counted = f"{family}'s vision tower is counted in the weights at 16 bits"
    engine = get_engine(options.engine, options.engine_version)
    if engine is None:
        return (f"{counted}, but the activations of an engine's profiling run over a batch of dummy images through it "
                "are not in the generic estimate: vLLM reserves that peak too, so leave headroom for it.")
    batched = _batch_limits(engine, hardware, options).max_batched_tokens
    dummy = qwen_encoder_dummy(spec, engine.version, batched, workload.context_length)
    if dummy is None:  # a Qwen tower of a model type without a known processor
        return (f"{counted}, but the activations of vLLM's profiling run over its dummy images are not sized: leave "
                "headroom for them.")
    note = (f"{counted}, and the activations include vLLM {engine.version}'s profiling of it: {dummy.items} dummy "
            f"{dummy.modality} item(s) of {dummy.tokens_per_item} tokens ({dummy.patches} patches of the image "
            "processor's largest image) encoded before the text pass, the peak of the two charged.")
    if isinstance(spec.vision, Qwen3VisionTower) and engine.version == "0.11":
        note += (f" vLLM 0.11 counts that video at 12.5 tokens per token, an encoder budget of {dummy.budget} tokens, "
                 "and widens the outputs it keeps to that many rows: they are charged too.")
    pair = qwen_encoder_dummy(spec, engine.version, batched, 1)
    if isinstance(spec.vision, QwenVisionTower) and pair is not None:
        note += (f" vLLM sizes that dummy video by max_model_len (one more pair of frames, {pair.tokens_per_item} "
                 f"tokens, per {pair.tokens_per_item} tokens of context, up to 14 frames): the plan charges the "
                 "requested context's, and the longest context is solved with the video each context would get.")
    return note


def _long_context_note(engine: EngineProfile, spec: ModelSpec, context_length: int) -> list[str]:
    """What the plan says of a context above the longest the engine derives for the model, planned because the
    plan lets the engine start longer (`PlanOptions.allow_long_max_model_len`); nothing at or below it."""
    limit = engine.context_limit(spec)
    if limit is None or limit.error is not None or context_length <= limit.tokens:
        return []
    return [f"The context ({context_length} tokens) is above the {limit.tokens} tokens the engine derives for the "
            f"model ({limit.basis}): planned as it starts with {ALLOW_LONG_ENV} "
            f"(runtime.allow_long_max_model_len), which {ALLOW_LONG_WARNING}."]


def _warnings(spec: ModelSpec, hardware: Hardware, workload: Workload, options: PlanOptions, tensor_parallel: int,
              primary: FormatPlan, comparison: dict[str, FormatPlan], quant_method: str = "") -> tuple[str, ...]:
    """Plain-words remarks a deployment engineer should not miss (`quant_method`: the deployed weights' config's)."""
    out = []
    int4_plan = comparison["int4"]
    baseline_key = options.float_format
    baseline = comparison[baseline_key]
    devices = hardware.count
    first = primary.devices[0]
    if first.kv_cache_bytes > first.weights_bytes:
        out.append(
            f"The KV cache ({first.kv_cache_bytes / GIB:.2f} GiB per device) is larger than the weights "
            f"({first.weights_bytes / GIB:.2f} GiB per device): INT4 weights do not shrink the KV cache; "
            "a smaller KV dtype (fp8), a shorter context or fewer concurrent sequences does.")
    engine = get_engine(options.engine, options.engine_version)
    int4_refused = (None if engine is None
                    else engine.device_refusal(spec, int4_plan.format, hardware.compute_capability))
    kv_refused = (None if engine is None
                  else engine.kv_cache_backend(spec, options.kv_cache_dtype, hardware.compute_capability,
                                               options.block_size).refusal)
    if kv_refused is not None:
        out.append(f"The model cannot run with its {options.kv_cache_dtype} KV cache on this device, whatever its "
                   f"weights: {kv_refused}.")
    elif int4_refused is not None:
        out.append(f"The model cannot run at INT4 on this device: {int4_refused}.")
    elif int4_plan.refusal is not None:  # refused at this layout, not for want of memory
        out.append(f"The model cannot run at INT4 on {devices} device(s): {int4_plan.refusal}.")
    elif not int4_plan.fits:
        need = int4_plan.min_devices
        if int4_plan.refusal is None and all(device.used_bytes <= device.usable_bytes for device in int4_plan.devices):
            more = (": the memory budget holds it, but the memory the budget leaves free does not hold what the "
                    "engine allocates outside it (see the warning above)")
        elif need:
            more = f"; the fewest devices that fit at INT4 is {need} (in tensor parallel)"
        else:
            largest = max(engine_tensor_parallel_sizes(spec, expert_parallel=options.expert_parallel), default=1)
            more = (f"; no tensor-parallel degree engines accept for this model fits (the largest is {largest} "
                    "device(s)): pipeline stages (parallel.pipeline) spread the layers over more devices")
        out.append(f"The model does not fit even at INT4 on {devices} device(s) for this workload{more}.")
    elif baseline.refusal is not None:
        out.append(f"The model fits at INT4, but cannot run at 16-bit ({baseline_key}) on {devices} device(s): "
                   f"{baseline.refusal}.")
    elif not baseline.fits:
        out.append(f"The model fits at INT4 but not at 16-bit ({baseline_key}) on {devices} device(s).")
    if not primary.fits and primary.format not in (int4_plan.format, baseline.format):
        fitting = [name for name, other in (("INT4", int4_plan), (f"16-bit ({baseline_key})", baseline))
                   if other.fits]
        also = f"; it fits at {' and at '.join(fitting)}" if fitting else ""
        if primary.refusal is not None:  # a refused format is said refused, with the engine's reason
            out.append(f"The model cannot run as {primary.format} on {devices} device(s): {primary.refusal}{also}.")
        else:
            out.append(f"The model does not fit as {primary.format} on {devices} device(s) for this workload{also}.")
    dtype_note = None if engine is None else engine.device_dtype_note(spec, hardware.compute_capability)
    if dtype_note is not None:
        out.append(f"{dtype_note}.")
    requirement = None if engine is None else engine.capability_requirement(primary.format, quant_method)
    if requirement is not None and hardware.compute_capability is None:
        out.append(f"The devices' compute capability is not known (hardware given in bytes without "
                   f"hardware.compute_capability, or a device the catalog gives none, AMD): {requirement}; the plan "
                   "cannot check it and does not refuse the format.")
    kv_requirement = (None if engine is None or hardware.compute_capability is not None
                      else engine.kv_cache_backend(spec, options.kv_cache_dtype, None, options.block_size).requirement)
    if kv_requirement is not None:
        out.append(f"The devices' compute capability is not known: {kv_requirement}; the plan cannot check it, "
                   f"does not refuse the {options.kv_cache_dtype} KV cache and counts it in {options.block_size}-token "
                   "blocks.")
    if primary.max_context_length is not None and primary.context_limited_by == "memory" \
            and primary.max_context_length < workload.context_length:
        out.append(f"The longest context that fits for {workload.concurrent_sequences} sequence(s) is "
                   f"{primary.max_context_length} tokens, below the requested {workload.context_length}.")
    trained = spec.max_position_embeddings
    limit = None if engine is None else engine.context_limit(spec)
    # an engine that derives its own longest context says it: refused above it (or noted, when allowed), and a
    # context within it is one the model's rope scaling stretches it to
    if (limit is None or limit.error is not None) and trained is not None and workload.context_length > trained:
        out.append(f"The requested context ({workload.context_length} tokens) exceeds the model's "
                   f"trained context ({trained} tokens).")
    if tensor_parallel > 1 and spec.num_attention_heads % tensor_parallel:
        out.append(f"Tensor parallel degree {tensor_parallel} does not divide the model's "
                   f"{spec.num_attention_heads} attention heads: engines such as vLLM refuse this layout.")
    kv_heads = spec.num_kv_heads
    if spec.kv_lora_rank == 0 and 0 < kv_heads < tensor_parallel and tensor_parallel % kv_heads == 0:
        out.append(f"The KV cache is replicated: {tensor_parallel} devices in tensor parallel share the model's "
                   f"{kv_heads} key/value heads, so each head is stored on {tensor_parallel // kv_heads} devices: "
                   f"the KV cache per device is what it is at tensor parallel {kv_heads}, and more devices do not "
                   "shrink it.")
    if (tensor_parallel > 1 and spec.kv_lora_rank == 0 and kv_heads > 0
            and kv_heads % tensor_parallel and tensor_parallel % kv_heads):
        out.append(f"Tensor parallel degree {tensor_parallel} neither divides the model's {kv_heads} key/value "
                   f"heads nor is a multiple of them (to replicate them): engines such as vLLM refuse this "
                   f"layout; the KV figures assume {-(-kv_heads // tensor_parallel)} head(s) per device.")
    if isinstance(spec.vision, QwenVisionTower | Qwen3VisionTower):
        out.append(_qwen_vision_note(spec, hardware, options, workload))
    if isinstance(spec.vision, PixtralVisionTower):
        out.append("Mistral 3's Pixtral vision tower and projector are planned at 16 bits on every device, and with "
                   "vLLM the activations include its profiling run's dummy images through the tower (the largest "
                   "image, as many as the batch budget holds; on vLLM 0.19 with the dense attention mask over their "
                   "patches, PyTorch's attention workspace beside it not counted); for Mistral-Small-3.2 on vLLM "
                   "0.11 nibble charges 5.09 GiB where vLLM logged 2.12 GiB, so its KV capacity is about 10 % under "
                   "vLLM's there. The encoder cache while serving images is not planned.")
    if isinstance(spec.vision, Llama4VisionTower | VisionTower):
        family = "Llama 4" if isinstance(spec.vision, Llama4VisionTower) else "Gemma 3"
        out.append(f"{family}'s vision tower is counted in the weights at 16 bits, but vLLM's profiling run over "
                   "dummy images through it is not modelled: the engine reserves that peak too, so leave headroom for "
                   "it.")
    return tuple(out)
