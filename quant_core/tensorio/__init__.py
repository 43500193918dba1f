"""Tensor files: validated `.npy` / `.safetensors` readers, nibble's own file, and engine exports.

Readers refuse anything malformed or over a limit with `TensorFileError` /
`LimitExceeded` (quant_core/errors.py) and never another exception type.
Exports write the layouts real engines load: GPTQ, AWQ GEMM,
compressed-tensors pack-quantized and GGUF Q4_0.  Importance statistics
(llama.cpp's imatrix, GGUF or legacy .dat, or safetensors vectors) are read by `read_importance`.
"""

from quant_core.tensorio.awq import awq_config, export_awq
from quant_core.tensorio.compressed_tensors import compressed_tensors_config, export_compressed_tensors
from quant_core.tensorio.gguf_export import export_gguf
from quant_core.tensorio.gptq import export_gptq, gptq_config
from quant_core.tensorio.importance import read_importance, write_importance_dat
from quant_core.tensorio.limits import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_TENSORS
from quant_core.tensorio.nibble_file import read_nibble_int8, read_nibble_safetensors, write_nibble_safetensors
from quant_core.tensorio.npy import read_npy, read_npy_header
from quant_core.tensorio.safetensors_io import (
    SafetensorsFile,
    SafetensorsHeader,
    TensorEntry,
    read_safetensors,
    read_safetensors_header,
    write_safetensors,
)
from quant_core.tensorio.sniff import sniff_format

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_TENSORS",
    "SafetensorsFile",
    "SafetensorsHeader",
    "TensorEntry",
    "awq_config",
    "compressed_tensors_config",
    "export_awq",
    "export_compressed_tensors",
    "export_gguf",
    "export_gptq",
    "gptq_config",
    "read_importance",
    "read_nibble_int8",
    "read_nibble_safetensors",
    "read_npy",
    "read_npy_header",
    "read_safetensors",
    "read_safetensors_header",
    "sniff_format",
    "write_importance_dat",
    "write_nibble_safetensors",
    "write_safetensors",
]
