"""Which weights one tensor-parallel rank holds whole and which a share of, as vLLM's model files build them.

Each case is derived by hand from the vLLM model file it cites (v0.11.0, v0.19.0 and v0.33.0 agree where not said),
comparing a preset's rank weights with those of the same model one dimension larger, so that only the tensors
that dimension sizes move.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import get_preset_info
from quant_core.formats import float_format
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec

BF16 = PlanOptions(weight_format=float_format("bf16"))


def rank_weights(spec: ModelSpec, tensor_parallel: int) -> int:
    """The weights on the first rank of a bf16 plan of `spec` over `tensor_parallel` 80 GiB devices."""
    result = plan(spec, Hardware(80 << 30, tensor_parallel), Workload(1024, 1), BF16)
    assert result.primary.refusal is None and len(result.primary.devices) == tensor_parallel
    return result.primary.devices[0].weights_bytes


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
def test_gpt2_learned_positions_are_whole_on_every_rank(tensor_parallel: int) -> None:
    # gpt2.py GPT2Model (v0.11, v0.19, v0.33): ``self.wpe = nn.Embedding(config.max_position_embeddings,
    # self.embed_dim)``, a plain embedding, not a VocabParallelEmbedding: each rank holds all its rows.  64 more
    # positions are 64 x 768 x 2 = 98,304 bytes on every rank (nibble split them: 49,152 at TP 2)
    spec = get_preset_info("gpt2").spec
    longer = replace(spec, max_position_embeddings=(spec.max_position_embeddings or 0) + 64)
    assert rank_weights(longer, tensor_parallel) - rank_weights(spec, tensor_parallel) == 64 * 768 * 2


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
def test_gpt2_holds_its_vocabulary_padded_to_64_rows(tensor_parallel: int) -> None:
    # vocab_parallel_embedding.py (v0.11, v0.19, v0.33): VocabParallelEmbedding pads the vocabulary to a multiple
    # of DEFAULT_VOCAB_PADDING_SIZE = 64 (pad_vocab_size) and gives each rank num_embeddings_padded / tp rows.
    # GPT-2's 50,257 tokens (tied lm_head) are 50,304 rows, as many as a vocabulary of 50,304 and 64 x 768 x 2 bytes
    # over all ranks more than one of 50,240 (785 x 64); nibble charged 47 rows fewer
    spec = get_preset_info("gpt2").spec
    padded = rank_weights(replace(spec, vocab_size=50_304), tensor_parallel)
    assert rank_weights(spec, tensor_parallel) == padded
    assert padded - rank_weights(replace(spec, vocab_size=50_240), tensor_parallel) == 64 * 768 * 2 // tensor_parallel


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
def test_olmo3_holds_its_embedding_and_lm_head_padded_to_64_rows(tensor_parallel: int) -> None:
    # olmo2.py (Olmo3 runs through it): VocabParallelEmbedding embed_tokens and ParallelLMHead lm_head (untied), both
    # padded to 64 rows (vocab_parallel_embedding.py pad_vocab_size): 100,278 tokens are 100,288 rows each, 10 rows of
    # 4096 x 2 bytes more than nibble charged, twice, split over the ranks
    spec = get_preset_info("olmo-3-1025-7b").spec
    assert spec.vocab_size == 100_278 and spec.hidden_size == 4096 and not spec.tie_word_embeddings
    assert rank_weights(spec, tensor_parallel) == rank_weights(replace(spec, vocab_size=100_288), tensor_parallel)


def big_rank_weights(spec: ModelSpec, tensor_parallel: int) -> int:
    """As `rank_weights` on 256 GiB devices, where an 80B model fits one rank in bf16."""
    result = plan(spec, Hardware(256 << 30, tensor_parallel), Workload(1024, 1), BF16)
    assert result.primary.refusal is None and len(result.primary.devices) == tensor_parallel
    return result.primary.devices[0].weights_bytes


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
def test_qwen3_next_splits_its_gated_deltanet_convolution(tensor_parallel: int) -> None:
    # layers/mamba/gdn_linear_attn.py (v0.19; qwen3_next.py in v0.11, gdn/qwen_gdn_linear_attn.py in v0.33):
    # ``self.conv1d = ColumnParallelLinear(input_size=conv_kernel_size, output_size=conv_dim)``, each rank
    # conv_dim / tp channels.  One more tap of the 8,192 channels (2 x 16 x 128 + 32 x 128) in each of the 36
    # linear layers is 36 x 8192 x 2 bytes over all ranks (nibble held conv1d whole: 589,824 on each)
    spec = get_preset_info("qwen3-next-80b-a3b-instruct").spec
    assert spec.linear_attention is not None and spec.linear_attention.conv_dim == 8192
    wider = replace(spec, linear_attention=replace(spec.linear_attention, conv_kernel_size=5))
    assert big_rank_weights(wider, tensor_parallel) - big_rank_weights(spec, tensor_parallel) == (
        36 * 8192 * 2 // tensor_parallel)


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
def test_qwen3_next_splits_dt_bias_and_holds_a_log_in_float32(tensor_parallel: int) -> None:
    # the same files: ``dt_bias`` torch.ones(num_v_heads // tp_size) in the model's dtype and ``A_log``
    # torch.empty(divide(num_v_heads, tp_size), dtype=torch.float32), both sharded_weight_loader(0).  Twice the
    # value heads at half their width (64 x 64 for 32 x 128) keeps in_proj_qkvz, conv1d and out_proj; in_proj_ba
    # (a column-parallel linear) gains 2 x 32 rows of 2048, dt_bias 32 x 2 bytes and A_log 32 x 4, split over the
    # ranks; the gated norm (RMSNormGated(head_v_dim), whole) loses 64 x 2 bytes.  nibble held dt_bias and A_log
    # whole in bf16: 32 x 2 + 32 x 2 on each rank
    spec = get_preset_info("qwen3-next-80b-a3b-instruct").spec
    assert spec.linear_attention is not None
    heads = replace(spec, linear_attention=replace(spec.linear_attention, num_value_heads=64, value_head_dim=64))
    per_layer = (2 * 32 * 2048 * 2 + 32 * 2 + 32 * 4) // tensor_parallel - 64 * 2
    assert big_rank_weights(heads, tensor_parallel) - big_rank_weights(spec, tensor_parallel) == 36 * per_layer


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
def test_gpt_oss_splits_its_attention_sinks(tensor_parallel: int) -> None:
    # gpt_oss.py OAIAttention (v0.11, v0.19, v0.33): ``sinks`` of num_attention_heads // tp_size, each rank loading
    # its heads' slice (bf16): gpt-oss-20b's 64 heads x 2 bytes in 24 layers, 3,072 bytes over all ranks (nibble held
    # them whole)
    spec = get_preset_info("gpt-oss-20b").spec
    assert spec.attention_sinks and spec.num_attention_heads == 64 and spec.num_layers == 24
    without = replace(spec, attention_sinks=False)
    assert rank_weights(spec, tensor_parallel) - rank_weights(without, tensor_parallel) == 3072 // tensor_parallel


@pytest.mark.parametrize("tensor_parallel", [1, 8])
def test_deepseek_holds_its_router_correction_bias_in_float32(tensor_parallel: int) -> None:
    # deepseek_v2.py DeepseekV2MoE (v0.11, v0.19, v0.33): with topk_method "noaux_tc" the gate gets
    # ``e_score_correction_bias = nn.Parameter(torch.empty(n_routed_experts, dtype=torch.float32))``, whole on every
    # rank: DeepSeek-V3's 58 MoE layers x 256 experts x 4 bytes = 59,392 bytes (nibble counted them at bf16: 29,696)
    spec = get_preset_info("deepseek-v3").spec
    assert spec.router_bias and spec.num_experts == 256 and len(spec.moe_layers) == 58
    without = replace(spec, router_bias=False)
    options = PlanOptions(weight_format=float_format("bf16"))
    def weights(model: ModelSpec) -> int:
        result = plan(model, Hardware(1 << 40, tensor_parallel), Workload(1024, 1), options)
        assert result.primary.refusal is None and len(result.primary.devices) == tensor_parallel
        return result.primary.devices[0].weights_bytes
    assert weights(spec) - weights(without) == 58 * 256 * 4


@pytest.mark.parametrize(("tensor_parallel", "per_layer"), [
    (1, (8192 + 2 * 1024) * 2),
    (2, (8192 + 2 * 1024) * 2 // 2),
    (8, (8192 + 2 * 1024) * 2 // 8),
    # 16 ranks over 8 key/value heads: each rank one query head's 1/16 of q_proj's bias and one whole key and one
    # whole value head (QKVParallelLinear replicates them, bias and weight alike): 1024 + 2 x 128 x 2
    (16, 8192 * 2 // 16 + 2 * 128 * 2),
])
def test_qwen2_5_splits_its_qkv_biases_with_their_heads(tensor_parallel: int, per_layer: int) -> None:
    # qwen2.py Qwen2Attention: qkv_proj = QKVParallelLinear(..., bias=True), a column-parallel layer whose bias is
    # output_size_per_partition (layers/linear.py, v0.11, v0.19, v0.33); o_proj has none.  Qwen2.5-72B's 80 layers
    # of q (8192), k and v (1024 each) biases at bf16; nibble held them whole: 20,480 bytes a layer on every rank
    spec = get_preset_info("qwen2.5-72b-instruct").spec
    without = replace(spec, attention_qkv_bias=False)
    options = PlanOptions(weight_format=float_format("bf16"))
    def weights(model: ModelSpec) -> int:
        result = plan(model, Hardware(1 << 40, tensor_parallel), Workload(1024, 1), options)
        assert result.primary.refusal is None and len(result.primary.devices) == tensor_parallel
        return result.primary.devices[0].weights_bytes
    assert weights(spec) - weights(without) == 80 * per_layer


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
def test_gpt2_splits_c_attn_and_c_fc_biases_and_holds_c_proj_biases_whole(tensor_parallel: int) -> None:
    # gpt2.py: c_attn a QKVParallelLinear and c_fc a ColumnParallelLinear (biases split with their rows), both
    # c_proj RowParallelLinear (biases whole).  12 layers: c_attn's 2,304 and c_fc's 3,072 bias elements split,
    # attn.c_proj's and mlp.c_proj's 768 each whole, at bf16
    spec = get_preset_info("gpt2").spec
    assert rank_weights(spec, tensor_parallel) - rank_weights(replace(spec, attention_qkv_bias=False),
                                                               tensor_parallel) == 12 * 2304 * 2 // tensor_parallel
    assert rank_weights(spec, tensor_parallel) - rank_weights(replace(spec, mlp_bias=False), tensor_parallel) == (
        12 * (3072 * 2 // tensor_parallel + 768 * 2))


@pytest.mark.parametrize(("preset", "refused", "accepted"), [
    ("glm-4-32b-0414", (6, 12, 24, 48), (1, 2, 4, 8, 16)),
    ("glm-4.5", (24, 48, 96), (1, 2, 4, 8, 16, 32)),
    ("falcon-7b", (71,), (1,)),
])
def test_vllm_refuses_ranks_that_do_not_divide_the_padded_vocabulary(
        preset: str, refused: tuple[int, ...], accepted: tuple[int, ...]) -> None:
    # vocab_parallel_embedding.py (v0.11, v0.19, v0.33): num_embeddings_per_partition =
    # divide(num_embeddings_padded, tp_size), which asserts (distributed/utils.py ensure_divisibility).  GLM's 151,552
    # tokens (a multiple of 64: 2^12 x 37) are no multiple of 6 or 24, which their heads (GLM-4-32B's 48 over 2
    # key/value heads, GLM-4.5's 96 over 8) would take; Falcon-7B's 65,024 (2^9 x 127) no multiple of its 71 heads
    from quant_core.engines.vllm import VllmProfile
    from quant_core.planner import engine_tensor_parallel_sizes
    spec = get_preset_info(preset).spec
    sizes = engine_tensor_parallel_sizes(spec)
    for tp in refused:
        reason = VllmProfile().refusal(spec, tp, 1)
        assert reason is not None and "vocabulary" in reason and tp not in sizes
    assert all(VllmProfile().refusal(spec, tp, 1) is None and tp in sizes for tp in accepted)
