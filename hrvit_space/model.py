"""HRViT (Gu et al., CVPR 2022): multi-branch high-resolution vision transformer, built from an ArchConfig.

Structure: a stride-4 conv stem, then ``config.num_modules`` modules. Each module densely fuses the
branches (adding a new, lower-resolution branch when the config says so), re-embeds each branch and
runs its HRViT blocks. Branch ``b`` works at stride ``4 * 2**b``.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_space.attention import CrossShapedAttention
from hrvit_space.batchnorm import fold_batchnorm
from hrvit_space.config import STEM_WIDTH, ArchConfig, mlp_hidden, preset
from hrvit_space.heads import MergedSegFormerHead, SegFormerHead, build_head
from hrvit_space.layers import (
    DES,
    ConvBN,
    DropPath,
    MixCFN,
    PatchEmbed,
    gelu_nchw,
    to_nchw,
)



class Block(nn.Module):
    """x += DropPath(Attn(LN(x)) + DES(x));  x += DropPath(MixCFN(LN(x))).  Tokens are (B, H, W, C)."""

    attn_cls: type[CrossShapedAttention] = CrossShapedAttention
    mlp_cls: type[MixCFN] = MixCFN

    def __init__(self, dim: int, dim_head: int, window_size: int, hidden: int, drop_path: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = self.attn_cls(dim, dim_head, window_size)
        self.des = DES(dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = self.mlp_cls(dim, hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.attn_norm(x)).add_(self.des(x)))
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


class Branch(nn.Module):
    """One resolution inside a module: patch embedding, blocks, LayerNorm."""

    block_cls: type[Block] = Block

    def __init__(self, embed: PatchEmbed, blocks: Iterable[Block], norm: nn.LayerNorm) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm

    @classmethod
    def build(cls, in_channels: int, dim: int, depth: int, dim_head: int, window_size: int, hidden: int,
              drop_rates: Sequence[float]) -> Branch:
        """A branch of ``depth`` freshly initialised blocks."""
        blocks = (cls.block_cls(dim, dim_head, window_size, hidden, drop_rates[k]) for k in range(depth))
        return cls(PatchEmbed(in_channels, dim), blocks, nn.LayerNorm(dim))

    def run_blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, dim, H, W) (channels-last memory)."""
        return to_nchw(self.norm(self.run_blocks(self.embed(x))))


class Downsample(nn.Module):
    """Fusion path to a lower resolution: depthwise (f+1)x(f+1) conv stride f, BN, 1x1 conv, BN."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.dw = ConvBN(in_channels, in_channels, factor + 1, stride=factor, padding=factor // 2, groups=in_channels, bias=False)
        self.pw = ConvBN(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class Fusion(nn.Module):
    """Dense multi-scale fusion: out_i = GELU(sum_j path_ij(x_j)); j < i downsamples, j > i is a 1x1
    conv + BN then nearest upsampling, j == i is the identity. An extra output is a new branch."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.ModuleList(self._path(j, i, c_in, c_out) for j, c_in in enumerate(in_channels))
            for i, c_out in enumerate(out_channels)
        )

    @staticmethod
    def _path(source: int, target: int, c_in: int, c_out: int) -> nn.Module:
        if source == target:
            return nn.Identity()
        if source < target:
            return Downsample(c_in, c_out, 2 ** (target - source))
        return ConvBN(c_in, c_out, 1)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        outs = []
        for i, paths in enumerate(self.paths):
            total = None
            for j, (path, x) in enumerate(zip(paths, xs)):
                y = path(x)
                if j > i:
                    y = F.interpolate(y, size=xs[i].shape[-2:], mode="nearest")
                total = y if total is None else total + y
            outs.append(gelu_nchw(total))
        return outs


