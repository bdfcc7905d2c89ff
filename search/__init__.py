"""Multi-objective Optuna search over the HRViT space under latency/energy/params/FLOPs budgets.

Exports load lazily (hrvit_nas.lazy_exports), so that ``hrvit-nas --help`` (which imports
``search.cli``) stays fast.
"""

from hrvit_nas import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "search.estimators": ("AccuracyEstimator", "estimator_names", "make_estimator"),
    "search.hypervolume": ("feasible_trials", "hypervolume", "hypervolume_history", "reference_point"),
    "search.objectives": ("BUDGETS", "OBJECTIVES", "Objective", "get_objective"),
    "search.records": ("load_trials", "open_study", "pareto_trials", "study_settings", "trial_config", "trials_frame"),
    "search.samplers": ("SAMPLERS",),
    "search.storage": ("DEFAULT_RUN_ROOT", "default_storage_url", "normalize_url", "open_storage", "redact"),
    "search.settings": ("SearchSettings",),
    "search.study_setup": ("load_or_create_study",),
    "search.workers": ("run_search",),
})
