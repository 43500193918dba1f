"""llama.cpp file types (Q4_K_M, ...): the ggml type `llama-quantize` gives each tensor.

A GGUF "file type" is not one format but a mix: llama.cpp's ``llama_tensor_get_type``
(``src/llama-quant.cpp``, ggml-org/llama.cpp at commit 007dbbf3, read for this module)
picks each tensor's type from its name, its layer index, the layer count and the model's
architecture, then falls back to another type when a row is not a whole number of the
type's blocks (``tensor_type_fallback``).  This module is that choice, one function per
file type, over nibble's inventory rows (Hugging Face names, mapped to the GGUF names
``convert_hf_to_gguf.py`` writes); `quant_core.formats.GGML_BLOCKS` gives the bytes.

What the source does, and this module with it:

* quantized at all (``tensor_allows_quantization``): tensors of two or more dimensions
  whose name ends in ``weight``, except norms, the MoE router (``ffn_gate_inp``) and
  position embeddings.  The others keep the converter's type, F32 (``convert_hf_to_gguf``
  writes 1-D tensors, routers and position embeddings as F32).
* the output matrix, and the token embedding when there is no ``output.weight`` (tied):
  Q8_0 for Falcon or when the width is not a multiple of the default type's block, else
  Q6_K unless the default type is Q8_0.
* ``attn_v`` and the attention tensors that carry V (fused ``attn_qkv``, MLA's
  ``attn_kv_b``): Q6_K for Q4_K_M and Q5_K_M on the layers ``use_more_bits`` picks (the
  first and last eighth, and every third layer between), Q5_K for the first four of a
  Q4_K_S file; at least Q5_K for a 70B model (80 layers: Llama 2/3 70B, Qwen2 72B); Q8_0
  in every file for a model of exactly 8 experts (Mixtral), which also gets Q8_0 ``attn_k``.
* ``ffn_down``: Q6_K on the ``use_more_bits`` layers of Q4_K_M (Falcon: Q6_K on the first
  sixteenth, Q5_K on those layers) and Q5_K_M; Q5_K on the first eighth of Q4_K_S (not
  Falcon).  ``attn_output``: Q5_K for an 8-expert model in Q4_K_S and Q4_K_M.
* fallback when the width is not a multiple of the block: Q4_K -> Q5_0, Q5_K -> Q5_1,
  Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL; F16 if still not a multiple of 32.

Tensors the converter renames without changing their bytes are counted under nibble's
names (gpt-oss's fused ``gate_up_proj`` is two GGUF tensors of the same type, together
the same bytes).  Known simplification: DeepSeek's ``kv_b_proj`` is treated as the one
``attn_kv_b`` tensor older converters write (newer ones split it into ``attn_k_b`` and
``attn_v_b``, which then keep the default type).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quant_core.errors import InvalidSpec, UnknownName
from quant_core.formats import GGML_BLOCKS, WeightFormat, ggml_format
from quant_core.specs import ModelSpec, TensorEntry

# llama.cpp's tensor categories (tensor_get_category), keyed by the end of nibble's HF-style names.
_CATEGORY_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj.weight", "attn_q"),
    ("self_attn.k_proj.weight", "attn_k"),
    ("self_attn.v_proj.weight", "attn_v"),
    ("self_attn.o_proj.weight", "attn_output"),
    ("self_attn.qkv_proj.weight", "attn_qkv"),
    ("self_attention.query_key_value.weight", "attn_qkv"),
    ("attn.c_attn.weight", "attn_qkv"),
    ("self_attention.dense.weight", "attn_output"),
    ("attn.c_proj.weight", "attn_output"),
    ("self_attn.kv_b_proj.weight", "attn_kv_b"),
    ("gate_proj.weight", "ffn_gate"),
    ("up_proj.weight", "ffn_up"),
    ("down_proj.weight", "ffn_down"),
    ("gate_up_proj.weight", "ffn_up"),
    (".w1.weight", "ffn_gate"),
    (".w3.weight", "ffn_up"),
    (".w2.weight", "ffn_down"),
    ("mlp.dense_h_to_4h.weight", "ffn_up"),
    ("mlp.dense_4h_to_h.weight", "ffn_down"),
    ("mlp.c_fc.weight", "ffn_up"),
    ("mlp.c_proj.weight", "ffn_down"),
)
_ATTN_V_LIKE = frozenset({"attn_v", "attn_qkv", "attn_kv_b"})


def gguf_category(entry: TensorEntry) -> str:
    """llama.cpp's category of an inventory row: ``token_embd``, ``output``, ``attn_v``, ... or ``other``."""
    if entry.role == "embedding":
        return "token_embd"
    if entry.role == "lm_head":
        return "output"
    name = entry.name
    if name.endswith("]"):  # gpt-oss experts: mlp.experts.gate_up_proj[{e}]
        name = name[:name.rindex("[")] + ".weight"
    for suffix, category in _CATEGORY_BY_SUFFIX:
        if name.endswith(suffix):
            return category
    return "other"


