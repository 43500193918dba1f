"""Llama 4's chunked local attention, planned as each vLLM release allocates it.

Sources (read in the v0.11.0, v0.19.0 and v0.33.0 wheels from PyPI):

* vllm/envs.py: ``VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE`` defaults to "0" in v0.11.0 (vLLM PR #21761)
  and to "1" in v0.19.0 and v0.33.0 (PR #29627); config/__init__.py (v0.11) and config/vllm.py (v0.19, v0.33) turn
  the hybrid KV cache manager off for a model with ``attention_chunk_size`` while it is "0".
* model_executor/models/llama4.py: the RoPE layers (``no_rope_layers[i] == 1``) are ChunkedLocalAttention, whose
  ``get_kv_cache_spec`` is a ChunkedLocalAttentionSpec; the NoPE layers are full Attention.
* v1/core/kv_cache_utils.py (kv_cache_planning.py in v0.33): with the manager off, ``unify_hybrid_kv_cache_specs``
  makes every layer a FullAttentionSpec (one group of 48); on, ``_get_kv_cache_groups_uniform_page_size`` forms
  "(FullAttention x 12) (ChunkedLocalAttention x 12) (ChunkedLocalAttention x 12) (ChunkedLocalAttention x 12)" (the
  groups vLLM PR #21761's description lists for Llama-4-Scout), ``num_blocks = available // page // 12``.
* "GPU KV cache size": ``num_blocks // groups x block`` in v0.11/v0.19 (``_report_kv_cache_config``),
  ``int(max_concurrency x max_model_len)`` in v0.33 (``get_kv_cache_capacity``).
* "Maximum concurrency" (``get_max_concurrency_for_kv_cache_config``): ``num_blocks`` over the blocks one request
  of max_model_len reserves in every group; a ChunkedLocalAttentionSpec group reserves
  ``cdiv(min(chunk + in-flight tokens, max_model_len), block)`` (kv_cache_interface.py), the in-flight tokens being
  ``max_num_batched_tokens`` in v0.19 and ``VllmConfig.max_in_flight_tokens`` = ``max_concurrent_batches x
  max_num_batched_tokens`` in v0.33 (2 batches with async scheduling and the V2 model runner, both default, at one
  pipeline stage; vLLM PR #47728 frees out-of-chunk blocks on the processed-token basis).
* v1/core/single_type_kv_cache_manager.py, ChunkedLocalAttentionManager: ``get_num_skipped_tokens`` =
  ``computed // chunk x chunk``, and ``remove_skipped_blocks`` frees those blocks: a decoding sequence holds the
  tokens of its current chunk, at most 8192.

No public start-up log of Llama 4 on a release with the hybrid manager on (v0.13 and later) was found to test
against: the figures below are recomputed from those formulas.
"""

from __future__ import annotations

import pytest

from quant_core.catalog import get_device, get_preset
from quant_core.engines import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_releases import chunked_local_attention
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format
from quant_core.hf_config import model_from_hf_config
from quant_core.kv_cache import kv_bytes_per_token, kv_cache_bytes, kv_layers
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from tests.quant_core.test_hf_config import llama4_config

SCOUT = "llama-4-scout-17b-16e-instruct"
CHUNK = 8192
BLOCK = 16
#: bytes one token costs one layer on one of 8 tensor-parallel ranks: 8 KV heads / 8 = 1 head x 128 x (K + V) x bf16
LAYER_TOKEN_BYTES_TP8 = 1 * 128 * 2 * 2
PAGE_TP8 = BLOCK * LAYER_TOKEN_BYTES_TP8  # 8,192 bytes, one block of one layer
FULL_LAYERS, CHUNKED_LAYERS = 12, 36
BATCHED = 8192  # the OpenAI server's max_num_batched_tokens on an H100 (engine/arg_utils.py get_batch_defaults)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _scout_on_8_h100s(version: str, context_length: int, sequences: int = 1) -> Plan:
    h100 = get_device("h100-80gb")
    return plan(get_preset(SCOUT), Hardware(h100.planning_bytes, 8, h100.id), Workload(context_length, sequences),
                PlanOptions(weight_format=float_format("bf16"), tensor_parallel=8, engine_version=version))


