"""One tensor file quantized, compared or dequantized (a `.safetensors` or `.npy` on disk), a whole checkpoint's
counterpart (quant_core/checkpoint/).

`quantize_file` quantizes the selected tensors of a file by one method and
writes the result as nibble's file or an engine format (GPTQ, AWQ,
compressed-tensors, GGUF); `compare_file` measures several methods side by
side; `dequantize_file` turns a nibble file back into floats.  Each takes a
`QuantizeJob` (or the path) and `ReadLimits` and returns its report as a
JSON-able dict.  Under a byte budget (`QuantizeJob.budget_bytes` or
``bits_per_weight``) each tensor gets its own format (budget.py).
"""

from quant_core.single_file.jobs import (
    EXPORT_REPORT_KEY,
    OUTPUT_SUFFIXES,
    DequantizeDtype,
    OutputKind,
    QuantizeJob,
    ReadLimits,
    compare_file,
    dequantize_file,
    load_tensors,
    quantize_file,
)

__all__ = [
    "EXPORT_REPORT_KEY",
    "OUTPUT_SUFFIXES",
    "DequantizeDtype",
    "OutputKind",
    "QuantizeJob",
    "ReadLimits",
    "compare_file",
    "dequantize_file",
    "load_tensors",
    "quantize_file",
]
