"""Task heads on the multi-scale HRViT maps: SegFormer-style segmentation and HRNet-style classification."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_space.config import HeadConfig
from hrvit_space.layers import Conv1x1, ConvBN, pointwise_conv, traced


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _resized_sum(maps: Iterable[Tensor], size: torch.Size) -> Tensor:
    """Sum of per-branch maps, each after the first resized to ``size``; the first (a fresh tensor) holds the sum."""
    maps = iter(maps)
    total = next(maps)
    for x in maps:
        total = total.add_(_resize(x, size))
    return total


class SegFormerHead(nn.Module):
    """All-MLP decoder: per-branch 1x1 projection, resize to 1/4, concat, fuse, classify (logits at 1/4).

    The fuse 1x1 conv over the concat is computed as the sum of its per-branch weight slices, each
    applied at its branch's resolution before the resize (a 1x1 conv commutes with bilinear resizing,
    whose weights sum to one): the same function and gradients, without the ``n * width`` concat at 1/4
    resolution and with a third of the fuse MACs for n=4 (b3 at 224x224: 2.5 instead of 7.4 GMACs). Traces
    (fvcore counts, ONNX) record the concat form, whose MACs are the architecture's.
    """

    def __init__(self, in_channels: Sequence[int], head: HeadConfig) -> None:
        super().__init__()
        self.proj = nn.ModuleList(Conv1x1(c, head.width) for c in in_channels)
        self.fuse = ConvBN(head.width * len(in_channels), head.width, bias=False)
        self.dropout = nn.Dropout2d(head.dropout)
        self.classifier = Conv1x1(head.width, head.num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        maps = [proj(x) for proj, x in zip(self.proj, features)]
        if traced():
            fused = self.fuse(torch.cat([maps[0]] + [_resize(m, size) for m in maps[1:]], dim=1))
        else:
            conv = self.fuse.conv
            slices = conv.weight.split(conv.out_channels, dim=1)
            biases = [conv.bias] + [None] * (len(maps) - 1)
            fused = self.fuse.bn(_resized_sum(map(pointwise_conv, maps, slices, biases), size))
        return self.classifier(self.dropout(F.relu(fused)))


class MergedSegFormerHead(nn.Module):
    """Inference form of a SegFormerHead with the same outputs and fewer MACs.

    Projection and the fuse conv's slice for branch ``b`` are both linear, so they are multiplied into
    one 1x1 conv per branch that maps straight to ``width`` channels.
    """

    def __init__(self, head: SegFormerHead) -> None:
        super().__init__()
        fuse = head.fuse.conv
        width = fuse.out_channels
        slices = fuse.weight.detach().flatten(1).split(width, dim=1)
        self.proj = nn.ModuleList()
        for b, (proj, fuse_slice) in enumerate(zip(head.proj, slices)):
            merged = Conv1x1(proj.in_channels, width)
            with torch.no_grad():
                merged.weight.copy_((fuse_slice @ proj.weight.flatten(1)).view_as(merged.weight))
                merged.bias.copy_(fuse_slice @ proj.bias)
                if b == 0 and fuse.bias is not None:  # a folded BN left a bias on the fuse conv
                    merged.bias.add_(fuse.bias)
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
