"""Accuracy estimators: one small interface so a search can trade cost for fidelity.

Estimators are found by name in the ``hrvit_nas.estimators`` entry-point group, so a user's own package
adds one with no change here, and spawned ``--workers`` find it too (an entry point is package
metadata, not state of the parent process). In the user's ``pyproject.toml``::

    [project.entry-points."hrvit_nas.estimators"]
    my-proxy = "my_package.proxies:MyProxy"   # then: hrvit-nas search --estimator my-proxy

Every estimator declares what it returns: ``metric_name`` (e.g. "NASWOT score", never a bare
"accuracy") and ``unit``; the study stores them as the accuracy objective's name (``study.set_metric_names``).
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

The training package registers ``supernet`` and ``short-train`` the same way (see ``pyproject.toml``).
"""

from __future__ import annotations

import abc
import inspect
from importlib.metadata import entry_points
from typing import Any

from hrvit_nas import UserError

ENTRY_POINT_GROUP = "hrvit_nas.estimators"
DEFAULT_ESTIMATOR = "zero-cost"


class AccuracyEstimator(abc.ABC):
    """Scores an architecture; higher means (predicted) more accurate."""

    name: str = "base"
    metric_name: str = "estimator score"  # what ``estimate`` returns, shown on every axis and table
    unit: str = ""
    # True: ``build(config)`` makes the model ``estimate(config, trial, model=...)`` scores, and the search
    # times that same model instead of building a second one per trial
    shares_model: bool = False

    @abc.abstractmethod
    def estimate(self, config, trial=None) -> float: ...


def estimator_names() -> list[str]:
    """Names registered in the ``hrvit_nas.estimators`` entry-point group (built-in and installed plug-ins)."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def estimator_class(name: str) -> type[AccuracyEstimator]:
    """The class registered as ``name``, imported on first use; unknown or broken names raise UserError."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise UserError(f"unknown estimator {name!r}; choose from {', '.join(estimator_names())}")
    try:
        return found[0].load()
    except (ImportError, AttributeError) as error:
        raise UserError(f"estimator {name!r} is not available in this installation ({error}); choose another --estimator") from None


def make_estimator(name: str, **options: Any) -> AccuracyEstimator:
    """Import and construct the estimator registered as ``name``; bad names/options raise UserError."""
    cls = estimator_class(name)
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
    metric_name = "NASWOT score"
    unit = "log-det"

    def __init__(self, input_size=(512, 512), device="cpu", seed: int = 0, batch: int = 8) -> None:
        if not isinstance(batch, int) or batch < 2:
            raise UserError(f"zero-cost estimator: batch={batch!r}; it needs an integer >= 2 (the score compares inputs)")
        self.input_size = tuple(input_size)
        self.device = "cpu" if device in (None, "auto") else device
        self.seed = seed if seed is not None else 0
        self.batch = batch

    shares_model = True

    def build(self, config):
        """The seeded initialisation the score is defined on (the global RNG is left as it was)."""
        import torch

        from hrvit_space import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return build_model(config.replace(input_size=self.input_size, drop_path_rate=0.0)).eval()

    def estimate(self, config, trial=None, model=None) -> float:
        """``model``: ``build(config)``'s model, possibly timed meanwhile (timing changes no weight)."""
        import torch

        model = (model if model is not None else self.build(config)).to(self.device).eval()
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
    """Model size as an accuracy proxy, counted analytically from the config (no model, no forward pass)."""

    def __init__(self, input_size=(512, 512), device="cpu", seed: int | None = None) -> None:
        self.input_size = tuple(input_size)

    def counts(self, config):
        from profiling import analytic_counts

        return analytic_counts(config, self.input_size)


class ParamsEstimator(_CapacityEstimator):
    name = "params"
    metric_name = "parameters (capacity proxy)"
    unit = "M"

    def estimate(self, config, trial=None) -> float:
        return self.counts(config).params / 1e6


class FlopsEstimator(_CapacityEstimator):
    name = "flops"
    metric_name = "FLOPs (capacity proxy)"
    unit = "GFLOPs"

    def estimate(self, config, trial=None) -> float:
        return self.counts(config).flops / 1e9
