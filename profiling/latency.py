"""Latency measurement that survives a noisy machine and says when it could not.

Measured on a shared 2-core host: one timing trial varies 4-13% between trials, the median of 10-45
trials gets near 2%, and a model's first calls are 1.5-1.8x steady state (the first of five b1@224
measurements read 118 ms, the next four 90-98 ms). So: warm up, time several trials (each repeats the call
until it lasts ``trial_s``), report the median with its spread (and a 20% trimmed mean), interleave
candidates that are compared, keep Python's garbage collector out of the timed rounds, and flag a median
whose estimated relative error exceeds 2% as unstable. How long to warm up and how long a trial lasts is
a ``TimingStrategy`` (``STRATEGIES``, default ``DEFAULT_STRATEGY``); ``benchmarks/latency_noise.py``
compares them side by side so the default is chosen by measurement on a quiet machine.

Other processes on the machine are the larger danger (b1 read 14.6x slower beside 4 busy loops), so on
CPU a reference kernel runs interleaved with the candidates (``profiling.interference``): when it is
inflated the whole measurement is repeated after a back-off, and still-inflated results are flagged
``contended``. The thread count is always set deliberately (``default_threads``), never left to torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from hrvit_nas import UserError
from profiling.device import synchronize
from profiling.fingerprint import device_fingerprint
from profiling.interference import (
    CONTENDED_RATIO,
    CONTENDED_WAIT,
    LoadWindow,
    ReferenceBaseline,
    reference_kernel,
    run_queue_wait_s,
)
from profiling.progress import PhaseProgress
from profiling.result import LatencyStats

STABLE_RELATIVE_ERROR = 0.02
TRIM_FRACTION = 0.2
THREADS_ENV = "HRVIT_NAS_THREADS"
_REFERENCE = "__reference__"
_REFERENCE_WARMUP_S = 0.2
# Contention must hit the reference's trials as it hits the candidates', so its trials last as long as
# theirs (a median of short trials slips between another process's time slices), up to this bound.
_REFERENCE_MAX_TRIAL_S = 0.1
# Asymptotic standard error of a sample median relative to the standard deviation, sqrt(pi / 2).
_MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
# Steady-state warm-up: compare the median of the last _STEADY_WINDOW calls with the window before it;
# warm once it fell by less than _STEADY_TOLERANCE. Bounded by _MAX_WARMUP_S and by half of max_seconds.
_STEADY_WINDOW = 5
_STEADY_TOLERANCE = 0.01
_MAX_WARMUP_S = 10.0
_MAX_WARMUP_SHARE = 0.5
_clock = time.perf_counter  # the timer boundary (tests replace it with a scripted clock)


@dataclasses.dataclass(frozen=True)
class TimingStrategy:
    """How one latency measurement is taken; ``benchmarks/latency_noise.py`` compares them.

    ``steady_warmup``: warm up until the median of the last calls stops falling (at least ``warmup_s``),
    instead of for ``warmup_s`` exactly: a model's first calls (oneDNN primitive creation, the allocator
    growing its arenas) are slower for longer than a fixed second on a large input.
    ``trial_s``: each trial repeats the call until it lasts at least this long, re-sized while timing
    (a single ~100 ms call varies 10-13% on a VM; averaging calls inside a trial shrinks that).
    ``trials`` rounds run first; medians whose estimated relative error is above ``target_error`` get more,
    up to ``max_trials`` (and ``max_seconds``). A median is reported unstable above ``STABLE_RELATIVE_ERROR``
    whatever the target: ``precise`` aims at half of it, since repeated medians that each just reach 2%
    scatter by about that much again (b1 at 224 on an idle VM: CV of 5 medians 3.2% with ``steady``).
    """

    name: str
    steady_warmup: bool
    warmup_s: float
    trial_s: float
    trials: int
    max_trials: int
    target_error: float = STABLE_RELATIVE_ERROR


STRATEGIES = {s.name: s for s in (
    TimingStrategy("fixed", steady_warmup=False, warmup_s=1.0, trial_s=0.05, trials=15, max_trials=45),
    TimingStrategy("steady", steady_warmup=True, warmup_s=1.0, trial_s=0.05, trials=15, max_trials=45),
    TimingStrategy("blocked", steady_warmup=True, warmup_s=1.0, trial_s=0.3, trials=12, max_trials=60),
    TimingStrategy("precise", steady_warmup=True, warmup_s=1.0, trial_s=0.05, trials=15, max_trials=150, target_error=0.01),
)}
DEFAULT_STRATEGY = "steady"


def timing_strategy(strategy: TimingStrategy | str | None = None, **overrides: float | None) -> TimingStrategy:
    """``strategy`` (a name in ``STRATEGIES``, default ``DEFAULT_STRATEGY``) with the given fields replaced
    (``None`` keeps the strategy's); a shorter timing for tests or quick builds is such a replacement."""
    if strategy is None or isinstance(strategy, str):
        name = DEFAULT_STRATEGY if strategy is None else strategy
        if name not in STRATEGIES:
            raise UserError(f"timing strategy {name!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        strategy = STRATEGIES[name]
    chosen = dataclasses.replace(strategy, **{k: v for k, v in overrides.items() if v is not None})
    if chosen.trials < 2:
        raise ValueError("trials must be >= 2 to estimate a spread")
    return dataclasses.replace(chosen, max_trials=max(chosen.trials, chosen.max_trials))


def default_threads() -> int:
    """``$HRVIT_NAS_THREADS`` (set by ``--threads``, inherited by worker processes), else the cores this
    process may run on (``os.sched_getaffinity``: a taskset or container limit counts, idle siblings do not)."""
    value = os.environ.get(THREADS_ENV)
    if value:
        return check_threads(int(value) if value.isdigit() else value, source=THREADS_ENV)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_threads(threads: object, *, source: str = "threads") -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UserError(f"{source} {threads!r} is invalid; give a positive integer (CPU intra-op threads)")
    return threads


def set_default_threads(threads: int) -> None:
    """Make ``threads`` the default of this process and of the processes it starts (``--threads``)."""
    os.environ[THREADS_ENV] = str(check_threads(threads))


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def median_relative_error(samples: list[float]) -> float:
    """Estimated standard error of the median, relative to the median."""
    if len(samples) < 2:
        return math.inf
    return _MEDIAN_SE_FACTOR * statistics.stdev(samples) / math.sqrt(len(samples)) / statistics.median(samples)


def latency_stats(samples_ms: list[float], *, calls_per_trial: int = 1, threads: int | None = None) -> LatencyStats:
    """Summary of per-call latencies (ms), one sample per trial."""
    from scipy.stats import trim_mean

    if not samples_ms:
        raise ValueError("latency_stats needs at least one sample")
    ordered = sorted(samples_ms)
    mean = statistics.fmean(ordered)
    cv = statistics.stdev(ordered) / mean if len(ordered) > 1 else math.inf
    return LatencyStats(
        median=statistics.median(ordered),
        p10=_quantile(ordered, 0.10),
        p90=_quantile(ordered, 0.90),
        p99=_quantile(ordered, 0.99),
        iqr=_quantile(ordered, 0.75) - _quantile(ordered, 0.25),
        mean=mean,
        trimmed_mean=float(trim_mean(ordered, TRIM_FRACTION)),
        cv=cv,
        n=len(ordered),
        stable=median_relative_error(ordered) <= STABLE_RELATIVE_ERROR,
        samples=tuple(samples_ms),
        calls_per_trial=calls_per_trial,
        threads=threads,
    )


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op thread count for the measurement (and restore it), yielding the count used."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _timed_block(run: Callable[[], object], calls: int, device: torch.device) -> float:
    synchronize(device)
    start = _clock()
    for _ in range(calls):
        run()
    synchronize(device)
    return _clock() - start


def _warm_up(run: Callable[[], object], device: torch.device, warmup_s: float, deadline: float) -> float:
    """Run for at least ``warmup_s`` (and 3 calls, unless the deadline passes); return the last per-call seconds."""
    until = min(_clock() + warmup_s, deadline)
    calls, last = 0, math.inf
    while calls < 1 or (calls < 3 and _clock() < deadline) or _clock() < until:
        last = _timed_block(run, 1, device)
        calls += 1
    return last


def _warm_up_steady(run: Callable[[], object], device: torch.device, warmup_s: float, deadline: float) -> float:
    """Run until the median of the last calls stopped falling (at least ``warmup_s``, at most until ``deadline``);
    return the steady per-call seconds (that median)."""
    start = _clock()
    until = min(start + warmup_s, deadline)
    times: list[float] = []
    while True:
        times.append(_timed_block(run, 1, device))
        now = _clock()
        if now >= deadline:
            break
        if len(times) >= 2 * _STEADY_WINDOW and now >= until:
            last = statistics.median(times[-_STEADY_WINDOW:])
            before = statistics.median(times[-2 * _STEADY_WINDOW : -_STEADY_WINDOW])
            if last >= (1 - _STEADY_TOLERANCE) * before:
                break
    return statistics.median(times[-_STEADY_WINDOW:])


@dataclasses.dataclass
class _Plan:
    runs: dict[str, Callable[[], object]]
    device: torch.device
    trials: int
    max_trials: int
    deadline: float
    progress: PhaseProgress
    target_error: float = STABLE_RELATIVE_ERROR
    calls: dict[str, int] = dataclasses.field(default_factory=dict)
    trial_s: dict[str, float] = dataclasses.field(default_factory=dict)  # the least length of each one's trials
    waited_s: dict[str, float] = dataclasses.field(default_factory=dict)  # run-queue wait during each one's trials
    timed_s: dict[str, float] = dataclasses.field(default_factory=dict)


def _timed_trial(plan: _Plan, name: str) -> float:
    before = run_queue_wait_s()
    seconds = _timed_block(plan.runs[name], plan.calls[name], plan.device)
    after = run_queue_wait_s()
    if before is not None and after is not None:
        plan.waited_s[name] = plan.waited_s.get(name, 0.0) + after - before
    plan.timed_s[name] = plan.timed_s.get(name, 0.0) + seconds
    return seconds


def _resize(plan: _Plan, name: str, seconds: float) -> None:
    """A trial shorter than its least length (the warm-up's estimate was high) makes the next ones longer."""
    if seconds < plan.trial_s[name]:
        plan.calls[name] = max(plan.calls[name] + 1, math.ceil(plan.calls[name] * plan.trial_s[name] / max(seconds, 1e-9)))


@contextlib.contextmanager
def _no_garbage_collection() -> Iterator[None]:
    """As ``timeit`` does: a collection pause inside a trial is noise, not the model's latency."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _rounds(plan: _Plan) -> dict[str, list[float]]:
    """Round-robin trials (rotating start) until every candidate is stable, ``max_trials`` or the deadline."""
    names = list(plan.runs)
    plan.waited_s.clear()
    plan.timed_s.clear()
    samples: dict[str, list[float]] = {name: [] for name in names}
    pending = [n for n in names if n != _REFERENCE]
    for round_index in range(plan.max_trials):
        order = pending + ([_REFERENCE] if _REFERENCE in plan.runs else [])
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            calls = plan.calls[name]
            seconds = _timed_trial(plan, name)
            samples[name].append(1e3 * seconds / calls)
            _resize(plan, name, seconds)
        plan.progress.advance()
        if round_index + 1 >= 2 and _clock() >= plan.deadline:
            break
        if round_index + 1 >= plan.trials:
            pending = [n for n in pending if median_relative_error(samples[n]) > plan.target_error]
            if not pending:
                break
            if round_index + 1 == plan.trials:
                plan.progress.describe("timing (re-measuring unstable medians)", total=plan.max_trials)
    return samples


def measure_runs(
    runs: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    strategy: TimingStrategy | str | None = None,
    warmup_s: float | None = None,
    trials: int | None = None,
    max_trials: int | None = None,
    trial_s: float | None = None,
    threads: int | None = None,
    max_seconds: float | None = None,
    attempts: int = 2,
    backoff_s: float = 1.0,
    baseline: ReferenceBaseline | None = None,
    progress: bool = False,
) -> dict[str, LatencyStats]:
    """Time several callables interleaved (round-robin, rotating start) so drift hits them all alike.

    ``strategy`` (default ``DEFAULT_STRATEGY``) says how to warm up and how long a trial lasts;
    ``warmup_s``, ``trials``, ``max_trials`` and ``trial_s`` replace its fields. After ``trials`` rounds,
    candidates whose median is not yet stable get more rounds, up to ``max_trials``. ``max_seconds``
    bounds the whole measurement, warm-up and back-offs included (at least 2 trials always run; a steady
    warm-up takes at most half of it). On CPU, a measurement whose interleaved reference kernel ran more
    than ``CONTENDED_RATIO`` slower than this machine's quiet baseline is repeated (up to ``attempts``,
    sleeping ``backoff_s``, doubling) and, if still inflated, returned with ``contended=True``.
    """
    timing = timing_strategy(strategy, warmup_s=warmup_s, trials=trials, max_trials=max_trials, trial_s=trial_s)
    start = _clock()
    deadline = start + max_seconds if max_seconds is not None else math.inf
    warm_deadline = min(deadline, start + (_MAX_WARMUP_SHARE * max_seconds if max_seconds is not None else math.inf))
    on_cpu = device.type == "cpu"
    timed = dict(runs) | ({_REFERENCE: reference_kernel()} if on_cpu else {})
    with cpu_threads(threads if on_cpu else None) as used_threads, PhaseProgress(
        "warming up, then timing", len(timed) + timing.trials, enabled=progress
    ) as bar:
        plan = _Plan(timed, device, timing.trials, timing.max_trials, deadline, bar, timing.target_error)
        trial_lengths = []
        for name, run in timed.items():  # the reference comes last: its trials last as long as the candidates'
            reference = name == _REFERENCE
            if reference:
                per_call = _warm_up(run, device, _REFERENCE_WARMUP_S, deadline)
            elif timing.steady_warmup:
                per_call = _warm_up_steady(run, device, timing.warmup_s, min(warm_deadline, _clock() + _MAX_WARMUP_S))
            else:
                per_call = _warm_up(run, device, timing.warmup_s, deadline)
            plan.trial_s[name] = min(max(trial_lengths), _REFERENCE_MAX_TRIAL_S) if reference else timing.trial_s
            plan.calls[name] = max(1, math.ceil(plan.trial_s[name] / max(per_call, 1e-9)))
            trial_lengths.append(plan.calls[name] * per_call)
            bar.advance()
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                bar.describe(f"timing (attempt {attempt}: others were loading the CPU)", total=timing.trials, completed=0)
            window = LoadWindow()
            with _no_garbage_collection():
                samples = _rounds(plan)
            load = window.close()
            ratio, quiet = _interference(samples, used_threads, baseline) if on_cpu else (None, None)
            waiting = _wait_share(plan, used_threads) if on_cpu else None
            contended = (ratio is not None and ratio > CONTENDED_RATIO) or (waiting is not None and waiting > CONTENDED_WAIT)
            pause = backoff_s * 2 ** (attempt - 1)
            if not contended or attempt == attempts or _clock() + pause >= deadline:
                break
            bar.describe(f"waiting {pause:.0f} s for the CPU to quieten (reference {ratio:.2f}x its quiet time, "
                         f"{100 * (waiting or 0):.0f}% of thread time waiting for a core)")
            time.sleep(pause)
    recorded_threads = used_threads if on_cpu else None
    return {
        name: dataclasses.replace(
            latency_stats(samples[name], calls_per_trial=plan.calls[name], threads=recorded_threads),
            interference=ratio, contended=contended, load_avg_1m=load.load_avg_1m, cpu_steal_pct=load.cpu_steal_pct,
            cpu_wait_pct=None if waiting is None else 100 * waiting, attempts=attempt,
            anchored_median=None if quiet is None else _anchored_median(samples[name], samples[_REFERENCE], quiet),
        )
        for name in runs
    }


def _anchored_median(candidate: list[float], reference: list[float], quiet: float) -> float:
    """Median of the candidate's per-round ratios to the reference (rounds 0..k-1: a candidate leaves the
    round-robin for good once stable, the reference runs every round), times the reference's quiet time."""
    return statistics.median(c / r for c, r in zip(candidate, reference)) * quiet


