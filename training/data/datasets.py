"""Dataset readers (ADE20K, Cityscapes, a generic folder layout, MNI152 brain slices, synthetic) and ``DatasetSpec``.

Every reader yields ``(image float[3, H, W] normalised, mask int64[H, W])`` with ``ignore_index`` on
unlabelled pixels. Layouts are checked when the dataset is built, so a wrong root fails at once with
one message naming the missing directory or file, not deep inside a DataLoader worker.

Generic folder layout (``folder:/path``)::

    classes.txt              one class name per line; line k (0-based) is label k
    images/train/*.png|jpg   RGB images
    images/val/...
    masks/train/*.png        single-channel (L or P) PNG, same stem as the image;
    masks/val/...            pixel value = class index, 255 = ignore
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from training.data.errors import DatasetError
from training.data.mni152 import class_names as mni152_class_names
from training.data.mni152 import OPTIONS as MNI152_OPTIONS
from training.data.mni152 import MNI152Slices
from training.data.synthetic import SyntheticSegmentation
from training.data.transforms import EvalTransform

KINDS = ("ade20k", "cityscapes", "folder", "mni152", "synthetic")
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FILE_IGNORE = 255  # the ignore value stored in every supported mask format
# val_samples defaults to a quarter of num_samples (at least 1).
SYNTHETIC_OPTIONS = {"num_samples": 256, "val_samples": None, "size": 64, "seed": 0, "num_classes": 4}
# Kinds generated in-process (no root directory): their integer options and defaults.
KIND_OPTIONS = {"synthetic": SYNTHETIC_OPTIONS, "mni152": MNI152_OPTIONS}
FOLDER_LAYOUT = "folder layout: classes.txt, images/{train,val}/*.png|jpg, masks/{train,val}/*.png (same stem)"
SPEC_FORMS = (
    "synthetic",
    "synthetic:num_samples=256,val_samples=64,size=64,seed=0,num_classes=4",
    "mni152:size=64,slab=8,classes=4,hemispheres=1 (brain slices shipped in the nilearn wheel; classes=3 merges CSF into "
    "background, hemispheres=2 splits each tissue into left and right)",
    "ade20k:/path/to/ADEChallengeData2016",
    "cityscapes:/path/to/cityscapes",
    "folder:/path/to/dataset (classes.txt, images/{train,val}, masks/{train,val})",
)

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip


def _example(kind: str) -> str:
    return f"{kind}:" + ",".join(f"{key}={value}" for key, value in KIND_OPTIONS[kind].items() if value is not None)


def _read_class_list(root: Path) -> list[str]:
    if not root.is_dir():
        raise DatasetError(f"folder dataset root {root} does not exist; expected {FOLDER_LAYOUT}")
    path = root / "classes.txt"
    if not path.is_file():
        raise DatasetError(f"folder dataset {root} lacks classes.txt; write one class name per line (line k = label k)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path} is empty; write one class name per line (line k = label k)")
    if len(names) > FILE_IGNORE:
        raise DatasetError(f"{path} lists {len(names)} classes; PNG masks hold at most {FILE_IGNORE} (255 = ignore)")
    return names


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset to read: ``kind``, ``root`` and the derived ``num_classes``.

    ``options`` only applies to the kinds without a root: ``synthetic`` (num_samples, val_samples, size,
    seed, num_classes) and ``mni152`` (size, slab, classes, hemispheres).
    """

    kind: str
    root: str | None = None
    num_classes: int | None = None
    ignore_index: int = 255
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DatasetError(f"unknown dataset kind {self.kind!r}; use one of: {', '.join(KINDS)}")
        if self.kind in KIND_OPTIONS:
            allowed = KIND_OPTIONS[self.kind]
            unknown = sorted(set(self.options) - set(allowed))
            if unknown:
                raise DatasetError(f"unknown {self.kind} option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
            bad = [k for k, v in self.options.items() if not isinstance(v, int) or isinstance(v, bool) or v < (k != "seed")]
            if bad:
                raise DatasetError(f"{self.kind} option(s) {', '.join(bad)} must be positive integers, e.g. {_example(self.kind)}")
            if self.root is not None:
                raise DatasetError(f"the {self.kind} dataset has no root directory; drop the path")
        else:
            if not self.root:
                raise DatasetError(f"dataset {self.kind} needs a root directory, e.g. {self.kind}:/path")
            if self.options:
                raise DatasetError(f"dataset {self.kind} takes no options (got {', '.join(self.options)})")
        if not isinstance(self.ignore_index, int) or not 0 <= self.ignore_index:
            raise DatasetError(f"ignore_index={self.ignore_index!r}; use a non-negative integer (usually 255)")
        derived = self._derive_num_classes() if self.num_classes is None else self.num_classes
        if not isinstance(derived, int) or isinstance(derived, bool) or derived < 1:
            raise DatasetError(f"num_classes={derived!r}; use a positive integer or leave it out to derive it")
        fixed = {"ade20k": len(ADE20K_CLASSES), "cityscapes": len(CITYSCAPES_CLASSES), "mni152": self._derive_num_classes()}.get(self.kind)
        if self.kind == "synthetic":
            fixed = self.options.get("num_classes")
        if fixed is not None and derived != fixed:
            raise DatasetError(f"dataset {self.kind} has {fixed} classes, not {derived}; drop num_classes")
        if self.ignore_index < derived:
            raise DatasetError(f"ignore_index={self.ignore_index} collides with class labels 0..{derived - 1}; use 255")
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "num_classes", derived)

    def _derive_num_classes(self) -> int:
        if self.kind == "ade20k":
            return len(ADE20K_CLASSES)
        if self.kind == "cityscapes":
            return len(CITYSCAPES_CLASSES)
        if self.kind == "folder":  # a stored spec carries num_classes, so only new specs need the data here
            return len(_read_class_list(Path(self.root)))
        if self.kind == "mni152":
            return len(mni152_class_names(self.option("classes"), self.option("hemispheres")))
        return self.options.get("num_classes", SYNTHETIC_OPTIONS["num_classes"])

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        """``kind`` or ``kind:/root`` or ``synthetic:key=value,...`` / ``mni152:key=value`` (see ``SPEC_FORMS``)."""
        kind, _, rest = text.strip().partition(":")
        if kind not in KINDS:
            raise DatasetError(f"cannot read dataset {text!r}; use one of: " + " | ".join(SPEC_FORMS))
        if kind not in KIND_OPTIONS:
            return cls(kind=kind, root=rest or None)
        options: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            try:
                options[key.strip()] = int(value)
            except ValueError:
                eq = ""
            if not eq:
                raise DatasetError(f"cannot read {kind} option {item!r}; write key=integer, e.g. {_example(kind)}")
        return cls(kind=kind, options=options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or "kind" not in data:
            raise DatasetError(
                f"dataset mapping {dict(data)!r}: needs `kind`, allows {', '.join(sorted(known))}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        return cls(**data)

    def option(self, name: str) -> int:
        """An option of a rootless kind, or its default."""
        if self.kind == "synthetic" and name == "val_samples" and name not in self.options:
            return max(1, self.option("num_samples") // 4)
        return self.options.get(name, KIND_OPTIONS[self.kind][name])

    @property
    def mirror_invariant(self) -> bool:
        """Whether a left-right flipped image keeps its mask's meaning (False: training must not flip it)."""
        return not (self.kind == "mni152" and self.option("hemispheres") == 2)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) shared by every image of a generated kind (they batch); None where sizes vary."""
        return (self.option("size"),) * 2 if self.kind in KIND_OPTIONS else None


def read_image(path: Path) -> torch.Tensor:
    """An RGB file as ``uint8[3, H, W]``."""
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"cannot read image {path} ({error}); replace or remove the file") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_mask(path: Path) -> torch.Tensor:
    """A single-channel (L, P or 16-bit) PNG of label ids as ``int64[H, W]``."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"mask {path} has mode {image.mode}; masks must be single-channel PNGs of class indices")
            array = np.array(image).astype(np.int64)
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"cannot read mask {path} ({error}); replace or remove the file") from None
    return torch.from_numpy(array)


class PairedSegmentation(Dataset):
    """Reads ``(image_path, mask_path)`` pairs; ``reduce_zero_label`` maps 0 -> ignore, k -> k - 1 (ADE20K)."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        ignore_index: int = 255,
        transform: Callable | None = None,
        reduce_zero_label: bool = False,
    ) -> None:
        self.pairs = list(pairs)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.transform = transform if transform is not None else EvalTransform()
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.pairs)

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8[3, H, W]`` image and ``int64[H, W]`` mask with ``ignore_index``, before the transform."""
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[-2:] != mask.shape:
            raise DatasetError(
                f"{image_path} is {tuple(image.shape[-2:])} but its mask {mask_path} is {tuple(mask.shape)}; they must match"
            )
        ignored = mask == FILE_IGNORE
        if self.reduce_zero_label:
            ignored |= mask == 0
            mask = mask - 1
        mask[ignored] = self.ignore_index
        invalid = ~ignored & ((mask < 0) | (mask >= self.num_classes))
        if invalid.any():
            raise DatasetError(
                f"mask {mask_path} holds label {int(mask[invalid][0]) + int(self.reduce_zero_label)} outside the "
                f"{self.num_classes} classes (and not ignore {FILE_IGNORE}); fix the mask or the class list"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self.raw(index))


def _pair_by_stem(images: list[Path], mask_for: Callable[[Path], Path], image_dir: Path, mask_dir: Path, layout: str) -> list[tuple[Path, Path]]:
    if not images:
        raise DatasetError(f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}); expected {layout}")
    pairs = [(image, mask_for(image)) for image in images]
    missing = [mask for _, mask in pairs if not mask.is_file()]
    if missing:
        shown = ", ".join(str(m.relative_to(mask_dir)) for m in missing[:3])
        raise DatasetError(
            f"{len(missing)} of {len(pairs)} images have no mask in {mask_dir} (e.g. {shown}); expected {layout}"
        )
    return pairs


