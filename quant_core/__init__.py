"""nibble's domain core: model specs, formats, memory math, planning and INT4 quantization (NumPy).

Everything a script, a notebook, the CLI or the HTTP app needs is importable from here.
"""

from quant_core.catalog import Device, get_device, get_preset, list_devices, list_presets
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
from quant_core.formats import KV_DTYPES, KVCacheDtype, WeightFormat, float_format, int4, kv_dtype
from quant_core.hf_config import model_from_hf_config, model_from_sizes
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
from quant_core.specs import KVLayer, ModelSpec, TensorEntry

__all__ = [
    "KV_DTYPES",
    "CalibrationError",
    "Device",
    "DevicePlan",
    "Estimate",
    "FormatPlan",
    "GroupSizeMismatch",
    "Hardware",
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
    "QuantizationPolicy",
    "TensorEntry",
    "TensorFileError",
    "UnknownName",
    "UnsupportedArchitecture",
    "WeightFormat",
    "Workload",
    "float_format",
    "get_device",
    "get_preset",
    "int4",
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
    "plan",
    "weight_bytes",
    "weight_bytes_by_role",
]