def quantizable(entry: TensorEntry) -> bool:
    """``tensor_allows_quantization``: 2-D or more, a weight, not a norm, router or position table."""
    return len(entry.shape) >= 2 and entry.role not in ("norm", "bias", "router", "position_embedding")


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers, and every third between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What ``llama_tensor_get_type`` reads from the model besides the tensor."""

    layers: int
    experts: int
    falcon: bool
    is_70b: bool
    tied: bool

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelFacts:
        # LLM_TYPE_70B: llama with 80 layers and grouped KV heads, qwen2 with 80 (llama-model.cpp); not qwen2vl
        # (Qwen2.5-VL's language model: its load_arch_hparams sets no type; recorded at 80 layers)
        is_70b = spec.num_layers == 80 and (
            (spec.model_type == "llama" and spec.num_kv_heads != spec.num_attention_heads)
            or spec.model_type == "qwen2")
        return cls(spec.num_layers, spec.num_experts, spec.layout == "falcon", is_70b, spec.tie_word_embeddings)


Chooser = Callable[[str, int, ModelFacts], str | None]


def _q4_0(category: str, layer: int, facts: ModelFacts) -> str | None:
    return None


def _q8_0(category: str, layer: int, facts: ModelFacts) -> str | None:
    return None


def _q6_k(category: str, layer: int, facts: ModelFacts) -> str | None:
    return None


def _q4_k_s(category: str, layer: int, facts: ModelFacts) -> str | None:
    if category in _ATTN_V_LIKE and layer < 4:  # i_attention_wv < 4
        return "Q5_K"
    if category == "ffn_down" and not facts.falcon and layer < facts.layers // 8:
        return "Q5_K"
    if category == "attn_output" and not facts.falcon and facts.experts == 8:
        return "Q5_K"
    return None


def _q4_k_m(category: str, layer: int, facts: ModelFacts) -> str | None:
    if category in _ATTN_V_LIKE and use_more_bits(layer, facts.layers):
        return "Q6_K"
    if category == "ffn_down":
        if facts.falcon:
            return "Q6_K" if layer < facts.layers // 16 else "Q5_K" if use_more_bits(layer, facts.layers) else None
        return "Q6_K" if use_more_bits(layer, facts.layers) else None
    if category == "attn_output" and not facts.falcon and facts.experts == 8:
        return "Q5_K"
    return None


def _q5_k_m(category: str, layer: int, facts: ModelFacts) -> str | None:
    if category in _ATTN_V_LIKE and use_more_bits(layer, facts.layers):
        return "Q6_K"
    if category == "ffn_down" and use_more_bits(layer, facts.layers):
        return "Q6_K"
    return None


# file type -> (its default ggml type, llama_ftype_get_default_type; the mix's own choices)
GGUF_FILE_TYPES: dict[str, tuple[str, Chooser]] = {
    "gguf-q4_0": ("Q4_0", _q4_0),
    "gguf-q4_k_s": ("Q4_K", _q4_k_s),
    "gguf-q4_k_m": ("Q4_K", _q4_k_m),
    "gguf-q5_k_m": ("Q5_K", _q5_k_m),
    "gguf-q6_k": ("Q6_K", _q6_k),
    "gguf-q8_0": ("Q8_0", _q8_0),
}
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def fallback(ggml_type: str, columns: int) -> str:
    """``tensor_type_fallback``: the type a row of `columns` can take when `ggml_type`'s block does not divide it."""
    block = GGML_BLOCKS[ggml_type][0]
    if columns % block == 0:
        return ggml_type
    chosen = _FALLBACK.get(ggml_type, "F16")
    return chosen if columns % GGML_BLOCKS[chosen][0] == 0 else "F16"


