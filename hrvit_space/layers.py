"""Small building blocks of HRViT.

Layout convention: inside a branch, token maps are kept channels-last ``(B, H, W, C)`` so LayerNorm
and Linear layers run on them without transposes; convolutions see the same memory as a
channels-last ``(B, C, H, W)`` view (``x.permute(0, 3, 1, 2)`` is free).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_space.config import ConfigError


def to_nchw(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W) view in channels-last memory (no copy)."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C); free when ``x`` is channels-last in memory."""
    return x.permute(0, 2, 3, 1)


def gelu_nchw(x: Tensor) -> Tensor:
    """GELU of a channels-last (B, C, H, W) map, run on its (B, H, W, C) view: torch's CPU GELU is
    ~3x slower on channels-last strides than on the same memory seen as a contiguous tensor."""
    return to_nchw(F.gelu(to_nhwc(x)))


class ConvBN(nn.Module):
    """Conv2d followed by BatchNorm2d; ``fold()`` merges the BN into the conv for inference."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fold(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            _fold_into(self.conv, self.bn)
            self.bn = nn.Identity()


class LinearBN(nn.Module):
    """Linear over the last dim followed by BatchNorm over all tokens (HRViT's attention output)."""

    def __init__(self, in_features: int, out_features: int, zero_init_bn: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.bn: nn.Module = nn.BatchNorm1d(out_features)
        if zero_init_bn:  # the residual branch starts silent, as in the paper's recipe
            nn.init.zeros_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return self.bn(y.reshape(-1, y.shape[-1])).view_as(y)

    @torch.no_grad()
    def fold(self) -> None:
        if isinstance(self.bn, nn.BatchNorm1d):
            _fold_into(self.linear, self.bn)
            self.bn = nn.Identity()


def _fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """y = gamma * (Wx + b - mean) / std + beta  ==>  W' = W * gamma/std, b' = (b - mean) * gamma/std + beta."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    layer.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class DES(nn.Module):
    """Diversity-enhanced shortcut: C = k*p, a p x p mixing then a k x k mixing (two tiny Linears).

    Computed as ``left @ gelu(x.view(k, p) @ right^T)`` so the tokens never change layout.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        exponent = int(math.log2(dim))
        self.p = 2 ** (exponent - exponent // 2)
        self.k = dim // self.p
        if self.k * self.p != dim:
            raise ConfigError(f"channels: {dim} cannot be split as k x {self.p} for the DES shortcut; allowed: a multiple of {self.p}")
        self.right = nn.Linear(self.p, self.p)
        self.left = nn.Linear(self.k, self.k)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = F.gelu(F.linear(x.reshape(-1, self.k, self.p), self.right.weight, self.right.bias))
        y = torch.matmul(self.left.weight, y).add_(self.left.bias.view(-1, 1))
        return y.view(shape)


class MixCFN(nn.Module):
    """Linear -> [depthwise 3x3 | depthwise 5x5] on the two channel halves -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        if hidden % 2:
            raise ConfigError(f"mlp_ratios: hidden width {hidden} of a {dim}-channel MixCFN is odd; allowed: ratio x channels even")
        half = hidden // 2
        self.fc1 = nn.Linear(dim, hidden)
        self.conv3 = nn.Conv2d(half, half, 3, padding=1, groups=half)
        self.conv5 = nn.Conv2d(half, half, 5, padding=2, groups=half)
        self.fc2 = nn.Linear(hidden, dim)

    def weights(self) -> tuple[Tensor, ...]:
        """The tensors the forward uses (an elastic subclass hands out slices of them)."""
        return (self.fc1.weight, self.fc1.bias, self.conv3.weight, self.conv3.bias,
                self.conv5.weight, self.conv5.bias, self.fc2.weight, self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        fc1_w, fc1_b, c3_w, c3_b, c5_w, c5_b, fc2_w, fc2_b = self.weights()
        # Both halves in one depthwise 5x5 conv (3x3 kernels zero-padded): no channel split, no concat.
        kernel = torch.cat([F.pad(c3_w, (1, 1, 1, 1)), c5_w])
        h = F.conv2d(to_nchw(F.linear(x, fc1_w, fc1_b)), kernel, torch.cat([c3_b, c5_b]), padding=2, groups=kernel.shape[0])
        return F.linear(F.gelu(to_nhwc(h)), fc2_w, fc2_b)


class PatchEmbed(nn.Module):
    """Per-branch re-embedding at the start of a module: 1x1 conv, depthwise 3x3, LayerNorm."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.pw = nn.Conv2d(in_channels, dim, 1)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> normalised tokens (B, H, W, dim)."""
        return self.norm(to_nhwc(self.dw(self.pw(x))))