@pytest.mark.parametrize("name", [SCOUT, "llama-4-maverick-17b-128e-instruct"])
def test_the_36_rope_layers_are_chunked_local_attention_of_8192_tokens(name: str) -> None:
    # config.json (tests/quant_core/data/llama4): "attention_chunk_size": 8192 and "no_rope_layers": [], which
    # Llama4TextConfig replaces by its default, 1 (RoPE, chunked) for every layer but each 4th (3, 7, ..., 47: NoPE)
    config_spec = model_from_hf_config(llama4_config(name))
    assert config_spec.attention_chunk_size == CHUNK
    assert config_spec.chunked_layers == tuple(i for i in range(48) if (i + 1) % 4)
    assert [layer.index for layer in kv_layers(config_spec) if layer.kind == "full"] == list(range(3, 48, 4))
    preset = get_preset(name)
    assert (preset.attention_chunk_size, preset.chunked_layers) == (CHUNK, config_spec.chunked_layers)
    assert {layer.window for layer in kv_layers(preset) if layer.kind == "chunked"} == {CHUNK}


def test_an_explicit_null_chunk_size_leaves_every_layer_global_as_vllm_builds_them() -> None:
    # llama4.py: use_chunked_local_attn = not self.nope and config.attention_chunk_size (None: plain Attention)
    text = dict(llama4_config(SCOUT)["text_config"], attention_chunk_size=None)
    spec = model_from_hf_config(text)
    assert spec.chunked_layers == () and spec.attention_chunk_size is None
    assert kv_cache_bytes(spec, context_length=100_000) == 196_608 * 100_000


def test_no_rope_layers_that_do_not_list_every_layer_are_refused_naming_the_key() -> None:
    text = dict(llama4_config(SCOUT)["text_config"], no_rope_layers=[1, 1, 1, 0])
    with pytest.raises(InvalidSpec) as error:
        model_from_hf_config(text)
    assert error.value.field == "no_rope_layers"


def test_the_generic_kv_cache_holds_one_chunk_in_chunked_layers_and_the_whole_context_when_asked() -> None:
    scout = get_preset(SCOUT)
    # 196,608 bytes a token over all 48 layers at tensor parallel 1, uncapped
    assert kv_bytes_per_token(scout) == 48 * 8 * 128 * 2 * 2 == 196_608
    per_layer_token = 8 * 128 * 2 * 2  # 4,096 bytes
    # 100,000 tokens: the 12 global layers hold them all, the 36 chunked layers one chunk of 8,192
    assert kv_cache_bytes(scout, context_length=100_000) == per_layer_token * (
        FULL_LAYERS * 100_000 + CHUNKED_LAYERS * CHUNK) == 6_123_159_552
    # vLLM 0.11's allocation (hybrid manager off): every layer the whole context
    assert kv_cache_bytes(scout, context_length=100_000, chunked_local=False) == 196_608 * 100_000
    # below one chunk chunking changes nothing: 4,000 tokens round up to 250 blocks of 16 in every layer
    assert kv_cache_bytes(scout, context_length=4_000) == kv_cache_bytes(scout, context_length=4_000,
                                                                           chunked_local=False) == 196_608 * 4_000


@pytest.mark.parametrize(("version", "chunked"), [("0.11", False), ("0.19", True), ("0.33", True)])
def test_each_release_says_whether_it_holds_only_the_current_chunk(version: str, chunked: bool) -> None:
    assert chunked_local_attention(version) is chunked
    assert VllmProfile(version).chunked_local_attention is chunked


