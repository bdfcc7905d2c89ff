"""Timing strategies: steady-state warm-up and trials sized to a least duration, on a scripted clock.

Only the timer boundary is faked (``profiling.latency._clock`` and the calls whose duration it reads);
the warm-up, sizing and round logic above it run as in a real measurement.
"""

from __future__ import annotations

import pytest
import torch

from hrvit_nas.errors import UserError
from profiling import ReferenceBaseline, device_fingerprint, measure_runs
from profiling import latency


class ScriptedClock:
    """A clock that only moves when a scripted call runs: call ``i`` lasts ``durations(i)`` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def call(self, durations):
        calls = []

        def run() -> None:
            self.now += durations(len(calls))
            calls.append(self.now)

        run.calls = calls
        return run


@pytest.fixture()
def clock(monkeypatch) -> ScriptedClock:
    fake = ScriptedClock()
    monkeypatch.setattr(latency, "_clock", fake)
    # the reference kernel is hardware too: a 1 ms call on the scripted clock
    monkeypatch.setattr(latency, "reference_kernel", lambda: fake.call(lambda i: 0.001))
    return fake


def warming(i: int) -> float:
    """0.20 s falling by 0.01 s per call for 10 calls, then a steady 0.10 s."""
    return 0.2 - 0.01 * i if i < 10 else 0.1


def test_steady_warm_up_stops_once_timings_stop_falling(clock):
    run = clock.call(warming)
    per_call = latency._warm_up_steady(run, torch.device("cpu"), warmup_s=0.5, deadline=float("inf"))
    assert per_call == pytest.approx(0.1)
    # calls 11-18 are steady: the window of the last 5 no longer below the 5 before it (median 0.10) stops it
    assert len(run.calls) == 18


def test_fixed_warm_up_stops_while_calls_are_still_getting_faster(clock):
    run = clock.call(warming)
    per_call = latency._warm_up(run, torch.device("cpu"), warmup_s=0.5, deadline=float("inf"))
    assert len(run.calls) == 3 and per_call > 0.15  # what the steady warm-up exists for


def test_steady_warm_up_is_bounded_by_its_deadline(clock):
    run = clock.call(lambda i: 1.0 / (i + 1))  # never stops falling
    latency._warm_up_steady(run, torch.device("cpu"), warmup_s=0.1, deadline=2.0)
    assert clock.now < 2.0 + 1.0  # the call running at the deadline finishes, no other starts


def measure(runs, tmp_path, **timing):
    return measure_runs(runs, torch.device("cpu"), threads=1, attempts=1, baseline=ReferenceBaseline(tmp_path / "b.json"), **timing)


def test_trials_last_at_least_their_least_duration(clock, tmp_path):
    run = clock.call(lambda i: 0.07)
    stats = measure({"model": run}, tmp_path, strategy="blocked", trials=4, max_trials=4)["model"]
    assert stats.calls_per_trial == 5  # ceil(0.3 / 0.07): 0.35 s per trial
    assert stats.calls_per_trial * stats.median / 1e3 >= latency.STRATEGIES["blocked"].trial_s
    assert stats.median == pytest.approx(70.0)


def test_trials_grow_when_the_call_gets_faster_than_the_warm_up_said(clock, tmp_path):
    # slow for the whole (fixed) warm-up, then 4x faster: 2 calls per trial would last 0.125 s, not 0.3
    run = clock.call(lambda i: 0.25 if clock.now < 1.0 else 0.0625)
    stats = measure({"model": run}, tmp_path, strategy="fixed", warmup_s=1.0, trial_s=0.3, trials=6, max_trials=6)["model"]
    assert stats.calls_per_trial == 5  # re-sized after the first short trial: 5 x 0.0625 s = 0.3125 s
    assert stats.median == pytest.approx(62.5)


def test_timing_strategy_by_name_with_overrides_and_unknown_names_refused():
    quick = latency.timing_strategy("blocked", trials=3)
    assert quick.trials == 3 and quick.trial_s == latency.STRATEGIES["blocked"].trial_s
    assert latency.timing_strategy().name == latency.DEFAULT_STRATEGY
    assert latency.timing_strategy("fixed", trials=50).max_trials == 50  # max_trials never below trials
    with pytest.raises(UserError, match="unknown; choose one of fixed, steady, blocked, precise"):
        latency.timing_strategy("fastest")


def test_precise_strategy_times_until_half_the_instability_bound(clock, tmp_path):
    """Trials that scatter by ~8% (a VM's single-call noise): ``steady`` stops once the median's estimated
    error is <= 2%, ``precise`` goes on to <= 1% (about 4x the trials), and both report the same median."""
    scatter = [0.92, 1.08, 1.0, 0.95, 1.05, 1.1, 0.9, 1.0]

    def noisy(i: int) -> float:
        return 0.1 * scatter[(i * 5) % len(scatter)]

    stats = {name: measure({"model": clock.call(noisy)}, tmp_path, strategy=name, warmup_s=0.1)["model"]
             for name in ("steady", "precise")}
    errors = {name: latency.median_relative_error(sorted(s.samples)) for name, s in stats.items()}
    assert errors["steady"] <= latency.STABLE_RELATIVE_ERROR
    assert errors["precise"] <= latency.STRATEGIES["precise"].target_error < errors["steady"]
    assert stats["precise"].n >= 3 * stats["steady"].n
    assert stats["precise"].median == pytest.approx(stats["steady"].median, rel=0.05)


def test_anchored_median_follows_the_model_not_the_host_drift(clock, tmp_path, monkeypatch):
    """A few seconds in, the host slows everything 1.5x: the raw median moves, the median per-round ratio
    to the interleaved reference kernel (x the reference's quiet time) stays at the quiet latency."""
    def drifting(seconds):
        return lambda i: seconds * (1.5 if clock.now > 3.0 else 1.0)

    monkeypatch.setattr(latency, "reference_kernel", lambda: clock.call(drifting(0.001)))
    baseline = ReferenceBaseline(tmp_path / "b.json")
    baseline.observe(device_fingerprint("cpu", threads=1, volatile=False)["fingerprint_id"], 1.0)  # quiet: 1 ms
    stats = measure_runs({"model": clock.call(drifting(0.1))}, torch.device("cpu"), threads=1, attempts=1,
                         baseline=baseline, strategy="fixed", warmup_s=0.2, trials=40, max_trials=40)["model"]
    assert stats.median == pytest.approx(150.0)  # most rounds ran on the slowed host
    assert stats.anchored_median == pytest.approx(100.0)
