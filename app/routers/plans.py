"""``/v1/plan``: will it fit, and the same over a grid of workloads for charts.

Planning is pure Python over the tensor inventory (microseconds), so these
handlers are ``async def`` and run on the event loop with no threadpool hop.
``POST /v1/plan`` answers pre-serialized JSON bytes (`plan_json_from_core`):
FastAPI then neither builds nor re-validates a `PlanResponse`, which is still
declared as the ``response_model`` for the OpenAPI document; and its body is
validated from the bytes by `JsonBodyRoute` rather than FastAPI's handler.
"""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from app.problems import problem_responses
from app.routing import JsonBodyRoute, refuse_duplicate_keys
from app.schemas.plans import (
    PlanRequest,
    PlanResponse,
    SweepRequest,
    SweepResponse,
    plan_json_from_core,
    plan_to_core,
    sweep_rows,
)
from app.security import ApiKeyRoute, settings_of
from quant_core.planner import plan

router = APIRouter(prefix="/plan", tags=["plan"], route_class=ApiKeyRoute)
JSON_MEDIA_TYPE = "application/json"


async def create_plan(body: PlanRequest, request: Request) -> Response:
    """Per-device weights, KV cache, activations and overhead against usable memory, 16-bit beside INT4."""
    settings = settings_of(request)
    spec, hardware, workload, options = plan_to_core(body, settings.max_config_depth, settings.max_header_bytes)
    return Response(plan_json_from_core(plan(spec, hardware, workload, options)), media_type=JSON_MEDIA_TYPE)


# The hottest route: its body is validated straight from the bytes (JsonBodyRoute, app/routing.py).
router.add_api_route("", create_plan, methods=["POST"], response_model=PlanResponse,
                     summary="Plan memory for a model on hardware", responses=problem_responses(400, 413, 415, 422),
                     route_class_override=JsonBodyRoute)


@router.post("/sweep", response_model=SweepResponse, summary="Plan over a grid of workloads",
             responses=problem_responses(400, 413, 415, 422))
async def create_sweep(body: SweepRequest, request: Request) -> SweepResponse:
    """One row per combination of context lengths, sequence counts, formats and device counts."""
    refuse_duplicate_keys(await request.body())
    settings = settings_of(request)
    # thousands of plans: off the event loop, so the server answers other requests meanwhile
    return await anyio.to_thread.run_sync(sweep_rows, body, settings.max_config_depth, settings.max_sweep_rows,
                                          settings.max_sweep_device_rows, settings.max_header_bytes)
