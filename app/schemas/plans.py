"""The plan and sweep bodies and answers, and their conversion to and from `quant_core.planner`."""

from __future__ import annotations

import base64
import binascii
import itertools
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import to_json

from app.schemas.models import (
    ModelInput,
    checkpoint_mtp_layers_of,
    field_prefix,
    model_to_core,
    mtp_layers_of,
    shipped_scheme,
)
from quant_core import catalog
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.vllm_speculative import MAX_SPECULATIVE_TOKENS, SpeculativeDecoding
from quant_core.errors import InvalidSpec, LimitExceeded, NibbleError, TensorFileError
from quant_core.fit import FitRecipe, fit_plan
from quant_core.formats import (
    FLOAT_FORMATS,
    Fp8Scales,
    Layout,
    WeightFormat,
    ZeroKind,
    block_format,
    float_format,
    fp8,
    int8_gptq,
)
from quant_core.hf_config import architecture_family, config_float_format, unread_config_keys
from quant_core.planner import DevicePlan, FormatPlan, Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import WeightScheme, gguf_scheme, scheme_of
from quant_core.specs import ModelSpec
from quant_core.speed import speed_basis, speed_bounds
from quant_core.tensorio.checkpoint_headers import (
    HeaderTensor,
    check_against_index,
    header_only_tensors,
    header_tensors,
)
from quant_core.tensorio.limits import DEFAULT_MAX_HEADER_BYTES

_OPTIONS = PlanOptions()
_WORKLOAD = Workload()


class HardwareIn(BaseModel):
    """`count` devices: a catalog `device` id, or a raw `memory_bytes` per device (one of the two)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    device: str | None = Field(None, description="A device id from GET /v1/devices, e.g. h100-80gb.")
    memory_bytes: int | None = Field(None, description="Memory of one device, bytes (for unlisted hardware).")
    count: int = Field(1, description="Number of identical devices.")
    compute_capability: str | None = Field(
        None, description="CUDA compute capability, major.minor (\"7.5\"), by which the engine refuses formats "
                          "its kernels cannot run on the device. Default: the catalog device's; for memory_bytes, "
                          "unknown (no format is refused for the device, and the answer says so).")
    compute_units: int | None = Field(
        None, description="Streaming multiprocessors (compute units) of one device, by which the engine sizes some "
                          "buffers. Default: the catalog device's; for memory_bytes, the most of the catalog's "
                          "devices of the same major compute capability (the safe side, and the answer says so).")

    @model_validator(mode="after")
    def _exactly_one(self) -> HardwareIn:
        if (self.device is None) == (self.memory_bytes is None):
            raise ValueError("give exactly one of device or memory_bytes")
        return self


class WorkloadIn(BaseModel):
    """Tokens held per sequence (prompt + output) and sequences served at once."""

    model_config = ConfigDict(extra="forbid", strict=True)

    context_length: int = _WORKLOAD.context_length
    concurrent_sequences: int = _WORKLOAD.concurrent_sequences


FormatName = Literal["int4", "int8", "bf16", "fp16", "fp32", "fp8", "mxfp4", "nvfp4", "nf4", "gguf-q4_0",
                     "gguf-q4_k_s", "gguf-q4_k_m", "gguf-q5_k_m", "gguf-q6_k", "gguf-q8_0"]
_SIMPLE_FORMATS = frozenset({"int4", "int8", *FLOAT_FORMATS})
#: ``weights.format`` asking for the largest per-tensor mix that fits (`quant_core.fit`)
FIT = "fit"


class WeightsIn(BaseModel):
    """The deployed weight format.  Without `weights`, a model whose config carries a
    ``quantization_config`` is planned as shipped, any other at ``int4`` g128 asymmetric."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: FormatName | Literal["fit"] = Field("int4", description=(
        "int4 group-wise, int8, a float, fp8 (e4m3), mxfp4, nvfp4, nf4 (bitsandbytes), or a llama.cpp file type "
        "(gguf-q4_k_m ...: each tensor's type as llama-quantize chooses it); or fit: the largest per-tensor mix of "
        "int4 g128/g64/g32, int8 and 16-bit that fits, with the recipe POST /v1/quantize takes (the answer's fit)."))
    group_size: int | None = Field(128, description="int4 (and int8 in the gptq layout): 32, 64, 128, 256, or null "
                                                    "for a whole row.  A width it does not divide is planned with a "
                                                    "partial last group, as GPTQ and AWQ store it, and said so.")
    symmetric: bool = False
    zero: Literal["int4", "fp16"] = Field("int4", description="int4 asymmetric: how zero points are stored (fp16 "
                                                              "in nibble's layout only: gptq, awq and "
                                                              "compressed-tensors store packed 4-bit zeros).")
    pad: bool = Field(False, description="int4 only: pad rows whose width the group size does not divide "
                                         "to whole groups (instead of a partial last group).")
    layout: Literal["nibble", "gptq", "awq", "compressed-tensors"] = Field(
        "nibble", description="int4: nibble's own, or as GPTQ, AWQ or compressed-tensors store it; int8: nibble "
                              "(per channel) or gptq (8-bit groups).")
    scales: Literal["tensor", "channel", "block"] = Field(
        "channel", description="fp8 only: one scale per tensor, per output channel, or per 128x128 block.")
    double_quant: bool = Field(True, description="nf4 only: bitsandbytes' double quantization of the absmax.")


class KVCacheIn(BaseModel):
    """The KV cache's element type and the engine's block (page) size in tokens."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dtype: str = Field(_OPTIONS.kv_cache_dtype, description=(
        "bf16, fp16, fp8, int8, int4, int8_per_token_head, int4_per_token_head or fp8_per_token_head. Not given: "
        "the engine's default (vLLM's --kv-cache-dtype auto, 16-bit), which vLLM 0.19 and 0.33 turn into fp8 for a "
        "ModelOpt checkpoint whose config quantizes the KV cache. int8 and int4 are an fp16 scale and zero per "
        "token and head beside the codes (LMDeploy's layout): vLLM runs no such cache, so a vLLM plan refuses them; "
        "runtime.engine generic plans them. int8_per_token_head, int4_per_token_head and fp8_per_token_head are "
        "vLLM 0.33's own (an fp32 scale per token and head in the page; runtime.engine_version 0.33, on its Triton "
        "attention, no MLA model; fp8_per_token_head from compute capability 8.9): other releases refuse them, and "
        "runtime.engine generic is a 422."))
    block_size: int = _OPTIONS.block_size


class ParallelIn(BaseModel):
    """Tensor, pipeline and data parallel degrees; tensor defaults to count / (pipeline x data)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tensor: int | None = None
    pipeline: int = _OPTIONS.pipeline_parallel
    data: int = Field(_OPTIONS.data_parallel, description=(
        "vLLM's --data-parallel-size: that many replicas of the tensor x pipeline layout, on data x tensor x "
        "pipeline devices (hardware.count), each with its own scheduler and KV pool; the workload's sequences are "
        "shared among them (each device is planned for the most one replica gets). devices lists one replica's, "
        "kv_cache.capacity_tokens is one replica's; max_concurrent_sequences, used bytes and min_devices are the "
        "deployment's. A model with routed experts (vllm 0.19 and 0.33, pipeline 1): its routed experts spread over "
        "the data x tensor ranks (whole under runtime.expert_parallel, else sliced) and each MoE layer gathering every "
        "rank's tokens, the rest split by tensor parallelism; a 422 on 0.11, the generic engine or with pipeline "
        "stages."))


