"""Everything a report or an export needs from one study, read once through ``search.records``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from hrvit_nas import UserError
from reports.metrics import METRICS, Metric, objective_metric


@dataclass
class StudyData:
    study: optuna.Study
    settings: dict[str, Any]
    trials: pd.DataFrame  # ``search.records.trials_frame``: one row per trial
    objectives: list[Metric]  # in the study's objective order
    storage_url: str | None = None
    accuracy_measures: str | None = None  # the estimator's metric name and unit, from study.metric_names

    def local_files(self) -> list[Path]:
        """The storage file when the study lives in a local SQLite or journal file."""
        path = local_storage_file(self.storage_url or "")
        return [path] if path else []

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def budgets(self) -> dict[str, float]:
        """Budget per frame column, e.g. ``{"latency_ms": 30.0}``."""
        given = self.settings.get("budgets") or {}
        return {m.column: float(given[m.budget]) for m in METRICS if m.budget and given.get(m.budget) is not None}

    @property
    def complete(self) -> pd.DataFrame:
        return self.trials[self.trials["state"] == "COMPLETE"]

    @property
    def feasible(self) -> pd.DataFrame:
        complete = self.complete
        return complete[complete["feasible"].fillna(False).astype(bool)]

    @property
    def pareto(self) -> pd.DataFrame:
        return self.trials[self.trials["pareto"].fillna(False).astype(bool)].sort_values("number")

    def measured(self) -> list[Metric]:
        """Metrics with at least one value among complete trials (objective or not)."""
        complete = self.complete
        return [self.named(m) for m in METRICS if m.column in complete and complete[m.column].notna().any()]

    def named(self, metric: Metric) -> Metric:
        """``metric`` labelled with what this study's accuracy estimator measures."""
        return replace(metric, measures=self.accuracy_measures) if metric.objective == "accuracy" else metric


def load_study_data(name: str, storage: str | None) -> StudyData:
    """Open ``name`` for reading: a missing local storage file is an error, never created, and
    ``open_study`` refuses a store without Optuna's schema rather than writing it."""
    from search import DEFAULT_RUN_ROOT, default_storage_url, normalize_url, open_study, redact

    url = normalize_url(storage) if storage else default_storage_url(DEFAULT_RUN_ROOT / name)
    path = local_storage_file(url)
    given = f"--storage {redact(storage)!r}" if storage else f"the default storage {path}"
    if path is not None and not path.is_file():
        raise UserError(f"{given} does not exist; pass the --storage the search wrote to (see `hrvit-nas search --help`)")
    return study_data(open_study(name, url), url)


def local_storage_file(url: str) -> Path | None:
    scheme, _, path = url.partition(":///")
    return Path(path) if scheme in ("sqlite", "journal") else None


def study_data(study: optuna.Study, storage_url: str | None = None) -> StudyData:
    from search import study_settings, trials_frame

    settings = study_settings(study)
    names = [o["name"] for o in settings.get("objectives", [])]
    measures = study.metric_names[names.index("accuracy")] if "accuracy" in names and study.metric_names else None
    frame = trials_frame(study)
    if frame.empty:
        raise UserError(f"study {study.study_name!r} has no trials yet; run `hrvit-nas search --study {study.study_name}` first")
    data = StudyData(study, settings, frame, [], storage_url, measures)
    data.objectives = [data.named(metric) for metric in map(objective_metric, names) if metric is not None]  # plug-ins too
    return data

