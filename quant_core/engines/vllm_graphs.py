"""The CUDA graphs vLLM captures after sizing the KV cache: 0.11's and 0.19's outside ``gpu_memory_utilization``,
0.33's beyond the estimate it subtracts from it (`graph_spill`, last section).

What the code fixes (vLLM's repository):

* ``v1/worker/gpu_worker.py``, ``Worker.compile_or_warm_up_model``: ``capture_model`` runs after
  ``initialize_from_config`` has allocated the KV cache, unless ``enforce_eager``; ``determine_available_memory``
  subtracts no graph memory from the budget (0.19 estimates it with ``profile_cudagraph_memory`` but applies the
  estimate only under ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1``, off by default in its envs.py; 0.11 has no
  estimate).  The graphs therefore come from what the budget leaves free, ``total - total x utilization``.
* The capture sizes (`cudagraph_capture_sizes`): 0.11's ``VllmConfig._set_cudagraph_sizes`` (config/__init__.py),
  ``[1, 2, 4]`` and every multiple of 8 up to ``min(2 x max_num_seqs, 512)``; 0.19's (config/vllm.py) ``[1, 2, 4]``,
  multiples of 8 below 256 and of 16 from 256 up to the same maximum; both keep the sizes <= max_num_batched_tokens.
  Both default to ``FULL_AND_PIECEWISE``: for every size a piecewise graph per piece of the compiled model (the
  pieces split at each attention layer) and a full graph for uniform decode batches.
* ``GPUModelRunner.capture_model`` logs what capture took as a difference of ``torch.cuda.mem_get_info`` before
  and after: the graph pool (the largest size's intermediates, reused by the smaller sizes) and the driver's memory
  for each instantiated graph.  No code of vLLM's computes that figure: 0.19 itself has to capture two graphs per
  mode to estimate it.

So the figure is the public logs' (`GRAPH_LOGS`): llm-d-planner's vLLM 0.19.0 H100 sweep logs every worker's
"... GiB for CUDAGraph memory" at the default capture sizes (51 of them, up to 512).  The Llama-3.1-8B runs at 32,
16 and 8 layers a stage (TP 1, PP 2, PP 4: 0.91, 0.65, 0.51 GiB) put the part that does not grow with the layers at
0.377 GiB (`GRAPH_BASE_BYTES`); the largest per-layer rate of the dense models above it (gemma-2-27b: 1.23 GiB at
46 layers, 19.0 MiB a layer) is charged for every layer (`GRAPH_BYTES_PER_LAYER`), so every dense run is covered
(0.91-0.96 GiB logged for Llama-3.1-8B against 0.97 charged; 1.79-1.85 GiB for Llama-3.3-70B at TP 2 against 1.86).
MoE, MLA and hybrid models capture more (their kernels' own buffers, more nodes a layer): each logged family's
excess over the dense rule is added for its model types (`GRAPH_EXTRA_BY_MODEL_TYPE`: gpt-oss-20b 0.73 GiB,
DeepSeek-V2-Lite 0.69 GiB, Qwen3-30B-A3B 0.14 GiB, Mixtral none; Qwen3-Next-80B's vLLM 0.10.2 run, taken at 0.11's
67 capture sizes, 0.63 GiB), and for a MoE, MLA or Gated DeltaNet model of a family no log shows, the largest
excess of its kind (`GRAPH_MOE_EXTRA_BYTES`, `GRAPH_HYBRID_EXTRA_BYTES`).  The per-layer and extra parts scale with
the number of capture sizes (the graphs captured), the base does not.

vLLM 0.11 is charged from its own logs (`GRAPH_0_11_LOGS`).  Its ``capture_model`` reads the free memory without
emptying PyTorch's cache first, and the first graph's capture runs ``torch.cuda.empty_cache`` (compilation/
cuda_graph.py: only the later graphs patch it out), so cached blocks released during capture lower its "took" figure
(five of the nine llm-d 0.11 runs log a negative one) and a positive figure is at most what capture took.  0.11
captures a PIECEWISE graph for every capture size and a FULL graph for every size up to ``max_num_seqs``
(`cudagraph_count`), each over all the layers of the stage.  Qwen3-30B-A3B at TP 4 on RTX 4090s (vllm#27782: 1.88 GiB
at 48 layers and 67 + 35 graphs) puts the rule at 0.286 MiB a layer and graph above the base and its model type's
excess (`GRAPH_0_11_BYTES_PER_LAYER_GRAPH`).  Every other 0.11 run that captured at most 256 sequences' FULL graphs
lies under that rule: Qwen3-VL-30B-A3B at TP 4 on RTX 3090s 1.92 GiB (the generic MoE excess), GPT-2 on an RTX 4090
0.21 GiB (12 layers), Granite-4.0-micro FP8 on an L40S 0.72 GiB (40 layers), Qwen2.5-VL-3B on an L4 0.44 GiB (36
layers, 35 + 19 graphs).  Qwen2.5-Math-1.5B on an 80 GB GPU took 3.49 GiB at 28 layers and 67 + 67 graphs, logged by
two engines that then ran out of memory warming up the sampler: 2.07 GiB above that rule.  Their OOM message puts 3.9
GiB of the engine outside PyTorch's allocator (the graphs' pool held 58 MiB): driver memory, which no code of vLLM's
sizes.  It is the one 0.11 run with a trustworthy figure that captured FULL graphs for more than 256 sequences (sizes
264 to 512, the default 1024 sequences of a 70 GiB+ device); llm-d's H100 runs at 1024 sequences log figures lowered
by the released cache, which cannot show the excess absent.  So the excess (`GRAPH_0_11_LARGE_BATCH_BYTES`) is charged
where that run's capture went beyond the others', a FULL graph above `GRAPH_0_11_SMALL_BATCH_SEQS` sequences
(`largest_full_graph`), and not below it, where five runs on four kinds of GPU (RTX 3090, RTX 4090, L40S, L4) show
none: fitted to the one run, since no code of vLLM's gives the figure.  Tensor parallelism shrinks the graphs a rank
(Llama-3.1-8B on 0.19: 0.91, 0.76, 0.67 GiB at TP 1, 2, 4), which neither envelope follows: the safe side.

vLLM 0.33 (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` on by default, envs.py) subtracts an estimate from the budget
(gpu_worker.py ``determine_available_memory``: ``available = requested - non_kv_cache_memory - estimate``) and then
captures the graphs after the KV cache as 0.19 does (``compile_or_warm_up_model``, ``capture_model``).  The estimate
is a measurement, not a formula: ``profile_cudagraph_memory`` (Model Runner V2, which runs every plan nibble makes:
`V1_RUNNER_SWITCHES_033`; v1/worker/gpu/cudagraph_utils.py) builds a minimal KV cache, captures every PIECEWISE
graph and the two largest FULL graphs into a throwaway pool, and extrapolates the FULL graphs as ``first + (N - 1) x
max(second, 1 MiB)`` (``_extrapolate_full_graph_memory``, ``_MIN_PER_GRAPH_BYTES``).  It holds what the capture
allocates, FlashInfer's attention workspace included (its builders allocate it at their first build, inside the
measured window).  Nothing checks the real capture against it (the worker only logs "CUDA graph pool memory: X GiB
(actual), Y GiB (estimated)"), so graphs beyond it come from the memory the budget leaves free: public runs of
0.2x releases show estimates both under the capture (vllm#57047: 0.22 GiB captured where the logged 0.57 GiB of peak
activation, which holds the estimate, leaves at most 0.06 GiB beside the 0.52 GiB sampler pass; vllm#50159: 0.26's
Model Runner V2 reserving 0.10 GiB where the V1 runner reserved 0.21, then running out of memory under load;
vllm#49224: V2's estimate was 0 from 0.25.1 until it was implemented as 0.33 has it) and far over it (vllm#45178,
vllm#53013, the V1 runner's linear extrapolation).  The graphs' part of it measures the
capture itself, so both take one figure, 0.19's form with the per-layer part of later releases' logs
(`GRAPH_0_33_BYTES_PER_LAYER`, 4.25 MiB where 0.19's H100 logs put 19: Qwen3-8B's 0.52 GiB estimate at 36 layers,
LMCache#3430, against 1.04 GiB by 0.19's rule), and the only bound the code gives the estimate is its extrapolation
floor, ``(N - 1) x 1 MiB`` for the N FULL graphs (`graph_estimate_floor`): the graphs less that floor are charged
against the memory the budget leaves free (`graph_spill`), the graphs whole inside it (`engines.vllm.
cuda_graph_estimate`).  0.33's capture sizes
(config/vllm.py ``_set_cudagraph_sizes``) are 0.19's up to ``min(2 x max_num_seqs, 1024 on compute capability family
100, else 512, max_num_batched_tokens)``, plus max_num_batched_tokens where it is that largest size and
``max_num_seqs`` where it is under both (a device not known: the 1024, more graphs).

The V1 runner (v1/worker/gpu_model_runner.py) estimates otherwise: its own ``profile_cudagraph_memory`` captures only
the two largest graphs of each mode, extrapolates PIECEWISE and FULL alike as ``first + (N - 1) x max(second, 1
MiB)``, and runs its first FULL sample at ``min(max_model_len, max_num_batched_tokens // size)`` tokens a sequence;
public runs log its estimate far above the capture (vllm#45178, vllm#53013; vllm#50780 a hybrid model's transient from
that long-sequence sample).  0.33 runs it only where ``VllmConfig.use_v2_model_runner`` (config/vllm.py) returns False
(`V1_RUNNER_SWITCHES_033`): ``VLLM_USE_V2_MODEL_RUNNER=0`` (envs.py: unset by default), no Triton, or a feature
``_get_v2_model_runner_unsupported_features`` lists (pipeline parallelism under the external_launcher executor, the
suffix, custom_class and EAGLE parallel-drafting speculative methods and heterogeneous-vocabulary drafts, dual batch
overlap unless ``VLLM_USE_V2_MODEL_RUNNER`` is set).  No plan of nibble's sets any of them: it plans no speculative
decoding, no dual batch overlap, no executor backend and no environment; and its 0.33 terms already take Triton
present (TRITON_ATTN off 9.0 and 10.0, `vllm_attention`; TritonExperts for MoE layers), without which those plans
would be wrong anyway (a Triton-less install was not read: torch's Linux CUDA wheels were not opened).  Models
(hybrid, MoE, MLA, multimodal), pipeline parallelism under the default executors, data and expert parallelism do not
enter the switch.  So 0.33's charge follows Model Runner V2 alone, and tests/quant_core/test_vllm_graphs.py pins the
premise: a plan option added to the planner fails it until it is checked against the switch.
"""