class SpeculativeIn(BaseModel):
    """vLLM's speculative decoding, as ``--speculative-config '{"method": ..., "num_speculative_tokens": k}'`` runs
    it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    method: str = Field(max_length=32, description=(
        "mtp: the checkpoint's own multi-token-prediction layers (num_nextn_predict_layers; DeepSeek-V3 and GLM-4.5 "
        "models): their weights and KV cache join the plan; ngram: prompt lookup on the CPU, no model.  mtp is planned "
        "on vLLM 0.19, ngram on 0.11 and 0.19; other methods (eagle, eagle3, draft_model, ...) and releases are "
        "refused naming why."))
    num_speculative_tokens: int = Field(ge=1, le=MAX_SPECULATIVE_TOKENS, description=(
        "Tokens proposed a step: a decode step verifies 1 + k tokens a sequence, which sets vLLM's CUDA-graph "
        "capture sizes."))


class RuntimeIn(BaseModel):
    """The engine's memory budget and the estimates' overrides."""

    model_config = ConfigDict(extra="forbid", strict=True)

    memory_utilization: float = Field(_OPTIONS.memory_utilization, description="Share of memory usable "
                                      "(vLLM's --gpu-memory-utilization), of the memory CUDA reports.")
    engine: Literal["vllm", "generic"] = Field(
        "vllm", description="The engine whose memory terms the plan uses: vllm, or generic (nibble's own "
                            "workload-sized activation estimate and a fixed 1 GiB overhead).")
    engine_version: Literal["0.11", "0.19", "0.33"] | None = Field(
        None, description="vllm only: the release whose rules apply (0.19 by default; 0.11 samples with more "
                          "working copies; 0.33 charges CUDA-graph "
                          "memory inside the budget).")
    overhead_bytes: int | None = Field(None, description="Replaces the engine's per-device overhead (non-torch "
                                                         "and CUDA-graph memory) when given; what vLLM 0.11/0.19 "
                                                         "allocate outside the budget (their CUDA graphs) is still "
                                                         "checked against the memory it leaves free (see "
                                                         "enforce_eager).")
    activation_bytes: int | None = Field(None, description="Replaces the activation estimate when given.")
    max_batched_tokens: int | None = Field(None, description="vLLM's --max-num-batched-tokens; default: the "
                                                             "engine's for the device (8192 on 70 GiB+ non-A100, "
                                                             "else 2048).")
    max_num_seqs: int | None = Field(None, description="vLLM's --max-num-seqs; default: the engine's for the "
                                                       "device (1024 on 70 GiB+ non-A100, else 256).")
    float_format: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="The 16-bit baseline format.")
    enforce_eager: bool = Field(False, description="vllm only: --enforce-eager, no CUDA graphs (0.11 and 0.19 capture "
                                                   "them after sizing the KV cache, from the memory "
                                                   "memory_utilization leaves free; 0.33 charges their estimate "
                                                   "inside the budget).")
    expert_parallel: bool = Field(False, description="vllm only, MoE models only: --enable-expert-parallel: each "
                                                     "rank of the data x tensor ranks holds whole routed experts "
                                                     "(the first ranks one more where they do not divide), the rest "
                                                     "stays split by tensor parallelism.")
    speculative: SpeculativeIn | None = Field(None, description="vllm only: --speculative-config (see "
                                                                "SpeculativeIn); none by default.")


class CheckpointHeaderIn(BaseModel):
    """One checkpoint file's header, base64: a .safetensors file's first 8 + N bytes (its length and JSON
    header), or a .gguf file's start up to the end of its tensor records.  Never the weights."""

    model_config = ConfigDict(extra="forbid", strict=True)

    file: str = Field(description="The file's name, for messages (model-00001-of-00004.safetensors).")
    header_base64: str


class CheckpointIn(BaseModel):
    """The headers of every file of a checkpoint: the plan sums the checkpoint's own tensor bytes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    headers: list[CheckpointHeaderIn] = Field(min_length=1, max_length=4096)


class PlanRequest(BaseModel):
    """A model, hardware and workload; everything but `model` and `hardware` has a default."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
        "workload": {"context_length": 8192, "concurrent_sequences": 4},
    }]})

    model: ModelInput
    hardware: HardwareIn
    workload: WorkloadIn = Field(default_factory=WorkloadIn)
    weights: WeightsIn = Field(default_factory=WeightsIn)
    kv_cache: KVCacheIn = Field(default_factory=KVCacheIn)
    parallel: ParallelIn = Field(default_factory=ParallelIn)
    runtime: RuntimeIn = Field(default_factory=RuntimeIn)
    checkpoint: CheckpointIn | None = Field(None, description=(
        "The checkpoint's own headers: its tensors are planned instead of the model's inventory in a format "
        "(model still gives the architecture and the KV cache)."))


@dataclass(frozen=True, slots=True)
class HeaderFile:
    """One checkpoint file's header bytes as a request gave them, with the request's name for it (for
    messages: ``checkpoint.headers[2]``, or a multipart form's ``header[2]``)."""

    file: str
    field: str
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckpointHeaders:
    """A checkpoint's headers from a request: every file's, and its index's ``weight_map`` when given.
    `headers_only` refuses bytes past a file's header (the multipart form: its parts are headers, never
    tensor data); the base64 form tolerates them, as a reader stops at the header's end.  `max_tensors`: the most
    tensors the files may declare together (the server's ``max_checkpoint_tensors`` for a form; a JSON body's headers
    are bounded by its size), None for no bound."""

    files: tuple[HeaderFile, ...]
    weight_map: dict[str, str] | None = None
    headers_only: bool = False
    max_tensors: int | None = None


