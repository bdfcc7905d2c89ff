"""Latency noise: the timing strategies side by side, to choose ``profiling.latency.DEFAULT_STRATEGY``.

    python benchmarks/latency_noise.py                 # about 5 min alone on an idle CPU, 1 thread
    python benchmarks/latency_noise.py --smoke         # tiny model, seconds: proves the script runs

Every strategy of ``profiling.latency.STRATEGIES`` (plus ``torch.utils.benchmark``'s adaptive autorange as
an outside yardstick: no interference check, so not selectable) measures b1 at each ``--sizes`` side
``--repeats`` times, interleaved (round r: every size, every strategy, the strategy going first rotating),
each measurement on a freshly built model (as a search profiles each config: the cold start is part of
the noise) and bounded by the same ``--max-seconds`` for every strategy at a size (6 s at 224, 11 s at 512:
about 15 trials of the fixed strategy; the issue's goal allows ~30 s, ``--max-seconds 15 30 --repeats 3``
measures at that budget in ~12 min). Per (size, strategy) it prints the CV across repeats
of the median, of the 20% trimmed mean and of p10 (a lower quantile), the seconds per measurement and the
load average. Decision: the cheapest strategy whose CV of medians is < 2% at every size becomes the default
(if only a trimmed mean or p10 gets there, that statistic should become the reported one instead).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.profile_stability import TINY, cv_pct
from hrvit_space.config import preset
from hrvit_space.model import build_model
from profiling import STRATEGIES, device_fingerprint, latency_stats, measure_runs, timing_strategy

YARDSTICK = "torch-adaptive"


def fresh_model(side: int, smoke: bool):
    torch.manual_seed(0)
    config = TINY if smoke else preset("b1", input_size=(side, side))
    model, x = build_model(config).eval(), torch.randn(1, 3, *config.input_size)
    return lambda: model(x)


def measure(name: str, run, args: argparse.Namespace, max_seconds: float):
    """One measurement with strategy ``name``: (LatencyStats, contended or None)."""
    if name == YARDSTICK:
        from torch.utils.benchmark import Timer

        timer = Timer(stmt="run()", globals={"run": run}, num_threads=args.threads)
        measured = timer.adaptive_autorange(threshold=0.02, max_run_time=max_seconds)
        return latency_stats([1e3 * t for t in measured.times], calls_per_trial=measured.number_per_run, threads=args.threads), None
    strategy = timing_strategy(name, **args.overrides)
    stats = measure_runs({"model": run}, torch.device("cpu"), strategy=strategy, threads=args.threads, max_seconds=max_seconds)["model"]
    return stats, stats.contended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--strategies", nargs="+", default=[*STRATEGIES, YARDSTICK], choices=[*STRATEGIES, YARDSTICK])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, nargs="+", default=[6.0, 11.0],
                        help="bound of each measurement, one per size (or one for all), the same for every strategy")
    parser.add_argument("--total-seconds", type=float, default=300.0, help="no new round starts after this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 repeats, short trials")
    args = parser.parse_args()
    args.overrides = {}
    if args.smoke:
        args.sizes, args.repeats, args.max_seconds = [64], 2, [1.0]
        args.overrides = {"warmup_s": 0.05, "trials": 3, "max_trials": 4}
    if len(args.max_seconds) not in (1, len(args.sizes)):
        parser.error(f"--max-seconds takes one bound or one per size ({len(args.sizes)})")
    budget = dict(zip(args.sizes, args.max_seconds * len(args.sizes) if len(args.max_seconds) == 1 else args.max_seconds))
    torch.set_num_threads(args.threads)
    fingerprint = device_fingerprint("cpu", threads=args.threads)
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {fingerprint['name']}, torch {fingerprint['torch']}, "
          f"threads {args.threads} of {len(os.sched_getaffinity(0))} usable cores, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; at most {budget} s per measurement by size, "
          f"{len(args.sizes) * len(args.strategies) * args.repeats} measurements, about "
          f"{args.repeats * len(args.strategies) * (sum(budget.values()) + len(budget)):.0f} s")
    results: dict[tuple[int, str], list] = defaultdict(list)
    start = time.perf_counter()
    for repeat in range(args.repeats):
        if repeat and time.perf_counter() - start > args.total_seconds:
            print(f"stopping after {repeat} repeats: --total-seconds {args.total_seconds:g} reached")
            break
        shift = repeat % len(args.strategies)
        for side in args.sizes:
            for name in args.strategies[shift:] + args.strategies[:shift]:
                run = fresh_model(side, args.smoke)
                began = time.perf_counter()
                stats, contended = measure(name, run, args, budget[side])
                seconds = time.perf_counter() - began
                load = os.getloadavg()[0]
                results[side, name].append((stats, seconds, load, contended))
                print(f"  {side} {name:15s} run {repeat + 1}: median {stats.median:9.3f} ms  trimmed {stats.trimmed_mean:9.3f}  "
                      f"p10 {stats.p10:9.3f}  trial CV {100 * stats.cv:5.1f}%  n={stats.n} x {stats.calls_per_trial} call(s)  "
                      f"{seconds:5.1f} s  load {load:.2f}" + ("" if contended is None else f"  contended={contended}"), flush=True)
    print(f"\n{'size':>5} {'strategy':15s} {'CV median':>9} {'CV trimmed':>10} {'CV p10':>7} {'s/meas.':>8} {'max s':>6} "
          f"{'load':>10} {'contended':>9}")
    for (side, name), rows in sorted(results.items()):
        stats = [r[0] for r in rows]
        seconds, loads = [r[1] for r in rows], [r[2] for r in rows]
        flagged = "-" if rows[0][3] is None else f"{sum(bool(r[3]) for r in rows)}/{len(rows)}"
        print(f"{side:>5} {name:15s} {cv_pct([s.median for s in stats]):8.2f}% {cv_pct([s.trimmed_mean for s in stats]):9.2f}% "
              f"{cv_pct([s.p10 for s in stats]):6.2f}% {statistics.fmean(seconds):8.1f} {max(seconds):6.1f} "
              f"{min(loads):4.2f}-{max(loads):4.2f} {flagged:>9}")
    print(f"total {time.perf_counter() - start:.0f} s. Goal: CV of medians < 2% at every size; pick the cheapest strategy "
          "meeting it as profiling.latency.DEFAULT_STRATEGY (a load above ~0.5 per core makes the figures meaningless)")


if __name__ == "__main__":
    main()