def tensor_type(file_type: str, entry: TensorEntry, layer: int, facts: ModelFacts) -> str:
    """The ggml type `llama-quantize` writes for one tensor of `entry` in `layer` (-1 outside the layers)."""
    try:
        default, chooser = GGUF_FILE_TYPES[file_type]
    except KeyError:
        raise UnknownName("gguf file type", file_type, list(GGUF_FILE_TYPES), field="format") from None
    if entry.role == "vision":  # llama.cpp's separate mmproj file (convert_hf_to_gguf.py --mmproj: F16, F32 1-D)
        return "F16" if len(entry.shape) >= 2 else "F32"
    if not quantizable(entry):
        return "F32"
    category = gguf_category(entry)
    columns = entry.shape[-1]
    chosen = default
    if category == "output" or (facts.tied and category == "token_embd"):
        if facts.falcon or columns % GGML_BLOCKS[default][0]:
            chosen = "Q8_0"
        elif default != "Q8_0":
            chosen = "Q6_K"
    elif category != "token_embd":
        chosen = chooser(category, layer, facts) or default
        if category in _ATTN_V_LIKE:
            if facts.is_70b and chosen in ("Q3_K", "Q4_K"):
                chosen = "Q5_K"
            if facts.experts == 8:
                chosen = "Q8_0"
        elif category == "attn_k" and facts.experts == 8:
            chosen = "Q8_0"
    return fallback(chosen, columns)


