"""Accuracy estimators: one small interface so a search can trade cost for fidelity.

Every estimator class is constructed as ``cls(input_size=..., device=..., seed=..., **options)`` (the
search passes the first three; ``--estimator-option key=value`` adds the rest) and scores a config with
``estimate(config, trial=None) -> float`` where higher is better. ``trial`` (an ``optuna.Trial``) is
there for estimators that report intermediate values or store extra attributes.

Built in:

- ``zero-cost``: NASWOT (Mellor et al., ICML 2021), no training. One forward pass of a freshly
  initialised network on a small seeded random batch; the binary activation codes of the batch give
  a kernel whose log-determinant is the score (networks that separate inputs well score high).
- ``params`` / ``flops``: capacity proxies for params/FLOPs-only searches: the "accuracy" objective is
  the model size (M parameters) or compute (GFLOPs), bigger = better. They reuse the profiler's counts,
  so they cost nothing. They cannot be combined with the objective they duplicate (``params`` with the
  params objective, ``flops`` with the flops objective). A search whose objectives omit ``accuracy``
  uses no estimator at all.

Plugged in from the training package: ``supernet`` and ``short-train``.
"""

from __future__ import annotations

import abc
import importlib
import inspect
from typing import Any

from hrvit_nas.errors import UserError

ESTIMATORS: dict[str, str] = {
    "zero-cost": "search.estimators:ZeroCostEstimator",
    "params": "search.estimators:ParamsEstimator",
    "flops": "search.estimators:FlopsEstimator",
    "supernet": "training.estimators:SupernetEstimator",
    "short-train": "training.estimators:ShortTrainEstimator",
    "predictor": "training.accuracy_predictor:PredictorEstimator",
}
DEFAULT_ESTIMATOR = "zero-cost"


class AccuracyEstimator(abc.ABC):
    """Scores an architecture; higher means (predicted) more accurate."""

    name: str = "base"

    @abc.abstractmethod
    def estimate(self, config, trial=None) -> float: ...


def make_estimator(name: str, **options: Any) -> AccuracyEstimator:
    """Import and construct the estimator registered as ``name``; bad names/options raise UserError."""
    if name not in ESTIMATORS:
        raise UserError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    module_name, class_name = ESTIMATORS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise UserError(f"estimator {name!r} is not available in this installation ({error}); choose another --estimator") from None
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [key for key in options if key not in accepted and not takes_any]
    if unknown:
        allowed = [k for k, p in accepted.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        raise UserError(f"estimator {name!r} has no option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return cls(**options)


class ZeroCostEstimator(AccuracyEstimator):
    """NASWOT score of a seeded random initialisation on a seeded random batch (deterministic)."""

    name = "zero-cost"

    def __init__(self, input_size=(512, 512), device="cpu", seed: int = 0, batch: int = 8) -> None:
        if not isinstance(batch, int) or batch < 2:
            raise UserError(f"zero-cost estimator: batch={batch!r}; it needs an integer >= 2 (the score compares inputs)")
        self.input_size = tuple(input_size)
        self.device = "cpu" if device in (None, "auto") else device
        self.seed = seed if seed is not None else 0
        self.batch = batch

    def estimate(self, config, trial=None) -> float:
        import torch

        from hrvit_space.model import build_model

        config = config.replace(input_size=self.input_size, drop_path_rate=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = build_model(config).to(self.device).eval()
        generator = torch.Generator().manual_seed(self.seed)
        images = torch.randn(self.batch, config.in_chans, *self.input_size, generator=generator).to(self.device)
        return naswot_score(model, images)


# Matched by function name, so functional calls (F.gelu) and modules (nn.GELU calls F.gelu) both count.
ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "gelu", "hardswish", "silu", "leaky_relu", "elu", "mish"})


def naswot_score(model, images) -> float:
    """log|K| with K[i, j] = number of activation units where inputs i and j agree on the sign."""
    import torch
    from torch.overrides import TorchFunctionMode

    batch = images.shape[0]
    kernel = torch.zeros(batch, batch, dtype=torch.float64, device=images.device)
    seen = []

    class RecordActivations(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
                # Layers may fold other dims into the batch dim (x.reshape(-1, k, p)); layouts stay batch-major.
                codes = (args[0].detach().reshape(batch, -1) > 0).to(torch.float64)
                kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)
                seen.append(func)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), RecordActivations():
        model(images)
    if not seen:
        raise UserError("zero-cost estimator: the model has no activation layers to score; use another --estimator")
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("-inf")


class _CapacityEstimator(AccuracyEstimator):
    """Model size as an accuracy proxy; counts come from the profiler (cached, no forward for params)."""

    key = ""

    def __init__(self, input_size=(512, 512), device="cpu", seed: int | None = None) -> None:
        self.input_size = tuple(input_size)

    def estimate(self, config, trial=None) -> float:
        from profiling import profile

        result = profile(config, device="cpu", input_size=self.input_size, measure_latency=False)
        return float(result.to_dict()[self.key])


class ParamsEstimator(_CapacityEstimator):
    name = "params"
    key = "params_m"


class FlopsEstimator(_CapacityEstimator):
    name = "flops"
    key = "gflops"
