"""``hrvit-nas search``: run or resume a multi-objective architecture search."""

from __future__ import annotations

import argparse

from hrvit_nas import UserError
from profiling import DEFAULT_MAX_SECONDS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="multi-objective architecture search under latency/energy/params/FLOPs budgets",
        description=(
            "Run an Optuna study over the search space; re-running the same command resumes it "
            "(COMPLETE trials count toward --trials, trials of killed workers are retried)."
        ),
    )
    p.add_argument("--study", required=True, help="study name (resumed when it exists in the storage)")
    p.add_argument("--storage", help="file path, sqlite:///PATH, journal:///PATH, postgresql:// (or postgres://), mysql://; "
                   "default: $HRVIT_NAS_STORAGE, else RUN_DIR/study.db (SQLite). Keep passwords off the command line: "
                   "set HRVIT_NAS_STORAGE, or leave the password out and let libpq read PGPASSFILE/~/.pgpass")
    p.add_argument("--run-dir", help="directory for the default storage (default: runs/STUDY)")
    p.add_argument("--space", help="search space YAML (default: the built-in space around HRViT-b1)")
    p.add_argument("--trials", type=int, default=50, help="COMPLETE trials the study should hold (default 50)")
    p.add_argument("--objectives", default="accuracy,latency", help="comma list of accuracy, latency, energy, params, flops, "
                   "or objectives an installed package registers (entry-point group hrvit_nas.objectives)")
    p.add_argument("--max-latency-ms", type=float, help="latency budget (ms per batch)")
    p.add_argument("--max-energy-mj", type=float, help="energy budget (mJ per image, gross)")
    p.add_argument("--max-params-m", type=float, help="parameter budget (millions)")
    p.add_argument("--max-gflops", type=float, help="compute budget (GFLOPs)")
    p.add_argument("--estimator", help="accuracy estimator by name: zero-cost (default), params, flops, supernet, short-train, "
                   "or one an installed package registers (entry-point group hrvit_nas.estimators)")
    p.add_argument("--estimator-option", action="append", default=[], metavar="KEY=VALUE",
                   help="estimator option, repeatable (e.g. batch=16, checkpoint=supernet.pt)")
    p.add_argument("--latency-predictor", metavar="PATH", help="predict latency with this fitted predictor instead of measuring")
    p.add_argument("--device", default="auto", help="profiling device: auto, cpu, cuda, cuda:1 (default auto)")
    p.add_argument("--input", default=None, metavar="HxW", help="input size, e.g. 512x512 (default: the space's)")
    p.add_argument("--batch", type=int, default=1, help="batch size for profiling (default 1)")
    p.add_argument("--runtime", default="eager", help="runtime latency is measured on (and its budget refers to): eager "
                   "(default), compile, cuda-graphs, onnxruntime, onnxruntime-trt, tensorrt; fixed when the study is created")
    p.add_argument("--dtype", default="fp32", help="precision of the timed model: fp32 (default), fp16, bf16")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (one GPU each when several)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads per worker (default: the cores this process may use, split among --workers)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (each worker's is derived from it, the trials already "
                   "in the study and the worker index, so a resume continues)")
    p.add_argument("--sampler", default=None, help="cheap-first (default: screens thousands of candidates with exact "
                   "params/FLOPs and predictors, measures the most promising), tpe, nsga2, gp or random")
    p.add_argument("--baselines", action="store_true", help="enqueue the b1/b2/b3 presets (nearest space members) first")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help=f"bound of one latency measurement, back-offs included (default {DEFAULT_MAX_SECONDS:g})")
    p.add_argument("--max-minutes", type=float, help="stop starting trials after this many minutes (those in flight "
                   "finish); re-run the same command to continue the study")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle_search)


def parse_options(items: list[str]) -> dict:
    """``key=value`` pairs; values are read as YAML scalars (16 -> int, true -> bool, a.pt -> str)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--estimator-option {item!r}: write KEY=VALUE, e.g. batch=16")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            options[key.strip()] = value
    return options


def handle_search(args: argparse.Namespace) -> int:
    from hrvit_space import load_space, parse_input_size
    from search.records import pareto_trials
    from search.samplers import DEFAULT_SAMPLER
    from search.settings import SearchSettings
    from search.workers import run_search

    if args.threads is not None:
        from profiling import set_default_threads

        set_default_threads(args.threads)  # per worker; without it run_search splits the cores among --workers
    space = load_space(args.space, parse_input_size(args.input) if args.input else None)
    settings = SearchSettings(
        space=space,
        objectives=args.objectives,
        budgets={
            "max_latency_ms": args.max_latency_ms,
            "max_energy_mj": args.max_energy_mj,
            "max_params_m": args.max_params_m,
            "max_gflops": args.max_gflops,
        },
        input_size=parse_input_size(args.input) if args.input else None,
        batch=args.batch,
        device=args.device,
        runtime=args.runtime,
        dtype=args.dtype,
        estimator=args.estimator,
        estimator_options=parse_options(args.estimator_option),
        sampler=args.sampler or DEFAULT_SAMPLER,
        seed=args.seed,
        latency_predictor=args.latency_predictor,
        baselines=args.baselines,
        max_seconds=args.max_seconds,
    )
    study = run_search(
        settings, args.study, args.storage, args.trials,
        workers=args.workers, run_dir=args.run_dir, progress=not args.no_progress, max_minutes=args.max_minutes,
    )
    front = pareto_trials(study)
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))  # pruned duplicates are not trials run
    print(f"study {study.study_name!r}: {len(complete)} trials, {len(front)} on the feasible Pareto front")
    if args.max_minutes is not None and len(complete) < args.trials:
        print(f"stopped by --max-minutes {args.max_minutes:g} before --trials {args.trials}; re-run the same command to continue")
    for trial in sorted(front, key=lambda t: t.values):
        values = ", ".join(f"{name}={value:.4g}" for name, value in zip(settings.objectives, trial.values))
        print(f"  trial {trial.number:4d}  {values}  config {trial.user_attrs.get('config_hash')}")
    return 0
