"""Trial records: what a search stores and how readers (reports, export) load it back.

The contract (readers code against these names):

- Objectives ``accuracy`` (maximise, the estimator's score; ``study.metric_names`` say which, e.g.
  "NASWOT score (log-det)"), ``latency`` (ms), ``energy`` (mJ per image,
  gross), ``params`` (M), ``flops`` (GFLOPs); study directions follow the settings' objective order.
- Trial user_attrs: ``config`` (ArchConfig.to_dict()), ``config_hash``, ``measurements``
  (``profiling.Measurements.to_dict()``: keys and units of ``profiling.QUANTITIES`` -- ``params_m``, ``gmacs``,
  ``gflops``, ``latency_ms``, ``latency_source`` ("predictor" | "measured"), with a measured latency
  ``latency_contended`` (True: other processes slowed it, ``profiling.interference``), ``latency_interference_ratio``
  and ``latency_cpu_wait_pct``, ``energy_mj``, ``accuracy``, the breakdowns ``params_m_by_branch``,
  ``gmacs_by_branch``, ``gmacs_by_component`` -- plus plug-in objectives under their ``Objective.key``;
  keys absent when not measured), ``fingerprint``, ``estimator``, ``baseline`` (enqueued presets only),
  ``feasible``, ``violations`` (budget -> amount over), ``failure_reason`` (FAILED trials only),
  ``config_summary`` (one readable line for optuna-dashboard), ``screening`` (cheap-first proposals:
  candidates screened, predicted objectives), ``surplus`` / ``duplicate_of`` (PRUNED unmeasured
  placeholders of racing workers).
  Budgets are Optuna constraints named like the budgets (``max_latency_ms``, ...).
- Study user_attr ``settings``: ``schema_version``, ``objectives`` ([{name, direction, unit}]),
  ``budgets`` (only those set), ``space``, ``input_size``, ``batch``, ``device``, ``runtime``, ``dtype``, ``estimator``,
  ``sampler``, ``seed``, ``created`` (plus ``estimator_options``, ``latency_predictor``, ``baselines``).
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hrvit_nas import UserError
from hrvit_space import ArchConfig
from profiling import QUANTITIES
from search.objectives import get_objective
from search.storage import open_storage

# Scalar measurements every row carries (None when not measured): ``profiling.QUANTITIES`` without the breakdowns.
MEASUREMENT_COLUMNS = tuple(q.key for q in QUANTITIES if not q.key.endswith(("_by_branch", "_by_component")))


def open_study(name: str, storage) -> optuna.Study:
    """Load a search study for reading (never creates a storage or its schema); unknown names list the
    studies that exist in the storage."""
    storage = open_storage(storage, heartbeat_s=None, existing=True) if isinstance(storage, str) else storage
    names = optuna.get_all_study_names(storage)
    if name not in names:
        listing = ", ".join(sorted(names)) if names else "none"
        raise UserError(f"study {name!r} not found in the storage (studies there: {listing}); check --study and --storage")
    return optuna.load_study(study_name=name, storage=storage)


def study_settings(study: optuna.Study) -> dict[str, Any]:
    settings = study.user_attrs.get("settings")
    if settings is None:
        raise UserError(f"study {study.study_name!r} has no search settings: it was not created by `hrvit-nas search`")
    return settings


def is_feasible(trial: FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto front (Optuna excludes infeasible trials when constraints are set)."""
    return [t for t in study.best_trials if is_feasible(t)]


def trial_config(trial: FrozenTrial) -> ArchConfig:
    if "config" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no stored config (it failed before its parameters were decoded)")
    return ArchConfig.from_dict(trial.user_attrs["config"])


def objective_column(name: str) -> str:
    """The measurements key (and frame column) of objective ``name``; a plug-in no longer installed keeps its name."""
    try:
        return get_objective(name).key
    except UserError:
        return name


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with objectives (unit in the column name), flattened measurements and flags."""
    pareto = {t.number for t in pareto_trials(study)}
    columns = [objective_column(o["name"]) for o in study_settings(study)["objectives"]]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        measurements = attrs.get("measurements", {})
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        for column in columns:
            row[column] = measurements.get(column)
        for key in MEASUREMENT_COLUMNS:
            row.setdefault(key, measurements.get(key))
        for key, value in measurements.items():
            if isinstance(value, dict):
                row.update({f"{key}.{part}": v for part, v in value.items()})
        complete = trial.state == TrialState.COMPLETE
        row["feasible"] = bool(complete and attrs.get("feasible", is_feasible(trial)))
        row["pareto"] = trial.number in pareto
        row["violations"] = json.dumps(attrs.get("violations", {}), sort_keys=True)
        row["baseline"] = attrs.get("baseline")
        row["estimator"] = attrs.get("estimator")
        row["config_hash"] = attrs.get("config_hash")
        row["config_json"] = json.dumps(attrs["config"], sort_keys=True) if "config" in attrs else None
        row["failure_reason"] = attrs.get("failure_reason")
        row["duration_s"] = trial.duration.total_seconds() if trial.duration else None
        rows.append(row)
    return pd.DataFrame(rows)


def load_trials(study_or_storage: optuna.Study | str, study_name: str | None = None) -> pd.DataFrame:
    """The study's trials as one flat DataFrame with units in the column names (``latency_ms``,
    ``params_m``, ``gflops``, ..., and the accuracy column named after its estimator's metric).

    ``load_trials(study)`` or ``load_trials("sqlite:///runs/demo/study.db", "demo")``.
    """
    if isinstance(study_or_storage, optuna.Study):
        study = study_or_storage
    else:
        if not study_name:
            raise UserError("load_trials: give the study name with a storage URL, e.g. load_trials(url, 'demo')")
        study = open_study(study_name, study_or_storage)
    frame = trials_frame(study)
    objectives = [o["name"] for o in study_settings(study)["objectives"]]
    if "accuracy" not in objectives:
        return frame.drop(columns=["accuracy"])  # no estimator ran: the column would only hold None
    label = study.metric_names[objectives.index("accuracy")] if study.metric_names else "estimator score"
    return frame.rename(columns={"accuracy": f"accuracy [{label}]"})
