"""Task heads on the multi-scale HRViT maps: SegFormer-style segmentation and HRNet-style classification."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_space.config import HeadConfig
from hrvit_space.layers import Conv1x1, ConvBN


class SegFormerHead(nn.Module):
    """All-MLP decoder: per-branch 1x1 projection, resize to 1/4, concat, fuse, classify (logits at 1/4)."""

    def __init__(self, in_channels: Sequence[int], head: HeadConfig) -> None:
        super().__init__()
        self.proj = nn.ModuleList(Conv1x1(c, head.width) for c in in_channels)
        self.fuse = ConvBN(head.width * len(in_channels), head.width, bias=False)
        self.dropout = nn.Dropout2d(head.dropout)
        self.classifier = Conv1x1(head.width, head.num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        maps = [proj(x) for proj, x in zip(self.proj, features)]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return self.classifier(self.dropout(F.relu(self.fuse(torch.cat(maps, dim=1)))))


class MergedSegFormerHead(nn.Module):
    """Inference form of a SegFormerHead with the same outputs and far fewer MACs.

    Projection, bilinear resize (its weights sum to one) and the fuse 1x1 conv are all linear, so the
    fuse conv's slice for branch ``b`` is multiplied into branch ``b``'s projection: each branch maps
    straight to ``width`` channels and the maps are summed, never building the ``n * width`` concat at
    1/4 resolution (the largest single op of the plain head).
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
        size = features[0].shape[-2:]
        total = self.proj[0](features[0])
        for proj, x in zip(self.proj[1:], features[1:]):
            total += F.interpolate(proj(x), size=size, mode="bilinear", align_corners=False)
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
