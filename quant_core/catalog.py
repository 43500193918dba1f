"""The packaged catalogs: devices (``data/devices.json``) and model presets (``data/models/<id>.json``).

Each file is read once, validated, and cached.  A preset is nibble's own format, not a
copy of a Hugging Face config: the normalized `ModelSpec` fields (``spec``, as
`ModelSpec.to_dict` writes them) with a display name, the Hugging Face repository and
the source of the architecture.  Unknown ids raise `UnknownName` with the closest ids.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from quant_core.errors import InvalidSpec, UnknownName
from quant_core.specs import ModelSpec, check_int

DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_DEVICE_BYTES = 1 << 50  # 1 PiB: far above any accelerator, low enough to catch unit slips
MAX_COMPUTE_UNITS = 10_000  # far above any accelerator's streaming multiprocessors or compute units


@dataclass(frozen=True, slots=True)
class Device:
    """An accelerator: `memory_bytes` of nominal memory, and what CUDA reports for it.

    `reported_memory_bytes` is the device's total as ``torch.cuda.mem_get_info`` reports it
    (the figure vLLM multiplies by ``gpu_memory_utilization``), with `reported_source`; None
    when no public log was found.  `planning_bytes` is the figure plans use.  `compute_capability` is
    the CUDA compute capability ``(major, minor)`` NVIDIA lists for the GPU (`compute_capability_source`), by
    which an engine refuses the weight formats its kernels cannot run there; None when not known (AMD, a
    device given as bytes): no format is then refused for the device.  `compute_units` is its streaming
    multiprocessors (NVIDIA) or compute units (AMD), ``multi_processor_count`` to torch, from the vendor's figures
    (`compute_units_source`): an engine sizes some buffers by it.
    """

    id: str
    name: str
    vendor: str
    memory_bytes: int
    memory_type: str = ""
    source: str = ""
    reported_memory_bytes: int | None = None
    reported_source: str = ""
    compute_capability: tuple[int, int] | None = None
    compute_capability_source: str = ""
    compute_units: int | None = None
    compute_units_source: str = ""

    @property
    def planning_bytes(self) -> int:
        """What CUDA reports when known, else the nominal size."""
        return self.reported_memory_bytes or self.memory_bytes


@dataclass(frozen=True, slots=True)
class DevicePerformance:
    """A device's peaks from its datasheet: memory bandwidth in bytes/s and dense tensor throughput in FLOP/s
    (INT8: operations/s) per element type; None where the device has no such tensor cores or no published
    figure.  `source` names the datasheet."""

    device_id: str
    memory_bandwidth_bytes_per_second: int | None
    bf16_flops_per_second: int | None
    fp16_flops_per_second: int | None
    fp8_flops_per_second: int | None
    int8_ops_per_second: int | None
    source: str


@dataclass(frozen=True, slots=True)
class Preset:
    """A packaged model: its id, display name, Hugging Face repository, source, and spec; the
    ``quantization_config`` it ships with and its multi-token-prediction layers (``num_nextn_predict_layers``),
    both copied from its config.json."""

    id: str
    display_name: str
    hf_repo: str
    source: str
    spec: ModelSpec
    quantization_config: dict[str, object] | None = field(default=None, hash=False, compare=False)
    mtp_layers: int = 0


def _close(name: str, known: list[str]) -> list[str]:
    """Up to three ids: those starting with `name`, then the nearest by `difflib`."""
    starting = [item for item in known if name and item.startswith(name)]
    similar = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return list(dict.fromkeys(starting + similar))[:3]


def _text(record: dict[str, object], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise InvalidSpec(f"{where}.{key}", value, "must be a string")
    return value


@lru_cache(maxsize=1)
def _devices() -> dict[str, Device]:
    raw = json.loads((DATA_DIR / "devices.json").read_text(encoding="utf-8"))
    devices: dict[str, Device] = {}
    for record in raw["devices"]:
        device_id = _text(record, "id", "devices")
        devices[device_id] = Device(
            id=device_id,
            name=_text(record, "name", device_id),
            vendor=_text(record, "vendor", device_id),
            memory_bytes=check_int(f"{device_id}.memory_bytes", record.get("memory_bytes"), 1, MAX_DEVICE_BYTES),
            memory_type=_text(record, "memory_type", device_id),
            source=_text(record, "source", device_id),
            reported_memory_bytes=(None if record.get("reported_memory_bytes") is None else check_int(
                f"{device_id}.reported_memory_bytes", record.get("reported_memory_bytes"), 1, MAX_DEVICE_BYTES)),
            reported_source=_text(record, "reported_source", device_id),
            compute_capability=_compute_capability(record, device_id),
            compute_capability_source=_text(record, "compute_capability_source", device_id),
            compute_units=check_int(f"{device_id}.compute_units", record.get("compute_units"), 1, MAX_COMPUTE_UNITS),
            compute_units_source=_text(record, "compute_units_source", device_id),
        )
    return devices


def parse_compute_capability(value: object, field: str = "compute_capability") -> tuple[int, int]:
    """``"8.9"`` as ``(8, 9)``: a CUDA compute capability, major 1-99 and minor 0-9 (the form NVIDIA's CUDA GPUs
    page and ``nvidia-smi --query-gpu=compute_cap`` print); `InvalidSpec` names `field` otherwise.  ASCII digits
    only: ``str.isdigit`` also takes full-width ``"１.０"`` (read as 1.0) and superscript ``"².0"`` (which ``int``
    refuses: a ValueError, a 500)."""
    major, dot, minor = value.partition(".") if isinstance(value, str) else ("", "", "")
    if not (dot and major.isascii() and minor.isascii() and major.isdigit() and minor.isdigit()
            and len(major) <= 2 and len(minor) == 1 and int(major) >= 1):
        raise InvalidSpec(field, value, "must be a CUDA compute capability, major.minor (\"8.9\")")
    return int(major), int(minor)


def compute_capability_text(capability: tuple[int, int] | None) -> str | None:
    """``(7, 5)`` as ``"7.5"``, the form `parse_compute_capability` reads and NVIDIA prints; None stays None."""
    return None if capability is None else f"{capability[0]}.{capability[1]}"


def _compute_capability(record: dict[str, object], device_id: str) -> tuple[int, int] | None:
    value = record.get("compute_capability")
    return None if value is None else parse_compute_capability(value, f"{device_id}.compute_capability")


def list_devices() -> tuple[Device, ...]:
    """Every catalogued device, in catalog order."""
    return tuple(_devices().values())


def get_device(device_id: str) -> Device:
    """The catalogued device `device_id` (case-insensitive); `UnknownName` lists close ids."""
    devices = _devices()
    key = device_id.strip().lower() if isinstance(device_id, str) else ""
    if key in devices:
        return devices[key]
    raise UnknownName("device", str(device_id), _close(key, list(devices)), field="device", known=list(devices))


def device_compute_capability(device_id: str) -> tuple[int, int] | None:
    """The compute capability of catalogued device `device_id`, None for a device without one or an id the
    catalog does not hold (a dictionary lookup: the planner asks it for every hardware it is given)."""
    device = _devices().get(device_id)
    return None if device is None else device.compute_capability


def device_compute_units(device_id: str) -> int | None:
    """The SM (compute unit) count of catalogued device `device_id`, None for an id the catalog does not hold."""
    device = _devices().get(device_id)
    return None if device is None else device.compute_units


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What an engine's kernel and buffer choices read of a device, from which it picks them as the engine's own
    code does (by compute capability and SM count, never by the device's name): the catalog id ("" for a device
    given in bytes), the `vendor` ("nvidia", "amd"; "" when not known), the CUDA `compute_capability` (None when not
    known) and the `compute_units` (None when not known: the engine then takes `most_compute_units`)."""

    device_id: str = ""
    vendor: str = ""
    compute_capability: tuple[int, int] | None = None
    compute_units: int | None = None


