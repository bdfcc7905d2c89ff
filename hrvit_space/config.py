"""Typed, validated HRViT architecture configuration.

One frozen dataclass fully describes a network, so a config hash identifies a model everywhere
(profiling cache keys, Optuna trial records, export bundles). Validation happens at construction, and
each failure names the offending field and the values it may take.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from hrvit_nas import UserError, atomic_write_text

SCHEMA_VERSION = 1
HEAD_KINDS = ("segformer", "classification", "none")
STEM_STRIDE = 4
STEM_WIDTH = 64  # channels of the conv stem's output (its first conv has half)
# Upper bounds far above any published HRViT (b3: 4 branches, 6 modules, 64..512 channels, depth 6, window 7),
# so that a typo such as a depth of 1,000,000 is refused here instead of exhausting memory later.
LIMITS = {
    "branches": 8, "modules": 32, "depth": 64, "channels": 8192, "dim_head": 1024, "window": 64,
    "mlp_ratio": 16, "head.width": 8192, "head.num_classes": 65536, "in_chans": 1024,
}


class ConfigError(UserError, ValueError):
    """An architecture config (or search space) that cannot describe a valid HRViT."""


def _fail(field_name: str, problem: str, allowed: str) -> None:
    raise ConfigError(f"{field_name}: {problem}; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_limit(field_name: str, value: Any, limit_key: str) -> None:
    if _is_number(value) and value > LIMITS[limit_key]:
        _fail(field_name, f"{value!r} is above the limit {LIMITS[limit_key]}", f"at most {LIMITS[limit_key]}")


def read_yaml_file(path: str | Path, what: str, hint: str, error: type[UserError] = ConfigError) -> Any:
    """Parse a YAML/JSON file the user named; every unreadable case is one ``error`` naming ``hint`` as the fix."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {str(path)!r} is a directory; {hint}")
    if not path.is_file():
        raise error(f"{what} {str(path)!r} not found; {hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{what} {str(path)!r} is not UTF-8 text (byte {problem.start}); save it as UTF-8 YAML/JSON") from None
    except OSError as problem:
        raise error(f"{what} {str(path)!r} cannot be read ({problem.strerror}); check its permissions") from None
    return parse_yaml(text, f"{what} {str(path)!r}", error)


def parse_yaml(text: str, what: str, error: type[UserError] = ConfigError) -> Any:
    """``yaml.safe_load`` whose every failure is one ``error`` line (YAML's own messages span several)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{what} is not valid YAML/JSON ({' '.join(str(problem).split())}); fix the syntax") from None
    except RecursionError:
        raise error(f"{what} nests too deeply to be a config; fix the syntax") from None


def path_slug(text: str) -> str:
    """``text`` as one safe file-name component (no separators, no leading dots); empty when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")[:100]


def branch_feature_size(input_size: tuple[int, int], branch: int) -> tuple[int, int]:
    """Spatial size of branch ``branch`` (stride 4 * 2**branch); every stride-s layer rounds up."""
    stride = STEM_STRIDE * 2**branch
    return tuple(math.ceil(side / stride) for side in input_size)  # type: ignore[return-value]


def mlp_hidden(config: "ArchConfig", branch: int) -> int:
    """Hidden width of the MixCFNs of ``branch``: its ratio x its channels."""
    return round(config.mlp_ratios[branch] * config.channels[branch])


def mlp_ratio_allowed(ratio: float, channels: int) -> bool:
    """MixCFN splits its hidden width in two halves, so ratio x channels must be an even integer."""
    hidden = ratio * channels
    return ratio > 0 and abs(hidden - round(hidden)) < 1e-9 and round(hidden) % 2 == 0


