"""How a whole checkpoint stores its weights: which tensors take which `WeightFormat`.

A `WeightScheme` is a quantized format for the tensors a checkpoint quantizes, a float
format for the rest, and the checkpoint's exceptions (``modules_to_not_convert``,
``ignore``), or a llama.cpp file type whose per-tensor mix `quant_core.gguf_mix` chooses.
`assign` splits the inventory into (row, format) pairs; the planner sums
``format.bytes_for(shape)`` over them, so formats stay the one place that knows sizes.

`scheme_from_quantization_config` reads a config.json's ``quantization_config`` the way the
loaders do (transformers' quantizers, vLLM's, compressed-tensors): the as-shipped scheme,
with a note for every field it does not understand and every assumption it makes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

import re2

from quant_core.errors import GroupSizeMismatch, InvalidSpec
from quant_core.formats import (
    FLOAT_FORMATS,
    WeightFormat,
    block_format,
    float_format,
    fp8,
    gptq_checkpoint,
    int4,
    int8_gptq,
)
from quant_core.gguf_mix import GGUF_FILE_TYPES, gguf_rows
from quant_core.globs import compile_glob
from quant_core.inventory import inventory
from quant_core.specs import QUANTIZED_ROLES, ROLES, ModelSpec, TensorEntry


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    """What a checkpoint's headers hold: its format, the tensors and bytes planned, the
    multi-token-prediction tensors set apart, and the tensors that belong to no module of the model."""

    format: str
    tensors: int
    bytes: int
    mtp_tensors: int
    mtp_bytes: int
    unknown: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WeightScheme:
    """A checkpoint's storage: `quantized` for the 2-D tensors of `quantized_roles` not matched by
    `keep`, `unquantized` (a float name) for everything else; or, with `gguf_file_type`, llama.cpp's
    mix.  `origin` says where it comes from (``quantization_config``, a request); `notes` are the
    assumptions and ignored fields the answer repeats.  `stored_bias`: the checkpoint holds an fp16
    ``bias`` [out] for every quantized linear, zeros where the model has none (AutoGPTQ's QuantLinear
    always registers one).  `checkpoint_rows` are a checkpoint's own tensors read from its headers
    (`quant_core.checkpoint_rows`), each row with the bytes of one of its tensors: they replace the
    inventory and every format, and `checkpoint` says what the headers held.  `mix` gives each row
    its own format (rows split by layer where layers differ, as `quant_core.fit` chooses them):
    it replaces `assign`'s choice, and the label is ``mixed``.  `kv_cache_quant` is the KV-cache quantization the
    config names for the checkpoint (ModelOpt's ``kv_cache_quant_algo``: ``fp8``, ``nvfp4``; "" for none), which an
    engine may take for its ``auto`` KV dtype (`EngineProfile.checkpoint_kv_cache_dtype`); it never changes the
    weights' bytes."""

    quantized: WeightFormat = field(default_factory=int4)
    unquantized: str = "bf16"
    quantized_roles: frozenset[str] = QUANTIZED_ROLES
    keep: tuple[str, ...] = ()
    gguf_file_type: str = ""
    origin: str = ""
    notes: tuple[str, ...] = ()
    stored_bias: bool = False
    checkpoint_rows: tuple[tuple[TensorEntry, int], ...] = ()
    checkpoint: CheckpointSummary | None = None
    mix: tuple[tuple[TensorEntry, WeightFormat], ...] = ()
    kv_cache_quant: str = ""

    def __post_init__(self) -> None:
        if self.unquantized not in FLOAT_FORMATS:
            raise InvalidSpec("unquantized", self.unquantized, f"must be one of {sorted(FLOAT_FORMATS)}")
        if self.gguf_file_type and self.gguf_file_type not in GGUF_FILE_TYPES:
            raise InvalidSpec("format", self.gguf_file_type, f"must be one of {list(GGUF_FILE_TYPES)}")

    def label(self) -> str:
        """``gguf-q4_k_m``, or the quantized format's label (``mxfp4``, ``int4-g128-asym``, ``bf16``)."""
        if self.checkpoint is not None:
            return f"checkpoint-{self.checkpoint.format}"
        if self.mix:
            return "mixed"
        return self.gguf_file_type or self.quantized.label()

    @property
    def quant_method(self) -> str:
        """The ``quant_method`` of the quantization_config this scheme was read from (`scheme_from_quantization_config`
        names it in `origin`), or "" (a request's format, a checkpoint's headers, a fit): an engine may load the same
        bytes by different code per method (vLLM 0.33 refines the fp8 block scales of routed experts under ``fp8``,
        not under ``compressed-tensors``: `engines.vllm_expert_layouts.fp8_refined_block`)."""
        prefix = f"{FIELD} (quant_method "
        return self.origin[len(prefix):-1] if self.origin.startswith(prefix) and self.origin.endswith(")") else ""

    @property
    def is_nibble_int4(self) -> bool:
        """nibble's own INT4 on the policy's tensors: the scheme the comparison calls ``int4``."""
        return not (self.gguf_file_type or self.checkpoint_rows or self.mix) and self.quantized.name == "int4" \
            and self.quantized.layout == "nibble"


def scheme_of(weight_format: WeightFormat, unquantized: str = "bf16",
              quantized_roles: frozenset[str] = QUANTIZED_ROLES) -> WeightScheme:
    """The scheme that stores the policy's tensors in `weight_format` (every tensor, for a float)."""
    return WeightScheme(weight_format, unquantized, quantized_roles)


def gguf_scheme(file_type: str) -> WeightScheme:
    """A llama.cpp file type (``gguf-q4_k_m``...) as a scheme."""
    return WeightScheme(gguf_file_type=file_type)


def module_name(tensor_name: str) -> str:
    """The module a tensor pattern belongs to, with layer and expert 0: ``model.layers.0.self_attn.q_proj``."""
    return _module_pattern(tensor_name).replace("{i}", "0").replace("{e}", "0")


def _module_pattern(tensor_name: str) -> str:
    """The module a tensor pattern belongs to, as a pattern: ``model.layers.{i}.self_attn.q_proj``."""
    name = tensor_name
    if name.endswith("]"):
        name = name[:name.rindex("[")]
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


#: most entries nibble reads from one list of a quantization_config (``ignore``, ``modules_to_not_convert``,
#: ``dynamic``): each is matched against the model's modules, and its regexes are compiled
MAX_KEEP_ENTRIES = 4096
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a pattern it refuses is the client's error, answered 422, not a server log line


def module_regex(pattern: str) -> Callable[[str], bool]:
    """Whether a name matches a config's module regex from its start, decided by RE2 in time linear in the name.

    The regex is the client's: Python's backtracking `re` spends minutes on a
    pattern like ``(?:.|.)*!`` against a 30-character module name, on the
    event loop.  RE2 has no look-around or back-references (`re2.error`; the
    config readers refuse such a pattern naming its field, `checked_regex`).
    """
    compiled = re2.compile(pattern, _RE2_OPTIONS)
    return lambda name: compiled.match(name) is not None


def checked_regex(field: str, pattern: str, regex: str) -> None:
    """Refuse `regex` (from the entry `pattern` of `field`) when RE2 cannot compile it (`module_regex`)."""
    try:
        module_regex(regex)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidSpec(field, pattern, f"is not a regular expression nibble matches ({reason}; nibble "
                                          "matches with RE2, in linear time: no look-around or back-references)"
                          ) from None


def matches(module: str, pattern: str) -> bool:
    """Whether a `modules_to_not_convert` / ``ignore`` entry names `module` (or a module holding it).

    ``re:...`` is a regular expression (compressed-tensors; `module_regex`); a pattern with ``*`` a glob
    over the dotted name (transformers' mxfp4 ``model.layers.*.self_attn``), it or a module it holds;
    otherwise a module name or a dotted part of one (``lm_head``, ``mlp.gate``), as transformers'
    quantizers compare them.
    """
    return keep_matcher((pattern,))(module)


@lru_cache(maxsize=8)  # a few schemes at once; each holds at most RE2's max_mem (8 MiB) of compiled regexes
def keep_matcher(keep: tuple[str, ...]) -> Callable[[str], bool]:
    """`matches` of any entry of `keep`, built once for a scheme's list, whose cost per module does not grow
    with the names in it: a config may list thousands (a set of dotted parts), its globs match in linear time
    (`quant_core.globs`, not `fnmatch`'s quadratic translation and cache), and its regexes are one RE2
    alternation."""
    names = frozenset(pattern for pattern in keep if not pattern.startswith("re:") and "*" not in pattern)
    globs = [compile_glob(glob) for pattern in keep if not pattern.startswith("re:") and "*" in pattern
             for glob in (pattern, f"{pattern}.*")]  # the module, or one inside it
    regexes = [pattern[3:] for pattern in keep if pattern.startswith("re:")]
    union = module_regex("|".join(f"(?:{regex})" for regex in regexes)) if regexes else None

    dotted_names = tuple(f".{name}." for name in names) if len(names) <= 32 else ()

    def matcher(module: str) -> bool:
        if dotted_names:  # a few names: each a run of whole dotted parts of the module
            dotted = f".{module}."
            if any(name in dotted for name in dotted_names):
                return True
        elif names:
            parts = module.split(".")
            if any(".".join(parts[start:end]) in names
                   for start in range(len(parts)) for end in range(start + 1, len(parts) + 1)):
                return True
        if any(glob.matches(module) for glob in globs):
            return True
        return union is not None and union(module)

    return matcher


def _same_in_every_layer(pattern: str) -> bool:
    """Whether a ``keep`` entry names the same modules in every layer and of every expert, so that trying it on
    layer 0's name decides for all.  An index is a run of digits in a module's name; an entry that can only
    cover a digit with a wildcard of any length, whatever the run's value and length, is blind to it: a
    module name or a glob with no digit, ``?`` or ``[``, or a regex `_blind_to_indices`.  Any other entry is
    tried on every layer's and expert's name (`_split_by_keep`)."""
    if pattern.startswith("re:"):
        return _blind_to_indices(pattern[3:])
    return not any(char.isdigit() or char in "?[" for char in pattern)


def _blind_to_indices(regex: str) -> bool:
    """Whether a regex can match a digit only with ``.*`` (or one ``.+``: a run of digits is never empty):
    no digit, class (``[``, ``\\d``, ``\\w``...), counted repetition or lone ``.``, which could tell one index
    from another or count its digits."""
    at_least_one = 0
    i = 0
    while i < len(regex):
        char = regex[i]
        if char == "\\":
            if i + 1 >= len(regex) or regex[i + 1].isalnum():
                return False
            i += 2
            continue
        if char.isdigit() or char in "[{":
            return False
        if char == ".":
            if regex[i + 1:i + 2] not in ("*", "+"):
                return False
            at_least_one += regex[i + 1] == "+"
            i += 1
        i += 1
    return at_least_one <= 1


#: the most matching one plan's keep list may cost for its globs and regexes naming layers or experts, in steps
#: of about 50 ns: each module name tried costs 40 steps for the RE2 call and the regexes' program size (RE2's
#: worst case per character) and 250 per glob.  DeepSeek-V3 with one such regex: 47,000 names x 70 steps.
#: Index-naming module names cost nothing here (`_name_binds`); entries blind to indices are tried once per row.
MAX_KEEP_STEPS = 5_000_000
_ANY = -1  # a binding that holds for every layer or expert


def _name_binds(template: list[str], name: list[str]) -> list[tuple[int, int]]:
    """The (layer, expert) pairs whose module the dotted module name `name` names (`_ANY` for every one): the
    name is a run of the module's dotted parts, with ``{i}`` and ``{e}`` standing for any index."""
    out = []
    for offset in range(len(template) - len(name) + 1):
        layer = expert = _ANY
        for part, wanted in zip(template[offset:], name, strict=False):
            if part in ("{i}", "{e}"):
                if not (wanted.isascii() and wanted.isdigit() and str(int(wanted)) == wanted):
                    break
                if part == "{i}":
                    layer = int(wanted)
                else:
                    expert = int(wanted)
            elif part != wanted:
                break
        else:
            out.append((layer, expert))
    return out


def _split_by_keep(entry: TensorEntry, names: tuple[list[str], ...],
                   patterns: Callable[[str], bool] | None) -> tuple[tuple[TensorEntry, bool], ...]:
    """`entry` as rows kept unquantized (True) or not, by entries that name some layers or experts: `names` as
    dotted parts (bound to indices, `_name_binds`) and `patterns` (globs and regexes) tried on each layer's and
    expert's module name.  A config that keeps ``model.layers.1.mlp.down_proj`` keeps that one tensor."""
    module = _module_pattern(entry.name)
    template = module.split(".")
    experts = entry.per_layer if "{e}" in template else 0  # a fused tensor of all experts is one module
    binds = [bind for name in names for bind in _name_binds(template, name)]
    by_count: dict[int, list[int]] = {}
    for layer in entry.layers or (_ANY,):
        layer_binds = {expert for bound_layer, expert in binds if bound_layer in (_ANY, layer)}
        whole = _ANY in layer_binds
        name = module.replace("{i}", str(layer))
        if experts:
            before, _, after = name.partition("{e}")
            hits = experts if whole else sum(
                expert in layer_binds or (patterns is not None and patterns(f"{before}{expert}{after}"))
                for expert in range(experts))
        else:
            hits = entry.per_layer if whole or (patterns is not None and patterns(name.replace("{e}", "0"))) else 0
        by_count.setdefault(hits, []).append(layer)
    if len(by_count) == 1 and set(by_count) <= {0, entry.per_layer}:
        return ((entry, entry.per_layer in by_count),)
    out: list[tuple[TensorEntry, bool]] = []
    for count, layers in sorted(by_count.items()):
        part_layers = tuple(layers) if entry.layers else ()
        quantized = entry.per_layer - count
        active = entry.active_per_layer
        quantized_active = None if active is None else min(active, quantized)
        if quantized:
            out.append((replace(entry, layers=part_layers, per_layer=quantized,
                                active_per_layer=quantized_active), False))
        if count:
            out.append((replace(entry, layers=part_layers, per_layer=count,
                                active_per_layer=None if active is None else active - (quantized_active or 0)), True))
    return tuple(out)


@lru_cache(maxsize=8)
def _steps_per_name(tried: tuple[str, ...]) -> int:
    """What trying `tried` on one module name costs, in `MAX_KEEP_STEPS`' steps."""
    regexes = [pattern[3:] for pattern in tried if pattern.startswith("re:")]
    globs = len(tried) - len(regexes)
    union = re2.compile("|".join(f"(?:{regex})" for regex in regexes), _RE2_OPTIONS) if regexes else None
    return 250 * globs + (40 + union.programsize if union is not None else 0)


def _kept_rows(scheme: WeightScheme, rows: tuple[TensorEntry, ...]) -> list[tuple[TensorEntry, bool]]:
    """Each row, split where the scheme's ``keep`` entries keep some of its layers or experts, with whether
    it stays unquantized.  Entries blind to indices are tried once per row (`_same_in_every_layer`)."""
    uniform = keep_matcher(tuple(pattern for pattern in scheme.keep if _same_in_every_layer(pattern)))
    indexed = [pattern for pattern in scheme.keep if not _same_in_every_layer(pattern)]
    names = tuple(pattern.split(".") for pattern in indexed if not pattern.startswith("re:") and "*" not in pattern
                  and "?" not in pattern and "[" not in pattern)
    tried = tuple(pattern for pattern in indexed if pattern.startswith("re:") or any(c in pattern for c in "*?["))
    candidates = [entry for entry in rows if entry.role in scheme.quantized_roles and len(entry.shape) >= 2
                  and not uniform(module_name(entry.name))]
    if tried:
        names_tried = sum(max(1, len(entry.layers)) * (entry.per_layer if "{e}" in entry.name else 1)
                          for entry in candidates)
        steps = names_tried * _steps_per_name(tried)
        if steps > MAX_KEEP_STEPS:
            raise InvalidSpec(FIELD, f"{len(tried)} globs or regexes naming layers or experts",
                              f"nibble tries them on every layer's and expert's module name: {names_tried:,} names "
                              f"of this model at {steps // names_tried:,} steps each, past the {MAX_KEEP_STEPS:,} "
                              "steps it spends on one plan (name the modules, or use fewer or simpler patterns)")
    patterns = keep_matcher(tried) if tried else None
    quantizable = set(candidates)
    out: list[tuple[TensorEntry, bool]] = []
    for entry in rows:
        if entry not in quantizable:
            out.append((entry, True))
        elif indexed:
            out.extend(_split_by_keep(entry, names, patterns))
        else:
            out.append((entry, False))
    return out


@lru_cache(maxsize=512)
def assign(spec: ModelSpec, scheme: WeightScheme) -> tuple[tuple[TensorEntry, WeightFormat], ...]:
    """Every inventory row with the format it is stored in (GGUF mixes, and keep lists that name some layers
    or experts, split rows by layer)."""
    if scheme.mix:
        return scheme.mix
    rows = inventory(spec)
    if scheme.gguf_file_type:
        return gguf_rows(scheme.gguf_file_type, spec, rows)
    if not scheme.quantized.is_quantized:
        return tuple((entry, scheme.quantized) for entry in rows)
    rest = float_format(scheme.unquantized)
    out = [(entry, rest if kept else scheme.quantized) for entry, kept in _kept_rows(scheme, rows)]
    if scheme.stored_bias:
        names = {entry.name for entry in rows}
        out.extend([(TensorEntry(entry.name[: -len(".weight")] + ".bias", entry.shape[:1], "bias", entry.layers,
                                 entry.per_layer, entry.active_per_layer), float_format("fp16"))
                    for entry, chosen in out
                    if chosen is scheme.quantized and entry.name.endswith(".weight")
                    and entry.name[: -len(".weight")] + ".bias" not in names])
    return tuple(out)


@lru_cache(maxsize=512)
def assigned_bytes(spec: ModelSpec, scheme: WeightScheme) -> tuple[tuple[TensorEntry, int], ...]:
    """Each assigned row with the bytes of ONE of its tensors; a group-size mismatch names the tensor."""
    if scheme.checkpoint_rows:
        return scheme.checkpoint_rows
    out = []
    for entry, weight_format in assign(spec, scheme):
        try:
            out.append((entry, weight_format.bytes_for(entry.shape)))
        except GroupSizeMismatch as error:
            raise GroupSizeMismatch(error.in_features, error.group_size, "weights.group_size", entry.name) from None
    return tuple(out)


def scheme_bytes_by_role(spec: ModelSpec, scheme: WeightScheme) -> dict[str, int]:
    """Bytes of the model's weights under `scheme`, by role (every role of `ROLES`)."""
    out = dict.fromkeys(ROLES, 0)
    for entry, one in assigned_bytes(spec, scheme):
        out[entry.role] += one * entry.count
    return out


def scheme_bytes(spec: ModelSpec, scheme: WeightScheme) -> int:
    """Total bytes of the model's weights under `scheme`."""
    return sum(scheme_bytes_by_role(spec, scheme).values())


@lru_cache(maxsize=512)
def with_partial_groups(spec: ModelSpec, scheme: WeightScheme) -> tuple[WeightScheme, str | None]:
    """`scheme`, or when a group size does not divide some quantized tensor's width, the same scheme with a
    partial last group (as GPTQ and AWQ store such rows) and a note that says so."""
    try:
        assigned_bytes(spec, scheme)
    except GroupSizeMismatch as error:
        fmt = scheme.quantized
        size = fmt.group_size or 0
        widths = sorted({entry.shape[-1] for entry, chosen in assign(spec, scheme)
                         if chosen == fmt and size and entry.shape[-1] % size})
        dividing = [g for g in (32, 64, 128, 256)
                    if all(entry.shape[-1] % g == 0 for entry, chosen in assign(spec, scheme) if chosen == fmt)]
        note = (f"group_size {size} does not divide the width of some quantized tensors (in_features "
                f"{', '.join(map(str, widths))}, first {error.tensor}): planned with a partial last group per row, "
                f"as GPTQ and AWQ store such rows (ceil(in_features / {size}) scales and zeros, no padded codes); "
                f"group sizes that divide every quantized tensor: {', '.join(map(str, dividing)) or 'none'}; "
                "pad: true pads each row to whole groups instead")
        return replace(scheme, quantized=replace(fmt, partial=True)), note
    return scheme, None


# --- quantization_config ------------------------------------------------------------------------

_COMMON_FIELDS = frozenset({"quant_method", "modules_to_not_convert"})
_KNOWN_FIELDS: dict[str, frozenset[str]] = {
    "fp8": frozenset({"fmt", "activation_scheme", "weight_block_size", "ignored_layers"}),
    "mxfp4": frozenset({"dequantize"}),
    "gptq": frozenset({"bits", "group_size", "desc_act", "sym", "true_sequential", "damp_percent", "static_groups",
                       "model_name_or_path", "model_file_base_name", "checkpoint_format", "lm_head", "pack_dtype",
                       "meta", "tokenizer", "dataset", "use_exllama", "exllama_config", "cache_block_outputs",
                       "use_cuda_fp16", "max_input_length", "batch_size", "module_name_preceding_first_block",
                       "block_name_to_quantize", "modules_in_block_to_quantize", "backend", "format",
                       "damp_auto_increment", "v2", "mse", "act_group_aware", "hyb_act", "is_marlin_format",
                       "dynamic"}),
    "awq": frozenset({"bits", "group_size", "zero_point", "version", "backend", "do_fuse", "fuse_max_seq_len",
                      "modules_to_fuse", "exllama_config"}),
    "compressed-tensors": frozenset({"config_groups", "format", "ignore", "quantization_status", "kv_cache_scheme",
                                     "global_compression_ratio", "sparsity_config", "version", "transform_config"}),
    # ModelOpt 0.31+ writes config.json's quantization_config in compressed-tensors' shape (Model-Optimizer's
    # modelopt/torch/export/convert_hf_config.py, convert_hf_quant_config_format); ModelOpt 0.29 and before only a
    # separate hf_quant_config.json, {"producer": ..., "quantization": {...}}, which vLLM takes as the
    # quantization_config (`MODELOPT_NESTED_FIELDS`)
    "modelopt": frozenset({"quant_algo", "kv_cache_quant_algo", "kv_cache_scheme", "group_size", "exclude_modules",
                           "ignore", "producer", "quantization", "config_groups", "quant_library"}),
    "bitsandbytes": frozenset({"load_in_4bit", "load_in_8bit", "_load_in_4bit", "_load_in_8bit",
                               "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
                               "bnb_4bit_quant_storage", "llm_int8_skip_modules", "llm_int8_threshold",
                               "llm_int8_has_fp16_weight", "llm_int8_enable_fp32_cpu_offload"}),
}
QUANT_METHODS: tuple[str, ...] = tuple(_KNOWN_FIELDS)
FIELD = "quantization_config"


def _int_field(config: Mapping[str, object], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{FIELD}.{key}", value, "must be an integer")
    return value


def _names(config: Mapping[str, object], key: str, where: str = FIELD) -> tuple[str, ...]:
    value = config.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidSpec(f"{where}.{key}", value, "must be a list of module names")
    if len(value) > MAX_KEEP_ENTRIES:
        raise InvalidSpec(f"{where}.{key}", f"{len(value)} entries", f"nibble reads at most {MAX_KEEP_ENTRIES} "
                                                                        "(a published config lists a few hundred)")
    for item in value:
        if item.startswith("re:"):
            checked_regex(f"{where}.{key}", item, item[3:])
    return _matchable(f"{where}.{key}", tuple(value))


def _matchable(field: str, keep: tuple[str, ...]) -> tuple[str, ...]:
    """`keep`, once its matcher is built: RE2 refuses an alternation of regexes past its memory bound."""
    try:
        keep_matcher(keep)
    except re2.error:
        raise InvalidSpec(field, f"{len(keep)} entries", "its regular expressions together are too large for "
                                                         "nibble's matcher (RE2)") from None
    return keep


def _group(config: Mapping[str, object], key: str = "group_size") -> int | None:
    size = _int_field(config, key, 128)
    if size == -1 or size == 0:
        return None
    if size not in (32, 64, 128, 256):
        raise InvalidSpec(f"{FIELD}.{key}", size, "nibble plans group sizes 32, 64, 128, 256 or -1 (a whole row)")
    return size


def scheme_from_quantization_config(config: Mapping[str, object], unquantized: str = "bf16") -> WeightScheme:
    """The as-shipped scheme a config.json's ``quantization_config`` describes.

    Every field is either read or named in a note (never silently dropped); an unknown
    ``quant_method`` raises `InvalidSpec` naming it and the methods nibble reads.
    """
    method = config.get("quant_method")
    if method is None and is_modelopt_export(config):
        method = "modelopt"  # hf_quant_config.json names no quant_method: vLLM sets it from the producer
    if not isinstance(method, str) or method not in _KNOWN_FIELDS:  # a list or object is unhashable
        raise InvalidSpec(f"{FIELD}.quant_method", method, f"nibble reads {', '.join(QUANT_METHODS)}")
    notes = [f"{FIELD}.{key} is not understood by nibble and was ignored"
             for key in sorted(config) if key not in _COMMON_FIELDS | _KNOWN_FIELDS[str(method)]]
    keep = _names(config, "modules_to_not_convert")
    reader = {"fp8": _fp8, "mxfp4": _mxfp4, "gptq": _gptq, "awq": _awq, "compressed-tensors": _compressed_tensors,
              "bitsandbytes": _bitsandbytes, "modelopt": _modelopt}[str(method)]
    weight_format, extra_keep, more_notes = reader(config)
    kv_cache_quant = _modelopt_kv_cache(config, more_notes) if method == "modelopt" else ""
    auto_gptq = method == "gptq" and not _made_by_gptqmodel(config)
    if auto_gptq:
        more_notes.append("no meta.quantizer naming GPTQModel: planned as AutoGPTQ writes it, with an fp16 bias "
                          "[out] for every quantized linear")
    return WeightScheme(weight_format, unquantized, QUANTIZED_ROLES, keep + extra_keep,
                        origin=f"{FIELD} (quant_method {method})", notes=tuple(notes + more_notes),
                        stored_bias=auto_gptq, kv_cache_quant=kv_cache_quant)


def _made_by_gptqmodel(config: Mapping[str, object]) -> bool:
    """GPTQModel names itself in ``meta.quantizer``; AutoGPTQ writes no ``meta``."""
    meta = config.get("meta")
    quantizer = meta.get("quantizer") if isinstance(meta, dict) else None
    names = quantizer if isinstance(quantizer, list) else [quantizer]
    return any(isinstance(name, str) and name.startswith("gptqmodel") for name in names)


def shipped_scheme_of(config: Mapping[str, object], unquantized: str = "bf16", mtp_layers: int = 0) -> WeightScheme:
    """`scheme_from_quantization_config`, or when nibble cannot read the config, nibble's INT4 with a note
    naming the field and why (``origin`` empty: not a shipped scheme), so a default plan still answers.
    `mtp_layers` (``num_nextn_predict_layers``) adds a note that the checkpoint's multi-token-prediction
    layers, which engines skip at load, are not counted.  A ``quant_method`` that is not a string (a list, an
    object, a number) raises `InvalidSpec` naming it: no real config has one, so it is a broken request, not a
    checkpoint nibble cannot read; so is a ModelOpt config whose fields have the wrong types (`check_modelopt_types`),
    while one of an algorithm nibble does not plan is planned at INT4 with the note."""
    method = config.get("quant_method")
    if method is not None and not isinstance(method, str):
        raise InvalidSpec(f"{FIELD}.quant_method", method,
                          f"quant_method is a string naming the method ({', '.join(QUANT_METHODS)}, ...)")
    if method == "modelopt" or (method is None and is_modelopt_export(config)):
        check_modelopt_types(config)
    try:
        scheme = scheme_from_quantization_config(config, unquantized)
    except InvalidSpec as exc:
        return WeightScheme(unquantized=unquantized, notes=(
            f"{exc.detail} ({exc.field}): the checkpoint cannot be planned as shipped; planned at nibble's INT4 "
            "instead",))
    if mtp_layers > 0:
        scheme = replace(scheme, notes=(*scheme.notes, (
            f"the checkpoint also holds {mtp_layers} multi-token-prediction layer(s) (num_nextn_predict_layers) that "
            "engines skip at load unless speculative decoding uses them: not counted")))
    return scheme


_Read = tuple[WeightFormat, tuple[str, ...], list[str]]


def _fp8(config: Mapping[str, object]) -> _Read:
    notes = []
    # DeepSeek-V3 writes "e4m3", MiniMax-M2 the torch dtype's name, "float8_e4m3fn"; vLLM's Fp8Config reads neither
    if config.get("fmt", "e4m3") not in ("e4m3", "float8_e4m3fn"):
        raise InvalidSpec(f"{FIELD}.fmt", config.get("fmt"), "nibble plans fp8 e4m3 weights")
    block = config.get("weight_block_size")
    static = config.get("activation_scheme", "dynamic") == "static"
    if block is None:
        notes.append("fp8 without weight_block_size: planned with one fp32 scale per tensor (AutoFP8's layout)")
        return fp8("tensor", static), _names(config, "ignored_layers"), notes
    if block != [128, 128]:
        raise InvalidSpec(f"{FIELD}.weight_block_size", block, "nibble plans fp8 blocks of [128, 128]")
    return fp8("block", static), _names(config, "ignored_layers"), notes


def _mxfp4(config: Mapping[str, object]) -> _Read:
    return block_format("mxfp4"), (), []


def _gptq(config: Mapping[str, object]) -> _Read:
    bits = _int_field(config, "bits", 4)
    group = _group(config)
    notes = ["GPTQ stores qzeros and g_idx whatever sym and desc_act say: counted"]
    symmetric = config.get("sym", True)
    if not isinstance(symmetric, bool):
        raise InvalidSpec(f"{FIELD}.sym", symmetric, "must be true or false")
    desc_act = config.get("desc_act", False)
    if desc_act is not None and not isinstance(desc_act, bool):
        raise InvalidSpec(f"{FIELD}.desc_act", desc_act, "must be true or false")
    # a whole row is one group: act order changes nothing, and vLLM's GPTQ configs set it false (gptq_marlin.py
    # GPTQMarlinConfig.__init__ in 0.11 and 0.19, gptq_utils.py normalize_and_validate_gptq_desc_act in 0.33)
    act_order = bool(desc_act) and group is not None
    if "sym" not in config:
        notes.append("no sym: planned as symmetric, AutoGPTQ's and GPTQModel's default")
    if config.get("checkpoint_format", "gptq") not in ("gptq", "gptq_v2"):
        notes.append(f"gptq checkpoint_format {config.get('checkpoint_format')!r} planned as the gptq layout")
    keep = (*(() if config.get("lm_head") else ("lm_head",)), *_gptq_skipped(config, notes))
    if bits == 4:
        return gptq_checkpoint(group, symmetric, act_order), keep, notes
    if bits == 8:
        return int8_gptq(group, symmetric=symmetric, act_order=act_order), keep, notes
    raise InvalidSpec(f"{FIELD}.bits", bits, "nibble plans GPTQ at 4 or 8 bits")


def _gptq_skipped(config: Mapping[str, object], notes: list[str]) -> tuple[str, ...]:
    """The ``keep`` entries (``re:`` patterns) of GPTQModel's ``dynamic`` negative rules, ``"-:<regex>"``: the
    modules a name of which the regex matches from its start stay unquantized (GPTQModel's ``dynamic_get``,
    vLLM's ``get_dynamic_override``; nibble's own GPTQ checkpoints write them, quant_core/tensorio/gptq.py).
    A rule is tried on every layer's and expert's module name (`assign`).  A positive rule (per-module
    bits or group size) is named in a note: those modules are planned at the config's scheme."""
    dynamic = config.get("dynamic")
    if dynamic is None:
        return ()
    if not isinstance(dynamic, dict) or not all(isinstance(rule, dict) for rule in dynamic.values()):
        raise InvalidSpec(f"{FIELD}.dynamic", dynamic, "must map module regexes to override objects")
    if len(dynamic) > MAX_KEEP_ENTRIES:
        raise InvalidSpec(f"{FIELD}.dynamic", f"{len(dynamic)} rules", f"nibble reads at most {MAX_KEEP_ENTRIES}")
    skipped = []
    for pattern in dynamic:
        regex = pattern.removeprefix("-:").removeprefix("+:")
        checked_regex(f"{FIELD}.dynamic", pattern, regex)
        if pattern.startswith("-:"):
            skipped.append(f"re:{regex}")
        else:
            notes.append(f"{FIELD}.dynamic rule {pattern!r} overrides the scheme of the modules it matches: "
                         "planned at the config's scheme")
    return _matchable(f"{FIELD}.dynamic", tuple(skipped))


def _awq(config: Mapping[str, object]) -> _Read:
    bits = _int_field(config, "bits", 4)
    if bits != 4:
        raise InvalidSpec(f"{FIELD}.bits", bits, "AWQ checkpoints are 4-bit")
    notes = []
    if str(config.get("version", "gemm")).lower() != "gemm":
        notes.append(f"awq version {config.get('version')!r} planned with the GEMM layout's bytes")
    return int4(_group(config, "group_size"), layout="awq"), (), notes


def _compressed_tensors(config: Mapping[str, object]) -> _Read:
    groups = config.get("config_groups")
    where = f"{FIELD}.config_groups"
    if not isinstance(groups, dict) or not groups:
        raise InvalidSpec(where, groups, "must be an object of quantization groups")
    name, group = sorted(groups.items())[0]
    notes = [] if len(groups) == 1 else [f"{where}: only group {name!r} is planned, for every targeted Linear"]
    weights = group.get("weights") if isinstance(group, dict) else None
    if not isinstance(weights, dict):
        raise InvalidSpec(f"{where}.{name}.weights", weights, "must be an object")
    bits, kind = weights.get("num_bits"), weights.get("type", "int")
    strategy = weights.get("strategy", "tensor")
    keep = _names(config, "ignore")
    activations = group.get("input_activations") if isinstance(group, dict) else None
    static = isinstance(activations, dict) and activations.get("dynamic") is False  # a stored input scale
    if kind == "float" and bits == 8:
        scales = {"tensor": "tensor", "channel": "channel", "block": "block"}.get(str(strategy))
        if scales is None:
            raise InvalidSpec(f"{where}.{name}.weights.strategy", strategy, "fp8 strategy tensor, channel or block")
        return fp8(scales, static), keep, notes  # type: ignore[arg-type]
    if kind == "float" and bits == 4:
        return replace(block_format("nvfp4"), input_scale=static), keep, notes
    if kind == "int" and bits == 4:
        size = weights.get("group_size") if strategy == "group" else -1
        group = _group({"group_size": size if size is not None else -1})
        return int4(group, bool(weights.get("symmetric", True)), layout="compressed-tensors"), keep, notes
    if kind == "int" and bits == 8:
        notes.append("compressed-tensors int8 planned with one 16-bit scale per output channel")
        return WeightFormat("int8", None, True, "none"), keep, notes
    raise InvalidSpec(f"{where}.{name}.weights", {"num_bits": bits, "type": kind},
                      "nibble plans int4, int8, fp8 and nvfp4 (float 4-bit) weights")


def _bitsandbytes(config: Mapping[str, object]) -> _Read:
    keep = _names(config, "llm_int8_skip_modules") or ("lm_head",)
    if config.get("load_in_4bit") or config.get("_load_in_4bit"):
        notes = []
        if config.get("bnb_4bit_quant_type", "nf4") != "nf4":
            notes.append("bitsandbytes fp4 has the bytes of nf4 (blocks of 64, the same scales): planned as nf4")
        return block_format("nf4", bool(config.get("bnb_4bit_use_double_quant", False))), keep, notes
    if config.get("load_in_8bit") or config.get("_load_in_8bit"):
        return WeightFormat("int8", None, True, "none"), keep, [
            "bitsandbytes 8-bit planned as int8 with a 16-bit scale per row (LLM.int8 keeps an fp32 SCB per row: "
            "2 bytes more per row)"]
    raise InvalidSpec(f"{FIELD}.load_in_4bit", None, "a bitsandbytes config loads in 4 or 8 bits")


# --- ModelOpt ------------------------------------------------------------------------------------

#: the fields of hf_quant_config.json's ``quantization`` object nibble reads (ModelOpt 0.29 and before; vLLM's
#: ``ModelOptQuantConfigBase.from_config`` reads the same four, quantization/modelopt.py in 0.19 and 0.33)
MODELOPT_NESTED_FIELDS = frozenset({"quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules"})
#: the ModelOpt algorithms nibble plans, with what each stores per quantized linear (vLLM's create_weights of
#: ModelOptFp8LinearMethod and ModelOptNvFp4LinearMethod, quantization/modelopt.py in 0.11, 0.19 and 0.33): FP8 an
#: e4m3 ``weight``, an fp32 ``weight_scale`` and an fp32 ``input_scale``; NVFP4 a uint8 ``weight`` [out, in/2] of
#: e2m1 pairs, an fp8 e4m3 ``weight_scale`` [out, in/16], and fp32 ``weight_scale_2`` and ``input_scale``.  The
#: algorithms every release read loads (0.11's QUANT_ALGOS is ["FP8", "NVFP4"])
MODELOPT_ALGOS: tuple[str, ...] = ("FP8", "NVFP4")
#: NVFP4's block: 16 weights share one fp8 scale (vLLM's ModelOptNvFp4Config default group_size, the only one
#: nibble's nvfp4 format stores)
MODELOPT_NVFP4_GROUP = 16


def is_modelopt_export(config: Mapping[str, object]) -> bool:
    """Whether a quantization_config without ``quant_method`` is ModelOpt's hf_quant_config.json: vLLM names it
    ``modelopt`` when its ``producer.name`` is ``modelopt`` and ``quantization.quant_algo`` is not null (0.19's and
    0.33's ``_normalize_quantization_config``, transformers_utils/model_arch_config_convertor.py; 0.11's
    ``ModelConfig._parse_quant_hf_config``, config/model.py).  A null quant_algo (an export that quantizes only the KV
    cache) gets no quant_method there, and none here."""
    producer, inner = config.get("producer"), config.get("quantization")
    return (isinstance(producer, dict) and producer.get("name") == "modelopt"
            and not (isinstance(inner, dict) and inner.get("quant_algo") is None))


def _modelopt_inner(config: Mapping[str, object]) -> tuple[Mapping[str, object], str]:
    """The object holding a ModelOpt config's fields, and its field name: hf_quant_config.json's ``quantization``
    (ModelOpt 0.29 and before), else the quantization_config itself (config.json, ModelOpt 0.31+), as vLLM's
    ``from_config`` looks for them (``if "quantization" in config``)."""
    if "quantization" not in config:
        return config, FIELD
    inner = config["quantization"]
    if not isinstance(inner, dict):
        raise InvalidSpec(f"{FIELD}.quantization", inner,
                          "must be an object (ModelOpt's hf_quant_config.json: quant_algo, kv_cache_quant_algo, "
                          "group_size, exclude_modules)")
    return inner, f"{FIELD}.quantization"


def check_modelopt_types(config: Mapping[str, object]) -> None:
    """Raise `InvalidSpec` naming the first field of a ModelOpt quantization_config whose type no ModelOpt export
    writes (vLLM's ``from_config`` raises on most of them: "exclude_modules must be a list", "kv_cache_quant_algo
    must be a string", "group_size must be an integer"): ``quantization`` an object; ``quant_algo`` a string;
    ``exclude_modules`` and ``ignore`` lists of module names; ``kv_cache_quant_algo`` a string or null,
    ``kv_cache_scheme`` an object, a string or null; ``group_size`` an integer or null."""
    inner, where = _modelopt_inner(config)
    sources = ((where, inner),) if inner is config else ((where, inner), (FIELD, config))
    if not isinstance(inner.get("quant_algo"), str):
        raise InvalidSpec(f"{where}.quant_algo", inner.get("quant_algo"),
                          "must be a string naming ModelOpt's algorithm (FP8, NVFP4, ...)")
    for source_where, source in sources:
        for key in ("exclude_modules", "ignore"):
            _names(source, key, source_where)
        kinds = {"kv_cache_quant_algo": (str,), "kv_cache_scheme": (str, dict)}
        for key, allowed in kinds.items():
            value = source.get(key)
            if value is not None and not isinstance(value, allowed):
                scheme = ", an object (compressed-tensors' scheme)" if dict in allowed else ""
                raise InvalidSpec(f"{source_where}.{key}", value,
                                  f"must be a string naming ModelOpt's KV-cache algorithm (FP8){scheme} or null")
        size = source.get("group_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise InvalidSpec(f"{source_where}.group_size", size, "must be an integer or null")


def _modelopt(config: Mapping[str, object]) -> _Read:
    """ModelOpt's FP8 (per-tensor scales, static input scale) and NVFP4 checkpoints, as vLLM's ModelOptFp8Config
    and ModelOptNvFp4Config read them (quantization/modelopt.py ``from_config``: ``quant_algo``, upper-cased from
    0.19; the exclusions under ``exclude_modules`` in hf_quant_config.json, ``ignore`` in config.json from 0.19,
    ``exclude_modules`` there in 0.11, either in 0.33).  An exclusion names a module, a dotted part of one or a
    ModelOpt wildcard (``model.layers.0.self_attn*``), matched as vLLM's ``is_layer_excluded`` does with fnmatch
    (`matches`; vLLM also takes an entry found anywhere in a module's name).  Every other algorithm raises
    `InvalidSpec` naming it."""
    inner, where = _modelopt_inner(config)
    notes = [f"{where}.{key} is not understood by nibble and was ignored"
             for key in sorted(inner) if where != FIELD and key not in MODELOPT_NESTED_FIELDS]
    algo = inner.get("quant_algo")
    if not isinstance(algo, str):
        raise InvalidSpec(f"{where}.quant_algo", algo, "must be a string naming ModelOpt's algorithm (FP8, NVFP4)")
    if algo.upper() not in MODELOPT_ALGOS:
        raise InvalidSpec(f"{where}.quant_algo", algo,
                          "nibble reads ModelOpt's FP8 (fp8 e4m3 weights, an fp32 weight and input scale per tensor) "
                          "and NVFP4 (e2m1 weights, an fp8 scale per 16, fp32 weight_scale_2 and input scale): the "
                          "algorithms vLLM 0.11, 0.19 and 0.33 all load; FP8_PER_CHANNEL_PER_TOKEN, FP8_PB_WO, "
                          "W4A16_NVFP4, MXFP8, MIXED_PRECISION and the AWQ algorithms are not planned")
    keep = _names(inner, "exclude_modules", where)
    if where == FIELD:
        ignore = _names(inner, "ignore", where)
        keep = _matchable(f"{where}.ignore", tuple(dict.fromkeys((*keep, *ignore))))
        if any(entry != "lm_head" for entry in ignore) and not inner.get("exclude_modules"):
            notes.append(f"{FIELD}.ignore is read as vLLM 0.19 and 0.33 read it (ModelOptQuantConfigBase.from_config); "
                         "vLLM 0.11 reads exclude_modules there and would build the ignored linears quantized "
                         "(its lm_head is no LinearBase and stays 16-bit either way)")
    if algo.upper() == "FP8":
        return fp8("tensor", input_scale=True), keep, notes
    sizes = [(f"{where}.group_size", inner.get("group_size"))]
    groups = config.get("config_groups")
    if isinstance(groups, dict):
        sizes += [(f"{FIELD}.config_groups.{name}.weights.group_size", group["weights"].get("group_size"))
                  for name, group in sorted(groups.items())
                  if isinstance(group, dict) and isinstance(group.get("weights"), dict)]
    for field_name, size in sizes:
        if size is not None and (isinstance(size, bool) or size != MODELOPT_NVFP4_GROUP):
            raise InvalidSpec(field_name, size, f"nibble plans NVFP4 in blocks of {MODELOPT_NVFP4_GROUP} (an fp8 "
                                                "scale per 16 weights, vLLM's ModelOptNvFp4Config default)")
    return replace(block_format("nvfp4"), input_scale=True), keep, notes


def _modelopt_kv_cache(config: Mapping[str, object], notes: list[str]) -> str:
    """The KV-cache quantization a ModelOpt config names, as vLLM reads it for ``kv_cache_dtype="auto"``
    (utils/torch_utils.py ``get_kv_cache_quant_algo_string``, 0.19 and 0.33: ``kv_cache_scheme``, then
    ``kv_cache_quant_algo``, in ``quantization`` or the config itself; an object of 8-bit floats with ``dynamic``
    false is fp8): ``fp8``, ``nvfp4`` or "" (none, or one vLLM does not know: it falls back to ``auto``)."""
    inner, inner_where = _modelopt_inner(config)
    sources = ((inner_where, inner),) if inner is config else ((inner_where, inner), (FIELD, config))
    found = [(f"{where}.{key}", value) for key in ("kv_cache_scheme", "kv_cache_quant_algo")
             for where, source in sources if (value := source.get(key))]  # vLLM's order, falsy values skipped
    if not found:
        return ""
    field_name, value = found[0]
    if isinstance(value, dict):
        if value.get("dynamic") is False and value.get("num_bits") == 8 and value.get("type") == "float":
            return "fp8"
        notes.append(f"{field_name} {value!r} is no KV-cache scheme vLLM maps (fp8: 8-bit floats, dynamic false): "
                     "its kv_cache_dtype auto stays the model's dtype")
        return ""
    if not isinstance(value, str):
        raise InvalidSpec(field_name, value, "must be a string naming ModelOpt's KV-cache algorithm (FP8) or null")
    if value.lower() in ("fp8", "nvfp4"):
        return value.lower()
    notes.append(f"{field_name} {value!r} is no KV-cache algorithm vLLM maps (FP8; NVFP4 from 0.33): its "
                 "kv_cache_dtype auto stays the model's dtype")
    return ""
