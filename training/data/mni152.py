"""A real segmentation task that installs with a package: brain tissue on the MNI ICBM152 2009a template.

The ``nilearn`` wheel ships three 1 mm volumes of the MNI ICBM152 non-linear symmetric 2009a template
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``: the skull-stripped
T1 average and the grey- and white-matter probability maps, uint8 197x233x189). nilearn's own
``load_mni152_template`` reads the same files from the installed package; nothing is downloaded. We
read them with nibabel (nilearn's reader) without importing nilearn, which would pull in scikit-learn.

Each axial slice with at least ``MIN_BRAIN_FRACTION`` brain becomes one image/mask pair: the T1 slice
as a grey image, and per pixel the most probable of 4 classes: 0 background (outside the brain),
1 CSF/other (in the brain, neither tissue), 2 grey matter, 3 white matter; with the option ``classes=3``
CSF/other joins background (labels 0 background/CSF, 1 grey, 2 white matter). With ``hemispheres=2``
each tissue class is split at the mid-sagittal plane (MNI x = 0, read from the template's affine) into
a left and a right class: 0 background, then the tissues of the left hemisphere, then those of the
right (5 classes with ``classes=3``, 7 with 4). Why: the symmetric template's hemispheres look alike
pixel by pixel, so telling them apart needs context reaching the midline, the long-range context
attention and depth are meant to buy; on tissue alone the smallest and largest members of the ranking
benchmark's space tied within seed noise (2026-12-03 pilots). Such a task is not mirror-invariant:
``DatasetSpec.mirror_invariant`` is False and training does not flip it. Slices are cropped to the
brain's bounding box, padded square and resized to ``size`` (area interpolation of intensities and
probabilities, labels taken after resizing). Neighbouring slices are nearly identical, so the split is
by slab: consecutive runs of ``slab`` slices, every fourth run is validation, and the ``GAP`` training
slices touching a validation slab are dropped so no training slice borders a validation one.

Licence: the template carries the MNI notice "Copyright (C) 1993-2009 Louis Collins, McConnell Brain
Imaging Centre, Montreal Neurological Institute, McGill University", which permits use, copying,
modification and distribution for any purpose without fee with the notice kept; nilearn is BSD-3-Clause.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from training.data.errors import DatasetError
from training.data.transforms import EvalTransform

CLASS_NAMES = ("background", "csf/other", "grey matter", "white matter")
# classes=3 merges CSF/other into background: CSF (3.4% of pixels, thin sulci and ventricles) is the
# class a small model learns late and by chance, so its IoU swings 0.00-0.12 between seeds of one member
# (2026-12-02 pilots) and can dominate a ranking of architectures; the merged task keeps the tissue classes.
MERGED_CLASS_NAMES = ("background/csf", "grey matter", "white matter")
CLASS_COUNTS = (3, 4)
FILES = {volume: f"nilearn/datasets/data/mni_icbm152_{volume}_tal_nlin_sym_09a_converted.nii.gz" for volume in ("t1", "gm", "wm")}
OPTIONS = {"size": 64, "slab": 8, "classes": 4, "hemispheres": 1}
HEMISPHERE_COUNTS = (1, 2)
MIN_BRAIN_FRACTION = 0.05
VAL_EVERY = 4  # every fourth slab is validation (a quarter of the slices)
GAP = 2  # training slices dropped on each side of a validation slab
INSTALL_HINT = "install the package that ships it: pip install 'hrvit-nas[brain]' (nilearn, nibabel)"


def _volumes() -> dict[str, np.ndarray]:
    """The three volumes as float32 in [0, 1], axes (x, y, z), read from the installed nilearn wheel, and
    ``right``: 1 where the voxel's MNI x coordinate is positive (the right hemisphere, RAS)."""
    import importlib.metadata

    try:
        import nibabel

        distribution = importlib.metadata.distribution("nilearn")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        raise DatasetError(f"dataset mni152 reads the MNI ICBM152 template inside the nilearn wheel; {INSTALL_HINT}") from None
    volumes, affines = {}, {}
    for volume, relative in FILES.items():
        path = distribution.locate_file(relative)
        if not path.is_file():
            raise DatasetError(f"the installed nilearn lacks {relative}; reinstall it: pip install --force-reinstall nilearn")
        image = nibabel.load(str(path))
        volumes[volume], affines[volume] = np.asarray(image.dataobj, dtype=np.float32) / 255.0, image.affine
    grid = np.indices(volumes["t1"].shape, sparse=True)
    world_x = sum(affines["t1"][0, axis] * grid[axis] for axis in range(3)) + affines["t1"][0, 3]
    volumes["right"] = np.broadcast_to(world_x > 0, volumes["t1"].shape).astype(np.float32)
    return volumes


