"""Which layers vLLM fuses from a checkpoint's separate tensors, and which of them a job would store split.

vLLM builds one layer from several modules of a checkpoint: q/k/v as
``qkv_proj``, gate/up as ``gate_up_proj`` (and per family others, its model
class's ``packed_modules_mapping``), and a layer's routed experts as one
``FusedMoE``.  It asks the quantization config once per fused layer, and
refuses a checkpoint where the parts of one are stored differently:

* vllm/model_executor/layers/quantization/utils/quant_utils.py
  ``is_layer_skipped`` (AWQ, AWQ-Marlin; vLLM 0.19 lines 457-478): "Detected
  some but not all shards of {prefix} are quantized";
* .../utils/gptq_utils.py ``is_layer_gptq_quantized`` (GPTQ, GPTQ-Marlin;
  0.19 lines 97-120): the same message;
* .../compressed_tensors/utils.py ``should_ignore_layer`` (0.19 lines
  34-64): "Found a different quantization schemes for ... vLLM requires all to
  use the same scheme"; a fused layer whose parts are in different config
  groups, or in none, takes the first part's scheme or is refused by
  ``find_matched_target`` ("Unable to find matching target", 0.19 lines
  85-131: ``_match_fused_layer`` needs every part targeted);
* .../compressed_tensors/compressed_tensors_moe.py ``get_moe_method`` (0.19
  lines 121-147) reads one scheme for a layer's experts ("All MoE projections
  need to have same quantization scheme"), from expert 0, for all of them;
  gptq_marlin.py ``get_moe_quant_method`` and awq_marlin.py (0.19 lines
  282-290) decide a ``FusedMoE`` by its prefix (``model.layers.0.mlp.experts``)
  alone, so experts stored apart from the others' choice do not load;
* .../quantization/gguf.py ``is_layer_skipped_gguf`` (0.19 lines 121-150):
  vLLM's GGUF loader (model_loader/gguf_loader.py marks every F32/F16/BF16
  tensor unquantized) refuses a fused layer with parts in both.  llama.cpp
  does not care: it multiplies by ``attn_q``, ``attn_k`` and ``attn_v``
  separately, each in its own type (llama-quantize's own Q4_K_M stores
  ``attn_v`` in Q6_K beside a Q4_K ``attn_q``, and falls back to F16 for a
  tensor whose width no block fits: quant_core/gguf_mix.py).

`split_fused_groups` finds every such group a job's plan splits, and
`split_group_notes` says each one, its layers compacted, with the remedy;
nibble writes what was asked (it never widens the user's globs).  A budget
never splits one: `fused_layers` gives quant_core/checkpoint/budget.py the
groups whose quantized parts the allocation chooses as one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PASSED_THROUGH = "passed through"
QUANTIZED = "quantized"
#: a budget's 16-bit choice: to vLLM as unquantized as a tensor passed through
SIXTEEN_BIT = "kept 16-bit by the budget"

_QKV = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}
_GATE_UP = {"gate_up_proj": ("gate_proj", "up_proj")}
_LLAMA = {**_QKV, **_GATE_UP}
#: Qwen3.5's Gated-DeltaNet projections, stored apart and fused by vLLM (qwen3_5.py ``packed_modules_mapping``)
_GDN = {"in_proj_qkvz": ("in_proj_qkv", "in_proj_z"), "in_proj_ba": ("in_proj_b", "in_proj_a")}

#: vLLM's ``packed_modules_mapping`` of the class it loads each model_type with (vllm/model_executor/models/<file>.py
#: of 0.19; 0.11's and 0.33's group the same modules where the class exists: 0.11's qwen2_moe/qwen3_moe map
#: gate_up_proj whatever the config, and its gpt_oss names the q/k/v layer ``qkv``): the entries that fuse
#: modules of different names (phi3's ``qkv_proj: [qkv_proj]``, falcon's ``query_key_value``, qwen3_next's
#: ``in_proj_qkvz`` map a stored module to itself and cannot be split).  Conditional entries: `vllm_packed_modules`.
VLLM_PACKED_MODULES: dict[str, Mapping[str, tuple[str, ...]]] = {
    "llama": _LLAMA,  # llama.py LlamaForCausalLM
    "mistral": _LLAMA,  # mistral.py MistralForCausalLM(LlamaForCausalLM)
    "qwen2": _LLAMA, "qwen3": _LLAMA,  # qwen2.py, qwen3.py
    "gemma2": _LLAMA, "gemma3_text": _LLAMA, "gemma3": _LLAMA,  # gemma2.py, gemma3.py, gemma3_mm.py
    "glm4": _LLAMA, "glm4_moe": _LLAMA,  # glm4.py, glm4_moe.py
    "olmo2": _LLAMA, "olmo3": _LLAMA,  # olmo2.py (registry: Olmo3ForCausalLM is olmo2's Olmo2ForCausalLM)
    "seed_oss": _LLAMA,  # seed_oss.py
    "llama4": _LLAMA, "llama4_text": _LLAMA,  # mllama4.py, llama4.py
    "mistral3": _LLAMA,  # mistral3.py
    "qwen2_5_vl": _LLAMA, "qwen3_vl": _LLAMA,  # qwen2_5_vl.py, qwen3_vl.py (their "qkv" maps the tower's to itself)
    "qwen3_next": _LLAMA,  # qwen3_next.py
    "qwen3_5": {**_LLAMA, **_GDN}, "qwen3_5_moe": {**_LLAMA, **_GDN},  # qwen3_5.py
    "mixtral": _QKV, "phimoe": _QKV, "minimax_m2": _QKV, "gpt_oss": _QKV,  # mixtral.py ... gpt_oss.py
    "qwen3_vl_moe": _QKV,  # qwen3_vl_moe.py
    "qwen2_moe": _QKV, "qwen3_moe": _QKV,  # + gate_up_proj when the model has dense MLPs (vllm_packed_modules)
    "deepseek_v2": _GATE_UP, "deepseek_v3": _GATE_UP, "deepseek_v32": _GATE_UP,  # deepseek_v2.py
    "glm_moe_dsa": _GATE_UP,  # registry: GlmMoeDsaForCausalLM is deepseek_v2.py's
    "bert": {"qkv_proj": ("query", "key", "value")},  # bert.py BertModel (0.19 line 370; 0.11 335, 0.33 372)
    "phi3": {}, "falcon": {}, "gpt2": {},  # their checkpoints store q/k/v and gate/up fused already
    "smollm3": {},  # registry: SmolLM3ForCausalLM runs on the Transformers backend, which fuses nothing
}

#: a routed expert's own module (``model.layers.3.mlp.experts.7.w1``): vLLM's FusedMoE is the ``...experts`` list
_ROUTED_EXPERT = re.compile(r"^(?P<layer>.+\.experts)\.(?P<member>[0-9]{1,9}\.[^.]+)$")
_MOE = "experts"


def vllm_packed_modules(config: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
    """vLLM's ``packed_modules_mapping`` for the model `config` describes (fused name -> the stored modules it is
    made of), with the entries its classes add by config:

    * qwen2_moe.py adds ``gate_up_proj`` when ``mlp_only_layers`` or ``shared_expert_intermediate_size > 0``
      (a dense MLP or a shared expert exists); qwen3_moe.py when ``mlp_only_layers``;
    * deepseek_v2.py adds ``fused_qkv_a_proj: [q_a_proj, kv_a_proj_with_mqa]`` when ``q_lora_rank`` is not
      null, and ``qkv_proj`` when ``qk_nope_head_dim`` and ``qk_rope_head_dim`` are both 0 (plain MHA).

    A model_type not in `VLLM_PACKED_MODULES` gets the llama mapping: nibble reads an unknown llama-like config
    as llama, and vLLM's decoders fuse q/k/v and gate/up so.
    """
    config = config or {}
    model_type = config.get("model_type")
    mapping = dict(VLLM_PACKED_MODULES.get(model_type, _LLAMA) if isinstance(model_type, str) else _LLAMA)
    if model_type == "qwen2_moe" and (config.get("mlp_only_layers")
                                      or (config.get("shared_expert_intermediate_size") or 0) > 0):
        mapping.update(_GATE_UP)
    if model_type == "qwen3_moe" and config.get("mlp_only_layers"):
        mapping.update(_GATE_UP)
    if model_type in ("deepseek_v2", "deepseek_v3", "deepseek_v32", "glm_moe_dsa"):
        if config.get("q_lora_rank") is not None:
            mapping["fused_qkv_a_proj"] = ("q_a_proj", "kv_a_proj_with_mqa")
        if not config.get("qk_nope_head_dim") and not config.get("qk_rope_head_dim"):
            mapping.update(_QKV)
    return mapping


@dataclass(frozen=True, slots=True)
class SplitGroup:
    """One layer vLLM fuses whose parts the result stores differently.

    `module`: the parent the parts share (``model.layers.3.self_attn``; for experts the list,
    ``model.layers.3.mlp.experts``); `fused`: vLLM's name for the layer (``qkv_proj``, or ``experts`` for a
    FusedMoE); `parts`: each stored part (``k_proj``; ``7.w1`` for an expert's) with how it is stored
    (`PASSED_THROUGH`, `QUANTIZED`, or a format label when formats differ), in the checkpoint's order.
    """

    module: str
    fused: str
    parts: tuple[tuple[str, str], ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(kind for _, kind in self.parts))


UNQUANTIZED = (PASSED_THROUGH, SIXTEEN_BIT)


def split_fused_groups(config: Mapping[str, Any] | None, stored: Mapping[str, str]) -> list[SplitGroup]:
    """Every layer vLLM fuses (`vllm_packed_modules` of `config`, and each layer's routed experts) whose parts
    `stored` keeps in more than one way, in the checkpoint's order.

    `stored`: each tensor name (``...q_proj.weight``; tensors of other suffixes, biases say, are not looked at,
    vLLM decides by module) with how the result stores it: `PASSED_THROUGH`, `SIXTEEN_BIT` (the same to vLLM),
    `QUANTIZED` or a format label.
    A fused layer with some part absent from `stored` is judged on the parts present.
    """
    mapping = vllm_packed_modules(config)
    return [SplitGroup(module, fused, tuple(sorted(((part, stored[name]) for part, name in parts.items()),
                                                   key=lambda part: _order(mapping, fused, part[0]))))
            for (module, fused), parts in _fused_parts(mapping, stored).items()
            if len({PASSED_THROUGH if stored[name] in UNQUANTIZED else stored[name] for name in parts.values()}) > 1]


def _fused_parts(mapping: Mapping[str, tuple[str, ...]], names: Iterable[str]
                 ) -> dict[tuple[str, str], dict[str, str]]:
    """(parent module, fused name) -> {part: tensor name} of each fused layer with a ``.weight`` among `names`,
    in first-seen order (a layer's routed experts: fused name ``experts``, parts ``7.w1``)."""
    shard_of = {shard: fused for fused, shards in mapping.items() for shard in shards if shard != fused}
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for name in names:
        if not name.endswith(".weight"):
            continue
        module = name.removesuffix(".weight")
        expert = _ROUTED_EXPERT.match(module)
        if expert is not None:
            groups.setdefault((expert["layer"], _MOE), {})[expert["member"]] = name
            continue
        parent, _, last = module.rpartition(".")
        if last in shard_of:
            groups.setdefault((parent, shard_of[last]), {})[last] = name
    return groups


def fused_layers(config: Mapping[str, Any] | None, names: Iterable[str]) -> list[tuple[str, ...]]:
    """The tensor names of each layer vLLM fuses (`vllm_packed_modules` of `config`, and each layer's routed
    experts) that has two parts or more among `names`, in first-seen order: the groups a budget must store in one
    scheme (quant_core/quantize/allocation.py, "Fused groups")."""
    return [tuple(parts.values()) for parts in _fused_parts(vllm_packed_modules(config), names).values()
            if len(parts) > 1]


def _order(mapping: Mapping[str, tuple[str, ...]], fused: str, part: str) -> int:
    """A part's place in its group (a stable sort keeps the checkpoint's order within it): vLLM's shard order
    (q, k, v), or an expert's number."""
    if fused == _MOE:
        return int(part.partition(".")[0])
    return mapping[fused].index(part)


def split_between(config: Mapping[str, Any] | None, quantized: Iterable[str],
                  passed_through: Iterable[str]) -> list[SplitGroup]:
    """`split_fused_groups` of the tensors `quantized` and those `passed_through` (tensor names)."""
    stored = dict.fromkeys(quantized, QUANTIZED)
    stored.update(dict.fromkeys(passed_through, PASSED_THROUGH))
    return split_fused_groups(config, stored)


#: a dot-separated component of ASCII digits, at most 9 (longer is a name, not a layer: int() of a hostile name's
#: 5,000 digits raises past Python's 4,300-digit limit)
_NUMBER = re.compile(r"(?<![^.])[0-9]{1,9}(?![^.])")
#: most runs a compacted number set shows before it says how many there are in all
MAX_RUNS = 8
#: most split-group notes a report carries (the rest are counted in one more note)
MAX_NOTES = 12


def compact_numbers(numbers: Iterable[int]) -> str:
    """``{0..27}``, ``{0..3,5,9..11}``, or the one number, for a set of layer (or expert) numbers; past `MAX_RUNS`
    runs the first ones and ``… (N in all)``."""
    ordered = sorted(set(numbers))
    runs: list[tuple[int, int]] = []
    for number in ordered:
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    if len(runs) == 1 and runs[0][0] == runs[0][1]:
        return str(ordered[0])
    text = ",".join(f"{low}..{high}" if high > low else str(low) for low, high in runs[:MAX_RUNS])
    if len(runs) > MAX_RUNS:
        text += f",… ({len(ordered)} in all)"
    return "{" + text + "}"


def compact_names(names: Sequence[str]) -> list[str]:
    """`names` with those differing only in their last number merged (``model.layers.{0..27}.self_attn``), in
    first-seen order."""
    merged: dict[str, list[int]] = {}
    for name in names:
        found = list(_NUMBER.finditer(name))
        if not found:
            merged.setdefault(name, [])
            continue
        last = found[-1]
        key = name[:last.start()] + "\0" + name[last.end():]
        merged.setdefault(key, []).append(int(last.group()))
    return [key.replace("\0", compact_numbers(numbers)) if numbers else key for key, numbers in merged.items()]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


#: where each output's vLLM loader refuses a fused layer stored in part (vllm/model_executor/layers/quantization/)
_DENSE_RULES = {
    "compressed-tensors": "compressed_tensors/utils.py: \"Found a different quantization schemes\"",
    "gptq": "utils/gptq_utils.py: \"Detected some but not all shards ... are quantized\"",
    "awq": "utils/quant_utils.py: \"Detected some but not all shards ... are quantized\"",
    "gguf": "gguf.py: \"Detected some but not all shards ... are quantized\"",
}
_MOE_RULES = {
    "compressed-tensors": "compressed_tensors_moe.py reads expert 0's scheme for all",
    "gptq": "gptq_marlin.py decides the layer by its experts' list name",
    "awq": "awq_marlin.py decides the layer by its experts' list name",
    "gguf": "gguf.py gives every FusedMoE its GGUF method",
}


def split_group_notes(groups: Sequence[SplitGroup], output: str) -> list[str]:
    """One engine note per kind of split, its layers compacted (``model.layers.{0..27}.self_attn: k_proj passed
    through, q_proj and v_proj quantized``), saying what vLLM fuses and where it refuses it, and the remedy:
    exclude or include the whole group (a split a budget's per-tensor formats made: exclude it, or no budget).
    For a GGUF result the note says llama.cpp loads it and vLLM's GGUF loader does not.  At most `MAX_NOTES`
    notes, then one counting the rest."""
    by_kind: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
    for group in groups:
        parts = _compact_parts(group.parts) if group.fused == _MOE else group.parts
        by_kind.setdefault((group.fused, parts), []).append(group.module)
    engine = ("llama.cpp loads this GGUF (it multiplies by each tensor apart), but vLLM's GGUF loader"
              if output == "gguf" else "vLLM")
    notes: list[str] = []
    for (fused, parts), modules in by_kind.items():
        kinds = sorted(dict.fromkeys(kind for _, kind in parts), key=lambda kind: kind not in UNQUANTIZED)
        described = ", ".join(f"{_join([part for part, stored in parts if stored == kind])} {kind}"
                              for kind in kinds)
        members = (_join(list(dict.fromkeys(part for part, _ in parts))) if fused != _MOE
                   else "every expert's projections of the layer")
        # a split the globs (or widths) made is mended by the globs; one a budget's per-tensor choice made is not
        remedy = (f"exclude or include {members} together" if PASSED_THROUGH in kinds or QUANTIZED in kinds
                  else f"the budget chose their formats one by one: exclude {members} together, or quantize "
                       "without a budget")
        if fused == _MOE:
            consequence = (f"{engine} makes one FusedMoE layer of a layer's experts with one scheme "
                           f"({_MOE_RULES.get(output, '')}) and fails to load experts stored otherwise: {remedy}")
        else:
            consequence = (f"{engine} fuses {members} into one {fused} and refuses it stored in part "
                           f"({_DENSE_RULES.get(output, '')}): {remedy}")
        notes.extend(f"{module}: {described}. {consequence}" for module in compact_names(modules))
    if len(notes) > MAX_NOTES:
        notes = [*notes[:MAX_NOTES], f"and {len(notes) - MAX_NOTES} more fused layers stored in part"]
    return notes


def _compact_parts(parts: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A FusedMoE group's parts (``7.w1``) with the experts stored alike merged per projection (``{0..7}.w1``)."""
    by_kind: dict[str, list[str]] = {}
    for part, kind in parts:
        by_kind.setdefault(kind, []).append(part)
    projections: dict[tuple[str, str], list[str]] = {}
    for kind, members in by_kind.items():
        for member in members:
            _, _, projection = member.partition(".")
            projections.setdefault((projection, kind), []).append(member)
    return tuple((name, kind) for (projection, kind), members in projections.items()
                 for name in compact_names(members))
