"""A procedural segmentation dataset for tests, demos and CPU benchmarks (no downloads).

Each image is a textured background (class 0) with a few overlapping shapes. Every class has its own
appearance: a colour, a grating texture (orientation and period) and a shape kind. Instances jitter
their colour and texture phase, and pixel noise is added, so a model has to learn local colour *and*
texture statistics rather than memorise pixel values. Samples are generated on the fly from
``(seed, split, index)``: deterministic, independent of worker order, and cheap (a few ms per 64x64 sample).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from hrvit_nas import UserError
from training.data.transforms import EvalTransform

SPLITS = ("train", "val")
SHAPES = ("ellipse", "rectangle", "diamond")
_SPLIT_SALT = {"train": 0x5EED_0001, "val": 0x5EED_0002}


def _mix(*values: int) -> int:
    """A stable 63-bit seed from integers (Python's ``hash`` of tuples is fine too, but not documented stable)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF


class SyntheticSegmentation(Dataset):
    """``num_samples`` seeded images of ``size`` with ``num_classes`` classes (0 = background).

    Yields ``(image float[3, H, W] normalised, mask int64[H, W])`` like the real readers; ``transform``
    receives the raw ``uint8`` image and the mask (default: normalisation only).
    """

    def __init__(
        self,
        num_samples: int = 256,
        size: int | Sequence[int] = 64,
        num_classes: int = 4,
        seed: int = 0,
        split: str = "train",
        transform: Callable | None = None,
    ) -> None:
        if split not in SPLITS:
            raise UserError(f"synthetic dataset: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if num_samples < 1:
            raise UserError(f"synthetic dataset: num_samples={num_samples}; use a positive number")
        if not 2 <= num_classes <= 255:
            raise UserError(f"synthetic dataset: num_classes={num_classes}; use 2..255 (class 0 is the background)")
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 8:
            raise UserError(f"synthetic dataset: size={size}; use at least 8 pixels per side")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.seed = seed
        self.split = split
        self.transform = transform if transform is not None else EvalTransform()
        self.class_names = ["background"] + [f"{SHAPES[(c - 1) % len(SHAPES)]}_{c}" for c in range(1, num_classes)]
        self._styles = self._class_styles()

    def _class_styles(self) -> list[dict[str, torch.Tensor | float | str]]:
        """Per-class appearance, shared by both splits: evenly spaced hues (seeded order), distinct gratings."""
        generator = torch.Generator().manual_seed(_mix(self.seed, 0xC1A55))
        hue_order = torch.randperm(self.num_classes, generator=generator).tolist()
        styles = []
        for c in range(self.num_classes):
            hue = hue_order[c] / self.num_classes
            value = 0.45 + 0.3 * (c % 2)
            colour = torch.tensor(colorsys.hsv_to_rgb(hue, 0.65, value), dtype=torch.float32)
            styles.append(
                {
                    "colour": colour,
                    "angle": math.pi * c / self.num_classes,
                    "period": (3.0, 4.5, 7.0)[c % 3],
                    "shape": SHAPES[(c - 1) % len(SHAPES)] if c else "background",
                }
            )
        return styles

    def __len__(self) -> int:
        return self.num_samples

    def _texture(self, c: int, yy: torch.Tensor, xx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        style = self._styles[c]
        jitter = (torch.rand(3, generator=generator) - 0.5) * 0.3
        phase = float(torch.rand((), generator=generator)) * 2 * math.pi
        angle = style["angle"]
        wave = torch.sin(2 * math.pi / style["period"] * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        return (style["colour"] + jitter)[:, None, None] + 0.14 * wave[None]

    def _shape_region(self, kind: str, yy: torch.Tensor, xx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        height, width = self.size
        centre_y, centre_x = (torch.rand(2, generator=generator) * torch.tensor([height, width])).tolist()
        half_h, half_w = ((0.1 + 0.22 * torch.rand(2, generator=generator)) * torch.tensor([height, width])).tolist()
        dy, dx = (yy - centre_y) / half_h, (xx - centre_x) / half_w
        if kind == "ellipse":
            return dy**2 + dx**2 <= 1
        if kind == "rectangle":
            return (dy.abs() <= 1) & (dx.abs() <= 1)
        return dy.abs() + dx.abs() <= 1

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The untransformed sample: ``uint8[3, H, W]`` image and ``int64[H, W]`` mask."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        generator = torch.Generator().manual_seed(_mix(self.seed, _SPLIT_SALT[self.split], index))
        height, width = self.size
        yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
        image = self._texture(0, yy, xx, generator)
        mask = torch.zeros(self.size, dtype=torch.int64)
        num_shapes = int(torch.randint(2, 6, (), generator=generator))
        for _ in range(num_shapes):
            c = int(torch.randint(1, self.num_classes, (), generator=generator))
            region = self._shape_region(self._styles[c]["shape"], yy, xx, generator)
            image = torch.where(region[None], self._texture(c, yy, xx, generator), image)
            mask[region] = c
        image = image + 0.08 * torch.randn(image.shape, generator=generator)
        return (image.clamp(0, 1) * 255).round().to(torch.uint8), mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self.raw(index))