def _expected_at(version: str, pool: int, max_model_len: int) -> tuple[int, float, int, int]:
    """(GPU KV cache size tokens, Maximum concurrency, KV bytes of one sequence, most sequences) as vLLM `version`
    computes them for Scout at TP 8 from the KV pool `pool` of one rank.  From 0.19 one sequence is charged what vLLM
    reserves for one request (its start-up check, ``max_memory_usage_bytes``), and the most sequences are one at that
    reservation and the others decoding: a chunk per chunked layer, and in 0.33 one token more, the step in flight
    (kv_cache_manager.py ``allocate_slots`` frees from the settled tokens), in whole blocks (`kv_cache.WindowedKV`)."""
    if version == "0.11":  # unify_hybrid_kv_cache_specs: one group of 48 FullAttentionSpec layers
        num_blocks = pool // PAGE_TP8 // 48
        tokens = num_blocks * BLOCK
        concurrency = num_blocks / _cdiv(max_model_len, BLOCK)
        per_sequence = 48 * _cdiv(max_model_len, BLOCK) * BLOCK * LAYER_TOKEN_BYTES_TP8
    else:  # 1 full group + 3 chunked groups of 12 layers each
        num_blocks = pool // PAGE_TP8 // 12
        in_flight = BATCHED if version == "0.19" else 2 * BATCHED
        per_request = _cdiv(max_model_len, BLOCK) + 3 * _cdiv(min(CHUNK + in_flight, max_model_len), BLOCK)
        concurrency = num_blocks / per_request
        tokens = num_blocks // 4 * BLOCK if version == "0.19" else int(concurrency * max_model_len)
        per_sequence = PAGE_TP8 * 12 * per_request
        unsettled = 1 if version == "0.33" else 0
        decode = _cdiv(max_model_len, BLOCK) + 3 * min(_cdiv(max_model_len, BLOCK), _cdiv(CHUNK + unsettled, BLOCK))
        sequences = 0 if num_blocks < per_request else 1 + (num_blocks - per_request) // decode
        return tokens, concurrency, per_sequence, sequences
    return tokens, concurrency, per_sequence, pool // per_sequence


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_scout_at_a_million_tokens_on_8_h100s_is_planned_as_each_release_allocates_it(version: str) -> None:
    result = _scout_on_8_h100s(version, 1_048_576)
    primary = result.primary
    tokens, concurrency, per_sequence, sequences = _expected_at(version, primary.kv_pool_bytes, 1_048_576)
    assert primary.kv_capacity_tokens == tokens
    assert primary.engine_max_concurrency == pytest.approx(concurrency, rel=1e-12)
    assert primary.devices[0].kv_cache_bytes == per_sequence
    assert primary.max_concurrent_sequences == sequences
    # 0.11: 48 layers x 1,048,576 tokens x 512 bytes = 24.0 GiB a sequence; 0.19 / 0.33: 12 layers the whole
    # context and 36 one chunk and the tokens in flight (0.19: one batch of 8,192, 0.33: two),
    # 512 x (12 x 1,048,576 + 36 x 16,384) = 6.28 GiB and 512 x (12 x 1,048,576 + 36 x 24,576) = 6.42 GiB
    assert per_sequence == {"0.11": 25_769_803_776, "0.19": 6_744_440_832, "0.33": 6_895_435_776}[version]
    # the longest context for one sequence: whole blocks of the 12 global layers after the 36 chunks
    pool_tokens = primary.kv_pool_bytes // LAYER_TOKEN_BYTES_TP8
    if version == "0.11":
        longest = pool_tokens // (48 * BLOCK) * BLOCK
    else:  # whole blocks of the 12 global layers after the 36 chunked layers' reservation for one request
        in_flight = BATCHED if version == "0.19" else 2 * BATCHED
        longest = (primary.kv_pool_bytes // (PAGE_TP8 * 12) - 3 * _cdiv(CHUNK + in_flight, BLOCK)) * BLOCK
    assert primary.max_context_length == longest
    assert primary.context_limited_by == "memory"


def test_the_hybrid_releases_plan_about_four_times_the_sequences_and_context_of_0_11() -> None:
    old, new = _scout_on_8_h100s("0.11", 1_048_576).primary, _scout_on_8_h100s("0.19", 1_048_576).primary
    # (the pools differ by the releases' activation and non-torch terms, 38.0 vs 40.9 GB; both net of the rotary
    # cos/sin cache every rank holds, 10,485,760 positions x 128 x 2 bytes = 2.5 GiB: llama4.py builds its llama3
    # RoPE over max_position_embeddings, which was 1,620,896 and 1,778,240 tokens before it was charged; 0.19's
    # sampler pass sized from its code, with the cuBLAS workspaces, gave 1,669,184 where 14.4 bytes a logit gave
    # 1,669,008; 0.11's PyTorch sort sized from its code, with the same workspaces, 1,512,816 where 38 bytes a logit
    # beside 2 x 8192 hidden states gave 1,511,664; 1,549,040 with 0.11's own 0.55 GiB of non-torch memory at TP > 1
    # rather than a vLLM 0.10.2 run's 1.38 GiB, which held the NCCL set-up 0.11 takes before its start-up snapshot:
    # 849 MiB more a rank, 36,224 tokens of 24,576 bytes; 0.19's 1,667,392 with its largest logged non-torch memory
    # at TP=4, charged at TP=8: 2.21 GiB rather than 2.17, 1,669,184 before; on the catalog's H100 of 79.11 GiB
    # (vllm#27508) rather than 79.18, 0.063 GiB less a rank at 0.9: 1,546,288 and 1,664,640, 1.48x and 6.08x before;
    # 0.11's non-torch memory at 8 ranks, 1,989 MiB rather than TP=2's 564 (vllm_releases._NON_TORCH_V0_11: NCCL's
    # NVLink SHARP buffers and PyTorch's communicator, set up inside the profiling run above two GPUs): 1,425 MiB a
    # rank, 60,800 tokens of 24,576 bytes fewer for 0.11: 1,546,288 and 1.47x before, a context ratio of 4.27, now 4.45)
    assert (old.max_concurrent_sequences, new.max_concurrent_sequences) == (1, 6)
    assert old.max_context_length is not None and new.max_context_length is not None
    assert 3.9 < new.max_context_length / old.max_context_length < 4.5
    assert (old.kv_capacity_tokens, new.kv_capacity_tokens) == (1_485_488, 1_664_640)
    assert old.engine_max_concurrency is not None and new.engine_max_concurrency is not None
    assert round(old.engine_max_concurrency, 2) == 1.42 and round(new.engine_max_concurrency, 2) == 6.07


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_scout_at_4096_tokens_holds_the_same_kv_in_every_release(version: str) -> None:
    # 4,096 tokens < one chunk: every layer holds the whole context whatever the release
    primary = _scout_on_8_h100s(version, 4096).primary
    tokens, concurrency, per_sequence, sequences = _expected_at(version, primary.kv_pool_bytes, 4096)
    assert primary.devices[0].kv_cache_bytes == per_sequence == 48 * 4096 * 512 == 100_663_296
    assert primary.kv_capacity_tokens == tokens
    assert primary.engine_max_concurrency == pytest.approx(concurrency, rel=1e-12)
    assert primary.max_concurrent_sequences == sequences


def test_0_33_reserves_a_chunk_and_one_batch_more_per_pipeline_stage_in_flight() -> None:
    # config/vllm.py (v0.33): max_concurrent_batches is pipeline_parallel + 1 with async scheduling and the V2 model
    # runner; at PP 2 each chunked group reserves cdiv(min(8192 + 3 x 8192, L), 16) blocks per request
    scout = get_preset(SCOUT)
    stage = Stage(scout, 8, 2, (0, 24), False)  # 6 full + 18 chunked layers: groups of 6, 1 full + 3 chunked
    pool = 10 * 1024**3
    capacity = VllmProfile("0.33").kv_capacity(stage, "bf16", pool, BLOCK, 1_048_576, BatchLimits(BATCHED, 1024))
    num_blocks = pool // (PAGE_TP8 * 6)
    assert capacity.num_blocks == num_blocks
    per_request = 65_536 + 3 * _cdiv(CHUNK + 3 * BATCHED, BLOCK)
    assert capacity.max_concurrency == num_blocks / per_request
    assert capacity.tokens == int(num_blocks / per_request * 1_048_576)


@pytest.mark.parametrize(("version", "phrase"), [
    ("0.11", "planned as full attention"), ("0.19", "planned at one chunk of 8,192 tokens"),
    ("0.33", "planned at one chunk of 8,192 tokens")])
def test_the_plan_says_what_the_chunked_layers_hold_in_its_release(version: str, phrase: str) -> None:
    notes = [note for note in _scout_on_8_h100s(version, 4096).warnings if "chunked local attention" in note]
    assert len(notes) == 1
    assert phrase in notes[0]
    assert "VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE" in notes[0]
