"""``hrvit-nas profile CONFIG|--preset b1 ...``, ``profile build-predictor ...`` and ``profile predict CONFIG``.

One parser serves all three: the first positional is a config file or the word ``build-predictor`` or
``predict``; options that only make sense for the predictor are grouped apart and refused elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys

from hrvit_nas import UserError
from hrvit_space import parse_input_size
from profiling.choices import DEFAULT_MAX_SECONDS, RUNTIMES

BUILD_PREDICTOR = "build-predictor"
PREDICT = "predict"
DEFAULT_PREDICTOR = "latency-predictor.json"
DEFAULT_CALIBRATION = 12
DEFAULT_HOLDOUT = 20
DEFAULT_TRIALS = 10
_PREDICTOR_ONLY = ("space", "out", "calibration", "holdout", "trials", "seed")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="params, FLOPs, latency, energy and memory of a config (or build a latency predictor)",
        description="Profile one architecture (CONFIG file or --preset) on a device, `profile build-predictor` "
        "to build the calibrated latency predictor of a search space on this device, or `profile predict CONFIG` "
        "to answer from such a predictor.",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG|build-predictor|predict", help="YAML/JSON config file, build-predictor or predict")
    p.add_argument("predict_config", nargs="?", metavar="CONFIG", help="with predict: the config file to predict")
    p.add_argument("--preset", choices=("b1", "b2", "b3"), help="profile a reference preset instead of a CONFIG file")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--input", default=None, metavar="HxW", help="input size, e.g. 512x512 (default: the config's input_size)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 (CUDA) or bf16, run as autocast in PyTorch runtimes (default fp32)")
    p.add_argument("--runtime", default="eager", choices=RUNTIMES, help="what executes the model (default eager PyTorch)")
    p.add_argument("--energy", action="store_true", help="measure energy per image (NVML on CUDA, RAPL on CPU)")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency and memory measurements (counts only)")
    p.add_argument("--channels-last", action="store_true", help="run in channels-last memory format")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (default: the cores this process may use, or $HRVIT_NAS_THREADS)")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help=f"bound of one latency measurement, back-offs included (default {DEFAULT_MAX_SECONDS:g})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line on stderr")
    p.add_argument("--isolate", action="store_true", help="measure in a fresh subprocess (a crash becomes an error field)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="neither read nor store the result cache")
    p.add_argument("--cache", default=None, metavar="PATH", help="cache file (default $HRVIT_NAS_CACHE_DIR or ~/.cache/hrvit-nas/profiles.sqlite)")
    build = p.add_argument_group("build-predictor options")
    build.add_argument("--space", default=None, metavar="SPACE.yaml", help="search space (default: the built-in space around b1)")
    build.add_argument("--out", default=None, metavar="PATH", help=f"where to write the predictor (default {DEFAULT_PREDICTOR})")
    build.add_argument("--calibration", type=int, default=None,
                       help=f"whole models measured to calibrate, >= 3 (default {DEFAULT_CALIBRATION})")
    build.add_argument("--holdout", type=int, default=None, help=f"held-out models measured for the error report (default {DEFAULT_HOLDOUT})")
    build.add_argument("--trials", type=int, default=None,
                       help=f"timed rounds per measurement, >= 2: more lower the noise floor, the build takes longer (default {DEFAULT_TRIALS})")
    build.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")
    p.add_argument("--predictor", default=None, metavar="PATH", help=f"with predict: the predictor file (default {DEFAULT_PREDICTOR})")
    p.set_defaults(func=handle_profile)


def _input_size(text: str | None) -> tuple[int, int] | None:
    return None if text is None else parse_input_size(text)


def _config(args: argparse.Namespace, path: str | None, input_size: tuple[int, int] | None = None):
    """CONFIG file or ``--preset`` (fitted to ``input_size``, default ``--input``)."""
    from hrvit_space import ArchConfig, load_preset

    if (path is None) == (args.preset is None):
        raise UserError("give exactly one of CONFIG (a YAML/JSON file) or --preset b1|b2|b3")
    return load_preset(args.preset, input_size or _input_size(args.input)) if args.preset else ArchConfig.load(path)


def handle_profile(args: argparse.Namespace) -> int:
    if args.config == BUILD_PREDICTOR:
        return _build_predictor(args)
    given = [f"--{name}" for name in _PREDICTOR_ONLY if getattr(args, name) is not None]
    if given:
        raise UserError(f"{', '.join(given)} only apply to `hrvit-nas profile build-predictor`; drop them to profile a config")
    if args.config == PREDICT:
        return _predict(args)
    if args.predict_config is not None or args.predictor is not None:
        raise UserError("a second CONFIG and --predictor only apply to `hrvit-nas profile predict CONFIG`")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} is invalid; give a positive integer")
    from profiling.profiler import profile

    config = _config(args, args.config)
    cache = (args.cache or "default") if args.use_cache else None
    result = profile(
        config, device=args.device, input_size=_input_size(args.input), batch=args.batch, dtype=args.dtype,
        runtime=args.runtime, energy=args.energy, measure_latency=args.latency, channels_last=args.channels_last,
        threads=args.threads, max_seconds=args.max_seconds, cache=cache, isolate=args.isolate, progress=args.progress,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_result(result, config.name))
    return 1 if result.error else 0


def format_result(result, name: str | None = None) -> str:
    """A readable summary table of one ProfileResult."""
    rows = [
        ("config", f"{name or '-'} ({result.config_hash})"),
        ("device", f"{result.device}: {result.fingerprint.get('name', '?')} [fingerprint {result.fingerprint_id}]"),
        ("input", f"{result.batch} x {result.input_size[0]}x{result.input_size[1]}, {result.dtype}"),
        ("runtime", f"{result.runtime} ({result.options.get('runtime_version', '?')})" + (
            f", outputs within {result.runtime_max_abs_diff:.2g} of PyTorch" if result.runtime_max_abs_diff is not None else "")),
        ("params", f"{result.params / 1e6:.3f} M" if result.params is not None else "-"),
        ("compute", f"{result.macs / 1e9:.3f} GMACs = {result.flops / 1e9:.3f} GFLOPs (+{result.other_ops / 1e9:.3f} G other ops)"
         if result.macs is not None else "-"),
    ]
    for label, values, scale in (("params (M) by component", result.params_by_component, 1e6),
                                 ("params (M) by branch", result.params_by_branch, 1e6),
                                 ("GMACs by component", result.macs_by_component, 1e9),
                                 ("GMACs by branch", result.macs_by_branch, 1e9)):
        if values:
            rows.append((label, ", ".join(f"{k} {v / scale:.3f}" for k, v in sorted(values.items()))))
    if result.uncounted_ops:
        rows.append(("UNCOUNTED ops", ", ".join(f"{k} x{v}" for k, v in result.uncounted_ops.items())))
    lat = result.latency
    if lat is not None:
        flag = "" if lat.stable else "  UNSTABLE: re-measure on a quieter machine"
        threads = f", {lat.threads} threads" if lat.threads else ""
        p99 = f", p99 {lat.p99:.3f}" if lat.p99 is not None else ""
        spread = f"p10 {lat.p10:.3f}, p90 {lat.p90:.3f}{p99}, IQR {lat.iqr:.3f}, CV {100 * lat.cv:.1f}%, n={lat.n}{threads}"
        rows.append(("latency", f"{lat.median:.3f} ms median ({spread}){flag}"))
        if lat.interference is not None:
            load = f", load average {lat.load_avg_1m:.2f}" if lat.load_avg_1m is not None else ""
            steal = f", CPU steal {lat.cpu_steal_pct:.1f}%" if lat.cpu_steal_pct is not None else ""
            wait = f", threads waited {lat.cpu_wait_pct:.0f}% of the time for a core" if lat.cpu_wait_pct is not None else ""
            verdict = ("CONTENDED: other processes slowed this measurement; not cached, re-measure on a quieter machine"
                       if lat.contended else "quiet")
            rows.append(("interference", f"{verdict} (reference {lat.interference:.2f}x its quiet speed after "
                                         f"{lat.attempts} attempt(s){wait}{load}{steal})"))
    if result.energy is not None:
        rows.append(("energy", result.energy.describe()))
    if result.peak_memory_bytes is not None:
        rows.append(("peak memory", f"{result.peak_memory_bytes / 2**20:.1f} MiB ({result.peak_memory_source})"))
    elif result.peak_memory_source is not None:
        rows.append(("peak memory", result.peak_memory_source))
    if result.cached:
        rows.append(("source", "cache"))
    if result.error:
        rows.append(("ERROR", result.error))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _build_predictor(args: argparse.Namespace) -> int:
    from hrvit_space import load_space
    from profiling.predictor import LatencyPredictor

    if args.preset is not None or args.predict_config is not None:
        raise UserError("--preset and CONFIG do not apply to build-predictor; pass --space SPACE.yaml (default: the built-in space)")
    space = load_space(args.space, _input_size(args.input))
    out = args.out or DEFAULT_PREDICTOR
    print(f"building latency predictor on {args.device} (input {space.base.input_size}, batch {args.batch}, {args.dtype}, "
          f"{args.runtime}) ...", file=sys.stderr)
    predictor = LatencyPredictor.build(
        space, args.device, batch=args.batch, dtype=args.dtype, runtime=args.runtime,
        calibration=DEFAULT_CALIBRATION if args.calibration is None else args.calibration,
        holdout=DEFAULT_HOLDOUT if args.holdout is None else args.holdout, seed=args.seed or 0, threads=args.threads,
        trials=DEFAULT_TRIALS if args.trials is None else args.trials,
        max_seconds=args.max_seconds, progress=args.progress,
    )
    predictor.save(out)
    summary = {
        "out": out, "fingerprint_id": predictor.fingerprint["fingerprint_id"], "runtime": predictor.runtime,
        "model": predictor.model, "alphas": predictor.alphas, "beta_ms": predictor.beta, "candidates": predictor.candidates,
    }
    if predictor.accuracy:
        summary.update(predictor.accuracy.to_dict())
        summary.pop("rows")
    print(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k:<18} {v}" for k, v in summary.items()))
    if predictor.accuracy:
        print(f"held-out accuracy: {predictor.accuracy.describe()}", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Answer from a predictor file: no model is built or timed."""
    from profiling.predictor import LatencyPredictor

    predictor = LatencyPredictor.load(args.predictor or DEFAULT_PREDICTOR, device=None if args.device == "auto" else args.device)
    size = _input_size(args.input) or tuple(predictor.structure["input_size"])
    config = _config(args, args.predict_config, size)
    predictor.check(runtime=args.runtime, dtype=args.dtype, batch=args.batch, input_size=size)
    latency_ms = predictor.predict(config.replace(input_size=size))
    answer = {"config_hash": config.content_hash(), "latency_ms": latency_ms, "latency_source": "predictor",
              "predictor": str(args.predictor or DEFAULT_PREDICTOR), "runtime": predictor.runtime, "dtype": predictor.dtype,
              "batch": predictor.batch, "input_size": list(size)}
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        accuracy = f" (held-out: {predictor.accuracy.describe()})" if predictor.accuracy else ""
        print(f"{config.name or config.content_hash()}: {latency_ms:.3f} ms predicted at batch {predictor.batch}, "
              f"{size[0]}x{size[1]}, {predictor.dtype}, {predictor.runtime}{accuracy}")
    return 0
