"""Export bundles: what ``hrvit-nas train`` takes, one per chosen trial.

This module chooses and lays out; the bundle itself is ``training.Bundle`` and the model work (weight
slicing, BatchNorm recalibration, ONNX/TorchScript with their output checks) is ``training.deploy``.

A bundle holds ``config.yaml`` (validated, schema-versioned ArchConfig), ``train.yaml`` (TrainRecipe),
``metrics.json`` (every measurement with its unit, the device fingerprint, budgets and feasibility) and
optionally ``weights.pt`` (sliced from a supernet, BatchNorm recalibrated), ``model.onnx`` and
``model.ts`` (each checked against the PyTorch model's output before it is kept).

One chosen trial: ``--out`` is the bundle. Several (``--pick pareto``): ``--out/trial_<N>/`` each.
Everything is written into a staging directory next to ``--out`` and renamed into place at the end, so
a failed export leaves an existing ``--out`` (replaced only with ``--force``) untouched.
"""

from __future__ import annotations

import math
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrvit_nas import atomic_write_text
from hrvit_space import SCHEMA_VERSION, ArchConfig
from reports.metrics import MEASUREMENT_UNITS
from reports.study_data import StudyData
from search import trial_config
from training import (
    BUNDLE_FILES,
    CONFIG_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    Bundle,
    DatasetSpec,
    ExportError,
    TrainRecipe,
    calibration_loader,
    initialised_model,
    load_supernet,
    sliced_model,
    write_formats,
)

REQUIRED_FILES = frozenset({CONFIG_FILE, RECIPE_FILE, METRICS_FILE})  # what every export writes
DATASET_BY_CLASSES = {150: "ade20k", 19: "cityscapes"}


@dataclass(frozen=True)
class ExportOptions:
    force: bool = False
    data: str | None = None  # training dataset spec for train.yaml (training's syntax, e.g. ade20k:/path)
    supernet: Path | None = None  # supernet checkpoint to slice weights from
    calib_data: str | None = None  # dataset spec for BatchNorm recalibration
    calib_batches: int = 20
    onnx: bool = False
    torchscript: bool = False


def export_trials(data: StudyData, numbers: list[int], out_dir: str | Path, options: ExportOptions) -> list[Path]:
    """Write one bundle per trial number; returns the bundle directories."""
    out_dir = Path(out_dir).absolute()
    _check_request(out_dir, options, protected=[Path.cwd(), *data.local_files(), *([options.supernet] if options.supernet else [])])
    trials = {t.number: t for t in data.study.get_trials(deepcopy=False)}
    unknown = [n for n in numbers if n not in trials]
    if unknown:
        raise ExportError(f"study {data.name!r} has no trial {unknown[0]}; trials are 0..{len(trials) - 1}")
    not_complete = [n for n in numbers if trials[n].state.name != "COMPLETE"]
    if not_complete:
        n = not_complete[0]
        reason = trials[n].user_attrs.get("failure_reason") or trials[n].state.name
        raise ExportError(f"trial {n} of study {data.name!r} did not complete ({reason}); pick a complete trial")
    supernet = load_supernet(options.supernet)[0].eval() if options.supernet else None
    input_size = trial_config(trials[numbers[0]]).input_size
    calibration = calibration_loader(DatasetSpec.parse(options.calib_data), input_size) if supernet else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.staging"
    staging.mkdir()  # unlike tempfile.mkdtemp (0700), mkdir honours the user's umask like every other output
    try:
        single = len(numbers) == 1
        bundles = []
        for number in numbers:
            bundle = staging if single else staging / f"trial_{number:04d}"
            write_bundle(data, trials[number], bundle, options, supernet, calibration)
            bundles.append(out_dir if single else out_dir / bundle.name)
        if not single:
            rows = data.trials[data.trials["number"].isin(numbers)].sort_values("number")
            atomic_write_text(staging / VARIANTS_FILE, rows.drop(columns=["config_json"], errors="ignore").to_csv(index=False))
        _swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundles


def write_bundle(data: StudyData, trial: Any, bundle: Path, options: ExportOptions,
                 supernet: Any = None, calibration: Callable[[], Iterable] | None = None) -> None:
    baseline = trial.user_attrs.get("baseline")
    config = trial_config(trial).replace(name=f"{data.name}-trial{trial.number}" + (f"-{baseline}" if baseline else ""))
    recipe = training_recipe(config, options)
    model = sliced_model(supernet, config, calibration, options.calib_batches) if supernet is not None else None
    bundle.mkdir(parents=True, exist_ok=True)
    checks: dict[str, float] = {}
    if options.onnx or options.torchscript:
        checks = write_formats(model if model is not None else initialised_model(config), config, bundle,
                               onnx=options.onnx, torchscript=options.torchscript)
    metrics = trial_metrics(data, trial, config, checks)
    Bundle(config, recipe, None, metrics).write(bundle, weights=model.state_dict() if model is not None else None)


