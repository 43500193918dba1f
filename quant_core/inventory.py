"""ModelSpec -> its weight tensors (name pattern, shape, role, count), and every number derived from them.

`inventory(spec)` lists each weight tensor of the model transformers builds from the
config, in Hugging Face naming (``{i}`` for the layer index, ``{e}`` for the expert),
with repeated tensors as one `TensorEntry` row: the routed experts of one projection
over all MoE layers (DeepSeek-V3: 58 layers x 256 experts) are one row, so the
inventory of a 671B model has a few dozen rows.  Shapes of linear layers are the
logical ``[out_features, in_features]``: GPT-2's Conv1D stores its weights transposed,
``[in, out]``, and gpt-oss stores its experts fused as ``[E, in, out]`` tensors, but
their element counts and their int4 groups (along the input dimension) are those of
the logical shape.

From the inventory: `parameter_count` (total, by role, active per token for MoE, and
the embedding / lm_head / position-embedding breakdown), and `weight_bytes` under a
`QuantizationPolicy`, through `WeightFormat.bytes_for`, the one place that knows sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache

from quant_core.errors import GroupSizeMismatch, UnknownName
from quant_core.formats import FLOAT_FORMATS, WeightFormat, float_format, int4
from quant_core.specs import (
    QUANTIZED_ROLES,
    ROLES,
    Llama4VisionTower,
    ModelSpec,
    PixtralVisionTower,
    Qwen3VisionTower,
    QwenVisionTower,
    TensorEntry,
    VisionTower,
)


class _Builder:
    """Collects rows; a row over an empty set of layers is dropped."""

    def __init__(self) -> None:
        self.rows: list[TensorEntry] = []

    def add(self, name: str, shape: tuple[int, ...], role: str, layers: tuple[int, ...] | None = None,
            per_layer: int = 1, active_per_layer: int | None = None) -> None:
        if layers is not None and not layers:
            return
        self.rows.append(TensorEntry(name, shape, role, layers or (), per_layer, active_per_layer))

    def linear(self, name: str, out_features: int, in_features: int, role: str, layers: tuple[int, ...],
               bias: bool, per_layer: int = 1, active_per_layer: int | None = None) -> None:
        """A linear layer ``name.weight`` [out, in], and ``name.bias`` [out] when it has one."""
        self.add(f"{name}.weight", (out_features, in_features), role, layers, per_layer, active_per_layer)
        if bias:
            self.add(f"{name}.bias", (out_features,), "bias", layers, per_layer, active_per_layer)

    def norm(self, name: str, size: int, layers: tuple[int, ...] | None, kind: str) -> None:
        """An RMSNorm (weight) or LayerNorm (weight + bias) of `size`."""
        self.add(f"{name}.weight", (size,), "norm", layers)
        if kind == "layernorm":
            self.add(f"{name}.bias", (size,), "bias", layers)


def _gated_mlp(b: _Builder, prefix: str, width: int, spec: ModelSpec, layers: tuple[int, ...],
               role: str = "mlp", per_layer: int = 1, active: int | None = None,
               names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
               bias: bool = False) -> None:
    hidden = spec.hidden_size
    gate, up, down = names
    b.linear(f"{prefix}.{gate}", width, hidden, role, layers, bias, per_layer, active)
    b.linear(f"{prefix}.{up}", width, hidden, role, layers, bias, per_layer, active)
    b.linear(f"{prefix}.{down}", hidden, width, role, layers, bias, per_layer, active)


def _llama_attention(b: _Builder, spec: ModelSpec, layers: tuple[int, ...]) -> None:
    p = "model.layers.{i}.self_attn"
    q_out = spec.num_attention_heads * spec.head_dim
    kv_out = spec.num_kv_heads * spec.head_dim
    b.linear(f"{p}.q_proj", q_out, spec.hidden_size, "attention", layers, spec.attention_qkv_bias)
    b.linear(f"{p}.k_proj", kv_out, spec.hidden_size, "attention", layers, spec.attention_qkv_bias)
    b.linear(f"{p}.v_proj", kv_out, spec.hidden_size, "attention", layers, spec.attention_qkv_bias)
    b.linear(f"{p}.o_proj", spec.hidden_size, q_out, "attention", layers, spec.attention_output_bias)
    if spec.qk_norm:
        b.norm(f"{p}.q_norm", spec.head_dim, layers, spec.norm)
        b.norm(f"{p}.k_norm", spec.head_dim, layers, spec.norm)
    if spec.attention_sinks:
        b.add(f"{p}.sinks", (spec.num_attention_heads,), "other", layers)


def _mla_attention(b: _Builder, spec: ModelSpec, layers: tuple[int, ...]) -> None:
    """DeepSeek multi-head latent attention (transformers' DeepseekV3Attention)."""
    p = "model.layers.{i}.self_attn"
    hidden, heads = spec.hidden_size, spec.num_attention_heads
    q_head = spec.qk_nope_head_dim + spec.qk_rope_head_dim
    bias = spec.attention_qkv_bias
    if spec.q_lora_rank is None:
        b.linear(f"{p}.q_proj", heads * q_head, hidden, "attention", layers, False)
    else:
        b.linear(f"{p}.q_a_proj", spec.q_lora_rank, hidden, "attention", layers, bias)
        b.norm(f"{p}.q_a_layernorm", spec.q_lora_rank, layers, spec.norm)
        b.linear(f"{p}.q_b_proj", heads * q_head, spec.q_lora_rank, "attention", layers, False)
    b.linear(f"{p}.kv_a_proj_with_mqa", spec.kv_lora_rank + spec.qk_rope_head_dim, hidden, "attention",
             layers, bias)
    b.norm(f"{p}.kv_a_layernorm", spec.kv_lora_rank, layers, spec.norm)
    b.linear(f"{p}.kv_b_proj", heads * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank,
             "attention", layers, False)
    b.linear(f"{p}.o_proj", hidden, heads * spec.v_head_dim, "attention", layers, spec.attention_output_bias)


def _dsa_indexer(b: _Builder, spec: ModelSpec, layers: tuple[int, ...]) -> None:
    """DeepSeek Sparse Attention's lightning indexer (transformers' DeepseekV32Indexer, vLLM's deepseek_v2.py
    Indexer), under ``self_attn.indexer``: ``wq_b`` [heads x dim, q_lora_rank] and ``wk`` [dim, hidden] (linear
    layers vLLM builds with the model's quant_config: fp8 in DeepSeek's checkpoints), ``k_norm`` (a LayerNorm, weight
    and bias) and ``weights_proj`` [heads, hidden], the per-head weighting vLLM builds with ``quant_config=None`` and
    the checkpoints store in bf16: role ``other``, never quantized."""
    p = "model.layers.{i}.self_attn.indexer"
    q_lora_rank = spec.q_lora_rank or 0  # ModelSpec requires it with an indexer
    b.linear(f"{p}.wq_b", spec.index_n_heads * spec.index_head_dim, q_lora_rank, "attention", layers, False)
    b.linear(f"{p}.wk", spec.index_head_dim, spec.hidden_size, "attention", layers, False)
    b.norm(f"{p}.k_norm", spec.index_head_dim, layers, "layernorm")
    b.linear(f"{p}.weights_proj", spec.index_n_heads, spec.hidden_size, "other", layers, False)


def _decoder(b: _Builder, spec: ModelSpec) -> None:
    """llama, mixtral, phi3, deepseek, gpt_oss and qwen2_moe layouts: ``model.*`` with pre-norm blocks."""
    every = tuple(range(spec.num_layers))
    dense = spec.dense_layers if spec.is_moe else every
    moe = spec.moe_layers
    hidden, layer = spec.hidden_size, "model.layers.{i}"
    experts, top_k = spec.num_experts, spec.experts_per_token or None
    b.add("model.embed_tokens.weight", (spec.vocab_size, hidden), "embedding")
    b.norm(f"{layer}.input_layernorm", hidden, every, spec.norm)
    if spec.layout == "phi3":
        qkv_out = (spec.num_attention_heads + 2 * spec.num_kv_heads) * spec.head_dim
        b.linear(f"{layer}.self_attn.qkv_proj", qkv_out, hidden, "attention", every, False)
        b.linear(f"{layer}.self_attn.o_proj", hidden, spec.num_attention_heads * spec.head_dim, "attention",
                 every, False)
    elif spec.layout == "deepseek":
        _mla_attention(b, spec, every)
        if spec.has_indexer:
            _dsa_indexer(b, spec, every)
    else:
        _llama_attention(b, spec, every)
    b.norm(f"{layer}.post_attention_layernorm", hidden, every, spec.norm)
    if spec.norms_per_layer == 4:
        b.norm(f"{layer}.pre_feedforward_layernorm", hidden, every, spec.norm)
        b.norm(f"{layer}.post_feedforward_layernorm", hidden, every, spec.norm)

    if spec.layout == "phi3":
        b.linear(f"{layer}.mlp.gate_up_proj", 2 * spec.intermediate_size, hidden, "mlp", dense, False)
        b.linear(f"{layer}.mlp.down_proj", hidden, spec.intermediate_size, "mlp", dense, False)
    else:
        _gated_mlp(b, f"{layer}.mlp", spec.intermediate_size, spec, dense, bias=spec.mlp_bias)

    width = spec.moe_intermediate_size
    if spec.layout == "mixtral":
        b.linear(f"{layer}.block_sparse_moe.gate", experts, hidden, "router", moe, False)
        if spec.router_bias:  # MiniMax-M2's sigmoid router: its bias beside the gate, not inside it
            b.add(f"{layer}.block_sparse_moe.e_score_correction_bias", (experts,), "router", moe)
        _gated_mlp(b, f"{layer}.block_sparse_moe.experts.{{e}}", width, spec, moe, "expert", experts, top_k,
                   names=("w1", "w3", "w2"))
    elif spec.layout == "gpt_oss":
        b.linear(f"{layer}.mlp.router", experts, hidden, "router", moe, False)
        if spec.router_bias:
            b.add(f"{layer}.mlp.router.bias", (experts,), "router", moe)
        p = f"{layer}.mlp.experts"
        b.add(f"{p}.gate_up_proj[{{e}}]", (2 * width, hidden), "expert", moe, experts, top_k)
        if spec.expert_bias:
            b.add(f"{p}.gate_up_proj_bias[{{e}}]", (2 * width,), "bias", moe, experts, top_k)
        b.add(f"{p}.down_proj[{{e}}]", (hidden, width), "expert", moe, experts, top_k)
        if spec.expert_bias:
            b.add(f"{p}.down_proj_bias[{{e}}]", (hidden,), "bias", moe, experts, top_k)
    elif spec.layout == "qwen2_moe":
        _qwen2_moe_block(b, spec, moe)
    elif spec.is_moe:
        b.linear(f"{layer}.mlp.gate", experts, hidden, "router", moe, False)
        if spec.router_bias:
            b.add(f"{layer}.mlp.gate.e_score_correction_bias", (experts,), "router", moe)
        _gated_mlp(b, f"{layer}.mlp.experts.{{e}}", width, spec, moe, "expert", experts, top_k,
                   bias=spec.expert_bias)
        if spec.num_shared_experts:
            _gated_mlp(b, f"{layer}.mlp.shared_experts", width * spec.num_shared_experts, spec, moe)
    b.norm("model.norm", hidden, None, spec.norm)
    if not spec.tie_word_embeddings:
        b.add("lm_head.weight", (spec.vocab_size, hidden), "lm_head")
    if spec.lm_head_bias:
        b.add("lm_head.bias", (spec.vocab_size,), "bias")


def _qwen2_moe_block(b: _Builder, spec: ModelSpec, moe: tuple[int, ...]) -> None:
    """Qwen2-MoE's sparse block (transformers' Qwen2MoeSparseMoeBlock, vLLM's qwen2_moe.py): the router
    ``mlp.gate``, the routed experts, one shared expert ``mlp.shared_expert`` of its own width that every
    token runs, and ``mlp.shared_expert_gate``, a [1, hidden] linear whose sigmoid scales the shared expert's
    output per token.  The gate is a router to every engine (vLLM: a plain replicated ``torch.nn.Linear``;
    llama.cpp: ``ffn_gate_inp_shexp``, kept at F32) and is built even when the shared width is 0."""
    layer, hidden = "model.layers.{i}.mlp", spec.hidden_size
    b.linear(f"{layer}.gate", spec.num_experts, hidden, "router", moe, False)
    _gated_mlp(b, f"{layer}.experts.{{e}}", spec.moe_intermediate_size, spec, moe, "expert", spec.num_experts,
               spec.experts_per_token)
    if spec.shared_expert_width:
        _gated_mlp(b, f"{layer}.shared_expert", spec.shared_expert_width, spec, moe)
    b.linear(f"{layer}.shared_expert_gate", 1, hidden, "router", moe, False)


def _qwen3_next(b: _Builder, spec: ModelSpec) -> None:
    """Qwen3-Next (transformers' Qwen3NextForCausalLM; names as its checkpoints hold them and vLLM's qwen3_next.py
    loads them).  A Gated DeltaNet layer (``linear_attn``): ``in_proj_qkvz`` [2 x key + 2 x value, hidden] (q, k, v
    and the output gate z), ``in_proj_ba`` [2 x value heads, hidden] (the beta and alpha gates), the depthwise
    ``conv1d`` [2 x key + value, 1, kernel] without bias, ``dt_bias`` and ``A_log`` [value heads], the gated
    RMSNorm ``norm`` [value_head_dim] and ``out_proj`` [hidden, value]; vLLM builds its linear layers with the
    checkpoint's quantization config but conv1d, dt_bias and A_log without (role ``other``, 16-bit).  A full
    attention layer: q_proj [2 x heads x head_dim, hidden] (the second half gates the output), k/v_proj, o_proj
    and q/k norms of head_dim, no biases.  Every layer: two RMSNorms, and the Qwen2-MoE sparse block or a dense
    MLP."""
    linear = spec.linear_attention
    if linear is None:  # ModelSpec refuses a qwen3_next layout without one; this narrows the type
        return
    every = tuple(range(spec.num_layers))
    linear_layers = linear.layers
    full = tuple(i for i in every if i not in set(linear_layers))
    hidden, layer = spec.hidden_size, "model.layers.{i}"
    b.add("model.embed_tokens.weight", (spec.vocab_size, hidden), "embedding")
    b.norm(f"{layer}.input_layernorm", hidden, every, spec.norm)
    p = f"{layer}.linear_attn"
    if linear.split_projections:  # Qwen3.5's checkpoints: the same weights, four tensors
        b.linear(f"{p}.in_proj_qkv", linear.conv_dim, hidden, "attention", linear_layers, False)
        b.linear(f"{p}.in_proj_z", linear.value_dim, hidden, "attention", linear_layers, False)
        b.linear(f"{p}.in_proj_b", linear.num_value_heads, hidden, "attention", linear_layers, False)
        b.linear(f"{p}.in_proj_a", linear.num_value_heads, hidden, "attention", linear_layers, False)
    else:
        b.linear(f"{p}.in_proj_qkvz", 2 * linear.key_dim + 2 * linear.value_dim, hidden, "attention",
                 linear_layers, False)
        b.linear(f"{p}.in_proj_ba", 2 * linear.num_value_heads, hidden, "attention", linear_layers, False)
    b.add(f"{p}.conv1d.weight", (linear.conv_dim, 1, linear.conv_kernel_size), "other", linear_layers)
    b.add(f"{p}.dt_bias", (linear.num_value_heads,), "other", linear_layers)
    b.add(f"{p}.A_log", (linear.num_value_heads,), "other", linear_layers)
    b.norm(f"{p}.norm", linear.value_head_dim, linear_layers, spec.norm)
    b.linear(f"{p}.out_proj", hidden, linear.value_dim, "attention", linear_layers, False)
    a = f"{layer}.self_attn"
    q_width = spec.num_attention_heads * spec.head_dim
    kv_width = spec.num_kv_heads * spec.head_dim
    gate = 2 if spec.attention_output_gate else 1
    b.linear(f"{a}.q_proj", gate * q_width, hidden, "attention", full, False)
    b.linear(f"{a}.k_proj", kv_width, hidden, "attention", full, False)
    b.linear(f"{a}.v_proj", kv_width, hidden, "attention", full, False)
    b.linear(f"{a}.o_proj", hidden, q_width, "attention", full, False)
    b.norm(f"{a}.q_norm", spec.head_dim, full, spec.norm)
    b.norm(f"{a}.k_norm", spec.head_dim, full, spec.norm)
    b.norm(f"{layer}.post_attention_layernorm", hidden, every, spec.norm)
    _gated_mlp(b, f"{layer}.mlp", spec.intermediate_size, spec, spec.dense_layers if spec.is_moe else every)
    if spec.is_moe:
        _qwen2_moe_block(b, spec, spec.moe_layers)
    b.norm("model.norm", hidden, None, spec.norm)
    if not spec.tie_word_embeddings:
        b.add("lm_head.weight", (spec.vocab_size, hidden), "lm_head")


def _falcon(b: _Builder, spec: ModelSpec) -> None:
    """Falcon (transformers' FalconForCausalLM).

    With two norms per layer they are named ``ln_attn``/``ln_mlp`` (new decoder architecture,
    Falcon-40B/180B); sequential Falcon-RW names them input_layernorm/post_attention_layernorm,
    with the same shapes.
    """
    every = tuple(range(spec.num_layers))
    hidden, layer = spec.hidden_size, "transformer.h.{i}"
    b.add("transformer.word_embeddings.weight", (spec.vocab_size, hidden), "embedding")
    if spec.norms_per_layer == 2:
        b.norm(f"{layer}.ln_attn", hidden, every, spec.norm)
        b.norm(f"{layer}.ln_mlp", hidden, every, spec.norm)
    else:
        b.norm(f"{layer}.input_layernorm", hidden, every, spec.norm)
    qkv_out = (spec.num_attention_heads + 2 * spec.num_kv_heads) * spec.head_dim
    b.linear(f"{layer}.self_attention.query_key_value", qkv_out, hidden, "attention", every,
             spec.attention_qkv_bias)
    b.linear(f"{layer}.self_attention.dense", hidden, spec.num_attention_heads * spec.head_dim, "attention",
             every, spec.attention_output_bias)
    b.linear(f"{layer}.mlp.dense_h_to_4h", spec.intermediate_size, hidden, "mlp", every, spec.mlp_bias)
    b.linear(f"{layer}.mlp.dense_4h_to_h", hidden, spec.intermediate_size, "mlp", every, spec.mlp_bias)
    b.norm("transformer.ln_f", hidden, None, spec.norm)
    if not spec.tie_word_embeddings:
        b.add("lm_head.weight", (spec.vocab_size, hidden), "lm_head")


def _gpt2(b: _Builder, spec: ModelSpec) -> None:
    """GPT-2 (transformers' GPT2LMHeadModel); Conv1D weights listed by their logical [out, in] shape."""
    every = tuple(range(spec.num_layers))
    hidden, layer = spec.hidden_size, "transformer.h.{i}"
    attention_width = spec.num_attention_heads * spec.head_dim
    b.add("transformer.wte.weight", (spec.vocab_size, hidden), "embedding")
    b.add("transformer.wpe.weight", (spec.max_position_embeddings or 0, hidden), "position_embedding")
    b.norm(f"{layer}.ln_1", hidden, every, spec.norm)
    qkv_out = (spec.num_attention_heads + 2 * spec.num_kv_heads) * spec.head_dim
    b.linear(f"{layer}.attn.c_attn", qkv_out, hidden, "attention", every, spec.attention_qkv_bias)
    b.linear(f"{layer}.attn.c_proj", hidden, attention_width, "attention", every, spec.attention_output_bias)
    b.norm(f"{layer}.ln_2", hidden, every, spec.norm)
    b.linear(f"{layer}.mlp.c_fc", spec.intermediate_size, hidden, "mlp", every, spec.mlp_bias)
    b.linear(f"{layer}.mlp.c_proj", hidden, spec.intermediate_size, "mlp", every, spec.mlp_bias)
    b.norm("transformer.ln_f", hidden, None, spec.norm)
    if not spec.tie_word_embeddings:
        b.add("lm_head.weight", (spec.vocab_size, hidden), "lm_head")


@lru_cache(maxsize=512)
def inventory(spec: ModelSpec) -> tuple[TensorEntry, ...]:
    """Every weight tensor of `spec`, repeated tensors folded into one row with layers and a count.

    Tied embeddings have no lm_head row (the one matrix is counted once, as embedding).
    Cached per spec (specs are frozen and hashable), so planners may call it freely.
    """
    builder = _Builder()
    if spec.layout == "falcon":
        _falcon(builder, spec)
    elif spec.layout == "gpt2":
        _gpt2(builder, spec)
    elif spec.layout == "llama4":
        _llama4(builder, spec)
    elif spec.layout == "qwen3_next":
        _qwen3_next(builder, spec)
    elif spec.layout == "glm4":
        _glm4(builder, spec)
    elif spec.layout == "olmo2":
        _olmo2(builder, spec)
    else:
        _decoder(builder, spec)
    if spec.model_type == "minimax_m2":
        builder.rows = _minimax_m2_qk_norms(builder.rows, spec)
    if spec.model_type == "mistral3":  # the language model under language_model., as its checkpoints name it
        builder.rows = [replace(row, name=f"language_model.{row.name}") for row in builder.rows]
    if spec.model_type == "qwen3_vl_moe":
        builder.rows = _fused_qwen3_vl_experts(builder.rows)
    if spec.model_type in ("qwen3_vl", "qwen3_vl_moe"):  # their checkpoints: model.language_model.* (lm_head as is)
        builder.rows = [replace(row, name=f"model.language_model.{row.name.removeprefix('model.')}")
                        if row.name.startswith("model.") else row for row in builder.rows]
    if spec.model_type == "qwen3_5":  # Qwen3.5's checkpoints: model.language_model.* (lm_head as is), model.visual.*
        builder.rows = [replace(row, name=f"model.language_model.{row.name.removeprefix('model.')}")
                        if row.name.startswith("model.") else row for row in builder.rows]
    if spec.model_type == "qwen3_5_moe":  # Qwen3.5-MoE's checkpoints: fused experts under model.language_model.*
        builder.rows = [replace(row, name=f"model.language_model.{row.name.removeprefix('model.')}")
                        if row.name.startswith("model.") else row for row in _fused_qwen3_vl_experts(builder.rows)]
    if isinstance(spec.vision, Llama4VisionTower):
        _llama4_vision(builder, spec.vision)
    elif isinstance(spec.vision, PixtralVisionTower):
        _pixtral_vision(builder, spec.vision)
    elif isinstance(spec.vision, QwenVisionTower):
        _qwen_vision(builder, spec.vision)
    elif isinstance(spec.vision, Qwen3VisionTower):
        _qwen3_vision(builder, spec.vision)
    elif spec.vision is not None:
        _vision(builder, spec.vision)
    return tuple(builder.rows)


def _minimax_m2_qk_norms(rows: list[TensorEntry], spec: ModelSpec) -> list[TensorEntry]:
    """MiniMax-M2's q/k RMSNorms normalize all heads at once (``qk_norm_type: per_layer``): ``q_norm`` holds
    heads x head_dim weights and ``k_norm`` kv_heads x head_dim (transformers' MiniMaxM2Attention, vLLM's
    ``MiniMaxText01RMSNormTP``), not one head's head_dim as Qwen3's."""
    widths = {"model.layers.{i}.self_attn.q_norm.weight": spec.num_attention_heads * spec.head_dim,
              "model.layers.{i}.self_attn.k_norm.weight": spec.num_kv_heads * spec.head_dim}
    return [replace(row, shape=(widths[row.name],)) if row.name in widths else row for row in rows]
def _glm4(b: _Builder, spec: ModelSpec) -> None:
    """GLM-4-0414 (transformers' Glm4ForCausalLM, vLLM's glm4.py) as its checkpoints name it: llama attention (q/k/v
    biases per `attention_qkv_bias`, o_proj without), four RMSNorms a layer (``input_layernorm`` before attention,
    ``post_self_attn_layernorm`` on its output, ``post_attention_layernorm`` before the MLP, ``post_mlp_layernorm``
    on its output) and the MLP's gate and up projections fused in one ``mlp.gate_up_proj`` [2 x intermediate,
    hidden] (vLLM loads it whole into its MergedColumnParallelLinear, each rank taking its rows of both halves)."""
    every = tuple(range(spec.num_layers))
    hidden, layer = spec.hidden_size, "model.layers.{i}"
    b.add("model.embed_tokens.weight", (spec.vocab_size, hidden), "embedding")
    b.norm(f"{layer}.input_layernorm", hidden, every, spec.norm)
    _llama_attention(b, spec, every)
    b.norm(f"{layer}.post_self_attn_layernorm", hidden, every, spec.norm)
    b.norm(f"{layer}.post_attention_layernorm", hidden, every, spec.norm)
    b.linear(f"{layer}.mlp.gate_up_proj", 2 * spec.intermediate_size, hidden, "mlp", every, spec.mlp_bias)
    b.linear(f"{layer}.mlp.down_proj", hidden, spec.intermediate_size, "mlp", every, spec.mlp_bias)
    b.norm(f"{layer}.post_mlp_layernorm", hidden, every, spec.norm)
    b.norm("model.norm", hidden, None, spec.norm)
    if not spec.tie_word_embeddings:
        b.add("lm_head.weight", (spec.vocab_size, hidden), "lm_head")


def _olmo2(b: _Builder, spec: ModelSpec) -> None:
    """OLMo 2 and Olmo 3 (transformers' Olmo2ForCausalLM / Olmo3ForCausalLM, vLLM's olmo2.py / olmo3.py) as their
    checkpoints name them: llama attention (biases per `attention_qkv_bias` / `attention_output_bias`), a ``q_norm``
    over all query heads [heads x head_dim] and a ``k_norm`` over all key heads [kv_heads x head_dim], then the
    post-norms ``post_attention_layernorm`` and ``post_feedforward_layernorm`` on the attention's and the MLP's
    outputs (no norm before them), and a gated MLP."""
    every = tuple(range(spec.num_layers))
    hidden, layer = spec.hidden_size, "model.layers.{i}"
    p = f"{layer}.self_attn"
    q_out, kv_out = spec.num_attention_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    b.add("model.embed_tokens.weight", (spec.vocab_size, hidden), "embedding")
    b.linear(f"{p}.q_proj", q_out, hidden, "attention", every, spec.attention_qkv_bias)
    b.linear(f"{p}.k_proj", kv_out, hidden, "attention", every, spec.attention_qkv_bias)
    b.linear(f"{p}.v_proj", kv_out, hidden, "attention", every, spec.attention_qkv_bias)
    b.linear(f"{p}.o_proj", hidden, q_out, "attention", every, spec.attention_output_bias)
    b.norm(f"{p}.q_norm", q_out, every, spec.norm)
    b.norm(f"{p}.k_norm", kv_out, every, spec.norm)
    b.norm(f"{layer}.post_attention_layernorm", hidden, every, spec.norm)
    _gated_mlp(b, f"{layer}.mlp", spec.intermediate_size, spec, every, bias=spec.mlp_bias)
    b.norm(f"{layer}.post_feedforward_layernorm", hidden, every, spec.norm)
    b.norm("model.norm", hidden, None, spec.norm)
    if not spec.tie_word_embeddings:
        b.add("lm_head.weight", (spec.vocab_size, hidden), "lm_head")


def _llama4(b: _Builder, spec: ModelSpec) -> None:
    """Llama 4's language model as its checkpoints name it (transformers' ``Llama4ForCausalLM``; under
    ``language_model.`` in the multimodal ``Llama4ForConditionalGeneration`` of the ``llama4`` type).

    A MoE layer's ``feed_forward`` holds a router [E, hidden], the routed experts fused into two 3-D tensors,
    ``experts.gate_up_proj`` [E, hidden, 2 x width] and ``experts.down_proj`` [E, width, hidden] (listed per
    expert by their logical [out, in] shapes, ``gate_up_proj[{e}]``, whose int4 groups run along the input), and a
    shared expert (``shared_expert.gate/up/down_proj``, role ``mlp``: every token uses it); a dense layer's
    ``feed_forward`` is a gated MLP of `intermediate_size`.  The qk norm has no weights."""
    every = tuple(range(spec.num_layers))
    moe, dense = spec.moe_layers, spec.dense_layers
    hidden, experts, width = spec.hidden_size, spec.num_experts, spec.moe_intermediate_size
    root = "language_model." if spec.model_type == "llama4" else ""
    layer = f"{root}model.layers.{{i}}"
    b.add(f"{root}model.embed_tokens.weight", (spec.vocab_size, hidden), "embedding")
    b.norm(f"{layer}.input_layernorm", hidden, every, spec.norm)
    p = f"{layer}.self_attn"
    q_out, kv_out = spec.num_attention_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    b.linear(f"{p}.q_proj", q_out, hidden, "attention", every, spec.attention_qkv_bias)
    b.linear(f"{p}.k_proj", kv_out, hidden, "attention", every, spec.attention_qkv_bias)
    b.linear(f"{p}.v_proj", kv_out, hidden, "attention", every, spec.attention_qkv_bias)
    b.linear(f"{p}.o_proj", hidden, q_out, "attention", every, spec.attention_output_bias)
    b.norm(f"{layer}.post_attention_layernorm", hidden, every, spec.norm)
    f = f"{layer}.feed_forward"
    _gated_mlp(b, f, spec.intermediate_size, spec, dense)
    b.linear(f"{f}.router", experts, hidden, "router", moe, False)
    top_k = spec.experts_per_token
    b.add(f"{f}.experts.gate_up_proj[{{e}}]", (2 * width, hidden), "expert", moe, experts, top_k)
    b.add(f"{f}.experts.down_proj[{{e}}]", (hidden, width), "expert", moe, experts, top_k)
    _gated_mlp(b, f"{f}.shared_expert", width * spec.num_shared_experts, spec, moe)
    b.norm(f"{root}model.norm", hidden, None, spec.norm)
    if not spec.tie_word_embeddings:
        b.add(f"{root}lm_head.weight", (spec.vocab_size, hidden), "lm_head")


def _llama4_vision(b: _Builder, tower: Llama4VisionTower) -> None:
    """Llama 4's image encoder and projector as its checkpoints name them (transformers' ``Llama4VisionModel`` and
    ``Llama4MultiModalProjector``), every tensor of role ``vision``, the encoder's layers one row each counted
    `num_layers` times (they are no decoder layers)."""
    hidden, prefix = tower.hidden_size, "vision_model"
    positions = (tower.image_size // tower.patch_size) ** 2 + 1  # one per patch and the class token
    head_dim = hidden // tower.num_attention_heads
    attention_width = tower.num_attention_heads * head_dim
    b.add(f"{prefix}.patch_embedding.linear.weight",
          (hidden, tower.num_channels * tower.patch_size * tower.patch_size), "vision")
    b.add(f"{prefix}.class_embedding", (hidden,), "vision")
    b.add(f"{prefix}.positional_embedding_vlm", (positions, hidden), "vision")
    for norm in (f"{prefix}.layernorm_pre", f"{prefix}.layernorm_post"):
        b.add(f"{norm}.weight", (hidden,), "vision")
        b.add(f"{norm}.bias", (hidden,), "vision")
    layer, count = f"{prefix}.model.layers.{{v}}", tower.num_layers
    linears = [(f"{layer}.self_attn.{proj}", (attention_width, hidden)) for proj in ("q_proj", "k_proj", "v_proj")]
    linears += [(f"{layer}.self_attn.o_proj", (hidden, attention_width)),
                (f"{layer}.mlp.fc1", (tower.intermediate_size, hidden)),
                (f"{layer}.mlp.fc2", (hidden, tower.intermediate_size))]
    for name, (out_features, in_features) in linears:
        b.add(f"{name}.weight", (out_features, in_features), "vision", per_layer=count)
        b.add(f"{name}.bias", (out_features,), "vision", per_layer=count)
    for norm in (f"{layer}.input_layernorm", f"{layer}.post_attention_layernorm"):
        b.add(f"{norm}.weight", (hidden,), "vision", per_layer=count)
        b.add(f"{norm}.bias", (hidden,), "vision", per_layer=count)
    b.add(f"{prefix}.vision_adapter.mlp.fc1.weight", (tower.projector_input_dim, tower.intermediate_size), "vision")
    b.add(f"{prefix}.vision_adapter.mlp.fc2.weight", (tower.projector_output_dim, tower.projector_output_dim),
          "vision")
    b.add("multi_modal_projector.linear_1.weight", (tower.projection_size, tower.vision_output_dim), "vision")


def _pixtral_vision(b: _Builder, tower: PixtralVisionTower) -> None:
    """Mistral 3's Pixtral encoder and projector as its checkpoints name them (transformers' ``PixtralVisionModel``
    under ``vision_tower.`` and ``Mistral3MultiModalProjector`` under ``multi_modal_projector.``), every tensor of
    role ``vision``, the encoder's layers one row each counted `num_layers` times (they are no decoder layers).  No
    position table: Pixtral's 2-D rotary positions are computed, not stored."""
    hidden, prefix = tower.hidden_size, "vision_tower"
    b.add(f"{prefix}.patch_conv.weight", (hidden, tower.num_channels, tower.patch_size, tower.patch_size), "vision")
    b.add(f"{prefix}.ln_pre.weight", (hidden,), "vision")
    layer, count = f"{prefix}.transformer.layers.{{v}}", tower.num_layers
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        b.add(f"{layer}.attention.{proj}.weight", (hidden, hidden), "vision", per_layer=count)
    width = tower.intermediate_size
    for proj, shape in (("gate_proj", (width, hidden)), ("up_proj", (width, hidden)), ("down_proj", (hidden, width))):
        b.add(f"{layer}.feed_forward.{proj}.weight", shape, "vision", per_layer=count)
    for norm in ("attention_norm", "ffn_norm"):
        b.add(f"{layer}.{norm}.weight", (hidden,), "vision", per_layer=count)
    projector, text_width = "multi_modal_projector", tower.projection_size
    b.add(f"{projector}.norm.weight", (hidden,), "vision")
    b.add(f"{projector}.patch_merger.merging_layer.weight", (hidden, hidden * tower.spatial_merge_size ** 2), "vision")
    for name, shape in ((f"{projector}.linear_1", (text_width, hidden)),
                        (f"{projector}.linear_2", (text_width, text_width))):
        b.add(f"{name}.weight", shape, "vision")
        if tower.projector_bias:
            b.add(f"{name}.bias", (text_width,), "vision")


def _qwen_vision(b: _Builder, tower: QwenVisionTower) -> None:
    """Qwen2.5-VL's vision transformer and merger as its published checkpoints name them (``visual.*``; transformers
    5 holds them as ``model.visual.*`` in memory), every tensor of role ``vision``, each block's tensors one row
    counted `num_layers` times (they are no decoder layers)."""
    hidden, width = tower.hidden_size, tower.intermediate_size
    merged = hidden * tower.spatial_merge_size ** 2
    b.add("visual.patch_embed.proj.weight",
          (hidden, tower.num_channels, tower.temporal_patch_size, tower.patch_size, tower.patch_size), "vision")
    block, count = "visual.blocks.{v}", tower.num_layers
    for norm in ("norm1", "norm2"):
        b.add(f"{block}.{norm}.weight", (hidden,), "vision", per_layer=count)
    for name, (out_features, in_features) in ((f"{block}.attn.qkv", (3 * hidden, hidden)),
                                              (f"{block}.attn.proj", (hidden, hidden)),
                                              (f"{block}.mlp.gate_proj", (width, hidden)),
                                              (f"{block}.mlp.up_proj", (width, hidden)),
                                              (f"{block}.mlp.down_proj", (hidden, width))):
        b.add(f"{name}.weight", (out_features, in_features), "vision", per_layer=count)
        b.add(f"{name}.bias", (out_features,), "vision", per_layer=count)
    b.add("visual.merger.ln_q.weight", (hidden,), "vision")
    for name, (out_features, in_features) in (("visual.merger.mlp.0", (merged, merged)),
                                              ("visual.merger.mlp.2", (tower.projection_size, merged))):
        b.add(f"{name}.weight", (out_features, in_features), "vision")
        b.add(f"{name}.bias", (out_features,), "vision")


def _fused_qwen3_vl_experts(rows: list[TensorEntry]) -> list[TensorEntry]:
    """Qwen3-VL-MoE's routed experts as its checkpoints hold them: per layer one ``mlp.experts.gate_up_proj`` (the
    gate and up projections of every expert) and one ``mlp.experts.down_proj`` 3-D tensor, listed per expert by their
    logical [out, in] shapes (``gate_up_proj[{e}]``: [2 x width, hidden]) as Llama 4's fused experts are."""
    out: list[TensorEntry] = []
    for row in rows:
        prefix, _, part = row.name.partition(".experts.{e}.")
        if not part:
            out.append(row)
        elif part == "gate_proj.weight":
            out.append(replace(row, name=f"{prefix}.experts.gate_up_proj[{{e}}]",
                               shape=(2 * row.shape[0], row.shape[1])))
        elif part == "down_proj.weight":
            out.append(replace(row, name=f"{prefix}.experts.down_proj[{{e}}]"))
        # up_proj.weight: in gate_up_proj
    return out


def _qwen3_vision(b: _Builder, tower: Qwen3VisionTower) -> None:
    """Qwen3-VL's vision transformer, merger and deepstack mergers as its checkpoints name them (``model.visual.*``),
    every tensor of role ``vision``, each block's (and each deepstack merger's) tensors one row counted that many
    times (they are no decoder layers)."""
    hidden, width, prefix = tower.hidden_size, tower.intermediate_size, "model.visual"
    merged = hidden * tower.spatial_merge_size ** 2
    b.add(f"{prefix}.patch_embed.proj.weight",
          (hidden, tower.num_channels, tower.temporal_patch_size, tower.patch_size, tower.patch_size), "vision")
    b.add(f"{prefix}.patch_embed.proj.bias", (hidden,), "vision")
    b.add(f"{prefix}.pos_embed.weight", (tower.num_position_embeddings, hidden), "vision")
    block, count = f"{prefix}.blocks.{{v}}", tower.num_layers
    for norm in ("norm1", "norm2"):
        b.add(f"{block}.{norm}.weight", (hidden,), "vision", per_layer=count)
        b.add(f"{block}.{norm}.bias", (hidden,), "vision", per_layer=count)
    for name, (out_features, in_features) in ((f"{block}.attn.qkv", (3 * hidden, hidden)),
                                              (f"{block}.attn.proj", (hidden, hidden)),
                                              (f"{block}.mlp.linear_fc1", (width, hidden)),
                                              (f"{block}.mlp.linear_fc2", (hidden, width))):
        b.add(f"{name}.weight", (out_features, in_features), "vision", per_layer=count)
        b.add(f"{name}.bias", (out_features,), "vision", per_layer=count)
    mergers = [(f"{prefix}.merger", hidden, 1)]
    if tower.deepstack_mergers:
        mergers.append((f"{prefix}.deepstack_merger_list.{{v}}", merged, tower.deepstack_mergers))
    for merger, norm_width, copies in mergers:
        b.add(f"{merger}.norm.weight", (norm_width,), "vision", per_layer=copies)
        b.add(f"{merger}.norm.bias", (norm_width,), "vision", per_layer=copies)
        for name, (out_features, in_features) in ((f"{merger}.linear_fc1", (merged, merged)),
                                                  (f"{merger}.linear_fc2", (tower.projection_size, merged))):
            b.add(f"{name}.weight", (out_features, in_features), "vision", per_layer=copies)
            b.add(f"{name}.bias", (out_features,), "vision", per_layer=copies)


def _vision(b: _Builder, tower: VisionTower) -> None:
    """Gemma 3's image encoder as transformers builds it (``SiglipVisionModel`` without its pooling head, and
    ``Gemma3MultiModalProjector``), every tensor of role ``vision``: the encoder's layers are no decoder
    layers, so each of its tensors is one row counted `num_layers` times."""
    hidden, prefix = tower.hidden_size, "vision_tower.vision_model"
    patches = (tower.image_size // tower.patch_size) ** 2
    b.add(f"{prefix}.embeddings.patch_embedding.weight", (hidden, tower.num_channels, tower.patch_size,
                                                           tower.patch_size), "vision")
    b.add(f"{prefix}.embeddings.patch_embedding.bias", (hidden,), "vision")
    b.add(f"{prefix}.embeddings.position_embedding.weight", (patches, hidden), "vision")
    layer, count = f"{prefix}.encoder.layers.{{v}}", tower.num_layers
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        b.add(f"{layer}.self_attn.{proj}.weight", (hidden, hidden), "vision", per_layer=count)
        b.add(f"{layer}.self_attn.{proj}.bias", (hidden,), "vision", per_layer=count)
    for name, (out_features, in_features) in ((f"{layer}.mlp.fc1", (tower.intermediate_size, hidden)),
                                              (f"{layer}.mlp.fc2", (hidden, tower.intermediate_size))):
        b.add(f"{name}.weight", (out_features, in_features), "vision", per_layer=count)
        b.add(f"{name}.bias", (out_features,), "vision", per_layer=count)
    for norm in (f"{layer}.layer_norm1", f"{layer}.layer_norm2"):
        b.add(f"{norm}.weight", (hidden,), "vision", per_layer=count)
        b.add(f"{norm}.bias", (hidden,), "vision", per_layer=count)
    b.add(f"{prefix}.post_layernorm.weight", (hidden,), "vision")
    b.add(f"{prefix}.post_layernorm.bias", (hidden,), "vision")
    b.add("multi_modal_projector.mm_input_projection_weight", (hidden, tower.projection_size), "vision")
    b.add("multi_modal_projector.mm_soft_emb_norm.weight", (hidden,), "vision")


@dataclass(frozen=True, slots=True)
class ParameterCount:
    """Parameters of a model, as transformers counts them (unique tensors, tied weights once).

    `embedding`, `lm_head` and `position_embedding` are the elements of those roles
    (lm_head is 0 when tied); `non_embedding` is the rest.  `routed_experts` counts the
    routed experts' weights and biases.  `active_per_token` is what one token touches:
    every non-routed parameter (embedding and lm_head included) plus top-k of each
    layer's routed experts; None for dense models.
    """

    total: int
    by_role: dict[str, int] = field(hash=False)
    embedding: int
    lm_head: int
    position_embedding: int
    non_embedding: int
    routed_experts: int
    active_per_token: int | None


def parameter_count(spec: ModelSpec) -> ParameterCount:
    """Sum the inventory's elements: total, by role, and active per token for MoE models."""
    by_role = dict.fromkeys(ROLES, 0)
    routed = active_routed = 0
    for entry in inventory(spec):
        by_role[entry.role] += entry.total_elements
        if entry.active_per_layer is not None:
            routed += entry.total_elements
            active_routed += entry.elements * entry.active_per_layer * max(1, len(entry.layers))
    total = sum(by_role.values())
    embedding, lm_head, positions = by_role["embedding"], by_role["lm_head"], by_role["position_embedding"]
    return ParameterCount(
        total=total,
        by_role=by_role,
        embedding=embedding,
        lm_head=lm_head,
        position_embedding=positions,
        non_embedding=total - embedding - lm_head - positions,
        routed_experts=routed,
        active_per_token=total - routed + active_routed - by_role["vision"] if spec.is_moe else None,
    )


@dataclass(frozen=True, slots=True)
class QuantizationPolicy:
    """Which tensors a quantized format applies to, and how the rest is stored.

    The default follows GPTQ/AWQ checkpoints: the 2-D weights of the roles in
    `quantized_roles` (the decoder's linear layers, routed and shared experts included)
    take the quantized format; embeddings, lm_head, norms, biases, routers and anything
    1-D stay at `unquantized_format` (a 16/32-bit float name, default bf16).  A float
    format passed to `weight_bytes` applies to every tensor: the policy only matters when
    quantizing.
    """

    quantized_roles: frozenset[str] = QUANTIZED_ROLES
    unquantized_format: str = "bf16"

    def __post_init__(self) -> None:
        roles = frozenset(self.quantized_roles)
        for role in sorted(roles):
            if role not in ROLES:
                raise UnknownName("role", role, list(ROLES), field="policy.quantized_roles")
        object.__setattr__(self, "quantized_roles", roles)
        if self.unquantized_format not in FLOAT_FORMATS:
            raise UnknownName("float format", self.unquantized_format, sorted(FLOAT_FORMATS),
                              field="policy.unquantized_format")

    def quantizes(self, entry: TensorEntry) -> bool:
        """True when `entry` takes the quantized format: a quantized role, at least 2-D."""
        return entry.role in self.quantized_roles and len(entry.shape) >= 2


DEFAULT_POLICY = QuantizationPolicy()


def as_weight_format(format: WeightFormat | str) -> WeightFormat:
    """A `WeightFormat`, or a name: ``bf16``/``fp16``/``fp32``, ``int8``, ``int4`` (g128 asymmetric)."""
    if isinstance(format, WeightFormat):
        return format
    if format == "int4":
        return int4()
    if format == "int8":
        return WeightFormat("int8", None, True, "none")
    if isinstance(format, str) and format in FLOAT_FORMATS:
        return float_format(format)
    raise UnknownName("weight format", str(format), ["bf16", "fp16", "fp32", "int8", "int4"], field="format")


def _entry_bytes(entry: TensorEntry, weight_format: WeightFormat, policy: QuantizationPolicy) -> int:
    chosen = weight_format
    if weight_format.is_quantized and not policy.quantizes(entry):
        chosen = float_format(policy.unquantized_format)
    try:
        return chosen.bytes_for(entry.shape) * entry.count
    except GroupSizeMismatch as error:  # say which tensor: the planner reports it as is
        raise GroupSizeMismatch(error.in_features, error.group_size, tensor=entry.name) from None


def weight_bytes_by_role(spec: ModelSpec, format: WeightFormat | str,
                         policy: QuantizationPolicy | None = None) -> dict[str, int]:
    """Bytes of the weights by role (every role of `ROLES`, 0 when absent) in `format`.

    Each row costs ``format.bytes_for(shape) × count``; rows the policy does not quantize
    cost their float format instead.  A group size that does not divide a quantized
    tensor's input dimension raises `GroupSizeMismatch` whose `field` names the tensor
    (use a format with ``pad=True`` or a smaller group to plan such a model).
    """
    weight_format = as_weight_format(format)
    rules = policy or DEFAULT_POLICY
    out = dict.fromkeys(ROLES, 0)
    for entry in inventory(spec):
        out[entry.role] += _entry_bytes(entry, weight_format, rules)
    return out


def weight_bytes(spec: ModelSpec, format: WeightFormat | str,
                 policy: QuantizationPolicy | None = None) -> int:
    """Total bytes of the model's weights in `format` under `policy` (default: `QuantizationPolicy()`)."""
    return sum(weight_bytes_by_role(spec, format, policy).values())


def entries_bytes(entries: Iterable[TensorEntry], format: WeightFormat | str,
                  policy: QuantizationPolicy | None = None) -> int:
    """Bytes of any subset of an inventory (a pipeline stage, a tensor-parallel shard's rows)."""
    weight_format = as_weight_format(format)
    rules = policy or DEFAULT_POLICY
    return sum(_entry_bytes(entry, weight_format, rules) for entry in entries)

