"""The search itself: settings, samplers, the per-trial evaluation (cheap checks first) and a worker loop.

A trial measures in order of cost and stops at the first broken budget: params and FLOPs (analytic,
no model), latency (predictor, else measured), energy (measured), plug-in objectives, accuracy (estimator).
A stopped trial is COMPLETE and infeasible: it keeps what was measured, its unmeasured objectives hold
the worst value (inf, or -inf for accuracy), and its unmeasured constraints hold 0 (Optuna needs
the same constraint keys on every trial). Budgets are Optuna 5 per-trial constraints
(``Trial.set_constraint``), so samplers use them and ``study.best_trials`` is feasible only.

Every proposal is an architecture the study has not seen (``search.samplers``): duplicates are rejected
before a trial is stored, so ``--trials N`` means N distinct measured architectures. Two workers that
propose the same architecture at the same instant are the one exception: the later trial is PRUNED
(``duplicate_of``) unmeasured. Several processes keep the count exact the same way: a trial started
when ``--trials`` are already complete or running is PRUNED unmeasured (``surplus``), so the study
never holds more than ``--trials`` COMPLETE trials (and at most workers - 1 such placeholders).

Params and FLOPs are analytic (``profiling.analytic``), so no model is built to count them: only timing
(the profiler, which builds it once) and the accuracy estimator (its own seeded initialisation) build one.
"""

from __future__ import annotations

import datetime
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from hrvit_nas import UserError
from hrvit_space import ArchConfig, SearchSpace, preset
from profiling import check_runtime, resolve_device
from search.estimators import DEFAULT_ESTIMATOR, estimator_class, make_estimator
from search.objectives import BUDGETS, DEFAULT_OBJECTIVES, check_budgets, get_objective, parse_objectives, violations
from search.samplers import (
    DEFAULT_SAMPLER, SAMPLERS, cheap_measurements, derive_seed, make_sampler, params_key, space_distributions,
)

SETTINGS_SCHEMA_VERSION = 1
BASELINE_PRESETS = ("b1", "b2", "b3")
MAX_FAILURES_IN_A_ROW = 10
SETTINGS_WAIT_S = 30  # a process that finds the study being created by another waits this long for its settings
IN_PLAY = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
PARAMS_WAIT_S = 10.0  # how long a trial waits for an earlier one still in its sampler (a killed one's never come)
# Settings that must match when a study is resumed (the rest, e.g. sampler or seed, may change).
RESUME_KEYS = (
    "objectives", "budgets", "space", "input_size", "batch", "runtime", "dtype", "estimator", "estimator_options", "latency_predictor",
)


class TrialFailed(Exception):
    """A trial's evaluation raised; Optuna records it FAILED and the study continues."""


