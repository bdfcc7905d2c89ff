"""Weight-sharing HRViT supernet (OFA-style) over a SearchSpace.

Built once at ``space.largest()``. Each elastic module owns its active setting and hands out its
active sub-module as a standalone copy (OFA's ``get_active_subnet``): an ``ElasticBranch`` runs its first
``d`` blocks, an ``ElasticAttention`` any window size (its weights do not depend on it), an
``ElasticMixCFN`` the first ``r*C/2`` hidden channels of each half. ``HRViTSupernet.set_active(config)``
hands each module its setting; ``extract()`` assembles the modules' active sub-modules into a standalone
``HRViT`` whose outputs equal the active supernet's.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from hrvit_space.attention import CrossShapedAttention
from hrvit_space.config import ArchConfig, ConfigError, mlp_hidden
from hrvit_space.layers import MixCFN, PatchEmbed
from hrvit_space.model import Block, Branch, HRViT
from hrvit_space.space import SearchSpace


class ElasticAttention(CrossShapedAttention):
    """Cross-shaped attention with a switchable window (its weights do not depend on it)."""

    def set_active(self, window_size: int) -> None:
        self.window_size = window_size

    def active_subnet(self) -> CrossShapedAttention:
        attn = CrossShapedAttention(self.qv.in_features, self.head_dim, self.window_size)
        attn.load_state_dict(self.state_dict())
        return attn.train(self.training)


class ElasticMixCFN(MixCFN):
    """MixCFN whose hidden width can shrink: each half keeps its first ``active_hidden / 2`` channels.

    The two kept row ranges of fc1 (columns of fc2) are copied into one tensor; like the packed
    kernels, the copies are made once outside autograd and on every training forward.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(dim, hidden)
        self.active_hidden = hidden

    @property
    def hidden(self) -> int:
        return self.active_hidden

    def set_active(self, hidden: int) -> None:
        self.active_hidden = hidden

    def parts(self) -> dict[str, Tensor]:
        full, half = self.fc1.out_features // 2, self.active_hidden // 2
        if half == full:
            return super().parts()
        rows = slice(0, half), slice(full, full + half)
        return {
            "fc1.weight": _cat_rows(self.fc1.weight, rows),
            "fc1.bias": _cat_rows(self.fc1.bias, rows),
            "conv3.weight": self.conv3.weight[:half],
            "conv3.bias": self.conv3.bias[:half],
            "conv5.weight": self.conv5.weight[:half],
            "conv5.bias": self.conv5.bias[:half],
            "fc2.weight": _cat_rows(self.fc2.weight.t(), rows).t(),
            "fc2.bias": self.fc2.bias,
        }

    def active_subnet(self) -> MixCFN:
        mlp = MixCFN(self.fc1.in_features, self.active_hidden)
        mlp.load_state_dict(self.parts())
        return mlp.train(self.training)


def _cat_rows(tensor: Tensor, rows: tuple[slice, slice]) -> Tensor:
    return torch.cat([tensor[rows[0]], tensor[rows[1]]])


class ElasticBlock(Block):
    """A Block with an elastic attention window and MixCFN width."""

    attn_cls = ElasticAttention
    mlp_cls = ElasticMixCFN

    def set_active(self, window_size: int, hidden: int, drop_path: float) -> None:
        self.attn.set_active(window_size)
        self.mlp.set_active(hidden)
        self.drop_path.rate = drop_path

    def active_subnet(self) -> Block:
        dim = self.attn_norm.normalized_shape[0]
        with torch.device("meta"):  # a shell: every layer is replaced below
            block = Block(dim, self.attn.head_dim, self.attn.window_size, self.mlp.active_hidden, self.drop_path.rate)
        block.attn_norm, block.des, block.mlp_norm = (copy.deepcopy(m) for m in (self.attn_norm, self.des, self.mlp_norm))
        block.attn, block.mlp = self.attn.active_subnet(), self.mlp.active_subnet()
        return block.train(self.training)


class ElasticBranch(Branch):
    """Runs only its first ``active_depth`` blocks."""

    block_cls = ElasticBlock

    def __init__(self, embed: PatchEmbed, blocks: Iterable[ElasticBlock], norm: nn.LayerNorm) -> None:
        super().__init__(embed, blocks, norm)
        self.active_depth = len(self.blocks)

    def set_active(self, depth: int, window_size: int, hidden: int, drop_rates: Sequence[float]) -> None:
        """``drop_rates``: the member's per block index of this module (``ArchConfig.drop_path_rates``)."""
        self.active_depth = depth
        for k, block in enumerate(self.blocks):
            block.set_active(window_size, hidden, drop_rates[k] if k < len(drop_rates) else 0.0)

    def run_blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks[: self.active_depth]:
            x = block(x)
        return x

    def active_subnet(self) -> Branch:
        blocks = [block.active_subnet() for block in self.blocks[: self.active_depth]]
        return Branch(copy.deepcopy(self.embed), blocks, copy.deepcopy(self.norm)).train(self.training)


class HRViTSupernet(HRViT):
    """All members of ``space`` in one network; the parameter names equal those of ``HRViT``."""

    branch_cls = ElasticBranch

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space.largest())
        self.space = space
        self.active_config = self.config

    def set_active(self, config: ArchConfig) -> None:
        """Compute exactly ``config`` from now on (it must be a member of the space's shape)."""
        self._check_member(config)
        rates = config.drop_path_rates()
        for m, stage in enumerate(self.stages):
            for b, branch in enumerate(stage.branches):
                branch.set_active(config.depths[m][b], config.window_sizes[b], mlp_hidden(config, b), rates[m])
        self.active_config = config

    def extract(self, config: ArchConfig | None = None) -> HRViT:
        """A standalone HRViT of ``config`` (default: the active one) holding copies of the shared weights.

        Each elastic module hands out its active sub-module; the supernet's active member is left as it was.
        """
        active = self.active_config
        self.set_active(config or active)
        try:
            with torch.device("meta"):  # a shell: every part is replaced below
                subnet = HRViT(self.active_config)
            subnet.stem, subnet.head = copy.deepcopy(self.stem), copy.deepcopy(self.head)
            for own, stage in zip(subnet.stages, self.stages):
                own.fusion = copy.deepcopy(stage.fusion)
                own.branches = nn.ModuleList(branch.active_subnet() for branch in stage.branches)
        finally:
            self.set_active(active)
        return subnet.train(self.training)

    def _check_member(self, config: ArchConfig) -> None:
        base = self.config
        fixed = ("channels", "dim_head", "head", "in_chans")
        for field in fixed:
            if getattr(config, field) != getattr(base, field):
                raise ConfigError(f"{field}: {getattr(config, field)!r} differs from the supernet's; allowed: {getattr(base, field)!r}")
        if config.module_branches != base.module_branches:
            raise ConfigError(f"depths: module layout {list(config.module_branches)}; allowed: {list(base.module_branches)} (the supernet's)")
        for m, (module, largest) in enumerate(zip(config.depths, base.depths)):
            for b, (depth, most) in enumerate(zip(module, largest)):
                if depth > most:
                    raise ConfigError(f"depths[{m}][{b}]: {depth} exceeds the supernet; allowed: 0..{most}")
        for b, (ratio, most) in enumerate(zip(config.mlp_ratios, base.mlp_ratios)):
            if ratio > most:
                raise ConfigError(f"mlp_ratios[{b}]: {ratio} exceeds the supernet; allowed: up to {most}")
