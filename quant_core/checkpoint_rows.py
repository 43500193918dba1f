"""A checkpoint's own tensors (from its headers) as the rows the planner sums.

`checkpoint_scheme(spec, tensors)` gives every header tensor a role and a layer: Hugging Face
names by the module of the model's inventory they belong to (``q_proj.qweight``,
``q_proj.weight_scale_inv`` and ``experts.gate_up_proj_blocks`` are all the module's bytes),
GGUF names by llama.cpp's tensor names (``blk.N.attn_q.weight``...).  Multi-token-prediction
layers (DeepSeek-V3's layer 61, GGUF ``nextn`` tensors) that engines skip at load are counted
apart, not planned; tensors that belong to no module of the model are listed and planned as
``other``.  Repeated tensors fold into rows with layers and a per-layer count, as the
inventory's, so a plan over 100 shards costs a few hundred rows.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from quant_core.errors import InvalidSpec
from quant_core.inventory import inventory
from quant_core.schemes import CheckpointSummary, WeightScheme, module_name
from quant_core.specs import ModelSpec, TensorEntry
from quant_core.tensorio.checkpoint_headers import HeaderTensor

_NUMBER = re.compile(r"\.(\d+)(?=\.|$)")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blk)\.(\d+)\.")
_PARAMETER_SUFFIXES = ("_blocks", "_scales")
_GGUF_ROLES: tuple[tuple[str, str], ...] = (
    ("token_embd.", "embedding"), ("output.", "lm_head"), ("position_embd.", "position_embedding"),
    ("_norm.", "norm"), ("ffn_gate_inp", "router"), ("exp_probs_b", "router"), ("_exps.", "expert"),
    ("attn_", "attention"), ("ffn_", "mlp"),
)


#: fused expert tensors and the per-expert modules a checkpoint may hold instead: Llama 4's checkpoints quantized by
#: llm-compressor (``for_llm_compressor``) store ``feed_forward.experts.N.gate_proj`` ..., which vLLM's llama4.py
#: loads as well (load_moe_expert_weights, fused=False)
_FUSED_EXPERTS: dict[str, tuple[str, ...]] = {
    "experts.gate_up_proj": ("gate_proj", "up_proj"),
    "experts.down_proj": ("down_proj",),
}


#: the names later checkpoints of a family give the modules nibble's inventory names as the published ones do, as
#: vLLM's loader reads both (mistral3.py's hf_to_vllm_mapper: the model.language_model.* layout of transformers
#: 4.52 to 4.57 beside the language_model.model.* of Mistral Small 3.1 and 3.2)
_RENAMED_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "mistral3": (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
                 ("model.multi_modal_projector.", "multi_modal_projector."), ("lm_head.", "language_model.lm_head.")),
}


def _inventory_name(spec: ModelSpec, name: str) -> str:
    """`name` as the inventory of `spec` names the module (`_RENAMED_PREFIXES`), else itself."""
    for old, new in _RENAMED_PREFIXES.get(spec.model_type, ()):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _pattern(name: str) -> str:
    return _NUMBER.sub(".{n}", name)


def _module_roles(spec: ModelSpec) -> dict[str, str]:
    """Role by module pattern, the module's weight's role; a module's bias also under ``<module>.bias`` with its own
    role (a biased linear's ``q_proj.weight`` or ``lm_head.weight`` is not a bias, and its ``.bias`` is)."""
    roles: dict[str, str] = {}
    for entry in inventory(spec):
        module = _pattern(module_name(entry.name).replace("{i}", "0").replace("{e}", "0").replace("{v}", "0"))
        if entry.name.endswith(".bias"):  # {v}: a vision encoder's layer
            roles[f"{module}.bias"] = entry.role
            roles.setdefault(module, entry.role)
        else:
            roles[module] = entry.role
    if spec.model_type == "qwen2_5_vl":  # the names transformers 4.52-4.57 saved Qwen2.5-VL under, which vLLM's
        # qwen2_5_vl.py maps back (hf_to_vllm_mapper): model.language_model.* and model.visual.*
        for module, role in list(roles.items()):
            if module.startswith("model."):
                roles[f"model.language_model.{module.removeprefix('model.')}"] = role
            elif module.startswith("visual."):
                roles[f"model.{module}"] = role
    for fused, parts in _FUSED_EXPERTS.items():  # the same experts stored one 2-D tensor per expert and projection
        for module, role in list(roles.items()):
            if module.endswith(fused):
                for part in parts:
                    roles[f"{module[: -len(fused)]}experts.{{n}}.{part}"] = role
    return roles


def _pattern_role(pattern: str, roles: dict[str, str]) -> str | None:
    """The role of a Hugging Face tensor by its name's `_pattern` (its module's, a quantized parameter's module's),
    or None for a tensor of no module of the model."""
    candidates = [pattern, pattern.rsplit(".", 1)[0]]
    for suffix in _PARAMETER_SUFFIXES:
        if pattern.endswith(suffix):
            candidates.append(pattern[: -len(suffix)])
    for candidate in candidates:
        if candidate in roles:
            return roles[candidate]
    return None


def _gguf_role(name: str) -> str | None:
    if name.endswith(".bias"):
        return "bias"
    for fragment, role in _GGUF_ROLES:
        if fragment in name:
            return role
    return None


def _format_of(tensors: list[HeaderTensor], gguf: bool) -> str:
    names = {tensor.name.rsplit(".", 1)[-1] for tensor in tensors}
    if gguf:
        by_type: Counter[str] = Counter()
        for tensor in tensors:
            by_type[tensor.dtype] += tensor.bytes
        return f"gguf-{by_type.most_common(1)[0][0].lower()}" if by_type else "gguf"
    if any(tensor.name.endswith("_blocks") for tensor in tensors):
        return "mxfp4"
    if "weight_scale_inv" in names:
        return "fp8-block128"
    if "weight_packed" in names and "weight_global_scale" in names:  # compressed-tensors NVFP4 (uint8 codes)
        return "nvfp4"
    if "weight_packed" in names:
        return "compressed-tensors"
    if "qweight" in names:
        return "gptq" if "g_idx" in names else "awq"
    if "weight_scale_2" in names:  # ModelOpt NVFP4: uint8 weight, fp8 weight_scale per 16, fp32 weight_scale_2
        return "nvfp4"
    if any(tensor.dtype.startswith("F8") for tensor in tensors):
        return "fp8"
    by_dtype: Counter[str] = Counter()
    for tensor in tensors:
        by_dtype[tensor.dtype] += tensor.bytes
    return by_dtype.most_common(1)[0][0].lower() if by_dtype else "empty"


def _ranges(numbers: list[int]) -> str:
    """``0-3, 7, 9-31`` of sorted `numbers`."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(f"{first}-{last}" if last > first else f"{first}" for first, last in runs)


def _check_coverage(spec: ModelSpec, per_layer: Mapping[tuple[str, tuple[int, ...], str, int, int], int],
                    classified: bool, gguf: bool) -> None:
    """Refuse headers that leave part of the model out: every layer of `spec` must have a tensor, and (when every
    tensor's module is known, so none hides them) the embedding and an untied lm_head must be there.  A plan from
    some of the shards would count only their bytes and promise the engine memory the rest of the weights take."""
    layers = {key[4] for key in per_layer if key[4] >= 0}
    missing = [layer for layer in range(spec.num_layers) if layer not in layers]
    gaps = [f"layers {_ranges(missing)}"] if missing else []
    if classified:
        present = {key[2] for key in per_layer}
        needed = {entry.role for entry in inventory(spec)} & {"embedding", "lm_head"}
        gaps += [f"the {role}" for role in sorted(needed - present)]
    if gaps:
        kind = "GGUF" if gguf else "safetensors"
        raise InvalidSpec("checkpoint", "headers",
                          f"the {kind} headers hold no tensor of {' or '.join(gaps)} of {spec.name} "
                          f"({spec.num_layers} layers): send every file's header (or check that config.json is "
                          "this checkpoint's); a plan from part of the weights would promise memory the rest take")


def checkpoint_scheme(spec: ModelSpec, tensors: Iterable[HeaderTensor],
                      mtp_layers: int | None = None) -> tuple[WeightScheme, CheckpointSummary]:
    """The planner's rows for a checkpoint's header tensors, and what they hold.

    Layers past the model's are its multi-token-prediction layers, set apart; when the config says how many
    it has (`mtp_layers`, ``num_nextn_predict_layers``: 0 when absent), headers with layers past those are
    another model's and are refused, as are headers that leave part of the model out (`_check_coverage`)."""
    listed = list(tensors)
    gguf = any(tensor.name.startswith(("blk.", "token_embd.")) for tensor in listed)
    roles = {} if gguf else _module_roles(spec)
    per_layer: dict[tuple[str, tuple[int, ...], str, int, int], int] = defaultdict(int)
    unknown: list[str] = []
    mtp_tensors = mtp_bytes = 0
    beyond: set[int] = set()  # layers past the model's and its multi-token-prediction layers
    # a checkpoint's names repeat a few hundred patterns (DeepSeek-V3: 92,000 tensors): each pattern's role once
    pattern_roles: dict[str, str | None] = {}
    renamed = not gguf and spec.model_type in _RENAMED_PREFIXES
    numbers, layer_of, num_layers = _NUMBER.sub, _LAYER.search, spec.num_layers
    for tensor in listed:
        name = _inventory_name(spec, tensor.name) if renamed else tensor.name
        pattern = numbers(".{n}", name)  # _pattern
        if gguf:
            hf_role = None
        elif pattern in pattern_roles:
            hf_role = pattern_roles[pattern]
        else:
            hf_role = pattern_roles[pattern] = _pattern_role(pattern, roles)
        match = layer_of(name)
        layer = int(match.group(1)) if match else -1
        if layer >= 0 and hf_role == "vision":
            layer = -1  # a vision encoder's layer (Llama 4's vision_model.model.layers.N) is no decoder layer
        if (mtp_layers is not None and layer >= num_layers + mtp_layers
                and (name.startswith("blk.") if gguf else hf_role is not None)):
            beyond.add(layer)  # a module of this model (not a vision tower's layer, say) past its layers
        if layer >= num_layers or "nextn" in name or ".mtp." in name or name.startswith("mtp."):
            mtp_tensors += 1
            mtp_bytes += tensor.bytes
            continue
        role = _gguf_role(name) if gguf else hf_role
        if role is None:
            unknown.append(tensor.name)
            role = "other"
        per_layer[(pattern, tensor.shape, role, tensor.bytes, layer)] += 1
    if beyond:
        raise InvalidSpec("checkpoint", "headers",
                          f"the headers hold layers {_ranges(sorted(beyond))}, past the {spec.num_layers} layers of "
                          f"{spec.name} and its {mtp_layers} multi-token-prediction layers (num_nextn_predict_layers): "
                          "they are another model's; send this model's config.json with them")
    _check_coverage(spec, per_layer, not unknown, gguf)
    grouped: dict[tuple[str, tuple[int, ...], str, int, int], list[int]] = defaultdict(list)
    for (pattern, shape, role, size, layer), count in per_layer.items():
        grouped[(pattern, shape, role, size, count)].append(layer)
    rows = tuple(
        (TensorEntry(pattern, shape or (1,), role, tuple(sorted(layers)) if layers[0] >= 0 else (), count), size)
        for (pattern, shape, role, size, count), layers in sorted(grouped.items()))
    planned = sum(size * entry.count for entry, size in rows)
    summary = CheckpointSummary(_format_of(listed, gguf), len(listed) - mtp_tensors, planned, mtp_tensors,
                                mtp_bytes, tuple(sorted(unknown)))
    notes = []
    if mtp_tensors:
        notes.append(f"{mtp_tensors} multi-token-prediction tensors ({mtp_bytes} bytes) are in the checkpoint but "
                     "not planned: engines skip them at load unless speculative decoding uses them")
    if unknown:
        shown = ", ".join(summary.unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        notes.append(f"{len(unknown)} checkpoint tensors belong to no module of {spec.name} and are planned as "
                     f"'other', replicated on every device: {shown}")
    scheme = WeightScheme(origin="checkpoint headers", notes=tuple(notes), checkpoint_rows=rows, checkpoint=summary)
    return scheme, summary
