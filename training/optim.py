"""Optimisation of a segmentation model, following the SegFormer/HRViT mmseg recipe.

- AdamW; the head (parameters under ``head.``) gets ``head_lr_mult`` x the learning rate.
- No weight decay on 1-d parameters (norm scales, biases) and on relative-position-bias tables: decaying
  them only shrinks normalisation and attention biases towards zero, as the reference config also avoids.
- Learning rate: poly decay ``(1 - it / iterations) ** power`` times a linear warm-up from
  ``warmup_ratio`` to 1 over ``warmup_iters`` (mmcv's formula), stepped every iteration.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from training.recipe import TrainRecipe


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim <= 1 or "relative_position_bias" in name or "pos_embed" in name


def param_groups(model: torch.nn.Module, recipe: TrainRecipe) -> list[dict[str, Any]]:
    """Four groups: (backbone | head) x (decay | no decay)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.startswith("head."), _no_weight_decay(name, param))
            groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": recipe.lr * (recipe.head_lr_mult if is_head else 1.0),
            "weight_decay": 0.0 if no_decay else recipe.weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr, betas=(0.9, 0.999))


def lr_factor(iteration: int, recipe: TrainRecipe) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based): poly decay x linear warm-up."""
    factor = (1.0 - iteration / recipe.iterations) ** recipe.poly_power
    if iteration < recipe.warmup_iters:
        factor *= 1.0 - (1.0 - iteration / recipe.warmup_iters) * (1.0 - recipe.warmup_ratio)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainRecipe) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, recipe))


class Precision:
    """Autocast + (for fp16) gradient scaling; a no-op on CPU, where AMP only costs time."""

    def __init__(self, amp: str, device: torch.device) -> None:
        self.enabled = amp != "none" and device.type == "cuda"
        self.device_type = device.type
        self.dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and amp == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy at label resolution (logits come at 1/4 and are upsampled bilinearly)."""
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=ignore_index)
