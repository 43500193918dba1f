"""The public surface: every name in `__all__` exists, and no re-export hides a subpackage."""

from __future__ import annotations

import importlib

import quant_core


def test_every_public_name_is_importable() -> None:
    for name in quant_core.__all__:
        assert hasattr(quant_core, name), name


def test_subpackages_stay_reachable_as_modules() -> None:
    # `import quant_core.quantize.hqq as hqq` needs quant_core.quantize to be the package, not a function
    quantize_package = importlib.import_module("quant_core.quantize")
    assert quant_core.quantize is quantize_package
    assert quant_core.tensorio is importlib.import_module("quant_core.tensorio")
    import quant_core.quantize.hqq as hqq

    assert hqq.LP_NORM == 0.7
