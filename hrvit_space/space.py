"""The architecture search space: which knobs of an ``ArchConfig`` vary, and over which choices.

A space is a base config (fixed parts: channels, dim_head, head, input size) plus, per knob, a tuple
of choices. Knobs are flat and named (``depth_m{m}_b{b}``, ``window_b{b}``, ``ratio_b{b}``) so that
an Optuna trial's parameters map to a config and back without loss.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from hrvit_nas import atomic_write_text
from hrvit_space.config import (
    LIMITS,
    SCHEMA_VERSION,
    ArchConfig,
    ConfigError,
    branch_feature_size,
    mlp_ratio_allowed,
    preset,
    read_yaml_file,
)


@dataclass(frozen=True)
class Knob:
    """One searchable dimension and its ordered choices (smallest first)."""

    name: str
    choices: tuple


class SearchSpace:
    """Choices per module-branch depth, per-branch window size and per-branch MixCFN ratio."""

    def __init__(
        self,
        base: ArchConfig,
        depth_choices: Sequence[Sequence[Sequence[int]]],
        window_choices: Sequence[Sequence[int]],
        ratio_choices: Sequence[Sequence[float]],
    ) -> None:
        self.base = base
        self.depth_choices = tuple(
            tuple(_choices(c, f"depths[{m}][{b}]") for b, c in enumerate(_seq(module, f"depths[{m}]")))
            for m, module in enumerate(_seq(depth_choices, "depths"))
        )
        self.window_choices = _per_branch(window_choices, base.num_branches, "windows")
        self.ratio_choices = _per_branch(ratio_choices, base.num_branches, "mlp_ratios")
        self._validate()

    def _validate(self) -> None:
        base = self.base
        shape = tuple(len(module) for module in self.depth_choices)
        if shape != base.module_branches:
            raise ConfigError(
                f"space depths: modules x branches is {list(shape)} but the base config has {list(base.module_branches)}; "
                "give one choice list per module and branch of the base"
            )
        for m, module in enumerate(self.depth_choices):
            for b, choices in enumerate(module):
                if any(not _is_int(d) or not 0 <= d <= LIMITS["depth"] for d in choices):
                    raise ConfigError(f"space depths[{m}][{b}]: {list(choices)}; allowed: integers in 0..{LIMITS['depth']}")
        for b in range(base.num_branches):
            if sum(module[b][0] for module in self.depth_choices if b < len(module)) < 1:
                raise ConfigError(
                    f"space depths: branch {b} can end with no HRViT block; allowed: raise one of its smallest depth choices to 1"
                )
        for b, choices in enumerate(self.window_choices):
            h, w = branch_feature_size(base.input_size, b)
            largest = min(h, w, LIMITS["window"])
            bad = [ws for ws in choices if not _is_int(ws) or not 1 <= ws <= largest]
            if bad:
                raise ConfigError(
                    f"space windows[{b}]: {bad} impossible for branch {b} ({h}x{w} at input "
                    f"{base.input_size[0]}x{base.input_size[1]}); allowed: integers in 1..{largest} "
                    "(lower them in your space file, e.g. from `hrvit-nas space show --yaml`, or use a larger input)"
                )
        for b, choices in enumerate(self.ratio_choices):
            bad = [r for r in choices if not mlp_ratio_allowed(r, base.channels[b]) or r > LIMITS["mlp_ratio"]]
            if bad:
                raise ConfigError(
                    f"space mlp_ratios[{b}]: {bad} not allowed for {base.channels[b]} channels; "
                    f"allowed: positive numbers up to {LIMITS['mlp_ratio']} with ratio x channels an even integer"
                )

    # ------------------------------------------------------------------------------------------ knobs
    def knobs(self) -> list[Knob]:
        knobs = [
            Knob(f"depth_m{m}_b{b}", choices)
            for m, module in enumerate(self.depth_choices)
            for b, choices in enumerate(module)
        ]
        knobs += [Knob(f"window_b{b}", c) for b, c in enumerate(self.window_choices)]
        knobs += [Knob(f"ratio_b{b}", c) for b, c in enumerate(self.ratio_choices)]
        return knobs

    def size(self) -> int:
        return math.prod(len(knob.choices) for knob in self.knobs())

    def encode(self, config: ArchConfig) -> dict[str, Any]:
        """Flat knob -> value dict; refuses configs that differ from the base in a fixed field."""
        fixed = self.base.replace(
            depths=config.depths, window_sizes=config.window_sizes, mlp_ratios=config.mlp_ratios, name=config.name
        )
        if fixed != config:
            raise ConfigError(
                "config differs from the search space's base outside the searchable knobs "
                "(channels, dim_head, head, drop path, input size); use a config derived from the space's base"
            )
        if config.module_branches != self.base.module_branches:
            raise ConfigError(f"config has module layout {list(config.module_branches)}; the space has {list(self.base.module_branches)}")
        params: dict[str, Any] = {}
        for m, module in enumerate(config.depths):
            for b, depth in enumerate(module):
                params[f"depth_m{m}_b{b}"] = depth
        for b in range(config.num_branches):
            params[f"window_b{b}"] = config.window_sizes[b]
            params[f"ratio_b{b}"] = config.mlp_ratios[b]
        for knob in self.knobs():
            if params[knob.name] not in knob.choices:
                raise ConfigError(f"{knob.name}={params[knob.name]!r} is outside the space; allowed: {list(knob.choices)}")
        return {knob.name: params[knob.name] for knob in self.knobs()}

    def decode(self, params: Mapping[str, Any], name: str | None = None) -> ArchConfig:
        missing = [knob.name for knob in self.knobs() if knob.name not in params]
        if missing:
            raise ConfigError(f"parameters lack knob(s) {missing}; allowed knobs: {[k.name for k in self.knobs()]}")
        depths = tuple(
            tuple(params[f"depth_m{m}_b{b}"] for b in range(len(module))) for m, module in enumerate(self.depth_choices)
        )
        branches = range(self.base.num_branches)
        return self.base.replace(
            depths=depths,
            window_sizes=tuple(params[f"window_b{b}"] for b in branches),
            mlp_ratios=tuple(params[f"ratio_b{b}"] for b in branches),
            name=name,
        )

    def contains(self, config: ArchConfig) -> bool:
        try:
            self.encode(config)
        except ConfigError:
            return False
        return True

    # ------------------------------------------------------------------------------------ members
    def sample(self, seed: int | random.Random | None = None) -> ArchConfig:
        """A uniformly random member (uniform over knobs, which is uniform over the space)."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        return self.decode({knob.name: rng.choice(knob.choices) for knob in self.knobs()})

    def largest(self) -> ArchConfig:
        """Deepest, widest, largest windows: the supernet is built at this member."""
        return self.decode({knob.name: max(knob.choices) for knob in self.knobs()}, name="largest")

    def smallest(self) -> ArchConfig:
        return self.decode({knob.name: min(knob.choices) for knob in self.knobs()}, name="smallest")

    def nearest(self, config: ArchConfig) -> ArchConfig:
        """The member closest to ``config`` knob by knob (ties go to the larger choice).

        Used to enqueue reference presets whose values lie outside the space as baselines.
        """
        target: dict[str, Any] = {}
        for m, module in enumerate(self.depth_choices):
            for b in range(len(module)):
                target[f"depth_m{m}_b{b}"] = config.depths[m][b] if m < len(config.depths) and b < len(config.depths[m]) else 0
        for b in range(self.base.num_branches):
            target[f"window_b{b}"] = config.window_sizes[b] if b < len(config.window_sizes) else 0
            target[f"ratio_b{b}"] = config.mlp_ratios[b] if b < len(config.mlp_ratios) else 0
        params = {
            knob.name: min(knob.choices, key=lambda c, t=target[knob.name]: (abs(c - t), -c)) for knob in self.knobs()
        }
        return self.decode(params, name=config.name)

    def with_input_size(self, input_size: tuple[int, int]) -> "SearchSpace":
        """The same space at another input size (re-validates window choices against it)."""
        # Windows of 1 fit any input; the space itself then checks every window choice against the new size.
        base = self.base.replace(input_size=tuple(input_size), window_sizes=(1,) * self.base.num_branches)
        return SearchSpace(base, self.depth_choices, self.window_choices, self.ratio_choices)

    def fit_to_input(self, input_size: tuple[int, int]) -> tuple["SearchSpace", str | None]:
        """The space at ``input_size`` with window choices clipped to each branch's feature-map side, and a
        one-line note when a choice changed. For the built-in space only: a user's space keeps its choices
        and ``with_input_size`` refuses the ones that do not fit."""
        base, _ = self.base.replace(window_sizes=(1,) * self.base.num_branches).fit_to_input(input_size)
        windows = tuple(
            tuple(sorted({min(ws, *branch_feature_size(base.input_size, b)) for ws in choices}))
            for b, choices in enumerate(self.window_choices)
        )
        space = SearchSpace(base, self.depth_choices, windows, self.ratio_choices)
        if windows == self.window_choices:
            return space, None
        changed = ", ".join(f"windows[{b}] {list(old)} -> {list(new)}"
                            for b, (old, new) in enumerate(zip(self.window_choices, windows)) if old != new)
        return space, f"input {base.input_size[0]}x{base.input_size[1]}: {changed} (clipped to the branch feature maps)"

    # --------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        base = self.base.to_dict()
        for key in ("schema_version", "depths", "window_sizes", "mlp_ratios", "name"):
            base.pop(key)
        return {
            "schema_version": SCHEMA_VERSION,
            "base": base,
            "depths": [[list(c) for c in module] for module in self.depth_choices],
            "windows": [list(c) for c in self.window_choices],
            "mlp_ratios": [list(c) for c in self.ratio_choices],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        """``base`` is a preset name or a mapping of fixed ArchConfig fields (over preset b1 by default).

        ``windows`` / ``mlp_ratios`` may be one flat choice list, applied to every branch.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("search space: expected a mapping with base, depths, windows, mlp_ratios; see `hrvit-nas space show`")
        allowed = {"schema_version", "base", "depths", "windows", "mlp_ratios"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"search space: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(f"search space: schema_version {version!r} unsupported; allowed: {SCHEMA_VERSION}")
        missing = sorted({"depths", "windows", "mlp_ratios"} - set(data))
        if missing:
            raise ConfigError(f"search space: missing key(s) {missing}; each knob family needs its choices")
        base_spec = data.get("base", "b1")
        if isinstance(base_spec, str):
            base_dict = {"preset": base_spec}
        elif isinstance(base_spec, Mapping):
            base_dict = {"preset": "b1", **base_spec}
        else:
            raise ConfigError(f"search space base: got {base_spec!r}; allowed: a preset name (b1, b2, b3) or a mapping of config fields")
        depth_choices = data["depths"]
        # The base only fixes the non-searched fields; give it any valid member's searched values.
        base_dict["depths"] = _first_choices(depth_choices, "depths")
        fixed = ArchConfig.from_dict({k: v for k, v in base_dict.items() if k not in ("window_sizes", "mlp_ratios")} | {
            "window_sizes": [1] * len(base_dict["depths"][-1]),
            "mlp_ratios": [2] * len(base_dict["depths"][-1]),
        })
        return cls(fixed, depth_choices, data["windows"], data["mlp_ratios"])

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        hint = "write one (see `hrvit-nas space show --yaml`) or omit --space for the default"
        return cls.from_dict(read_yaml_file(path, "search space file", hint))

    @classmethod
    def default(cls) -> "SearchSpace":
        """Around HRViT-b1: depth 1-2 where b1 has 1, 1-3 where 2, 2-8 where 6; windows and ratios 2-4."""
        base = preset("b1")
        wide = {1: (1, 2), 2: (1, 2, 3), 6: (2, 4, 6, 8)}
        depths = [[wide[d] for d in module] for module in base.depths]
        return cls(base.replace(name=None), depths, [(1, 2), (1, 2, 4), (2, 4, 7), (2, 4, 7)], [(2, 3, 4)] * 4)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace(knobs={len(self.knobs())}, size={self.size():.3g})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seq(value: Any, where: str) -> Sequence:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"space {where}: got {value!r}; allowed: a non-empty list")
    return value


def _choices(value: Any, where: str) -> tuple:
    values = _seq(value, where)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ConfigError(f"space {where}: got {list(values)}; allowed: a list of numbers")
    return tuple(sorted(set(int(v) if float(v).is_integer() else v for v in values)))


def _per_branch(value: Any, branches: int, where: str) -> tuple[tuple, ...]:
    values = _seq(value, where)
    if all(not isinstance(v, (list, tuple)) for v in values):
        values = [values] * branches
    if len(values) != branches:
        raise ConfigError(f"space {where}: {len(values)} choice lists; allowed: one per branch ({branches}) or one flat list for all")
    return tuple(_choices(v, f"{where}[{b}]") for b, v in enumerate(values))


def _first_choices(depth_choices: Any, where: str) -> list[list[int]]:
    modules = _seq(depth_choices, where)
    return [
        [max(_choices(c, f"{where}[{m}][{b}]")) for b, c in enumerate(_seq(module, f"{where}[{m}]"))]
        for m, module in enumerate(modules)
    ]