def _wait_share(plan: _Plan, threads: int) -> float | None:
    """Share of the timed thread-seconds our threads spent runnable but without a core (schedstat)."""
    if not plan.waited_s:
        return None
    return sum(plan.waited_s.values()) / max(1e-9, threads * sum(plan.timed_s[name] for name in plan.waited_s))


def _interference(samples: dict[str, list[float]], threads: int, baseline: ReferenceBaseline | None) -> tuple[float, float]:
    """How many times slower the reference ran than its quiet median on this machine at ``threads``, and
    that quiet median (ms)."""
    reference = samples[_REFERENCE]
    key = device_fingerprint("cpu", threads=threads, volatile=False)["fingerprint_id"]
    quiet = (baseline or ReferenceBaseline()).observe(key, statistics.median(reference))
    # A trimmed mean, not the median: contention in a fifth of the trials already shows, before it moves the
    # candidates' medians, while one stray hiccup (trimmed away) does not.
    from scipy.stats import trim_mean

    return float(trim_mean(reference, TRIM_FRACTION)) / quiet, quiet


def measure_latency(
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device | str = "cpu",
    *,
    runtime: str = "eager",
    dtype: str = "fp32",
    channels_last: bool = False,
    threads: int | None = None,
    **timing: object,
) -> LatencyStats:
    """Per-call latency statistics (ms) of ``model(inputs)``; batch and input size are those of ``inputs``.

    ``timing``: the keyword options of ``measure_runs`` (warmup_s, trials, max_seconds, ...).
    """
    from profiling.runtimes import prepare

    device = torch.device(device)
    prepared = prepare(runtime, model, inputs, device, dtype=dtype, channels_last=channels_last, threads=threads)
    return measure_runs({"model": prepared.run}, device, threads=threads, **timing)["model"]
