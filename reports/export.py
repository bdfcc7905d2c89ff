"""Export bundles: what ``hrvit-nas train`` takes, one per chosen trial.

A bundle holds ``config.yaml`` (validated, schema-versioned ArchConfig), ``train.yaml`` (TrainRecipe),
``metrics.json`` (every measurement with its unit, the device fingerprint, budgets and feasibility) and
optionally ``weights.pt`` (sliced from a supernet, BatchNorm recalibrated), ``model.onnx`` and
``model.ts`` (each checked against the PyTorch model's output before it is kept).

One chosen trial: ``--out`` is the bundle. Several (``--pick pareto``): ``--out/trial_<N>/`` each.
Everything is written into a staging directory next to ``--out`` and renamed into place at the end, so
a failed export leaves an existing ``--out`` (replaced only with ``--force``) untouched.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hrvit_nas import UserError, atomic_path, atomic_write_text
from hrvit_space import SCHEMA_VERSION, ArchConfig
from reports.metrics import MEASUREMENT_UNITS
from reports.study_data import StudyData
from search import trial_config
from training import CONFIG_FILE, METRICS_FILE, RECIPE_FILE, WEIGHTS_FILE

ONNX_FILE, TORCHSCRIPT_FILE = "model.onnx", "model.ts"
REQUIRED_FILES = frozenset({CONFIG_FILE, RECIPE_FILE, METRICS_FILE})
BUNDLE_FILES = REQUIRED_FILES | {WEIGHTS_FILE, ONNX_FILE, TORCHSCRIPT_FILE}

DATASET_BY_CLASSES = {150: "ade20k", 19: "cityscapes"}
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-3
CHECK_SEED = 0
CALIB_BATCH_SIZE = 8
ONNX_OPSET = 18


class ExportError(UserError, ValueError):
    """An export that cannot be written as asked (output exists, missing option, failed output check)."""


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
    supernet = _load_supernet(options) if options.supernet else None
    calibration = calibration_batches(options, trial_config(trials[numbers[0]]).input_size) if supernet else None
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
                 supernet: torch.nn.Module | None = None, calibration: Callable[[], Iterable] | None = None) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    baseline = trial.user_attrs.get("baseline")
    config = trial_config(trial).replace(name=f"{data.name}-trial{trial.number}" + (f"-{baseline}" if baseline else ""))
    config.save(bundle / CONFIG_FILE)
    recipe = training_recipe(config, options)
    recipe.save(bundle / RECIPE_FILE)
    model = None
    if supernet is not None:
        model = sliced_model(supernet, config, calibration, options.calib_batches, trial.number)
        with atomic_path(bundle / WEIGHTS_FILE) as tmp:
            torch.save(model.state_dict(), tmp)
    checks: dict[str, float] = {}
    if options.onnx or options.torchscript:
        model = model if model is not None else _initialised_model(config)
        if options.torchscript:
            checks["torchscript_max_abs_diff"] = export_torchscript(model, config, bundle / TORCHSCRIPT_FILE)
        if options.onnx:
            checks["onnx_max_abs_diff"] = export_onnx(model, config, bundle / ONNX_FILE)
    atomic_write_text(bundle / METRICS_FILE, json.dumps(trial_metrics(data, trial, config, checks), indent=2, sort_keys=True) + "\n")


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
    from training import DatasetSpec, TrainRecipe

    if options.data:
        return TrainRecipe.for_spec(DatasetSpec.parse(options.data))
    kind = DATASET_BY_CLASSES.get(config.head.num_classes)
    if kind is None:
        raise ExportError(
            f"cannot tell the training dataset of a {config.head.num_classes}-class head; pass --data "
            "(e.g. folder:/path/to/data or synthetic:num_classes=4)"
        )
    return TrainRecipe.for_dataset(kind)


# ---------------------------------------------------------------------------------------- weights
def _load_supernet(options: ExportOptions) -> torch.nn.Module:
    from training import load_supernet

    supernet, _, _ = load_supernet(options.supernet)
    return supernet.eval()


def calibration_batches(options: ExportOptions, input_size: tuple[int, int]) -> Callable[[], Iterable]:
    """A function giving the same seeded image batches on every call (one pass per exported variant)."""
    from torch.utils.data import DataLoader

    from training import DatasetSpec, build_dataset, train_transform

    spec = DatasetSpec.parse(options.calib_data)
    transform = train_transform(input_size, scale_range=(1.0, 1.0), ignore_index=spec.ignore_index, flip_prob=0.0, photometric=False)
    dataset = build_dataset(spec, "train", transform=transform)

    def batches() -> Iterable:
        generator = torch.Generator().manual_seed(CHECK_SEED)
        torch.manual_seed(CHECK_SEED)  # the random crops draw from the global generator
        return DataLoader(dataset, batch_size=CALIB_BATCH_SIZE, shuffle=True, generator=generator, num_workers=0)

    return batches


def sliced_model(supernet: torch.nn.Module, config: ArchConfig, batches: Callable[[], Iterable], num_batches: int, number: int) -> torch.nn.Module:
    """The trial's subnet with the supernet's shared weights and BatchNorm statistics of its own."""
    from hrvit_space import recalibrate_bn

    try:
        model = supernet.extract(config)
    except UserError as error:
        raise ExportError(f"trial {number} is not a member of the supernet ({error}); pass the supernet trained on this study's space") from None
    with torch.random.fork_rng():
        return recalibrate_bn(model, batches(), num_batches=num_batches)


def _initialised_model(config: ArchConfig) -> torch.nn.Module:
    """The architecture with seeded random weights: enough for deployment formats and latency checks."""
    from hrvit_space import build_model

    with torch.random.fork_rng():
        torch.manual_seed(CHECK_SEED)
        return build_model(config).eval()


# ----------------------------------------------------------------------------- deployment formats
def _example_input(config: ArchConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(CHECK_SEED)
    return torch.randn(1, config.in_chans, *config.input_size, generator=generator)


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for _, value in sorted(output.items()) for t in _tensors(value)]
    return [t for value in output for t in _tensors(value)]


def _max_diff(name: str, expected: list[torch.Tensor], got: list[Any]) -> float:
    if len(expected) != len(got):
        raise ExportError(f"{name} returns {len(got)} outputs, PyTorch {len(expected)}; export without this format")
    worst = 0.0
    for reference, value in zip(expected, got):
        value = torch.as_tensor(value)
        if value.shape != reference.shape or not torch.allclose(value, reference, atol=CHECK_ATOL, rtol=CHECK_RTOL):
            diff = float((value - reference).abs().max()) if value.shape == reference.shape else float("inf")
            raise ExportError(f"{name} output differs from PyTorch (max abs diff {diff:.3g}); export without this format")
        worst = max(worst, float((value - reference).abs().max()))
    return worst


def export_torchscript(model: torch.nn.Module, config: ArchConfig, path: Path) -> float:
    """Trace at the config's input size, save, reload and compare; returns the max absolute difference."""
    example = _example_input(config)
    with torch.no_grad(), warnings.catch_warnings():
        # Window padding is decided from the input size, which is fixed here: the trace is exact for it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = _tensors(model(example))
        traced = torch.jit.trace(model, example, check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
        reloaded = torch.jit.load(str(path))
        return _max_diff("TorchScript", expected, _tensors(reloaded(example)))


def export_onnx(model: torch.nn.Module, config: ArchConfig, path: Path) -> float:
    """Export (input ``image`` of shape 1x3xHxW), run in onnxruntime and compare; returns the max abs difference.

    Uses torch's TorchScript-based exporter: on HRViT it is ~5x faster than the dynamo exporter (22 s vs
    108 s for a tiny config on 2 busy cores; minutes for b1) with the same 2e-7 agreement.
    """
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"--onnx needs {', '.join(missing)}: pip install onnx onnxruntime (or drop --onnx)")
    import onnxruntime

    example = _example_input(config)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)  # an optimisation skipped, not an error
        expected = _tensors(model(example))
        with atomic_path(path) as tmp:
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET, input_names=["image"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": example.numpy()})
    return _max_diff("ONNX", expected, [torch.from_numpy(value) for value in got])


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
    from training import DatasetSpec

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
