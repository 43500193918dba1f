"""GPTQ checkpoint export (the layout AutoGPTQ, GPTQModel, vLLM and TGI load).

Per quantized tensor ``<prefix>.weight`` of shape ``[out, in]`` with ``G``
groups, tensors named ``<prefix>.<part>``:

* ``qweight`` int32 ``[in / 8, out]``: the code of input row ``8k + j`` in
  bits ``4j..4j+3`` of ``qweight[k, o]`` (packed along the input dimension);
* ``qzeros`` int32 ``[G, out / 8]``: the zero of output ``8m + j`` in bits
  ``4j`` of ``qzeros[g, m]`` (packed along the output dimension);
* ``scales`` fp16 ``[G, out]`` (nibble's ``[out, G]`` transposed);
* ``g_idx`` int32 ``[in]``: the group of each input column.

The reference decoder (AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py``,
``QuantLinear.pack`` and the dequantization in ``forward``) computes
``scales[g_idx] × (w − (zeros + 1))``: checkpoint format v1 ("gptq") stores
``zero − 1``.  A zero of 0 would be stored as −1, which the reference packer
smears over the neighbouring nibbles, so nibble refuses it (`InvalidTensor`
naming the tensor and the first place) instead of clamping silently: ask for
``checkpoint_format="gptq_v2"``, which stores zeros as they are (GPTQModel's
v2), or quantize with zeros in [1, 15] (``quantize(..., min_zero=1)``, which
the API's ``output=gptq`` does: a group whose zero would be 0 gets zero 1 and
a scale that still spans it).  Symmetric tensors store 8 − 1 = 7
in v1, as AutoGPTQ does for ``sym=True``.

How this layout was checked: AutoGPTQ's own layers (``qlinear_cuda_old`` and,
for act-order, ``qlinear_cuda``, on their CPU path) decode nibble's exports in
tests/quant_core/tensorio/test_reference_libraries.py, and the result equals
nibble's `dequantize` bit for bit; tests/quant_core/tensorio/reference_decoders.py
transcribes the same unpacking in NumPy for the checks AutoGPTQ cannot make
(GPTQModel's v2 checkpoints, fewer than 32 rows).

Linear modules stored unquantized.  A GPTQ config has one scheme and, unless
told otherwise, every loader makes a GPTQ layer of every linear module in the
blocks, expecting a ``qweight`` the checkpoint does not hold.  When a linear
module passes through (a width the group size does not divide, an
``include``/``exclude`` glob), `skipped_modules_config` adds the two keys the
loaders read, and nothing when every linear module is quantized:

* ``dynamic``, ``{"-:<regex>": {}}`` per rule: a negative rule leaves the
  modules it matches unquantized.  GPTQModel (``gptqmodel/quantization/config.py``,
  ``dynamic_get`` / ``_resolve_dynamic_override``: PCRE ``match``, anchored at
  the start only, with a dict lookup for a ``^literal$`` pattern;
  ``create_quant_module`` in ``gptqmodel/utils/model.py`` makes no GPTQ layer
  of a module whose lookup is False) and vLLM
  (``vllm/model_executor/layers/quantization/utils/gptq_utils.py``,
  ``get_dynamic_override``: ``regex.match`` on the layer prefix, read by
  ``get_linear_quant_method`` for ``gptq`` and ``gptq_marlin``, and by
  ``gptq_marlin.py``'s ``get_moe_quant_method`` for a layer's experts, named
  by their list) read it; each rule here is anchored at both ends
  (``^...$``), so both match whole names.
* ``modules_in_block_to_quantize``, one list of the quantized modules:
  transformers (``GPTQConfig``) hands it to optimum, whose
  ``GPTQQuantizer.convert_model`` (``optimum/gptq/quantizer.py``) makes GPTQ
  layers only of the block's linear modules whose name ends with an entry; vLLM
  (``GPTQConfig`` / ``GPTQMarlinConfig.maybe_update_config`` flatten it, and
  ``is_layer_gptq_quantized`` quantizes a layer whose prefix contains an entry).
  transformers drops ``dynamic`` (not a ``GPTQConfig`` field), GPTQModel ignores
  this key (unknown keys are logged and skipped).

What no key can say: AutoGPTQ (archived) reads neither and makes GPTQ layers of
every module of its model's ``inside_layer_modules``.  vLLM makes one layer of
q/k/v (``qkv_proj``) and of gate/up (``gate_up_proj``) and refuses at load
("Detected some but not all shards ... are quantized") a checkpoint where only
some of one's parts are, as a job whose globs leave out ``k_proj`` alone writes
(a group size leaves out q/k/v or gate/up together: they read the same width);
it also makes one layer of each layer's experts, quantized or not as a whole
(a rule names the list when all its experts pass through), and its asymmetric
``gptq`` path hands experts to ``MoeWNA16Config`` without ``dynamic``.
nibble writes these checkpoints anyway, rather than refusing them: GPTQModel
and transformers load them, the job's report lists every module passed
through, with why, and its ``engine_notes`` name each fused layer stored in
part (quant_core/checkpoint/fused_groups.py).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidSpec, InvalidTensor
from quant_core.globs import compile_glob
from quant_core.quantize.types import QuantizedTensor
from quant_core.tensorio._export_common import (
    FLOAT_DTYPES,
    UNQUANTIZED_NAME_GLOBS,
    add_exported,
    code_matrix,
    group_index,
    has_act_order,
    integer_zeros,
    merge_passthrough,
    module_prefix,
    pack_nibbles_int32,
    require_multiple,
    single_scheme,
)
from quant_core.tensorio.safetensors_io import write_safetensors

CheckpointFormat = Literal["gptq", "gptq_v2"]
_NO_LOADER_QUANTIZES = tuple(compile_glob(pattern) for pattern in UNQUANTIZED_NAME_GLOBS)
#: what a rule's ``\d+`` may match (any Unicode decimal digits, as Python's and vLLM's ``regex`` do)
_DIGITS = re.compile(r"\d+")


def gptq_tensors(name: str, q: QuantizedTensor, checkpoint_format: CheckpointFormat = "gptq"
                 ) -> dict[str, NDArray[Any]]:
    """The four GPTQ tensors of one quantized tensor, keyed ``<prefix>.qweight`` etc."""
    out_features, in_features = q.shape
    require_multiple(in_features, 8, "in_features", name, "GPTQ")
    require_multiple(out_features, 8, "out_features", name, "GPTQ")
    if q.format.padded_columns(in_features) != in_features:
        raise InvalidSpec("format", q.format.label(), f"GPTQ has no padded groups (tensor {name!r})")
    zeros = integer_zeros(q, name, "GPTQ").astype(np.int16)
    if checkpoint_format == "gptq":
        if (zeros == 0).any():
            row, group = (int(i) for i in np.argwhere(zeros == 0)[0])
            raise InvalidTensor(
                f"tensor {name!r} has zero point 0 (first at row {row}, group {group}); GPTQ v1 stores "
                "zero − 1 and cannot hold it: export with checkpoint_format='gptq_v2' or quantize with "
                "min_zero=1 (zeros in [1, 15], what POST /v1/quantize output=gptq does)",
                field="checkpoint_format", name=name)
        zeros -= 1
    prefix = module_prefix(name)
    return {
        f"{prefix}.qweight": pack_nibbles_int32(code_matrix(q).T, axis=0),
        f"{prefix}.qzeros": pack_nibbles_int32(zeros.astype(np.uint8).T, axis=1),
        f"{prefix}.scales": np.ascontiguousarray(q.scales.T, dtype=np.float16),
        f"{prefix}.g_idx": group_index(q),
    }


def gptq_config(tensors: Mapping[str, QuantizedTensor], passthrough: Mapping[str, NDArray[Any]] | None = None,
                checkpoint_format: CheckpointFormat = "gptq") -> dict[str, Any]:
    """The ``quantize_config.json`` of a GPTQ export (the fields AutoGPTQ / transformers read), with the
    `skipped_modules_config` of the linear weights among `passthrough` (stored unquantized)."""
    group_size, symmetric = single_scheme(tensors, "GPTQ")
    passthrough = passthrough or {}
    skipped = [module_prefix(name) for name, array in passthrough.items()
               if needs_skip_rule(name, np.ndim(array), np.asarray(array).dtype in FLOAT_DTYPES)]
    return {**gptq_scheme_config(group_size, symmetric, any(has_act_order(q) for q in tensors.values()),
                                 checkpoint_format),
            **skipped_modules_config([module_prefix(name) for name in tensors], skipped,
                                     [module_of(name) for name in passthrough])}


def gptq_scheme_config(group_size: int | None, symmetric: bool, act_order: bool,
                       checkpoint_format: CheckpointFormat = "gptq") -> dict[str, Any]:
    """`gptq_config` from the scheme itself (a checkpoint written tensor by tensor holds no tensors at the end)."""
    return {
        "bits": 4,
        "group_size": -1 if group_size is None else group_size,
        "desc_act": act_order,
        "sym": symmetric,
        "true_sequential": True,
        "static_groups": False,
        "checkpoint_format": checkpoint_format,
        "quant_method": "gptq",
    }


def module_of(tensor_name: str) -> str:
    """The module a tensor belongs to: its name without the last component (``a.b.weight`` → ``a.b``)."""
    return tensor_name.rsplit(".", 1)[0]


def needs_skip_rule(tensor_name: str, ndim: int, floating: bool) -> bool:
    """True when tensor `tensor_name`, stored unquantized, is the 2-D float ``.weight`` of a linear module a
    GPTQ loader makes a GPTQ layer of unless the config says to skip it: every one but the names no loader
    quantizes (`UNQUANTIZED_NAME_GLOBS`: embeddings, the LM head, norms, routers)."""
    return (tensor_name.endswith(".weight") and ndim == 2 and floating
            and not any(glob.matches(tensor_name) for glob in _NO_LOADER_QUANTIZES))


#: the fused modules checkpoints of a family store whole that vLLM's model class splits into shards of other names
#: (its ``packed_modules_mapping``), by model family: GLM-4-0414's ``mlp.gate_up_proj`` (vllm/model_executor/models/
#: glm4.py: ``"gate_up_proj": ["gate_proj", "up_proj"]``).  vLLM decides such a layer's quantization from the shard
#: names (gptq_utils.is_layer_gptq_quantized; quant_utils.is_layer_skipped for AWQ-Marlin), which no module of the
#: checkpoint has: phi3.py's gate_up_proj, mapped to itself, needs nothing
VLLM_FUSED_SHARDS: dict[str, dict[str, tuple[str, ...]]] = {
    "glm4": {"gate_up_proj": ("gate_proj", "up_proj")},
}


def with_vllm_shards(modules: Iterable[str], fused_shards: Mapping[str, Sequence[str]]) -> list[str]:
    """`modules`, each followed by the names vLLM gives its shards when it is a fused module of `fused_shards`
    (``model.layers.0.mlp.gate_up_proj`` -> also ``model.layers.0.mlp.gate_proj`` and ``...mlp.up_proj``)."""
    out: list[str] = []
    for module in modules:
        out.append(module)
        head, _, last = module.rpartition(".")
        out.extend(f"{head}.{shard}" if head else shard for shard in fused_shards.get(last, ()))
    return out


def skipped_modules_config(quantized: Sequence[str], skipped: Sequence[str], unquantized: Iterable[str],
                           fused_shards: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The ``dynamic`` and ``modules_in_block_to_quantize`` keys that tell GPTQ loaders the linear modules
    `skipped` are stored unquantized (module docstring); ``{}`` when none is, so the config stays as it was.

    `quantized`: the modules stored as GPTQ; `unquantized`: every other module of the checkpoint (norms,
    embeddings, `skipped` ...), by full name.  ``dynamic``: `_negative_patterns` (a rule per skipped module,
    its layer and expert numbers written ``\\d+`` where no quantized module then matches);
    ``modules_in_block_to_quantize`` names each quantized module by the shortest tail after a layer or expert
    number that no unquantized module's name contains (``mlp.down_proj`` when every layer's is quantized; else
    longer, up to the full name), since optimum matches the end of a name and vLLM any part of it.

    `fused_shards` (`VLLM_FUSED_SHARDS` of the checkpoint's family): the list also names the shards vLLM checks for
    each fused module (kept apart from those of the modules passed through), and is written even when nothing is
    skipped: without it vLLM fills it with the quantized modules' full names (``maybe_update_config``), which no
    shard name contains, and would build those layers unquantized.
    """
    shards = fused_shards or {}
    fused = [module for module in quantized if module.rpartition(".")[2] in shards]
    if not skipped and not fused:
        return {}
    entries = _quantized_entries(with_vllm_shards(quantized, shards),
                                 with_vllm_shards([*skipped, *unquantized], shards))
    if not skipped:
        return {"modules_in_block_to_quantize": [entries]}
    return {"dynamic": {f"-:{pattern}": {} for pattern in _negative_patterns(quantized, skipped)},
            "modules_in_block_to_quantize": [entries]}


