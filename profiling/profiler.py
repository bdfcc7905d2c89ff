"""``profile(request)``: parameters, compute, latency, memory and energy of one architecture, cached.

A ``ProfileRequest`` says what to measure (config, input, batch, runtime, dtype, threads, time window,
how to count); the result is a ``ProfileResult``. Compute is counted on CPU in fp32 (it does not depend on the device); timing, memory and energy run on
the requested device and runtime (``profiling.runtimes``) with the requested options. ``isolate=True``
runs the whole measurement in a fresh Python process, so an out-of-memory error or a crash becomes
``result.error`` instead of ending a search. A latency measured while other processes loaded the CPU
(``result.contended``) is returned, flagged, but never cached: the next call measures again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hrvit_nas import UserError
from hrvit_space import ArchConfig
from profiling.analytic import analytic_counts
from profiling.cache import ProfileCache, cache_key
from profiling.choices import DEFAULT_MAX_SECONDS, check_max_seconds
from profiling.counting import count_flops, count_params
from profiling.device import check_dtype, resolve_device
from profiling.energy import (
    EnergyMonitor,
    EnergyUnavailable,
    measure_energy,
    open_backend,
)
from profiling.fingerprint import device_fingerprint
from profiling.latency import check_threads, cpu_threads, default_threads, measure_runs
from profiling.memory import check_fits, peak_memory
from profiling.progress import PhaseProgress
from profiling.result import EnergyResult, ProfileResult
from profiling.runtimes import check_runtime, prepare, runtime_version

DEFAULT_CACHE = "default"
# Below this many input pixels per call (batch x H x W) even b3 needs a few GiB at most: no estimate first.
ESTIMATE_MEMORY_ABOVE_PIXELS = 2048 * 2048
_REPO_ROOT = Path(__file__).resolve().parent.parent


COUNTS = ("traced", "analytic")


@dataclass(frozen=True)
class ProfileRequest:
    """What to measure for one architecture; the profiler's cache key is made of these fields.

    ``counts``: "traced" runs fvcore over one forward pass (totals plus the per-operator breakdown and
    elementwise ops); "analytic" takes the exact totals and breakdowns from the config
    (``profiling.analytic_counts``, no forward pass), which is all a search needs.
    ``runtime``: eager, compile, cuda-graphs, onnxruntime, onnxruntime-trt or tensorrt (``profiling.runtimes``).
    ``threads``: CPU intra-op threads (None: ``latency.default_threads()``, the cores this process may use).
    ``max_seconds`` bounds the latency measurement (at least 2 trials run).
    """

    config: ArchConfig
    device: str | torch.device = "auto"
    input_size: tuple[int, int] | None = None  # None: the config's
    batch: int = 1
    dtype: str = "fp32"
    runtime: str = "eager"
    measure_latency: bool = True
    energy: bool = False
    memory: bool = True  # peak memory of one timed call (a torch-profiler pass: seconds on a CPU)
    channels_last: bool = False
    threads: int | None = None
    max_seconds: float | None = DEFAULT_MAX_SECONDS
    counts: str = "traced"

    def checked(self) -> "ProfileRequest":
        """The request with device, input size and threads resolved; bad values raise UserError."""
        resolved = resolve_device(self.device)
        check_dtype(self.dtype, resolved)
        size = tuple(self.config.input_size if self.input_size is None else self.input_size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            raise UserError(f"input size {self.input_size!r} is malformed; give HEIGHTxWIDTH with positive integers, e.g. 512x512")
        self.config.replace(input_size=size)  # raises ConfigError when a window does not fit the feature maps at this size
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise UserError(f"batch {self.batch!r} is invalid; give a positive integer")
        threads = default_threads() if self.threads is None else check_threads(self.threads)
        check_max_seconds(self.max_seconds)
        if self.counts not in COUNTS:
            raise UserError(f"counts {self.counts!r}: choose from {', '.join(COUNTS)}")
        check_runtime(self.runtime, resolved, self.dtype)
        return dataclasses.replace(self, device=resolved, input_size=size, threads=threads)

    @property
    def options(self) -> dict[str, Any]:
        """The measurement options a result records (and its cache key holds)."""
        options = {
            "latency": self.measure_latency, "energy": self.energy, "channels_last": self.channels_last, "runtime": self.runtime,
            "runtime_version": runtime_version(self.runtime),
        }
        # results with counts traced and memory measured keep the cache keys they had before these were selectable
        if self.counts != "traced":
            options["counts"] = self.counts
        if not self.memory:
            options["memory"] = False
        return options

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the isolated subprocess."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**data, "config": self.config.to_dict(), "device": str(self.device), "input_size": list(self.input_size or ())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileRequest":
        return cls(**{**data, "config": ArchConfig.from_dict(data["config"]), "device": torch.device(data["device"]),
                      "input_size": tuple(data["input_size"])})


def _open_cache(cache: ProfileCache | str | os.PathLike | None) -> ProfileCache | None:
    if cache is None or isinstance(cache, ProfileCache):
        return cache
    return ProfileCache(None if cache == DEFAULT_CACHE else cache)


def profile(
    request: ProfileRequest | ArchConfig,
    *,
    cache: ProfileCache | str | os.PathLike | None = DEFAULT_CACHE,
    isolate: bool = False,
    timeout_s: float | None = None,
    progress: bool = False,
    model: Callable[[], torch.nn.Module] | None = None,
    **fields: Any,
) -> ProfileResult:
    """Profile what ``request`` asks (cached: a repeated call answers from the cache without building the model).

    ``profile(config, device=..., ...)`` is short for ``profile(ProfileRequest(config, device=..., ...))``.
    ``cache``: a ProfileCache, a path, ``"default"`` (``default_cache_path()``) or None for no cache.
    ``isolate`` runs the measurement in a fresh Python process (``timeout_s`` bounds it); ``progress``
    shows a progress line with ETA on stderr. ``model`` builds the model to time when the caller has
    one already (the search shares one model per trial with its accuracy estimator); it must be
    ``request.config`` at the request's input size.
    """
    if isinstance(request, ArchConfig):
        request = ProfileRequest(request, **fields)
    elif fields:
        raise TypeError(f"profile(ProfileRequest, ...) takes no request fields ({', '.join(fields)}); set them on the request")
    if isolate and model is not None:
        raise ValueError("an isolated profile builds its own model in the subprocess; drop model= or isolate=")
    request = request.checked()
    fingerprint = device_fingerprint(request.device, threads=request.threads, volatile=False)
    key = cache_key(request.config.content_hash(), request.input_size, request.batch, request.dtype, request.options,
                    fingerprint["fingerprint_id"])
    store = _open_cache(cache)
    try:
        if store is not None and (hit := store.get(key)) is not None:
            return dataclasses.replace(hit, cached=True)
        _check_memory(request.config, request.input_size, request.batch, request.device)
        result = _profile_isolated(request, timeout_s, progress) if isolate else _profile_here(request, progress=progress, model=model)
        if store is not None and result.error is None and not result.contended:
            store.put(key, result)
        return result
    finally:
        if store is not None and store is not cache:
            store.close()


def _check_memory(config: ArchConfig, size: tuple[int, int], batch: int, device: torch.device) -> None:
    """Estimate from shapes before allocating: counting always runs on the CPU, timing on ``device``.

    The estimate (a forward on the meta device) costs about a second, so inputs too small to matter skip it.
    """
    from hrvit_space import build_model

    if batch * size[0] * size[1] <= ESTIMATE_MEMORY_ABOVE_PIXELS:
        return
    check_fits(
        lambda: build_model(config.replace(input_size=size)), (batch, config.in_chans, *size),
        [torch.device("cpu"), *([device] if device.type == "cuda" else [])],
        f"profiling {config.name or config.content_hash()} at {size[0]}x{size[1]}, batch {batch}",
    )


def _profile_here(request: ProfileRequest, progress: bool = False, model: Callable[[], torch.nn.Module] | None = None) -> ProfileResult:
    """``request`` is checked (``ProfileRequest.checked``)."""
    from hrvit_space import build_model

    config, device, size, threads, options = request.config, request.device, request.input_size, request.threads, request.options
    timed = request.measure_latency or request.energy
    make = model or (lambda: build_model(config.replace(input_size=size)))
    if request.counts == "traced":
        with PhaseProgress("building the model and counting FLOPs", None, enabled=progress):
            built, inputs = make().eval(), torch.randn(request.batch, config.in_chans, *size)
            params, params_by_component, params_by_branch = count_params(built)
            with torch.no_grad(), cpu_threads(threads):
                flops = count_flops(built, inputs)
        counts = {
            "params": params, "params_by_component": params_by_component, "params_by_branch": params_by_branch,
            "macs": flops.macs, "macs_by_component": flops.macs_by_component, "macs_by_branch": flops.macs_by_branch,
            "macs_by_operator": flops.by_operator, "other_ops": flops.other_ops, "uncounted_ops": flops.uncounted,
        }
    else:  # exact from the config: no forward pass, and no model at all unless it is timed
        exact = analytic_counts(config, size, batch=request.batch)
        counts = {
            "params": exact.params, "params_by_component": exact.params_by_component, "params_by_branch": exact.params_by_branch,
            "macs": exact.macs, "macs_by_component": exact.macs_by_component, "macs_by_branch": exact.macs_by_branch,
        }
        if timed:
            with PhaseProgress("building the model", None, enabled=progress):
                built, inputs = make().eval(), torch.randn(request.batch, config.in_chans, *size)
    common = {
        "config_hash": config.content_hash(), **counts, "device": str(device), "input_size": size, "batch": request.batch,
        "dtype": request.dtype, "options": options,
    }
    if not timed:
        return ProfileResult(**common, peak_memory_source="not measured (counts only)", fingerprint=device_fingerprint(device, threads))
    latency = energy_result = None
    try:
        with PhaseProgress(f"preparing the {request.runtime} runtime", None, enabled=progress), cpu_threads(threads):
            prepared = prepare(request.runtime, built, inputs, device, dtype=request.dtype, channels_last=request.channels_last, threads=threads)
            peak = peak_memory(prepared.run, device, built, torch_memory=prepared.torch_memory) if request.memory else None  # before timing grows caches
        if request.measure_latency:
            latency = measure_runs({"model": prepared.run}, device, threads=threads, max_seconds=request.max_seconds, progress=progress)["model"]
        if request.energy:
            with PhaseProgress("measuring energy (about 10 s: cool-down, idle power, a >= 5 s window)", None, enabled=progress), cpu_threads(threads):
                energy_result = _measure_energy(prepared.run, request.batch, device)
    except torch.cuda.OutOfMemoryError as error:
        return ProfileResult(**common, fingerprint=device_fingerprint(device, threads), error=f"CUDA out of memory: {error}")
    return ProfileResult(
        **common, latency=latency, energy=energy_result, peak_memory_bytes=peak.bytes if peak else None,
        peak_memory_source=peak.source if peak else "not measured (not requested)",
        runtime_max_abs_diff=prepared.max_abs_diff, fingerprint=device_fingerprint(device, threads),
    )


def _measure_energy(run: Any, batch: int, device: torch.device) -> EnergyResult:
    try:
        monitor = EnergyMonitor(open_backend(device))
    except EnergyUnavailable as reason:
        return EnergyResult(unavailable_reason=str(reason))
    try:
        return measure_energy(run, batch, device, monitor)
    finally:
        monitor.close()


def _profile_isolated(request: ProfileRequest, timeout_s: float | None, progress: bool = False) -> ProfileResult:
    """Run ``_profile_here`` in a fresh interpreter; any failure comes back as ``error``. With ``progress``
    the child shares this terminal's stderr, so its progress line shows (and its messages stay there)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="hrvit-profile-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "profiling.isolated", str(out), *(["--progress"] if progress else [])],
                input=json.dumps(request.to_dict()), text=True, stdout=subprocess.DEVNULL,
                stderr=None if progress else subprocess.PIPE, env=env, timeout=timeout_s, check=False,
            )
            messages = done.stderr.strip()[-2000:] if done.stderr is not None else "its messages are above"
            failure = None if done.returncode == 0 and out.is_file() else (
                f"profiling subprocess exited with code {done.returncode}: {messages}"
            )
        except subprocess.TimeoutExpired:
            failure = f"profiling subprocess exceeded its {timeout_s} s timeout"
        if failure is not None:
            return ProfileResult(
                config_hash=request.config.content_hash(), device=str(request.device), input_size=request.input_size,
                batch=request.batch, dtype=request.dtype, options=request.options, error=failure,
            )
        return ProfileResult.from_dict(json.loads(out.read_text()))
