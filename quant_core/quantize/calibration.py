"""Synthetic calibration activations that look like a transformer layer's inputs.

Real LLM activations (the inputs of q/k/v or MLP projections) are not i.i.d.:
channels are strongly correlated (a low-rank structure from the residual
stream), their scales differ channel to channel, and a handful of channels
carry systematic outliers tens of times larger than the rest (Dettmers et al.
2022, LLM.int8(); Xiao et al. 2023, SmoothQuant).  GPTQ's advantage over RTN
comes exactly from that structure, so tests and benchmarks use:

``X = (Z_low · B + ε) · diag(c)`` with

* ``Z_low [n, rank]`` standard normal and ``B [rank, in_features]`` standard
  normal / sqrt(rank): correlated channels (`rank` = in_features / 16 by default);
* ``ε`` i.i.d. normal × `noise` (0.3): the per-token, uncorrelated part;
* ``c`` per-channel scales, log-normal (σ = 0.5), times `outlier_gain` (20)
  on `outlier_channels` (6) randomly chosen channels.

Deterministic for a given `seed` (NumPy's default_rng); float32 throughout.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidSpec


def synthetic_activations(rows: int, in_features: int, *, seed: int = 0, rank: int | None = None,
                          noise: float = 0.3, outlier_channels: int = 6, outlier_gain: float = 20.0
                          ) -> NDArray[np.float32]:
    """``[rows, in_features]`` float32 activations with correlated and outlier channels (module docstring)."""
    if rows <= 0 or in_features <= 0:
        raise InvalidSpec("shape", [rows, in_features], "rows and in_features must be positive")
    generator = np.random.default_rng(seed)
    rank = rank if rank is not None else max(1, in_features // 16)
    basis = generator.standard_normal((rank, in_features), dtype=np.float32) / np.float32(np.sqrt(rank))
    activations = generator.standard_normal((rows, rank), dtype=np.float32) @ basis
    activations += generator.standard_normal((rows, in_features), dtype=np.float32) * np.float32(noise)
    channel_scale = np.exp(generator.normal(0.0, 0.5, in_features)).astype(np.float32)
    outliers = generator.choice(in_features, size=min(outlier_channels, in_features), replace=False)
    channel_scale[outliers] *= np.float32(outlier_gain)
    activations *= channel_scale
    return activations