def _negative_patterns(quantized: Sequence[str], skipped: Sequence[str]) -> list[str]:
    """The regexes of `skipped_modules_config`'s negative rules, in the order of `skipped`, then one for each
    numbered list (``model.layers.0.mlp.experts``) none of whose modules is quantized: vLLM decides a layer's
    MoE experts at once, by the ``dynamic`` rule matching that list's name (``get_moe_quant_method`` in
    ``gptq_marlin.py``; ``FusedMoE`` layers are named so), and loads them unquantized when it is negative.

    A name's numbers are written ``\\d+`` in as many places as keep the rule from matching a quantized module
    or a module or list holding one (the exact name when none can): one rule for a module left out in every
    layer, one per layer for the experts of a layer left out.
    """
    holding = [name.split(".") for name in {".".join(parts[:end]) for parts in (name.split(".") for name in quantized)
                                            for end in range(1, len(parts) + 1)}]
    held_names = {".".join(parts) for parts in holding}
    lists = [".".join(parts[:index]) for parts in (name.split(".") for name in skipped)
             for index in range(1, len(parts)) if _is_number(parts[index])]
    held: dict[tuple[int, ...], set[tuple[str, ...]]] = {}  # per set of places written \d+: the shapes it matches
    patterns: dict[str, None] = {}
    for name in [*skipped, *(name for name in lists if name not in held_names)]:
        parts = name.split(".")
        for general in _generalizations([index for index, part in enumerate(parts) if _is_number(part)]):
            if general not in held:
                held[general] = {_shape(other, general) for other in holding
                                 if all(index < len(other) and _DIGITS.fullmatch(other[index]) for index in general)}
            if not general or _shape(parts, general) not in held[general]:
                patterns["^" + r"\.".join(r"\d+" if index in general else re.escape(part)
                                           for index, part in enumerate(parts)) + "$"] = None
                break
    return list(patterns)