def _images_in(directory: Path, recursive: bool = False) -> list[Path]:
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _missing_dir(root: Path, kind: str, relative: str, layout: str) -> None:
    if not root.is_dir():
        raise DatasetError(f"{kind} root {root} does not exist; expected {layout}")
    if not (root / relative).is_dir():
        raise DatasetError(f"{kind} root {root} lacks {relative}; expected {layout}")


def ade20k(root: str | Path, split: str, ignore_index: int = 255, transform: Callable | None = None) -> PairedSegmentation:
    """ADEChallengeData2016: images/{training,validation}/*.jpg + annotations/.../*.png (0 = other, ignored)."""
    root = Path(root)
    layout = "ADEChallengeData2016 layout: images/{training,validation}, annotations/{training,validation}"
    folder = {"train": "training", "val": "validation"}[split]
    for relative in (f"images/{folder}", f"annotations/{folder}"):
        _missing_dir(root, "ADE20K", relative, layout)
    image_dir, mask_dir = root / "images" / folder, root / "annotations" / folder
    pairs = _pair_by_stem(_images_in(image_dir), lambda p: mask_dir / f"{p.stem}.png", image_dir, mask_dir, layout)
    return PairedSegmentation(pairs, ADE20K_CLASSES, ignore_index, transform, reduce_zero_label=True)


