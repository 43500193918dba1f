"""vLLM 0.19's DeepSeek Sparse Attention buffers that grow with max_model_len, as its code sizes them.

Read in the vLLM 0.19.0 wheel (vllm-0.19.0-cp38-abi3-manylinux_2_31_x86_64.whl from PyPI):

* v1/worker/workspace.py: one ``WorkspaceManager`` buffer per rank, grown to the largest ``get_simultaneous``
  request (each view rounded up to 256 bytes) until ``lock_workspace()`` after the profiling run; the fused-MoE
  caches (fused_moe/modular_kernel.py ``_allocate_buffers``) are views of the same buffer;
* v1/attention/backends/mla/flashmla_sparse.py, ``FlashMLASparseImpl.__init__`` (when the model is built):
  ``q_concat_buffer`` of ``(max_num_batched_tokens, heads per rank, 576)`` bf16, and with an fp8_ds_mla cache
  ``prefill_bf16_workspace`` of ``(get_prefill_workspace_size(max_model_len) = 5 x max_model_len, 576)`` bf16;
* model_executor/layers/sparse_attn_indexer.py in the profiling run: ``((total_seq_lens, head_dim), fp8)`` and
  ``((total_seq_lens, 4), uint8)`` with total_seq_lens = indexer.py's ``get_max_prefill_buffer_size`` =
  ``40 x max_model_len``;
* indexer.py, ``DeepseekV32IndexerMetadataBuilder.__init__``: ``expanded_block_table_buffer``,
  ``(max_num_batched_tokens, cdiv(max_model_len, block_size))`` int32, built by ``initialize_kv_cache`` after
  gpu_worker.determine_available_memory has sized the KV cache;
* flashmla_sparse.py, ``_forward_fp8_kv_mixed_batch`` (an fp8_ds_mla cache, fewer than 32 heads a rank): every
  token of a step through FlashMLA's fp8 sparse decode kernel, whose buffers (csrc/api/sparse_decode.h in
  github.com/deepseek-ai/FlashMLA, ``sparse_attn_decode_interface``: out, lse, o_accum, lse_accum) the profiling run
  never allocates; vllm#53413 (GLM-5.2-FP8 on 8 x H200, a runtime OOM in ``sparse_decode_fwd`` at 32,768 batched
  tokens) reports it "not accounted for during startup memory profiling".

vLLM 0.11.0 has none of them (its indexer's profiling path allocates a transient 2 x max_model_len x 132-byte key
buffer).  No public vLLM 0.19 start-up log of DeepSeek-V3.2 or GLM-5 was found to check the sum against.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from quant_core.catalog import get_preset_info
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_dsa import DsaWorkspace, dsa_block_table_bytes, dsa_mixed_batch_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config
from tests.quant_core.test_deepseek_v32 import spec_of as deepseek_v32
from tests.quant_core.test_glm_moe_dsa import spec_of as glm_5_1

GIB = 1 << 30
H200 = 143_771 * 2**20  # nvidia-smi's 143,771 MiB
SMALL_BATCH = BatchLimits(max_batched_tokens=2048, max_num_seqs=256)


def triton_moe_workspace(*, tokens: int, top_k: int, width: int, hidden: int) -> int:
    """vLLM 0.19's TritonExperts.workspace_shapes (fused_moe/fused_moe.py), through FusedMoEKernel._allocate_buffers
    (fused_moe/modular_kernel.py): workspace13 ``(M, top_k, max(w, K))`` (the ``(M, K)`` output shares it) and
    workspace2 ``(M, top_k, max(2w, K))``, bf16, each view of the workspace rounded up to 256 bytes."""
    views = (tokens * top_k * max(width, hidden) * 2, tokens * top_k * max(2 * width, hidden) * 2)
    return sum(-(-view // 256) * 256 for view in views)


def vllm_workspace(*, tokens: int, heads_per_rank: int, context: int, fp8_cache: bool, moe_caches: int) -> int:
    """What the workspace buffer adds to the fused-MoE caches, recomputed from vLLM 0.19's code (module docstring):
    the largest of the three requests, less the MoE caches nibble already charges in that buffer's place."""
    query = tokens * heads_per_rank * 576 * 2  # q_concat_buffer, bf16
    latent = 5 * context * 576 * 2 if fp8_cache else 0  # prefill_bf16_workspace, bf16
    indexer = 40 * context * 128 + 40 * context * 4  # fp8 keys and their 4-byte scales
    return max(query + latent, indexer, moe_caches) - moe_caches


