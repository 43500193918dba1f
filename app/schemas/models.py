"""Model inputs (preset, config.json or explicit sizes) and the model and device catalog answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quant_core.catalog import Device, Preset, compute_capability_text, get_preset, get_preset_info
from quant_core.errors import InvalidSpec, LimitExceeded, NibbleError, UnknownName
from quant_core.formats import KV_DTYPES, WeightFormat, block_format, float_format, fp8, int4, int8_gptq
from quant_core.gguf_mix import GGUF_FILE_TYPES
from quant_core.hf_config import model_from_hf_config, model_from_sizes
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.schemes import (
    WeightScheme,
    gguf_scheme,
    scheme_bytes,
    scheme_of,
    shipped_scheme_of,
    with_partial_groups,
)
from quant_core.specs import ModelSpec


class field_prefix:
    """Prefix the `field` of core errors raised inside with where that input sits in the body.

    A class rather than a ``@contextmanager`` generator: a plan request enters several, and a generator
    costs a few microseconds each.
    """

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> None:
        prefix = self.prefix
        if isinstance(exc, NibbleError) and prefix:
            if isinstance(exc, UnknownName):
                exc.field = prefix  # the name itself was the offending value
            elif not exc.field.startswith(prefix):
                exc.field = f"{prefix}.{exc.field}" if exc.field else prefix


def json_depth(value: object, limit: int) -> int:
    """Nesting depth of a decoded JSON value, stopping as soon as it passes `limit`."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


