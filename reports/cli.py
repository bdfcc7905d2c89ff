"""``hrvit-nas report`` and ``hrvit-nas export``."""

from __future__ import annotations

import argparse
from pathlib import Path

SELECTOR_HELP = (
    'which trials: "pareto", "knee", "best accuracy", "fastest", "smallest", "best energy", each optionally '
    'followed by "under NUMBER UNIT [and NUMBER UNIT]" (units ms, mJ, M, GFLOPs), '
    'e.g. "best accuracy under 30 ms", "fastest under 5 mJ"'
)


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="Pareto plots, tables and an HTML report of a study",
        description="Regenerate every figure (PNG+SVG), table (CSV/Markdown/Parquet) and report.html from the study storage.",
    )
    _study_arguments(report)
    report.add_argument("--out", required=True, type=Path, help="output directory (files in it are replaced)")
    report.set_defaults(func=report_command)

    export = subparsers.add_parser(
        "export", help="write training bundles for chosen trials",
        description="Write config.yaml, train.yaml, metrics.json (and weights.pt / model.onnx / model.ts) per chosen trial; "
        "one trial: --out is the bundle, several: --out/trial_<N>/.",
    )
    _study_arguments(export)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument("--pick", metavar="SELECTOR", help=SELECTOR_HELP)
    export.add_argument("--out", required=True, type=Path, help="bundle directory (must not exist unless --force)")
    export.add_argument("--force", action="store_true", help="replace an existing --out (only an earlier export bundle)")
    export.add_argument("--data", metavar="SPEC", help="training dataset for train.yaml, as for `hrvit-nas train --data` "
                        "(e.g. ade20k:/data/ADEChallengeData2016); default: ade20k for 150 classes, cityscapes for 19, root set at train time")
    export.add_argument("--supernet", type=Path, help="supernet checkpoint: write weights.pt sliced from it")
    export.add_argument("--calib-data", metavar="SPEC", help="dataset for BatchNorm recalibration of the sliced weights")
    export.add_argument("--calib-batches", type=int, default=20, help="BatchNorm recalibration batches (default 20)")
    export.add_argument("--onnx", action="store_true", help="also write model.onnx (checked with onnxruntime)")
    export.add_argument("--torchscript", action="store_true", help="also write model.ts (checked against PyTorch)")
    export.set_defaults(func=export_command)


def train_hint(bundle: Path, data: str | None) -> str:
    """The command that trains an exported bundle: without ``--data`` at export, train.yaml names the
    dataset kind but not where it lives, so the command must say it."""
    if data:
        return f"hrvit-nas train {bundle}"
    from training import TrainRecipe

    kind = TrainRecipe.load(bundle / "train.yaml").dataset["kind"]
    return f"hrvit-nas train {bundle} --data {kind}:/path/to/{kind}"


def _study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", help="storage URL or file, as given to `hrvit-nas search` (default: runs/STUDY/study.db)")


def report_command(args: argparse.Namespace) -> int:
    from reports.report import write_report
    from reports.study_data import load_study_data

    files = write_report(load_study_data(args.study, args.storage), args.out)
    count = sum(len(paths) for paths in files.figures.values())
    print(f"wrote {files.html} ({len(files.figures)} figures, {count} image files, tables in {args.out / 'tables'})")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from reports.export import ExportOptions, export_trials
    from reports.selectors import parse_selector, select
    from reports.study_data import load_study_data

    selector = parse_selector(args.pick) if args.pick is not None else None  # reject a bad selector before any I/O
    data = load_study_data(args.study, args.storage)
    numbers = [args.trial] if selector is None else [int(n) for n in select(data, selector)["number"]]
    options = ExportOptions(
        force=args.force, data=args.data, supernet=args.supernet,
        calib_data=args.calib_data, calib_batches=args.calib_batches, onnx=args.onnx, torchscript=args.torchscript,
    )
    for bundle in export_trials(data, numbers, args.out, options):
        print(f"wrote {bundle}")
    if len(numbers) == 1:
        print(f"train it: {train_hint(args.out, args.data)}")
    return 0