def _generalizations(numbers: Sequence[int]) -> list[tuple[int, ...]]:
    """The sets of a name's number places a rule may write ``\\d+``, most first, the empty set last: every subset
    for up to 3 numbers, else those from the last number back (a bounded count for any name)."""
    if len(numbers) <= 3:
        return [subset for size in range(len(numbers), -1, -1) for subset in itertools.combinations(numbers, size)]
    return [tuple(numbers[kept:]) for kept in range(len(numbers) + 1)]


def _shape(parts: Sequence[str], general: Sequence[int]) -> tuple[str, ...]:
    """A name's components, those at `general` blanked: a rule with ``\\d+`` there matches every name of a shape."""
    return tuple("" if index in general else part for index, part in enumerate(parts))


def _is_number(part: str) -> bool:
    return part.isascii() and part.isdigit()


def _quantized_entries(quantized: Sequence[str], unquantized: Iterable[str]) -> list[str]:
    """`skipped_modules_config`'s ``modules_in_block_to_quantize``: one entry per quantized module, shortest
    first, deduplicated in order."""
    others = set(unquantized) - set(quantized)
    clear: dict[str, bool] = {}
    entries: dict[str, None] = {}
    for name in quantized:
        parts = name.split(".")
        tails = [".".join(parts[index + 1:]) for index in reversed(range(len(parts) - 1)) if _is_number(parts[index])]
        for entry in tails:
            if entry not in clear:
                clear[entry] = not any(entry in other for other in others)
            if clear[entry]:
                break
        else:
            entry = name  # the full name, even should an unquantized module's name hold it: no entry can say more
        entries[entry] = None
    return list(entries)


