"""``TrialEvaluator``, the Optuna objective: one trial's measurements, cheapest first.

A trial measures in order of cost and stops at the first broken budget: params and FLOPs (analytic,
no model), latency (predictor, else measured), energy (measured), plug-in objectives, accuracy (estimator).
A stopped trial is COMPLETE and infeasible: it keeps what was measured, its unmeasured objectives hold
the worst value (inf, or -inf for accuracy), and its unmeasured constraints hold 0 (Optuna needs
the same constraint keys on every trial). Budgets are Optuna 5 per-trial constraints
(``Trial.set_constraint``), so samplers use them and ``study.best_trials`` is feasible only.

The model is built at most once per trial (``TrialModel``) and shared by the profiler's timing and the
accuracy estimator: seeded the estimator's way when the estimator reads the model (zero-cost).
"""

from __future__ import annotations

import optuna

from hrvit_nas import UserError
from hrvit_space import ArchConfig
from profiling import Measurements, check_runtime, resolve_device
from search.estimators import make_estimator
from search.objectives import BUDGETS, violations
from search.parameters import SharedRead
from search.proposal import refuse_surplus_or_duplicate, suggest_config
from search.samplers import cheap_measurements
from search.settings import SearchSettings
from search.storage import write_trial


class TrialFailed(Exception):
    """A trial's evaluation raised; Optuna records it FAILED and the study continues."""


class TrialModel:
    """The one model of a trial, built on first use: by the estimator when it shares the model (its seeded
    initialisation), else plainly."""

    def __init__(self, config: ArchConfig, estimator=None) -> None:
        self.config = config
        shares = getattr(estimator, "shares_model", False) and tuple(estimator.input_size) == tuple(config.input_size)
        self.estimator = estimator if shares else None
        self._model = None

    def __call__(self):
        if self._model is None:
            from hrvit_space import build_model

            self._model = self.estimator.build(self.config) if self.estimator else build_model(self.config).eval()
        return self._model


class TrialEvaluator(SharedRead):
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
        config = suggest_config(trial, self.settings.space, {"estimator": self.settings.estimator})
        if self.n_trials is not None:
            refuse_surplus_or_duplicate(trial, self.n_trials, list(self.settings.budgets), known=self.take_shared_read())
        measurements = Measurements()
        try:
            self.measure(config, measurements, trial)
        except UserError:
            raise
        except Exception as error:  # a crash or out-of-memory in one config must not stop the study
            write_trial(trial, user_attrs={"measurements": measurements.to_dict(), "failure_reason": f"{type(error).__name__}: {error}"})
            raise TrialFailed(f"trial {trial.number}: {type(error).__name__}: {error}") from error
        over = violations(measurements, self.settings.budgets)
        for name, limit in self.settings.budgets.items():
            value = measurements.get(BUDGETS[name].key)
            trial.set_constraint(name, 0.0 if value is None else value - limit)
        write_trial(trial, user_attrs={"measurements": measurements.to_dict(), "violations": over, "feasible": not over})
        return [
            measurements.get(spec.key) if measurements.get(spec.key) is not None else spec.worst
            for spec in self.settings.objective_specs
        ]

    def _over(self, measurements: Measurements) -> bool:
        return bool(violations(measurements, self.settings.budgets))

    def measure(
        self, config: ArchConfig, m: Measurements, trial: optuna.Trial | None = None, *, accuracy: bool = True, progress: bool = False,
    ) -> None:
        """Fill ``m`` cheapest first; return early once a budget is broken (``m`` keeps what was measured
        when a measurement raises).

        Counts are analytic (no model, no FLOP trace); the trial's one model is then timed (no peak-memory
        pass: trials do not record it) and scored.
        """
        from profiling import ProfileRequest, profile

        s = self.settings
        needs_energy = "energy" in s.objectives or "max_energy_mj" in s.budgets
        needs_latency = "latency" in s.objectives or "max_latency_ms" in s.budgets
        predicted = needs_latency and self.predictor is not None
        timed = needs_energy or (needs_latency and not predicted)
        model = TrialModel(config.replace(input_size=s.input_size), self.estimator)
        m.update(cheap_measurements(config, s.batch))
        if self._over(m):
            return
        if predicted:
            m.latency_ms, m.latency_source = float(self.predictor.predict(config)), "predictor"
            if self._over(m):
                return
        if timed:
            request = ProfileRequest(
                config, device=s.device, input_size=s.input_size, batch=s.batch, runtime=s.runtime, dtype=s.dtype,
                measure_latency=True, energy=needs_energy, memory=False, counts="analytic",  # a trial records neither
                max_seconds=s.max_seconds,
            )
            result = profile(request, progress=progress, model=model)
            if result.error:
                raise RuntimeError(result.error)
            if trial is not None and result.fingerprint:
                trial.set_user_attr("fingerprint", result.fingerprint)
            if m.latency_ms is None:
                latency = result.latency
                m.latency_ms, m.latency_source = latency.median, "measured"
                # whether other processes slowed it (profiling.interference): kept, but flagged in tables, plots and exports
                m.latency_contended, m.latency_interference_ratio, m.latency_cpu_wait_pct = (
                    bool(latency.contended), latency.interference, latency.cpu_wait_pct)
            if needs_energy:
                if result.energy is None or not result.energy.available:
                    reason = result.energy.unavailable_reason if result.energy else "not measured"
                    raise UserError(f"energy cannot be measured on this device ({reason}); drop the energy objective/budget or use a GPU with NVML")
                m.energy_mj = result.energy.mj_per_image
            if self._over(m):
                return
        for spec in s.objective_specs:
            if spec.measure is not None:
                m.set(spec.key, float(spec.measure(config)))
        if self.estimator is not None and accuracy:
            if model.estimator is not None:
                m.accuracy = float(self.estimator.estimate(config, trial, model=model()))
            else:
                m.accuracy = float(self.estimator.estimate(config, trial))
