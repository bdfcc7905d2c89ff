"""Task heads on the multi-scale HRViT maps: SegFormer-style segmentation and HRNet-style classification."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_space.config import HeadConfig
from hrvit_space.layers import (Conv1x1, ConvBN, PackedWeights, folded_batchnorm, merges_layers, pointwise_conv, traced,
                                uses_running_statistics)


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _resized_sum(maps: Iterable[Tensor], size: torch.Size) -> Tensor:
    """Sum of per-branch maps, each after the first resized to ``size``; the first (a fresh tensor) holds the sum."""
    maps = iter(maps)
    total = next(maps)
    for x in maps:
        total = total.add_(_resize(x, size))
    return total


class SegFormerHead(PackedWeights):
    """All-MLP decoder: per-branch 1x1 projection, resize to 1/4, concat, fuse, classify (logits at 1/4).

    The fuse 1x1 conv over the concat is computed as the sum of its per-branch weight slices, each
    applied at its branch's resolution before the resize (a 1x1 conv commutes with bilinear resizing,
    whose weights sum to one): the same function and gradients, without the ``n * width`` concat at 1/4
    resolution and with a third of the fuse MACs for n=4 (b3 at 224x224: 2.5 instead of 7.4 GMACs).
    Outside autograd each projection and its fuse slice (and the fuse BN in eval mode) run as one
    merged 1x1 conv (``merged_projections``, packed once per weight version). Traces (fvcore counts,
    ONNX) record the concat form, whose MACs are the architecture's.
    """

    def __init__(self, in_channels: Sequence[int], head: HeadConfig) -> None:
        super().__init__()
        self.proj = nn.ModuleList(Conv1x1(c, head.width) for c in in_channels)
        self.fuse = ConvBN(head.width * len(in_channels), head.width, bias=False)
        self.dropout = nn.Dropout2d(head.dropout)
        self.classifier = Conv1x1(head.width, head.num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        if traced():
            maps = [proj(x) for proj, x in zip(self.proj, features)]
            fused = self.fuse(torch.cat([maps[0]] + [_resize(m, size) for m in maps[1:]], dim=1))
        elif merges_layers(features[0]):
            weights = self.packed()
            fused = _resized_sum(map(pointwise_conv, features, weights[0::2], weights[1::2]), size)
            fused = fused if self._folds_fuse_bn() else self.fuse.bn(fused)
        else:
            conv = self.fuse.conv
            slices = conv.weight.split(conv.out_channels, dim=1)
            biases = [conv.bias] + [None] * (len(features) - 1)
            maps = (pointwise_conv(proj(x), w, b) for proj, x, w, b in zip(self.proj, features, slices, biases))
            fused = self.fuse.bn(_resized_sum(maps, size))
        return self.classifier(self.dropout(F.relu(fused)))

    def merged_projections(self, fold_bn: bool) -> list[tuple[Tensor, Tensor]]:
        """Per branch, the (weight, bias) of its projection followed by its slice of the fuse conv (and,
        with ``fold_bn``, the eval-mode fuse BN): one 1x1 conv straight to ``width`` channels."""
        fuse = self.fuse.conv
        weight, bias = folded_batchnorm(fuse.weight, fuse.bias, self.fuse.bn) if fold_bn else (fuse.weight, fuse.bias)
        merged = []
        for b, (proj, fuse_slice) in enumerate(zip(self.proj, weight.flatten(1).split(fuse.out_channels, dim=1))):
            merged_bias = fuse_slice @ proj.bias
            if b == 0 and bias is not None:
                merged_bias = merged_bias + bias
            merged.append(((fuse_slice @ proj.weight.flatten(1)).view(fuse.out_channels, -1, 1, 1), merged_bias))
        return merged

    def _folds_fuse_bn(self) -> bool:
        return uses_running_statistics(self.fuse.bn)

    def _pack_key(self) -> tuple:
        return (self._folds_fuse_bn(),)

    def _pack(self) -> tuple[Tensor, ...]:
        return tuple(t for pair in self.merged_projections(self._folds_fuse_bn()) for t in pair)


class MergedSegFormerHead(nn.Module):
    """Inference form of a SegFormerHead with the same outputs and fewer MACs, also when traced: each
    branch's projection and fuse slice as one 1x1 conv (``SegFormerHead.merged_projections``)."""

    def __init__(self, head: SegFormerHead) -> None:
        super().__init__()
        self.proj = nn.ModuleList()
        with torch.no_grad():
            for proj, (weight, bias) in zip(head.proj, head.merged_projections(fold_bn=False)):
                merged = Conv1x1(proj.in_channels, weight.shape[0])
                merged.weight.copy_(weight)
                merged.bias.copy_(bias)
                self.proj.append(merged)
        self.bn, self.dropout, self.classifier = head.fuse.bn, head.dropout, head.classifier

    def forward(self, features: list[Tensor]) -> Tensor:
        total = _resized_sum((proj(x) for proj, x in zip(self.proj, features)), features[0].shape[-2:])
        return self.classifier(self.dropout(F.relu(self.bn(total))))


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4) used by the HRNet-style classification head."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = ConvBN(in_channels, planes, 1, bias=False)
        self.conv2 = ConvBN(planes, planes, 3, padding=1, bias=False)
        self.conv3 = ConvBN(planes, out, 1, bias=False)
        self.shortcut = ConvBN(in_channels, out, 1, bias=False) if in_channels != out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.conv3(y) + self.shortcut(x))


class ClassificationHead(nn.Module):
    """HRNet-style: widen each branch (bottleneck to 128, 256, 512, 1024), merge top-down with strided
    3x3 convs, 1x1 to 2048, global pool, linear classifier."""

    final_width = 2048

    def __init__(self, in_channels: Sequence[int], head: HeadConfig) -> None:
        super().__init__()
        planes = [32 * 2**b for b in range(len(in_channels))]
        widths = [p * Bottleneck.expansion for p in planes]
        self.incre = nn.ModuleList(Bottleneck(c, p) for c, p in zip(in_channels, planes))
        self.downsample = nn.ModuleList(ConvBN(widths[b], widths[b + 1], 3, stride=2, padding=1) for b in range(len(widths) - 1))
        self.final = ConvBN(widths[-1], self.final_width, 1)
        self.dropout = nn.Dropout(head.dropout)
        self.classifier = nn.Linear(self.final_width, head.num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        y = self.incre[0](features[0])
        for incre, down, x in zip(self.incre[1:], self.downsample, features[1:]):
            y = incre(x) + F.relu(down(y))
        y = F.relu(self.final(y)).mean(dim=(2, 3))
        return self.classifier(self.dropout(y))


def build_head(in_channels: Sequence[int], head: HeadConfig) -> nn.Module | None:
    if head.kind == "segformer":
        return SegFormerHead(in_channels, head)
    if head.kind == "classification":
        return ClassificationHead(in_channels, head)
    return None
