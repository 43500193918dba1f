"""``/v1/devices``: the accelerator catalog (memory per device, with its source)."""

from __future__ import annotations

from fastapi import APIRouter

from app.problems import NotFound, problem_responses
from app.schemas.models import DeviceOut, device_from_core
from app.security import ApiKeyRoute
from quant_core import catalog
from quant_core.errors import UnknownName

router = APIRouter(prefix="/devices", tags=["devices"], route_class=ApiKeyRoute)


@router.get("", response_model=list[DeviceOut], summary="List the devices", responses=problem_responses())
async def list_devices() -> list[DeviceOut]:
    """Every catalogued accelerator; use an `id` as `{"device": id}` in a plan's hardware."""
    return [device_from_core(device) for device in catalog.list_devices()]


@router.get("/{device_id}", response_model=DeviceOut, summary="One device", responses=problem_responses(404))
async def read_device(device_id: str) -> DeviceOut:
    """One accelerator by id (404 lists close ids)."""
    try:
        return device_from_core(catalog.get_device(device_id))
    except UnknownName as exc:
        raise NotFound(exc) from None