from __future__ import annotations

from quant_core.engines.base import BatchLimits, Stage, Term
from quant_core.specs import ModelSpec

GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10

#: where the graph figures come from
GRAPH_LOGS = ("llm-d-planner's vLLM 0.19.0 H100 logs (commit d3121e0 of github.com/llm-d-incubation/llm-d-planner, "
              "accuracy/results/v0.19.0/logs: each worker's \"GiB for CUDAGraph memory\")")
#: the part of the graph memory that does not grow with the layers: Llama-3.1-8B's runs at 32, 16 and 8 layers a stage
#: (0.91, 0.65, 0.51 GiB) fall on 0.377 GiB + 17.1 MiB a layer
GRAPH_BASE_BYTES = 386 * MIB
#: per decoder layer on the stage at `GRAPH_LOGGED_SIZES` capture sizes: the largest rate of the dense runs above the
#: base (gemma-2-27b, 1.23 GiB at 46 layers: 19.0 MiB)
GRAPH_BYTES_PER_LAYER = 19 * MIB
#: added for a MoE or MLA model of a family no log shows: the largest excess of a MoE run of the sweep over the dense
#: rule, gpt-oss-20b's at TP 2 (1.55 GiB logged, 745 MiB above the rule for its 24 layers)
GRAPH_MOE_EXTRA_BYTES = 745 * MIB
#: added for a Gated DeltaNet hybrid: Qwen3-Next-80B-A3B at TP 2 on vLLM 0.10.2 (0.11's gpu_model_runner, its capture
#: sizes taken as 0.11's 67 for max_num_seqs=1024) logged 2.37 GiB: (2,427 - 386) x 51 / 67 = 1,554 MiB at 51 sizes,
#: 642 MiB above the dense rule for its 48 layers (vllm0102-h200-qwen3-next-80b-tp2 in tests' vllm_logs.json)
GRAPH_HYBRID_EXTRA_BYTES = 642 * MIB
#: the logged excess over the dense rule, by model type: (bytes, the run it comes from)
GRAPH_EXTRA_BY_MODEL_TYPE: dict[str, tuple[int, str]] = {
    "gpt_oss": (GRAPH_MOE_EXTRA_BYTES, "gpt-oss-20b's log, 1.55 GiB at 24 layers"),
    # vLLM's deepseek_v2.py builds DeepSeek-V2, V3 and V3.2 alike (MLA, shared and routed experts)
    "deepseek_v2": (709 * MIB, "DeepSeek-V2-Lite's log, 1.57 GiB at 27 layers"),
    "deepseek_v3": (709 * MIB, "DeepSeek-V2-Lite's log (deepseek_v2.py), 1.57 GiB at 27 layers"),
    "deepseek_v32": (709 * MIB, "DeepSeek-V2-Lite's log (deepseek_v2.py), 1.57 GiB at 27 layers"),
    "qwen3_moe": (146 * MIB, "Qwen3-30B-A3B's log, 1.41 GiB at 48 layers"),
    "mixtral": (0, "Mixtral-8x7B's log at TP 2, 0.93 GiB at 32 layers: nothing above the dense rule"),
    "qwen3_next": (GRAPH_HYBRID_EXTRA_BYTES, "Qwen3-Next-80B's vLLM 0.10.2 log, 2.37 GiB at 48 layers and 67 sizes"),
}
#: the capture sizes of the logged runs: 0.19's defaults for max_num_seqs=1024 and 8192 batched tokens
GRAPH_LOGGED_SIZES = 51
#: where 0.33's graph figure comes from: the public logs of releases after 0.21, the estimate's and the capture's
GRAPH_0_33_LOGS = ("the public logs of vLLM 0.2x releases (\"Estimated CUDA graph memory\" and \"GiB for CUDAGraph "
                   "memory\"): Qwen3-8B's 0.52 GiB estimate at 36 layers, 51 PIECEWISE and 35 FULL graphs "
                   "(LMCache#3430); under it Qwen3-4B's 0.22 GiB capture at 36 layers and the same graphs "
                   "(vllm#57047), Qwen3-235B-A22B's 0.32 GiB at TP 4 (94 layers, 11 sizes; kubesimplify), "
                   "gpustack/runner#251's 0.36 GiB and club-3090's 0.17 and 0.09 GiB estimates, and a 64-layer Gated "
                   "DeltaNet hybrid's 0.89 GiB (vllm#52872)")
