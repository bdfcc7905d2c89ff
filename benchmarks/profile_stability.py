"""Profiler benchmark: latency stability, latency-predictor accuracy, and MACs against the reference.

    python benchmarks/profile_stability.py [--input 512] [--repeats 5] [--threads 1]
        [--predictor-input 256 --calibration 8 --holdout 20] [--skip-predictor] [--macs]

1. Stability: b1 is measured ``--repeats`` times with ``measure_latency`` (warm-up, median of short
   trials); prints each median and the CV across the medians (goal < 2%), next to the CV of single trials.
2. Predictor: builds the calibrated predictor on the default search space on this device and prints the
   held-out share within +-10% (goal >= 90%) and Kendall tau (goal >= 0.8), plus alpha (whole model vs
   summed blocks).
3. ``--macs``: GMACs of b1/b2/b3 (backbone and with the SegFormer head) at 1x3x512x512 against the reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from hrvit_space.config import HeadConfig, preset
from hrvit_space.model import build_model
from hrvit_space.space import SearchSpace
from profiling import LatencyPredictor, count_flops, device_fingerprint, measure_latency

REFERENCE_GMACS = {("b1", "none"): 10.75, ("b2", "none"): 25.09, ("b3", "none"): 28.73,
                   ("b1", "segformer"): 16.15, ("b2", "segformer"): 30.63, ("b3", "segformer"): 71.16}
FVCORE_DEFAULT_EXTRAS = ("layer_norm", "batch_norm", "group_norm", "upsample_nearest2d", "upsample_bilinear2d")


def stability(args: argparse.Namespace) -> None:
    size = (args.input, args.input)
    model = build_model(preset("b1", input_size=size)).eval()
    x = torch.randn(1, 3, *size)
    medians, trial_cvs = [], []
    for repeat in range(args.repeats):
        stats = measure_latency(model, x, args.device, threads=args.threads, trials=args.trials, max_trials=args.trials)
        medians.append(stats.median)
        trial_cvs.append(stats.cv)
        print(f"  run {repeat + 1}: median {stats.median:8.2f} ms  p10 {stats.p10:8.2f}  p90 {stats.p90:8.2f}  "
              f"trial CV {100 * stats.cv:5.1f}%  n={stats.n}  stable={stats.stable}  threads={stats.threads}")
    cv = statistics.stdev(medians) / statistics.fmean(medians)
    print(f"b1 {size[0]}x{size[1]} on {args.device}: CV of {args.repeats} medians = {100 * cv:.2f}% (goal < 2%); "
          f"median single-trial CV = {100 * statistics.median(trial_cvs):.1f}%")


def predictor_accuracy(args: argparse.Namespace) -> None:
    space = SearchSpace.default().with_input_size((args.predictor_input, args.predictor_input))
    start = time.perf_counter()
    predictor = LatencyPredictor.build(space, args.device, calibration=args.calibration, holdout=args.holdout,
                                       seed=args.seed, threads=args.threads)
    acc = predictor.accuracy
    print(f"predictor on {args.device} at {args.predictor_input}x{args.predictor_input} ({time.perf_counter() - start:.0f} s to build): "
          f"{acc.within10_pct:.0f}% of {acc.n} held-out configs within +-10% (goal >= 90%), Kendall tau {acc.kendall_tau:.3f} "
          f"(goal >= 0.8), mean |error| {acc.mean_abs_error_pct:.1f}%; whole = {predictor.alpha:.3f} x blocks + {predictor.beta:.2f} ms")
    for name, predicted, measured in acc.rows:
        print(f"  {name}  predicted {predicted:8.2f} ms  measured {measured:8.2f} ms  error {100 * (predicted / measured - 1):+6.1f}%")


def cache_hit(args: argparse.Namespace) -> None:
    """Time answered from the result cache (goal < 50 ms), with a tiny config so the miss is quick."""
    import tempfile

    from profiling import profile

    tiny = preset("b1").replace(channels=(16, 32, 48, 64), input_size=(64, 64), window_sizes=(1, 1, 2, 2), dim_head=8,
                                mlp_ratios=(2, 2, 2, 2), head=HeadConfig(width=16, num_classes=4))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.sqlite"
        profile(tiny, device=args.device, measure_latency=False, cache=path)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            assert profile(tiny, device=args.device, measure_latency=False, cache=path).cached
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
    parser.add_argument("--input", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--predictor-input", type=int, default=256)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--holdout", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-stability", action="store_true")
    parser.add_argument("--skip-predictor", action="store_true")
    parser.add_argument("--macs", action="store_true")
    args = parser.parse_args()
    fingerprint = device_fingerprint(args.device, threads=args.threads)
    print(f"device: {fingerprint['name']} ({fingerprint['kind']}), torch {fingerprint['torch']}, threads {fingerprint['threads']}, "
          f"fingerprint {fingerprint['fingerprint_id']}")
    cache_hit(args)
    if not args.skip_stability:
        stability(args)
    if not args.skip_predictor:
        predictor_accuracy(args)
    if args.macs:
        reference_macs()


if __name__ == "__main__":
    main()
