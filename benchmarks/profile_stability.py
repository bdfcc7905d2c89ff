"""Profiler benchmark: latency stability, contended-vs-quiet detection, predictor accuracy, cache, MACs.

    python benchmarks/profile_stability.py --threads 1            # the full run, about 7-8 min alone on a CPU
    python benchmarks/profile_stability.py --smoke                # tiny sizes: proves the script runs (~1 min)

Every measurement uses the timing strategy ``--strategy`` (default: ``profiling.latency.DEFAULT_STRATEGY``,
the one ``benchmarks/latency_noise.py`` chose), as ``profile`` and the predictor build do.

1. Stability (goal: CV of repeated medians < 2%, each measurement <= ~30 s): b1 at 512x512 and 224x224
   is measured ``--repeats`` times; prints each median / 20%-trimmed mean / min trial / anchored median
   (per-round ratio to the interleaved reference kernel x its quiet time), and the CV across
   repeats of each estimator, so the reported statistic can be chosen by measurement; also how many were
   flagged contended (goal on a quiet machine: 0).
2. Contended vs quiet (goal: 100% within 10% of the quiet median or flagged): starts 2 busy-loop
   processes per core (bounded by ``--hog-seconds``), measures b1 at 224x224 ``--contended-runs`` times
   and prints each against the quiet median, with the flag, reference slowdown and run-queue wait.
3. Predictor (goal: >= 95% of held-out configs within +-10%, Kendall tau >= 0.9): builds the predictor of
   the default space at ``--predictor-input`` and prints its held-out accuracy beside the noise floor of
   the measurements (and what a perfect predictor would score at that floor), and every held-out row.
4. Cache hit time (goal < 50 ms); ``--macs``: GMACs of b1/b2/b3 at 512x512 against the reference.
Prints the date, machine, load average and thread count first, so the figures can be judged.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from hrvit_space.config import HeadConfig, preset
from hrvit_space.model import build_model
from hrvit_space.space import SearchSpace
from profiling import STRATEGIES, LatencyPredictor, count_flops, device_fingerprint, measure_latency, profile, timing_strategy

REFERENCE_GMACS = {("b1", "none"): 10.75, ("b2", "none"): 25.09, ("b3", "none"): 28.73,
                   ("b1", "segformer"): 16.15, ("b2", "segformer"): 30.63, ("b3", "segformer"): 71.16}
FVCORE_DEFAULT_EXTRAS = ("layer_norm", "batch_norm", "group_norm", "upsample_nearest2d", "upsample_bilinear2d")
TINY = preset("b1").replace(channels=(16, 32, 48, 64), input_size=(64, 64), window_sizes=(1, 1, 2, 2), dim_head=8,
                            mlp_ratios=(2, 2, 2, 2), depths=((1,), (1, 1), (1, 1, 1), (1, 1, 1, 1)),
                            head=HeadConfig(width=16, num_classes=4))


def cv_pct(values: list[float]) -> float:
    return 100 * statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else float("nan")


def model_and_input(args: argparse.Namespace, side: int):
    config = TINY if args.smoke else preset("b1", input_size=(side, side))
    return build_model(config).eval(), torch.randn(1, 3, *config.input_size)


def stability(args: argparse.Namespace) -> dict[int, float]:
    quiet = {}
    for side in args.sizes:
        model, x = model_and_input(args, side)
        medians, trimmed, fastest, anchored, flagged, seconds = [], [], [], [], 0, []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            stats = measure_latency(model, x, args.device, threads=args.threads, max_seconds=args.max_seconds, strategy=args.timing)
            seconds.append(time.perf_counter() - start)
            medians.append(stats.median)
            trimmed.append(stats.trimmed_mean)
            fastest.append(min(stats.samples))
            anchored.append(stats.anchored_median)
            flagged += stats.contended
            print(f"  {side}: run {repeat + 1}: median {stats.median:9.3f} ms  trimmed {stats.trimmed_mean:9.3f}  min {min(stats.samples):9.3f}  "
                  f"anchored {'-' if stats.anchored_median is None else f'{stats.anchored_median:9.3f}'}  "
                  f"trial CV {100 * stats.cv:5.1f}%  n={stats.n}  stable={stats.stable}  contended={stats.contended} "
                  f"(reference {stats.interference:.2f}x, wait {stats.cpu_wait_pct or 0:.1f}%)  {seconds[-1]:.0f} s")
        quiet[side] = statistics.median(medians)
        print(f"b1 {side}x{side} ({args.threads} thread(s)): CV of {args.repeats} medians {cv_pct(medians):.2f}% (goal < 2%), "
              f"of trimmed means {cv_pct(trimmed):.2f}%, of min trials {cv_pct(fastest):.2f}%, "
              f"of anchored medians {cv_pct([a for a in anchored if a is not None]):.2f}% (CPU only); "
              f"{max(seconds):.0f} s per measurement at most; flagged contended {flagged}/{args.repeats} (goal 0 on a quiet machine)")
    return quiet


def contended_vs_quiet(args: argparse.Namespace, quiet_ms: float, side: int) -> None:
    cores = len(os.sched_getaffinity(0))
    code = f"import time\nend = time.time() + {args.hog_seconds}\nwhile time.time() < end: pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2 * cores)]
    model, x = model_and_input(args, side)
    ok = 0
    try:
        time.sleep(1.0)
        for run in range(args.contended_runs):
            stats = measure_latency(model, x, args.device, threads=args.threads, max_seconds=args.max_seconds, strategy=args.timing)
            error = stats.median / quiet_ms - 1
            good = stats.contended or abs(error) <= 0.10
            ok += good
            print(f"  under {len(hogs)} hogs: run {run + 1}: median {stats.median:9.3f} ms ({100 * error:+6.1f}% vs quiet {quiet_ms:.3f})  "
                  f"contended={stats.contended} (reference {stats.interference:.2f}x, wait {stats.cpu_wait_pct or 0:.1f}%, "
                  f"load {stats.load_avg_1m:.1f}, {stats.attempts} attempt(s))  {'ok' if good else 'MISSED'}")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"contended vs quiet ({2 * cores} hogs on {cores} cores): {ok}/{args.contended_runs} within 10% of the quiet median "
          f"or flagged (goal: all)")


def predictor_accuracy(args: argparse.Namespace) -> None:
    if args.smoke:
        space = SearchSpace(TINY, [[(1,)], [(1,), (1, 2)], [(1,), (1, 2), (1, 2)], [(1,), (1,), (1, 2), (1, 2)]],
                            [(1,), (1,), (1,), (1, 2)], [(2,), (2,), (2, 4), (2,)])
    else:
        space = SearchSpace.default().with_input_size((args.predictor_input, args.predictor_input))
    start = time.perf_counter()
    quick = {"warmup_s": args.timing.warmup_s, "trials": args.timing.trials} if args.smoke else {"trials": args.predictor_trials}
    predictor = LatencyPredictor.build(space, args.device, calibration=args.calibration, holdout=args.holdout, seed=args.seed,
                                       threads=args.threads, strategy=args.timing, progress=sys.stderr.isatty(), **quick)
    acc = predictor.accuracy
    print(f"predictor on {args.device} at {space.base.input_size} ({time.perf_counter() - start:.0f} s to build): {acc.describe()} "
          f"(goals >= 95% and tau >= 0.9); model {predictor.model}: coefficients {[round(a, 3) for a in predictor.alphas]} "
          f"+ {predictor.beta:.2f} ms")
    for model, scores in predictor.candidates.items():  # chosen by leave-one-out on the calibration models only
        print(f"  candidate {model:13s}: " + ", ".join(f"{key} {value:.3f}" for key, value in scores.items()))
    measured = [m for _, _, m in acc.rows]
    print(f"  held-out configs span {min(measured):.2f}-{max(measured):.2f} ms")
    for name, predicted, measured_ms in acc.rows:
        print(f"  {name}  predicted {predicted:9.3f} ms  measured {measured_ms:9.3f} ms  error {100 * (predicted / measured_ms - 1):+6.1f}%")


def cache_hit(args: argparse.Namespace) -> None:
    """Time answered from the result cache (goal < 50 ms), with a tiny config so the miss is quick."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.sqlite"
        profile(TINY, device=args.device, measure_latency=False, cache=path)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            assert profile(TINY, device=args.device, measure_latency=False, cache=path).cached
            times.append(1e3 * (time.perf_counter() - start))
    print(f"cache hit (open file, look up, decode): median {statistics.median(times):.2f} ms, max {max(times):.2f} ms (goal < 50 ms)")