#: model types whose GGUF files nibble does not size, and why: refused (422 naming ``format``) rather than guessed
GGUF_REFUSED: dict[str, str] = {
    # convert_hf_to_gguf.py's Glm4MoeModel writes the multi-token-prediction layer into the file as one more block
    # (block_count = num_hidden_layers + num_nextn_predict_layers: 47 for GLM-4.5-Air's 46 layers, blk.46.nextn.*
    # beside the layer's experts), and llama_tensor_get_type's layer-dependent choices count that block; nibble's
    # inventory holds what vLLM loads, without it, and no llama-quantize run of this arch is recorded
    "glm4_moe": "llama.cpp's glm4moe GGUF files hold the multi-token-prediction layer as an extra block "
                "(block_count = num_hidden_layers + num_nextn_predict_layers) whose tensors and layer-dependent "
                "types nibble does not model: plan a safetensors format (bf16, fp8, int4) for this model",
    # llama.cpp has the qwen3next arch, but its converter (conversion/qwen.py, Qwen3NextModel and _QwenMtpMixin)
    # writes the multi-token-prediction layer as one more block unless --no-mtp is given, and splits each Gated
    # DeltaNet in_proj_qkvz into attn_qkv and attn_gate, which llama_tensor_get_type (src/llama-quant.cpp) types
    # differently: attn_qkv takes attn_v's upgrades, indexed by its count of attn_v/attn_qkv tensors
    # (n_attention_wv, linear and full attention layers together), not by the layer.  nibble's GGUF mix is one type
    # per checkpoint tensor and layer, and no llama-quantize run of this arch is recorded
    "qwen3_next": "llama.cpp's qwen3next GGUF files split each Gated DeltaNet in_proj_qkvz into attn_qkv and "
                  "attn_gate tensors that llama-quantize types differently (attn_qkv as attn_v, counted across the "
                  "linear and full attention layers), and its converter adds the multi-token-prediction layer as an "
                  "extra block by default: nibble does not size these files; plan a safetensors format (bf16, fp8, "
                  "int4) for this model",
    # llama.cpp's qwen35 arch: the same converter (conversion/qwen.py, _LinearAttentionVReorderBase and _QwenMtpMixin)
    "qwen3_5": "llama.cpp's qwen35 GGUF files store each Gated DeltaNet in_proj_qkv as attn_qkv, which "
               "llama-quantize types as attn_v counted across the linear and full attention layers, not by layer, "
               "and its converter adds the multi-token-prediction layer as an extra block by default: nibble does "
               "not size these files; plan a safetensors format (bf16, fp8, int4) for this model",
}
# DeepSeek-V3.2: llama.cpp has the arch (deepseek32, conversion/deepseek.py's DeepseekV32Model), but its converter
# keeps the multi-token-prediction layer as an extra block by default (skip_mtp = False: block_count =
# num_hidden_layers + num_nextn_predict_layers), splits kv_b_proj into attn_k_b / attn_v_b and writes the indexer's
# tensors, and no llama-quantize run of deepseek32 is recorded (tests/quant_core/data/llama_quantize/)
GGUF_REFUSED["deepseek_v32"] = (
    "llama.cpp's deepseek32 GGUF files hold the multi-token-prediction layer as an extra block and split the MLA and "
    "indexer tensors in ways whose llama-quantize types nibble has not recorded: plan a safetensors format (bf16, "
    "fp8, int4) for this model")
# GLM-5 (glm_moe_dsa): conversion/glm.py's GlmMoeDsaModel (arch glm-dsa) likewise keeps the MTP block (skip_mtp = False)
GGUF_REFUSED["glm_moe_dsa"] = GGUF_REFUSED["deepseek_v32"].replace("deepseek32", "glm-dsa")
# Qwen3.5-MoE: llama.cpp's qwen35moe arch, the same converter as qwen35 (conversion/qwen.py: in_proj_qkv written as
# attn_qkv, typed by llama_tensor_get_type as attn_v counted across layers, and the MTP layer as an extra block)
GGUF_REFUSED["qwen3_5_moe"] = GGUF_REFUSED["qwen3_5"].replace("qwen35 GGUF", "qwen35moe GGUF")


def gguf_rows(file_type: str, spec: ModelSpec,
              entries: tuple[TensorEntry, ...]) -> tuple[tuple[TensorEntry, WeightFormat], ...]:
    """`entries` split by the ggml type each layer's tensor gets: one row per (entry, type).  A model type of
    `GGUF_REFUSED` raises `InvalidSpec` naming ``format``."""
    refused = GGUF_REFUSED.get(spec.model_type)
    if refused is not None:
        raise InvalidSpec("format", file_type, refused)
    facts = ModelFacts.of(spec)
    out: list[tuple[TensorEntry, WeightFormat]] = []
    for entry in entries:
        if not entry.layers:
            out.append((entry, ggml_format(tensor_type(file_type, entry, -1, facts))))
            continue
        by_type: dict[str, list[int]] = {}
        for layer in entry.layers:
            by_type.setdefault(tensor_type(file_type, entry, layer, facts), []).append(layer)
        for ggml_type, layers in by_type.items():
            part = entry if len(by_type) == 1 else TensorEntry(entry.name, entry.shape, entry.role, tuple(layers),
                                                                 entry.per_layer, entry.active_per_layer)
            out.append((part, ggml_format(ggml_type)))
    return tuple(out)