def shipped_options(**changes: object) -> PlanOptions:
    preset = get_preset_info("deepseek-v3.2")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    return replace(PlanOptions(scheme=scheme, kv_cache_dtype="fp8", block_size=64), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("context", "kv_cache_dtype", "added"), [
    # fp8: 37,748,736 query + 377,487,360 latent = 415,236,096 < 469,762,048 MoE caches: nothing more
    (65_536, "fp8", 0),
    # bf16: no prefill latent; the indexer's 346,030,080 is below the MoE caches too
    (65_536, "bf16", 0),
    # 37,748,736 + 943,718,400 = 981,467,136 (0.91 GiB): the "~900 MB" flashmla_sparse.py's comment gives
    (163_840, "fp8", 511_705_088),
    # the indexer's 865,075,200: the "825 MB" indexer.py's comment gives for DeepSeek-V3.2
    (163_840, "bf16", 395_313_152),
])
def test_vllm_0_19_charges_deepseek_v32s_workspace_as_its_code_sizes_it(context: int, kv_cache_dtype: str,
                                                                         added: int) -> None:
    # 8 ranks of DeepSeek-V3.2 (128 heads: 16 a rank), 2048 batched tokens; the MoE caches nibble charges in the
    # same buffer: TritonExperts' 2048 x 8 experts x (max(256, 7168) + max(512, 7168)) x 2 = 469,762,048 bytes
    spec = deepseek_v32()
    moe = triton_moe_workspace(tokens=2048, top_k=8, width=2048 // 8, hidden=7168)
    assert moe == 469_762_048
    expected = vllm_workspace(tokens=2048, heads_per_rank=16, context=context, fp8_cache=kv_cache_dtype == "fp8",
                              moe_caches=moe)
    assert expected == added
    result = plan(spec, Hardware(H200, 8), Workload(context, 1),
                  PlanOptions(kv_cache_dtype=kv_cache_dtype, block_size=64, max_batched_tokens=2048,
                              max_num_seqs=256))
    without_context = VllmProfile("0.19").activation(Stage(spec, 8, 1, (0, 61), True), SMALL_BATCH).bytes
    assert result.activation.bytes - without_context == added
    assert all(device.activation_bytes == without_context + added for device in result.primary.devices)
    assert f"max_model_len={context}" in result.activation.basis
    assert "flashmla_sparse.py" in result.activation.basis and "get_max_prefill_buffer_size" in result.activation.basis


def test_vllm_0_19s_workspace_at_its_default_batch_on_h200_is_held_by_the_moe_caches() -> None:
    # 8192 batched tokens (H200's default): TritonExperts' MoE caches are 8192 x 8 x (7168 + 7168) x 2 =
    # 1,879,048,192 bytes; at 163,840 tokens and fp8 the query (150,994,944) and latent (943,718,400) fit in them
    moe = triton_moe_workspace(tokens=8192, top_k=8, width=2048 // 8, hidden=7168)
    assert moe == 1_879_048_192
    result = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1), shipped_options())
    base = VllmProfile("0.19").activation(Stage(deepseek_v32(), 8, 1, (0, 61), True), BatchLimits(8192, 1024))
    assert result.activation.bytes - base.bytes == 0 == vllm_workspace(
        tokens=8192, heads_per_rank=16, context=163_840, fp8_cache=True, moe_caches=moe)


@pytest.mark.parametrize(("context", "kv_cache_dtype", "added"), [
    (65_536, "fp8", 0), (202_752, "fp8", 774_635_520), (202_752, "bf16", 667_877_376)])