#: vLLM 0.33, per decoder layer on the stage at `GRAPH_LOGGED_SIZES` capture sizes above `GRAPH_BASE_BYTES` (no log of a
#: release after 0.21 shows a smaller part that does not grow with the layers): LMCache#3430's Qwen3-8B estimate, 0.52
#: GiB (to the log's 0.01: up to 537.6 MiB) at 36 layers and 51 sizes, (537.6 - 386) / 36 = 4.21 MiB, rounded up.
#: The 0.19 H100 rule's 19 MiB a layer would put Qwen3-8B at 1.04 GiB, twice what 0.2x logs show of the same graphs
GRAPH_0_33_BYTES_PER_LAYER = 4352 * KIB
#: the graphs of those runs: a PIECEWISE and a FULL graph for each of the 51 sizes (all <= max_num_seqs=1024)
GRAPH_LOGGED_GRAPHS = 2 * GRAPH_LOGGED_SIZES
#: where 0.11's graph figures come from
GRAPH_0_11_LOGS = ("vLLM 0.11.0's \"Graph capturing finished in N secs, took X GiB\" in public runs (vllm_logs.json in "
                   "nibble's tests): Qwen3-30B-A3B at TP 4 on RTX 4090s (vllm#27782), 1.88 GiB at 48 layers and "
                   "67 + 35 graphs; Qwen2.5-Math-1.5B at 0.95 on an 80 GB GPU (a run of XMUDeepLIT/TTCS's "
                   "start_vllm_server.py), 3.49 GiB at 28 layers and 67 + 67 graphs; under the rule, Qwen3-VL-30B-A3B "
                   "at TP 4 on RTX 3090s 1.92 GiB, GPT-2 on an RTX 4090 0.21, Granite-4.0-micro on an L40S 0.72 and "
                   "Qwen2.5-VL-3B on an L4 0.44 GiB")
