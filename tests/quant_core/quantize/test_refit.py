"""refit against a brute-force search of the same format (int4 zero, fp16 scale, g128).

benchmarks/refit_ceiling.py finds, exactly, the best (fp16 scale, integer zero) of every
group on 256 rows of the issue-3 matrices: refit is 0.005 dB under it.  This test checks
the same property on a small matrix by brute force: every fp16 scale in [0.75, 1.15] × the
RTN scale and the five zeros around RTN's (where the exact optimum lay for every group
measured), each encoded the way the stored file decodes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from quant_core.formats import int4
from quant_core.quantize import dequantize, quantize

GROUP = 128


def _sqnr_db(weights: NDArray[np.float32], approximate: NDArray[np.generic]) -> float:
    reference = weights.astype(np.float64)
    error = np.linalg.norm(approximate.astype(np.float64) - reference)
    return float(-20.0 * np.log10(error / np.linalg.norm(reference)))


def _brute_force(weights: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per group, the best of every fp16 scale in [0.75, 1.15] × RTN's and zeros RTN's ± 2: Ŵ."""
    groups = weights.reshape(-1, GROUP)
    lo = np.minimum(groups.min(axis=1), 0)
    hi = np.maximum(groups.max(axis=1), 0)
    rtn_scale = (hi - lo) / 15
    rtn_zero = np.clip(np.rint(-lo / rtn_scale), 0, 15)
    first = (rtn_scale * 0.75).astype(np.float16).view(np.uint16).astype(np.int64)
    last = (rtn_scale * 1.15).astype(np.float16).view(np.uint16).astype(np.int64)
    steps = np.arange(int((last - first).max()) + 1)
    # positive fp16 values are ordered like their bit patterns
    bits = np.minimum(first[:, None] + steps, last[:, None]).astype(np.uint16)
    scales = bits.view(np.float16).astype(np.float32)[:, :, None]  # [groups, candidates, 1]
    best_error = np.full(groups.shape[0], np.inf, dtype=np.float32)
    best = np.zeros_like(groups)
    rows = np.arange(groups.shape[0])
    for shift in range(-2, 3):
        zeros = np.clip(rtn_zero + shift, 0, 15).astype(np.float32)[:, None, None]
        codes = np.clip(np.rint(groups[:, None, :] * (np.float32(1) / scales)) + zeros, 0, 15)
        values = (codes - zeros) * scales
        errors = ((values - groups[:, None, :]) ** 2).sum(axis=2)
        pick = errors.argmin(axis=1)
        chosen = errors[rows, pick]
        better = chosen < best_error
        best_error = np.where(better, chosen, best_error)
        best = np.where(better[:, None], values[rows, pick], best)
    return best.reshape(weights.shape)


def test_refit_is_within_0_01_db_of_a_brute_force_search_of_its_format() -> None:
    weights = np.random.default_rng(5).standard_normal((8, 4096), dtype=np.float32)
    ceiling = _sqnr_db(weights, _brute_force(weights))
    refit = quantize(weights, int4(128), "refit")
    measured = _sqnr_db(weights, dequantize(refit))
    rtn = quantize(weights, int4(128), "rtn").quality.sqnr_db
    assert ceiling - rtn > 0.4  # the brute force is a real search, not RTN again
    assert measured >= ceiling - 0.01
