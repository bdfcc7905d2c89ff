"""The training recipe: every hyper-parameter of one training run, validated, in one YAML file.

The recipe travels with an export bundle (``train.yaml``) and with every checkpoint, so a run can be
reproduced or resumed exactly. Defaults follow the HRViT paper / reference configs (SegFormer-style
AdamW + poly schedule with linear warm-up, 10x head learning rate).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from hrvit_nas import UserError, atomic_write_text
from hrvit_space import parse_yaml, read_yaml_file

AMP_MODES = ("none", "fp16", "bf16")
EVAL_MODES = ("whole", "slide")


class RecipeError(UserError, ValueError):
    """A training recipe with a missing, unknown or out-of-range field."""


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise RecipeError(f"recipe {field_name}: got {value!r}; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pair(value: Any, field_name: str) -> tuple[int, int]:
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        _fail(field_name, value, "a positive integer or [height, width]")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of one run. ``batch_size`` is the total over all processes."""

    dataset: dict[str, Any] = field(default_factory=lambda: {"kind": "synthetic"})
    crop_size: tuple[int, int] = (512, 512)
    iterations: int = 160_000
    batch_size: int = 16
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    head_lr_mult: float = 10.0
    drop_path_rate: float | None = None
    amp: str = "none"
    grad_clip: float | None = None
    grad_checkpointing: bool = False
    sync_bn: bool = False
    eval_interval: int = 16_000
    eval_mode: str = "whole"
    eval_stride: tuple[int, int] | None = None
    checkpoint_interval: int = 16_000
    num_workers: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.dataset, Mapping) or "kind" not in self.dataset:
            _fail("dataset", self.dataset, "a dataset mapping with at least `kind` (e.g. {kind: ade20k, root: /data/ADEChallengeData2016})")
        set_(self, "dataset", dict(self.dataset))
        set_(self, "crop_size", _pair(self.crop_size, "crop_size"))
        if self.eval_stride is not None:
            set_(self, "eval_stride", _pair(self.eval_stride, "eval_stride"))
        for name in ("iterations", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                _fail(name, value, "a positive integer")
        for name in ("warmup_iters", "eval_interval", "checkpoint_interval", "num_workers", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                _fail(name, value, "a non-negative integer (0 disables intervals: only at the end)")
        for name in ("lr", "head_lr_mult", "poly_power"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                _fail(name, value, "a positive number")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            _fail("weight_decay", self.weight_decay, "a number >= 0")
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio <= 1:
            _fail("warmup_ratio", self.warmup_ratio, "a number in [0, 1] (learning-rate factor at iteration 0)")
        if self.drop_path_rate is not None and (not _is_number(self.drop_path_rate) or not 0 <= self.drop_path_rate < 1):
            _fail("drop_path_rate", self.drop_path_rate, "null (use the config's) or a number in [0, 1)")
        if self.amp not in AMP_MODES:
            _fail("amp", self.amp, ", ".join(AMP_MODES))
        if self.grad_clip is not None and (not _is_number(self.grad_clip) or self.grad_clip <= 0):
            _fail("grad_clip", self.grad_clip, "null (off) or a positive max gradient norm")
        for name in ("grad_checkpointing", "sync_bn"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "true or false")
        if self.eval_mode not in EVAL_MODES:
            _fail("eval_mode", self.eval_mode, ", ".join(EVAL_MODES))

    # ------------------------------------------------------------------------------------ defaults
    @classmethod
    def for_dataset(cls, kind: str, **overrides: Any) -> "TrainRecipe":
        """The paper's recipe for ``kind`` (ade20k, cityscapes, folder) or a tiny CPU recipe (synthetic).

        ADE20K and folder: 512x512 crops, batch 16 (8 GPUs x 2), whole-image eval. Cityscapes: 1024x1024
        crops, batch 8 (8 GPUs x 1), sliding-window eval with stride 768. Both 160k iterations, AdamW
        lr 6e-5, wd 0.01, 1500 linear warm-up iterations, poly power 1, head lr x10.
        """
        if kind not in DATASET_DEFAULTS:
            _fail("dataset kind", kind, ", ".join(DATASET_DEFAULTS))
        values = {"dataset": {"kind": kind}, **DATASET_DEFAULTS[kind]}
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def for_spec(cls, spec, **overrides: Any) -> "TrainRecipe":
        """``for_dataset(spec.kind)`` reading ``spec`` (a ``training.data.DatasetSpec``); generated data
        (synthetic, mni152) is trained at its own image size."""
        values: dict[str, Any] = {"dataset": spec.to_dict()}
        if spec.image_size is not None:
            values["crop_size"] = spec.image_size
        return cls.for_dataset(spec.kind, **{**values, **overrides})

    # ------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("crop_size", "eval_stride"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainRecipe":
        if not isinstance(data, Mapping):
            raise RecipeError(f"recipe: expected a mapping of fields, got {type(data).__name__}; see `TrainRecipe.for_dataset('ade20k').to_yaml()`")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"recipe: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> "TrainRecipe":
        return cls.from_dict(parse_yaml(text, "recipe", RecipeError))

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "TrainRecipe":
        return cls.from_dict(read_yaml_file(path, "recipe file", "pass a train.yaml (e.g. from an export bundle)", RecipeError))

    def replace(self, **changes: Any) -> "TrainRecipe":
        return dataclasses.replace(self, **changes)

    def sliding_stride(self) -> tuple[int, int]:
        """Sliding-window stride: ``eval_stride`` or 3/4 of the crop (the Cityscapes 768/1024 ratio)."""
        if self.eval_stride is not None:
            return self.eval_stride
        return (max(1, self.crop_size[0] * 3 // 4), max(1, self.crop_size[1] * 3 // 4))


_PAPER = {"iterations": 160_000, "lr": 6e-5, "weight_decay": 0.01, "warmup_iters": 1500, "warmup_ratio": 1e-6,
          "poly_power": 1.0, "head_lr_mult": 10.0}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "ade20k": {**_PAPER, "crop_size": (512, 512), "batch_size": 16, "eval_interval": 16_000, "eval_mode": "whole",
               "checkpoint_interval": 16_000},
    "cityscapes": {**_PAPER, "crop_size": (1024, 1024), "batch_size": 8, "eval_interval": 4000,
                   "eval_mode": "slide", "eval_stride": (768, 768), "checkpoint_interval": 16_000},
    "folder": {**_PAPER, "crop_size": (512, 512), "batch_size": 16, "eval_interval": 16_000, "eval_mode": "whole",
               "checkpoint_interval": 16_000},
    # From scratch on CPU: no pretrained backbone, so a larger learning rate and a short schedule.
    "synthetic": {"crop_size": (64, 64), "iterations": 300, "batch_size": 8, "lr": 2e-3, "weight_decay": 0.01,
                  "warmup_iters": 20, "warmup_ratio": 1e-3, "poly_power": 1.0, "head_lr_mult": 1.0,
                  "drop_path_rate": 0.0, "eval_interval": 100, "eval_mode": "whole", "checkpoint_interval": 100,
                  "num_workers": 0},
}
# The brain slices: a small real task trained from scratch like the synthetic one (in-memory, CPU-sized).
DATASET_DEFAULTS["mni152"] = {**DATASET_DEFAULTS["synthetic"], "iterations": 600, "eval_interval": 200, "checkpoint_interval": 200}