@dataclass
class SearchSettings:
    """Everything that defines a study's objectives; stored as the study's ``settings`` user attribute."""

    space: SearchSpace = field(default_factory=SearchSpace.default)
    objectives: Sequence[str] = DEFAULT_OBJECTIVES
    budgets: dict[str, float] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None  # None: the space's input size
    batch: int = 1
    device: str = "auto"
    runtime: str = "eager"  # what latency (and its budget) is measured on: profiling.runtimes.RUNTIMES
    dtype: str = "fp32"
    estimator: str | None = None  # None: zero-cost when accuracy is an objective
    estimator_options: dict[str, Any] = field(default_factory=dict)
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    latency_predictor: str | None = None
    baselines: bool = False

    def __post_init__(self) -> None:
        self.objectives = parse_objectives(self.objectives)
        self.budgets = check_budgets(dict(self.budgets))
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise UserError(f"batch {self.batch!r}: it must be a positive integer")
        self.input_size = tuple(self.input_size or self.space.base.input_size)
        if self.input_size != self.space.base.input_size:
            self.space = self.space.with_input_size(self.input_size)
        if "accuracy" in self.objectives:
            self.estimator = self.estimator or DEFAULT_ESTIMATOR
            estimator_class(self.estimator)  # unknown names fail here, before anything runs
            if self.estimator in ("params", "flops") and self.estimator in self.objectives:
                raise UserError(
                    f"--estimator {self.estimator} scores accuracy by {self.estimator}, which is already an objective; "
                    "drop one of them (e.g. --objectives accuracy,latency)"
                )
        elif self.estimator is not None or self.estimator_options:
            raise UserError("--estimator only applies with the accuracy objective; add accuracy to --objectives or drop --estimator")
        needs_latency = "latency" in self.objectives or "max_latency_ms" in self.budgets
        if self.latency_predictor is not None and not needs_latency:
            raise UserError("--latency-predictor is given but neither the latency objective nor --max-latency-ms uses it")

    @property
    def objective_specs(self):
        return [get_objective(name) for name in self.objectives]

    def metric_names(self) -> list[str]:
        """Objective names with units for the study (optuna-dashboard, plots): the estimator says what
        "accuracy" is (e.g. "NASWOT score"), so a proxy is never shown as plain accuracy."""
        names = []
        for spec in self.objective_specs:
            if spec.name == "accuracy":
                cls = estimator_class(self.estimator)
                names.append(f"{cls.metric_name} ({cls.unit})" if cls.unit else cls.metric_name)
            else:
                names.append(f"{spec.name} ({spec.unit})")
        return names

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SETTINGS_SCHEMA_VERSION,
            "objectives": [spec.to_dict() for spec in self.objective_specs],
            "budgets": dict(self.budgets),
            "space": self.space.to_dict(),
            "input_size": list(self.input_size),
            "batch": self.batch,
            "device": self.device,
            "runtime": self.runtime,
            "dtype": self.dtype,
            "estimator": self.estimator,
            "estimator_options": dict(self.estimator_options),
            "sampler": self.sampler,
            "seed": self.seed,
            "latency_predictor": self.latency_predictor,
            "baselines": self.baselines,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSettings":
        return cls(
            space=SearchSpace.from_dict(data["space"]),
            objectives=[o["name"] for o in data["objectives"]],
            budgets=data.get("budgets", {}),
            input_size=tuple(data["input_size"]),
            batch=data.get("batch", 1),
            device=data.get("device", "auto"),
            runtime=data.get("runtime", "eager"),  # studies from before runtimes existed measured eager fp32
            dtype=data.get("dtype", "fp32"),
            estimator=data.get("estimator"),
            estimator_options=data.get("estimator_options", {}),
            sampler=data.get("sampler", DEFAULT_SAMPLER),
            seed=data.get("seed", 0),
            latency_predictor=data.get("latency_predictor"),
            baselines=data.get("baselines", False),
        )


# ------------------------------------------------------------------------------------ one trial
def suggest_config(trial: optuna.Trial, space: SearchSpace) -> ArchConfig:
    """The sampler proposes one value per knob (``search.samplers.knob_distribution``); the space turns
    them into a config."""
    params = {}
    for name, dist in space_distributions(space).items():
        if isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step)
        else:
            params[name] = trial.suggest_categorical(name, dist.choices)
    return space.decode(params)


def config_summary(config: ArchConfig) -> str:
    """One readable line for optuna-dashboard, where the nested ``config`` attribute is a long JSON string."""
    depths = " | ".join(",".join(map(str, module)) for module in config.depths)
    return (f"depths {depths}; windows {','.join(map(str, config.window_sizes))}; "
            f"mlp ratios {','.join(map(str, config.mlp_ratios))}; channels {','.join(map(str, config.channels))}")


def refuse_surplus_or_duplicate(trial: optuna.Trial, n_trials: int, budgets: Sequence[str] = ()) -> None:
    """Prune ``trial`` unmeasured when earlier trials already fill ``n_trials`` or hold its architecture.

    Trial numbers are assigned by the storage in creation order, so of several processes racing for the
    last slot exactly the earliest trials go on. An earlier trial of another process may still be in its
    sampler, with no parameters stored yet; it is waited for (briefly: every trial stores its parameters
    first), else two workers proposing one architecture at the same instant would both measure it."""
    deadline = time.monotonic() + PARAMS_WAIT_S
    while True:
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number and t.state in IN_PLAY]
        sampling = [t for t in earlier if t.state == TrialState.RUNNING and len(t.params) < len(trial.params)]
        if not sampling or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    key = params_key(trial.params)
    twin = next((t for t in earlier if params_key(t.params) == key), None)
    if len(earlier) < n_trials and twin is None:
        return
    for name in budgets:  # unmeasured: every trial carries the same constraint keys
        trial.set_constraint(name, 0.0)
    if len(earlier) >= n_trials:
        trial.set_user_attr("surplus", True)
        raise optuna.TrialPruned(f"{n_trials} trials are already complete or running")
    trial.set_user_attr("duplicate_of", twin.number)
    raise optuna.TrialPruned(f"trial {twin.number} already evaluates this architecture")


