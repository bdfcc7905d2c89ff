"""``profile(config)``: parameters, compute, latency, memory and energy of one architecture, cached.

Compute is counted on CPU in fp32 (it does not depend on the device); timing, memory and energy run on
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
from pathlib import Path
from typing import Any

import torch

from hrvit_nas import UserError
from hrvit_space import ArchConfig
from profiling.cache import ProfileCache, cache_key
from profiling.choices import DEFAULT_MAX_SECONDS
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


def _checked_input_size(config: ArchConfig, input_size: Any) -> tuple[int, int]:
    size = tuple(config.input_size if input_size is None else input_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise UserError(f"input size {input_size!r} is malformed; give HEIGHTxWIDTH with positive integers, e.g. 512x512")
    config.replace(input_size=size)  # raises ConfigError when a window does not fit the feature maps at this size
    return size  # type: ignore[return-value]


def _open_cache(cache: ProfileCache | str | os.PathLike | None) -> ProfileCache | None:
    if cache is None or isinstance(cache, ProfileCache):
        return cache
    return ProfileCache(None if cache == DEFAULT_CACHE else cache)


def profile(
    config: ArchConfig,
    *,
    device: str | torch.device = "auto",
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    dtype: str = "fp32",
    runtime: str = "eager",
    energy: bool = False,
    measure_latency: bool = True,
    channels_last: bool = False,
    threads: int | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    cache: ProfileCache | str | os.PathLike | None = DEFAULT_CACHE,
    isolate: bool = False,
    timeout_s: float | None = None,
    progress: bool = False,
) -> ProfileResult:
    """Profile ``config`` (cached: a repeated call answers from the cache without building the model).

    ``cache``: a ProfileCache, a path, ``"default"`` (``default_cache_path()``) or None for no cache.
    ``runtime``: eager, compile, cuda-graphs, onnxruntime, onnxruntime-trt or tensorrt (``profiling.runtimes``).
    ``threads``: CPU intra-op threads (default ``latency.default_threads()``: the cores this process may use).
    ``max_seconds`` bounds the latency measurement (at least 2 trials run); ``timeout_s`` the isolated subprocess.
    ``progress``: show a progress line with ETA on stderr.
    """
    resolved = resolve_device(device)
    check_dtype(dtype, resolved)
    size = _checked_input_size(config, input_size)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise UserError(f"batch {batch!r} is invalid; give a positive integer")
    threads = default_threads() if threads is None else check_threads(threads)
    if max_seconds is not None and not max_seconds > 0:
        raise UserError(f"max_seconds {max_seconds!r} is invalid; give a positive number of seconds")
    check_runtime(runtime, resolved, dtype)
    options = {
        "latency": measure_latency, "energy": energy, "channels_last": channels_last, "runtime": runtime,
        "runtime_version": runtime_version(runtime),
    }
    fingerprint = device_fingerprint(resolved, threads=threads, volatile=False)
    key = cache_key(config.content_hash(), size, batch, dtype, options, fingerprint["fingerprint_id"])
    store = _open_cache(cache)
    try:
        if store is not None and (hit := store.get(key)) is not None:
            return dataclasses.replace(hit, cached=True)
        _check_memory(config, size, batch, resolved)
        request = {
            "config": config, "device": resolved, "input_size": size, "batch": batch, "dtype": dtype, "options": options,
            "threads": threads, "max_seconds": max_seconds,
        }
        result = _profile_isolated(request, timeout_s) if isolate else _profile_here(**request, progress=progress)
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


def _profile_here(
    config: ArchConfig, device: torch.device, input_size: tuple[int, int], batch: int, dtype: str, options: dict[str, Any],
    threads: int, max_seconds: float | None, progress: bool = False,
) -> ProfileResult:
    from hrvit_space import build_model

    with PhaseProgress("building the model and counting FLOPs", None, enabled=progress):
        model = build_model(config.replace(input_size=input_size)).eval()
        inputs = torch.randn(batch, config.in_chans, *input_size)
        params, params_by_component, params_by_branch = count_params(model)
        with torch.no_grad(), cpu_threads(threads):
            flops = count_flops(model, inputs)
    common = {
        "config_hash": config.content_hash(), "params": params, "params_by_component": params_by_component,
        "params_by_branch": params_by_branch, "macs": flops.macs, "macs_by_component": flops.macs_by_component,
        "macs_by_branch": flops.macs_by_branch, "macs_by_operator": flops.by_operator, "other_ops": flops.other_ops,
        "uncounted_ops": flops.uncounted, "device": str(device), "input_size": input_size, "batch": batch, "dtype": dtype, "options": options,
    }
    if not (options["latency"] or options["energy"]):
        return ProfileResult(**common, peak_memory_source="not measured (counts only)", fingerprint=device_fingerprint(device, threads))
    latency = energy_result = None
    try:
        with PhaseProgress(f"preparing the {options['runtime']} runtime", None, enabled=progress), cpu_threads(threads):
            prepared = prepare(
                options["runtime"], model, inputs, device, dtype=dtype, channels_last=options["channels_last"], threads=threads
            )
            peak = peak_memory(prepared.run, device, model, torch_memory=prepared.torch_memory)  # before timing grows caches
        if options["latency"]:
            latency = measure_runs({"model": prepared.run}, device, threads=threads, max_seconds=max_seconds, progress=progress)["model"]
        if options["energy"]:
            with cpu_threads(threads):
                energy_result = _measure_energy(prepared.run, batch, device)
    except torch.cuda.OutOfMemoryError as error:
        return ProfileResult(**common, fingerprint=device_fingerprint(device, threads), error=f"CUDA out of memory: {error}")
    return ProfileResult(
        **common, latency=latency, energy=energy_result, peak_memory_bytes=peak.bytes, peak_memory_source=peak.source,
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


def _profile_isolated(request: dict[str, Any], timeout_s: float | None) -> ProfileResult:
    """Run ``_profile_here`` in a fresh interpreter; any failure comes back as ``error``."""
    payload = {**request, "config": request["config"].to_dict(), "device": str(request["device"]), "input_size": list(request["input_size"])}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="hrvit-profile-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "profiling.isolated", str(out)], input=json.dumps(payload), text=True,
                capture_output=True, env=env, timeout=timeout_s, check=False,
            )
            failure = None if done.returncode == 0 and out.is_file() else (
                f"profiling subprocess exited with code {done.returncode}: {done.stderr.strip()[-2000:]}"
            )
        except subprocess.TimeoutExpired:
            failure = f"profiling subprocess exceeded its {timeout_s} s timeout"
        if failure is not None:
            return ProfileResult(
                config_hash=request["config"].content_hash(), device=payload["device"], input_size=request["input_size"],
                batch=request["batch"], dtype=request["dtype"], options=request["options"], error=failure,
            )
        return ProfileResult.from_dict(json.loads(out.read_text()))