def cityscapes(root: str | Path, split: str, ignore_index: int = 255, transform: Callable | None = None) -> PairedSegmentation:
    """leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine/{split}/{city}/*_gtFine_labelTrainIds.png."""
    root = Path(root)
    layout = (
        "Cityscapes layout: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
        "gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png (make them with cityscapesscripts' csCreateTrainIdLabelImgs)"
    )
    for relative in (f"leftImg8bit/{split}", f"gtFine/{split}"):
        _missing_dir(root, "Cityscapes", relative, layout)
    image_dir, mask_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    images = [p for p in _images_in(image_dir, recursive=True) if p.name.endswith("_leftImg8bit.png")]

    def mask_for(image: Path) -> Path:
        stem = image.name[: -len("_leftImg8bit.png")]
        return mask_dir / image.parent.relative_to(image_dir) / f"{stem}_gtFine_labelTrainIds.png"

    pairs = _pair_by_stem(images, mask_for, image_dir, mask_dir, layout)
    return PairedSegmentation(pairs, CITYSCAPES_CLASSES, ignore_index, transform)


def folder(root: str | Path, split: str, ignore_index: int = 255, transform: Callable | None = None) -> PairedSegmentation:
    """The generic layout in this module's docstring."""
    root = Path(root)
    class_names = _read_class_list(root)
    for relative in (f"images/{split}", f"masks/{split}"):
        _missing_dir(root, "folder dataset", relative, FOLDER_LAYOUT)
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    pairs = _pair_by_stem(_images_in(image_dir), lambda p: mask_dir / f"{p.stem}.png", image_dir, mask_dir, FOLDER_LAYOUT)
    return PairedSegmentation(pairs, class_names, ignore_index, transform)


def build_dataset(spec: DatasetSpec, split: str, transform: Callable | None = None) -> Dataset:
    """The ``split`` ("train" | "val") of ``spec``; ``transform`` defaults to normalisation only.

    The dataset also carries ``num_classes`` and ``class_names`` (for per-class result tables).
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    if spec.kind == "synthetic":
        return SyntheticSegmentation(
            num_samples=spec.option("num_samples" if split == "train" else "val_samples"),
            size=spec.option("size"),
            num_classes=spec.num_classes,
            seed=spec.option("seed"),
            split=split,
            transform=transform,
        )
    if spec.kind == "mni152":
        return MNI152Slices(split, size=spec.option("size"), slab=spec.option("slab"), transform=transform,
                            classes=spec.option("classes"), hemispheres=spec.option("hemispheres"))
    reader = {"ade20k": ade20k, "cityscapes": cityscapes, "folder": folder}[spec.kind]
    dataset = reader(spec.root, split, spec.ignore_index, transform)
    if dataset.num_classes != spec.num_classes:
        raise DatasetError(
            f"{spec.root}/classes.txt lists {dataset.num_classes} classes but the spec says {spec.num_classes}; "
            "drop num_classes from the spec or fix classes.txt"
        )
    return dataset