def test_vllm_0_19_charges_glm_5_1s_workspace_as_its_code_sizes_it(context: int, kv_cache_dtype: str,
                                                                    added: int) -> None:
    # GlmMoeDsaForCausalLM is deepseek_v2.py's model: 64 heads (4 a rank at 16), the same 576-wide latent and
    # 128-wide indexer key; TritonExperts' MoE caches 2048 x 8 x (max(128, 6144) + max(256, 6144)) x 2 = 402,653,184
    stage = Stage(glm_5_1(), 16, 1, (0, 78), True)
    workspace = VllmProfile("0.19").context_activation(stage, kv_cache_dtype, SMALL_BATCH)
    assert workspace is not None
    assert workspace.bytes_at(context) == added == vllm_workspace(
        tokens=2048, heads_per_rank=4, context=context, fp8_cache=kv_cache_dtype == "fp8",
        moe_caches=triton_moe_workspace(tokens=2048, top_k=8, width=2048 // 16, hidden=6144))


def test_vllm_0_11_has_no_sparse_attention_workspace_sized_by_the_context() -> None:
    stage = Stage(deepseek_v32(), 8, 1, (0, 61), True)
    assert VllmProfile("0.11").context_activation(stage, "fp8", SMALL_BATCH) is None
    assert dsa_block_table_bytes(deepseek_v32(), "0.11", 163_840, SMALL_BATCH) == 0
    short, long = (plan(deepseek_v32(), Hardware(H200, 8), Workload(context, 1),
                        PlanOptions(engine_version="0.11", kv_cache_dtype="fp8", block_size=64))
                   for context in (4096, 163_840))
    assert short.activation.bytes == long.activation.bytes


def test_models_without_an_indexer_have_no_context_sized_workspace() -> None:
    plain = replace(deepseek_v32(), index_n_heads=0, index_head_dim=0, index_topk=0)
    assert VllmProfile("0.19").context_activation(Stage(plain, 8, 1, (0, 61), True), "bf16", SMALL_BATCH) is None


def test_each_view_of_the_workspace_is_rounded_up_to_256_bytes() -> None:
    # workspace.py get_simultaneous: round_up(actual, 256) per view.  At 1001 tokens the indexer's scales are
    # 40,040 x 4 = 160,160 bytes -> 160,256; its keys 40,040 x 128 = 5,125,120 (whole); the fp8 prefill latent
    # 5 x 1001 x 1152 = 5,765,760 -> 5,765,888
    workspace = DsaWorkspace(query_bytes=1000, latent_row_bytes=1152, latent_rows_per_token=5,
                             indexer_row_bytes=128, counted_bytes=0)
    assert workspace.indexer_bytes(1001) == 5_125_120 + 160_256
    assert workspace.attention_bytes(1001) == 1024 + 5_765_888
    assert workspace.bytes_at(1001) == workspace.buffer_bytes(1001) == 5_766_912


def test_a_deepseek_v32_plan_within_the_workspace_of_the_edge_no_longer_fits() -> None:
    # 8 sequences of 163,840 tokens at fp8 on 8 ranks, 2048 batched tokens: the workspace adds 511,705,088 bytes a
    # rank.  A device whose budget holds the weights, the KV cache, the profiling peak without the workspace, the
    # overhead and half the workspace held the plan before it was charged; vLLM would not have had the KV cache for
    # the 8 sequences there
    spec, options, workload, added = deepseek_v32(), shipped_options(max_batched_tokens=2048, max_num_seqs=256), \
        Workload(163_840, 8), 511_705_088
    roomy = plan(spec, Hardware(H200, 8), workload, options).primary.devices[0]
    # the plan's experts are block fp8: on a device not known its activation holds TRT-LLM's per-call buffers (10.x)
    # beyond Triton's workspace, 294,943,736 bytes at 2048 tokens (engines/vllm.py trtllm_moe_bytes)
    peak = VllmProfile("0.19").activation(Stage(spec, 8, 1, (0, 61), True), SMALL_BATCH, "fp8-block128").bytes
    before = roomy.weights_bytes + roomy.kv_cache_bytes + peak + roomy.overhead_bytes
    capacity = math.ceil((before + added // 2) / 0.9)
    edge = plan(spec, Hardware(capacity, 8), workload, options)
    device = edge.primary.devices[0]
    assert device.used_bytes == before + added
    assert -added < device.headroom_bytes < 0
    assert not edge.primary.fits
    assert edge.primary.engine_max_concurrency is not None and edge.primary.engine_max_concurrency < 8
    assert edge.primary.max_concurrent_sequences == 7


def test_the_longest_context_search_charges_the_workspace_at_each_context_it_tries() -> None:
    # the workspace grows with max_model_len: the longest context found fits with its own workspace and one more
    # token does not
    options = shipped_options(max_batched_tokens=2048, max_num_seqs=256)
    longest = plan(deepseek_v32(), Hardware(H200, 8), Workload(4096, 16), options).primary.max_context_length
    assert longest is not None and longest < 163_840
    assert plan(deepseek_v32(), Hardware(H200, 8), Workload(longest, 16), options).primary.fits
    assert not plan(deepseek_v32(), Hardware(H200, 8), Workload(longest + 1, 16), options).primary.fits


def test_vllm_0_19s_expanded_block_table_is_noted_outside_the_budget() -> None:
    # DeepseekV32IndexerMetadataBuilder: 8192 x cdiv(163,840, 64) x 4 = 83,886,080 bytes (0.08 GiB), allocated
    # after the KV cache is sized: not charged (the KV capacity stays vLLM's), named in the notes
    assert dsa_block_table_bytes(deepseek_v32(), "0.19", 163_840, BatchLimits(8192, 1024)) == 83_886_080
    result = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1), shipped_options())
    noted = [note for note in result.warnings if "expanded block table" in note]
    assert len(noted) == 1 and "0.08 GiB" in noted[0] and "outside gpu_memory_utilization" in noted[0]
    assert not any(note.startswith("Does not fit") for note in result.warnings)
    # the table counts the kernel's 64-token blocks (create_metadata_builders: copy_with_new_block_size), whatever
    # --block-size the KV cache manager runs at
    coarse = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1), shipped_options(block_size=128))
    assert [note for note in coarse.warnings if "expanded block table" in note] == noted