#: vLLM 0.11, per decoder layer on the stage and graph captured, above `GRAPH_BASE_BYTES` and the model type's excess
#: (`graph_extra`, x graphs / 102): vllm#27782's 1.88 GiB (to the log's 0.01: up to 1.885 GiB) less 386 MiB and
#: qwen3_moe's 146 MiB, over 48 layers and 102 graphs: (1,930.2 - 386 - 146) MiB / 4,896 = 0.2856 MiB, rounded up
GRAPH_0_11_BYTES_PER_LAYER_GRAPH = 293 * KIB
#: vLLM 0.11, when it captures a FULL graph for more than `GRAPH_0_11_SMALL_BATCH_SEQS` sequences: the
#: Qwen2.5-Math-1.5B run's excess over the rule above, driver memory its engine held after capture: up to 3.495 GiB
#: logged, 3,578.9 - 386 - 28 layers x 134 graphs x 293 KiB = 2,119.3 MiB, rounded up
GRAPH_0_11_LARGE_BATCH_BYTES = 2120 * MIB
#: the largest FULL-graph batch of the 0.11 runs that show no excess: 256 sequences (RTX 3090, RTX 4090, L40S; the L4
#: run 128), the default below 70 GiB of both the OpenAI server and the LLM class
GRAPH_0_11_SMALL_BATCH_SEQS = 256
#: ``min(2 x max_num_seqs, 512)``: the largest default capture size of 0.11 and 0.19, and of 0.33 off Blackwell
MAX_DEFAULT_CAPTURE_SIZE = 512
#: 0.33 config/vllm.py ``_set_cudagraph_sizes``: ``default_max_graph_size`` on ``is_device_capability_family(100)``
MAX_DEFAULT_CAPTURE_SIZE_FAMILY_100 = 1024
#: What makes vLLM 0.33 run the V1 model runner (v1/worker/gpu_model_runner.py) instead of Model Runner V2 for a
#: generative model on a GPU: (the switch, where 0.33's code sets it).  ``VllmConfig.use_v2_model_runner``
#: (config/vllm.py) returns True for HiSparse and watermarking first, then ``VLLM_USE_V2_MODEL_RUNNER`` when set, then
#: False without Triton or for a feature ``_get_v2_model_runner_unsupported_features`` lists, else True; Worker.
#: ``_make_model_runner`` (v1/worker/gpu_worker.py) builds the V1 runner only when it is False.  None of these is a
#: plan option of nibble's (module docstring).
V1_RUNNER_SWITCHES_033: tuple[tuple[str, str], ...] = (
    ("VLLM_USE_V2_MODEL_RUNNER=0", "envs.py: maybe_convert_bool(os.getenv(...)), None when unset"),
    ("no Triton", "config/vllm.py use_v2_model_runner: not HAS_TRITON (triton_utils/importing.py: find_spec"
                  "(\"triton\")) on a platform vLLM knows (CUDA, ROCm)"),
    ("pipeline parallelism with external_launcher", "_get_v2_model_runner_unsupported_features: "
                                                    "distributed_executor_backend == \"external_launcher\" and "
                                                    "pipeline_parallel_size > 1"),
    ("speculative method 'suffix' or 'custom_class'", "_get_v2_model_runner_unsupported_features"),
    ("parallel drafting for EAGLE speculative decoding", "_get_v2_model_runner_unsupported_features: "
                                                         "parallel_drafting, method not dflash or dspark"),
    ("heterogeneous-vocabulary draft models", "_get_v2_model_runner_unsupported_features: use_heterogeneous_vocab"),
    ("dual batch overlap (--enable-dbo, --ubatch-size > 1)", "_get_dbo_unsupported_features: \"dual batch overlap\" "
                                                             "while VLLM_USE_V2_MODEL_RUNNER is unset"),
)
#: 0.33 v1/worker/gpu/cudagraph_utils.py ``_MIN_PER_GRAPH_BYTES`` (gpu_model_runner.py: "at least 1 MiB per graph for
#: driver overhead"): the floor of each extrapolated FULL graph in ``profile_cudagraph_memory``'s estimate
MIN_PER_GRAPH_BYTES = 1 * MIB


