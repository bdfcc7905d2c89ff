"""Training: full training of a config, supernet training, accuracy estimators, rank check, predict/evaluate.

Light names (recipe, bundle) import eagerly; the torch-heavy ones load on first use
(hrvit_nas.lazy_exports), so the CLI and the reports package can read recipes and bundles without
importing torch.
"""

from hrvit_nas import lazy_exports
from training.bundle import (
    BUNDLE_FILES,
    CONFIG_FILE,
    METRICS_FILE,
    ONNX_FILE,
    RECIPE_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    Bundle,
    BundleError,
    load_bundle,
)
from training.recipe import RecipeError, TrainRecipe

__getattr__, _lazy = lazy_exports(__name__, {
    "training.accuracy_predictor": ("AccuracyPredictor", "PredictorEstimator", "fit_predictor"),
    "training.data": ("DatasetError", "DatasetSpec", "EvalTransform", "TrainTransform", "build_dataset"),
    "training.deploy": ("ExportError", "calibration_loader", "compare_outputs", "export_onnx", "export_torchscript",
                        "initialised_model", "sliced_model", "write_formats"),
    "training.estimators": ("ShortTrainEstimator", "SupernetEstimator"),
    "training.evaluation": ("evaluate_member",),
    "training.loop": ("TrainingDiverged", "TrainingInterrupted"),
    "training.overrides": ("apply_cfg_options",),
    "training.predict": ("evaluate_model", "load_trained_model", "predict_images"),
    "training.rank_check": ("RankCheckResult", "rank_check"),
    "training.supernet_train": ("load_supernet", "train_supernet"),
    "training.trainer": ("train",),
})

__all__ = [
    "BUNDLE_FILES", "CONFIG_FILE", "METRICS_FILE", "ONNX_FILE", "RECIPE_FILE", "TORCHSCRIPT_FILE", "WEIGHTS_FILE",
    "Bundle", "BundleError", "RecipeError", "TrainRecipe", "load_bundle", *_lazy,
]
