"""Where vLLM places a MoE model's experts across ranks: tensor, expert and data parallelism.

``model_executor/layers/fused_moe/config.py`` (``FusedMoEParallelConfig``: `expert_shard`,
`routed_experts_per_rank`), ``fused_moe/layer.py`` (shared experts run whole under sequence parallelism), the
data-parallel MoE group's dispatch (``distributed/device_communicators/all2all.py``, ``v1/worker/dp_utils.py``:
`moe_dispatched_tokens`, `moe_dispatch_bytes`, `moe_data_parallel_graphs`) and what expert or data parallelism
refuses (`expert_parallel_refusal`, `moe_data_parallel_format_refusal`).
"""

from __future__ import annotations

from quant_core.engines.base import BatchLimits, Stage, Term
from quant_core.engines.vllm_graphs import cudagraph_capture_sizes
from quant_core.engines.vllm_refusals import weight_format_family
from quant_core.engines.vllm_releases import GIB, MOE_DATA_PARALLEL_VERSIONS
from quant_core.specs import ModelSpec

#: the routed experts' formats whose kernel under data parallelism nibble read in 0.19 and 0.33, beside int4
#: (`moe_data_parallel_format_refusal`), with the compute capability families (major) read for each (None: any):
#: bf16/fp16 experts (oracle/unquantized.py: FlashInfer CUTLASS is off under data parallelism, "FlashInfer CUTLASS
#: MoE is currently not available for DP" in 0.19, moved to the back at dp_size > 1 in 0.33: TritonExperts, except
#: 0.33's FLASHINFER_TRTLLM on 10.x, refused by `moe_data_parallel_format_refusal`); [128, 128]-block fp8 on Hopper
#: (oracle/fp8.py: TRITON without expert parallelism, FLASHINFER_CUTLASS at ep_size > 1, whose
#: ``_supports_parallel_config`` accepts data parallelism; DeepGEMM and TRT-LLM on 10.x not read); MXFP4 on 8.x
#: (Marlin, whose MarlinExperts accept data parallelism) and 9.x, where OAITritonMxfp4ExpertsMonolithic refuses
#: dp_size > 1 (``_supports_parallel_config``) and the TRITON backend's next class, the modular OAITritonExperts,
#: runs them
MOE_DATA_PARALLEL_FORMATS: dict[str, tuple[int, ...] | None] = {
    "bf16": None, "fp16": None, "fp8-block128": (9,), "mxfp4": (8, 9)}


def moe_data_parallel_format_refusal(version: str, expert_format: str,
                                     compute_capability: tuple[int, int] | None) -> str | None:
    """Why nibble does not plan vLLM `version`'s MoE data parallelism for routed experts stored as `expert_format`
    on a device of `compute_capability` (None: it does): the kernel the release's oracle picks there under data
    parallelism, and its workspace on the gathered rows, were not read.  Planned: `MOE_DATA_PARALLEL_FORMATS`, and
    int4 experts (nibble's, GPTQ, AWQ, compressed-tensors), whose kernels read no data parallelism: 0.19's
    GPTQMarlinMoEMethod and MoeWNA16Method call fused_marlin_moe / fused_experts from their own ``apply`` (no modular
    kernel: the runner's ``do_naive_dispatch_combine`` gathers their input), 0.33's MarlinExperts and
    HummingIndexedExperts accept data parallelism in ``_supports_parallel_config``."""
    if version not in MOE_DATA_PARALLEL_VERSIONS:
        return (f"nibble plans MoE data parallelism for vLLM {' and '.join(MOE_DATA_PARALLEL_VERSIONS)} only: vLLM "
                f"{version}'s FusedMoE.forward_impl picks its kernels before the oracles and routes FlashInfer "
                "CUTLASS at dp > 1 to forward_impl_chunked: on the gathered rows, not read")
    label = expert_format.removeprefix("checkpoint-")
    if label.startswith("int4-") and weight_format_family(label) in ("int4", "gptq", "awq", "compressed-tensors"):
        return None
    if version == "0.33" and label in ("bf16", "fp16") and (compute_capability is None or compute_capability[0] == 10):
        where = ("a device of unknown compute capability" if compute_capability is None
                 else f"compute capability {compute_capability[0]}.{compute_capability[1]}")
        return (f"nibble does not plan {label} routed experts under vLLM 0.33's data parallelism (parallel.data) on "
                f"{where}: oracle/unquantized.py puts FLASHINFER_TRTLLM first on the 10.x family "
                "(TrtLlmBf16Experts, _supports_current_device), whose workspace on the gathered rows was not read")
    if label not in MOE_DATA_PARALLEL_FORMATS:
        return (f"nibble does not plan routed experts stored as {expert_format or 'several formats'} under vLLM "
                f"{version}'s data parallelism (parallel.data): the fused-MoE kernel its oracle picks with "
                "dp_size > 1 and its workspace on the gathered rows were read for bf16/fp16, int4, [128, 128]-block "
                "fp8 and MXFP4 experts only")
    majors = MOE_DATA_PARALLEL_FORMATS[label]
    if majors is not None and (compute_capability is None or compute_capability[0] not in majors):
        read = " and ".join(f"{major}.x" for major in majors)
        where = ("a device of unknown compute capability" if compute_capability is None
                 else f"compute capability {compute_capability[0]}.{compute_capability[1]}")
        return (f"nibble does not plan {label} routed experts under vLLM {version}'s data parallelism "
                f"(parallel.data) on {where}: the kernel its oracle picks there with dp_size > 1 was read on {read} "
                "only")
    return None


