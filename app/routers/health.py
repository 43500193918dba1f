"""``GET /healthz``: liveness for load balancers and the Docker HEALTHCHECK."""

from __future__ import annotations

from fastapi import APIRouter

from app.problems import Problem
from app.schemas.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness check", responses={500: {"model": Problem}})
async def read_health() -> Health:
    """Answer at once from the event loop: no I/O, no pool, no authentication."""
    return Health()
