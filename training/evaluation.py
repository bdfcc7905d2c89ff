"""Inherit, recalibrate, evaluate: the validation mIoU of one supernet member, the same way everywhere.

Supernet training (its periodic largest/smallest evaluation), the ``supernet`` estimator, rank-check
and the accuracy predictor's training samples all score members here, so they agree on the number.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hrvit_nas import UserError
from hrvit_space import ArchConfig
from training.recipe import TrainRecipe
from training.stream import SeededSamples, StreamSampler, isolated_rng
from training.trainer import eval_batch_size


def space_member(space, config: ArchConfig) -> ArchConfig:
    """``config``'s searchable knobs on ``space``'s base: a search's config (other head classes or input
    size) names the same member of a supernet or predictor trained on ``space``."""
    base = space.base
    if (config.channels, config.dim_head, config.module_branches) != (base.channels, base.dim_head, base.module_branches):
        raise UserError(
            f"config (channels {list(config.channels)}, dim_head {config.dim_head}) is not in the supernet's space "
            f"(channels {list(base.channels)}, dim_head {base.dim_head}); search the space the supernet was trained on"
        )
    member = base.replace(depths=config.depths, window_sizes=config.window_sizes, mlp_ratios=config.mlp_ratios)
    space.encode(member)  # a knob value outside the space raises ConfigError naming it
    return member


def val_loader(val_set: Dataset, spec, val_samples: int | None = None) -> DataLoader:
    """The first ``val_samples`` validation images in a fixed order (every member sees the same ones)."""
    if val_samples is not None and val_samples < len(val_set):
        val_set = Subset(val_set, range(val_samples))
    return DataLoader(val_set, batch_size=eval_batch_size(spec), shuffle=False, generator=torch.Generator().manual_seed(0))


def calibration_batches(train_set: Dataset, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The same ``batches`` augmented training batches for every member (fair comparisons)."""
    loader = DataLoader(SeededSamples(train_set), batch_size=batch_size, sampler=StreamSampler(len(train_set), seed),
                        generator=torch.Generator().manual_seed(seed))
    stream = iter(loader)
    return [next(stream)[0] for _ in range(batches)]


def evaluate_member(supernet, config: ArchConfig, train_set: Dataset, val_set: Dataset, spec, recipe: TrainRecipe,
                    device: torch.device, batches: int = 20, val_samples: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Inherit ``config``'s weights from the supernet, recalibrate BN on ``batches`` batches, evaluate.

    Works on an extracted copy, so the supernet's own BN statistics stay untouched.
    """
    from hrvit_space import recalibrate_bn
    from training.inference import evaluate

    with isolated_rng(seed):
        model = supernet.extract(config).to(device)
        per_batch = min(recipe.batch_size, len(train_set))
        recalibrate_bn(model, [images.to(device) for images in calibration_batches(train_set, batches, per_batch, seed)])
        model.eval()
        with torch.no_grad():
            return evaluate(model, val_loader(val_set, spec, val_samples), spec.num_classes, mode=recipe.eval_mode,
                            crop=recipe.crop_size, stride=recipe.sliding_stride(), device=device, ignore_index=spec.ignore_index)
