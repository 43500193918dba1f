"""INT4 group-wise quantization in NumPy: methods, packing, quality figures.

Public surface: `quantize` / `dequantize` (quant_core/quantize/api.py), the
method ids in `METHODS`, nibble's payload layout (`pack_codes`, `unpack_codes`,
`payload_bytes`, `payload_size`, `payload_array`, `quantized_from_payload`; quant_core/quantize/packing.py)
and `quality_report` (quant_core/quantize/metrics.py).
"""

from quant_core.quantize.api import METHODS, dequantize, quantize
from quant_core.quantize.metrics import quality_report
from quant_core.quantize.packing import (
    pack_codes,
    payload_array,
    payload_bytes,
    payload_size,
    quantized_from_payload,
    unpack_codes,
)
from quant_core.quantize.types import QualityReport, QuantizedTensor

__all__ = [
    "METHODS",
    "QualityReport",
    "QuantizedTensor",
    "dequantize",
    "pack_codes",
    "payload_array",
    "payload_bytes",
    "payload_size",
    "quality_report",
    "quantize",
    "quantized_from_payload",
    "unpack_codes",
]
