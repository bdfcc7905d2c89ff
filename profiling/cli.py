"""``hrvit-nas profile CONFIG|--preset b1 ...`` and ``hrvit-nas profile build-predictor ...``.

One parser serves both: the first positional is a config file or the word ``build-predictor``; options
that only make sense for the predictor are grouped apart and refused for a plain profile.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from hrvit_nas.errors import UserError

BUILD_PREDICTOR = "build-predictor"
_PREDICTOR_ONLY = ("space", "out", "calibration", "holdout", "seed")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="params, FLOPs, latency, energy and memory of a config (or build a latency predictor)",
        description="Profile one architecture (CONFIG file or --preset) on a device, or `profile build-predictor` "
        "to build the calibrated latency predictor of a search space on this device.",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG|build-predictor", help="YAML/JSON config file, or build-predictor")
    p.add_argument("--preset", choices=("b1", "b2", "b3"), help="profile a reference preset instead of a CONFIG file")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--input", default=None, metavar="HxW", help="input size, e.g. 512x512 (default: the config's input_size)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 (CUDA) or bf16, run as autocast (default fp32)")
    p.add_argument("--energy", action="store_true", help="measure energy per image (NVML on CUDA, RAPL on CPU)")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency measurement")
    p.add_argument("--channels-last", action="store_true", help="run in channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model before timing")
    p.add_argument("--cuda-graphs", action="store_true", help="replay the forward as a CUDA graph (CUDA only)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads for timing (default: torch's setting)")
    p.add_argument("--isolate", action="store_true", help="measure in a fresh subprocess (a crash becomes an error field)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="neither read nor store the result cache")
    p.add_argument("--cache", default=None, metavar="PATH", help="cache file (default $HRVIT_NAS_CACHE_DIR or ~/.cache/hrvit-nas/profiles.sqlite)")
    build = p.add_argument_group("build-predictor options")
    build.add_argument("--space", default=None, metavar="SPACE.yaml", help="search space (default: the built-in space around b1)")
    build.add_argument("--out", default=None, metavar="PATH", help="where to write the predictor (default latency-predictor.json)")
    build.add_argument("--calibration", type=int, default=None, help="whole models measured to calibrate (default 8)")
    build.add_argument("--holdout", type=int, default=None, help="held-out models measured for the error report (default 20)")
    build.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")
    p.set_defaults(func=handle_profile)


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """``512x512`` or ``512`` -> (512, 512)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not match or int(match.group(1)) <= 0 or (match.group(2) is not None and int(match.group(2)) <= 0):
        raise UserError(f"--input {text!r} is malformed; give HEIGHTxWIDTH with positive integers, e.g. 512x512")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _config(args: argparse.Namespace):
    from hrvit_space.cli import load_preset
    from hrvit_space.config import ArchConfig

    if (args.config is None) == (args.preset is None):
        raise UserError("give exactly one of CONFIG (a YAML/JSON file) or --preset b1|b2|b3")
    return load_preset(args.preset, parse_input_size(args.input)) if args.preset else ArchConfig.load(args.config)


def handle_profile(args: argparse.Namespace) -> int:
    if args.config == BUILD_PREDICTOR:
        return _build_predictor(args)
    given = [f"--{name}" for name in _PREDICTOR_ONLY if getattr(args, name) is not None]
    if given:
        raise UserError(f"{', '.join(given)} only apply to `hrvit-nas profile build-predictor`; drop them to profile a config")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} is invalid; give a positive integer")
    from profiling.profiler import profile

    config = _config(args)
    cache = (args.cache or "default") if args.use_cache else None
    result = profile(
        config, device=args.device, input_size=parse_input_size(args.input), batch=args.batch, dtype=args.dtype,
        energy=args.energy, measure_latency=args.latency, channels_last=args.channels_last, compile=args.compile,
        cuda_graphs=args.cuda_graphs, threads=args.threads, cache=cache, isolate=args.isolate,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_result(result, config.name))
    return 1 if result.error else 0


def format_result(result, name: str | None = None) -> str:
    """A readable summary table of one ProfileResult."""
    rows = [
        ("config", f"{name or '-'} ({result.config_hash})"),
        ("device", f"{result.device}: {result.fingerprint.get('name', '?')} [fingerprint {result.fingerprint_id}]"),
        ("input", f"{result.batch} x {result.input_size[0]}x{result.input_size[1]}, {result.dtype}"),
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
        spread = f"p10 {lat.p10:.3f}, p90 {lat.p90:.3f}, IQR {lat.iqr:.3f}, CV {100 * lat.cv:.1f}%, n={lat.n}{threads}"
        rows.append(("latency", f"{lat.median:.3f} ms median ({spread}){flag}"))
    if result.energy is not None:
        rows.append(("energy", result.energy.describe()))
    if result.peak_memory_bytes is not None:
        how = "CUDA max allocated" if result.device.startswith("cuda") else "RSS growth during one call"
        rows.append(("peak memory", f"{result.peak_memory_bytes / 2**20:.1f} MiB ({how})"))
    if result.cached:
        rows.append(("source", "cache"))
    if result.error:
        rows.append(("ERROR", result.error))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _build_predictor(args: argparse.Namespace) -> int:
    from hrvit_space.cli import load_space
    from profiling.predictor import LatencyPredictor

    if args.preset is not None:
        raise UserError("--preset does not apply to build-predictor; pass --space SPACE.yaml (default: the built-in space)")
    space = load_space(args.space, parse_input_size(args.input))
    out = args.out or "latency-predictor.json"
    print(f"building latency predictor on {args.device} (input {space.base.input_size}, batch {args.batch}, {args.dtype}) ...", file=sys.stderr)
    predictor = LatencyPredictor.build(
        space, args.device, batch=args.batch, dtype=args.dtype, calibration=args.calibration or 8,
        holdout=args.holdout if args.holdout is not None else 20, seed=args.seed or 0, threads=args.threads,
    )
    predictor.save(out)
    summary = {"out": out, "fingerprint_id": predictor.fingerprint["fingerprint_id"], "alpha": predictor.alpha, "beta_ms": predictor.beta}
    if predictor.accuracy:
        summary.update(within10_pct=predictor.accuracy.within10_pct, kendall_tau=predictor.accuracy.kendall_tau, holdout_n=predictor.accuracy.n)
    print(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k:<15} {v}" for k, v in summary.items()))
    return 0
