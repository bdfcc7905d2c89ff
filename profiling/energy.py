"""Energy per image from hardware counters: NVML (GPU) and RAPL (CPU), Zeus-style measurement windows.

Every backend exposes one cumulative reading in millijoules; a window is the difference of two readings.
Units at the hardware boundary: NVML's total-energy counter is mJ (Volta and newer, updated about every
100 ms, so a 1 s window carries up to ~10% error and 5 s ~2%); NVML power is mW (a 1 s average on
H100-class GPUs, instantaneous on A100), integrated here over time; RAPL ``energy_uj`` is uJ and wraps
at ``max_energy_range_uj``. A device without a readable backend yields ``EnergyResult`` with
``unavailable_reason`` set: never 0 and never an estimate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from profiling.device import synchronize
from profiling.result import EnergyResult

RAPL_ROOT = Path("/sys/class/powercap")


class EnergyUnavailable(Exception):
    """No energy backend can be read on this device; the message is the reason stored in results."""


def load_nvml() -> Any:
    """The initialised ``pynvml`` module (nvidia-ml-py), or EnergyUnavailable saying why not."""
    try:
        import pynvml
    except ImportError:
        raise EnergyUnavailable("nvidia-ml-py (pynvml) is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        raise EnergyUnavailable(f"NVML cannot start ({error}): no NVIDIA driver or library on this host") from None
    return pynvml


def nvml_handle(pynvml: Any, device: torch.device) -> Any:
    """NVML's handle for a torch CUDA device; matched by UUID because CUDA_VISIBLE_DEVICES renumbers devices."""
    index = device.index or 0
    if torch.cuda.is_available():
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class NvmlEnergyCounter:
    """``nvmlDeviceGetTotalEnergyConsumption``: mJ since the driver loaded."""

    name = "nvml-energy-counter"

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self._nvml, self._handle = pynvml, handle
        self.energy_mj()  # raises NVMLError_NotSupported on pre-Volta GPUs, before any window relies on it

    def energy_mj(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def close(self) -> None:
        pass


class NvmlPowerPolling:
    """Integrates ``nvmlDeviceGetPowerUsage`` (mW) over time in a background thread (trapezoid rule)."""

    name = "nvml-power-polling"

    def __init__(self, pynvml: Any, handle: Any, interval_s: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml, self._handle, self._interval, self._clock = pynvml, handle, interval_s, clock
        self._lock = threading.Lock()
        self._total_mj = 0.0
        self._last_time = clock()
        self._last_mw = self._power_mw()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="nvml-power-poll", daemon=True)
        self._thread.start()

    def _power_mw(self) -> float:
        return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle))

    def _sample(self) -> None:
        power, now = self._power_mw(), self._clock()
        with self._lock:
            self._total_mj += (power + self._last_mw) / 2 * (now - self._last_time)  # mW x s = mJ
            self._last_time, self._last_mw = now, power

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def energy_mj(self) -> float:
        self._sample()
        with self._lock:
            return self._total_mj

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class RaplEnergy:
    """Sum of the package-level RAPL domains (``intel-rapl:N``; sub-domains would double count).

    AMD CPUs expose the same files under the same names. Each domain's counter wraps at
    ``max_energy_range_uj``; readings must be closer together than one wrap period (hours at 100 W).
    """

    name = "rapl"

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        self._domains = sorted(p for p in Path(root).glob("intel-rapl:*") if p.name.count(":") == 1)
        if not self._domains:
            raise EnergyUnavailable(f"no RAPL package domain under {root} (not an Intel/AMD CPU with powercap, or a VM/container without it)")
        self._ranges = [self._read(d / "max_energy_range_uj") for d in self._domains]
        self._last = [self._read(d / "energy_uj") for d in self._domains]
        self._wrapped_uj = [0] * len(self._domains)

    @staticmethod
    def _read(path: Path) -> int:
        try:
            return int(path.read_text().strip())
        except PermissionError:
            raise EnergyUnavailable(
                f"{path} is readable by root only (kernels since the 2020 PLATYPUS fix); run as root or grant read access "
                f"(sudo chmod a+r {path.parent}/energy_uj)"
            ) from None
        except (OSError, ValueError) as error:
            raise EnergyUnavailable(f"cannot read RAPL counter {path}: {error}") from None

    def energy_mj(self) -> float:
        total_uj = 0
        for i, domain in enumerate(self._domains):
            raw = self._read(domain / "energy_uj")
            if raw < self._last[i]:
                self._wrapped_uj[i] += self._ranges[i]
            self._last[i] = raw
            total_uj += raw + self._wrapped_uj[i]
        return total_uj / 1e3

    def close(self) -> None:
        pass


