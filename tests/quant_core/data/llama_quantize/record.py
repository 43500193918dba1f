"""Record what llama.cpp's llama-quantize writes for small random models: each tensor's ggml type and
the total tensor bytes, per architecture and file type, into recorded.json (the tests read that file,
never the tool).

The models are written here with gguf-py from nibble's own tensor inventory (F16 weights, F32 norms,
biases and routers, as convert_hf_to_gguf.py writes them), with the GGUF tensor names llama.cpp uses.
Run (after building llama-quantize from llama.cpp's sources, e.g. those PyPI's llama-cpp-python sdist
vendors): python tests/quant_core/data/llama_quantize/record.py PATH/TO/llama-quantize [MODEL ...]
(with model names, only those are recorded again and the other records are kept); run it with
``PYTHONPATH=.`` from the repository, so that it reads this checkout's quant_core, not an installed one.

recorded.json was made on 2026-12-06 with llama-cpp-python 0.3.36's vendored llama.cpp (the same
llama_tensor_get_type as ggml-org/llama.cpp 007dbbf3), built with
``cmake -B build -DCMAKE_C_FLAGS=-O0 -DCMAKE_CXX_FLAGS=-O0 -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF
-DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF`` and ``cmake --build build --target llama-quantize -j2``
(about 17 minutes on two shared cores; -O0 because -O3 would not finish in time).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import inventory
from quant_core.specs import ModelSpec, TensorEntry

HERE = Path(__file__).resolve().parent
FILE_TYPES = {"gguf-q4_0": "Q4_0", "gguf-q4_k_s": "Q4_K_S", "gguf-q4_k_m": "Q4_K_M", "gguf-q5_k_m": "Q5_K_M",
              "gguf-q6_k": "Q6_K", "gguf-q8_0": "Q8_0"}
BASE = {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 512, "vocab_size": 512, "max_position_embeddings": 4096}
_TINY_QWEN_VISION = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "out_hidden_size": 256}
# (name, gguf architecture, config.json): fourteen dense models and seven MoE; qwen2-320 has widths that 256 does
# not divide
MODELS: list[tuple[str, str, dict[str, object]]] = [
    ("llama", "llama", {**BASE, "model_type": "llama"}),
    ("qwen2-320", "qwen2", {**BASE, "model_type": "qwen2", "hidden_size": 320, "num_attention_heads": 5,
                            "num_key_value_heads": 1, "intermediate_size": 864, "tie_word_embeddings": True}),
    ("qwen3", "qwen3", {**BASE, "model_type": "qwen3", "head_dim": 128}),
    ("gemma2", "gemma2", {**BASE, "model_type": "gemma2", "head_dim": 64, "sliding_window": 128}),
    ("phi3", "phi3", {**BASE, "model_type": "phi3", "num_key_value_heads": 4}),
    ("qwen3_moe", "qwen3moe", {**BASE, "model_type": "qwen3_moe", "head_dim": 64, "num_experts": 4,
                               "num_experts_per_tok": 2, "moe_intermediate_size": 256}),
    ("mixtral", "llama", {**BASE, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}),
    ("qwen2_moe", "qwen2moe", {**BASE, "model_type": "qwen2_moe", "num_experts": 4, "num_experts_per_tok": 2,
                               "moe_intermediate_size": 384, "shared_expert_intermediate_size": 512}),
    ("phimoe", "phimoe", {**BASE, "model_type": "phimoe", "num_local_experts": 4, "num_experts_per_tok": 2,
                          "attention_bias": True, "lm_head_bias": True}),
    # Llama 4's language model (Maverick's layout: MoE on the odd layers with a shared expert, dense between)
    ("llama4", "llama4", {**BASE, "model_type": "llama4_text", "head_dim": 64, "num_local_experts": 4,
                          "num_experts_per_tok": 1, "intermediate_size": 256, "intermediate_size_mlp": 512,
                          "interleave_moe_layer_step": 2}),
    # Mistral 3 (Mistral Small 3.1/3.2): convert_hf_to_gguf.py writes its language model as llama.cpp's mistral3 arch
    # (conversion/mistral3.py) and its Pixtral tower to a separate mmproj file (F16, not llama-quantize's input)
    ("mistral3", "mistral3", {"model_type": "mistral3", "text_config": {**BASE, "model_type": "mistral"},
                              "vision_config": {"model_type": "pixtral", "hidden_size": 64, "num_hidden_layers": 2,
                                                "num_attention_heads": 4, "intermediate_size": 128,
                                                "patch_size": 14}}),
    # Qwen2.5-VL's language model (llama.cpp's qwen2vl arch; the vision tower goes to a separate mmproj file), and
    # at 80 layers: qwen2vl's load_arch_hparams sets no model type, so no LLM_TYPE_70B as qwen2's 80 layers get
    ("qwen2_5_vl", "qwen2vl", {**BASE, "model_type": "qwen2_5_vl", "vision_config": _TINY_QWEN_VISION}),
    ("qwen2_5_vl-80", "qwen2vl", {**BASE, "model_type": "qwen2_5_vl", "num_hidden_layers": 80,
                                  "vision_config": _TINY_QWEN_VISION}),
    # Qwen3-VL's language model (llama.cpp's qwen3vl arch: Qwen3's tensors, named model.language_model.* in the
    # checkpoint), its tower and deepstack mergers in the mmproj file
    ("qwen3_vl", "qwen3vl", {"model_type": "qwen3_vl", "tie_word_embeddings": False,
                             "text_config": {**BASE, "head_dim": 64, "tie_word_embeddings": False},
                             "vision_config": {**_TINY_QWEN_VISION, "num_position_embeddings": 16,
                                               "deepstack_visual_indexes": [0]}}),
    # Qwen3-VL-MoE's language model (llama.cpp's qwen3vlmoe arch; the checkpoint's fused experts split by the
    # converter into ffn_gate_exps and ffn_up_exps, as Llama 4's)
    ("qwen3_vl_moe", "qwen3vlmoe", {"model_type": "qwen3_vl_moe", "tie_word_embeddings": False,
                                    "text_config": {**BASE, "head_dim": 64, "tie_word_embeddings": False,
                                                    "num_experts": 4, "num_experts_per_tok": 2,
                                                    "moe_intermediate_size": 256},
                                    "vision_config": {**_TINY_QWEN_VISION, "num_position_embeddings": 16,
                                                      "deepstack_visual_indexes": [0]}}),
    # MiniMax-M2 (llama.cpp's minimax-m2 arch): Mixtral's names with q/k norms over all heads, 4 stacked experts, the
    # router's e_score_correction_bias as exp_probs_b
    ("minimax_m2", "minimax-m2", {**BASE, "model_type": "minimax_m2", "head_dim": 64, "num_local_experts": 4,
                                  "num_experts_per_tok": 2, "use_routing_bias": True}),
    # GLM-4-0414 (llama.cpp's glm4 arch): q/k/v with biases, four norms a layer and the fused gate_up_proj, which
    # convert_hf_to_gguf.py keeps as one ffn_up of 2 x n_ff rows (llama-model's glm4: ffn_up {n_embd, n_ff * 2})
    ("glm4", "glm4", {**BASE, "model_type": "glm4", "head_dim": 64}),
    # OLMo 2 and Olmo 3 (llama.cpp's olmo2 arch for both: q/k norms over all heads, post-norms only; Olmo 3's
    # sliding layers change no tensor)
    ("olmo2", "olmo2", {**BASE, "model_type": "olmo2"}),
    ("olmo3", "olmo2", {**BASE, "model_type": "olmo3", "sliding_window": 128}),
    # Seed-OSS (llama.cpp's seed_oss arch): q/k/v biases, head_dim 128 beside a hidden size of 256 over 4 heads
    ("seed_oss", "seed_oss", {**BASE, "model_type": "seed_oss"}),
    # SmolLM3 (llama.cpp's smollm3 arch: llama's tensors; tied embeddings by default, so token_embd is the output)
    ("smollm3", "smollm3", {**BASE, "model_type": "smollm3"}),
]
_NAMES = {"input_layernorm": "attn_norm", "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
          "o_proj": "attn_output", "qkv_proj": "attn_qkv", "q_norm": "attn_q_norm", "k_norm": "attn_k_norm",
          "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down", "gate_up_proj": "ffn_up",
          "w1": "ffn_gate", "w3": "ffn_up", "w2": "ffn_down", "gate": "ffn_gate_inp",
          "shared_expert_gate": "ffn_gate_inp_shexp"}


#: GLM-4-0414's norms as gguf-py's tensor_mapping names them (post_attention_layernorm is its pre-MLP norm)
_GLM4_NORMS = {"post_self_attn_layernorm": "post_attention_norm", "post_attention_layernorm": "ffn_norm",
               "post_mlp_layernorm": "post_ffw_norm"}


def gguf_names(spec: ModelSpec, entry: TensorEntry) -> list[tuple[str, tuple[int, ...]]]:
    """The GGUF tensors convert_hf_to_gguf.py writes for an inventory row, with one tensor's logical shape:
    one, but for Llama 4's and Qwen3-VL-MoE's fused ``experts.gate_up_proj``, which it splits into ffn_gate_exps and
    ffn_up_exps, and none for a vision tower's (its mmproj file is another GGUF, which llama-quantize does not
    quantize)."""
    if entry.role == "vision":  # convert_hf_to_gguf.py --mmproj writes the vision tower into a file of its own
        return []
    if entry.name.endswith("experts.gate_up_proj[{e}]"):  # Llama 4's and Qwen3-VL-MoE's fused experts
        half = (entry.shape[0] // 2, *entry.shape[1:])
        return [("blk.{i}.ffn_gate_exps.weight", half), ("blk.{i}.ffn_up_exps.weight", half)]
    return [(gguf_name(spec, entry), entry.shape)]


def gguf_name(spec: ModelSpec, entry: TensorEntry) -> str:
    """The GGUF name convert_hf_to_gguf.py gives an inventory row (``{i}`` kept for the layer)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "output_norm.weight", "model.norm.bias": "output_norm.bias",
             "lm_head.bias": "output.bias"}
    name = entry.name.removeprefix("language_model.")  # Mistral 3's language model
    name = name.replace("model.language_model.", "model.", 1)  # Qwen3-VL's language model
    if name in fixed:
        return fixed[name]
    if spec.layout == "llama4":  # feed_forward.router / .shared_expert.* (_shexp below) / .experts.down_proj[{e}]
        name = name.replace("feed_forward.router", "feed_forward.gate")
    if name.endswith("]"):  # a fused expert tensor: Llama 4's, Qwen3-VL-MoE's
        name = name[: name.rindex("[")] + ".weight"
    if name.endswith("block_sparse_moe.e_score_correction_bias"):  # MiniMax-M2's router bias
        return "blk.{i}.exp_probs_b.bias"
    parts = name.split(".")
    module, kind = parts[-2], parts[-1]
    if spec.layout == "glm4" and module in _GLM4_NORMS:
        base = _GLM4_NORMS[module]
    elif module == "post_attention_layernorm" and (spec.layout == "olmo2" or spec.model_type == "seed_oss"):
        base = "post_attention_norm"  # OLMo's post-norm; seed_oss has no ffn_norm (gguf-py's tensor_mapping)
    elif module == "post_attention_layernorm":
        base = "post_attention_norm" if spec.norms_per_layer == 4 else "ffn_norm"
    elif module == "pre_feedforward_layernorm":
        base = "ffn_norm"
    elif module == "post_feedforward_layernorm":
        base = "post_ffw_norm"
    else:
        base = _NAMES[module]
    if entry.per_layer > 1:
        base += "_exps"
    elif ".shared_expert." in entry.name:  # Qwen2-MoE's and Llama 4's one shared expert: ffn_*_shexp
        base += "_shexp"
    return f"blk.{{i}}.{base}.{kind}"


