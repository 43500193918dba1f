"""gptq: the fast sweep gives the codes of the paper's column-by-column recurrence, and its factor is right."""

from __future__ import annotations

import numpy as np
import pytest

from quant_core.errors import CalibrationError
from quant_core.formats import WeightFormat, int4
from quant_core.quantize import quantize
from quant_core.quantize.api import _ChunkReader
from quant_core.quantize.calibration import synthetic_activations
from quant_core.quantize.gptq import (
    DAMPENING,
    DAMPENING_ATTEMPTS,
    _group_parameters,
    error_feedback_factor,
    gptq,
    hessian,
)

SCHEMES = [int4(128), int4(64, symmetric=True), int4(32, zero="fp16"), int4(None), int4(256)]


def _paper_gptq(weights: np.ndarray, activations: np.ndarray, scheme: WeightFormat,
                order: np.ndarray) -> np.ndarray:
    """Frantar et al. 2022, Algorithm 1 without lazy batches, in float64: codes ``[out, in]`` in `order`.

    ``U = chol((H + λI)⁻¹)ᵀ``; each column's error ``(w − ŵ) / U_jj`` is
    subtracted from every later column through row ``j`` of ``U``; a group's
    scale and zero come from its updated weights when the sweep reaches it.
    """
    columns = weights.shape[1]
    group_size = scheme.group_size or columns
    h = hessian(activations, columns).astype(np.float64)[np.ix_(order, order)]
    h += DAMPENING * np.mean(np.diag(h)) * np.eye(columns)
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    work = weights.astype(np.float64)[:, order]
    codes = np.empty(work.shape, dtype=np.uint8)
    scale = zero = np.zeros(work.shape[0])
    for column in range(columns):
        if column % group_size == 0:
            group = np.ascontiguousarray(work[:, column: column + group_size].T, dtype=np.float32)
            originals = np.ascontiguousarray(weights[:, order[column: column + group_size]].T, dtype=np.float32)
            scale32, zero32 = _group_parameters(group, scheme, originals)
            scale, zero = scale32.astype(np.float64), zero32.astype(np.float64)
        weight = work[:, column]
        if scheme.zero == "fp16":
            quantized = np.clip(np.rint(weight * (1.0 / scale) + zero), 0, 15)
        else:
            quantized = np.clip(np.rint(weight * (1.0 / scale)) + zero, 0, 15)
        codes[:, column] = quantized
        error = (weight - (quantized - zero) * scale) / upper[column, column]
        work[:, column + 1:] -= np.outer(error, upper[column, column + 1:])
    return codes


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_codes_match_the_papers_column_by_column_recurrence(scheme: WeightFormat) -> None:
    weights = np.random.default_rng(7).standard_normal((48, 512), dtype=np.float32)
    activations = synthetic_activations(1024, 512, seed=8)
    codes, _, _, g_idx = gptq(weights, scheme, activations, act_order=False, reader=_ChunkReader(weights, 512))
    expected = _paper_gptq(weights, activations, scheme, np.arange(512))
    assert g_idx is None
    # float32 against float64: a code may flip where a value sits on a rounding boundary, and the flip
    # moves that row's later columns a little (seen: 0.4 %); a wrong update rule differs on 10-20 %
    assert np.mean(codes == expected) >= 0.99


def test_act_order_codes_match_the_recurrence_on_columns_by_decreasing_hessian_diagonal() -> None:
    weights = np.random.default_rng(9).standard_normal((48, 512), dtype=np.float32)
    activations = synthetic_activations(1024, 512, seed=10)
    scheme = WeightFormat("int4", 128, layout="gptq")
    order = np.argsort(-np.diag(hessian(activations, 512)), kind="stable")
    codes, _, _, g_idx = gptq(weights, scheme, activations, act_order=True, reader=_ChunkReader(weights, 512))
    expected = _paper_gptq(weights, activations, scheme, order)
    assert np.mean(codes[:, order] == expected) >= 0.99
    assert g_idx is not None
    np.testing.assert_array_equal(g_idx[order], np.arange(512) // 128)


def test_row_chunks_give_the_same_codes_as_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = np.random.default_rng(11).standard_normal((64, 256), dtype=np.float32)
    activations = synthetic_activations(512, 256, seed=12)
    whole = quantize(weights, int4(64), "gptq", activations)
    monkeypatch.setattr("quant_core.quantize.gptq._CHUNK_ELEMENTS", 256 * 10)
    chunked = quantize(weights, int4(64), "gptq", activations)
    np.testing.assert_array_equal(chunked.packed, whole.packed)
    np.testing.assert_array_equal(chunked.scales, whole.scales)


def test_error_feedback_factor_is_unit_lower_and_diagonalises_the_damped_hessian() -> None:
    # S_kj = R_jk / R_kk with H + λI = R Rᵀ, so S⁻ᵀ (H + λI) S⁻¹ = diag(R_kk²)
    matrix = np.random.default_rng(13).standard_normal((300, 300)).astype(np.float32)
    h = (matrix @ matrix.T).astype(np.float32)
    factor, damp = error_feedback_factor(h)
    assert np.allclose(np.triu(factor, 1), 0.0)
    np.testing.assert_allclose(np.diag(factor), 1.0, rtol=1e-6)
    inverse = np.linalg.inv(factor.astype(np.float64))
    congruent = inverse.T @ (h.astype(np.float64) + damp * np.eye(300)) @ inverse
    off_diagonal = congruent - np.diag(np.diag(congruent))
    assert np.abs(off_diagonal).max() <= 1e-3 * np.abs(np.diag(congruent)).max()


@pytest.mark.parametrize("value", [1e30, 1e19], ids=["1e30", "1e19"])
def test_calibration_whose_hessian_overflows_float32_is_a_calibration_error_at_once(value: float) -> None:
    # issue 17 #4: 2/n·XᵀX of 1e30 activations is inf; the dampening loop then never ended (inf > inf is false)
    weights = np.random.default_rng(14).standard_normal((64, 128), dtype=np.float32)
    activations = np.full((64, 128), value, dtype=np.float32)
    with pytest.raises(CalibrationError, match="overflows float32") as raised:
        quantize(weights, int4(128), "gptq", activations)
    assert raised.value.field == "calibration"


def test_dampening_stops_after_a_bounded_number_of_factorisations(monkeypatch: pytest.MonkeyPatch) -> None:
    # λ = 1 %, 10 %, ... 10⁴ × the mean diagonal: seven factorisations, then the calibration is refused
    attempts: list[float] = []

    def never_positive_definite(matrix: np.ndarray) -> np.ndarray:
        attempts.append(float(matrix[0, 0]))
        raise np.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr("quant_core.quantize.gptq._upper_cholesky", never_positive_definite)
    h = np.eye(64, dtype=np.float32)
    with pytest.raises(CalibrationError, match="7 factorisations tried"):
        error_feedback_factor(h)
    assert DAMPENING_ATTEMPTS == 7
    np.testing.assert_allclose(attempts, [1.0 + 0.01 * 10.0 ** k for k in range(7)], rtol=1e-6)


@pytest.mark.parametrize("diagonal", [float("inf"), float("nan"), 0.0], ids=["inf", "nan", "zero"])
def test_a_hessian_not_finite_and_positive_is_refused_without_factorising(diagonal: float) -> None:
    h = np.eye(8, dtype=np.float32)
    h[np.arange(8), np.arange(8)] = diagonal
    with pytest.raises(CalibrationError, match="not finite and positive"):
        error_feedback_factor(h)
