"""Export bundles, written and read as one ``Bundle``: a directory with config.yaml, train.yaml, optional
weights.pt and metrics.json (and, from ``hrvit-nas export --onnx/--torchscript``, model.onnx / model.ts).

A finished training run writes the same layout into its output directory, so a trained run is itself
a bundle (``hrvit-nas train RUN_DIR`` fine-tunes from it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hrvit_nas import UserError, atomic_path, atomic_write_text
from hrvit_space import ArchConfig
from training.recipe import TrainRecipe

CONFIG_FILE = "config.yaml"
RECIPE_FILE = "train.yaml"
WEIGHTS_FILE = "weights.pt"
METRICS_FILE = "metrics.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
BUNDLE_FILES = frozenset({CONFIG_FILE, RECIPE_FILE, WEIGHTS_FILE, METRICS_FILE, ONNX_FILE, TORCHSCRIPT_FILE})


class BundleError(UserError, ValueError):
    """A bundle directory that lacks a required file or holds an unreadable one."""


@dataclass(frozen=True)
class Bundle:
    config: ArchConfig
    recipe: TrainRecipe
    weights_path: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def write(self, directory: str | Path, weights: Mapping[str, Any] | None = None) -> "Bundle":
        """Write config, recipe, ``weights`` (a state dict) and metrics into ``directory``, each file
        atomically; returns the bundle as ``load_bundle`` reads it back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        self.recipe.save(directory / RECIPE_FILE)
        if weights is not None:
            write_weights(directory, weights)
        atomic_write_text(directory / METRICS_FILE, json.dumps(self.metrics, indent=2, sort_keys=True) + "\n")
        return load_bundle(directory)


def write_weights(directory: str | Path, weights: Mapping[str, Any]) -> None:
    """The bundle's ``weights.pt`` (a state dict), atomically: what a run adds once its other files exist."""
    import torch  # only writers of weights pay for torch; readers of bundles stay light

    with atomic_path(Path(directory) / WEIGHTS_FILE) as tmp:
        torch.save(weights, tmp)


def load_bundle(directory: str | Path) -> Bundle:
    """Load a bundle; every missing or malformed file gets an error naming the file and the fix."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {str(directory)!r} not found; pass a directory written by `hrvit-nas export` or `hrvit-nas train`")
    missing = [name for name in (CONFIG_FILE, RECIPE_FILE) if not (directory / name).is_file()]
    if missing:
        raise BundleError(
            f"bundle {str(directory)!r} lacks {', '.join(missing)}; re-export it with `hrvit-nas export` "
            f"(a bundle holds {CONFIG_FILE}, {RECIPE_FILE}, optionally {WEIGHTS_FILE} and {METRICS_FILE})"
        )
    config = _with_file_context(directory / CONFIG_FILE, ArchConfig.load)
    recipe = _with_file_context(directory / RECIPE_FILE, TrainRecipe.load)
    metrics: dict[str, Any] = {}
    metrics_path = directory / METRICS_FILE
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as error:
            raise BundleError(f"{metrics_path}: not valid JSON ({error}); delete or regenerate it") from None
        if not isinstance(metrics, dict):
            raise BundleError(f"{metrics_path}: expected a JSON object of metrics; delete or regenerate it")
    weights = directory / WEIGHTS_FILE
    return Bundle(config, recipe, weights if weights.is_file() else None, metrics, directory)


def _with_file_context(path: Path, loader):
    try:
        return loader(path)
    except UserError as error:
        raise BundleError(f"{path}: {error}") from None