def decoded_checkpoint(checkpoint: CheckpointIn, max_header_bytes: int) -> CheckpointHeaders:
    """The base64 headers of a JSON body, decoded; refused (413) past `max_header_bytes` decoded in total."""
    files: list[HeaderFile] = []
    total = 0
    for index, header in enumerate(checkpoint.headers):
        where = f"checkpoint.headers[{index}]"
        if len(header.header_base64) > 2 * max_header_bytes:
            raise LimitExceeded("max_header_bytes", len(header.header_base64) * 3 // 4, max_header_bytes, field=where)
        try:
            prefix = base64.b64decode(header.header_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSpec(f"{where}.header_base64", header.file, "is not base64") from None
        total += len(prefix)
        if total > max_header_bytes:
            raise LimitExceeded("max_header_bytes", total, max_header_bytes, field="checkpoint.headers")
        files.append(HeaderFile(header.file, where, prefix))
    return CheckpointHeaders(tuple(files))


def checkpoint_tensors(checkpoint: CheckpointHeaders, max_header_bytes: int,
                       index_field: str = "index") -> list[HeaderTensor]:
    """Every tensor the request's headers declare; each file's problem names the file and where the request
    holds it; with an index, the headers must be the files and tensors it names (422 naming `index_field`)."""
    by_file: dict[str, list[HeaderTensor]] = {}
    holder: dict[str, str] = {}  # tensor name -> the file declaring it
    declared = 0
    for header in checkpoint.files:
        try:
            if checkpoint.headers_only:
                tensors = header_only_tensors(header.data, header.file, max_header_bytes=max_header_bytes)
            else:
                tensors = header_tensors(header.data, max_header_bytes=max_header_bytes)
        except NibbleError as exc:
            exc.field = header.field
            exc.detail = f"{header.file}: {exc.detail}"
            raise
        declared += len(tensors)
        if checkpoint.max_tensors is not None and declared > checkpoint.max_tensors:
            raise LimitExceeded("max_checkpoint_tensors", declared, checkpoint.max_tensors,
                                field=header.field.partition("[")[0])
        if header.file in by_file:
            raise InvalidSpec(header.field, header.file, "names a file whose header is given twice")
        for tensor in tensors:
            first = holder.setdefault(tensor.name, header.file)
            if first != header.file:
                raise InvalidSpec(header.field, header.file,
                                  f"declares tensor {tensor.name!r}, which {first} declares too: a checkpoint "
                                  "stores each tensor in one file")
        by_file[header.file] = tensors
    if checkpoint.weight_map is not None:
        try:
            check_against_index(checkpoint.weight_map, by_file)
        except TensorFileError as exc:
            exc.field = index_field
            raise
    return [tensor for tensors in by_file.values() for tensor in tensors]


def weight_format_to_core(weights: WeightsIn, name: str | None = None) -> WeightFormat:
    """The `WeightFormat` of `weights` (or of format `name` with the same parameters); GGUF file types are
    schemes, not one format: see `weight_scheme_to_core`."""
    with field_prefix("weights"):
        return _weight_format(name or weights.format, weights.group_size, weights.symmetric, weights.zero, weights.pad,
                              weights.layout, weights.scales, weights.double_quant)


@lru_cache(maxsize=256)
def _weight_format(name: str, group_size: int | None, symmetric: bool, zero: ZeroKind, pad: bool, layout: Layout,
                   scales: Fp8Scales, double_quant: bool) -> WeightFormat:
    """`weight_format_to_core` of the request's weight fields, made once per combination: a `WeightFormat` checks
    every field as it is built (microseconds a request), and it is frozen, so one serves every request (the bounded
    cache holds the combinations requests use; the fields are strict literals and small integers)."""
    if name in FLOAT_FORMATS:
        return float_format(name)
    if name == "int8":
        if layout == "gptq":
            return int8_gptq(group_size)
        return WeightFormat("int8", None, True, "none")
    if name == "fp8":
        return fp8(scales)
    if name in ("mxfp4", "nvfp4", "nf4"):
        return block_format(name, double_quant)
    return WeightFormat("int4", group_size, symmetric, "none" if symmetric else zero, pad, layout)


def weight_scheme_to_core(weights: WeightsIn, float_name: str, name: str | None = None) -> WeightScheme | None:
    """The deployed `WeightScheme` for a format beyond nibble's int4/int8/floats (None for those: the
    planner's `weight_format` and policy describe them)."""
    name = name or weights.format
    if name == FIT:
        return None  # `quant_core.fit` chooses the scheme
    if name.startswith("gguf-"):
        return gguf_scheme(name)
    if name in _SIMPLE_FORMATS and weights.layout == "nibble":
        return None
    return scheme_of(weight_format_to_core(weights, name), float_name)


def _refuse_unused_fields(body: PlanRequest) -> None:
    """Refuse values the request sets explicitly that no computed format or row would use.

    Defaults are fine (``group_size`` is 128 whatever the format); what the
    client wrote must change the answer, or be refused, never be dropped.
    """
    weights = body.weights
    formats: set[str] = {weights.format}
    if isinstance(body, SweepRequest) and weights.format == FIT:
        raise InvalidSpec("weights.format", FIT, "a sweep plans fixed formats: POST /v1/plan answers the fit")
    if isinstance(body, SweepRequest) and body.sweep.formats:
        formats = set(body.sweep.formats)
    sent = weights.model_fields_set
    for name, users in (("scales", {"fp8"}), ("double_quant", {"nf4"}), ("layout", {"int4", "int8"})):
        if name in sent and not formats & users:
            raise InvalidSpec(f"weights.{name}", getattr(weights, name),
                              f"applies to {' and '.join(sorted(users))} weights only; the request plans "
                              f"{sorted(formats)}")
    if "group_size" in sent and "int8" in formats and weights.layout == "gptq":
        formats = formats | {"int4"}  # GPTQ 8-bit takes the group size too
    if "int4" not in formats:
        for name in ("group_size", "zero", "pad"):
            if name in sent:
                raise InvalidSpec(f"weights.{name}", getattr(weights, name),
                                  f"applies to int4 weights only; the request plans {sorted(formats)}")
        if "symmetric" in sent and not ("int8" in formats and weights.symmetric):
            raise InvalidSpec("weights.symmetric", weights.symmetric,
                              "applies to int4 (either) and int8 (symmetric only) weights; the request plans "
                              f"{sorted(formats)}")
    if weights.symmetric and "zero" in sent:
        raise InvalidSpec("weights.zero", weights.zero, "symmetric weights store no zero point")
    if weights.zero != "int4" and weights.layout != "nibble":
        raise InvalidSpec("weights.zero", weights.zero,
                          f"the {weights.layout} layout stores its zero points as packed 4-bit integers; fp16 zeros "
                          "are nibble's own layout only")
    if isinstance(body, SweepRequest) and body.sweep.devices:
        for name in ("tensor", "pipeline", "data"):
            if name in body.parallel.model_fields_set:
                raise InvalidSpec(f"parallel.{name}", getattr(body.parallel, name),
                                  "a sweep over devices finds each device type's fewest devices in tensor parallel "
                                  "(one stage); leave parallel out")
    if isinstance(body, SweepRequest) and body.sweep.device_counts and body.parallel.tensor is not None:
        raise InvalidSpec("parallel.tensor", body.parallel.tensor,
                          "a sweep over device_counts sets each row's tensor degree (count / pipeline); "
                          "leave parallel.tensor out")


def plan_to_core(body: PlanRequest, max_config_depth: int, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 headers: CheckpointHeaders | None = None) -> tuple[ModelSpec, Hardware, Workload, PlanOptions]:
    """The planner's inputs for `body`; core errors name the field by its path in the body.

    `headers`: the checkpoint's headers when the request carried them beside the body (a multipart
    form) rather than in it (``checkpoint``).
    """
    _refuse_unused_fields(body)
    if body.checkpoint is not None:
        if headers is not None:
            raise InvalidSpec("checkpoint", "headers", "the form's header parts give the checkpoint: leave "
                                                       "checkpoint out of the request part")
        headers = decoded_checkpoint(body.checkpoint, max_header_bytes)
    if headers is not None and "weights" in body.model_fields_set:
        raise InvalidSpec("weights", body.weights.format, "the checkpoint's headers give the weights: leave weights "
                                                          "out, or the checkpoint")
    spec = model_to_core(body.model, max_config_depth)
    shipped = shipped_scheme(body.model, body.runtime.float_format)
    unreadable = shipped if shipped is not None and not shipped.origin else None  # INT4, with the reason
    if unreadable is not None:
        shipped = None
    if body.hardware.device is not None:
        with field_prefix("hardware.device"):
            device = catalog.get_device(body.hardware.device)
    else:
        with field_prefix("hardware"):
            device = catalog.device_from_bytes(body.hardware.memory_bytes or 0)
    with field_prefix("hardware"):
        capability = (None if body.hardware.compute_capability is None
                      else catalog.parse_compute_capability(body.hardware.compute_capability))
        hardware = _hardware(device.planning_bytes, body.hardware.count,
                            device.id if body.hardware.device is not None else None, device.name, capability,
                            body.hardware.compute_units)
    workload = Workload(body.workload.context_length, body.workload.concurrent_sequences)
    if headers is not None:
        tensors = checkpoint_tensors(headers, max_header_bytes)
        try:
            scheme, _ = checkpoint_scheme(spec, tensors, checkpoint_mtp_layers_of(body.model))
        except InvalidSpec as exc:  # headers leaving part of the model out: named where the request holds them
            exc.field = headers.files[0].field.partition("[")[0] if headers.files else exc.field
            exc.detail = exc.reason
            raise
    elif "weights" in body.model_fields_set or shipped is None:
        with field_prefix("weights"):
            scheme = weight_scheme_to_core(body.weights, body.runtime.float_format)
        if scheme is None and unreadable is not None and "weights" not in body.model_fields_set:
            scheme = unreadable
    else:
        scheme = shipped  # no weights asked: the checkpoint as shipped
    # a checkpoint's scheme holds a row per tensor: too large to keep, and one request's own
    options = (PlanOptions if headers is not None else _plan_options)(
        weight_format=weight_format_to_core(body.weights), scheme=scheme, shipped=shipped,
        format_name=body.weights.format,
        float_format=body.runtime.float_format,
        kv_cache_dtype=body.kv_cache.dtype, block_size=body.kv_cache.block_size,
        tensor_parallel=body.parallel.tensor, pipeline_parallel=body.parallel.pipeline,
        data_parallel=body.parallel.data,
        memory_utilization=body.runtime.memory_utilization, runtime_overhead_bytes=body.runtime.overhead_bytes,
        activation_bytes=body.runtime.activation_bytes, max_batched_tokens=body.runtime.max_batched_tokens,
        max_num_seqs=body.runtime.max_num_seqs, engine=body.runtime.engine, engine_version=body.runtime.engine_version,
        enforce_eager=body.runtime.enforce_eager,
        expert_parallel=body.runtime.expert_parallel,
        speculative=_speculative_to_core(body.runtime.speculative, body.model),
        config_dtype=None if body.model.hf_config is None else config_float_format(body.model.hf_config),
        kv_cache_dtype_auto="dtype" not in body.kv_cache.model_fields_set,
    )
    return spec, hardware, workload, options


def _speculative_to_core(speculative: SpeculativeIn | None, model: ModelInput) -> SpeculativeDecoding | None:
    """The core's `SpeculativeDecoding` of the request's ``runtime.speculative``, with the model's MTP layers
    (``num_nextn_predict_layers``: 0 when absent or not said, a model given by its sizes)."""
    if speculative is None:
        return None
    return SpeculativeDecoding(speculative.method, speculative.num_speculative_tokens, mtp_layers_of(model) or 0)


#: `plan_to_core`'s `Hardware` and `PlanOptions` (without a checkpoint's headers), made once per combination of the
#: request's values: both are frozen, and checking their fields as they are built costs microseconds a request
#: (an LRU of the combinations requests use; the values are the request's strict JSON types)
_hardware = lru_cache(maxsize=1024)(Hardware)
_plan_options = lru_cache(maxsize=1024)(PlanOptions)


# --- answers -----------------------------------------------------------------------------------


class Term(BaseModel):
    """An estimated term: its bytes per device and the assumption behind them."""

    bytes: int
    basis: str


class DeviceOut(BaseModel):
    """What one device holds, against its usable memory (capacity × memory_utilization)."""

    index: int
    pipeline_stage: int
    tensor_rank: int
    layers: list[int] = Field(description="Decoder layers [start, stop) on this device's stage.")
    capacity_bytes: int
    usable_bytes: int
    weights_bytes: int
    kv_cache_bytes: int = Field(description="The workload's KV cache on this device (its stage's layers, its share "
                                            "of the KV heads), as the fit charges it.  Under vLLM, for "
                                            "sliding-window or chunked layers: vLLM's blocks, one request at vLLM's "
                                            "per-request reservation (its window plus a step's tokens in flight, "
                                            "and a block more where the window straddles one) and the others at "
                                            "the blocks their window spans.")
    activation_bytes: int
    overhead_bytes: int
    used_bytes: int
    headroom_bytes: int = Field(description="usable − used; negative when it does not fit.")
    outside_budget_bytes: int = Field(description="What the engine takes outside usable, from capacity − usable "
                                                  "(vLLM's memory in use at start-up, 0.11/0.19's CUDA graphs, "
                                                  "DeepSeek Sparse Attention's late buffers); the device does not fit "
                                                  "when it is more.")
    fits: bool = Field(description="This device's memory holds its share: used within usable and outside_budget "
                                   "within capacity − usable.  Memory only: a format the engine refuses (refusal) "
                                   "does not fit whatever its devices say.")


class FormatOut(BaseModel):
    """The totals of one weight format: bytes, verdict, devices and the solved limits."""

    format: str
    weights_bytes: int
    bits_per_weight: float
    weights_by_role: dict[str, int]
    kv_cache_bytes: int = Field(description="kv_cache.bytes: the workload's total before any split (the devices' "
                                            "own figures are devices[].kv_cache_bytes).")
    used_bytes: int
    fits: bool
    max_context_length: int | None
    context_limited_by: Literal["memory", "model", "search_limit", "engine"] = Field(
        description="What ends max_context_length: memory, the model's trained context, the search limit "
                    "(2^24 tokens) for a model that states no trained context, or engine: the engine refuses the "
                    "format or layout (refusal), so no context runs (max_context_length null).")
    max_concurrent_sequences: int
    sequences_limited_by: Literal["memory", "search_limit", "engine"] = Field(
        description="What ends max_concurrent_sequences: memory, the search limit (2^24, the most a plan may "
                    "ask for), or engine: the engine refuses the format or layout (0 sequences).")
    min_devices: int | None
    kv_capacity_tokens: int | None = Field(description="Tokens the engine's KV pool holds on the tightest "
                                                       "device, as it logs them (vLLM: GPU KV cache size; for a "
                                                       "model with sliding-window, chunked or linear-attention "
                                                       "layers, blocks per group, not context x sequences).")
    refusal: str | None = Field(description="Why the engine refuses this layout (then fits is false), or null.")
    devices: list[DeviceOut]


class PlanParameters(BaseModel):
    total: int
    by_role: dict[str, int]
    active_per_token: int


class PlanWeights(BaseModel):
    format: str
    bytes: int
    bits_per_weight: float
    by_role: dict[str, int]


class PlanKVCache(BaseModel):
    dtype: str
    bytes_per_token: int = Field(description="Bytes per token over every layer, before any split.")
    bytes: int = Field(description="Total for the workload before any split: the tokens each sequence keeps "
                                   "(paged; a sliding-window or chunked layer its window) × sequences.  What each "
                                   "device holds, the figure the fit charges, is devices[].kv_cache_bytes; for "
                                   "sliding-window or chunked layers under vLLM that also counts one request's "
                                   "tokens in flight, in vLLM's blocks, which this total does not.")
    block_size: int
    pool_bytes: int = Field(description="What the engine leaves for its KV pool on the tightest device: usable − "
                                        "weights − activations − overhead (vLLM: Available KV cache memory).")
    capacity_tokens: int | None = Field(description="Tokens that pool holds, block-rounded as the engine rounds "
                                                    "them: what vLLM logs as 'GPU KV cache size: N tokens' (null "
                                                    "for the generic engine).")
    engine_max_concurrency: float | None = Field(
        description="The engine's own 'Maximum concurrency for <context> tokens per request' (vLLM's formula: "
                    "pool blocks over the blocks one request of the context needs); null for the generic engine. "
                    "nibble's own figure at the context is max_concurrent_sequences.  A plan that fits has it at "
                    "least the requested sequences, except for a model with sliding-window or chunked layers: "
                    "vLLM's figure reserves one step's tokens in flight for every request at once, the plan for one "
                    "(the scheduler has one step in flight over all of them), and then it is at least 1.")


class PlanSpeculative(BaseModel):
    method: str
    num_speculative_tokens: int
    draft_layers: int = Field(description="The decoder layers the drafter runs beside the model's (mtp: the model's "
                                          "MTP layers; ngram: none).")


class PlanEngine(BaseModel):
    name: str
    version: str | None
    max_batched_tokens: int = Field(description="The scheduler's tokens per step the plan assumes.")
    max_num_seqs: int = Field(description="The scheduler's sequences per batch the plan assumes.")
    speculative: PlanSpeculative | None = Field(None, description="The speculative decoding planned, if any.")


class PlanHardware(BaseModel):
    device: str | None
    name: str
    capacity_bytes: int
    count: int
    compute_capability: str | None = Field(description="The devices' CUDA compute capability the plan checked "
                                                       "formats against; null when not known.")
    compute_units: int | None = Field(description="The devices' SM count the engine's buffers were sized by; null "
                                                  "when not known.")


class SpeedFormatOut(BaseModel):
    """One format's bound: what the slowest path reads per decode step and the speeds that allows."""

    format: str
    bytes_read_per_step: int = Field(description="Per decode step on the slowest path (one device per pipeline "
                                                 "stage): weights read plus KV cache read.")
    weight_bytes_read_per_step: int
    kv_bytes_read_per_step: int
    decode_tokens_per_second_per_sequence: float | None = Field(description="Upper bound; null without a "
                                                                             "catalogued bandwidth.")
    decode_tokens_per_second_aggregate: float | None = Field(description="Upper bound over every sequence.")
    prefill_flops: int = Field(description="FLOPs to prefill one full-context prompt.")
    prefill_seconds: float | None = Field(description="Lower bound on the time to prefill one full-context prompt.")


class SpeedOut(BaseModel):
    """An upper bound on decode speed and a lower bound on prefill time, from the device's datasheet peaks."""

    device: str
    memory_bandwidth_bytes_per_second: int | None
    dense_flops_per_second: dict[str, int | None] = Field(description="bf16, fp16, fp8 (FLOP/s) and int8 (op/s).")
    basis: str
    formats: dict[str, SpeedFormatOut]


class CheckpointOut(BaseModel):
    """A checkpoint read from its headers: tensors and bytes planned, MTP tensors set apart, unknown tensors."""

    format: str
    tensors: int
    bytes: int = Field(description="Tensor bytes planned (the files' metadata and MTP tensors excluded).")
    mtp_tensors: int = Field(description="Multi-token-prediction tensors engines skip at load: not planned.")
    mtp_bytes: int
    unknown_tensors: list[str] = Field(description="Tensors of no module of the model, planned as 'other'.")


class QuantizeRecipe(BaseModel):
    """The form fields of ``POST /v1/quantize`` (and the checkpoint job) that quantize to the fit, as they are."""

    method: str
    budget_bytes: int
    include: str | None = Field(description="The tensors the budget covers (null: every 2-D tensor).")
    output: str = Field(description="nibble: the one output that stores a different format per tensor.")


class FitOut(BaseModel):
    """The largest mix of the allowed formats that fits, and the recipe that quantizes to it."""

    fits: bool
    reason: str | None = Field(description="Why no mix fits (fits is false); null when one does.")
    recipe: QuantizeRecipe
    bits_per_weight: float = Field(description="8 x budget_bytes / elements.")
    elements: int = Field(description="Weights of the tensors the budget covers.")
    formats: dict[str, int] = Field(description="Tensors of the planned mix by format (the quantizer's own "
                                                "choice within the budget follows measured errors).")
    formats_by_role: dict[str, dict[str, int]]
    next_step_weights_bytes: int | None = Field(description="The weights of the next larger mix, which does not "
                                                            "fit; null when every tensor is already 16-bit.")
    refused_formats: dict[str, str] = Field(description="The formats the mix may take (by label) that the engine "
                                                        "refuses on these devices, each with the engine's reason: "
                                                        "no tensor takes them.")
    assumptions: list[str]


class PlanResponse(BaseModel):
    """Will it fit: the deployed format's answer, per device, with 16-bit beside INT4 in `comparison`."""

    model: str
    fits: bool
    refusal: str | None = Field(description="Why the engine refuses this layout: the plan is not deployable "
                                            "(fits is false); null when it accepts it.")
    engine: PlanEngine
    parameters: PlanParameters
    weights: PlanWeights
    kv_cache: PlanKVCache
    activation: Term
    runtime_overhead: Term
    devices: list[DeviceOut]
    hardware: PlanHardware
    workload: WorkloadIn
    parallel: ParallelIn
    memory_utilization: float
    max_context_length: int | None
    context_limited_by: Literal["memory", "model", "search_limit", "engine"] = Field(
        description="What ends max_context_length: memory, the model's trained context, the search limit "
                    "(2^24 tokens) for a model that states no trained context, or engine: the engine refuses the "
                    "format or layout (refusal), so no context runs (max_context_length null).")
    max_concurrent_sequences: int
    sequences_limited_by: Literal["memory", "search_limit", "engine"] = Field(
        description="What ends max_concurrent_sequences: memory, the search limit (2^24, the most a plan may "
                    "ask for), or engine: the engine refuses the format or layout (0 sequences).")
    min_devices: int | None
    comparison: dict[str, FormatOut] = Field(description="The same totals at 16-bit and at INT4.")
    warnings: list[str]
    speed: SpeedOut | None = Field(None, description="Decode and prefill bounds for a catalogued device with "
                                                     "published peaks; null for a raw memory size.")
    checkpoint: CheckpointOut | None = Field(None, description="What the checkpoint's headers held, when given.")
    fit: FitOut | None = Field(None, description="With weights.format fit: the mix planned here and its recipe.")


def plan_from_core(result: Plan, notes: tuple[str, ...] = (), speed: dict[str, object] | None = None,
                   fit: dict[str, object] | None = None) -> PlanResponse:
    """The wire answer for a core `Plan`, as a model (the CLI and client use it); the same bytes
    `plan_json_from_core` sends, so the two can never differ."""
    return PlanResponse.model_validate_json(plan_json_from_core(result, notes, speed, fit))


def speed_dict(spec: ModelSpec, result: Plan) -> dict[str, object] | None:
    """The ``speed`` section of a plan on a catalogued device with published peaks, else None."""
    if result.hardware.device_id is None:
        return None
    performance = catalog.get_device_performance(result.hardware.device_id)
    if performance is None or performance.memory_bandwidth_bytes_per_second is None:
        return None
    bounds = speed_bounds(spec, result, performance)
    return {
        "device": performance.device_id,
        "memory_bandwidth_bytes_per_second": performance.memory_bandwidth_bytes_per_second,
        "dense_flops_per_second": {"bf16": performance.bf16_flops_per_second,
                                   "fp16": performance.fp16_flops_per_second,
                                   "fp8": performance.fp8_flops_per_second, "int8": performance.int8_ops_per_second},
        "basis": speed_basis(performance),
        "formats": {name: {"format": bound.format, "bytes_read_per_step": bound.bytes_read_per_step,
                           "weight_bytes_read_per_step": bound.weight_bytes_read_per_step,
                           "kv_bytes_read_per_step": bound.kv_bytes_read_per_step,
                           "decode_tokens_per_second_per_sequence": bound.decode_tokens_per_second_per_sequence,
                           "decode_tokens_per_second_aggregate": bound.decode_tokens_per_second_aggregate,
                           "prefill_flops": bound.prefill_flops, "prefill_seconds": bound.prefill_seconds}
                    for name, bound in bounds.items()},
    }


def plan_answer_json(body: PlanRequest, spec: ModelSpec, result: Plan, fit: dict[str, object] | None = None) -> bytes:
    """What ``POST /v1/plan`` sends for `body`: the plan, the request's notes and the speed bound."""
    return plan_json_from_core(result, request_notes(body), speed_dict(spec, result), fit)


def fit_dict(recipe: FitRecipe) -> dict[str, object]:
    """The answer's ``fit`` section (`FitOut`) for a core `FitRecipe`."""
    return {"fits": recipe.fits, "reason": recipe.reason,
            "recipe": {"method": recipe.method, "budget_bytes": recipe.budget_bytes, "include": recipe.include,
                       "output": "nibble"},
            "bits_per_weight": float(recipe.bits_per_weight), "elements": recipe.elements,
            "formats": dict(recipe.formats), "formats_by_role": {k: dict(v) for k, v in recipe.formats_by_role.items()},
            "next_step_weights_bytes": recipe.next_step_weights_bytes,
            "refused_formats": dict(recipe.refused_formats), "assumptions": list(recipe.assumptions)}


def answer_plan_json(body: PlanRequest, spec: ModelSpec, hardware: Hardware, workload: Workload,
                     options: PlanOptions) -> bytes:
    """``POST /v1/plan``'s answer: the plan, or with ``weights.format`` fit the largest mix that fits
    (`quant_core.fit.fit_plan`, a search over `plan()`) with its quantization recipe."""
    if body.weights.format == FIT:
        recipe = fit_plan(spec, hardware, workload, options)
        return plan_answer_json(body, spec, recipe.plan, fit_dict(recipe))
    return plan_answer_json(body, spec, plan(spec, hardware, workload, options))


# The answer as plain dicts, serialized once: `create_plan` sends these bytes as they are.  Building
# the nested models of `plan_from_core` and serializing them costs more than `plan()` itself, and
# FastAPI would validate a returned model against `response_model` once more.  Keys follow the
# field order of the models above and float fields are made floats, so the bytes equal
# ``plan_from_core(result).model_dump_json()`` (a test checks it for every preset and fixture).


def _speculative_dict(speculative: SpeculativeDecoding | None) -> dict[str, object] | None:
    if speculative is None:
        return None
    return {"method": speculative.method, "num_speculative_tokens": speculative.num_speculative_tokens,
            "draft_layers": speculative.draft_layers}


def _device_dict(device: DevicePlan) -> dict[str, object]:
    return {"index": device.index, "pipeline_stage": device.pipeline_stage, "tensor_rank": device.tensor_rank,
            "layers": list(device.layers), "capacity_bytes": device.capacity_bytes,
            "usable_bytes": device.usable_bytes, "weights_bytes": device.weights_bytes,
            "kv_cache_bytes": device.kv_cache_bytes, "activation_bytes": device.activation_bytes,
            "overhead_bytes": device.overhead_bytes, "used_bytes": device.used_bytes,
            "headroom_bytes": device.headroom_bytes, "outside_budget_bytes": device.outside_budget_bytes,
            "fits": device.fits}


def _format_dict(result: FormatPlan) -> dict[str, object]:
    return {"format": result.format, "weights_bytes": result.weights_bytes,
            "bits_per_weight": float(result.bits_per_weight), "weights_by_role": dict(result.weights_by_role),
            "kv_cache_bytes": result.kv_cache_bytes, "used_bytes": result.used_bytes, "fits": result.fits,
            "max_context_length": result.max_context_length, "context_limited_by": result.context_limited_by,
            "max_concurrent_sequences": result.max_concurrent_sequences,
            "sequences_limited_by": result.sequences_limited_by, "min_devices": result.min_devices,
            "kv_capacity_tokens": result.kv_capacity_tokens, "refusal": result.refusal,
            "devices": [_device_dict(d) for d in result.devices]}


def request_notes(body: PlanRequest) -> tuple[str, ...]:
    """Remarks on the request itself that the planner cannot make: a ``config.json`` read as the family of its
    architecture, and its keys that nothing read (a misspelt key would otherwise be dropped without a word)."""
    config = body.model.hf_config
    if config is None:
        return ()
    notes = []
    family = architecture_family(config)
    if family is not None:
        notes.append(f"model_type {config.get('model_type')!r} has no reader in nibble: read as {family!r}, the "
                     f"family of its architecture {config['architectures'][0]} (the model class vLLM loads it with).")
    unread = unread_config_keys(config)
    if unread:
        notes.append(f"These config.json keys were not used to size the model (check the spelling of any that "
                     f"should be): {', '.join(unread)}.")
    return tuple(notes)


def plan_json_from_core(result: Plan, notes: tuple[str, ...] = (), speed: dict[str, object] | None = None,
                        fit: dict[str, object] | None = None) -> bytes:
    """The wire answer for a core `Plan` as JSON bytes: ``plan_from_core(result).model_dump_json()``, faster;
    `notes` (`request_notes`) follow the planner's warnings."""
    primary = result.primary
    comparison = {name: _format_dict(format_plan) for name, format_plan in result.comparison.items()}
    # the deployed format is one of the comparison's (the same object): its device list is made once
    devices = next((comparison[name]["devices"] for name, format_plan in result.comparison.items()
                    if format_plan is primary), None)
    return to_json({
        "model": result.model, "fits": result.fits, "refusal": result.refusal,
        "engine": {"name": result.engine, "version": result.engine_version,
                   "max_batched_tokens": result.max_batched_tokens, "max_num_seqs": result.max_num_seqs,
                   "speculative": _speculative_dict(result.options.speculative)},
        "parameters": {"total": result.total_parameters, "by_role": dict(result.parameters_by_role),
                       "active_per_token": result.active_parameters_per_token},
        "weights": {"format": primary.format, "bytes": primary.weights_bytes,
                    "bits_per_weight": float(primary.bits_per_weight), "by_role": dict(primary.weights_by_role)},
        "kv_cache": {"dtype": result.kv_cache_dtype, "bytes_per_token": result.kv_bytes_per_token,
                     "bytes": result.kv_cache_bytes, "block_size": result.options.block_size,
                     "pool_bytes": primary.kv_pool_bytes, "capacity_tokens": primary.kv_capacity_tokens,
                     "engine_max_concurrency": (None if primary.engine_max_concurrency is None
                                                else float(primary.engine_max_concurrency))},
        "activation": {"bytes": result.activation.bytes, "basis": result.activation.basis},
        "runtime_overhead": {"bytes": result.runtime_overhead.bytes, "basis": result.runtime_overhead.basis},
        "devices": [_device_dict(d) for d in primary.devices] if devices is None else devices,
        "hardware": {"device": result.hardware.device_id, "name": result.hardware.name,
                     "capacity_bytes": result.hardware.capacity_bytes, "count": result.hardware.count,
                     "compute_capability": catalog.compute_capability_text(result.hardware.compute_capability),
                     "compute_units": result.hardware.compute_units},
        "workload": {"context_length": result.workload.context_length,
                     "concurrent_sequences": result.workload.concurrent_sequences},
        "parallel": {"tensor": result.tensor_parallel, "pipeline": result.pipeline_parallel,
                     "data": result.data_parallel},
        "memory_utilization": float(result.options.memory_utilization),
        "max_context_length": primary.max_context_length, "context_limited_by": primary.context_limited_by,
        "max_concurrent_sequences": primary.max_concurrent_sequences,
        "sequences_limited_by": primary.sequences_limited_by, "min_devices": primary.min_devices,
        "comparison": comparison,
        "warnings": [*result.warnings, *notes],
        "speed": speed,
        "checkpoint": _checkpoint_dict(result),
        "fit": fit,
    })


def _checkpoint_dict(result: Plan) -> dict[str, object] | None:
    summary = result.options.scheme.checkpoint if result.options.scheme is not None else None
    if summary is None:
        return None
    return {"format": summary.format, "tensors": summary.tensors, "bytes": summary.bytes,
            "mtp_tensors": summary.mtp_tensors, "mtp_bytes": summary.mtp_bytes,
            "unknown_tensors": list(summary.unknown)}


# --- sweep -------------------------------------------------------------------------------------


class SweepAxes(BaseModel):
    """The values to vary; each list replaces the base request's value, and rows are their product."""

    model_config = ConfigDict(extra="forbid", strict=True)

    context_lengths: list[int] | None = Field(None, min_length=1)
    concurrent_sequences: list[int] | None = Field(None, min_length=1)
    formats: list[FormatName | Literal["as_shipped", "checkpoint"]] | None = Field(
        None, min_length=1, description="Weight formats; int4 takes the request's group_size and symmetric; "
                                        "as_shipped is the model's quantization_config, checkpoint the request's "
                                        "checkpoint headers (the comparison's keys are all accepted).")
    device_counts: list[int] | None = Field(None, min_length=1)
    devices: list[str] | None = Field(None, min_length=1, max_length=64, description=(
        "Device ids to set side by side: for each, the fewest devices (in tensor parallel) that fit each "
        "format, with the headroom and decode bound at that count (the answer's `devices`)."))


class SweepRequest(PlanRequest):
    """A plan body plus the axes to sweep."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
        "sweep": {"context_lengths": [4096, 8192, 16384, 32768], "formats": ["bf16", "int4"]},
    }]})

    sweep: SweepAxes


class SweepRow(BaseModel):
    """One combination: its inputs, verdict and per-device worst case (the fullest device)."""

    context_length: int
    concurrent_sequences: int
    format: str
    device_count: int
    fits: bool
    weights_bytes: int
    kv_cache_bytes: int = Field(description="The workload's KV total before any split, as kv_cache.bytes.")
    used_bytes: int = Field(description="Total over every device.")
    max_device_used_bytes: int
    usable_bytes: int = Field(description="Usable bytes of one device.")
    min_headroom_bytes: int
    max_context_length: int | None
    max_concurrent_sequences: int


class DeviceFormatFit(BaseModel):
    """One format on one device type: the fewest devices that fit and what that count leaves."""

    format: str
    min_devices: int | None = Field(description="Fewest devices in tensor parallel that fit; null if none does.")
    min_headroom_bytes: int | None = Field(description="Headroom of the fullest device at min_devices.")
    used_bytes_per_device: int | None = Field(description="Bytes on the fullest device at min_devices.")
    decode_tokens_per_second_per_sequence: float | None = Field(
        description="Upper bound at min_devices (null without a catalogued bandwidth).")
    decode_tokens_per_second_aggregate: float | None


class DeviceFit(BaseModel):
    """One device type of ``sweep.devices``, every planned format side by side."""

    device: str
    name: str
    memory_bytes: int
    formats: dict[str, DeviceFormatFit]


class SweepResponse(BaseModel):
    """One row per combination of the swept values, in nested order (contexts innermost); with
    ``sweep.devices``, the device types side by side in `devices`."""

    model: str
    rows: list[SweepRow]
    devices: list[DeviceFit] | None = None


def device_fits(spec: ModelSpec, device_ids: list[str], workload: Workload, options: PlanOptions) -> list[DeviceFit]:
    """For each device id, each format's fewest devices (the planner's own `min_devices` solver), then the plan
    at that count for its headroom and speed bound."""
    fits: list[DeviceFit] = []
    for index, device_id in enumerate(device_ids):
        with field_prefix(f"sweep.devices[{index}]"):
            device = catalog.get_device(device_id)
        one = plan(spec, Hardware(device.planning_bytes, 1, device.id, device.name), workload, options)
        formats = dict(one.comparison)
        if all(result.format != one.primary.format for result in formats.values()):
            formats[one.primary.format] = one.primary
        at_count: dict[int, Plan] = {}
        out: dict[str, DeviceFormatFit] = {}
        for name, result in formats.items():
            count = result.min_devices
            if count is None:
                out[name] = DeviceFormatFit(format=result.format, min_devices=None, min_headroom_bytes=None,
                                            used_bytes_per_device=None, decode_tokens_per_second_per_sequence=None,
                                            decode_tokens_per_second_aggregate=None)
                continue
            if count not in at_count:
                at_count[count] = plan(spec, Hardware(device.planning_bytes, count, device.id, device.name),
                                       workload, options)
            planned = at_count[count]
            chosen = planned.comparison.get(name, planned.primary)
            speed = speed_dict(spec, planned)
            bound = speed["formats"][name] if speed else None  # type: ignore[index]
            out[name] = DeviceFormatFit(
                format=chosen.format, min_devices=count,
                min_headroom_bytes=min(d.headroom_bytes for d in chosen.devices),
                used_bytes_per_device=max(d.used_bytes for d in chosen.devices),
                decode_tokens_per_second_per_sequence=bound["decode_tokens_per_second_per_sequence"] if bound else None,
                decode_tokens_per_second_aggregate=bound["decode_tokens_per_second_aggregate"] if bound else None)
        fits.append(DeviceFit(device=device.id, name=device.name, memory_bytes=device.memory_bytes, formats=out))
    return fits


#: a plan from checkpoint headers sums the checkpoint's rows at each call, about 0.56 us a row (8,003 rows: 4.5 ms a
#: plan), where a planned device costs about 20 us (BENCHMARKS.md, "Sweeps": 5.2 s for 2^18 of them); so a sweep from
#: headers counts each plan as one device more per this many rows.  A checkpoint's repeated tensors fold into one
#: row (DeepSeek-V3's 90,427 tensors are 37 rows: one device), tensors of no module of the model each named apart do
#: not (session 22's probe: 8,000 of them made a 986 KB sweep body 18.5 s of CPU)
CHECKPOINT_ROWS_PER_DEVICE = 32
#: plans `device_fits` makes for each of ``sweep.devices``: one, then each format (three at most) at its fewest
DEVICE_FIT_PLANS = 4
#: devices a pipeline stage counts as in a sweep: the tensor-parallel ranks of a stage are planned once (4,096 rows of
#: 64 devices in one stage: 1.5 s), each stage apart, 28-70 us a stage a plan against the ~20 us a device row the
#: limit was sized on (64 stages: 1.8 ms a plan for Llama-3.1-70B, 3.8-4.6 ms for 4,096 layers alternating dense or
#: sliding; session 22's probe: 7 s and 16-19 s of CPU for 4,096 rows)
STAGE_DEVICES = 4


def sweep_row_devices(count: int, pipeline: int) -> int:
    """The devices one sweep row of `count` devices in `pipeline` stages counts toward ``max_sweep_device_rows``:
    its devices, or with pipeline stages `STAGE_DEVICES` a stage when that is more."""
    return count if pipeline == 1 else max(count, STAGE_DEVICES * pipeline)


def check_sweep_size(body: SweepRequest, max_rows: int, max_device_rows: int = 1 << 18,
                     checkpoint_rows: int = 0) -> None:
    """Refuse (413) a sweep of more than `max_rows` rows, or more than `max_device_rows` devices summed over its
    rows (`sweep_row_devices`), from the request alone: the route asks before the sweep waits for a place (issue
    17's attack mix).
    With `checkpoint_rows` (the rows of the checkpoint its headers fold into, known once they are read), each of
    the sweep's plans counts one device more per `CHECKPOINT_ROWS_PER_DEVICE` rows, every row planned at the
    checkpoint's scheme (an upper bound when ``sweep.formats`` names others)."""
    axes = body.sweep
    counts = axes.device_counts or [body.hardware.count]
    total = len(counts) * math.prod(len(axis or [None]) for axis in (axes.formats, axes.concurrent_sequences,
                                                                     axes.context_lengths))
    if total > max_rows:
        raise LimitExceeded("max_sweep_rows", total, max_rows, field="sweep")
    device_rows = sum(sweep_row_devices(count, body.parallel.pipeline) for count in counts) * (total // len(counts))
    plans = total + DEVICE_FIT_PLANS * len(axes.devices or [])
    per_plan = -(-checkpoint_rows // CHECKPOINT_ROWS_PER_DEVICE)
    if device_rows + plans * per_plan > max_device_rows:
        problem = LimitExceeded("max_sweep_device_rows", device_rows + plans * per_plan, max_device_rows,
                                field="sweep")
        if body.parallel.pipeline > 1:
            problem.detail += (f" (each of the {body.parallel.pipeline} pipeline stages of a row counted as "
                               f"{STAGE_DEVICES} devices: a stage is planned apart, its tensor-parallel ranks once)")
        if checkpoint_rows:
            problem.detail += (f" (the headers' tensors fold into {checkpoint_rows} checkpoint rows, which each of "
                               f"the sweep's {plans} plans sums: counted as {per_plan} device(s) more a plan, one per "
                               f"{CHECKPOINT_ROWS_PER_DEVICE} rows)")
        raise problem


def sweep_rows(body: SweepRequest, max_config_depth: int, max_rows: int,
               max_device_rows: int = 1 << 18, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
               headers: CheckpointHeaders | None = None) -> SweepResponse:
    """Run `plan` once per combination of the sweep axes.

    Refused (413) past `max_rows` rows, or past `max_device_rows` devices
    summed over the rows: a plan's work grows with its device count (every
    device is planned), so 4,096 rows of 1,024 devices would hold the server
    for half a minute.
    """
    spec, hardware, workload, options = plan_to_core(body, max_config_depth, max_header_bytes, headers)
    has_checkpoint = headers is not None or body.checkpoint is not None
    axes = body.sweep
    checkpoint_rows = len(options.scheme.checkpoint_rows) if options.scheme is not None else 0
    check_sweep_size(body, max_rows, max_device_rows, checkpoint_rows)
    counts = axes.device_counts or [hardware.count]
    formats = axes.formats or [body.weights.format]
    sequences = axes.concurrent_sequences or [workload.concurrent_sequences]
    contexts = axes.context_lengths or [workload.context_length]
    rows: list[SweepRow] = []
    for (i_count, count), (_, name), (i_sequences, sequence_count), (i_context, context) in itertools.product(
            *(enumerate(axis) for axis in (counts, formats, sequences, contexts))):
        if name in ("as_shipped", "checkpoint"):
            scheme = options.shipped if name == "as_shipped" else options.scheme
            if scheme is None or (name == "checkpoint") != has_checkpoint:
                raise InvalidSpec("sweep.formats", name, "the model ships no quantization_config" if name ==
                                  "as_shipped" else "the request carries no checkpoint headers")
            weight_format = options.weight_format
        else:
            weight_format = weight_format_to_core(body.weights, name)
            scheme = weight_scheme_to_core(body.weights, body.runtime.float_format, name) if axes.formats \
                else options.scheme
        # a bad swept value is named where the client wrote it: sweep.context_lengths[3], not the row's workload
        axis_fields = {"hardware.count": ("device_counts", i_count),
                       "workload.concurrent_sequences": ("concurrent_sequences", i_sequences),
                       "workload.context_length": ("context_lengths", i_context)}
        try:
            row_hardware = replace(hardware, count=count)
            row_options = replace(options, weight_format=weight_format, scheme=scheme,
                                  tensor_parallel=None if axes.device_counts else options.tensor_parallel)
            result = plan(spec, row_hardware, Workload(context, sequence_count), row_options).primary
        except NibbleError as exc:
            axis, index = axis_fields.get(exc.field, ("", 0))
            exc.field = f"sweep.{axis}[{index}]" if axis and getattr(axes, axis) else exc.field
            raise
        rows.append(SweepRow(
            context_length=context, concurrent_sequences=sequence_count, format=result.format,
            device_count=count, fits=result.fits, weights_bytes=result.weights_bytes,
            kv_cache_bytes=result.kv_cache_bytes, used_bytes=result.used_bytes,
            max_device_used_bytes=max(d.used_bytes for d in result.devices),
            usable_bytes=result.devices[0].usable_bytes,
            min_headroom_bytes=min(d.headroom_bytes for d in result.devices),
            max_context_length=result.max_context_length, max_concurrent_sequences=result.max_concurrent_sequences,
        ))
    devices = None
    if axes.devices:
        devices = device_fits(spec, axes.devices, workload,
                              replace(options, tensor_parallel=None, pipeline_parallel=1))
    return SweepResponse(model=spec.name, rows=rows, devices=devices)

