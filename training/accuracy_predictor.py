"""An accuracy predictor (the OFA / HAT approach): a small MLP from a member's knobs to its supernet mIoU.

Evaluating one member through the supernet costs a BN recalibration and a validation pass; the
predictor costs a microsecond, so a search can screen thousands of candidates with it. It is fitted
on supernet-evaluated members; a seeded share of them is held out, and the held-out Kendall tau and
errors are stored with the weights, so a user sees how far to trust it before searching with it.

Features: each knob's value scaled to [0, 1] between its smallest and largest choice (depths, windows
and MLP ratios are ordered quantities). The file is JSON (space, feature scaling, weights, held-out
metrics): no pickle, readable by anyone.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau, spearmanr
from torch import nn

from hrvit_nas import UserError
from hrvit_space import ArchConfig, SearchSpace
from search import AccuracyEstimator
from training.evaluation import space_member

FORMAT = "hrvit-nas-accuracy-predictor"
HIDDEN = 64
STEPS = 2000
MIN_SAMPLES = 8


class PredictorError(UserError):
    """A predictor file that is missing or not one of ours, or too few samples to fit one."""


def features(space: SearchSpace, configs: Sequence[ArchConfig]) -> torch.Tensor:
    """``float[N, knobs]``: each knob's value scaled to [0, 1] over its choices (single-choice knobs: 0)."""
    knobs = space.knobs()
    rows = []
    for config in configs:
        values = space.encode(space_member(space, config))
        rows.append([(values[k.name] - min(k.choices)) / ((max(k.choices) - min(k.choices)) or 1) for k in knobs])
    return torch.tensor(rows, dtype=torch.float32)


