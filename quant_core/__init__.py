"""nibble's domain core: model specs, formats, memory math, planning and INT4 quantization (NumPy).

Everything a script, a notebook, the CLI or the HTTP app needs is importable from here.  The
quantizer is the subpackage `quant_core.quantize` (``from quant_core.quantize import quantize``):
the function is not re-exported here, where its name would hide the subpackage.
"""

from quant_core.catalog import Device, get_device, get_preset, list_devices, list_presets
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.errors import (
    CalibrationError,
    GroupSizeMismatch,
    InvalidSpec,
    InvalidTensor,
    LimitExceeded,
    MissingConfigKey,
    NibbleError,
    NonFiniteValues,
    TensorFileError,
    UnknownName,
    UnsupportedArchitecture,
)
from quant_core.fit import FitRecipe, fit_plan
from quant_core.formats import (
    GGML_BLOCKS,
    KV_DTYPES,
    KVCacheDtype,
    WeightFormat,
    block_format,
    float_format,
    fp8,
    ggml_format,
    int4,
    int8_gptq,
    kv_dtype,
)
from quant_core.gguf_mix import GGUF_FILE_TYPES
from quant_core.hf_config import model_from_hf_config, model_from_sizes, unread_config_keys
from quant_core.inventory import (
    ParameterCount,
    QuantizationPolicy,
    inventory,
    parameter_count,
    weight_bytes,
    weight_bytes_by_role,
)
from quant_core.kv_cache import kv_bytes_per_token, kv_cache_bytes, kv_layers
from quant_core.planner import DevicePlan, Estimate, FormatPlan, Hardware, Plan, PlanOptions, Workload, plan
from quant_core.quantize import (
    METHODS,
    QualityReport,
    QuantizedTensor,
    dequantize,
    payload_bytes,
    quality_report,
    quantized_from_payload,
)
from quant_core.schemes import (
    CheckpointSummary,
    WeightScheme,
    gguf_scheme,
    scheme_bytes,
    scheme_from_quantization_config,
    scheme_of,
)
from quant_core.specs import KVLayer, ModelSpec, TensorEntry
from quant_core.tensorio import (
    export_awq,
    export_compressed_tensors,
    export_gguf,
    export_gptq,
    read_nibble_safetensors,
    read_npy,
    read_safetensors,
    sniff_format,
    write_nibble_safetensors,
)
from quant_core.tensorio.checkpoint_headers import HeaderTensor, read_checkpoint_headers

__all__ = [
    "GGML_BLOCKS",
    "GGUF_FILE_TYPES",
    "KV_DTYPES",
    "METHODS",
    "CalibrationError",
    "CheckpointSummary",
    "Device",
    "DevicePlan",
    "Estimate",
    "FitRecipe",
    "FormatPlan",
    "GroupSizeMismatch",
    "Hardware",
    "HeaderTensor",
    "InvalidSpec",
    "InvalidTensor",
    "KVCacheDtype",
    "KVLayer",
    "LimitExceeded",
    "MissingConfigKey",
    "ModelSpec",
    "NibbleError",
    "NonFiniteValues",
    "ParameterCount",
    "Plan",
    "PlanOptions",
    "QualityReport",
    "QuantizationPolicy",
    "QuantizedTensor",
    "TensorEntry",
    "TensorFileError",
    "UnknownName",
    "UnsupportedArchitecture",
    "WeightFormat",
    "WeightScheme",
    "Workload",
    "block_format",
    "checkpoint_scheme",
    "dequantize",
    "export_awq",
    "export_compressed_tensors",
    "export_gguf",
    "export_gptq",
    "fit_plan",
    "float_format",
    "fp8",
    "get_device",
    "get_preset",
    "ggml_format",
    "gguf_scheme",
    "int4",
    "int8_gptq",
    "inventory",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "kv_dtype",
    "kv_layers",
    "list_devices",
    "list_presets",
    "model_from_hf_config",
    "model_from_sizes",
    "parameter_count",
    "payload_bytes",
    "plan",
    "quality_report",
    "quantized_from_payload",
    "read_checkpoint_headers",
    "read_nibble_safetensors",
    "read_npy",
    "read_safetensors",
    "scheme_bytes",
    "scheme_from_quantization_config",
    "scheme_of",
    "sniff_format",
    "unread_config_keys",
    "weight_bytes",
    "weight_bytes_by_role",
    "write_nibble_safetensors",
]
