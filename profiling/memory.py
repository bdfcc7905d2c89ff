"""Memory of one inference call: measured (CUDA max allocated; CPU weights + peak live tensors) and
estimated before anything is allocated, so an impossible request is a clear error, not an allocator crash.

The CPU figure used to be resident-set growth, which read 0.0 MiB in a long-lived process (freed pages
still resident serve the next call). Torch's profiler instead records every tensor allocation and free
of the call, so their running sum is the peak of live tensor bytes wherever the process has been.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hrvit_nas import UserError
from profiling.device import synchronize

_MEMINFO = Path("/proc/meminfo")
CPU_SOURCE = "weights + peak live tensors of one call (torch profiler)"
CUDA_SOURCE = "CUDA max allocated during one call (weights included)"


@dataclass(frozen=True)
class PeakMemory:
    bytes: int | None
    source: str  # how it was measured, or why it is unavailable


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Kineto writes two ``USDT: ... profiler_start/stop`` lines per session straight to file descriptor 2,
    whatever its log level; a profile of 24 trials would print 48 of them between the progress lines."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _peak_live_cpu_bytes(run: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recording:
        run()
    live = peak = 0
    # An op event carries the net bytes it allocated itself; frees outside any op are "[memory]" events.
    for event in sorted(recording.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def peak_memory(run: Callable[[], object], device: torch.device, model: nn.Module | None = None, *, torch_memory: bool = True) -> PeakMemory:
    """Peak memory of one ``run()``; ``torch_memory=False`` (a runtime allocating outside torch) is unavailable."""
    if not torch_memory:
        return PeakMemory(None, "unavailable: this runtime allocates outside torch, whose memory statistics cannot see it")
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return PeakMemory(int(torch.cuda.max_memory_allocated(device)), CUDA_SOURCE)
    weights = _tensor_bytes(model) if model is not None else 0
    return PeakMemory(weights + _peak_live_cpu_bytes(run), CPU_SOURCE)


def estimate_inference_bytes(model_on_meta: nn.Module, inputs_shape: tuple[int, ...]) -> int:
    """A lower bound of one forward's memory, from shapes alone (a forward on the meta device allocates
    nothing): weights, plus the largest layer's input and output alive at once."""
    largest = [0]

    def record(module: nn.Module, args: tuple, output: object) -> None:
        tensors = [t for t in (*args, output) if isinstance(t, torch.Tensor)]
        largest[0] = max(largest[0], sum(t.numel() * t.element_size() for t in tensors))

    hooks = [m.register_forward_hook(record) for m in model_on_meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model_on_meta(torch.empty(inputs_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return _tensor_bytes(model_on_meta) + max(largest[0], 4 * int(torch.Size(inputs_shape).numel()))


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use now: CUDA free memory, else the kernel's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(build_on_meta: Callable[[], nn.Module], inputs_shape: tuple[int, ...], devices: list[torch.device], what: str) -> None:
    """Refuse ``what`` when its estimated memory exceeds what a device it runs on has available."""
    with torch.device("meta"):
        model = build_on_meta()
    needed = estimate_inference_bytes(model, inputs_shape)
    for device in devices:
        limit = available_bytes(device)
        if limit is not None and needed > limit:
            raise UserError(
                f"{what} needs at least {_gib(needed)} of memory on {device} (weights plus the largest activation), "
                f"but only {_gib(limit)} is available; use a smaller --input or --batch"
            )