#: a device of which nothing is known (no catalog id, vendor, capability or SM count)
UNKNOWN_DEVICE = DeviceFacts()


def device_facts(device_id: str | None, compute_capability: tuple[int, int] | None = None,
                 compute_units: int | None = None) -> DeviceFacts:
    """The `DeviceFacts` of catalog device `device_id`, with `compute_capability` and `compute_units` in place of
    the catalog's when given; for a device outside the catalog (None, "" or an id it does not hold) the given
    capability and SM count alone: an NVIDIA device when a capability is given (only CUDA devices have one), of
    unknown vendor otherwise, and of unknown SM count when none is given."""
    device = _devices().get(device_id or "")
    if device is None:
        return DeviceFacts(vendor="" if compute_capability is None else "nvidia",
                           compute_capability=compute_capability, compute_units=compute_units)
    return DeviceFacts(device.id, device.vendor, compute_capability or device.compute_capability,
                       compute_units or device.compute_units)


@lru_cache(maxsize=64)
def most_compute_units(compute_capability: tuple[int, int] | None) -> int:
    """The SM count an engine charges a device whose count is not known: the most of the catalog's NVIDIA devices
    of the same major compute capability (the same architecture family: 132 on 9.x, the GB200's 152 on 10.x), else
    of all its NVIDIA devices (188).  The buffers sized by it grow with it, so this is the safe side for every part
    of a family the catalog's largest bounds (no Hopper ships more than the H100 SXM5's 132, no 10.x Blackwell part
    the catalog holds more than the GB200's 152); it is short where a part has more than the catalog's."""
    nvidia = [device for device in _devices().values() if device.vendor == "nvidia" and device.compute_units]
    family = [device for device in nvidia if compute_capability is not None and device.compute_capability is not None
              and device.compute_capability[0] == compute_capability[0]]
    return max(device.compute_units or 0 for device in (family or nvidia))


