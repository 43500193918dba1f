"""What an inference engine adds to a plan, as a protocol the planner calls without knowing the engine.

An engine profile is data plus small functions: the terms that are not the model's
(the activation peak of the engine's start-up profiling run, memory outside PyTorch,
CUDA-graph memory inside the budget), how the engine rounds its KV pool into blocks
and tokens, its default batch limits, and the layouts it refuses.  Each term returns
bytes and a `basis` that says what it assumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from quant_core.catalog import UNKNOWN_DEVICE, DeviceFacts
from quant_core.formats import WeightFormat
from quant_core.kv_cache import WindowedKV
from quant_core.specs import ModelSpec


@dataclass(frozen=True, slots=True)
class Term:
    """A term of the memory sum that an engine decides: its bytes and the assumption behind them."""

    bytes: int
    basis: str


@dataclass(frozen=True, slots=True)
class Stage:
    """One device of a parallel layout, as an engine sees it.

    `layers` is the ``[start, stop)`` range of decoder layers of the device's pipeline
    stage; `is_last` says whether the stage runs the sampler.  `element_bytes` is the bytes of one
    element of the dtype the engine runs the model in (2: bf16/fp16; 4 where it runs float32:
    `EngineProfile.model_dtype_bytes`).  `expert_parallel`: the routed experts are placed whole over the
    `tensor_parallel` ranks (vLLM's ``--enable-expert-parallel`` with data parallel 1), not sliced over them.
    `data_parallel`: vLLM's ``--data-parallel-size`` (`PlanOptions.data_parallel`): for a model without routed experts
    the independent replicas of this layout; for a MoE model the data-parallel ranks whose MoE layers form one group
    of `moe_ranks` (attention and the rest stay split by `tensor_parallel` alone).
    """

    spec: ModelSpec
    tensor_parallel: int
    pipeline_parallel: int
    layers: tuple[int, int]
    is_last: bool
    element_bytes: int = 2
    expert_parallel: bool = False
    data_parallel: int = 1

    @property
    def moe_ranks(self) -> int:
        """The ranks each MoE layer's routed experts are spread over: tensor x data parallel for a model with routed
        experts (vLLM's ``FusedMoEParallelConfig.make``, fused_moe/config.py: ``flatten_tp_across_dp``, or ``ep_size``
        = data x tensor under ``--enable-expert-parallel``), the tensor-parallel ranks otherwise."""
        return self.tensor_parallel * self.data_parallel if self.spec.is_moe else self.tensor_parallel


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The engine's scheduler limits: tokens in one step and sequences in one batch, and the context the engine is
    started with (``max_model_len``; None: not known, the model's trained context is taken where a term needs it:
    vLLM sizes a multimodal model's dummy video by it).  `speculative_tokens` is the speculative decoding the engine
    runs, ``num_speculative_tokens`` k (0: none; a decode step then takes ``1 + k`` tokens a sequence, vLLM's
    ``uniform_decode_query_len``), and `draft_layers` the decoder layers its drafter runs beside the model's on the
    last stage (vLLM's ``mtp`` method: the checkpoint's multi-token-prediction layers; 0 for ``ngram``, which runs
    no model): both size the engine's batch-shaped terms (capture sizes, the drafter's pass and buffers)."""

    max_batched_tokens: int
    max_num_seqs: int
    max_model_len: int | None = None
    speculative_tokens: int = 0
    draft_layers: int = 0

    @property
    def decode_query_len(self) -> int:
        """Tokens a sequence takes in a decode step: ``1 + num_speculative_tokens`` (vLLM's
        ``uniform_decode_query_len``, v1/worker/gpu_model_runner.py)."""
        return 1 + self.speculative_tokens


@dataclass(frozen=True, slots=True)
class KVCapacity:
    """What the engine's KV pool holds on one device: blocks, and tokens as the engine logs them.

    `tokens` is the figure the engine reports (vLLM: "GPU KV cache size: N tokens");
    `max_concurrency` is the engine's own "maximum concurrency" for requests of
    `max_model_len` tokens.
    """

    num_blocks: int
    tokens: int
    max_concurrency: float


@dataclass(frozen=True, slots=True)
class KVCacheBackend:
    """What the engine's attention makes of a plan's KV dtype on a device (`EngineProfile.kv_cache_backend`):
    `refusal` why no backend it picks runs the dtype there (None: one does, or the device is not known);
    `block_size` the KV block that backend runs at when the plan must take it (None: the requested one), with
    `basis` saying why; `requirement` where the engine runs the dtype (or at which block), in words, which a plan on
    a device of unknown compute capability cannot check (None: nothing to check)."""

    refusal: str | None = None
    block_size: int | None = None
    basis: str = ""
    requirement: str | None = None


@dataclass(frozen=True, slots=True)
class ContextLimit:
    """The longest context the engine starts a model with (vLLM: the ``max_model_len`` it derives from the config,
    above which ``--max-model-len`` is refused): `tokens`, and `basis`, where they come from.  `error`: the engine
    derives none and starts the model at no context (then `tokens` is 0), in words."""

    tokens: int
    basis: str
    error: str | None = None


class ContextTerm(Protocol):
    """A term an engine sizes from the longest context it is started for (vLLM's ``max_model_len``), which the
    planner asks at each context it weighs: the plan's own and every one its longest-context search tries."""

    def bytes_at(self, max_model_len: int) -> int:
        """Bytes on one device when the engine is started for `max_model_len` tokens."""
        ...

    def basis_at(self, max_model_len: int) -> str:
        """What the bytes at `max_model_len` are and where the engine's code sizes them."""
        ...


class EngineProfile(Protocol):
    """The engine-specific terms of a plan; `quant_core.engines.vllm.VllmProfile` is one."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def batch_limits(self, device_bytes: int, device_name: str) -> BatchLimits:
        """The scheduler limits the engine's OpenAI server uses when the request gives none."""
        ...

    def activation(self, stage: Stage, limits: BatchLimits, expert_format: str = "",
                   device: DeviceFacts = UNKNOWN_DEVICE) -> Term:
        """Peak activation bytes the engine's profiling run measures on one device of `stage`; `expert_format` (the
        weight format of a MoE model's routed experts, "" when unknown) and `device` (its compute capability and SM
        count, each None when not known) let the engine pick the kernel it would run."""
        ...

    def context_activation(self, stage: Stage, kv_cache_dtype: str, limits: BatchLimits) -> ContextTerm | None:
        """What the engine's profiling peak adds on one device of `stage` that grows with ``max_model_len``
        (buffers it sizes from the longest context), or None when nothing does."""
        ...

    def activation_context_steps(self, spec: ModelSpec, limits: BatchLimits) -> tuple[int, ...]:
        """The ``max_model_len`` values, ascending, from which `activation` grows for `spec` (its profiling run
        sizes a dummy input by the context: vLLM's Qwen2.5-VL video); empty when the context plays no part."""
        ...

    def non_torch(self, stage: Stage) -> Term:
        """Bytes outside PyTorch's allocator that the engine counts against its budget."""
        ...

    def cuda_graphs(self, stage: Stage, limits: BatchLimits, enforce_eager: bool = False,
                    kv_cache_dtype: str = "bf16", device: DeviceFacts = UNKNOWN_DEVICE) -> Term:
        """CUDA-graph bytes the engine charges inside its memory budget on one `device` of `stage` (0 when it does
        not, or captures none: `enforce_eager`); the KV dtype and the device pick the attention backend whose
        buffers the engine's estimate holds."""
        ...

    def outside_budget(self, stage: Stage, kv_cache_dtype: str, limits: BatchLimits,
                       enforce_eager: bool = False, device: DeviceFacts = UNKNOWN_DEVICE,
                       expert_format: str = "", dense_format: str = "") -> ContextTerm | None:
        """What the engine takes on one `device` of `stage` (`UNKNOWN_DEVICE` when not known) outside its
        memory budget, from the memory the budget leaves free (vLLM's memory in use at start-up, and its CUDA graphs
        (0.33's beyond its in-budget estimate) and the buffers it keeps from its kernel warm-up, after the KV cache is
        sized, or what DeepGEMM's warm-up needs beyond the memory the profiling run released, when more), by the
        context it is started for; None when nothing.  `expert_format` (the routed experts' weight format) selects
        the fused-MoE kernel, `dense_format` (the linear layers') their kernel.  A device whose need exceeds
        ``capacity - usable`` does not fit."""
        ...

    def refusal(self, spec: ModelSpec, tensor_parallel: int, pipeline_parallel: int,
                expert_parallel: bool = False) -> str | None:
        """Why the engine refuses this layout (`expert_parallel`: the routed experts placed whole over the
        tensor-parallel ranks), or None when it accepts it."""
        ...

    def context_limit(self, spec: ModelSpec) -> ContextLimit | None:
        """The longest context the engine starts `spec` with, or None when the spec does not say (explicit sizes
        without a trained context)."""
        ...

    def context_refusal(self, spec: ModelSpec, context_length: int, allow_long: bool = False) -> str | None:
        """Why the engine refuses to start `spec` for contexts of `context_length` tokens (above `context_limit`;
        `allow_long`: the engine is told to accept them, vLLM's ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``), or None."""
        ...

    def vocabulary_on_every_stage(self, spec: ModelSpec) -> str | None:
        """Why every pipeline stage holds the model's input embedding, final norm and lm_head (the
        engine's model code builds them on each stage), or None when the first stage holds the
        embedding and the last the norm and lm_head."""
        ...

    def windowed_kv(self, stage: Stage, kv_cache_dtype: str, block_size: int,
                    limits: BatchLimits) -> WindowedKV | None:
        """The stage's KV cache in the engine's own groups and blocks when it has windowed (sliding or chunked)
        layers and the engine's blocks differ from the layers' own figure, else None."""
        ...

    def kv_capacity(self, stage: Stage, kv_cache_dtype: str, available_bytes: int, block_size: int,
                    max_model_len: int, limits: BatchLimits) -> KVCapacity:
        """Blocks and tokens the engine's KV pool holds in `available_bytes` on one device of `stage`."""
        ...

    def expert_layout(self, stage: Stage, expert_format: str = "", device: DeviceFacts = UNKNOWN_DEVICE) -> Term | None:
        """The bytes one rank of `stage` holds for its routed experts (stored as `expert_format`) beyond the
        checkpoint's own, in the layout the engine's kernels for `device` rewrite them to; None when the engine
        holds them as they ship."""
        ...

    def linear_layout(self, stage: Stage, dense_format: str = "", device: DeviceFacts = UNKNOWN_DEVICE) -> Term | None:
        """The bytes one rank of `stage` holds for its quantized dense linear layers (attention and MLP, stored as
        `dense_format`) beyond the checkpoint's own, in the layout the engine's kernels for `device` rewrite them
        to; None when the engine holds them as they ship or the layout was not read."""
        ...

    def attention_weight_copy(self, stage: Stage, quantized_layers: frozenset[int],
                              draft_layers: int = 0) -> Term | None:
        """The bytes one rank of `stage` holds for copies the engine's attention makes of weights after loading
        (vLLM's MLA: a 16-bit copy of each quantized ``kv_b_proj``), for the decoder layers `quantized_layers` whose
        weights are quantized and `draft_layers` speculative-decoding layers of the last stage; None without any."""
        ...

    def weight_allocation(self, stage: Stage, weight_format: str = "") -> Term | None:
        """The bytes the engine's allocator counts for one rank's weights beyond their own size (block rounding),
        which the engine's measurement of its weights includes, with `weight_format` the label of the decoder's
        linear weights; None when the engine's figure is not modelled or there is none."""
        ...

    def routers_at_fp32(self, spec: ModelSpec) -> str | None:
        """Why the engine allocates the MoE routers of `spec` (role ``router``: gate weights and their biases) in
        float32 whatever the model's dtype, or None when it allocates them as the other unquantized tensors."""
        ...

    def format_refusal(self, spec: ModelSpec, weight_format: str, tensor_parallel: int,
                       expert_parallel: bool = False, compute_capability: tuple[int, int] | None = None,
                       quant_method: str = "") -> str | None:
        """Why the engine refuses `spec` stored as `weight_format` (a scheme's label, ``fp8-block128``) split over
        `tensor_parallel` ranks (`expert_parallel`: its routed experts placed whole on them) on a device of
        `compute_capability` (None: not known), read from a quantization_config of `quant_method` ("" when not:
        `WeightScheme.quant_method`), or None when it accepts it."""
        ...

    def device_refusal(self, spec: ModelSpec, weight_format: str, compute_capability: tuple[int, int] | None,
                       stored: WeightFormat | None = None, model_dtype: str = "bf16",
                       quant_method: str = "") -> str | None:
        """Why the engine cannot run `spec` (its attention) or weights stored as `weight_format` on a device of CUDA
        `compute_capability` (``(major, minor)``; None: not known, and only a format the engine loads on no device is
        refused), or None when it runs them there.  `stored` is the format `weight_format` labels when there is one
        (not for a checkpoint's headers or a GGUF mix), whose fields (symmetry, group size) the engine reads;
        `model_dtype` the 16-bit dtype the model runs in (``bf16`` or ``fp16``, vLLM's ``--dtype``); `quant_method` the
        quantization_config's method the weights were read from ("" when not: `WeightScheme.quant_method`), whose
        loader may have its own floor (a ModelOpt fp8 checkpoint is not loaded as an ``fp8`` one)."""
        ...

    def capability_requirement(self, weight_format: str, quant_method: str = "") -> str | None:
        """The compute capability the engine needs for `weight_format` (read from a `quant_method` config), in words
        (what a plan on a device of unknown capability cannot check), or None when it needs none."""
        ...

    def checkpoint_kv_cache_dtype(self, kv_cache_quant: str) -> tuple[str | None, str]:
        """The KV dtype (a `formats.KV_DTYPES` name) the engine runs when none is asked, for a checkpoint whose config
        quantizes the KV cache as `kv_cache_quant` (`WeightScheme.kv_cache_quant`), or None where it keeps its
        default; with the note the plan repeats ("" when `kv_cache_quant` is empty)."""
        ...

    def kv_cache_backend(self, spec: ModelSpec, kv_cache_dtype: str, compute_capability: tuple[int, int] | None,
                         block_size: int) -> KVCacheBackend:
        """Whether the engine's attention runs `spec`'s KV cache of `kv_cache_dtype` (a `formats.KV_DTYPES` name) on
        a device of `compute_capability` (None: not known) at a requested `block_size`, and at which block."""
        ...

    def device_dtype_note(self, spec: ModelSpec, compute_capability: tuple[int, int] | None) -> str | None:
        """Why the engine runs `spec` at another dtype than 16 bits on a device of `compute_capability`, and what the
        plan charges for it (`model_dtype_bytes`), or None."""
        ...

    def model_dtype_bytes(self, spec: ModelSpec, compute_capability: tuple[int, int] | None) -> int:
        """Bytes of one element of the dtype the engine runs `spec` in on a device of `compute_capability` (2, or 4
        where it runs float32): the planner charges the unquantized weights, a 16-bit KV cache and the activations
        at it."""
        ...