def class_names(classes: int, hemispheres: int = 1) -> tuple[str, ...]:
    """The class names of the task (classes 4: as labelled; 3: CSF/other merged into background;
    hemispheres 2: every tissue class once per hemisphere, left ones first)."""
    if classes not in CLASS_COUNTS:
        raise DatasetError(f"mni152 option classes={classes}; allowed: 4 (background, CSF, grey, white matter) or 3 (CSF merged into background)")
    if hemispheres not in HEMISPHERE_COUNTS:
        raise DatasetError(f"mni152 option hemispheres={hemispheres}; allowed: 1 (tissue only) or 2 (each tissue split into left and right)")
    names = CLASS_NAMES if classes == 4 else MERGED_CLASS_NAMES
    if hemispheres == 1:
        return names
    return (names[0], *(f"{name} (left)" for name in names[1:]), *(f"{name} (right)" for name in names[1:]))


def split_slices(count: int, slab: int) -> dict[str, list[int]]:
    """Slice indices 0..count-1 of each split: slabs of ``slab``, every ``VAL_EVERY``-th one for val."""
    val = [i for i in range(count) if (i // slab) % VAL_EVERY == VAL_EVERY - 1]
    near_val = {j for i in val for j in range(i - GAP, i + GAP + 1)}
    train = [i for i in range(count) if i not in near_val]
    return {"train": train, "val": val}


@functools.lru_cache(maxsize=4)
def slices(size: int, slab: int, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``uint8[N, size, size]`` T1 slices, ``int64[N, size, size]`` 4-class labels and ``bool[N, size, size]``
    right hemisphere of ``split`` (cached: built once)."""
    volumes = _volumes()
    brain = volumes["t1"] > 0
    kept = np.nonzero(brain.mean(axis=(0, 1)) >= MIN_BRAIN_FRACTION)[0]
    xs, ys = np.nonzero(brain.any(axis=(1, 2)))[0], np.nonzero(brain.any(axis=(0, 2)))[0]
    box = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1))
    chosen = kept[split_slices(len(kept), slab)[split]]

    def planes(volume: np.ndarray) -> torch.Tensor:
        """[N, 1, size, size]: (x, y) planes turned to image rows = anterior..posterior, padded square, resized."""
        stack = torch.from_numpy(np.ascontiguousarray(volume[box][:, :, chosen].transpose(2, 1, 0)[:, ::-1]))
        height, width = stack.shape[1:]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        stack = F.pad(stack, (left, side - width - left, top, side - height - top))
        return F.interpolate(stack[:, None], size=(size, size), mode="area")

    image = planes(volumes["t1"])
    inside = planes(brain.astype(np.float32)) >= 0.5
    grey, white = planes(volumes["gm"]), planes(volumes["wm"])
    tissue = torch.cat([(1 - grey - white).clamp(min=0), grey, white], dim=1).argmax(1, keepdim=True) + 1
    labels = torch.where(inside, tissue, torch.zeros_like(tissue))
    right = planes(volumes["right"]) >= 0.5
    return (image[:, 0] * 255).round().to(torch.uint8), labels[:, 0].to(torch.int64), right[:, 0]


class MNI152Slices(Dataset):
    """Axial slices of the MNI ICBM152 2009a template with 4 (or 3) tissue classes, optionally split by
    hemisphere (see the module docstring).

    Yields ``(image float[3, H, W] normalised, mask int64[H, W])`` like the other readers; the grey
    image is repeated on 3 channels so ImageNet-style models and transforms apply unchanged.
    """

    def __init__(self, split: str, size: int = OPTIONS["size"], slab: int = OPTIONS["slab"], transform: Callable | None = None,
                 classes: int = OPTIONS["classes"], hemispheres: int = OPTIONS["hemispheres"]) -> None:
        self.class_names = list(class_names(classes, hemispheres))
        self.images, self.masks, right = slices(size, slab, split)
        if classes == 3:  # CSF/other (1) joins background (0); grey and white matter move down to 1 and 2
            self.masks = (self.masks - 1).clamp(min=0)
        if hemispheres == 2:  # right-hemisphere tissue moves past the left hemisphere's classes
            self.masks = torch.where(right & (self.masks > 0), self.masks + (classes - 1), self.masks)
        self.num_classes = len(self.class_names)
        self.transform = transform if transform is not None else EvalTransform()

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8[3, H, W]`` image and ``int64[H, W]`` mask, before the transform."""
        return self.images[index].expand(3, -1, -1).clone(), self.masks[index].clone()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self.raw(index))