class ModelSizes(BaseModel):
    """A llama-style decoder given by its sizes (RMSNorm, gated MLP, no biases)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_kv_heads: int | None = Field(None, description="Default: num_attention_heads (MHA).")
    head_dim: int | None = Field(None, description="Default: hidden_size / num_attention_heads.")
    tie_word_embeddings: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int | None = None
    num_shared_experts: int = 0
    dense_layers: list[int] = Field(default_factory=list)
    sliding_window: int | None = None
    sliding_layers: list[int] | None = None
    max_position_embeddings: int | None = None
    name: str = "custom"


class ModelInput(BaseModel):
    """Exactly one of: a preset id, a Hugging Face config.json object, or explicit sizes."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"preset": "llama-3.1-8b"}]})

    preset: str | None = Field(None, description="A preset id from GET /v1/models, e.g. llama-3.1-8b.")
    hf_config: dict[str, Any] | None = Field(None, description="The model's config.json, as a JSON object.")
    spec: ModelSizes | None = Field(None, description="Explicit sizes of a llama-style decoder.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelInput:
        given = [name for name in ("preset", "hf_config", "spec") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of preset, hf_config or spec (got {given or 'none'})")
        return self


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


#: decoder layers past which a plan or an inspection runs in a thread, off the event loop: the catalog's deepest model
#: has 126, and a config of 4,096 layers, every other one dense or sliding, is 0.07-0.25 s of planning the first time
#: it is seen (0.3-0.45 s of inspection)
THREADED_PLAN_LAYERS = 256


def model_to_core(model: ModelInput, max_config_depth: int, where: str = "model") -> ModelSpec:
    """The `ModelSpec` a request names; core errors carry the body path (``model.hf_config.x``)."""
    if model.preset is not None:
        with field_prefix(_join(where, "preset")):
            return get_preset(model.preset)
    if model.hf_config is not None:
        depth = json_depth(model.hf_config, max_config_depth)
        if depth > max_config_depth:
            raise LimitExceeded("max_config_depth", depth, max_config_depth, field=_join(where, "hf_config"))
        with field_prefix(_join(where, "hf_config")):
            return model_from_hf_config(model.hf_config)
    if model.spec is None:  # ModelInput's validator makes this unreachable
        raise InvalidSpec(where or "model", None, "give exactly one of preset, hf_config or spec")
    with field_prefix(_join(where, "spec")):
        return model_from_sizes(**model.spec.model_dump())


def mtp_layers_of(model: ModelInput) -> int | None:
    """The checkpoint's multi-token-prediction layers past the model's (a preset's, or the config's
    ``num_nextn_predict_layers``, 0 when absent), or None for a model given by its sizes, which does not say."""
    if model.preset is not None:
        return get_preset_info(model.preset).mtp_layers
    if model.hf_config is not None:
        mtp = model.hf_config.get("num_nextn_predict_layers")
        return mtp if isinstance(mtp, int) and not isinstance(mtp, bool) and 0 < mtp <= 64 else 0
    return None


def checkpoint_mtp_layers_of(model: ModelInput) -> int | None:
    """`mtp_layers_of`, and for a MiniMax-M2 config its ``num_mtp_modules``: the layers past the model's that
    vLLM's minimax_m2.py skips at load (``get_spec_layer_idx_from_weight_name``: model.layers.{N}...{N + m - 1}),
    so that headers holding them are set apart, not refused as another model's."""
    declared = mtp_layers_of(model)
    config = model.hf_config
    if declared or config is None or config.get("model_type") != "minimax_m2":
        return declared
    modules = config.get("num_mtp_modules")
    return modules if isinstance(modules, int) and not isinstance(modules, bool) and 0 < modules <= 64 else declared


def shipped_scheme(model: ModelInput, float_name: str = "bf16", where: str = "model") -> WeightScheme | None:
    """The checkpoint's as-shipped scheme from its ``quantization_config`` (a preset's, or the config's
    own), or None for a model that ships unquantized or is given by its sizes."""
    if model.preset is not None:
        config = get_preset_info(model.preset).quantization_config
        prefix = _join(where, "preset")
    elif model.hf_config is not None:
        config = model.hf_config.get("quantization_config")
        prefix = _join(where, "hf_config")
        if config is not None and not isinstance(config, dict):
            raise InvalidSpec(_join(prefix, "quantization_config"), config, "must be an object")
    else:
        return None
    if config is None:
        return None
    with field_prefix(prefix):
        return shipped_scheme_of(config, float_name, mtp_layers_of(model) or 0)


# --- answers -----------------------------------------------------------------------------------


class ParametersOut(BaseModel):
    """Parameter counts as transformers counts them (unique tensors, tied weights once)."""

    total: int
    by_role: dict[str, int]
    embedding: int
    lm_head: int
    non_embedding: int
    active_per_token: int | None = Field(description="For MoE models: parameters one token uses.")


def parameters_from_core(spec: ModelSpec) -> ParametersOut:
    counts = parameter_count(spec)
    return ParametersOut(total=counts.total, by_role={k: v for k, v in counts.by_role.items() if v},
                         embedding=counts.embedding, lm_head=counts.lm_head,
                         non_embedding=counts.non_embedding, active_per_token=counts.active_per_token)


class ModelSummary(BaseModel):
    """One preset of the catalog."""

    id: str
    display_name: str
    hf_repo: str
    model_type: str
    total_parameters: int
    active_parameters_per_token: int | None


class ModelDetail(ModelSummary):
    """One preset with its normalized spec, parameter breakdown and source."""

    source: str
    spec: dict[str, Any]
    parameters: ParametersOut
    kv_bytes_per_token_bf16: int


def summary_from_core(preset: Preset) -> ModelSummary:
    counts = parameter_count(preset.spec)
    return ModelSummary(id=preset.id, display_name=preset.display_name, hf_repo=preset.hf_repo,
                        model_type=preset.spec.model_type, total_parameters=counts.total,
                        active_parameters_per_token=counts.active_per_token)


def detail_from_core(preset: Preset) -> ModelDetail:
    summary = summary_from_core(preset)
    return ModelDetail(**summary.model_dump(), source=preset.source, spec=preset.spec.to_dict(),
                       parameters=parameters_from_core(preset.spec),
                       kv_bytes_per_token_bf16=kv_bytes_per_token(preset.spec, "bf16"))


class DeviceOut(BaseModel):
    """One accelerator of the catalog, with where its memory figure comes from."""

    id: str
    name: str
    vendor: str
    memory_bytes: int = Field(description="Nominal memory, as the vendor states it (GB read as GiB).")
    memory_type: str
    source: str
    reported_memory_bytes: int | None = Field(description="The total CUDA reports for the device (what vLLM "
                                                          "multiplies by gpu_memory_utilization); plans use it. "
                                                          "Null when not verified from a public log.")
    reported_source: str
    compute_capability: str | None = Field(description="CUDA compute capability, major.minor, as NVIDIA lists it: "
                                                       "what the engine checks weight formats against. Null when "
                                                       "none is catalogued (AMD).")
    compute_capability_source: str
    compute_units: int | None = Field(description="Streaming multiprocessors (NVIDIA) or compute units (AMD), "
                                                  "by which the engine sizes some buffers.")
    compute_units_source: str


def device_from_core(device: Device) -> DeviceOut:
    return DeviceOut(id=device.id, name=device.name, vendor=device.vendor, memory_bytes=device.memory_bytes,
                     memory_type=device.memory_type, source=device.source,
                     reported_memory_bytes=device.reported_memory_bytes, reported_source=device.reported_source,
                     compute_capability=compute_capability_text(device.compute_capability),
                     compute_capability_source=device.compute_capability_source,
                     compute_units=device.compute_units, compute_units_source=device.compute_units_source)


# --- inspect -----------------------------------------------------------------------------------


class InspectRequest(ModelInput):
    """The model to inspect: a preset id, a config.json object, or explicit sizes (one of them)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"preset": "qwen3-8b"}]})


class TensorRow(BaseModel):
    """One inventory row: a tensor name pattern standing for `count` tensors of `shape`."""

    name: str
    shape: list[int]
    role: str
    count: int
    layers: list[int]
    per_layer: int
    active_per_layer: int | None
    elements: int = Field(description="Elements of all `count` tensors together.")


class WeightBytesOut(BaseModel):
    """The model's weight bytes in one format (under the default quantization policy, or as the checkpoint
    ships), with its bits per weight over every parameter."""

    format: str
    bytes: int | None
    bits_per_weight: float | None
    error: str | None = Field(None, description="Why this format cannot store the model.")
    as_shipped: bool = Field(False, description="The format the model's config.json says it ships in.")
    weights: dict[str, Any] | None = Field(None, description=(
        "The `weights` a plan request sends for this format; null for the as-shipped row (a plan without "
        "`weights` plans the model as shipped)."))


class InspectResponse(BaseModel):
    """Everything nibble knows about a model's memory."""

    name: str
    model_type: str
    spec: dict[str, Any]
    parameters: ParametersOut
    tensors: list[TensorRow]
    kv_bytes_per_token: dict[str, int] = Field(
        description="KV-cache bytes per token, by KV dtype (a dtype the model's attention cannot cache is left out: "
                    "DeepSeek Sparse Attention's int8 and int4, and vLLM 0.33's *_per_token_head caches for MLA "
                    "models).")
    weight_bytes: list[WeightBytesOut]


INSPECT_FORMATS: tuple[WeightFormat, ...] = (
    float_format("fp32"), float_format("bf16"), WeightFormat("int8", None, True, "none"), int8_gptq(128),
    fp8("tensor"), fp8("channel"), fp8("block"), block_format("mxfp4"), block_format("nvfp4"),
    block_format("nf4", double_quant=False), block_format("nf4"),
    int4(128), int4(128, symmetric=True), int4(64), int4(32, symmetric=True), int4(128, zero="fp16"),
    int4(128, layout="gptq"), int4(32, layout="gptq"), int4(128, layout="awq"),
    int4(128, symmetric=True, layout="compressed-tensors"),
)
INSPECT_SCHEMES: tuple[WeightScheme, ...] = (
    *(scheme_of(weight_format) for weight_format in INSPECT_FORMATS),
    *(gguf_scheme(file_type) for file_type in GGUF_FILE_TYPES),
)


def request_weights(scheme: WeightScheme) -> dict[str, Any]:
    """The plan request's `weights` that plans `scheme` (one of `INSPECT_SCHEMES`): only the fields its
    format uses, since a plan refuses a field that would change nothing."""
    if scheme.gguf_file_type:
        return {"format": scheme.gguf_file_type}
    quantized = scheme.quantized
    if quantized.name == "fp8":
        return {"format": "fp8", "scales": quantized.scales}
    if quantized.name == "nf4":
        return {"format": "nf4", "double_quant": quantized.double_quant}
    if quantized.name == "int8" and quantized.layout == "gptq":
        return {"format": "int8", "layout": "gptq", "group_size": quantized.group_size}
    if quantized.name != "int4":
        return {"format": quantized.name}
    weights: dict[str, Any] = {"format": "int4", "group_size": quantized.group_size,
                               "symmetric": quantized.symmetric}
    if not quantized.symmetric:
        weights["zero"] = quantized.zero
    if quantized.layout != "nibble":
        weights["layout"] = quantized.layout
    return weights


def _weight_bytes_row(spec: ModelSpec, scheme: WeightScheme, total: int, as_shipped: bool = False) -> WeightBytesOut:
    weights = None if as_shipped else request_weights(scheme)
    try:
        fitted, _ = with_partial_groups(spec, scheme)  # a width the group does not divide: a partial last group
        size = scheme_bytes(spec, fitted)
    except NibbleError as exc:
        return WeightBytesOut(format=scheme.label(), bytes=None, bits_per_weight=None, error=exc.detail,
                              as_shipped=as_shipped, weights=weights)
    return WeightBytesOut(format=fitted.label(), bytes=size, bits_per_weight=8 * size / total, as_shipped=as_shipped,
                          weights=weights)


def _kv_bytes_by_dtype(spec: ModelSpec) -> dict[str, int]:
    """KV bytes per token for each KV dtype the model's attention can cache (vLLM's sparse MLA: no int8 or int4; MLA:
    no per-token-head cache)."""
    out: dict[str, int] = {}
    for dtype in KV_DTYPES:
        try:
            out[dtype] = kv_bytes_per_token(spec, dtype)
        except InvalidSpec:
            continue
    return out


def inspect_from_core(spec: ModelSpec, shipped: WeightScheme | None = None) -> InspectResponse:
    counts = parameter_count(spec)
    rows = [TensorRow(name=e.name, shape=list(e.shape), role=e.role, count=e.count, layers=list(e.layers),
                      per_layer=e.per_layer, active_per_layer=e.active_per_layer, elements=e.total_elements)
            for e in inventory(spec)]
    formats = [_weight_bytes_row(spec, shipped, counts.total, as_shipped=True)] \
        if shipped is not None and shipped.origin else []
    formats.extend(_weight_bytes_row(spec, scheme, counts.total) for scheme in INSPECT_SCHEMES)
    return InspectResponse(
        name=spec.name, model_type=spec.model_type, spec=spec.to_dict(), parameters=parameters_from_core(spec),
        tensors=rows, kv_bytes_per_token=_kv_bytes_by_dtype(spec),
        weight_bytes=formats,
    )



class Health(BaseModel):
    """The server is up and its event loop answers."""

    status: str = "ok"
