"""Weight-sharing HRViT supernet (OFA-style) over a SearchSpace.

Built once at ``space.largest()``. ``set_active(config)`` makes it compute exactly that member:
the first ``d`` blocks of each module-branch, any window size (attention weights do not depend on it),
and the first ``r*C/2`` hidden channels of each MixCFN half. ``extract()`` hands out a standalone
``HRViT`` with the sliced weights, whose outputs equal the active supernet's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hrvit_space.config import ArchConfig, ConfigError
from hrvit_space.layers import MixCFN
from hrvit_space.model import Block, Branch, HRViT
from hrvit_space.space import SearchSpace


class ElasticMixCFN(MixCFN):
    """MixCFN whose hidden width can shrink: each half keeps its first ``active_hidden / 2`` channels."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(dim, hidden)
        self.active_hidden = hidden

    def weights(self) -> tuple[Tensor, ...]:
        return tuple(self.sliced_state(self.active_hidden).values())

    def sliced_state(self, hidden: int) -> dict[str, Tensor]:
        """The parameters of a standalone MixCFN of width ``hidden`` (state-dict names, forward order)."""
        full, half = self.fc1.out_features // 2, hidden // 2
        if half == full:
            return {name: p for name, p in self.named_parameters()}
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


def _cat_rows(tensor: Tensor, rows: tuple[slice, slice]) -> Tensor:
    return torch.cat([tensor[rows[0]], tensor[rows[1]]])


class ElasticBlock(Block):
    mlp_cls = ElasticMixCFN


class ElasticBranch(Branch):
    """Runs only its first ``active_depth`` blocks."""

    block_cls = ElasticBlock

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.active_depth = len(self.blocks)

    def run_blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks[: self.active_depth]:
            x = block(x)
        return x


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
                branch.active_depth = config.depths[m][b]
                for k, block in enumerate(branch.blocks):
                    block.attn.window_size = config.window_sizes[b]
                    block.mlp.active_hidden = round(config.mlp_ratios[b] * config.channels[b])
                    block.drop_path.rate = rates[m][k] if k < len(rates[m]) else 0.0
        self.active_config = config

    def extract(self, config: ArchConfig | None = None) -> HRViT:
        """A standalone HRViT of ``config`` (default: the active one) holding copies of the shared weights."""
        config = config or self.active_config
        self._check_member(config)
        subnet = HRViT(config)
        state = self.state_dict()
        targets = dict(subnet.named_modules())
        for name, module in self.named_modules():
            if isinstance(module, ElasticMixCFN) and name in targets:
                sliced = module.sliced_state(targets[name].fc1.out_features)
                state.update({f"{name}.{key}": value for key, value in sliced.items()})
        subnet.load_state_dict({key: state[key].detach().clone() for key in subnet.state_dict()})
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
