"""Segmentation metrics from one confusion matrix: mIoU, per-class IoU, pixel and mean accuracy.

The matrix is a plain ``int64`` tensor (rows = ground truth, columns = prediction), so shards merge by
addition and distributed evaluation is one ``all_reduce``. Classes absent from both prediction and
ground truth have IoU NaN and are left out of the mean (the mmseg / Cityscapes convention).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from hrvit_nas import atomic_write_text


class ConfusionMatrix:
    """Accumulates ``matrix[target, prediction]`` pixel counts, skipping ``ignore_index`` targets.

    Create it on the evaluation ``device`` so that ``all_reduce`` works even on a process whose shard
    was empty (NCCL needs CUDA tensors).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction``: logits ``[N, C, H, W]`` or labels ``[N, H, W]``; ``target``: labels ``[N, H, W]``."""
        if prediction.dim() == target.dim() + 1:
            if prediction.shape[1] != self.num_classes:
                raise ValueError(f"logits have {prediction.shape[1]} channels, expected {self.num_classes} classes")
            prediction = prediction.argmax(dim=1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        valid = target != self.ignore_index
        target, prediction = target[valid].long(), prediction[valid].long()
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(
                f"target labels must be in 0..{self.num_classes - 1} or ignore {self.ignore_index}; "
                f"got {int(target.min())}..{int(target.max())}"
            )
        if prediction.numel() and (int(prediction.min()) < 0 or int(prediction.max()) >= self.num_classes):
            raise ValueError(f"predicted labels must be in 0..{self.num_classes - 1}")
        counts = torch.bincount(target * self.num_classes + prediction, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another shard's counts (same classes) in place; returns ``self``."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge confusion matrices with different classes or ignore index")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all processes (no-op outside ``torch.distributed``); returns ``self``."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        """Metrics as plain Python values (NaN where a class's ratio is undefined)."""
        matrix = self.matrix.detach().cpu().double()
        true_positive = matrix.diag()
        target_pixels = matrix.sum(dim=1)
        predicted_pixels = matrix.sum(dim=0)
        union = target_pixels + predicted_pixels - true_positive
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
        accuracy = torch.where(target_pixels > 0, true_positive / target_pixels.clamp(min=1), nan)
        total = float(matrix.sum())
        return {
            "miou": float(iou.nanmean()) if not iou.isnan().all() else math.nan,
            "pixel_accuracy": float(true_positive.sum()) / total if total else math.nan,
            "mean_accuracy": float(accuracy.nanmean()) if not accuracy.isnan().all() else math.nan,
            "per_class_iou": iou.tolist(),
            "per_class_accuracy": accuracy.tolist(),
            "target_pixels": [int(v) for v in target_pixels.tolist()],
            "predicted_pixels": [int(v) for v in predicted_pixels.tolist()],
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
        }

    def to_json_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``compute()`` made JSON-safe (NaN -> null), with class names and the raw matrix."""
        return {**metrics_to_json_dict(self.compute(), class_names), "confusion_matrix": self.matrix.cpu().tolist()}


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _class_names(metrics: dict[str, Any], class_names: Sequence[str] | None) -> list[str]:
    num_classes = len(metrics["per_class_iou"])
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return list(class_names)


def metrics_to_json_dict(metrics: dict[str, Any], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A ``ConfusionMatrix.compute()`` dict (or ``evaluate``'s result) made JSON-safe, classes named."""
    names = _class_names(metrics, class_names)
    per_class = [
        {
            "class": name,
            "iou": _json_number(iou),
            "accuracy": _json_number(accuracy),
            "target_pixels": target,
            "predicted_pixels": predicted,
        }
        for name, iou, accuracy, target, predicted in zip(
            names, metrics["per_class_iou"], metrics["per_class_accuracy"], metrics["target_pixels"], metrics["predicted_pixels"]
        )
    ]
    summary = {key: _json_number(metrics[key]) for key in ("miou", "pixel_accuracy", "mean_accuracy")}
    return {**summary, "num_classes": metrics["num_classes"], "ignore_index": metrics["ignore_index"], "per_class": per_class}


def write_metrics(
    metrics: dict[str, Any],
    json_path: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Atomically write the summary + per-class JSON and/or a per-class CSV (empty cells for NaN)."""
    document = metrics_to_json_dict(metrics, class_names)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(document, indent=2) + "\n")
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["class_index", "class", "iou", "accuracy", "target_pixels", "predicted_pixels"])
        for index, row in enumerate(document["per_class"]):
            writer.writerow([index, row["class"], *("" if row[k] is None else row[k] for k in ("iou", "accuracy")),
                             row["target_pixels"], row["predicted_pixels"]])  # fmt: skip
        atomic_write_text(csv_path, buffer.getvalue())
