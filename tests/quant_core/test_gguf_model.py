"""A checkpoint job's GGUF file is the one llama.cpp's converter would write, so llama.cpp loads it as is.

The reference is recorded.json (tests/quant_core/data/gguf_model/record.py): what convert_hf_to_gguf.py of
llama.cpp 0c1e570 (vendored by PyPI's llama-cpp-python 0.3.36) wrote with ``--outtype f16`` for the same tiny
llama, qwen2, mistral and qwen3 checkpoints.  nibble's file must hold the same metadata (every key, type and value; the
tokenizer arrays by length and SHA-256) and the same tensors (names and shapes); the tensor types differ only
where the job decides them: Q4_0 for the tensors it quantizes, the source's dtype for 2-D tensors it passes
through (the converter's F16 is its ``--outtype``), F32 for norms and biases in both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from quant_core.checkpoint import CheckpointOptions, gguf_model, open_checkpoint, plan_checkpoint
from quant_core.checkpoint.gguf_model import TOKENIZER_MODEL, permute_rows, sentencepiece_pieces
from quant_core.checkpoint.output import quantize_checkpoint
from quant_core.errors import InvalidSpec
from quant_core.quantize import METHODS, quantize
from quant_core.tensorio.gguf_export import q4_0_blocks
from tests.checkpoints import HEADS, KV_HEADS, write_llama_checkpoint
from tests.quant_core.data.gguf_model.record import MODELS, describe, write_model

DATA = Path(__file__).parent / "data" / "gguf_model"
RECORDED: dict[str, Any] = json.loads((DATA / "recorded.json").read_text())
GGUF_OPTIONS = CheckpointOptions(output="gguf", group_size=32, symmetric=True)
#: what differs by design: the file type (llama-quantize writes MOSTLY_Q4_0 = 2 for a Q4_0 file, the converter
#: MOSTLY_F16 = 1 for --outtype f16) and nibble's own report
OWN_KEYS = ("general.file_type", "nibble.report")


@pytest.fixture
def tiny_bpe_is_qwen2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter names a BPE pre-tokenizer by the hash of the ids its tokenizer gives a check text, and
    only real tokenizers are in its table; recorded.json's tiny BPE was converted as "qwen2" (record.py), so
    nibble's table learns its hash the same way."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(DATA / "bpe" / "tokenizer.json"))
    digest = hashlib.sha256(str(tokenizer.encode(gguf_model.BPE_CHECK_TEXT).ids).encode()).hexdigest()
    monkeypatch.setitem(gguf_model.BPE_PRE_TOKENIZERS, digest, "qwen2")


def gguf_job(tmp_path: Path, arch: str) -> tuple[Path, Any]:
    """The tiny `arch` checkpoint (directory named as when recorded: general.name comes from it) quantized to
    GGUF; returns the file and the plans."""
    source = tmp_path / MODELS[arch]
    write_model(source, arch)
    checkpoint = open_checkpoint(source)
    plans = plan_checkpoint(checkpoint, GGUF_OPTIONS)
    quantize_checkpoint(checkpoint, plans, GGUF_OPTIONS, tmp_path / "out", tmp_path / "parts")
    return tmp_path / "out" / "model.gguf", plans


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3", "qwen2-bpe", "llama3-rope",
                                  "llama-linear-rope"])
@pytest.mark.usefixtures("tiny_bpe_is_qwen2")
def test_metadata_is_what_convert_hf_to_gguf_writes(tmp_path: Path, arch: str) -> None:
    path, _ = gguf_job(tmp_path, arch)
    written, recorded = describe(path)["metadata"], RECORDED[arch]["metadata"]
    assert {key: value for key, value in written.items() if key not in OWN_KEYS} == \
        {key: value for key, value in recorded.items() if key not in OWN_KEYS}
    assert written["general.architecture"]["value"] == ("qwen2" if arch == "qwen2-bpe" else
                                                        "llama" if "llama" in arch or arch == "mistral" else arch)
    assert written["general.file_type"] == {"types": ["UINT32"], "value": int(gguf.LlamaFileType.MOSTLY_Q4_0)}
    print(arch, len(written), "keys;", {key: value.get("value") for key, value in recorded.items()
                                        if key.split(".")[0] in ("llama", "qwen2", "qwen3")})


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "qwen3", "qwen2-bpe", "llama3-rope",
                                  "llama-linear-rope"])
@pytest.mark.usefixtures("tiny_bpe_is_qwen2")
def test_tensors_have_the_converters_names_and_shapes(tmp_path: Path, arch: str) -> None:
    path, plans = gguf_job(tmp_path, arch)
    written, recorded = describe(path)["tensors"], RECORDED[arch]["tensors"]
    assert {name: tensor["shape"] for name, tensor in written.items()} == \
        {name: tensor["shape"] for name, tensor in recorded.items()}
    gguf_arch = RECORDED[arch]["metadata"]["general.architecture"]["value"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[gguf_arch.upper()], 2)
    quantized = {names.get_name(plan.tensor.name, try_suffixes=(".weight",)) for plan in plans if plan.quantized}
    assert len(quantized) == 14  # 7 linear weights a layer
    # F32 where the converter writes F32 (norms, biases); else Q4_0 if quantized, else the source's BF16
    assert {name: tensor["type"] for name, tensor in written.items()} == {
        name: "F32" if tensor["type"] == "F32" else "Q4_0" if name in quantized else "BF16"
        for name, tensor in recorded.items()}
    if "rope_freqs.weight" in recorded:  # llama3 rope scaling: the converter's generated factors
        assert written["rope_freqs.weight"]["values"] == recorded["rope_freqs.weight"]["values"]
    print(arch, len(written), "tensors,", len(quantized), "Q4_0")


@pytest.mark.parametrize(("base", "dim", "factor"), [(500000.0, 128, 8.0), (500000.0, 64, 32.0),
                                                     (10000.0, 128, 8.0), (10000.0, 64, 32.0)])
def test_llama3_rope_factors_are_the_converters(base: float, dim: int, factor: float) -> None:
    """Llama 3.1 8B (head 128, factor 8), Llama 3.2 1B (head 64, factor 32), and both at base 10000 (where
    dividing as x / y instead of torch's reciprocal-times gives other bits): the factors equal, bit for bit,
    those convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors computes in torch (its code, below)."""
    import math

    import torch

    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_wavelen, high_wavelen = 8192 / 1.0, 8192 / 4.0
    factors: list[Any] = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    expected = torch.tensor(factors, dtype=torch.float32).numpy()
    rope = {"rope_theta": base, "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    computed = gguf_model.llama3_rope_factors(rope, dim)
    assert computed.tobytes() == expected.tobytes()
    assert computed.min() == 1.0 and computed.max() == factor and ((computed > 1) & (computed < factor)).sum() >= 2


def test_q4_0_rows_permuted_are_the_permuted_weight_quantized() -> None:
    """llama's Q/K permutation moves whole rows and Q4_0 quantizes each row on its own, so permuting the rows of
    a quantized tensor's blocks gives exactly the bytes of quantizing the permuted weight, for every method a
    checkpoint job runs."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((HEADS * 32, 128)).astype(np.float32)
    methods = sorted(method for method in METHODS if method not in ("gptq", "gptq-act-order"))
    assert "rtn" in methods and len(methods) >= 2
    for method in methods:
        options = CheckpointOptions(method=method, output="gguf", group_size=32, symmetric=True)
        if method == "hqq":
            continue  # hqq optimises a zero point: no symmetric scheme (plan.check_options)
        blocks = q4_0_blocks("w", quantize(weight, options.scheme, method))
        permuted = q4_0_blocks("w", quantize(permute_rows(weight, KV_HEADS), options.scheme, method))
        assert permute_rows(blocks, KV_HEADS).tobytes() == permuted.tobytes(), method
    print("methods checked:", [m for m in methods if m != "hqq"])


def test_permutation_is_the_converters_rotate_half_to_interleaved_order() -> None:
    # LlamaModel.permute: reshape(heads, 2, rows/heads/2) and swap, i.e. within each head 0, h/2, 1, h/2+1 ...
    rows = np.arange(8).reshape(8, 1)
    assert permute_rows(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert permute_rows(rows, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_qwen2_rows_are_not_permuted_and_biases_are_f32(tmp_path: Path) -> None:
    path, _ = gguf_job(tmp_path, "qwen2")
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(path).tensors}
    source = open_checkpoint(tmp_path / MODELS["qwen2"])
    from quant_core.checkpoint import read_tensor

    bias = next(t for t in source.tensors if t.name == "model.layers.0.self_attn.q_proj.bias")
    written = tensors["blk.0.attn_q.bias"]
    assert written.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(np.asarray(written.data), read_tensor(source.directory, bias).astype(np.float32))
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reads token_embd as the output


def test_tokenizer_model_pieces_are_read_from_the_protobuf() -> None:
    pieces = sentencepiece_pieces((DATA / TOKENIZER_MODEL).read_bytes())
    assert len(pieces) == 96
    assert [(p.piece, p.type) for p in pieces[:4]] == [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("\u2581a", 1)]
    assert pieces[3].score == pytest.approx(-3.564711809158325)  # the converter's tokenizer.ggml.scores[3]


def test_truncated_tokenizer_model_is_refused_on_source_path() -> None:
    data = (DATA / TOKENIZER_MODEL).read_bytes()
    with pytest.raises(InvalidSpec) as refused:
        sentencepiece_pieces(data[:-7])
    assert refused.value.field == "source.path" and "SentencePiece" in str(refused.value)


def test_added_tokens_decoder_overrides_pieces_as_the_converter_does(tmp_path: Path) -> None:
    """``_create_vocab_sentencepiece``: an added special token is CONTROL, a plain one USER_DEFINED with ▁ as a
    space, both scored -1000; ids past the vocabulary are skipped."""
    source = tmp_path / MODELS["llama"]
    write_llama_checkpoint(source)
    config_path = source / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["added_tokens_decoder"] = {
        "94": {"content": "<|im_start|>", "special": False}, "95": {"content": "\u2581hi", "special": False},
        "400": {"content": "<far>", "special": True}}
    config_path.write_text(json.dumps(config))
    checkpoint = open_checkpoint(source)
    plans = plan_checkpoint(checkpoint, GGUF_OPTIONS)
    quantize_checkpoint(checkpoint, plans, GGUF_OPTIONS, tmp_path / "out", tmp_path / "parts")
    fields = gguf.GGUFReader(tmp_path / "out" / "model.gguf").fields
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    assert (tokens[94], types[94], scores[94]) == ("<|im_start|>", gguf.TokenType.CONTROL, -1000.0)
    assert (tokens[95], types[95], scores[95]) == (" hi", gguf.TokenType.USER_DEFINED, -1000.0)
    assert len(tokens) == 96


def _refusal(tmp_path: Path, **config: Any) -> InvalidSpec:
    source = tmp_path / "model"
    write_llama_checkpoint(source)
    path = source / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    with pytest.raises(InvalidSpec) as refused:
        plan_checkpoint(open_checkpoint(source), GGUF_OPTIONS)
    assert refused.value.field == "output"
    return refused.value


def test_architectures_llama_cpp_would_not_load_from_this_file_are_refused(tmp_path: Path) -> None:
    refused = _refusal(tmp_path, architectures=["Gemma2ForCausalLM"], model_type="gemma2")
    assert "'Gemma2ForCausalLM'" in str(refused) and "Qwen2ForCausalLM" in str(refused)


def test_qwen3_reranker_is_refused(tmp_path: Path) -> None:
    refused = _refusal(tmp_path, architectures=["Qwen3ForCausalLM"], model_type="qwen3",
                       _name_or_path="Qwen/Qwen3-Reranker-0.6B")
    assert "reranker" in str(refused)


def test_rope_scaling_not_written_is_refused(tmp_path: Path) -> None:
    refused = _refusal(tmp_path, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": 32768})
    assert "'yarn'" in str(refused)


def test_llama3_rope_scaling_is_refused_for_qwen2(tmp_path: Path) -> None:
    # the converter's rope_freqs for llama3 scaling is LlamaModel's; for a qwen2 it would be dropped
    refused = _refusal(tmp_path, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                       rope_scaling={"rope_type": "llama3", "factor": 8.0})
    assert "'llama3'" in str(refused) and "qwen2" in str(refused)


def test_checkpoint_without_tokenizer_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model"
    write_llama_checkpoint(source)
    (source / TOKENIZER_MODEL).unlink()
    (source / "tokenizer.json").unlink()
    with pytest.raises(InvalidSpec, match=r"neither tokenizer\.model .SentencePiece. nor") as refused:
        plan_checkpoint(open_checkpoint(source), GGUF_OPTIONS)
    assert refused.value.field == "output"


def test_tensor_llama_cpp_has_no_name_for_is_refused(tmp_path: Path) -> None:
    from tests.checkpoints import llama_tensors

    tensors = llama_tensors()
    tensors["model.extra_head.weight"] = tensors["lm_head.weight"]
    source = tmp_path / "model"
    write_llama_checkpoint(source, tensors=tensors)
    with pytest.raises(InvalidSpec, match=r"no tensor for .model\.extra_head\.weight.") as refused:
        plan_checkpoint(open_checkpoint(source), GGUF_OPTIONS)
    assert refused.value.field == "output"


@pytest.mark.parametrize(("name", "content", "named"), [
    ("README.md", "---\nlicense: [unclosed\n---\n# card\n", "'README.md': model card metadata unreadable"),
    ("tokenizer_config.json", "{not json", "'tokenizer_config.json': is not valid JSON"),
    ("tokenizer.json", "[1, 2", "'tokenizer': tokenizer files unreadable")])
def test_unreadable_model_card_or_tokenizer_files_are_refused_on_source_path(tmp_path: Path, name: str,
                                                                              content: str, named: str) -> None:
    source = tmp_path / "model"
    write_llama_checkpoint(source)
    (source / name).write_text(content)
    with pytest.raises(InvalidSpec) as refused:
        plan_checkpoint(open_checkpoint(source), GGUF_OPTIONS)
    assert refused.value.field == "source.path" and named in str(refused.value)


def test_q_and_k_passed_through_are_permuted_too(tmp_path: Path) -> None:
    from quant_core.checkpoint import read_tensor

    source = tmp_path / "model"
    written = write_llama_checkpoint(source)
    options = CheckpointOptions(output="gguf", group_size=32, symmetric=True,
                                exclude=(*GGUF_OPTIONS.exclude, "*q_proj*", "*k_proj*"))
    checkpoint = open_checkpoint(source)
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "out",
                        tmp_path / "parts")
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(tmp_path / "out" / "model.gguf").tensors}
    for name, heads, gguf_name in (("model.layers.1.self_attn.q_proj.weight", HEADS, "blk.1.attn_q.weight"),
                                   ("model.layers.1.self_attn.k_proj.weight", KV_HEADS, "blk.1.attn_k.weight")):
        tensor = tensors[gguf_name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.BF16
        stored = np.asarray(tensor.data).view(written[name].dtype).reshape(written[name].shape)
        source_rows = read_tensor(source, next(t for t in checkpoint.tensors if t.name == name))
        # the converter's LlamaModel.permute: reshape(heads, 2, rows/heads/2, cols), swap axes 1 and 2
        expected = source_rows.reshape(heads, 2, -1, source_rows.shape[1]).swapaxes(1, 2).reshape(source_rows.shape)
        assert stored.tobytes() == expected.tobytes(), name


def test_bpe_pre_tokenizer_llama_cpp_does_not_know_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model"
    write_llama_checkpoint(source, family="qwen2", bpe=True)
    with pytest.raises(InvalidSpec, match=r"BPE pre-tokenizer .check hash [0-9a-f]{64}. is not one") as refused:
        plan_checkpoint(open_checkpoint(source), GGUF_OPTIONS)
    assert refused.value.field == "output"


def test_the_pre_tokenizer_table_is_the_converters() -> None:
    # conversion/base.py get_vocab_base_pre at llama.cpp 0c1e570: 97 ifs on 95 hashes (for the two repeated,
    # bert-bge then jina-v2-en and mpt then olmo, the later if wins, as in the table); Qwen2.5, Llama 3 among them
    assert len(gguf_model.BPE_PRE_TOKENIZERS) == 95
    assert gguf_model.BPE_PRE_TOKENIZERS[
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea"] == "qwen2"
    assert gguf_model.BPE_PRE_TOKENIZERS[
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"] == "llama-bpe"


def test_llama_2_style_tokenizer_json_without_tokenizer_model_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model"
    write_llama_checkpoint(source)
    (source / TOKENIZER_MODEL).unlink()
    data = json.loads((source / "tokenizer.json").read_text())
    data["model"] = {"type": "BPE", "byte_fallback": True, "vocab": {}, "merges": []}
    data["decoder"] = {"type": "Sequence", "decoders": []}
    (source / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(InvalidSpec, match="Llama-2 style") as refused:
        plan_checkpoint(open_checkpoint(source), GGUF_OPTIONS)
    assert refused.value.field == "output"
