"""Accuracy estimators for the search that need data: ``supernet`` (inherited weights) and ``short-train``.

Both follow ``search.estimators.AccuracyEstimator``: constructed with keyword options (strings when they
come from ``--estimator-option key=value``, so every option is converted here), ``estimate(config,
trial=None) -> float`` with higher = better (validation mIoU). Both leave the caller's random generators
untouched, and give the same score for the same config every time.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

from hrvit_nas import UserError
from hrvit_space import ArchConfig
from profiling import resolve_device
from search import AccuracyEstimator
from training.distributed import DistContext
from training.evaluation import evaluate_member, space_member, val_loader
from training.loop import run_training
from training.optim import segmentation_loss
from training.recipe import TrainRecipe
from training.stream import isolated_rng
from training.supernet_train import load_supernet
from training.trainer import build_train_set, build_val_set, fit_config_to_data

MIOU_UNIT = "0-1"  # mIoU as returned by training.metrics: a fraction, not a percentage


def _int_option(value: Any, name: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"estimator option {name}={value!r} is not an integer; pass e.g. {name}=16") from None
    if number < minimum or (isinstance(value, float) and not value.is_integer()):
        raise UserError(f"estimator option {name}={value!r}; allowed: an integer >= {minimum}")
    return number


def _parse_spec(data: Any):
    from training.data import DatasetSpec

    if isinstance(data, DatasetSpec):
        return data
    if not isinstance(data, str) or not data:
        raise UserError("estimator option data= is required: a dataset spec such as data=synthetic:num_samples=64 or data=ade20k:/path")
    return DatasetSpec.parse(data)


class SupernetEstimator(AccuracyEstimator):
    """Validation mIoU of the member with weights inherited from a trained supernet (BN recalibrated).

    Options: ``checkpoint`` (supernet.pt, required), ``data`` (dataset spec; default: the supernet's own
    training data), ``batches`` (BN recalibration batches, 20), ``val_samples`` (cap on held-out images).
    ``input_size`` is accepted for the common interface; the data's resolution is what is evaluated.
    """

    name = "supernet"
    metric_name = "mIoU, supernet-inherited"
    unit = MIOU_UNIT

    def __init__(self, checkpoint: str | None = None, data: str | None = None, batches: Any = 20, val_samples: Any = None,
                 input_size: Any = None, device: str | None = "auto", seed: Any = 0) -> None:
        if not checkpoint:
            raise UserError("supernet estimator needs checkpoint=PATH (the supernet.pt written by `hrvit-nas train-supernet`)")
        self.device = resolve_device(device or "auto")
        self.supernet, self.space, recipe = load_supernet(checkpoint, self.device)
        self.spec = _parse_spec(data) if data is not None else _parse_spec_dict(recipe.dataset)
        self.recipe = recipe.replace(dataset=self.spec.to_dict())
        self.batches = _int_option(batches, "batches")
        self.val_samples = None if val_samples is None else _int_option(val_samples, "val_samples")
        self.seed = _int_option(seed if seed is not None else 0, "seed", minimum=0)
        self.train_set, self.val_set = build_train_set(self.spec, self.recipe), build_val_set(self.spec)

    def estimate(self, config: ArchConfig, trial=None) -> float:
        metrics = evaluate_member(self.supernet, space_member(self.space, config), self.train_set, self.val_set, self.spec, self.recipe,
                                  self.device, self.batches, self.val_samples, self.seed)
        return float(metrics["miou"])


class ShortTrainEstimator(AccuracyEstimator):
    """Validation mIoU after training the standalone member from scratch for ``iterations`` steps.

    Evaluates ``eval_points`` times; with a single-objective study it reports each value to the trial
    and stops early (``optuna.TrialPruned``) when the study's pruner says so. Options: ``data``
    (required), ``iterations`` (200), ``batch_size``, ``lr``, ``eval_points`` (4), ``val_samples``,
    ``crop`` (side of the square training crops; default the data's image size): training on crops of
    larger images keeps a step cheap while validation still sees the whole image.
    """

    name = "short-train"
    metric_name = "mIoU, short-trained"
    unit = MIOU_UNIT

    def __init__(self, data: str | None = None, iterations: Any = 200, batch_size: Any = None, lr: Any = None,
                 eval_points: Any = 4, val_samples: Any = None, crop: Any = None, input_size: Any = None,
                 device: str | None = "auto", seed: Any = 0) -> None:
        self.spec = _parse_spec(data)
        overrides: dict[str, Any] = {"iterations": _int_option(iterations, "iterations"), "num_workers": 0,
                                     "seed": _int_option(seed if seed is not None else 0, "seed", minimum=0)}
        if batch_size is not None:
            overrides["batch_size"] = _int_option(batch_size, "batch_size")
        if crop is not None:
            side = _int_option(crop, "crop")
            overrides["crop_size"] = (side, side)
        if lr is not None:
            try:
                overrides["lr"] = float(lr)
            except ValueError:
                raise UserError(f"estimator option lr={lr!r} is not a number; pass e.g. lr=0.002") from None
        points = _int_option(eval_points, "eval_points")
        overrides["eval_interval"] = max(1, overrides["iterations"] // points)
        overrides["checkpoint_interval"] = 0
        self.recipe = TrainRecipe.for_spec(self.spec, **overrides)
        self.val_samples = None if val_samples is None else _int_option(val_samples, "val_samples")
        self.device = resolve_device(device or "auto")
        self.train_set, self.val_set = build_train_set(self.spec, self.recipe), build_val_set(self.spec)

    def with_seed(self, seed: int) -> "ShortTrainEstimator":
        """The same estimator training from ``seed``, sharing the loaded data (a reference over several seeds)."""
        reseeded = copy.copy(self)
        reseeded.recipe = self.recipe.replace(seed=_int_option(seed, "seed", minimum=0))
        return reseeded

    def estimate(self, config: ArchConfig, trial=None) -> float:
        from hrvit_space import HRViT
        from training.inference import evaluate

        recipe, spec = self.recipe, self.spec
        config = fit_config_to_data(config, recipe.replace(drop_path_rate=0.0), spec.num_classes, log=lambda _: None)
        prune = trial is not None and len(trial.study.directions) == 1
        loader = val_loader(self.val_set, spec, self.val_samples)

        def step(model, images, masks, precision, iteration) -> float:
            with precision.autocast():
                logits = model(images)
            loss = segmentation_loss(logits, masks, spec.ignore_index)
            precision.backward(loss)
            return loss.item()

        def run_eval(model) -> dict[str, Any]:
            metrics = evaluate(model, loader, spec.num_classes, mode=recipe.eval_mode, crop=recipe.crop_size,
                               stride=recipe.sliding_stride(), device=self.device, ignore_index=spec.ignore_index)
            if prune:
                import optuna

                done = len(history) + 1
                trial.report(float(metrics["miou"]), step=done * recipe.eval_interval)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"short-train: pruned after {done * recipe.eval_interval} iterations")
            history.append(metrics)
            return metrics

        history: list[dict[str, Any]] = []
        with isolated_rng(recipe.seed), tempfile.TemporaryDirectory(prefix="hrvit-short-train-") as scratch:
            model = HRViT(config)
            run_training(model, recipe, scratch, self.train_set, step, evaluate=run_eval, meta={},
                         ctx=DistContext(0, 1, self.device), log=lambda _: None)
        return float(history[-1]["miou"])


def _parse_spec_dict(data: dict):
    from training.data import DatasetSpec

    return DatasetSpec.from_dict(data)