def export_gptq(
    tensors: Mapping[str, QuantizedTensor],
    passthrough: Mapping[str, NDArray[Any]] | None,
    path: str | os.PathLike[str],
    *,
    checkpoint_format: CheckpointFormat = "gptq",
    config_path: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write a GPTQ safetensors checkpoint at `path`; returns its ``quantize_config.json`` dict.

    The config (`gptq_config`: the scheme, and which of the `passthrough` linear
    weights loaders must leave unquantized) is also written to `config_path`
    when given; `metadata` joins
    the file's ``__metadata__`` (a loader reads only its own keys).  Raises
    `InvalidSpec` (mixed schemes, fp16 zeros, padded groups, unknown
    checkpoint format) or `InvalidTensor` (dimensions not multiples of 8, a
    zero of 0 in v1).
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise InvalidSpec("checkpoint_format", checkpoint_format, "must be 'gptq' (v1) or 'gptq_v2'")
    config = gptq_config(tensors, passthrough, checkpoint_format)
    stored: dict[str, NDArray[Any]] = {}
    for name, q in tensors.items():
        add_exported(stored, gptq_tensors(name, q, checkpoint_format), name)
    write_safetensors(path, merge_passthrough(stored, passthrough),
                      {**(metadata or {}), "format": "pt", "quant_method": "gptq"})
    if config_path is not None:
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
    return config