def cudagraph_capture_sizes(version: str, limits: BatchLimits,
                            capability: tuple[int, int] | None = None, rounded: bool = True) -> tuple[int, ...]:
    """The batch sizes vLLM `version` captures CUDA graphs for by default, ascending (module docstring); on 0.33 the
    device's compute `capability` sets the largest (None: not known, the larger).  With speculative decoding
    (`BatchLimits.speculative_tokens` k, 0.19) the largest is ``min(2 x max_num_seqs x (1 + k), 512)`` and, where the
    attention backend runs FULL decode graphs of ``1 + k`` tokens a sequence (``AttentionCGSupport.UNIFORM_BATCH`` or
    better: every MLA backend), the sizes are rounded up to multiples of ``1 + k``; `rounded` False gives them
    unrounded, as a backend that cannot captures them (PIECEWISE only): never fewer.  0.11 neither scales nor rounds
    them: config/scheduler.py ``SchedulerConfig.__post_init__`` sets ``cuda_graph_sizes`` to ``[min(max_num_seqs x
    2, 512)]`` whatever the speculative config, and config/__init__.py ``_set_cudagraph_sizes`` captures those."""
    if version == "0.33":
        return _capture_sizes_033(limits, capability)
    query = limits.decode_query_len
    largest = min(2 * limits.max_num_seqs * (1 if version == "0.11" else query), MAX_DEFAULT_CAPTURE_SIZE)
    if version == "0.11":
        sizes = [1, 2, 4, *range(8, largest + 1, 8)]
    else:
        sizes = [size for size in (1, 2, 4) if size <= largest]
        if largest >= 8:
            sizes += range(8, min(largest + 1, 256), 8)
        if largest >= 256:
            sizes += range(256, largest + 1, 16)
    captured = sorted({size for size in sizes if size <= min(largest, limits.max_batched_tokens)})
    if query == 1 or not captured or not rounded or version == "0.11":
        return tuple(captured)
    # speculative decoding under FULL decode graphs (0.19): each size rounded up to a multiple of 1 + k, those past
    # the largest dropped (config/compilation.py adjust_cudagraph_sizes_for_spec_decode, from
    # gpu_model_runner.py _check_and_update_cudagraph_mode)
    ceiling = captured[-1]
    multiples = {-(-size // query) * query for size in captured}
    return tuple(sorted(size for size in multiples if size <= ceiling)) or ((query,) if query <= ceiling else ())


def _capture_sizes_033(limits: BatchLimits, capability: tuple[int, int] | None) -> tuple[int, ...]:
    """0.33 config/vllm.py ``_set_cudagraph_sizes`` without speculative decoding (``uniform_decode_query_len`` 1):
    ``[1, 2, 4]``, multiples of 8 below 256 and of 16 from 256 up to ``min(2 x max_num_seqs, default,
    max_num_batched_tokens)`` (default 1024 on compute capability family 100, else 512), plus max_num_batched_tokens
    when it is no more than ``min(2 x max_num_seqs, default)`` and ``max_num_seqs`` (the uniform decode size) when it
    is no more than that and max_num_batched_tokens."""
    family_100 = capability is None or capability[0] == 10
    ceiling = min(2 * limits.max_num_seqs,
                  MAX_DEFAULT_CAPTURE_SIZE_FAMILY_100 if family_100 else MAX_DEFAULT_CAPTURE_SIZE)
    largest = min(limits.max_batched_tokens, ceiling)
    sizes = {size for size in (1, 2, 4) if size <= largest}
    if largest >= 8:
        sizes.update(range(8, min(largest + 1, 256), 8))
    if largest >= 256:
        sizes.update(range(256, largest + 1, 16))
    if limits.max_batched_tokens <= ceiling:
        sizes.add(limits.max_batched_tokens)
    if limits.max_num_seqs <= min(ceiling, limits.max_batched_tokens):
        sizes.add(limits.max_num_seqs)
    return tuple(sorted(sizes))


def cudagraph_count(version: str, limits: BatchLimits, capability: tuple[int, int] | None = None) -> tuple[int, int]:
    """(PIECEWISE, FULL) graphs vLLM `version` captures by default: a PIECEWISE graph for every capture size
    (`cudagraph_capture_sizes`) and, under the default ``FULL_AND_PIECEWISE``, a FULL graph for uniform decode batches
    of every size from 1 to ``max_num_seqs`` (0.11's ``GPUModelRunner.capture_model``: ``decode_cudagraph_batch_sizes``,
    ``max_num_seqs x uniform_decode_query_len >= x >= uniform_decode_query_len``, 1 without speculative decoding;
    0.33's v1/worker/gpu/cudagraph_utils.py ``CudaGraphManager._init_candidates``: a FULL descriptor for every size up
    to ``max_num_seqs x decode_query_len``; 0.19's v1/cudagraph_dispatcher.py ``initialize_cudagraph_keys``: the
    capture sizes from ``uniform_decode_query_len`` to ``max_num_seqs x uniform_decode_query_len``)."""
    sizes = cudagraph_capture_sizes(version, limits, capability)
    query = limits.decode_query_len
    return len(sizes), sum(1 for size in sizes if query <= size <= limits.max_num_seqs * query)


def largest_full_graph(version: str, limits: BatchLimits) -> int:
    """The largest batch vLLM `version` captures a FULL decode graph for by default (`cudagraph_count`): the largest
    capture size up to ``max_num_seqs x (1 + k)`` tokens (``max_num_seqs`` without speculative decoding), 0 when there
    is none.  Under speculative decoding a graph of that many tokens runs ``1 / (1 + k)`` as many sequences; it is
    counted in tokens, the larger, so that the 0.11 excess fitted to a FULL graph of many sequences
    (`GRAPH_0_11_LARGE_BATCH_BYTES`) is charged wherever either could set it: the safe side."""
    largest = limits.max_num_seqs * limits.decode_query_len
    return max((size for size in cudagraph_capture_sizes(version, limits) if size <= largest), default=0)


def graph_extra(spec: ModelSpec) -> tuple[int, str]:
    """(Bytes at the logged capture sizes above the dense rule, their source) for `spec`'s model type: its family's
    logged excess (`GRAPH_EXTRA_BY_MODEL_TYPE`), else the largest of its kind for a hybrid, MoE or MLA model, else
    none."""
    if spec.model_type in GRAPH_EXTRA_BY_MODEL_TYPE:
        return GRAPH_EXTRA_BY_MODEL_TYPE[spec.model_type]
    if spec.linear_attention is not None:
        return GRAPH_HYBRID_EXTRA_BYTES, "no log of this family: a Gated DeltaNet hybrid's, Qwen3-Next-80B's"
    if spec.is_moe or spec.is_mla:
        return GRAPH_MOE_EXTRA_BYTES, "no log of this family: the largest MoE excess, gpt-oss-20b's"
    return 0, ""


def cuda_graph_pool(stage: Stage, limits: BatchLimits, version: str, capability: tuple[int, int] | None = None) -> Term:
    """The memory vLLM `version` takes for its CUDA graphs on one device of `stage` (of compute `capability`, None
    when not known), after the KV cache is sized.  0.19: ``GRAPH_BASE_BYTES + (layers x GRAPH_BYTES_PER_LAYER +
    graph_extra) x sizes / 51``, `sizes` the capture sizes (`cudagraph_capture_sizes`); 0.33 the same with
    `GRAPH_0_33_BYTES_PER_LAYER`, the envelope of later releases' logs.  0.11: ``GRAPH_BASE_BYTES + layers x graphs
    x GRAPH_0_11_BYTES_PER_LAYER_GRAPH + graph_extra x graphs / 102``, `graphs` its PIECEWISE and FULL graphs
    (`cudagraph_count`), plus ``GRAPH_0_11_LARGE_BATCH_BYTES`` when a FULL graph is captured for more than
    ``GRAPH_0_11_SMALL_BATCH_SEQS`` sequences (`largest_full_graph`).  The module docstring says where each figure
    comes from."""
    spec = stage.spec
    # the speculative drafter's layers (vLLM's MTP layers) are captured on the last stage beside the model's
    # (gpu_model_runner.py _dummy_run: drafter.dummy_run at each capture size): charged as layers of the stage
    layers = stage.layers[1] - stage.layers[0] + (limits.draft_layers if stage.is_last else 0)
    extra, source = graph_extra(spec)
    why = f" + {extra / GIB:.2f} GiB for the model type, {source}" if extra else ""
    # under speculative decoding the unrounded sizes, never fewer than the rounded ones: the safe side whichever the
    # attention backend captures (`cudagraph_capture_sizes`)
    captured = cudagraph_capture_sizes(version, limits, capability, rounded=False)
    largest = max(captured, default=0)
    if version == "0.11":
        piecewise, full = cudagraph_count(version, limits)
        graphs = piecewise + full
        largest_full = largest_full_graph(version, limits)
        excess = GRAPH_0_11_LARGE_BATCH_BYTES if largest_full > GRAPH_0_11_SMALL_BATCH_SEQS else 0
        size = (GRAPH_BASE_BYTES + excess + layers * graphs * GRAPH_0_11_BYTES_PER_LAYER_GRAPH
                + extra * graphs // GRAPH_LOGGED_GRAPHS)
        scaled = (f" + {extra / GIB:.2f} GiB x {graphs} / {GRAPH_LOGGED_GRAPHS} graphs for the model type, {source}"
                  if extra else "")
        why_excess = (f" + {excess / GIB:.2f} GiB for FULL graphs above {GRAPH_0_11_SMALL_BATCH_SEQS} sequences (up "
                      f"to {largest_full}): the driver memory the Qwen2.5-Math-1.5B run, the one such run, held beyond "
                      "the rule" if excess else "")
        return Term(size, f"{size / GIB:.2f} GiB per device for the CUDA graphs vLLM 0.11 captures after sizing its "
                          f"KV cache ({piecewise} PIECEWISE and {full} FULL graphs up to {largest}, {layers} layers on "
                          f"the stage: 0.38 GiB + {layers} layers x {graphs} graphs x 0.286 MiB{scaled}{why_excess}, "
                          f"the envelope of {GRAPH_0_11_LOGS}: vLLM's code measures it, "
                          "gpu_model_runner.capture_model)")
    if version == "0.33":
        grows = (layers * GRAPH_0_33_BYTES_PER_LAYER + extra) * len(captured) // GRAPH_LOGGED_SIZES
        size = GRAPH_BASE_BYTES + grows
        return Term(size, f"{size / GIB:.2f} GiB for the CUDA graphs vLLM 0.33 captures ({len(captured)} capture "
                          f"sizes up to {largest}, {layers} layers on the stage: 0.38 GiB + (4.25 MiB a layer{why}) x "
                          f"{len(captured)} / {GRAPH_LOGGED_SIZES} sizes, the envelope of {GRAPH_0_33_LOGS}: vLLM's "
                          "code measures it)")
    grows = (layers * GRAPH_BYTES_PER_LAYER + extra) * len(captured) // GRAPH_LOGGED_SIZES
    size = GRAPH_BASE_BYTES + grows
    return Term(size, f"{size / GIB:.2f} GiB per device for the CUDA graphs vLLM {version} captures after sizing its "
                      f"KV cache ({len(captured)} capture sizes up to {largest}, {layers} layers on "
                      f"the stage: 0.38 GiB + (19 MiB a layer{why}) x {len(captured)} / {GRAPH_LOGGED_SIZES} sizes, "
                      "the envelope of llm-d-planner's vLLM 0.19.0 H100 logs of \"GiB for CUDAGraph memory\": "
                      "vLLM's code measures it, gpu_model_runner.capture_model)")


def graph_estimate_floor(limits: BatchLimits, capability: tuple[int, int] | None = None) -> int:
    """The least vLLM 0.33's ``profile_cudagraph_memory`` estimate holds for its graphs, bytes: every FULL graph past
    the first sampled one is extrapolated at no less than ``_MIN_PER_GRAPH_BYTES`` (v1/worker/gpu/cudagraph_utils.py
    ``_extrapolate_full_graph_memory``: ``first + (N - 1) x max(second, 1 MiB)``), N the FULL graphs
    (`cudagraph_count`); the rest of it is measured, and may be as little as nothing."""
    _piecewise, full = cudagraph_count("0.33", limits, capability)
    return max(full - 1, 0) * MIN_PER_GRAPH_BYTES


def graph_spill(stage: Stage, limits: BatchLimits, capability: tuple[int, int] | None = None) -> Term:
    """What vLLM 0.33's CUDA graphs may take on one device of `stage` beyond the estimate it subtracted from the
    budget, from the memory the budget leaves free: the graphs' envelope at 0.33's capture sizes (`cuda_graph_pool`)
    less the least the estimate holds of them (`graph_estimate_floor`).  The workspaces the estimate also measures
    (FlashInfer's) are allocated again after the KV cache, so they cancel (module docstring)."""
    pool = cuda_graph_pool(stage, limits, "0.33", capability)
    floor = graph_estimate_floor(limits, capability)
    size = max(pool.bytes - floor, 0)
    return Term(size, f"{size / GIB:.2f} GiB per device for the CUDA graphs vLLM 0.33 captures after sizing its KV "
                      f"cache beyond the estimate it charged inside the budget: {pool.bytes / GIB:.2f} GiB of graphs "
                      f"less the {floor / MIB:.0f} MiB its estimate holds at least ((FULL graphs - 1) x 1 MiB, "
                      "cudagraph_utils.py _extrapolate_full_graph_memory; the rest of the estimate is measured and "
                      "public runs log it under the capture, vllm#57047); the graphs: "
                      + pool.basis)