def reference_macs() -> None:
    x = torch.randn(1, 3, 512, 512)
    for (name, head), reference in REFERENCE_GMACS.items():
        config = preset(name) if head == "segformer" else preset(name, head=HeadConfig(kind="none"))
        with torch.no_grad():
            report = count_flops(build_model(config).eval(), x)
        extras = sum(report.by_operator.get(op, 0) for op in FVCORE_DEFAULT_EXTRAS)
        print(f"{name} {head:9s}: {report.macs / 1e9:7.3f} GMACs ({100 * (report.macs / 1e9 / reference - 1):+5.1f}% vs reference "
              f"{reference}); with fvcore's default norm/upsample counts {(report.macs + extras) / 1e9:7.3f} "
              f"({100 * ((report.macs + extras) / 1e9 / reference - 1):+5.1f}%); uncounted {report.uncounted or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 224], help="b1 input sides for the stability part")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="bound of each measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strategy", choices=list(STRATEGIES), default=None, help="timing strategy (default: the profiler's)")
    parser.add_argument("--contended-runs", type=int, default=4)
    parser.add_argument("--hog-seconds", type=float, default=150.0, help="hard bound of the hog processes' life")
    parser.add_argument("--predictor-input", type=int, default=224)
    parser.add_argument("--calibration", type=int, default=12)
    parser.add_argument("--holdout", type=int, default=20)
    parser.add_argument("--predictor-trials", type=int, default=10, help="timed rounds per predictor measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model and space, few trials: proves the script runs")
    parser.add_argument("--skip-stability", action="store_true")
    parser.add_argument("--skip-contended", action="store_true")
    parser.add_argument("--skip-predictor", action="store_true")
    parser.add_argument("--macs", action="store_true")
    args = parser.parse_args()
    args.timing = timing_strategy(args.strategy, **({"warmup_s": 0.1, "trials": 4, "max_trials": 6} if args.smoke else {}))
    if args.smoke:
        args.sizes, args.repeats, args.contended_runs, args.max_seconds = [64], 2, 1, 5.0
        args.calibration, args.holdout, args.hog_seconds = 4, 3, 30.0
    fingerprint = device_fingerprint(args.device, threads=args.threads)
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; device {fingerprint['name']} ({fingerprint['kind']}), "
          f"torch {fingerprint['torch']}, threads {fingerprint['threads']} of {len(os.sched_getaffinity(0))} usable cores, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, fingerprint {fingerprint['fingerprint_id']}, "
          f"timing strategy {args.timing}")
    cache_hit(args)
    quiet = {}
    if not args.skip_stability:
        quiet = stability(args)
    if not args.skip_contended:
        side = min(args.sizes)
        contended_vs_quiet(args, quiet.get(side) or stability_reference(args, side), side)
    if not args.skip_predictor:
        predictor_accuracy(args)
    if args.macs:
        reference_macs()


def stability_reference(args: argparse.Namespace, side: int) -> float:
    model, x = model_and_input(args, side)
    return measure_latency(model, x, args.device, threads=args.threads, max_seconds=args.max_seconds, strategy=args.timing).median


if __name__ == "__main__":
    main()
