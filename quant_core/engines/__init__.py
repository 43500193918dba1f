"""Engine profiles: what an inference engine adds to a plan (see `base.EngineProfile`).

`get_engine(name, version)` returns the profile the planner calls; ``"vllm"`` is the one
implemented (releases in `ENGINE_VERSIONS`), and ``"generic"`` is no engine: the plan keeps
nibble's own workload-sized activation estimate and a fixed overhead.
"""

from __future__ import annotations

from functools import lru_cache

from quant_core.engines.base import BatchLimits, ContextTerm, EngineProfile, KVCapacity, Stage, Term
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_releases import DEFAULT_VERSION, VERSIONS
from quant_core.errors import UnknownName

ENGINES: tuple[str, ...] = ("vllm", "generic")
ENGINE_VERSIONS: dict[str, tuple[str, ...]] = {"vllm": tuple(VERSIONS), "generic": ()}
DEFAULT_ENGINE = "vllm"
DEFAULT_ENGINE_VERSIONS: dict[str, str | None] = {"vllm": DEFAULT_VERSION, "generic": None}

__all__ = [
    "DEFAULT_ENGINE",
    "DEFAULT_ENGINE_VERSIONS",
    "ENGINES",
    "ENGINE_VERSIONS",
    "BatchLimits",
    "ContextTerm",
    "EngineProfile",
    "KVCapacity",
    "Stage",
    "Term",
    "get_engine",
]


@lru_cache(maxsize=16)
def get_engine(name: str, version: str | None = None) -> EngineProfile | None:
    """The profile of engine `name` at `version` (its default when None); None for ``"generic"``."""
    if name == "generic":
        return None
    if name == "vllm":
        return VllmProfile(version or DEFAULT_VERSION)
    raise UnknownName("engine", str(name), [], field="runtime.engine", known=list(ENGINES))