def open_backend(device: torch.device, rapl_root: Path = RAPL_ROOT) -> NvmlEnergyCounter | NvmlPowerPolling | RaplEnergy:
    """The best readable backend for ``device``: NVML counter, else NVML power polling (CUDA); RAPL (CPU)."""
    if device.type == "cpu":
        return RaplEnergy(rapl_root)
    pynvml = load_nvml()
    try:
        handle = nvml_handle(pynvml, device)
    except pynvml.NVMLError as error:
        raise EnergyUnavailable(f"NVML has no handle for {device} ({error})") from None
    try:
        return NvmlEnergyCounter(pynvml, handle)
    except pynvml.NVMLError as counter_error:
        try:
            return NvmlPowerPolling(pynvml, handle)
        except pynvml.NVMLError as power_error:
            raise EnergyUnavailable(f"NVML energy counter ({counter_error}) and power reading ({power_error}) both unavailable") from None


@dataclass(frozen=True)
class EnergyWindow:
    name: str
    seconds: float
    mj: float

    @property
    def watts(self) -> float:
        return self.mj / self.seconds / 1e3


class EnergyMonitor:
    """Named measurement windows over one backend (after Zeus's ``ZeusMonitor``)."""

    def __init__(self, backend: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self._clock = clock
        self._open: dict[str, tuple[float, float]] = {}
        self._idle_w: float | None = None

    def begin_window(self, name: str) -> None:
        if name in self._open:
            raise ValueError(f"energy window {name!r} is already open")
        self._open[name] = (self._clock(), self.backend.energy_mj())

    def end_window(self, name: str) -> EnergyWindow:
        if name not in self._open:
            raise ValueError(f"energy window {name!r} was never begun")
        start_time, start_mj = self._open.pop(name)
        return EnergyWindow(name, self._clock() - start_time, self.backend.energy_mj() - start_mj)

    def idle_w(self, seconds: float, sleep: Callable[[float], None] = time.sleep) -> float:
        """Idle power with the runtime alive, measured once per monitor (it is a property of the device)."""
        if self._idle_w is None:
            self.begin_window("idle")
            sleep(seconds)
            self._idle_w = self.end_window("idle").watts
        return self._idle_w

    def close(self) -> None:
        self.backend.close()


def measure_energy(
    run: Callable[[], object],
    images_per_call: int,
    device: torch.device,
    monitor: EnergyMonitor,
    *,
    window_s: float = 5.0,
    idle_s: float = 3.0,
    cooldown_s: float = 2.0,
) -> EnergyResult:
    """Gross and net (above idle) mJ per image of ``run`` over a window of at least ``window_s``."""
    time.sleep(cooldown_s)
    idle_w = monitor.idle_w(idle_s)
    run()
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    chunk = max(1, math.ceil(0.2 / max(time.perf_counter() - start, 1e-6)))  # check the clock ~every 200 ms
    calls = 0
    deadline = time.monotonic() + window_s
    monitor.begin_window("inference")
    while calls == 0 or time.monotonic() < deadline:
        for _ in range(chunk):
            run()
        synchronize(device)
        calls += chunk
    window = monitor.end_window("inference")
    images = calls * images_per_call
    return EnergyResult(
        mj_per_image=window.mj / images,
        net_mj_per_image=(window.mj - idle_w * 1e3 * window.seconds) / images,
        idle_w=idle_w,
        backend=monitor.backend.name,
        window_s=window.seconds,
        images=images,
    )
