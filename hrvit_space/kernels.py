"""The faster of equivalent kernels, chosen by measurement on this host (like ``cudnn.benchmark``).

Which CPU kernel wins for HRViT's small, skinny shapes depends on the host, not on the model: on one
AVX-512 EPYC VM (2026-12-01) oneDNN's 1x1 convolution ran the token linears 1.9-3.6x faster than MKL's
sgemm; on another (2026-12-02) sgemm was as fast or up to 1.25x faster, and oneDNN-routed b1 at 224x224
spent 17 ms more per forward in GEMMs than the same model on sgemm; on a third (2026-12-04) oneDNN's matmul
on a weight reordered once (``layers.onednn_packed_weight``, without autograd) beat sgemm by 3-17%.
Fused SDPA against an explicit ``softmax(q k^T) v`` swung the same way by shape (0.4-1.5x). A fixed rule
is wrong somewhere, so the first call with a new key (operation, shapes, strides, dtype, threads, autograd
on or off) times the candidates interleaved (a warm-up call each, then the best of ``ROUNDS``) and every
later call runs the winner; the first candidate (what PyTorch itself would run) is kept unless another is
``MARGIN`` faster, so timing noise on a busy machine rarely swaps a kernel for an equal or slower one.

Candidates compute the same function (outputs equal to float rounding); the choice only moves time.
Traces never get here (``layers.traced``: they record the plain ops). ``HRVIT_NAS_KERNELS=first`` turns
the measurement off and always runs the first candidate (reproducible kernels, e.g. for bitwise tests).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

# Part of the eager runtime's version (``profiling.runtimes``): bumped whenever a change moves the eager
# forward's speed (kernel choices, packed or folded weights), so cached eager latencies and latency
# predictors built on the old forward are measured again instead of mixed with new ones.
EAGER_FORWARD_VERSION = 3
ROUNDS = 5
MARGIN = 0.05
_DISABLE_ENV = "HRVIT_NAS_KERNELS"
_choices: dict[tuple, str] = {}


def run_fastest(key: tuple, candidates: Mapping[str, Callable[..., Tensor]], *args: object) -> Tensor:
    """``candidates[name](*args)`` for the candidate measured fastest for ``key`` (measuring them on the
    first call with it). Callers pass module-level candidate tables and the arguments, not fresh closures:
    this runs a few hundred times per forward."""
    key = (*key, torch.get_num_threads(), torch.is_grad_enabled())
    choice = _choices.get(key)
    if choice is None:
        choice = _choices[key] = _measure(candidates, args)
    return candidates[choice](*args)


def chosen_kernels() -> dict[tuple, str]:
    """What was chosen so far, by key (a copy): for benchmarks and tests."""
    return dict(_choices)


def _measure(candidates: Mapping[str, Callable[..., Tensor]], args: tuple) -> str:
    names = list(candidates)
    if len(names) == 1 or os.environ.get(_DISABLE_ENV) == "first":
        return names[0]
    best = dict.fromkeys(names, float("inf"))
    with torch.no_grad():  # timing calls must not grow an autograd graph
        for name in names:
            candidates[name](*args)  # oneDNN builds its primitive on the first call: keep that out
        for _ in range(ROUNDS):
            for name in names:
                start = time.perf_counter()
                candidates[name](*args)
                best[name] = min(best[name], time.perf_counter() - start)
    fastest = min(names, key=best.__getitem__)
    return fastest if best[fastest] < (1 - MARGIN) * best[names[0]] else names[0]