class TrialEvaluator:
    """The Optuna objective: config from the trial's parameters, then measurements in order of cost."""

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        check_runtime(settings.runtime, resolve_device(settings.device), settings.dtype)  # e.g. tensorrt on a CPU: refused first
        self.n_trials: int | None = None  # set by run_worker: the surplus check needs the target count
        self.estimator = None
        if settings.estimator is not None:
            self.estimator = make_estimator(
                settings.estimator,
                **{"input_size": settings.input_size, "device": settings.device, "seed": settings.seed, **settings.estimator_options},
            )
        self.predictor = None
        if settings.latency_predictor is not None:
            from profiling import LatencyPredictor

            self.predictor = LatencyPredictor.load(settings.latency_predictor, device=settings.device)
            self.predictor.check(runtime=settings.runtime, dtype=settings.dtype, batch=settings.batch, input_size=settings.input_size)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        config = suggest_config(trial, self.settings.space)
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("config_summary", config_summary(config))
        trial.set_user_attr("config_hash", config.content_hash())
        trial.set_user_attr("estimator", self.settings.estimator)
        if self.n_trials is not None:
            refuse_surplus_or_duplicate(trial, self.n_trials, list(self.settings.budgets))
        screening = getattr(trial.study.sampler, "screening", {}).pop(trial.number, None)
        if screening is not None:
            trial.set_user_attr("screening", screening)
        measurements: dict[str, Any] = {}
        try:
            self.measure(config, measurements, trial)
        except UserError:
            raise
        except Exception as error:  # a crash or out-of-memory in one config must not stop the study
            trial.set_user_attr("measurements", measurements)
            trial.set_user_attr("failure_reason", f"{type(error).__name__}: {error}")
            raise TrialFailed(f"trial {trial.number}: {type(error).__name__}: {error}") from error
        over = violations(measurements, self.settings.budgets)
        for name, limit in self.settings.budgets.items():
            value = measurements.get(BUDGETS[name].key)
            trial.set_constraint(name, 0.0 if value is None else value - limit)
        trial.set_user_attr("measurements", measurements)
        trial.set_user_attr("violations", over)
        trial.set_user_attr("feasible", not over)
        return [
            measurements[spec.key] if measurements.get(spec.key) is not None else spec.worst
            for spec in self.settings.objective_specs
        ]

    def _over(self, measurements: dict[str, Any]) -> bool:
        return bool(violations(measurements, self.settings.budgets))

    def measure(
        self, config: ArchConfig, m: dict[str, Any], trial: optuna.Trial | None = None, *, accuracy: bool = True, progress: bool = False,
    ) -> None:
        """Fill ``m`` cheapest first; return early once a budget is broken.

        Counts are analytic (no model); the profiler then builds the model once for timing and energy.
        """
        from profiling import profile

        s = self.settings
        needs_energy = "energy" in s.objectives or "max_energy_mj" in s.budgets
        needs_latency = "latency" in s.objectives or "max_latency_ms" in s.budgets
        predicted = needs_latency and self.predictor is not None
        timed = needs_energy or (needs_latency and not predicted)
        m.update(cheap_measurements(config, s.batch))
        if self._over(m):
            return
        if predicted:
            m["latency_ms"] = float(self.predictor.predict(config))
            m["latency_source"] = "predictor"
            if self._over(m):
                return
        if timed:
            result = profile(
                config, measure_latency=True, energy=needs_energy, device=s.device, input_size=s.input_size, batch=s.batch,
                runtime=s.runtime, dtype=s.dtype, progress=progress,
            )
            if result.error:
                raise RuntimeError(result.error)
            if trial is not None and result.fingerprint:
                trial.set_user_attr("fingerprint", result.fingerprint)
            if "latency_ms" not in m:
                m["latency_ms"] = result.latency.median
                m["latency_source"] = "measured"
                m.update(contention_measurements(result.latency))
            if needs_energy:
                if result.energy is None or not result.energy.available:
                    reason = result.energy.unavailable_reason if result.energy else "not measured"
                    raise UserError(f"energy cannot be measured on this device ({reason}); drop the energy objective/budget or use a GPU with NVML")
                m["energy_mj"] = result.energy.mj_per_image
            if self._over(m):
                return
        for spec in s.objective_specs:
            if spec.measure is not None:
                m[spec.key] = float(spec.measure(config))
        if self.estimator is not None and accuracy:
            m["accuracy"] = float(self.estimator.estimate(config, trial))