@dataclass(frozen=True)
class HeadConfig:
    """Task head on top of the 4 backbone maps (``none`` gives the bare backbone)."""

    kind: str = "segformer"
    width: int = 256
    num_classes: int = 150
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            _fail("head.kind", f"unknown head {self.kind!r}", ", ".join(HEAD_KINDS))
        if not _is_int(self.width) or self.width <= 0:
            _fail("head.width", f"got {self.width!r}", "a positive integer")
        if not _is_int(self.num_classes) or self.num_classes <= 0:
            _fail("head.num_classes", f"got {self.num_classes!r}", "a positive integer")
        _check_limit("head.width", self.width, "head.width")
        _check_limit("head.num_classes", self.num_classes, "head.num_classes")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            _fail("head.dropout", f"got {self.dropout!r}", "a number in [0, 1)")


@dataclass(frozen=True)
class ArchConfig:
    """A complete HRViT architecture.

    ``depths[m][b]`` is the number of HRViT blocks of branch ``b`` in module ``m``; module ``m`` runs
    ``len(depths[m])`` parallel branches, and each module may add at most one branch.
    """

    channels: tuple[int, ...]
    depths: tuple[tuple[int, ...], ...]
    window_sizes: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    dim_head: int = 32
    head: HeadConfig = field(default_factory=HeadConfig)
    drop_path_rate: float = 0.1
    input_size: tuple[int, int] = (512, 512)
    in_chans: int = 3
    name: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "channels", _as_tuple(self.channels, "channels"))
        set_(self, "depths", tuple(_as_tuple(d, f"depths[{m}]") for m, d in enumerate(_as_tuple(self.depths, "depths"))))
        set_(self, "window_sizes", _as_tuple(self.window_sizes, "window_sizes"))
        ratios = _as_tuple(self.mlp_ratios, "mlp_ratios")
        set_(self, "mlp_ratios", tuple(int(r) if _is_number(r) and float(r).is_integer() else r for r in ratios))
        set_(self, "input_size", _as_tuple(self.input_size, "input_size"))
        if isinstance(self.head, Mapping):
            set_(self, "head", _head_from_dict(self.head))
        self._validate()

    # ----------------------------------------------------------------------------------------- checks
    def _validate(self) -> None:
        if not self.channels:
            _fail("channels", "empty", "one positive even integer per branch")
        for b, c in enumerate(self.channels):
            if not _is_int(c) or c <= 0 or c % 2:
                _fail(f"channels[{b}]", f"got {c!r}", "a positive even integer (attention splits channels in half)")
            _check_limit(f"channels[{b}]", c, "channels")
        if len(self.channels) > LIMITS["branches"]:
            _fail("channels", f"{len(self.channels)} branches", f"at most {LIMITS['branches']} branches")
        self._validate_depths()
        branches = self.num_branches
        for name in ("window_sizes", "mlp_ratios"):
            if len(getattr(self, name)) != branches:
                _fail(name, f"has {len(getattr(self, name))} entries", f"exactly {branches} (one per branch)")
        if len(self.input_size) != 2 or not all(_is_int(s) and s > 0 for s in self.input_size):
            _fail("input_size", f"got {self.input_size!r}", "[height, width] with positive integers")
        for b, ws in enumerate(self.window_sizes):
            h, w = branch_feature_size(self.input_size, b)
            _check_limit(f"window_sizes[{b}]", ws, "window")
            if not _is_int(ws) or ws <= 0 or ws > min(h, w):
                _fail(
                    f"window_sizes[{b}]",
                    f"got {ws!r}, but branch {b} is {h}x{w} at input {self.input_size[0]}x{self.input_size[1]}",
                    f"an integer in 1..{min(h, w)} (or a larger input_size)",
                )
        for b, (r, c) in enumerate(zip(self.mlp_ratios, self.channels)):
            if not _is_number(r) or not mlp_ratio_allowed(r, c):
                _fail(f"mlp_ratios[{b}]", f"got {r!r} for {c} channels", "a positive number with ratio x channels an even integer")
            _check_limit(f"mlp_ratios[{b}]", r, "mlp_ratio")
        if not _is_int(self.dim_head) or self.dim_head <= 0:
            _fail("dim_head", f"got {self.dim_head!r}", "a positive integer")
        _check_limit("dim_head", self.dim_head, "dim_head")
        for b, c in enumerate(self.channels):
            half = c // 2
            if half > self.dim_head and half % self.dim_head:
                _fail("dim_head", f"{self.dim_head} does not divide half of channels[{b}]={c}", f"a divisor of {half}, or >= {half}")
        if not _is_number(self.drop_path_rate) or not 0 <= self.drop_path_rate < 1:
            _fail("drop_path_rate", f"got {self.drop_path_rate!r}", "a number in [0, 1)")
        if not _is_int(self.in_chans) or self.in_chans <= 0:
            _fail("in_chans", f"got {self.in_chans!r}", "a positive integer")
        _check_limit("in_chans", self.in_chans, "in_chans")
        if self.name is not None and not isinstance(self.name, str):
            _fail("name", f"got {self.name!r}", "a string or null")

    def _validate_depths(self) -> None:
        if not self.depths:
            _fail("depths", "empty", "a list of modules, each a list of per-branch block counts")
        if len(self.depths) > LIMITS["modules"]:
            _fail("depths", f"{len(self.depths)} modules", f"at most {LIMITS['modules']} modules")
        previous = 0
        for m, module in enumerate(self.depths):
            if not module or len(module) not in (previous, previous + 1) or (m == 0 and len(module) != 1):
                expected = "1" if m == 0 else f"{previous} or {previous + 1}"
                _fail(f"depths[{m}]", f"has {len(module)} branches", f"{expected} (a module adds at most one branch)")
            for b, d in enumerate(module):
                if not _is_int(d) or d < 0:
                    _fail(f"depths[{m}][{b}]", f"got {d!r}", "a non-negative integer")
                _check_limit(f"depths[{m}][{b}]", d, "depth")
            previous = len(module)
        if previous != len(self.channels):
            _fail("depths", f"the last module has {previous} branches but channels has {len(self.channels)}", "matching branch counts")
        for b, blocks in enumerate(self.blocks_per_branch):
            if blocks < 1:
                _fail(f"depths (branch {b})", "the branch has no HRViT block in any module", "at least one block per branch")

    # ------------------------------------------------------------------------------------ properties
    @property
    def num_branches(self) -> int:
        return len(self.channels)

    @property
    def num_modules(self) -> int:
        return len(self.depths)

    @property
    def module_branches(self) -> tuple[int, ...]:
        return tuple(len(module) for module in self.depths)

    @property
    def blocks_per_branch(self) -> tuple[int, ...]:
        """HRViT blocks each branch runs, summed over the modules it appears in (a branch's depth)."""
        return tuple(sum(module[b] for module in self.depths if b < len(module)) for b in range(len(self.channels)))

    def feature_size(self, branch: int) -> tuple[int, int]:
        return branch_feature_size(self.input_size, branch)

    def drop_path_rates(self) -> list[list[float]]:
        """Per module, per block index: rates rise linearly over the module depth (max blocks per module)."""
        module_depths = [max(module) for module in self.depths]
        total = sum(module_depths)
        rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        out, start = [], 0
        for depth in module_depths:
            out.append(rates[start : start + depth])
            start += depth
        return out

    # --------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "head":
                value = dataclasses.asdict(value)
            elif f.name == "depths":
                value = [list(module) for module in value]
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArchConfig":
        """Build from a mapping; ``preset: b1`` starts from a preset and the other keys override it."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a mapping of fields, got {type(data).__name__}; see `hrvit-nas space sample` for an example")
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            _fail("schema_version", f"got {version!r} (this hrvit-nas reads {SCHEMA_VERSION})", f"{SCHEMA_VERSION}; upgrade hrvit-nas for newer configs")
        known = {f.name for f in dataclasses.fields(cls)}
        base: dict[str, Any] = {}
        if "preset" in data:
            base = preset(data.pop("preset")).to_dict()
            base.pop("schema_version")
        unknown = sorted(set(data) - known)
        if unknown:
            _fail(", ".join(unknown), "unknown config key(s)", ", ".join(sorted(known | {"preset", "schema_version"})))
        merged = {**base, **data}
        missing = [f.name for f in dataclasses.fields(cls) if f.name in ("channels", "depths", "window_sizes", "mlp_ratios") and f.name not in merged]
        if missing:
            _fail(", ".join(missing), "missing", "give every architecture field, or start from `preset: b1|b2|b3`")
        if "head" in merged:
            merged["head"] = _head_from_dict(merged["head"])
        return cls(**merged)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> "ArchConfig":
        return cls.from_dict(parse_yaml(text, "config"))

    def save(self, path: str | Path) -> None:
        text = self.to_json() if str(path).endswith(".json") else self.to_yaml()
        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> "ArchConfig":
        return cls.from_dict(read_yaml_file(path, "config file", "pass a YAML/JSON config (try `hrvit-nas space sample > cfg.yaml`)"))

    def content_hash(self) -> str:
        """Stable across processes and machines; the display ``name`` does not change it."""
        data = self.to_dict()
        data.pop("name")
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> "ArchConfig":
        return dataclasses.replace(self, **changes)

    def run_name(self) -> str:
        """A directory name for this config's runs: ``name`` as a safe slug (it never leaves ``runs/``), else the hash."""
        return path_slug(self.name or "") or self.content_hash()

    def fit_to_input(self, input_size: tuple[int, int]) -> tuple["ArchConfig", str | None]:
        """This config at ``input_size``, each window clipped to its branch's feature-map side, and a one-line note
        when a window changed. For presets and the built-in space, so small inputs just work; a config the user
        wrote keeps its windows and fails loudly instead."""
        size = tuple(input_size)
        if len(size) != 2 or not all(_is_int(side) and side > 0 for side in size):
            return self.replace(input_size=size), None  # validation names the malformed size
        windows = tuple(min(ws, *branch_feature_size(size, b)) for b, ws in enumerate(self.window_sizes))
        fitted = self.replace(input_size=size, window_sizes=windows)
        if windows == self.window_sizes:
            return fitted, None
        return fitted, (f"input {size[0]}x{size[1]}: window_sizes {list(self.window_sizes)} -> {list(windows)} "
                        "(clipped to the branch feature maps)")


