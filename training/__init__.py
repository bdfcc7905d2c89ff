"""Training: full training of a config, supernet training, accuracy estimators, rank check, predict/evaluate.

Light names (recipe, bundle) import eagerly; the torch-heavy ones load on first use, so the CLI and
the reports package can read recipes and bundles without importing torch.
"""

from __future__ import annotations

import importlib

from training.bundle import Bundle, BundleError, load_bundle
from training.recipe import RecipeError, TrainRecipe

_LAZY = {
    "train": "training.trainer",
    "TrainingDiverged": "training.loop",
    "TrainingInterrupted": "training.loop",
    "train_supernet": "training.supernet_train",
    "load_supernet": "training.supernet_train",
    "SupernetEstimator": "training.estimators",
    "ShortTrainEstimator": "training.estimators",
    "rank_check": "training.rank_check",
    "RankCheckResult": "training.rank_check",
    "evaluate_member": "training.evaluation",
    "AccuracyPredictor": "training.accuracy_predictor",
    "PredictorEstimator": "training.accuracy_predictor",
    "fit_predictor": "training.accuracy_predictor",
    "load_trained_model": "training.predict",
    "predict_images": "training.predict",
    "evaluate_model": "training.predict",
    "apply_cfg_options": "training.overrides",
}

__all__ = ["Bundle", "BundleError", "RecipeError", "TrainRecipe", "load_bundle", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