def contention_measurements(latency) -> dict[str, Any]:
    """Whether other processes slowed this latency measurement (``profiling.interference``), and by how much:
    a contended latency is kept (the trial is not wasted) but flagged in tables, plots and exports."""
    return {
        "latency_contended": bool(latency.contended),
        "latency_interference_ratio": latency.interference,
        "latency_cpu_wait_pct": latency.cpu_wait_pct,
    }


# ------------------------------------------------------------------------------- study set-up
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
    m: dict[str, Any] = {}
    evaluator.measure(settings.space.smallest(), m, accuracy=False, progress=progress)
    over = violations(m, settings.budgets)
    if over:
        name = next(iter(over))
        value = m[BUDGETS[name].key]
        raise UserError(
            f"impossible budget --{name.replace('_', '-')} {settings.budgets[name]:g}: the smallest architecture in the "
            f"space already needs {value:.4g} {BUDGETS[name].unit}; raise the budget or search a smaller space"
        )


# ------------------------------------------------------------------------------------ worker loop
def trial_counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def has_heartbeat(storage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage) and bool(storage.get_heartbeat_interval())


def fail_trials_dead_before_their_first_heartbeat(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail RUNNING trials that drew no parameters and are older than the heartbeat grace period.

    Optuna turns a trial stale only once it has a heartbeat; a worker killed between creating its trial and
    that first beat leaves the trial RUNNING forever, and every other worker would wait for it to finish. A
    live trial of ours draws its parameters first thing, so one without any after the grace period is dead;
    with no parameters there is nothing to retry, and the slot goes back to the search."""
    grace_s = storage.grace_period or 2 * storage.get_heartbeat_interval()
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not trial.params and trial.datetime_start and (now - trial.datetime_start).total_seconds() > grace_s:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def run_worker(
    settings: SearchSettings,
    study_name: str,
    storage,
    n_trials: int,
    *,
    worker: int = 0,
    evaluator: TrialEvaluator | None = None,
    callbacks: Sequence[Callable] = (),
    poll_s: float = 0.5,
) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` COMPLETE trials (those of earlier runs count).

    The sampler seed comes from ``(settings.seed, trials in the study, worker)``: a resume continues.
    Trials RUNNING elsewhere are waited for when the storage has a heartbeat (a dead worker's trial
    turns stale, is failed and re-queued); without one they are not waited for.
    """
    existing = len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    evaluator = evaluator or TrialEvaluator(settings)
    sampler = make_sampler(
        settings.sampler, derive_seed(settings.seed, existing, worker), space=settings.space,
        objectives=settings.objective_specs, budgets=settings.budgets, batch=settings.batch, latency_predictor=evaluator.predictor,
    )
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    evaluator.n_trials = n_trials
    heartbeat = has_heartbeat(storage)
    last: list[optuna.trial.FrozenTrial] = []
    failures_in_a_row = duplicates_in_a_row = 0
    while True:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        counts = trial_counts(study)
        complete, running = counts[TrialState.COMPLETE], counts[TrialState.RUNNING]
        if complete >= n_trials:
            return study
        if complete + running >= n_trials and counts[TrialState.WAITING] == 0:
            if not heartbeat:
                return study
            fail_trials_dead_before_their_first_heartbeat(study, storage)
            time.sleep(poll_s)
            continue
        study.optimize(evaluator, n_trials=1, catch=(TrialFailed,), callbacks=[*callbacks, lambda _s, t: last.append(t)])
        if last and last[-1].state != TrialState.PRUNED:  # a pruned placeholder neither fails nor succeeds
            failures_in_a_row = failures_in_a_row + 1 if last[-1].state == TrialState.FAIL else 0
        duplicates_in_a_row = duplicates_in_a_row + 1 if last and "duplicate_of" in last[-1].user_attrs else 0
        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise UserError(
                f"{failures_in_a_row} trials in a row failed (last: {last[-1].user_attrs.get('failure_reason', 'unknown')}); "
                "fix the cause (see failure_reason in the study) and re-run the same command to resume"
            )
        if duplicates_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise UserError(
                f"the last {duplicates_in_a_row} proposals were all architectures the study already holds: the space "
                f"({settings.space.size()} members) is nearly exhausted; lower --trials or widen the space"
            )
