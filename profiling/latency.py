"""Latency measurement that survives a noisy machine.

Measured on a shared 2-core host: one timing trial varies 4-6% between trials whatever its length, the
median of 10-20 short trials gets under 2%, and a process's first calls are 1.5-1.8x steady state. So:
warm up for >= 1 s, time several short trials (each averages enough calls to last ``trial_s``), report
the median with its spread, interleave candidates that are compared, and flag a median whose estimated
relative error exceeds 2% as unstable.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from profiling.device import autocast, check_dtype, synchronize
from profiling.result import LatencyStats

STABLE_RELATIVE_ERROR = 0.02
# Asymptotic standard error of a sample median relative to the standard deviation, sqrt(pi / 2).
_MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def median_relative_error(samples: list[float]) -> float:
    """Estimated standard error of the median, relative to the median."""
    if len(samples) < 2:
        return math.inf
    return _MEDIAN_SE_FACTOR * statistics.stdev(samples) / math.sqrt(len(samples)) / statistics.median(samples)


def latency_stats(samples_ms: list[float], *, calls_per_trial: int = 1, threads: int | None = None) -> LatencyStats:
    """Summary of per-call latencies (ms), one sample per trial."""
    if not samples_ms:
        raise ValueError("latency_stats needs at least one sample")
    ordered = sorted(samples_ms)
    mean = statistics.fmean(ordered)
    cv = statistics.stdev(ordered) / mean if len(ordered) > 1 else math.inf
    return LatencyStats(
        median=statistics.median(ordered),
        p10=_quantile(ordered, 0.10),
        p90=_quantile(ordered, 0.90),
        iqr=_quantile(ordered, 0.75) - _quantile(ordered, 0.25),
        mean=mean,
        cv=cv,
        n=len(ordered),
        stable=median_relative_error(ordered) <= STABLE_RELATIVE_ERROR,
        samples=tuple(samples_ms),
        calls_per_trial=calls_per_trial,
        threads=threads,
    )


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op thread count for the measurement (and restore it), yielding the count used."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _timed_block(run: Callable[[], object], calls: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    synchronize(device)
    return time.perf_counter() - start


def _warm_up(run: Callable[[], object], device: torch.device, warmup_s: float) -> float:
    """Run for at least ``warmup_s`` (and 3 calls); return the steady per-call time in seconds."""
    deadline = time.perf_counter() + warmup_s
    calls, last = 0, math.inf
    while calls < 3 or time.perf_counter() < deadline:
        last = _timed_block(run, 1, device)
        calls += 1
    return last


def measure_runs(
    runs: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup_s: float = 1.0,
    trials: int = 15,
    max_trials: int = 45,
    trial_s: float = 0.05,
    threads: int | None = None,
) -> dict[str, LatencyStats]:
    """Time several callables interleaved (round-robin, rotating start) so drift hits them all alike.

    After ``trials`` rounds, candidates whose median is not yet stable get more rounds, up to ``max_trials``.
    """
    if trials < 2:
        raise ValueError("trials must be >= 2 to estimate a spread")
    names = list(runs)
    with cpu_threads(threads if device.type == "cpu" else None) as used_threads:
        calls = {}
        for name in names:
            per_call = _warm_up(runs[name], device, warmup_s)
            calls[name] = max(1, math.ceil(trial_s / max(per_call, 1e-9)))
        samples: dict[str, list[float]] = {name: [] for name in names}
        pending = list(names)
        for round_index in range(max_trials):
            shift = round_index % len(pending)
            for name in pending[shift:] + pending[:shift]:
                seconds = _timed_block(runs[name], calls[name], device)
                samples[name].append(1e3 * seconds / calls[name])
            if round_index + 1 >= trials:
                pending = [n for n in pending if median_relative_error(samples[n]) > STABLE_RELATIVE_ERROR]
                if not pending:
                    break
    recorded_threads = used_threads if device.type == "cpu" else None
    return {name: latency_stats(samples[name], calls_per_trial=calls[name], threads=recorded_threads) for name in names}


def prepare_run(
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device,
    *,
    dtype: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
) -> Callable[[], object]:
    """A no-argument inference call of ``model`` on ``inputs`` with the requested execution options."""
    check_dtype(dtype, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).eval()
    inputs = inputs.to(device=device, memory_format=memory_format)
    if compile:
        model = torch.compile(model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def run() -> object:
        with torch.inference_mode(), autocast(device, dtype):
            return model(inputs)

    if not cuda_graphs:
        return run
    if device.type != "cuda":
        raise ValueError("cuda_graphs needs a CUDA device")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def measure_latency(
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device | str = "cpu",
    *,
    dtype: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    warmup_s: float = 1.0,
    trials: int = 15,
    max_trials: int = 45,
    trial_s: float = 0.05,
    threads: int | None = None,
) -> LatencyStats:
    """Per-call latency statistics (ms) of ``model(inputs)``; batch and input size are those of ``inputs``."""
    device = torch.device(device)
    run = prepare_run(model, inputs, device, dtype=dtype, channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs)
    stats = measure_runs({"model": run}, device, warmup_s=warmup_s, trials=trials, max_trials=max_trials, trial_s=trial_s, threads=threads)
    return stats["model"]