@pytest.mark.parametrize(("tokens", "expected"), [
    # 8192 x 64 x 576 x 2 (padded query) + 8192 x 64 x 512 x 2 (out) + 8192 x 64 x 4 (lse)
    # + 2 splits x 8192 x 64 x (512 x 4 + 4) (o_accum, lse_accum): 3.07 GiB
    (8192, 603_979_776 + 536_870_912 + 2_097_152 + 2_151_677_952),
    # 32,768 tokens (vllm#53413's --max-num-batched-tokens): 4 x as much, 12.27 GiB
    (32_768, 4 * (603_979_776 + 536_870_912 + 2_097_152 + 2_151_677_952)),
    # 64 tokens: FlashMLA splits them over max(132 // 64, 1) = 2 SM parts, 3 accumulator slices
    (64, 64 * 64 * (1152 + 1024 + 4) + 3 * 64 * 64 * 2052),
])
def test_vllm_0_19s_fp8_mixed_batch_kernel_buffers(tokens: int, expected: int) -> None:
    # 16 heads a rank at TP 8 (under flashmla_sparse.py's MIN_HEADS_FOR_BF16_PREFILL = 32) with an fp8_ds_mla cache
    limits = BatchLimits(tokens, 256)
    assert dsa_mixed_batch_bytes(deepseek_v32(), "0.19", "fp8", 8, limits) == expected
    # GLM-5.1's 64 heads: 8 a rank at TP 8, the same padded kernel
    assert dsa_mixed_batch_bytes(glm_5_1(), "0.19", "fp8", 8, limits) == expected


def test_the_fp8_mixed_batch_path_runs_only_below_32_heads_a_rank_with_an_fp8_cache_on_0_19() -> None:
    limits = BatchLimits(8192, 1024)
    assert dsa_mixed_batch_bytes(deepseek_v32(), "0.19", "bf16", 8, limits) == 0  # the bf16 cache's own kernel
    assert dsa_mixed_batch_bytes(deepseek_v32(), "0.19", "fp8", 4, limits) == 0  # 32 heads: bf16 prefill kernel
    assert dsa_mixed_batch_bytes(deepseek_v32(), "0.11", "fp8", 8, limits) == 0
    assert dsa_mixed_batch_bytes(glm_5_1(), "0.19", "fp8", 4, limits) > 0  # 16 heads


def test_a_plan_does_not_fit_when_the_memory_outside_the_budget_cannot_hold_the_unprofiled_buffers() -> None:
    # 8 x H200 at fp8, 8192 batched tokens: the block table (0.08 GiB), the mixed-batch kernel (3.07 GiB), vLLM
    # 0.19's CUDA graphs (2.20 GiB, engines/vllm_graphs.py) and the 2.03 GiB in use at start-up (TP 8, a MoE model:
    # engines.vllm_releases.startup_memory) beside the 14.04 GiB a device keeps outside a 0.9 budget; at 0.98 (2.81 GiB
    # outside) vLLM runs out of memory: the plan does not fit
    roomy = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1), shipped_options())
    assert any("3.07 GiB per device" in note and "vllm#53413" in note for note in roomy.warnings)
    assert roomy.fits and not any(note.startswith("Does not fit") for note in roomy.warnings)
    tight = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1), shipped_options(memory_utilization=0.98))
    warned = [note for note in tight.warnings if note.startswith("Does not fit")]
    assert not tight.fits
    assert len(warned) == 1 and "7.38 GiB" in warned[0] and "2.81 GiB" in warned[0]
    # at 0.96 (5.62 GiB outside) a bf16 cache, which runs no mixed batch, fits: the table, the graphs and the start-up
    # memory (4.31 GiB); the fp8 cache's 7.38 GiB do not (before the start-up memory was charged: 2.28 and 5.35 GiB,
    # told apart at 0.98)
    bf16 = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1),
                shipped_options(memory_utilization=0.96, kv_cache_dtype="bf16"))
    assert not plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1),
                    shipped_options(memory_utilization=0.96)).fits
    assert bf16.fits
    assert not any("fp8 sparse decode kernel" in note or note.startswith("Does not fit") for note in bf16.warnings)