def _network(inputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


@dataclass
class AccuracyPredictor:
    """A fitted predictor: ``predict(configs)`` gives the estimated target (e.g. supernet mIoU) per config."""

    space: SearchSpace
    network: nn.Sequential
    mean: float
    std: float
    target: dict[str, str] = field(default_factory=dict)  # metric_name and unit of what was fitted
    metrics: dict[str, float] = field(default_factory=dict)  # held-out kendall_tau, spearman_rho, mae, rmse, counts

    def predict(self, configs: Sequence[ArchConfig]) -> list[float]:
        with torch.no_grad():
            return (self.network(features(self.space, configs))[:, 0] * self.std + self.mean).tolist()

    def to_dict(self) -> dict[str, Any]:
        layers = [{"weight": m.weight.tolist(), "bias": m.bias.tolist()} for m in self.network if isinstance(m, nn.Linear)]
        return {"format": FORMAT, "version": 1, "space": self.space.to_dict(), "target": self.target,
                "scale": {"mean": self.mean, "std": self.std}, "layers": layers, "metrics": self.metrics}

    def save(self, path: str | Path) -> None:
        from hrvit_nas import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccuracyPredictor:
        space = SearchSpace.from_dict(data["space"])
        network = _network(len(space.knobs()))
        linears = [m for m in network if isinstance(m, nn.Linear)]
        if len(data["layers"]) != len(linears):
            raise PredictorError(f"predictor has {len(data['layers'])} layers, this version builds {len(linears)}; refit it")
        names = [name for name, module in network.named_children() if isinstance(module, nn.Linear)]
        network.load_state_dict({f"{name}.{key}": torch.tensor(layer[key], dtype=torch.float32)
                                 for name, layer in zip(names, data["layers"]) for key in ("weight", "bias")})
        return cls(space, network.eval(), float(data["scale"]["mean"]), float(data["scale"]["std"]),
                   dict(data.get("target", {})), dict(data.get("metrics", {})))

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        path = Path(path)
        if not path.is_file():
            raise PredictorError(f"predictor file {str(path)!r} not found; fit one with `hrvit-nas fit-predictor --supernet supernet.pt`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PredictorError(f"{path} is not a predictor file ({error}); pass the JSON written by `hrvit-nas fit-predictor`") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PredictorError(f"{path} is not a predictor file; pass the JSON written by `hrvit-nas fit-predictor`")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise PredictorError(f"predictor file {path} is damaged ({error}); fit it again with `hrvit-nas fit-predictor`") from None


def _train(inputs: torch.Tensor, targets: torch.Tensor, seed: int) -> nn.Sequential:
    """Full-batch Adam on standardised targets; seeded, so the same samples give the same predictor."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _network(inputs.shape[1])
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(network(inputs)[:, 0], targets)
        loss.backward()
        optimizer.step()
    return network.eval()


def fit_predictor(space: SearchSpace, configs: Sequence[ArchConfig], scores: Sequence[float], *, holdout: float = 0.25,
                  seed: int = 0, target: dict[str, str] | None = None) -> AccuracyPredictor:
    """Fit on a seeded ``1 - holdout`` share of ``(configs, scores)``; measure it on the rest.

    The stored predictor is the one measured (not refitted on everything), so its metrics are honest.
    """
    if len(configs) != len(scores):
        raise PredictorError(f"{len(configs)} configs but {len(scores)} scores; pass one score per config")
    if len(configs) < MIN_SAMPLES:
        raise PredictorError(f"{len(configs)} samples; a predictor needs at least {MIN_SAMPLES} (pass --samples {4 * MIN_SAMPLES} or more)")
    if not 0 < holdout < 1:
        raise PredictorError(f"holdout={holdout!r}; pass a share between 0 and 1, e.g. 0.25")
    order = list(range(len(configs)))
    random.Random(seed).shuffle(order)
    held = max(3, round(holdout * len(order)))
    test, train = order[:held], order[held:]
    inputs, values = features(space, configs), torch.tensor([float(s) for s in scores])
    mean, std = float(values[train].mean()), float(values[train].std()) or 1.0
    network = _train(inputs[train], (values[train] - mean) / std, seed)
    predictor = AccuracyPredictor(space, network, mean, std, dict(target or {}))
    predicted = torch.tensor(predictor.predict([configs[i] for i in test]))
    actual = values[test]
    error = predicted - actual
    predictor.metrics = {
        "heldout_kendall_tau": _finite(kendalltau(predicted, actual).statistic),
        "heldout_spearman_rho": _finite(spearmanr(predicted, actual).statistic),
        "heldout_mae": float(error.abs().mean()), "heldout_rmse": float(error.pow(2).mean().sqrt()),
        "train_samples": len(train), "heldout_samples": len(test),
    }
    return predictor


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined correlation (constant scores) is stored as null."""
    return None if math.isnan(value) else float(value)


def fit_from_supernet(checkpoint: str | Path, samples: int = 64, *, data: str | None = None, batches: int = 20,
                      val_samples: int | None = None, device: str = "auto", seed: int = 0,
                      log: Callable[[str], None] = print) -> AccuracyPredictor:
    """Score ``samples`` distinct members with the ``supernet`` estimator and fit a predictor on them."""
    from training.estimators import SupernetEstimator
    from training.rank_check import distinct_members

    if samples < MIN_SAMPLES:  # before the supernet evaluations, not after
        raise PredictorError(f"--samples {samples}; a predictor needs at least {MIN_SAMPLES} (pass --samples {4 * MIN_SAMPLES} or more)")
    estimator = SupernetEstimator(checkpoint=str(checkpoint), data=data, batches=batches, val_samples=val_samples,
                                  device=device, seed=seed)
    configs = distinct_members(estimator.space, samples, seed)
    scores = []
    for index, config in enumerate(configs):
        scores.append(estimator.estimate(config))
        log(f"[{index + 1}/{len(configs)}] {config.name}: {estimator.metric_name} {scores[-1]:.4f}")
    return fit_predictor(estimator.space, configs, scores, seed=seed,
                         target={"metric_name": estimator.metric_name, "unit": estimator.unit})


class PredictorEstimator(AccuracyEstimator):
    """The predicted supernet mIoU of a config, from ``predictor=PATH`` (written by ``hrvit-nas fit-predictor``).

    ``input_size``, ``device`` and ``seed`` are accepted for the common interface; prediction needs none.
    """

    name = "predictor"
    metric_name = "mIoU, predicted"
    unit = "0-1"

    def __init__(self, predictor: str | None = None, input_size: Any = None, device: Any = None, seed: Any = None) -> None:
        if not predictor:
            raise PredictorError("predictor estimator needs predictor=PATH (the JSON written by `hrvit-nas fit-predictor`)")
        self.predictor = AccuracyPredictor.load(predictor)

    def estimate(self, config: ArchConfig, trial=None) -> float:
        return self.predictor.predict([config])[0]
