"""Whole-image and sliding-window inference, and evaluation of a model over a loader.

Segmentation heads predict at 1/4 resolution; logits are upsampled bilinearly to the image (and, in
``evaluate``, to the label) size before the arg-max, as in the paper's mmseg protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hrvit_nas import UserError
from training.metrics import ConfusionMatrix

EVAL_MODES = ("whole", "slide")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise UserError(f"{name} must be a positive integer or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def _resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def predict_whole(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, C, H, W]`` at the input's size from one forward pass."""
    logits = model(images)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise TypeError(f"the model must return logits [N, C, h, w]; got {type(logits).__name__}")
    return _resize_logits(logits, images.shape[-2:])


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets every ``stride``; the last window is moved back so it ends at ``length``."""
    steps = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({min(step * stride, length - crop) for step in range(steps)})


def predict_sliding(
    model: nn.Module,
    images: torch.Tensor,
    crop: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
) -> torch.Tensor:
    """Logits ``[N, C, H, W]`` averaged over overlapping ``crop`` windows placed every ``stride``.

    Images smaller than the crop are zero-padded (the mean colour after normalisation) at the bottom
    and right, and the padding is cut off the result.
    """
    crop_h, crop_w = _pair(crop, "crop")
    stride_h, stride_w = _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise UserError(f"stride {stride} larger than crop {crop} would leave pixels unpredicted; use stride <= crop")
    batch, _, height, width = images.shape
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    padded_h, padded_w = images.shape[-2:]
    logit_sum = torch.zeros(batch, num_classes, padded_h, padded_w, device=images.device)
    window_count = torch.zeros(1, 1, padded_h, padded_w, device=images.device)
    for top in _window_starts(padded_h, crop_h, stride_h):
        for left in _window_starts(padded_w, crop_w, stride_w):
            window = (..., slice(top, top + crop_h), slice(left, left + crop_w))
            logits = predict_whole(model, images[window])
            if logits.shape[1] != num_classes:
                raise ValueError(f"the model predicts {logits.shape[1]} classes, expected {num_classes}")
            logit_sum[window] += logits.float()
            window_count[window] += 1
    return (logit_sum / window_count)[..., :height, :width]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    mode: str = "whole",
    crop: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    *,
    ignore_index: int = 255,
    distributed: bool = False,
) -> dict[str, Any]:
    """``ConfusionMatrix.compute()`` over ``loader``'s ``(images, masks)`` batches.

    Logits are resized to the mask size, so a loader may rescale images (``EvalTransform(image_scale)``)
    while masks keep their original resolution. With ``distributed`` every process evaluates its shard
    and the counts are summed. The model's train/eval mode is restored afterwards.
    """
    if mode not in EVAL_MODES:
        raise UserError(f"unknown evaluation mode {mode!r}; use one of: {', '.join(EVAL_MODES)}")
    if mode == "slide" and (crop is None or stride is None):
        raise UserError("sliding-window evaluation needs crop and stride (e.g. crop=512, stride=341)")
    matrix = ConfusionMatrix(num_classes, ignore_index, device)
    was_training = model.training
    model.eval()
    try:
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            if mode == "whole":
                logits = predict_whole(model, images)
            else:
                logits = predict_sliding(model, images, crop, stride, num_classes)
            matrix.update(_resize_logits(logits.float(), masks.shape[-2:]), masks)
    finally:
        model.train(was_training)
    if distributed:
        matrix.all_reduce()
    return matrix.compute()
