"""Study set-up: create or resume a study (settings checked), queue the baselines, refuse impossible budgets."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import optuna

from hrvit_nas import UserError
from hrvit_space import SearchSpace, preset
from profiling import Measurements
from search.evaluator import TrialEvaluator
from search.objectives import BUDGETS, violations
from search.settings import RESUME_KEYS, SearchSettings

BASELINE_PRESETS = ("b1", "b2", "b3")
SETTINGS_WAIT_S = 30  # a process that finds the study being created by another waits this long for its settings


def load_or_create_study(settings: SearchSettings, study_name: str, storage, *, check: Callable[[], None] | None = None) -> optuna.Study:
    """Resume ``study_name`` if it exists (its settings must match), else run ``check`` and create it.

    ``check`` runs before anything is written, so a refused search leaves the storage untouched. Safe
    when several processes start at once: exactly one creates the study (the storage refuses the
    others, who then load it); the creator writes the ``settings`` attribute last, and the others wait
    for it before comparing.
    """
    wanted = settings.to_dict()
    if study_name not in optuna.get_all_study_names(storage):
        if check is not None:
            check()
        directions = [spec.direction for spec in settings.objective_specs]
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, directions=directions)
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process created it meanwhile: resume it like any existing study
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(settings.metric_names())
            if settings.baselines:
                enqueue_baselines(study, settings.space)
            study.set_user_attr("settings", wanted)  # last: it marks the study ready for other processes
            return study
    stored = _stored_settings(study_name, storage)
    differing = [key for key in RESUME_KEYS if _comparable(stored.get(key)) != _comparable(wanted.get(key))]
    if differing:
        details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {wanted.get(k)!r}" for k in differing if k != "space")
        if "space" in differing:
            details = "space differs" + (f"; {details}" if details else "")
        raise UserError(
            f"study {study_name!r} was created with other settings ({details}); "
            "repeat the original options to resume it, or choose a new --study name"
        )
    return optuna.load_study(study_name=study_name, storage=storage)


def _stored_settings(study_name: str, storage, wait_s: float = SETTINGS_WAIT_S) -> dict[str, Any]:
    """The study's settings; a study another process is still creating gets ``wait_s`` to receive them."""
    deadline = time.monotonic() + wait_s
    while True:
        stored = optuna.load_study(study_name=study_name, storage=storage).user_attrs.get("settings")
        if stored is not None:
            return stored
        if time.monotonic() > deadline:
            raise UserError(f"study {study_name!r} exists but was not created by hrvit-nas search; choose another --study name")
        time.sleep(0.2)


def _comparable(value: Any) -> Any:
    """JSON round trip, so tuples and lists compare equal."""
    import json

    return json.loads(json.dumps(value))


def enqueue_baselines(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Queue the reference presets (their nearest members of the space) as the first trials."""
    queued = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)}
    seen_params: list[dict] = []
    names = []
    for name in BASELINE_PRESETS:
        if name in queued:
            continue
        params = space.encode(space.nearest(preset(name)))
        if params in seen_params:
            continue
        seen_params.append(params)
        study.enqueue_trial(params, user_attrs={"baseline": name})
        names.append(name)
    return names


def preflight(evaluator: TrialEvaluator, *, progress: bool = False) -> None:
    """Before anything is stored: refuse budgets that even the smallest architecture breaks, and
    energy objectives/budgets on a device that cannot measure energy. ``progress``: its profile (minutes
    at a large input) shows a progress line."""
    settings = evaluator.settings
    if not settings.budgets and "energy" not in settings.objectives:
        return
    m = Measurements()
    evaluator.measure(settings.space.smallest(), m, accuracy=False, progress=progress)
    over = violations(m, settings.budgets)
    if over:
        name = next(iter(over))
        value = m.get(BUDGETS[name].key)
        raise UserError(
            f"impossible budget --{name.replace('_', '-')} {settings.budgets[name]:g}: the smallest architecture in the "
            f"space already needs {value:.4g} {BUDGETS[name].unit}; raise the budget or search a smaller space"
        )
