"""What a measurement ran on: recorded with every result, and its stable part keys the cache and predictors.

Volatile readings (temperature, current clocks) are recorded but do not change ``fingerprint_id``; a
driver, torch, power-limit or thread-count change does, so results measured under other conditions are
never served as current.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from collections.abc import Callable
from typing import Any

import torch

from profiling.energy import load_nvml, nvml_handle

STABLE_KEYS = (
    "kind", "name", "compute_capability", "memory_bytes", "driver", "torch", "cuda", "cudnn",
    "cpu_model", "cpu_logical_cores", "threads", "power_limit_w", "mig_mode",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """Short stable id over the fields that change speed or energy."""
    stable = {key: fingerprint.get(key) for key in STABLE_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _nvml_query(read: Callable[[], Any]) -> Any:
    """One NVML field, or None where this GPU or driver does not report it."""
    try:
        return read()
    except Exception:  # noqa: BLE001 -- pynvml raises a different NVMLError subclass per unsupported field
        return None


def _nvml_fields(device: torch.device) -> dict[str, Any]:
    try:
        nvml = load_nvml()
        handle = nvml_handle(nvml, device)
    except Exception as error:  # noqa: BLE001 -- EnergyUnavailable or NVMLError: no NVML must not stop a CUDA profile
        return {"nvml": f"unavailable ({error})"}

    def text(value: Any) -> Any:
        return value.decode() if isinstance(value, bytes) else value

    power_mw = _nvml_query(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    mig = _nvml_query(lambda: nvml.nvmlDeviceGetMigMode(handle))
    return {
        "uuid": text(_nvml_query(lambda: nvml.nvmlDeviceGetUUID(handle))),
        "driver": text(_nvml_query(nvml.nvmlSystemGetDriverVersion)),
        "power_limit_w": None if power_mw is None else power_mw / 1e3,
        "mig_mode": None if mig is None else mig[0],
        "persistence_mode": _nvml_query(lambda: nvml.nvmlDeviceGetPersistenceMode(handle)),
        "sm_clock_mhz": _nvml_query(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
        "memory_clock_mhz": _nvml_query(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)),
        "max_sm_clock_mhz": _nvml_query(lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)),
        "temperature_c": _nvml_query(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
    }


@functools.cache
def _static_fields(device_key: str) -> dict[str, Any]:
    device = torch.device(device_key)
    fields: dict[str, Any] = {
        "kind": device.type,
        "torch": torch.__version__,
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        fields.update(
            name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        fields["name"] = fields["cpu_model"]
    return fields


def device_fingerprint(device: torch.device | str = "cpu", threads: int | None = None, volatile: bool = True) -> dict[str, Any]:
    """Device name/UUID, driver, CUDA/cuDNN/torch versions, clocks, power limit, temperature, MIG and
    persistence mode (where NVML reports them), CPU model and the intra-op thread count, plus ``fingerprint_id``.

    ``volatile=False`` skips the NVML readings that change minute to minute (fast path for cache look-ups);
    the id is the same either way.
    """
    device = torch.device(device)
    fingerprint = dict(_static_fields(str(device)))
    fingerprint["threads"] = threads if threads is not None else torch.get_num_threads()
    if device.type == "cuda":
        fingerprint.update(_nvml_stable(str(device)))
        if volatile:
            fingerprint.update(_nvml_fields(device))
    fingerprint["fingerprint_id"] = fingerprint_id(fingerprint)
    return fingerprint


@functools.cache
def _nvml_stable(device_key: str) -> dict[str, Any]:
    fields = _nvml_fields(torch.device(device_key))
    return {key: fields.get(key) for key in ("driver", "power_limit_w", "mig_mode")}
