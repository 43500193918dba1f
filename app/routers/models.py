"""``/v1/models``: the preset catalog, and inspection of any model's parameters, tensors and bytes."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request

from app.problems import NotFound, problem_responses
from app.routing import refuse_duplicate_keys
from app.schemas.models import (
    THREADED_PLAN_LAYERS,
    InspectRequest,
    InspectResponse,
    ModelDetail,
    ModelSummary,
    detail_from_core,
    inspect_from_core,
    model_to_core,
    shipped_scheme,
    summary_from_core,
)
from app.security import ApiKeyRoute, settings_of
from quant_core.catalog import get_preset_info, list_presets
from quant_core.errors import UnknownName

router = APIRouter(prefix="/models", tags=["models"], route_class=ApiKeyRoute)


@router.get("", response_model=list[ModelSummary], summary="List the model presets",
            responses=problem_responses())
async def list_models() -> list[ModelSummary]:
    """Every packaged preset with its parameter count; use an `id` as `{"preset": id}` in a plan."""
    return [summary_from_core(preset) for preset in list_presets()]


@router.get("/{model_id}", response_model=ModelDetail, summary="One model preset",
            responses=problem_responses(404))
async def read_model(model_id: str) -> ModelDetail:
    """A preset's normalized spec, parameters by role and KV bytes per token (404 lists close ids)."""
    try:
        preset = get_preset_info(model_id)
    except UnknownName as exc:
        raise NotFound(exc) from None
    return detail_from_core(preset)


@router.post("/inspect", response_model=InspectResponse, summary="Inspect a model",
             responses=problem_responses(400, 413, 415, 422))
async def inspect_model(body: InspectRequest, request: Request) -> InspectResponse:
    """Parameters by role, the tensor inventory, KV bytes per token per KV dtype, weight bytes per format."""
    refuse_duplicate_keys(await request.body())
    spec = model_to_core(body, settings_of(request).max_config_depth, where="")
    if spec.num_layers > THREADED_PLAN_LAYERS:
        return await anyio.to_thread.run_sync(inspect_from_core, spec, shipped_scheme(body, where=""))
    return inspect_from_core(spec, shipped_scheme(body, where=""))
