"""How GPTQ loaders decide, from a checkpoint's ``quantization_config``, which linear modules become GPTQ layers.

Transcribed from each loader's own source (not from nibble's code), so that a test can ask each one about every
module of a checkpoint nibble wrote:

* vLLM, ``vllm/model_executor/layers/quantization/utils/gptq_utils.py``: ``get_linear_quant_method`` (used by
  ``GPTQConfig`` in ``gptq.py`` and ``GPTQMarlinConfig`` in ``gptq_marlin.py``) makes a layer unquantized when
  ``get_dynamic_override`` returns False (a ``-:`` rule whose regex ``re.match``es the layer prefix; vLLM
  imports ``regex as re``, whose ``match`` agrees with the standard module's on these patterns) or when
  ``is_layer_gptq_quantized`` says no (no entry of ``modules_in_block_to_quantize``, flattened by
  ``maybe_update_config``, is a substring of the prefix, or of each shard's prefix for a fused layer, all
  shards having to agree, else ``ValueError``); ``gptq_marlin.py`` ``get_moe_quant_method`` gives a ``FusedMoE``
  layer (a layer's experts, named by their list: ``model.layers.0.mlp.experts``) ``UnquantizedFusedMoEMethod``
  when ``get_dynamic_override`` returns False, and reads nothing else.
* GPTQModel, ``gptqmodel/quantization/config.py``: ``dynamic_get`` → ``_resolve_dynamic_override``: the first
  rule in order that matches; a ``^literal$`` pattern (no regex metacharacter left once its escapes are read)
  matches by equality, any other by PCRE ``match`` (anchored at the start only); ``gptqmodel/utils/model.py``
  ``create_quant_module`` returns without a GPTQ layer when the result is False (a ``-:`` rule).
* optimum, ``optimum/gptq/quantizer.py`` ``GPTQQuantizer.convert_model`` (what transformers' ``GptqHfQuantizer``
  runs on a GPTQ checkpoint): with ``modules_in_block_to_quantize`` set, only the block's linear modules whose
  name ``endswith`` an entry of the flattened lists are replaced; ``dynamic`` is no ``GPTQConfig`` field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: vLLM's ``LlamaForCausalLM.packed_modules_mapping`` (vllm/model_executor/models/llama.py): the fused layers
LLAMA_PACKED_MODULES: dict[str, list[str]] = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                              "gate_up_proj": ["gate_proj", "up_proj"]}


def vllm_get_dynamic_override(dynamic: Mapping[str, Any], layer_name: str) -> dict[str, Any] | bool | None:
    """``get_dynamic_override(config, layer_name)`` with ``key=None``: False (negative), a rule's dict, or None."""
    for pattern, pattern_dict in dynamic.items():
        if pattern.startswith("-:"):
            if re.match(pattern.removeprefix("-:"), layer_name):
                return False
        elif re.match(pattern.removeprefix("+:"), layer_name):
            return dict(pattern_dict)
    return None


def vllm_is_layer_gptq_quantized(prefix: str, quantized_layers: list[str],
                                 fused_mapping: Mapping[str, list[str]]) -> bool:
    """``is_layer_gptq_quantized``: a substring test per entry; a fused layer's shards must agree."""
    if len(quantized_layers) == 0:
        quantized_layers = ["self_attn.qkv_proj", "self_attn.o_proj"]
    proj_name = prefix.split(".")[-1]
    if proj_name in fused_mapping:
        is_quantized = None
        for shard_prefix in [prefix.replace(proj_name, shard) for shard in fused_mapping[proj_name]]:
            is_shard_quantized = any(layer in shard_prefix for layer in quantized_layers)
            if is_quantized is None:
                is_quantized = is_shard_quantized
            elif is_shard_quantized != is_quantized:
                raise ValueError(f"Detected some but not all shards of {prefix} are quantized. All shards of "
                                 "fused layers to have the same precision.")
        assert is_quantized is not None
        return is_quantized
    return any(layer in prefix for layer in quantized_layers)


def vllm_quantizes(config: Mapping[str, Any], prefix: str,
                   fused_mapping: Mapping[str, list[str]] = LLAMA_PACKED_MODULES) -> bool:
    """Whether ``get_linear_quant_method`` gives the linear layer `prefix` a GPTQ method (the config read by
    ``GPTQConfig.from_config``: ``dynamic`` or {}, ``modules_in_block_to_quantize`` flattened, as
    ``maybe_update_config`` does when the config lists it)."""
    listed = config.get("modules_in_block_to_quantize") or []
    flattened = [item for sublist in listed for item in sublist] if listed and isinstance(listed[0], list) else listed
    is_layer_quantized = vllm_is_layer_gptq_quantized(prefix, flattened, fused_mapping)
    return not (vllm_get_dynamic_override(config.get("dynamic") or {}, prefix) is False or not is_layer_quantized)


def vllm_quantizes_experts(config: Mapping[str, Any], prefix: str) -> bool:
    """Whether ``get_moe_quant_method`` gives the ``FusedMoE`` layer `prefix` a GPTQ method."""
    return vllm_get_dynamic_override(config.get("dynamic") or {}, prefix) is not False


def _gptqmodel_literal(raw: str) -> str | None:
    """``_extract_literal_regex_pattern``: the one string a ``^...$`` regex matches, or None."""
    if not raw.startswith("^") or not raw.endswith("$"):
        return None
    raw, out, index = raw[1:-1], [], 0
    while index < len(raw):
        char = raw[index]
        if char == "\\":
            if index + 1 >= len(raw):
                return None
            following = raw[index + 1]
            if following.isalnum():  # a regex escape such as \d
                return None
            out.append(following)
            index += 2
            continue
        if char in ".^$*+?{}[]()|":
            return None
        out.append(char)
        index += 1
    return "".join(out)


def gptqmodel_dynamic_get(dynamic: Mapping[str, Any] | None, module_name: str) -> dict[str, Any] | bool | None:
    """``dynamic_get(dynamic, module_name)``: False for a negative rule, a rule's overrides, or None."""
    if dynamic is None:
        return None
    for pattern, overrides in dynamic.items():  # the earliest matching rule, literal or regex
        is_negative = pattern.startswith("-:")
        raw = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
        literal = _gptqmodel_literal(raw)
        if (module_name == literal) if literal is not None else re.match(raw, module_name) is not None:
            return False if is_negative else dict(overrides)
    return None


def gptqmodel_quantizes(config: Mapping[str, Any], module_name: str) -> bool:
    """Whether GPTQModel's ``create_quant_module`` makes a GPTQ layer of `module_name` (a module of its model's
    layer tree: the block's linear modules)."""
    return gptqmodel_dynamic_get(config.get("dynamic"), module_name) is not False


def optimum_quantizes(config: Mapping[str, Any], module_name: str) -> bool:
    """Whether ``convert_model`` keeps `module_name` (a linear module of the blocks) among the layers replaced."""
    listed = config.get("modules_in_block_to_quantize")
    if listed is None:
        return True
    layers_to_keep = [layer for sublist in listed for layer in sublist]  # sum(modules_in_block_to_quantize, [])
    return any(module_name.endswith(layer) for layer in layers_to_keep)
