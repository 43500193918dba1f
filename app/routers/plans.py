"""``/v1/plan``: will it fit, and the same over a grid of workloads for charts.

Planning is pure Python over the tensor inventory (microseconds), so these
handlers are ``async def`` and run on the event loop with no threadpool hop.
``POST /v1/plan`` answers pre-serialized JSON bytes (`plan_json_from_core`):
FastAPI then neither builds nor re-validates a `PlanResponse`, which is still
declared as the ``response_model`` for the OpenAPI document; and its body is
validated from the bytes by `JsonBodyRoute` rather than FastAPI's handler.
Both routes also take the multipart form of `app.plan_form` (a checkpoint's
headers as files): parsing megabytes of headers is a second of pure Python
(DeepSeek-V3's 163 headers, 21.6 MB; four 15 MB headers of 426,000 tensors, 4 s), so
those plans run in threads behind the large sweeps' gate (`SweepGate`).  A JSON
body's base64 headers (at most ``max_json_bytes``: a quarter of a second), and
a model of more layers than any published one (`THREADED_PLAN_LAYERS`), are
planned in a thread too, ungated, as small sweeps are.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response

from app.plan_form import FORM_DESCRIPTION, form_limits, read_plan_form
from app.problems import PoolFull, problem_responses
from app.routing import JsonBodyRoute
from app.schemas.models import THREADED_PLAN_LAYERS
from app.schemas.plans import (
    FIT,
    CheckpointHeaders,
    PlanRequest,
    PlanResponse,
    SweepRequest,
    SweepResponse,
    answer_plan_json,
    check_sweep_size,
    plan_to_core,
    sweep_row_devices,
    sweep_rows,
)
from app.security import ApiKeyRoute, check_api_key, settings_of
from app.uploads import receive_upload

T = TypeVar("T")
router = APIRouter(prefix="/plan", tags=["plan"], route_class=ApiKeyRoute)
JSON_MEDIA_TYPE = "application/json"


class JsonOrFormRoute(JsonBodyRoute):
    """A `JsonBodyRoute` that also takes the multipart form of `app.plan_form` (the checkpoint's headers as
    files beside the request's JSON): the form is streamed under its own limits, read in a thread, and its
    headers handed to the endpoint in ``request.state.checkpoint_headers``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        form = {"requestBody": {"content": {"multipart/form-data": {"schema": {
            "type": "object", "description": FORM_DESCRIPTION, "required": ["request", "header"], "properties": {
                "request": {"type": "string", "description": "The JSON body, without checkpoint."},
                "header": {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": "One part per checkpoint file: its header bytes, its file name."},
                "index": {"type": "string", "format": "binary", "description": "model.safetensors.index.json"},
                "config": {"type": "string", "format": "binary", "description": "config.json"}}}}}}}
        super().__init__(path, endpoint, **{**kwargs, "openapi_extra": form})

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        json_handler = super().get_route_handler()
        endpoint = self.endpoint
        model = typing.get_type_hints(endpoint)["body"]

        async def handler(request: Request) -> Response:
            if not request.headers.get("content-type", "").lower().startswith("multipart/"):
                return await json_handler(request)
            check_api_key(request)
            settings = settings_of(request)
            async with receive_upload(request, settings, form_limits(settings)) as upload:
                body, headers = await anyio.to_thread.run_sync(read_plan_form, upload, model, settings)
            request.state.checkpoint_headers = headers
            response: Response = await endpoint(body, request)
            return response

        return handler


def _form_headers(request: Request) -> CheckpointHeaders | None:
    headers: CheckpointHeaders | None = getattr(request.state, "checkpoint_headers", None)
    return headers


async def create_plan(body: PlanRequest, request: Request) -> Response:
    """Per-device weights, KV cache, activations and overhead against usable memory, 16-bit beside INT4."""
    settings = settings_of(request)
    headers = _form_headers(request)
    if headers is not None:  # a second or more of pure Python parsing megabytes of headers: gated as sweeps
        content = await _sweep_gate(request).run(_plan_json, body, settings.max_config_depth,
                                                 settings.max_header_bytes, headers)
        return Response(content, media_type=JSON_MEDIA_TYPE)
    if body.checkpoint is not None:  # up to max_json_bytes of base64 headers: 0.1-0.25 s of decoding, in a thread
        content = await anyio.to_thread.run_sync(_plan_json, body, settings.max_config_depth,
                                                 settings.max_header_bytes, None)
        return Response(content, media_type=JSON_MEDIA_TYPE)
    spec, hardware, workload, options = plan_to_core(body, settings.max_config_depth, settings.max_header_bytes)
    if body.weights.format == FIT or spec.num_layers > THREADED_PLAN_LAYERS:  # a fit is a dozen plans (5-20 ms)
        content = await anyio.to_thread.run_sync(answer_plan_json, body, spec, hardware, workload, options)
        return Response(content, media_type=JSON_MEDIA_TYPE)
    return Response(answer_plan_json(body, spec, hardware, workload, options), media_type=JSON_MEDIA_TYPE)


def _plan_json(body: PlanRequest, max_config_depth: int, max_header_bytes: int,
               headers: CheckpointHeaders | None) -> bytes:
    return answer_plan_json(body, *plan_to_core(body, max_config_depth, max_header_bytes, headers))


# The hottest route: its body is validated straight from the bytes (JsonBodyRoute, app/routing.py).
router.add_api_route("", create_plan, methods=["POST"], response_model=PlanResponse,
                     summary="Plan memory for a model on hardware",
                     responses=problem_responses(400, 408, 413, 415, 422, 503), route_class_override=JsonOrFormRoute)


#: sweeps planning at most this many devices in all (rows × the most devices a row has) run at once, ungated:
#: about 0.4 s of pure Python at 1,024 (a maximum sweep, 2^18, takes 5 s; BENCHMARKS.md, "Sweeps")
UNGATED_SWEEP_DEVICE_ROWS = 1024


class SweepGate:
    """Larger sweeps (and plans from the multipart form's headers) run `running` at a time in threads,
    `waiting` more may wait; past that, 503 at once.

    A sweep is seconds of pure Python, which holds the GIL however many
    threads run it: twenty at once kept the event loop from /healthz for
    seconds (issue 17).  One at a time, the loop gets the GIL back every
    switch interval (5 ms).
    """

    def __init__(self, running: int, waiting: int, retry_after_seconds: int) -> None:
        self.limiter = anyio.CapacityLimiter(running)
        self.capacity = running + waiting
        self.retry_after_seconds = retry_after_seconds
        self.admitted = 0

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self.admitted >= self.capacity:
            raise PoolFull(f"{self.admitted} large sweeps are running or waiting, the most this server takes; "
                           f"retry in {self.retry_after_seconds} s",
                           headers={"Retry-After": str(self.retry_after_seconds)})
        self.admitted += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)
        finally:
            self.admitted -= 1


def _sweep_gate(request: Request) -> SweepGate:
    """The app's gate, made on first use (a capacity limiter belongs to the running event loop)."""
    gate: SweepGate | None = getattr(request.app.state, "sweep_gate", None)
    if gate is None:
        settings = settings_of(request)
        gate = SweepGate(settings.sweep_concurrency, settings.sweep_queue, settings.retry_after_seconds)
        request.app.state.sweep_gate = gate
    return gate


def _planned_devices(body: SweepRequest) -> int:
    """An upper bound of the devices a sweep plans, summed over its rows (its cost grows with it)."""
    axes = body.sweep
    rows = math.prod(len(axis or [None]) for axis in (axes.context_lengths, axes.concurrent_sequences,
                                                       axes.formats, axes.device_counts))
    return rows * max(sweep_row_devices(count, body.parallel.pipeline)
                      for count in axes.device_counts or [body.hardware.count])


async def create_sweep(body: SweepRequest, request: Request) -> Response:
    """One row per combination of context lengths, sequence counts, formats and device counts."""
    settings = settings_of(request)
    arguments = (body, settings.max_config_depth, settings.max_sweep_rows, settings.max_sweep_device_rows,
                 settings.max_header_bytes, _form_headers(request))
    check_sweep_size(body, settings.max_sweep_rows, settings.max_sweep_device_rows)  # before it takes a place
    if arguments[-1] is None and _planned_devices(body) <= UNGATED_SWEEP_DEVICE_ROWS:
        # a few plans: off the event loop, so the server answers other requests meanwhile
        content = await anyio.to_thread.run_sync(_sweep_json, *arguments)
    else:
        content = await _sweep_gate(request).run(_sweep_json, *arguments)
    return Response(content, media_type=JSON_MEDIA_TYPE)


router.add_api_route("/sweep", create_sweep, methods=["POST"], response_model=SweepResponse,
                     summary="Plan over a grid of workloads", responses=problem_responses(400, 408, 413, 415, 422, 503),
                     route_class_override=JsonOrFormRoute)


def _sweep_json(*arguments: Any) -> bytes:
    """`sweep_rows` as JSON bytes, made in the sweep's thread: FastAPI would validate and encode thousands of
    rows again on the event loop (a tenth of a second and more for a maximum sweep)."""
    return sweep_rows(*arguments).model_dump_json().encode()