def trial_metrics(data: StudyData, trial: Any, config: ArchConfig, checks: dict[str, float]) -> dict[str, Any]:
    """Everything measured for the trial, each value next to its unit, plus where and how."""
    attrs = trial.user_attrs
    measurements = {
        key: {"value": value, "unit": MEASUREMENT_UNITS.get(key, "")}
        for key, value in sorted((attrs.get("measurements") or {}).items())
        if value is not None
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "study": data.name,
        "trial": trial.number,
        "config_hash": config.content_hash(),
        "baseline": attrs.get("baseline"),
        "measurements": measurements,
        "objectives": data.settings.get("objectives", []),
        "objective_values": [value if math.isfinite(value) else None for value in trial.values or []],
        "budgets": data.settings.get("budgets", {}),
        # what latency and its budget were measured on (studies from before runtimes: eager fp32)
        "runtime": data.settings.get("runtime", "eager"),
        "dtype": data.settings.get("dtype", "fp32"),
        "batch": data.settings.get("batch", 1),
        "feasible": attrs.get("feasible"),
        "violations": attrs.get("violations", {}),
        "estimator": attrs.get("estimator"),
        "fingerprint": attrs.get("fingerprint"),
        "export_checks": checks,
    }


def training_recipe(config: ArchConfig, options: ExportOptions):
    """The paper's recipe for the dataset: ``--data``, else the one the head's class count names (no root)."""
    if options.data:
        return TrainRecipe.for_spec(DatasetSpec.parse(options.data))
    kind = DATASET_BY_CLASSES.get(config.head.num_classes)
    if kind is None:
        raise ExportError(
            f"cannot tell the training dataset of a {config.head.num_classes}-class head; pass --data "
            "(e.g. folder:/path/to/data or synthetic:num_classes=4)"
        )
    return TrainRecipe.for_dataset(kind)


# ----------------------------------------------------------------------------------- directories
def _check_request(out_dir: Path, options: ExportOptions, protected: list[Path]) -> None:
    """Refuse before any work: an existing --out without --force, or one whose replacement would delete inputs."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not options.force and not is_export_bundle(out_dir):
            raise ExportError(f"--out {str(out_dir)!r} exists and is not an export bundle; choose another --out (--force replaces only export bundles)")
        if not options.force:
            raise ExportError(f"output directory {str(out_dir)!r} exists; pass --force to replace it or choose another --out")
        inside = [p for p in protected if Path(p).absolute() == out_dir or out_dir in Path(p).absolute().parents]
        if inside:
            raise ExportError(f"--out {str(out_dir)!r} holds {str(inside[0])!r}, which --force would delete; choose another --out")
        if not is_export_bundle(out_dir):
            raise ExportError(
                f"--out {str(out_dir)!r} is not an export bundle (it holds files `hrvit-nas export` does not write); "
                "--force only replaces bundles: choose another --out, or move it away yourself"
            )
    if options.calib_batches < 1:
        raise ExportError(f"--calib-batches {options.calib_batches}: must be a positive number of batches")
    if (options.supernet is None) != (options.calib_data is None):
        raise ExportError("--supernet and --calib-data go together: weights are sliced from the supernet, then BatchNorm is recalibrated on the data")
    if options.supernet is not None and not Path(options.supernet).is_file():
        raise ExportError(f"supernet checkpoint {str(options.supernet)!r} not found; pass the supernet.pt written by `hrvit-nas train-supernet`")
    for spec in (options.data, options.calib_data):
        if spec is not None:
            DatasetSpec.parse(spec)  # a malformed spec fails before any work


VARIANTS_FILE = "variants.csv"


def is_export_bundle(path: Path) -> bool:
    """What ``--force`` may replace: a directory holding only what an export writes (one bundle, or
    ``variants.csv`` with ``trial_<N>`` bundles), so nothing of the user's is ever deleted."""
    if not path.is_dir():
        return False
    names = {child.name for child in path.iterdir()}
    if VARIANTS_FILE in names:
        return all(name == VARIANTS_FILE or (re.fullmatch(r"trial_\d+", name) and is_export_bundle(path / name)) for name in names)
    return REQUIRED_FILES <= names <= BUNDLE_FILES


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``staging`` with renames only (the old one is deleted last)."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.with_name(f".{out_dir.name}.old-{staging.name}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
