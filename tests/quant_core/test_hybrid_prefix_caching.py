"""How many blocks a hybrid (Gated DeltaNet) model's sequence takes in vLLM, release by release.

vLLM charges a sequence ``MambaSpec.max_memory_usage_bytes`` in each linear-attention group
(vllm/v1/kv_cache_interface.py): ``1 + num_speculative_blocks`` pages in ``mamba_cache_mode`` "none" (prefix caching
off), ``2 + num_speculative_blocks`` in "align" (prefix caching on: the running state and the last block boundary's
checkpoint); Qwen3-Next and Qwen3.5 refuse "all" ("does not support 'all' prefix caching, please use
'--mamba-cache-mode=align'").  The attention block is sized alike in "none" and "align" (platforms/interface.py
``_align_hybrid_block_size``: only "all" aligns to the kernel chunk).  Which mode a release runs given no flag:

* 0.11: "none" (engine/arg_utils.py: "Disable prefix caching default for hybrid models", PR #23716; vLLM 0.11.2 logs
  Qwen3-Next with "Hybrid or mamba-based model detected without support for prefix caching: disabling");
* 0.19: "none" (config/model.py ``is_prefix_caching_supported`` answers False for a hybrid model after 0.11; v0.26 and
  v0.27.1's arg_utils.py still keep it "opt-in for now": ``is_prefix_caching_supported and not is_hybrid``);
* 0.33: "align" (PR #50991, "[Mamba] enable prefix cache by default", merged 2026-08-04, removed ``and not
  is_hybrid``; vLLM 0.29.0 logs "Mamba cache mode is set to 'align' for Qwen3_5ForConditionalGeneration by default
  when prefix caching is enabled", checked to the figure below).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile, hybrid_kv_capacity
from quant_core.engines.vllm_releases import MAMBA_CACHE_MODES, mamba_cache_mode
from quant_core.errors import InvalidSpec, UnknownName
from quant_core.hf_config import model_from_hf_config
from quant_core.kv_cache import MAMBA_CACHE_MODE_STATE_BLOCKS, hybrid_kv, kv_cache_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec

GIB = 1 << 30
DATA = Path(__file__).resolve().parent / "data" / "qwen3_next"


def qwen3_next() -> ModelSpec:
    config = json.loads((DATA / "qwen3-next-80b-a3b-instruct.json").read_text())
    return model_from_hf_config(config, name="qwen3-next-80b-a3b-instruct")


def qwen3_5_9b() -> ModelSpec:
    return model_from_hf_config(json.loads((DATA / "qwen3.5-9b.json").read_text()))


def qwen3_5_0_8b() -> ModelSpec:
    """Qwen3.5-0.8B's language model as far as its KV cache goes: the Qwen3.5-9B config with the sizes that differ.
    The public vLLM 0.29.0 write-up below reads Qwen3.5-0.8B's config as "24 layers, layer_types = 18
    linear_attention + 6 full_attention, 2 KV heads, head_dim 256"; a public Gated DeltaNet chapter takes
    "Qwen3.5-0.8B's Gated DeltaNet layers: 16 heads, d_k = d_v = 128" (16 key and 16 value heads, which the log's
    20.75% padding confirms below)."""
    config: dict[str, Any] = json.loads((DATA / "qwen3.5-9b.json").read_text())
    text = {**config["text_config"], "num_hidden_layers": 24, "num_key_value_heads": 2, "linear_num_key_heads": 16,
            "linear_num_value_heads": 16,
            "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 6}
    return model_from_hf_config({**config, "text_config": text})


def test_a_sequence_takes_one_block_per_linear_group_without_prefix_caching_and_two_with_it() -> None:
    # Qwen3-Next at TP 2: 544-token blocks, 1 full-attention group and 3 linear groups of 12 layers
    assert MAMBA_CACHE_MODE_STATE_BLOCKS == {"none": 1, "align": 2}
    off, on = (hybrid_kv(qwen3_next(), "bf16", 2, mamba_cache_mode=mode) for mode in ("none", "align"))
    assert off.block_size() == on.block_size() == 544 and off.page_bytes() == on.page_bytes() == 557_056
    assert off.blocks_per_sequence(262_144) == 482 + 3 * 1 == 485
    assert on.blocks_per_sequence(262_144) == 482 + 3 * 2 == 488
    assert off.blocks_per_sequence(4096) == 8 + 3 and on.blocks_per_sequence(4096) == 8 + 6
    assert on.blocks_per_sequence(0) == 0
    assert kv_cache_bytes(qwen3_next(), "bf16", 4096, 3, tensor_parallel=2, mamba_cache_mode="align") == \
        3 * 14 * 557_056 * 12
    with pytest.raises(InvalidSpec) as caught:  # vLLM's Qwen3-Next and Qwen3.5 classes refuse "all"
        hybrid_kv(qwen3_next(), mamba_cache_mode="all")
    assert caught.value.field == "mamba_cache_mode"


def test_each_release_runs_hybrid_models_in_its_default_prefix_caching_mode() -> None:
    assert {version: mamba_cache_mode(version) for version in ("0.11", "0.19", "0.33")} == \
        {"0.11": "none", "0.19": "none", "0.33": "align"}
    assert all(VllmProfile(version).mamba_cache_mode == mamba_cache_mode(version) for version in MAMBA_CACHE_MODES)
    assert "PR #50991" in MAMBA_CACHE_MODES["0.33"] and "--no-enable-prefix-caching" in MAMBA_CACHE_MODES["0.33"]
    assert "--enable-prefix-caching" in MAMBA_CACHE_MODES["0.19"]
    with pytest.raises(UnknownName):
        mamba_cache_mode("0.30")


def test_vllm_0_29s_logged_kv_cache_of_qwen3_5_0_8b_in_align_mode() -> None:
    # A public start-up log of vLLM 0.29.0 (released 2026-09-09; its CPU image vllm/vllm-openai-cpu:v0.29.0, written
    # up 2026-09-19) serving Qwen/Qwen3.5-0.8B at revision 2fc06364, `--max-model-len 2048 --language-model-only`, no
    # prefix-caching flag on its command line: "Mamba cache mode is set to 'align' for
    # Qwen3_5ForConditionalGeneration by default when prefix caching is enabled", "Setting attention block size to
    # 640 tokens", "Padding mamba page size by 20.75%", "Explicitly set (1.0/7.81) GiB for KV cache", "GPU KV cache
    # size: 27,852 tokens, Maximum concurrency for 2,048 tokens per request: 13.60x".
    spec = qwen3_5_0_8b()
    hybrid = hybrid_kv(spec, "bf16", 1, mamba_cache_mode="align")
    # conv 3 x (2 x 16 + 16) x 128 x 2 bytes + recurrent 16 x 128 x 128 x 4 bytes (mamba_ssm_dtype float32)
    assert hybrid.state_bytes == 36_864 + 1_048_576 == 1_085_440
    assert (hybrid.full_layers, hybrid.linear_layers, hybrid.full_groups, hybrid.linear_groups) == (6, 18, 1, 3)
    # 640 = 128 x ceil(530 / 128): the CPU backend's 128-token block (the smallest 16-token multiple would be 544)
    assert hybrid.block_size(128) == 640 and hybrid.page_bytes(128) == 640 * 2 * 2 * 256 * 2 == 1_310_720
    assert f"{100 * (hybrid.page_bytes(128) - hybrid.state_bytes) / hybrid.state_bytes:.2f}" == "20.75"
    capacity = hybrid_kv_capacity(Stage(spec, 1, 1, (0, 24), True), "bf16", GIB, 128, 2048, "0.33", True)
    assert capacity.num_blocks == GIB // (1_310_720 * 6) == 136
    assert hybrid.blocks_per_sequence(2048, 128) == 4 + 3 * 2 == 10  # one block in each linear group would be 7
    assert f"{capacity.max_concurrency:.2f}" == "13.60"  # 136 / 10; prefix caching off would say 19.43x
    assert capacity.tokens == int(136 / 10 * 2048) == 27_852
    print(f"vLLM 0.29.0 Qwen3.5-0.8B, 1 GiB, 2,048 tokens: {capacity.num_blocks} blocks, "
          f"{capacity.max_concurrency:.2f}x, {capacity.tokens:,} tokens")


def test_vllm_0_33_holds_fewer_qwen3_next_sequences_in_the_logged_pool_than_0_10_did() -> None:
    # The vLLM 0.10.2 log of test_qwen3_next.py (44.59 GiB a rank at TP 2, 262,144 tokens: 7,162 blocks, 14.77x)
    # with prefix caching on, as 0.33 runs it: 485 + 3 blocks a sequence
    stage = Stage(qwen3_next(), 2, 1, (0, 48), True)
    later = hybrid_kv_capacity(stage, "bf16", round(44.59 * GIB), 16, 262_144, "0.33", True)
    assert later.num_blocks == 7162
    assert later.max_concurrency == 7162 / 488 and f"{later.max_concurrency:.2f}" == "14.68"
    assert later.tokens == int(7162 / 488 * 262_144) == 3_847_285  # max_concurrency x max_model_len


@pytest.mark.parametrize(("version", "blocks", "sequences"), [
    # Qwen3-Next on 4 x H100 at 4,096 tokens: ceil(4,096 / 272) = 16 attention blocks and 1 or 2 per linear group
    # (every release charging the 32 MiB rotary cos/sin cache, v0.11 0.55 GiB of non-torch memory at TP>1, 932 where a
    # vLLM 0.10.2 run's 1.38 GiB, which held the NCCL set-up 0.11 takes before its start-up snapshot, gave 918; 0.19's
    # sampler pass sized from its code with the cuBLAS workspaces, 951 where the fitted 14.4 bytes a logit gave 952;
    # 0.33's Model Runner V2 pass and its 0.60 GiB of penalty state, 809 where the fitted 16 bytes a logit gave 813;
    # 0.33's cuBLAS workspaces are charged once, at start-up: 17,809 blocks, 10 more than with them in the activation;
    # 0.19's largest logged non-torch memory at TP=4, 2.21 GiB rather than 2.17: 950 and 808, 17,796 blocks; on the
    # catalog's H100 of 79.11 GiB (vllm#27508) rather than 79.18: 931, 949 and 808, 17,776 blocks; 0.33's graph
    # estimate at 51 capture sizes, 386 MiB + 48 layers x 4.25 MiB + the Gated DeltaNet hybrid's 642 MiB, 1.20 GiB
    # rather than a fixed 0.39: 782, 17,224 blocks; 0.11 at TP=4 charged the 8-rank non-torch 1.94 GiB, not TP=2's
    # 0.55, for NCCL's NVLink SHARP above two GPUs (vllm_releases._NON_TORCH_V0_11): 908, 17,252 blocks, where 931)
    ("0.11", 16 + 3, 908),
    ("0.19", 16 + 3, 949),
    ("0.33", 16 + 6, 782),
])
def test_a_short_context_plan_counts_the_release_s_state_blocks(version: str, blocks: int, sequences: int) -> None:
    spec = qwen3_next()
    result = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 4), Workload(4096, 1),
                  PlanOptions(engine_version=version))
    primary = result.primary
    hybrid = hybrid_kv(spec, "bf16", 4, mamba_cache_mode=mamba_cache_mode(version))
    assert hybrid.blocks_per_sequence(4096) == blocks
    group_block = hybrid.page_bytes() * hybrid.group_size
    pool_blocks = primary.kv_pool_bytes // group_block
    assert primary.engine_max_concurrency == pool_blocks / blocks
    assert primary.max_concurrent_sequences == pool_blocks // blocks == sequences
    assert (sequences + 1) * blocks > pool_blocks  # one more sequence's blocks are over the pool vLLM sizes
    if version == "0.33":  # one block per linear group would promise 906 (16% more than vLLM 0.33 holds)
        assert pool_blocks // (16 + 3) == 906
    note = next(warning for warning in result.warnings if "Gated DeltaNet" in warning)
    assert f"vLLM {version} runs a hybrid model given no prefix-caching flag" in note
    assert ("2 blocks in each of 3 linear" if version == "0.33" else "one block in each of 3 linear") in note
    print(f"vLLM {version}, Qwen3-Next on 4 x H100, 4,096 tokens: {blocks} blocks a sequence, {sequences} sequences, "
          f"GPU KV cache size {primary.kv_capacity_tokens:,}")


@pytest.mark.parametrize(("version", "blocks", "sequences"), [
    # Qwen3.5-9B on one H100 at 4,096 tokens: ceil(4,096 / 528) = 8 attention blocks (v0.11 has no Qwen3.5 class);
    # 0.33 with Model Runner V2's sampler pass and penalty state (260 with the fitted 16 bytes a logit); 335 and 258
    # on an H100 of 79.18 GiB, 334 and 257 on the catalog's 79.11 (vllm#27508); 0.33 250 with its graph estimate at
    # 51 capture sizes, 386 MiB + 32 layers x 4.25 MiB + the hybrid's 642 MiB, 1.14 GiB rather than a fixed 0.39
    ("0.19", 8 + 3, 334),
    ("0.33", 8 + 6, 250),
])
def test_a_short_context_qwen3_5_plan_counts_the_release_s_state_blocks(version: str, blocks: int,
                                                                       sequences: int) -> None:
    spec = qwen3_5_9b()
    primary = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 1), Workload(4096, 1),
                   PlanOptions(engine_version=version)).primary
    hybrid = hybrid_kv(spec, "bf16", 1, mamba_cache_mode=mamba_cache_mode(version))
    assert hybrid.blocks_per_sequence(4096) == blocks
    pool_blocks = primary.kv_pool_bytes // (hybrid.page_bytes() * hybrid.group_size)
    assert primary.max_concurrent_sequences == pool_blocks // blocks == sequences
    if version == "0.33":  # GPU KV cache size: max_concurrency x max_model_len
        assert primary.kv_capacity_tokens == int(pool_blocks / blocks * 4096)
    print(f"vLLM {version}, Qwen3.5-9B on 1 x H100, 4,096 tokens: {blocks} blocks a sequence, {sequences} sequences")


def test_vllm_0_33_refuses_a_hybrid_block_larger_than_the_batched_tokens() -> None:
    # config/vllm.py (PR #34445, February 2026), in "align" mode only: "In Mamba cache align mode, block_size (N) must
    # be <= max_num_batched_tokens (M)" (public start-up failures quote it: "block_size (2096) must be <= ... (2048)")
    spec, h100s = qwen3_next(), Hardware(get_device("h100-80gb").planning_bytes, 4)  # a 272-token block at TP 4
    with pytest.raises(InvalidSpec) as caught:
        plan(spec, h100s, Workload(4096, 1), PlanOptions(engine_version="0.33", max_batched_tokens=256))
    assert caught.value.field == "runtime.max_batched_tokens" and "block_size (272)" in str(caught.value)
    assert plan(spec, h100s, Workload(4096, 1), PlanOptions(engine_version="0.33", max_batched_tokens=272)).primary.fits
    assert plan(spec, h100s, Workload(4096, 1), PlanOptions(engine_version="0.19", max_batched_tokens=256)).primary.fits


def test_vllm_0_33s_longest_context_leaves_two_state_blocks_per_linear_group() -> None:
    # 256 sequences on 4 x H100: the longest context is a whole number of 272-token blocks, after each sequence's
    # 3 x 2 state blocks
    spec = qwen3_next()
    result = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 4), Workload(4096, 256),
                  PlanOptions(engine_version="0.33"))
    longest, pool = result.primary.max_context_length, result.primary.kv_pool_bytes
    assert longest is not None and result.primary.context_limited_by == "memory" and longest % 272 == 0
    hybrid = hybrid_kv(spec, "bf16", 4, mamba_cache_mode="align")
    group_block = hybrid.page_bytes() * hybrid.group_size
    assert 256 * (longest // 272 + 6) * group_block <= pool < 256 * (longest // 272 + 7) * group_block
    print(f"vLLM 0.33, 256 Qwen3-Next sequences on 4 x H100: at most {longest:,} tokens each")


def test_the_fewest_devices_skip_degrees_whose_hybrid_block_vllm_0_33_refuses_to_start() -> None:
    # Qwen3-Next's align-mode block is 544 tokens at TP 1 and 2, 272 at TP 4: with 300 batched tokens vLLM 0.33
    # refuses to start at one or two devices ("block_size (544) must be <= max_num_batched_tokens (300)"), so the
    # fewest devices at INT4 are 4, not the 1 whose plan is refused (it said 1)
    spec, h100 = qwen3_next(), get_device("h100-80gb").planning_bytes
    options = PlanOptions(engine_version="0.33", max_batched_tokens=300)
    result = plan(spec, Hardware(h100, 8), Workload(4096, 1), options)
    assert result.comparison["int4"].min_devices == 4
    assert plan(spec, Hardware(h100, 4), Workload(4096, 1), options).comparison["int4"].fits
    with pytest.raises(InvalidSpec, match=r"block_size \(544\)"):
        plan(spec, Hardware(h100, 1), Workload(4096, 1), options)
    assert plan(spec, Hardware(h100, 8), Workload(4096, 1),
                PlanOptions(engine_version="0.19", max_batched_tokens=300)).comparison["int4"].min_devices == 1
