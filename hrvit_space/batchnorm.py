"""BatchNorm utilities: fold BN into the preceding layer for inference; recalibrate BN statistics.

Subnets taken from a supernet inherit running statistics averaged over many other subnets, so their
BN statistics must be re-estimated on a few batches before evaluation (OFA, Cai et al. 2020).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from hrvit_nas import UserError
from hrvit_space.layers import ConvBN, LinearBN


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Merge every BatchNorm into its conv/linear, in place; returns ``model`` in eval mode.

    The folded model computes the same function as the unfolded one in eval mode, with fewer ops.
    It is for inference only: there are no BN layers left to train.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, (ConvBN, LinearBN)):
            module.fold()
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor | tuple | list], num_batches: int | None = None) -> nn.Module:
    """Re-estimate BN running statistics from ``batches`` (images, or tuples whose first item is images).

    Statistics are the exact average over the batches (momentum=None). Only BN layers run in train
    mode, so dropout and drop path do not perturb the estimate. BN layers the forward never reaches
    (inactive supernet blocks) keep their previous statistics. Returns ``model`` in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    device = next(model.parameters()).device
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    seen = 0
    try:
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
            seen += 1
    finally:
        for norm, (momentum, state) in zip(norms, saved):
            norm.momentum = momentum
            if seen == 0 or int(norm.num_batches_tracked) == 0:
                norm.load_state_dict(state)
        model.eval()
    if seen == 0:
        raise UserError("BN recalibration got no batches; pass at least one batch of images (e.g. --calib-batches >= 1)")
    return model