def write_model(spec: ModelSpec, arch: str, path: Path) -> dict[str, TensorEntry]:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(4096)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_block_count(spec.num_layers)
    writer.add_feed_forward_length(spec.moe_intermediate_size if spec.is_moe and arch in ("qwen3moe", "qwen3vlmoe")
                                   else spec.intermediate_size)
    if arch == "llama4":  # llama-model's llama4 load_hparams requires it
        step = spec.moe_layers[0] + 1
        writer.add_interleave_moe_layer_step(step)
    writer.add_head_count(spec.num_attention_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(spec.head_dim)
    if spec.is_moe:
        writer.add_expert_count(spec.num_experts)
        writer.add_expert_used_count(spec.experts_per_token)
        writer.add_expert_feed_forward_length(spec.moe_intermediate_size)
        if spec.shared_expert_intermediate_size:
            writer.add_expert_shared_feed_forward_length(spec.shared_expert_intermediate_size)
    if arch in ("qwen2vl", "qwen3vl", "qwen3vlmoe"):  # their load_arch_hparams require the M-RoPE sections
        writer.add_rope_dimension_sections([8, 12, 12, 0])
    if arch == "gemma2":
        writer.add_sliding_window(128)
        writer.add_attn_logit_softcapping(50.0)
        writer.add_final_logit_softcapping(30.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}".encode() for i in range(spec.vocab_size)])
    writer.add_token_scores([0.0] * spec.vocab_size)
    writer.add_token_types([1] * spec.vocab_size)
    rng = np.random.default_rng(0)
    names = {}
    for entry in inventory(spec):
        for name, one_shape in gguf_names(spec, entry):
            for layer in entry.layers or (-1,):
                concrete = name.replace("{i}", str(layer))
                shape = (entry.per_layer, *one_shape) if entry.per_layer > 1 else one_shape
                data = rng.standard_normal(shape).astype(np.float32) * 0.02
                quantizable = len(entry.shape) >= 2 and entry.role not in ("router",)
                writer.add_tensor(concrete, data.astype(np.float16) if quantizable else data)
                names[concrete] = entry
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return names


def main(tool: str, only: list[str]) -> None:
    """Record every model of `MODELS`, or only those named in `only` (the others' records are kept)."""
    kept = [] if not only else [record for record in json.loads((HERE / "recorded.json").read_text())
                                if record["model"] not in only]
    recorded = []
    with tempfile.TemporaryDirectory() as folder:
        for name, arch, config in MODELS:
            if only and name not in only:
                continue
            spec = model_from_hf_config(config, name=name)
            source = Path(folder) / f"{name}-f16.gguf"
            write_model(spec, arch, source)
            for file_type, tool_name in FILE_TYPES.items():
                target = Path(folder) / f"{name}-{tool_name}.gguf"
                subprocess.run([tool, str(source), str(target), tool_name, "1"], check=True, capture_output=True)
                reader = gguf.GGUFReader(str(target))
                recorded.append({"model": name, "config": config, "file_type": file_type,
                                 "tensor_bytes": int(sum(int(t.n_bytes) for t in reader.tensors)),
                                 "types": {t.name: t.tensor_type.name for t in reader.tensors}})
                print(name, file_type, recorded[-1]["tensor_bytes"])
    order = {name: index for index, (name, _arch, _config) in enumerate(MODELS)}
    records = sorted(kept + recorded, key=lambda record: order.get(record["model"], len(order)))  # stable
    (HERE / "recorded.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
