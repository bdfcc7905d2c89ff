"""Device and dtype resolution: the one place that turns user strings into torch objects (or a UserError)."""

from __future__ import annotations

import contextlib

import torch

from hrvit_nas import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, never a silent CPU run.

    The one rule for every ``--device`` (profile, search, train, predict, the estimators): cpu, cuda,
    cuda:N (N must be visible) or auto; ``cuda`` means ``cuda:0``, so results name the GPU they ran on.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise UserError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no CUDA GPU is visible to torch {torch.__version__}; use --device cpu or auto")
    index = resolved.index or 0
    if index >= torch.cuda.device_count():
        raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def check_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 everywhere; fp16/bf16 run as autocast, where the device supports them."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if device.type == "cpu" and dtype == "fp16":
        raise UserError("dtype fp16 is not supported for CPU profiling (no fast fp16 kernels); use fp32 or bf16, or a CUDA device")
    if device.type == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError(f"dtype bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    return DTYPES[dtype]


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    # No weight-cast cache: each weight is cast once per forward anyway, and the cache breaks CUDA-graph capture.
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype], cache_enabled=False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
