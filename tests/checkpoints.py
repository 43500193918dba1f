"""Small but real llama, qwen2 and qwen3 checkpoints written by the tests: random BF16 weights in several shards, with
``model.safetensors.index.json``, a ``config.json`` (the keys transformers' ``LlamaConfig`` / ``Qwen2Config`` /
``Qwen3Config`` read) and tokenizer files: a 96-piece SentencePiece ``tokenizer.model``
(tests/quant_core/data/gguf_model/make_tokenizer.py) and the same unigram model as ``tokenizer.json``, made by
the ``tokenizers`` library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from quant_core.checkpoint.gguf_model import sentencepiece_pieces
from quant_core.tensorio import write_safetensors

TOKENIZER_MODEL = Path(__file__).parent / "quant_core" / "data" / "gguf_model" / "tokenizer.model"
BPE_TOKENIZER = Path(__file__).parent / "quant_core" / "data" / "gguf_model" / "bpe"
BPE_VOCAB = 320

HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
VOCAB = 96
HEAD_DIM = HIDDEN // HEADS

LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}
#: a Qwen3 of the same size: q/k norms instead of biases, head_dim given, tied embeddings
QWEN3_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB, "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": True,
    "attention_bias": False, "use_sliding_window": False, "sliding_window": None, "max_window_layers": LAYERS,
    "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}
#: a Qwen2 of the same size: q/k/v biases, tied embeddings (no lm_head), Qwen2's rope base and norm epsilon
QWEN2_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": True, "use_sliding_window": False,
    "sliding_window": None, "max_window_layers": LAYERS, "torch_dtype": "bfloat16", "bos_token_id": 1,
    "eos_token_id": 2,
}


def llama_tensors(seed: int = 0, layers: int = LAYERS, *, family: str = "llama", vocab: int = VOCAB
                  ) -> dict[str, NDArray[Any]]:
    """Every tensor of the tiny llama (`family` qwen2: with q/k/v biases and no lm_head; qwen3: with q/k norms
    and no lm_head) in the order transformers' state dict lists them, BF16, seeded."""
    qwen2 = family == "qwen2"
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> NDArray[Any]:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(ml_dtypes.bfloat16)

    tensors: dict[str, NDArray[Any]] = {"model.embed_tokens.weight": weight(vocab, HIDDEN)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        tensors.update({
            f"{prefix}.self_attn.q_proj.weight": weight(HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.k_proj.weight": weight(KV_HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.v_proj.weight": weight(KV_HEADS * HEAD_DIM, HIDDEN),
            **({f"{prefix}.self_attn.q_proj.bias": weight(HEADS * HEAD_DIM),
                f"{prefix}.self_attn.k_proj.bias": weight(KV_HEADS * HEAD_DIM),
                f"{prefix}.self_attn.v_proj.bias": weight(KV_HEADS * HEAD_DIM)} if qwen2 else {}),
            f"{prefix}.self_attn.o_proj.weight": weight(HIDDEN, HEADS * HEAD_DIM),
            **({f"{prefix}.self_attn.q_norm.weight": np.ones(HEAD_DIM, dtype=ml_dtypes.bfloat16),
                f"{prefix}.self_attn.k_norm.weight": np.ones(HEAD_DIM, dtype=ml_dtypes.bfloat16)}
               if family == "qwen3" else {}),
            f"{prefix}.mlp.gate_proj.weight": weight(INTERMEDIATE, HIDDEN),
            f"{prefix}.mlp.up_proj.weight": weight(INTERMEDIATE, HIDDEN),
            f"{prefix}.mlp.down_proj.weight": weight(HIDDEN, INTERMEDIATE),
            f"{prefix}.input_layernorm.weight": np.ones(HIDDEN, dtype=ml_dtypes.bfloat16),
            f"{prefix}.post_attention_layernorm.weight": np.ones(HIDDEN, dtype=ml_dtypes.bfloat16),
        })
    tensors["model.norm.weight"] = np.ones(HIDDEN, dtype=ml_dtypes.bfloat16)
    if family == "llama":
        tensors["lm_head.weight"] = weight(vocab, HIDDEN)
    return tensors


def write_tokenizer(directory: Path) -> None:
    """The SentencePiece ``tokenizer.model``, the same unigram model as ``tokenizer.json`` (saved by the
    ``tokenizers`` library, with the metaspace pre-tokenizer llama's uses) and the config transformers reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    model = TOKENIZER_MODEL.read_bytes()
    (directory / "tokenizer.model").write_bytes(model)
    pieces = [(piece.piece, piece.score) for piece in sentencepiece_pieces(model)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 256}, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def write_bpe_tokenizer(directory: Path) -> None:
    """A 320-token byte-level BPE ``tokenizer.json`` with Qwen2's pre-tokenizer
    (tests/quant_core/data/gguf_model/make_bpe_tokenizer.py) and a Qwen2-like tokenizer_config.json."""
    (directory / "tokenizer.json").write_bytes((BPE_TOKENIZER / "tokenizer.json").read_bytes())
    special = {str(BPE_VOCAB - 3 + i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": True}
               for i, text in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": special, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_prefix_space": False,
        "model_max_length": 512, "clean_up_tokenization_spaces": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}"}, indent=2))


def write_llama_checkpoint(directory: Path, *, shards: int = 3, seed: int = 0, layers: int = LAYERS,
                           tensors: dict[str, NDArray[Any]] | None = None, family: str = "llama",
                           bpe: bool = False) -> dict[str, NDArray[Any]]:
    """Write the tiny llama (`family` qwen2 or qwen3: the tiny qwen2 or qwen3) as `shards` safetensors shards
    plus index, config.json and tokenizer files (`bpe`: the byte-level BPE tokenizer.json alone, and a
    vocabulary of its 320 tokens).

    Returns the tensors written.  Tensors are dealt to shards in order, about
    the same count each, named as transformers names them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else llama_tensors(seed, layers, family=family,
                                                                vocab=BPE_VOCAB if bpe else VOCAB)
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for number in range(shards):
        chunk = names[number * per_shard:(number + 1) * per_shard]
        shard = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(directory / shard, {name: tensors[name] for name in chunk}, {"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, shard))
        total += sum(int(tensors[name].nbytes) for name in chunk)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = {"llama": LLAMA_CONFIG, "qwen2": QWEN2_CONFIG, "qwen3": QWEN3_CONFIG}[family]
    special_ids = {"bos_token_id": BPE_VOCAB - 3, "eos_token_id": BPE_VOCAB - 1} if bpe else {
        "bos_token_id": 1, "eos_token_id": 2}
    (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers, **special_ids,
                                                       "vocab_size": BPE_VOCAB if bpe else VOCAB}, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(special_ids))
    if bpe:
        write_bpe_tokenizer(directory)
    else:
        write_tokenizer(directory)
    return tensors


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` by relative path, with its bytes (to compare two results)."""
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


#: DeepSeek-V3's dtypes by tensor: the linears of the decoder FP8 e4m3 with an fp32 ``weight_scale_inv`` per
#: 128 x 128 block; embeddings, lm_head, norms and the router bf16, the router's correction bias fp32
_BF16_LINEARS = ("model.embed_tokens.", "lm_head.", ".mlp.gate.", ".embed_tokens.", ".shared_head.head.", ".eh_proj.")


def deepseek_v3_headers(config: dict[str, Any], shards: int = 163) -> tuple[dict[str, bytes], bytes, int]:
    """The safetensors headers of a DeepSeek-V3-shaped checkpoint: every tensor of the model `config`
    describes, by its Hugging Face name and shape, plus the multi-token-prediction layer (layer
    ``num_hidden_layers``: a MoE layer with ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head``), dealt in
    order to `shards` files named as deepseek-ai/DeepSeek-V3's (``model-00001-of-000163.safetensors``).

    Returns the headers by file name (8-byte length + JSON, no tensor data), the
    ``model.safetensors.index.json`` bytes, and the bytes of the tensors the model's layers hold (the
    MTP layer left out, as engines load it).
    """
    from quant_core.hf_config import model_from_hf_config
    from quant_core.inventory import inventory

    spec = model_from_hf_config(config)
    layers = int(config["num_hidden_layers"])
    hidden, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    tensors: list[tuple[str, list[int]]] = []
    mtp: list[tuple[str, list[int]]] = []
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                tensors.append((name, list(entry.shape)))
                if layer == layers - 1:  # the MTP layer repeats the last (MoE) layer's tensors
                    mtp.append((name.replace(f".layers.{layer}.", f".layers.{layers}."), list(entry.shape)))
    mtp += [(f"model.layers.{layers}.{name}", shape) for name, shape in (
        ("enorm.weight", [hidden]), ("hnorm.weight", [hidden]), ("eh_proj.weight", [hidden, 2 * hidden]),
        ("embed_tokens.weight", [vocab, hidden]), ("shared_head.norm.weight", [hidden]),
        ("shared_head.head.weight", [vocab, hidden]))]
    stored: list[tuple[str, str, list[int], int]] = []  # name, dtype, shape, bytes
    planned = 0
    for index, (name, shape) in enumerate([*tensors, *mtp]):
        elements = int(np.prod(shape))
        if name.endswith("e_score_correction_bias"):
            entries = [(name, "F32", shape, 4 * elements)]
        elif len(shape) == 2 and not any(part in name for part in _BF16_LINEARS):
            scales = [-(-shape[0] // 128), -(-shape[1] // 128)]
            entries = [(name, "F8_E4M3", shape, elements),
                       (name.replace(".weight", ".weight_scale_inv"), "F32", scales, 4 * scales[0] * scales[1])]
        else:
            entries = [(name, "BF16", shape, 2 * elements)]
        stored.extend(entries)
        if index < len(tensors):
            planned += sum(size for *_, size in entries)
    per_shard = -(-len(stored) // shards)
    headers: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for number in range(shards):
        file = f"model-{number + 1:05d}-of-{shards:06d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, size in stored[number * per_shard:(number + 1) * per_shard]:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            weight_map[name] = file
            offset += size
        total += offset
        text = json.dumps(header).encode()
        headers[file] = len(text).to_bytes(8, "little") + text
    index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode()
    return headers, index, planned