def _as_tuple(value: Any, field_name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    _fail(field_name, f"got {value!r}", "a list")
    raise AssertionError  # unreachable, for type checkers


def _head_from_dict(data: Any) -> HeadConfig:
    if isinstance(data, HeadConfig):
        return data
    if not isinstance(data, Mapping):
        _fail("head", f"got {data!r}", "a mapping with kind, width, num_classes, dropout")
    known = {f.name for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        _fail(f"head.{unknown[0]}", "unknown head key", ", ".join(sorted(known)))
    return HeadConfig(**data)


_B1_DEPTHS = ((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 2, 2))
PRESETS: dict[str, ArchConfig] = {
    "b1": ArchConfig(
        channels=(32, 64, 128, 256), depths=_B1_DEPTHS, window_sizes=(1, 2, 7, 7),
        mlp_ratios=(4, 4, 4, 4), dim_head=32, head=HeadConfig(width=256), name="b1",
    ),
    "b2": ArchConfig(
        channels=(48, 96, 240, 384), depths=_B1_DEPTHS[:4] + ((1, 1, 6, 2), (1, 1, 6, 2)), window_sizes=(1, 2, 7, 7),
        mlp_ratios=(2, 3, 3, 3), dim_head=24, head=HeadConfig(width=256), name="b2",
    ),
    "b3": ArchConfig(
        channels=(64, 128, 256, 512), depths=_B1_DEPTHS[:4] + ((1, 1, 6, 3), (1, 1, 6, 3)), window_sizes=(1, 2, 7, 7),
        mlp_ratios=(2, 2, 2, 2), dim_head=32, head=HeadConfig(width=768), name="b3",
    ),
}


def preset(name: str, **overrides: Any) -> ArchConfig:
    """A named reference variant (b1/b2/b3), optionally with fields replaced."""
    if name not in PRESETS:
        _fail("preset", f"unknown preset {name!r}", ", ".join(PRESETS))
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
