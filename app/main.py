"""The app factory: `create_app(settings)` wires routers, problem handlers, limits, CORS and the pool.

``app.main:app`` is the app under the environment's settings, for uvicorn.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.responses import Response

from app.allocator import keep_receive_buffers
from app.checkpoint_jobs import JobManager, PoolExecutor
from app.head import HeadAsGet
from app.job_store import JobStore
from app.metrics import install_observability
from app.pool import WorkerPool
from app.problems import (
    PROBLEM_MEDIA_TYPE,
    TYPE_PREFIX,
    Problem,
    ProblemField,
    install_problem_handlers,
    problem_response,
)
from app.ray_runner import RayTensorRunner
from app.routers import devices, health, jobs, models, plans, quantizations, uploads
from app.security import BEARER_SCHEME, BEARER_SCHEME_NAME, BodySizeLimit
from app.settings import Settings, get_settings
from app.tus import UploadSets
from app.uploads import remove_orphaned_spools

API_VERSION = "1.0.0"
DESCRIPTION = """\
Plan LLM memory at 16-bit beside INT4, and quantize uploaded tensors to INT4 with measured quality.

Every error is `application/problem+json` (RFC 9457) with `type`, `title`, `status`, `detail`
and an `errors` list naming each invalid field.
"""
V1_PREFIX = "/v1"
V1_ROUTERS: tuple[APIRouter, ...] = (plans.router, models.router, devices.router, quantizations.router, jobs.router,
                                     uploads.router)


def _problem_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with every 4xx/5xx answer declared as problem+json (FastAPI says JSON)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes, tags=app.openapi_tags)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {
                        PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
                    }
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME_NAME] = BEARER_SCHEME
    app.openapi_schema = schema
    return schema


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflight is problem+json (naming ``Origin``) like every error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        detail = bytes(response.body).decode()
        problem = Problem(type=TYPE_PREFIX + "cors-refused", title="CORS preflight refused", status=400,
                          detail=detail, errors=[ProblemField(field="Origin", message=detail)])
        headers = {name: value for name, value in response.headers.items()
                   if name.lower() not in ("content-length", "content-type")}
        return problem_response(problem, headers)


def _job_manager(settings: Settings, pool: WorkerPool) -> JobManager | None:
    """The checkpoint job manager, when both the state directory and the data root are configured."""
    if settings.state_dir is None or settings.data_dir is None:
        return None
    executor = PoolExecutor(pool, settings.retry_after_seconds)
    tensors = RayTensorRunner(settings.ray_address) if settings.ray_address else None
    uploads = UploadSets(settings.upload_dir or settings.state_dir / "uploads", settings)
    return JobManager(JobStore(settings.state_dir), executor, settings.data_dir,
                      concurrency=settings.job_tensor_concurrency, max_tensors=settings.job_max_tensors,
                      max_elements=settings.job_max_elements_per_tensor, max_header_bytes=settings.max_header_bytes,
                      threads=settings.job_threads, tensors=tensors, uploads=uploads,
                      max_unfinished=settings.max_unfinished_jobs, retry_after_seconds=settings.retry_after_seconds)


#: how long a thread may hold the GIL while another waits for it (CPython's default is 5 ms).  A large sweep
#: runs on a worker thread; each time the event loop makes a system call it lets the GIL go and then waits up
#: to this long to get it back, so at 5 ms one maximum sweep pushed the p99 of plans from 24 ms to 178 ms
#: (benchmarks/load_test.py's attack mix); at 0.5 ms, 92 ms.  With one thread running it costs nothing.
GIL_SWITCH_SECONDS = 0.0005


def upload_media_types(routers: Iterable[APIRouter], prefix: str) -> dict[str, frozenset[str]]:
    """Each route's upload media types (multipart, octet-stream) by path, as its request body documents them."""
    uploads: dict[str, frozenset[str]] = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                content = (route.openapi_extra or {}).get("requestBody", {}).get("content", {})
                if media := frozenset(content) - {"application/json"}:
                    uploads[prefix + route.path] = media
    return uploads


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the nibble app under `settings` (default: `get_settings()`, from ``NIBBLE_*``)."""
    settings = settings or get_settings()
    pool = WorkerPool(settings.pool_workers, settings.pool_queue, settings.request_time_limit_seconds,
                      settings.retry_after_seconds, settings.pool_kind)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keep_receive_buffers()  # the serving process: upload reads reuse heap pages (app/allocator.py)
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        remove_orphaned_spools(settings.temp_dir)  # uploads a killed process was receiving
        pool.start()
        manager = _job_manager(settings, pool)
        app.state.jobs = manager
        app.state.uploads = manager.uploads if manager is not None else None
        if manager is not None:
            manager.start()  # resumes every job a stop or a kill left unfinished
        try:
            yield
        finally:
            if manager is not None:
                await manager.close()  # before the pool: a job stopped here resumes at the next start
            await pool.drain()  # SIGTERM: let answers to in-flight (or cancelled) jobs leave first
            pool.close()

    # no trailing-slash redirect: Starlette builds its Location from the request's Host header, which a client
    # chooses (issue 17 #16); "/v1/devices/" is a 404 problem like any unknown path
    # /docs and /redoc are served without a CDN by install_page (app/page.py)
    app = FastAPI(title="nibble", version=API_VERSION, description=DESCRIPTION, lifespan=lifespan,
                  redirect_slashes=False, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.pool = pool
    app.state.jobs = None  # the JobManager while the app runs (lifespan), when jobs are configured
    app.state.uploads = None  # its tus upload sets (app/tus.py)
    install_problem_handlers(app)
    app.include_router(health.router)
    for router in V1_ROUTERS:
        app.include_router(router, prefix=V1_PREFIX)  # each route checks the API key (ApiKeyRoute)
    app.add_middleware(HeadAsGet)  # innermost: the routes see GET, everything outside still sees HEAD
    app.add_middleware(BodySizeLimit, settings=settings, uploads=upload_media_types(V1_ROUTERS, V1_PREFIX))
    if settings.cors_origins:
        app.add_middleware(ProblemCORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Nibble-Report", "Retry-After", "Content-Disposition",
                                                           "X-Request-ID", "Location", "Upload-Offset", "Upload-Length",
                                                           "Tus-Resumable", "Tus-Version", "Tus-Extension",
                                                           "Tus-Max-Size"])
    install_observability(app)  # metrics, access log, X-Request-ID, the page: last, so outermost
    app.openapi = lambda: _problem_openapi(app)  # type: ignore[method-assign]
    return app


app = create_app()