def device_from_bytes(memory_bytes: int, name: str = "custom") -> Device:
    """A device that is only a memory size, for hardware not in the catalog."""
    size = check_int("memory_bytes", memory_bytes, 1, MAX_DEVICE_BYTES)
    return Device(id="custom", name=name, vendor="custom", memory_bytes=size, source="given as raw bytes")


def _optional_rate(record: dict[str, object], key: str, where: str) -> int | None:
    value = record.get(key)
    return None if value is None else check_int(f"{where}.{key}", value, 1, 1 << 62)


@lru_cache(maxsize=1)
def _performance() -> dict[str, DevicePerformance]:
    raw = json.loads((DATA_DIR / "devices.json").read_text(encoding="utf-8"))
    known = _devices()
    out: dict[str, DevicePerformance] = {}
    for device_id, record in raw.get("performance", {}).items():
        if device_id not in known:
            raise InvalidSpec(f"performance.{device_id}", device_id, "names no catalogued device")
        flops = record.get("dense_flops_per_second") or {}
        where = f"performance.{device_id}"
        out[device_id] = DevicePerformance(
            device_id=device_id,
            memory_bandwidth_bytes_per_second=_optional_rate(record, "memory_bandwidth_bytes_per_second", where),
            bf16_flops_per_second=_optional_rate(flops, "bf16", where),
            fp16_flops_per_second=_optional_rate(flops, "fp16", where),
            fp8_flops_per_second=_optional_rate(flops, "fp8", where),
            int8_ops_per_second=_optional_rate(flops, "int8", where),
            source=_text(record, "source", where),
        )
    return out


def get_device_performance(device_id: str) -> DevicePerformance | None:
    """The datasheet peaks of catalogued device `device_id`, or None when none are catalogued for it."""
    return _performance().get(get_device(device_id).id)


@lru_cache(maxsize=1)
def _presets() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    # by id, not by file name: "glm-4.5-air.json" sorts before "glm-4.5.json" ('-' < '.') but "glm-4.5" first by id
    for path in sorted((DATA_DIR / "models").glob("*.json"), key=lambda path: path.stem):
        record = json.loads(path.read_text(encoding="utf-8"))
        preset_id = _text(record, "id", path.name)
        if preset_id != path.stem:
            raise InvalidSpec(f"{path.name}.id", preset_id, "must equal the file name")
        spec = ModelSpec.from_dict(record.get("spec"))
        if spec.name != preset_id:
            raise InvalidSpec(f"{path.name}.spec.name", spec.name, "must equal the preset id")
        presets[preset_id] = Preset(
            id=preset_id,
            display_name=_text(record, "display_name", preset_id),
            hf_repo=_text(record, "hf_repo", preset_id),
            source=_text(record, "source", preset_id),
            spec=spec,
            quantization_config=_quantization_config(record, path.name),
            mtp_layers=check_int(f"{path.name}.mtp_layers", record.get("mtp_layers", 0), 0, 64),
        )
    return presets


def _quantization_config(record: dict[str, object], where: str) -> dict[str, object] | None:
    """The preset's ``quantization_config`` (copied from its config.json), when it ships quantized."""
    value = record.get("quantization_config")
    if value is not None and not isinstance(value, dict):
        raise InvalidSpec(f"{where}.quantization_config", value, "must be an object")
    return value


def list_presets() -> tuple[Preset, ...]:
    """Every packaged model preset, sorted by id."""
    return tuple(_presets().values())


def get_preset_info(name: str) -> Preset:
    """The preset `name`: its id (case-insensitive) or its Hugging Face repository."""
    presets = _presets()
    key = name.strip().lower() if isinstance(name, str) else ""
    if key in presets:
        return presets[key]
    for preset in presets.values():
        if preset.hf_repo.lower() == key:
            return preset
    raise UnknownName("model preset", str(name), _close(key, list(presets)), field="model", known=list(presets))


def get_preset(name: str) -> ModelSpec:
    """The `ModelSpec` of preset `name` (an id like ``llama-3.1-8b`` or an HF repository)."""
    return get_preset_info(name).spec