class HRViTModule(nn.Module):
    """Fusion, then one Branch per resolution."""

    def __init__(self, in_channels: Sequence[int], config: ArchConfig, index: int, drop_rates: Sequence[float],
                 branch_cls: type[Branch]) -> None:
        super().__init__()
        depths = config.depths[index]
        fused = tuple(in_channels) + tuple(config.channels[len(in_channels):len(depths)])
        self.fusion = Fusion(in_channels, fused)
        self.branches = nn.ModuleList(
            branch_cls.build(fused[b], config.channels[b], depth, config.dim_head, config.window_sizes[b],
                             mlp_hidden(config, b), drop_rates)
            for b, depth in enumerate(depths)
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return [branch(x) for branch, x in zip(self.branches, self.fusion(xs))]


class Stem(nn.Module):
    """Two stride-2 3x3 convs (in -> 32 -> 64), each with BN and ReLU: stride 4 overall."""

    def __init__(self, in_channels: int, width: int = STEM_WIDTH) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, width // 2, 3, stride=2, padding=1)
        self.conv2 = ConvBN(width // 2, width, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class HRViT(nn.Module):
    """The HRViT network described by ``config`` (backbone plus the head named by ``config.head``)."""

    branch_cls: type[Branch] = Branch

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = Stem(config.in_chans)
        modules, in_channels = [], (STEM_WIDTH,)
        for m, rates in enumerate(config.drop_path_rates()):
            modules.append(HRViTModule(in_channels, config, m, rates, self.branch_cls))
            in_channels = config.channels[: len(config.depths[m])]
        self.stages = nn.ModuleList(modules)  # the paper's "modules" (nn.Module.modules is taken)
        self.head = build_head(config.channels, config.head)
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The branch maps (N, C_b, H / 4*2^b, W / 4*2^b), in channels-last memory."""
        xs = [self.stem(x.contiguous(memory_format=torch.channels_last))]
        for stage in self.stages:
            xs = stage(xs)
        return xs

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        features = self.forward_features(x)
        return features if self.head is None else self.head(features)


def optimize_for_inference(model: HRViT) -> HRViT:
    """Turn ``model`` (an HRViT or an active supernet) into its inference form, in place; returns it in eval mode.

    Folds every BatchNorm into its conv/linear and merges the SegFormer head's fuse conv into the
    per-branch projections (``MergedSegFormerHead``). Outputs equal the eval-mode model's within float
    tolerance, with fewer ops. Not for training or checkpoints: no BN is left and the state-dict keys
    of the head change. FLOP counts of the architecture should be taken on the plain model.
    """
    fold_batchnorm(model)
    if isinstance(model.head, SegFormerHead):
        model.head = MergedSegFormerHead(model.head)
    return model


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def build_model(config_or_preset: ArchConfig | str) -> HRViT:
    """An HRViT from a config or a preset name (``b1``, ``b2``, ``b3``)."""
    config = preset(config_or_preset) if isinstance(config_or_preset, str) else config_or_preset
    return HRViT(config)


def hrvit_b1(**overrides) -> HRViT:
    return HRViT(preset("b1", **overrides))


def hrvit_b2(**overrides) -> HRViT:
    return HRViT(preset("b2", **overrides))


def hrvit_b3(**overrides) -> HRViT:
    return HRViT(preset("b3", **overrides))


_BRANCH = r"stages\.\d+\.branches\.(\d+)\."
_COMPONENTS = [
    (re.compile(r"stem(\.|$)"), "stem"),
    (re.compile(r"head(\.|$)"), "head"),
    (re.compile(r"stages\.\d+\.fusion\.paths\.(\d+)(\.|$)"), "fusion"),
    (re.compile(_BRANCH + r"embed(\.|$)"), "patch_embed"),
    (re.compile(_BRANCH + r"(norm|blocks\.\d+\.(attn_norm|mlp_norm))(\.|$)"), "norm"),
    (re.compile(_BRANCH + r"blocks\.\d+\.attn(\.|$)"), "attention"),
    (re.compile(_BRANCH + r"blocks\.\d+\.des(\.|$)"), "des"),
    (re.compile(_BRANCH + r"blocks\.\d+\.mlp(\.|$)"), "mixcfn"),
]
COMPONENTS = ("stem", "fusion", "patch_embed", "attention", "des", "mixcfn", "norm", "head")


def component_of(name: str) -> tuple[str, int | None]:
    """(component, branch) of a parameter or module qualified name of an HRViT (or supernet).

    Components: stem, fusion (branch = the output branch), patch_embed, attention, des, mixcfn, norm
    (block and module-end LayerNorms), head; stem and head have branch None. Container names that
    span several components (``stages.2``, ``...blocks.0``) raise ValueError.
    """
    for pattern, component in _COMPONENTS:
        match = pattern.match(name)
        if match:
            return component, (int(match.group(1)) if component not in ("stem", "head") else None)
    raise ValueError(f"{name!r} is not inside a single HRViT component ({', '.join(COMPONENTS)})")