def moe_dispatched_tokens(stage: Stage, tokens: int) -> int:
    """The rows each MoE layer of `stage` runs its routed experts on when every rank runs `tokens` (vLLM 0.19 and
    0.33's profiling run: ``profile_run`` calls ``_dummy_run(max_num_tokens)`` on every data-parallel rank,
    ``coordinate_batch_across_dp`` gives each the same count in ``num_tokens_across_dp``).  At data parallel > 1 the
    default all2all backend, allgather_reducescatter, gathers them all into each MoE layer
    (``AgRsAll2AllManager.dispatch`` / ``dispatch_router_logits``, device_communicators/all2all.py, called by the
    naive DP/EP prepare step, prepare_finalize/naive_dp_ep.py, or the runner's ``do_naive_dispatch_combine``), not
    chunked (``use_dp_chunking`` is for the DeepEP low-latency, MORI, FlashInfer NVLink and NIXL kernels): data x
    tokens rows; under expert parallelism with tensor parallel > 1 (``use_sequence_parallel_moe``) each
    tensor-parallel rank sends its ``ceil(tokens / tp)`` share (forward_context.py ``_compute_sp_num_tokens``) and
    the expert group gathers data x tp of them.  `tokens` itself at data parallel 1 or for a dense model."""
    data, tensor = stage.data_parallel, stage.tensor_parallel
    if data <= 1 or not stage.spec.is_moe:
        return tokens
    if stage.expert_parallel and tensor > 1:
        return data * tensor * -(-tokens // tensor)
    return data * tokens


#: the model types whose vLLM class builds a MoE layer's shared experts with ``disable_tp=is_sequence_parallel``, so
#: that under ``use_sequence_parallel_moe`` (expert parallelism at tensor parallel > 1 and data parallel > 1) every rank
#: holds them whole and runs them on its ``1 / tp`` of the tokens: deepseek_v2.py's ``DeepseekV2MLP`` (DeepSeek-V2,
#: V3, V3.2 and GLM-5.1's GlmMoeDsaForCausalLM) and llama4.py's ``Llama4MoE.shared_expert``, 0.19 and 0.33
SEQUENCE_PARALLEL_WHOLE_SHARED_EXPERTS: frozenset[str] = frozenset(
    {"deepseek_v2", "deepseek_v3", "deepseek_v32", "glm_moe_dsa", "llama4", "llama4_text"})


def shared_experts_whole(spec: ModelSpec, tensor_parallel: int, data_parallel: int, expert_parallel: bool) -> bool:
    """Whether each rank holds `spec`'s shared experts whole, not split by tensor parallelism: under
    ``ParallelConfig.use_sequence_parallel_moe`` (config/parallel.py: the allgather_reducescatter backend, expert
    parallelism, tensor parallel > 1, data parallel > 1) for the model types of
    `SEQUENCE_PARALLEL_WHOLE_SHARED_EXPERTS`."""
    return (expert_parallel and tensor_parallel > 1 and data_parallel > 1 and spec.is_moe
            and spec.model_type in SEQUENCE_PARALLEL_WHOLE_SHARED_EXPERTS)


def moe_dispatch_bytes(stage: Stage, tokens: int) -> int:
    """The tensors each MoE layer of `stage` gathers (`moe_dispatched_tokens` rows) and holds while its experts run,
    0 at data parallel 1: the hidden states at the model's element size (the safe side where the naive DP/EP prepare
    step gathers them quantized to fp8) and per row the larger of the router logits (float32, one per routed
    expert: ``dispatch_router_logits``) and the top-k weights and ids (float32 and int64: ``dispatch``)."""
    rows = moe_dispatched_tokens(stage, tokens)
    if rows == tokens:
        return 0
    spec = stage.spec
    routing = max(4 * spec.num_experts, (4 + 8) * spec.experts_per_token)
    return rows * (spec.hidden_size * stage.element_bytes + routing)


def moe_data_parallel_graphs(stage: Stage, graphs: Term, limits: BatchLimits, version: str,
                             capability: tuple[int, int] | None = None) -> Term:
    """`graphs`, one device's CUDA-graph memory, for a MoE model's data-parallel `stage` (`graphs` itself
    otherwise): each captured MoE layer gathers every data-parallel rank's rows of the batch into the graph pool
    (`moe_dispatch_bytes` at the largest capture size, `cudagraph_capture_sizes` on a device of `capability`), which
    no vLLM code or log sizes.
    The fused-MoE workspace is not among them (the workspace manager's buffer, sized by the profiling run and locked
    before capture), and the pieces' outputs keep their size (the reduce-scatter returns each rank's own rows); the
    charge is the stage's MoE layers times the gathered tensors of the largest graph, as if no layer reused the
    previous one's memory in the pool: the safe side."""
    if stage.moe_ranks <= stage.tensor_parallel:
        return graphs
    sizes = cudagraph_capture_sizes(version, limits, capability)
    largest = sizes[-1] if sizes else 0
    start, stop = stage.layers
    layers = sum(1 for layer in stage.spec.moe_layers if start <= layer < stop)
    extra = layers * moe_dispatch_bytes(stage, largest)
    return Term(graphs.bytes + extra, (
        f"{graphs.basis}; plus {extra / GIB:.2f} GiB for the rows the {layers} MoE layers gather under data "
        f"parallelism in the largest graph ({moe_dispatched_tokens(stage, largest):,} rows for a {largest}-token "
        "batch, the hidden states and routing as moe_dispatch_bytes sizes them, one set a layer as if the graph pool "
        "reused none of them: no vLLM code or log sizes graphs under data parallelism, the safe side)"))


#: the releases whose expert-parallel path with data parallel 1 (``--enable-expert-parallel``) nibble read, and what
#: it is in each: the same in 0.11, 0.19 and 0.33
EXPERT_PARALLEL_PATH: dict[str, str] = {
    version: (
        "FusedMoEParallelConfig.make (fused_moe/config.py) takes use_ep when tp x dp > 1 and sets ep_size = tp, "
        "tp_size = 1: each rank holds whole experts; determine_expert_map ("
        + ("fused_moe/layer.py" if version != "0.33" else "fused_moe/expert_map_manager.py")
        + ", linear placement) gives the first E % ep ranks one expert more; with data parallel 1 no all2all "
        "manager is made (" + ("base_device_communicator.py: use_all2all needs data_parallel_size > 1"
                               if version != "0.33" else
                               "config/parallel.py use_all2all and use_sequence_parallel_moe need "
                               "data_parallel_size > 1")
        + "), the fused-MoE kernels run on the local experts with the expert_map and the tensor-parallel "
        "all-reduce sums their outputs; attention, shared experts and dense layers stay tensor-parallel")
    for version in ("0.11", "0.19", "0.33")}


def routed_experts_per_rank(num_experts: int, ranks: int, rank: int = 0) -> int:
    """How many of `num_experts` routed experts expert-parallel rank `rank` of `ranks` holds, as vLLM's
    ``determine_expert_map`` (fused_moe/layer.py in v0.11.0 and v0.19.0, fused_moe/expert_map_manager.py in v0.33.0)
    places them: ``E // ranks`` each and one more on the ranks below ``E % ranks`` (the first ranks, though its
    docstring says the last).  Rank 0 holds the most."""
    base, remainder = divmod(num_experts, ranks)
    return base + 1 if rank < remainder else base


def expert_shard(spec: ModelSpec, tensor_parallel: int, expert_parallel: bool = False) -> tuple[int, int]:
    """(routed experts, expert width) one rank of `tensor_parallel` holds: every expert at ``moe_intermediate_size
    / tp`` under tensor parallelism; under `expert_parallel` (vLLM's FusedMoEParallelConfig.make: ep_size = tp,
    tp_size = 1 for the experts) the most loaded rank's whole experts (`routed_experts_per_rank`) at the full
    width.  At one rank expert parallelism is off (``use_ep`` needs tp x dp > 1): every expert, whole."""
    if expert_parallel and tensor_parallel > 1:
        return routed_experts_per_rank(spec.num_experts, tensor_parallel), spec.moe_intermediate_size
    return spec.num_experts, spec.moe_intermediate_size // tensor_parallel


def expert_parallel_refusal(spec: ModelSpec, version: str, tensor_parallel: int) -> str | None:
    """Why nibble does not plan `spec` with vLLM `version`'s expert parallelism over `tensor_parallel` ranks (None:
    it does): a release whose path it did not read (`EXPERT_PARALLEL_PATH`), or more ranks than routed experts
    (`expert_ranks_refusal`)."""
    if version not in EXPERT_PARALLEL_PATH:
        return (f"nibble does not plan vLLM {version}'s expert parallelism (runtime.expert_parallel): its code path "
                f"was read for {', '.join(EXPERT_PARALLEL_PATH)} only")
    return expert_ranks_refusal(spec, tensor_parallel)


def expert_ranks_refusal(spec: ModelSpec, tensor_parallel: int) -> str | None:
    """Why `spec`'s routed experts cannot be spread whole over `tensor_parallel` expert-parallel ranks (None: they
    can): more ranks than experts, where ``determine_expert_map`` would leave ranks with none."""
    if spec.is_moe and tensor_parallel > spec.num_experts:
        return (f"nibble does not plan expert parallelism over {tensor_parallel} ranks for {spec.num_experts} routed "
                "experts (runtime.expert_parallel): determine_expert_map would leave ranks with none")
    return None


#: the expert formats (`weight_format_family`) whose fused-MoE kernel under expert parallelism was not read in any
#: release, and why (MXFP4, NVFP4 and int4 are decided by `expert_parallel_format_refusal` from the release and the
#: device; the others keep the kernel they run under tensor parallelism, on the whole experts)
EXPERT_PARALLEL_UNREAD_FORMATS: dict[str, str] = {
    "gguf": "GGUF's MoE method under expert parallelism was not read",
    "nf4": "bitsandbytes' MoE method under expert parallelism was not read",
    "int8": "int8 MoE methods under expert parallelism were not read",
}


def expert_placement_note(spec: ModelSpec, version: str, tensor_parallel: int) -> str:
    """The plan's note on how vLLM `version` places `spec`'s routed experts under expert parallelism over
    `tensor_parallel` ranks (data parallel 1), and what the plan charges."""
    if tensor_parallel == 1:
        return ("Expert parallelism (runtime.expert_parallel) changes nothing on one device: vLLM turns it on only "
                "when tensor x data parallel > 1 (FusedMoEParallelConfig.make); planned as tensor parallelism.")
    experts = spec.num_experts
    most, least = routed_experts_per_rank(experts, tensor_parallel), routed_experts_per_rank(
        experts, tensor_parallel, tensor_parallel - 1)
    remainder = experts % tensor_parallel
    placed = (f"{most} each" if not remainder else
              f"{most} on ranks 0-{remainder - 1} and {least} on ranks {remainder}-{tensor_parallel - 1}")
    return (f"Expert parallelism planned (vLLM {version} --enable-expert-parallel, data parallel 1): the "
            f"{experts} routed experts of each MoE layer are placed whole over the {tensor_parallel} ranks "
            f"({placed}, full {spec.moe_intermediate_size}-wide), not sliced; every device is charged the most "
            f"loaded rank's {most} experts, their fused-MoE buffers at the full width, and its tensor-parallel share "
            "of the rest (attention, shared experts, dense layers, embedding, KV cache). "
            f"{EXPERT_PARALLEL_PATH[version]}.")
