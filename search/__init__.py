"""Multi-objective Optuna search over the HRViT space under latency/energy/params/FLOPs budgets.

Exports load lazily, so that ``hrvit-nas --help`` (which imports ``search.cli``) stays fast.
"""

import importlib

_EXPORTS = {
    "AccuracyEstimator": "search.estimators",
    "estimator_names": "search.estimators",
    "make_estimator": "search.estimators",
    "hypervolume": "search.hypervolume",
    "hypervolume_history": "search.hypervolume",
    "reference_point": "search.hypervolume",
    "Objective": "search.objectives",
    "BUDGETS": "search.objectives",
    "OBJECTIVES": "search.objectives",
    "load_trials": "search.records",
    "open_study": "search.records",
    "pareto_trials": "search.records",
    "study_settings": "search.records",
    "trial_config": "search.records",
    "trials_frame": "search.records",
    "open_storage": "search.storage",
    "SAMPLERS": "search.samplers",
    "SearchSettings": "search.study",
    "run_search": "search.workers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
