"""Upload parameters and answers of /v1/quantize, /v1/quantize/compare and /v1/dequantize.

The multipart bodies are parsed by app/uploads.py (streamed, size-limited),
so FastAPI does not see them: their OpenAPI description is built here from
the same Pydantic models that validate the text fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from quant_core.quantize import METHODS
from quant_core.quantize.allocation import BUDGET_GROUP_SIZES

OutputName = Literal["report", "nibble", "gptq", "awq", "compressed-tensors", "gguf"]
FormT = TypeVar("FormT", bound=BaseModel)


ZeroName = Literal["auto", "int4", "fp16"]
#: the longest include glob (a tensor name is ~30-80 characters; matching costs name × pattern, quant_core/globs.py)
MAX_INCLUDE_CHARS = 1024
INCLUDE_DESCRIPTION = (f"Glob on tensor names (*, ?, [...], as Python's fnmatch; at most {MAX_INCLUDE_CHARS} "
                       "characters; default: every 2-D float tensor).")


ZERO_DESCRIPTION = ("How asymmetric zero points are stored: int4 (4.156 bits per weight at g128), fp16 (4.25, the "
                    "HQQ format), or auto: fp16 for hqq when the output is report or nibble, int4 otherwise.")


class BudgetFields(BaseModel):
    """The budget both upload forms take: bits per weight or bytes, one of them, for a per-tensor format mix."""

    bits_per_weight: float | None = Field(None, gt=0, le=16, allow_inf_nan=False, description=(
        "A budget in bits per weight over the tensors quantized: each tensor gets the format (int4 at g128, g64 "
        "or g32 by `method`, asymmetric and symmetric; int8 per row; or 16-bit) that minimises the total "
        "importance-weighted error within it (output report or nibble). Or budget_bytes; not both, and without "
        "group_size, which the budget chooses."))
    budget_bytes: int | None = Field(None, gt=0, description="A budget in bytes for the quantized tensors' payload.")

    @field_validator("budget_bytes")
    @classmethod
    def _one_budget(cls, value: int | None, info: ValidationInfo) -> int | None:
        """Refused on budget_bytes (the field named in the problem) when bits_per_weight came too."""
        if value is not None and info.data.get("bits_per_weight") is not None:
            raise ValueError("send bits_per_weight or budget_bytes, not both")
        return value

    # the subclasses' group_size (a form's text "row", or JSON null): a whole row; refused beside a budget
    @field_validator("group_size", mode="before", check_fields=False)
    @classmethod
    def _row(cls, value: object) -> object:
        return None if value in ("", "row", "null", "none") else value

    @field_validator("group_size", check_fields=False)
    @classmethod
    def _not_with_budget(cls, value: int | None, info: ValidationInfo) -> int | None:
        return group_size_without_budget(value, info)


def group_size_without_budget(value: int | None, info: ValidationInfo) -> int | None:
    """Refuse a group size sent beside a budget (the budget chooses each tensor's among `BUDGET_GROUP_SIZES`)
    rather than drop it; validators run on sent values only, so the default never trips it."""
    if info.data.get("bits_per_weight") is not None or info.data.get("budget_bytes") is not None:
        raise ValueError(f"a budget chooses each tensor's group size among {', '.join(map(str, BUDGET_GROUP_SIZES))} "
                         "(and int8, 16-bit): send the budget without group_size")
    return value


class QuantizeForm(BudgetFields):
    """The text fields of a quantize upload."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("rtn", description=f"One of: {', '.join(METHODS)}.")
    group_size: int | None = Field(128, description="32, 64, 128, 256; 'row' or empty for a whole row.")
    symmetric: bool = False
    zero: ZeroName = Field("auto", description=ZERO_DESCRIPTION)
    output: OutputName = Field("report", description=(
        "report: JSON; nibble: nibble's .safetensors (dequantize reads it back); gptq, awq, compressed-tensors: "
        "checkpoints engines load (.safetensors); gguf: Q4_0 (needs group_size 32, symmetric)."))
    include: str | None = Field(None, max_length=MAX_INCLUDE_CHARS, description=INCLUDE_DESCRIPTION)


class CompareForm(BudgetFields):
    """The text fields of a compare upload: the methods, comma-separated or repeated."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: ["rtn", "clip"], min_length=1, max_length=16,
                               description="Methods to compare, e.g. rtn,clip.")
    group_size: int | None = 128
    symmetric: bool = False
    zero: ZeroName = Field("auto", description=ZERO_DESCRIPTION)
    include: str | None = Field(None, max_length=MAX_INCLUDE_CHARS, description=INCLUDE_DESCRIPTION)

    @field_validator("methods", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, list):
            return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        return value

    @field_validator("methods")
    @classmethod
    def _known_once_each(cls, value: list[str]) -> list[str]:
        unknown = [method for method in value if method not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        twice = sorted({method for method in value if value.count(method) > 1})
        if twice:
            raise ValueError(f"lists {twice} more than once; each method is compared once")
        return value


class DequantizeForm(BaseModel):
    """The text fields of a dequantize upload."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


def parse_form(model: type[FormT], fields: Mapping[str, list[str]]) -> FormT:
    """Validate multipart text fields with `model`; errors become a 422 problem naming each field."""
    values: dict[str, Any] = {}
    repeated: list[dict[str, Any]] = []
    for name, items in fields.items():
        annotation = model.model_fields.get(name)
        is_list = annotation is not None and "list" in str(annotation.annotation)
        if not is_list and len(items) > 1:  # which one was meant? neither is taken silently
            repeated.append({"type": "value_error", "loc": ("form", name), "input": items,
                             "msg": f"sent {len(items)} times ({', '.join(map(repr, items[:4]))}); send it once"})
        values[name] = items if is_list else items[-1]
    try:
        form = model.model_validate(values)
    except ValidationError as exc:
        errors = [{**err, "loc": ("form", *err["loc"])} for err in exc.errors(include_url=False)]
        raise RequestValidationError(repeated + errors) from None
    if repeated:
        raise RequestValidationError(repeated)
    return form


def multipart_body(form: type[BaseModel], files: Mapping[str, str], required: tuple[str, ...]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a multipart upload: `files` (name -> description) plus `form`'s fields."""
    schema = form.model_json_schema()
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": description}
        for name, description in files.items()
    }
    properties.update(schema.get("properties", {}))
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": list(required)}}}}}


# --- answers (documented shapes; the jobs return plain dicts of these shapes) --------------------


class ByteCounts(BaseModel):
    input: int = Field(description="Bytes of the uploaded tensor.")
    output: int = Field(description="Bytes of the quantized payload nibble packed (codes, scales, zeros, and "
                        "act-order's g_idx): the same whatever file the output is.")
    predicted: int = Field(description="WeightFormat.payload_bytes_for(shape): the payload the format packs "
                           "(what the planner counts for nibble's own layout).")
    file: int | None = Field(None, description=(
        "Bytes of this weight's tensors in the file written (absent with output=report): gptq, awq, "
        "compressed-tensors hold more than the payload (a GPTQ file's g_idx, and the qzeros a symmetric GPTQ or "
        "AWQ file stores too; WeightFormat.bytes_for in that layout, the planner's figure for such a "
        "checkpoint), gguf its Q4_0 blocks, nibble the payload itself."))


class Quality(BaseModel):
    """Figures measured on the stored result.  JSON has no infinity: a figure that is not a finite number
    is null, and ``exact`` says whether the stored tensor equals the input (then ``sqnr_db`` is infinite)."""

    relative_error: float | None = Field(
        description="‖W − Ŵ‖ / ‖W‖; null when W is all zeros and Ŵ is not (undefined).")
    sqnr_db: float | None = Field(description="−20·log10(relative_error); null when infinite (an exact result).")
    max_abs_error: float
    cosine_similarity: float
    exact: bool = Field(description="True when every stored value equals its input value (no error at all).")
    output_relative_error: float | None = None
    fit_rows: list[int] | None = None
    eval_rows: list[int] | None = None
    weighted_relative_error: float | None = Field(None, description=(
        "With importance statistics h (one per input column): sqrt(Σ h_j (W − Ŵ)²_ij / Σ h_j W²_ij)."))
    weighted_sqnr_db: float | None = Field(None, description="−20·log10(weighted_relative_error).")
    importance_used: bool = Field(False, description=(
        "True when the method minimised the importance-weighted error (rtn, clip, refit, hqq given statistics "
        "for this tensor that are not uniform); false when it was only measured by it."))


class MethodResult(BaseModel):
    method: str
    group_size: int | None
    symmetric: bool
    format: str
    bytes: ByteCounts
    bits_per_weight: float
    quality: Quality
    seconds: float
    note: str | None = Field(None, description="Present when something about this tensor needs saying, e.g. "
                                               "that the calibration activations did not fit it.")


class QuantizedTensorReport(MethodResult):
    name: str
    shape: list[int]


class PassthroughTensor(BaseModel):
    name: str
    shape: list[int]
    dtype: str
    reason: str


class QuantizeTotals(BaseModel):
    input_bytes: int
    quantized_tensors: int
    passthrough_tensors: int
    output_payload_bytes: int
    output_file_tensor_bytes: int | None = Field(None, description=(
        "The quantized tensors' bytes in the file written: the sum of their bytes.file (absent with "
        "output=report)."))
    file_bytes: int | None = Field(None, description=(
        "The size of the file written: every tensor, passed-through ones included, and its header."))


class Allocation(BaseModel):
    """The per-tensor formats chosen under a budget (POST with bits_per_weight or budget_bytes)."""

    budget_bytes: int = Field(description="The budget for the quantized tensors' payload, in bytes.")
    bits_per_weight_budget: float | None = Field(description="The budget as sent in bits per weight, if so.")
    output_bytes: int = Field(description="Bytes the chosen formats take: the sum of the tensors' bytes.output.")
    elements: int = Field(description="Weights in the tensors quantized.")
    bits_per_weight: float = Field(description="8 × output_bytes / elements.")
    error: float = Field(description="The minimised total: Σ over tensors of the squared weighted relative error.")
    formats: dict[str, int] = Field(description="How many tensors took each format.")
    allowed_formats: list[str]


class QuantizeReport(BaseModel):
    """One entry per quantized tensor, and the tensors passed through with why."""

    method: str
    format: str
    tensors: list[QuantizedTensorReport]
    passthrough: list[PassthroughTensor]
    totals: QuantizeTotals
    allocation: Allocation | None = Field(None, description="Present when a budget was given; format is 'mixed'.")
    quantization_config: dict[str, Any] | None = Field(
        None, description="gptq, awq, compressed-tensors: the config a loader expects with the checkpoint.")


class CompareRow(BaseModel):
    name: str
    shape: list[int]
    results: list[MethodResult]
    best_method: str = Field(description="The method with the lowest relative error on this tensor.")


class CompareReport(BaseModel):
    """The figures of each method side by side, per tensor."""

    format: str
    methods: list[str]
    tensors: list[CompareRow]
    passthrough: list[PassthroughTensor]
    allocations: dict[str, Allocation] | None = Field(
        None, description="With a budget: each method's allocation (each result then shows its tensor's format).")
