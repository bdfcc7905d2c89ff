"""Augmentation for (image, mask) pairs.

Readers hand over ``image: uint8[3, H, W]`` and ``mask: int64[H, W]``; a transform returns
``image: float32[3, h, w]`` (ImageNet-normalised) and ``mask: int64[h, w]``. Masks are only ever
resized with nearest-neighbour and padded with ``ignore_index``, so they never hold invented labels.

Crop, flip and the photometric distortion come from kornia (its ``AugmentationSequential`` applies the
same geometric draw to image and mask and leaves masks out of colour changes). The random resize
(its output size differs per sample) and the ignore-padding (kornia pads masks with the image fill)
are a few lines of torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import kornia.enhance
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


def rescale_size(size: tuple[int, int], image_scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio size fitting ``image_scale`` = (long side, short side), as in mmseg's ``Resize``.

    ADE20K uses (2048, 512): the short side becomes 512 unless that makes the long side exceed 2048.
    """
    height, width = size
    long_edge, short_edge = max(image_scale), min(image_scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return (max(1, round(height * factor)), max(1, round(width * factor)))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float ``[N, 3, H, W]`` batch (anti-aliased when shrinking)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer ``[H, W]`` mask: labels are copied, never blended."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def normalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Map a ``[0, 1]`` image (``[3, H, W]`` or ``[N, 3, H, W]``) to zero-mean unit-std channels."""
    batched = image if image.dim() == 4 else image[None]
    out = kornia.enhance.normalize(batched, torch.tensor(mean), torch.tensor(std))
    return out if image.dim() == 4 else out[0]


def _to_unit_float(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float()


class TrainTransform:
    """Random resize (``scale_range`` x base size), ignore-padded random crop, flip, photometric distortion.

    The base size is the image's own size, or ``image_scale`` = (long, short) as in the paper's mmseg
    recipes (ADE20K (2048, 512), Cityscapes (2048, 1024)). All randomness comes from torch's global
    generator, which DataLoader seeds per worker and a checkpoint's RNG state covers.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        ignore_index: int = 255,
        *,
        image_scale: Sequence[int] | None = None,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.crop_size = _pair(crop_size)
        self.scale_range = (float(low), float(high))
        self.ignore_index = ignore_index
        self.image_scale = _pair(image_scale) if image_scale is not None else None
        self.mean, self.std = tuple(mean), tuple(std)
        steps: list[K.AugmentationBase2D] = [K.RandomCrop(self.crop_size), K.RandomHorizontalFlip(p=flip_prob)]
        if photometric:
            # mmseg's PhotoMetricDistortion ranges: brightness +-32/255, contrast and saturation x[0.5, 1.5],
            # hue +-18 OpenCV units (= 0.1 of the colour circle).
            steps.append(K.ColorJiggle(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=0.1, p=0.5))
        self.augment = K.AugmentationSequential(*steps, data_keys=["input", "mask"])

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = _to_unit_float(image)[None]
        base = tuple(image.shape[-2:]) if self.image_scale is None else rescale_size(tuple(image.shape[-2:]), self.image_scale)
        low, high = self.scale_range
        ratio = low + (high - low) * float(torch.rand(()))
        size = (max(1, round(base[0] * ratio)), max(1, round(base[1] * ratio)))
        image, mask = resize_image(image, size), resize_mask(mask, size)

        pad_bottom = max(self.crop_size[0] - size[0], 0)
        pad_right = max(self.crop_size[1] - size[1], 0)
        if pad_bottom or pad_right:
            image = F.pad(image, (0, pad_right, 0, pad_bottom), value=0.0)
            mask = F.pad(mask, (0, pad_right, 0, pad_bottom), value=self.ignore_index)

        image, mask_float = self.augment(image, mask[None, None].float())
        return normalize(image[0].clamp_(0.0, 1.0), self.mean, self.std), mask_float[0, 0].round().long()


class EvalTransform:
    """Normalise; optionally rescale the *image* to ``image_scale`` while the mask keeps its size.

    Keeping the mask at full resolution is the standard protocol: predictions are upsampled to the
    original label size before scoring (see ``training.inference.evaluate``).
    """

    def __init__(
        self,
        image_scale: Sequence[int] | None = None,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.image_scale = _pair(image_scale) if image_scale is not None else None
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = _to_unit_float(image)
        if self.image_scale is not None:
            image = resize_image(image[None], rescale_size(tuple(image.shape[-2:]), self.image_scale))[0]
        return normalize(image, self.mean, self.std), mask.long()
