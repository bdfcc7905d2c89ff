"""Using a trained model: segmentation maps for images (``hrvit-nas predict``) and scores on a dataset
(``hrvit-nas evaluate``).

A model comes from an export bundle or training run directory (config.yaml + weights.pt), or from a
run's ``checkpoint.pt`` / ``best.pt``, which carry their config. Maps are written as palette PNGs whose
pixel values are the class indices (read them back with ``numpy.array(PIL.Image.open(path))``), plus an
overlay of the colours on the image, like mmseg's ``--show-dir``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from hrvit_nas import UserError, atomic_path
from hrvit_space import ArchConfig
from training.bundle import CONFIG_FILE, load_bundle
from training.checkpoint import CheckpointError, load_checkpoint
from training.loop import BEST_FORMAT, TRAIN_FORMAT
from training.recipe import TrainRecipe

PREDICT_MODES = ("auto", "whole", "slide")
OVERLAY_DIR = "overlay"


@dataclass(frozen=True)
class TrainedModel:
    model: torch.nn.Module
    config: ArchConfig
    recipe: TrainRecipe


def load_trained_model(source: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The model of a bundle / run directory, or of a run's checkpoint.pt or best.pt, in eval mode."""
    from hrvit_space import HRViT

    source = Path(source)
    if source.is_dir():
        bundle = load_bundle(source)
        if bundle.weights_path is None:
            raise UserError(f"bundle {str(source)!r} has no weights.pt; train it first (`hrvit-nas train {source} --data SPEC`)")
        config, recipe, weights = bundle.config, bundle.recipe, load_checkpoint(bundle.weights_path)
    elif source.is_file():
        state = load_checkpoint(source)
        if isinstance(state, dict) and state.get("format") in (TRAIN_FORMAT, BEST_FORMAT) and "config" in state["meta"]:
            config = ArchConfig.from_dict(state["meta"]["config"])
            recipe, weights = TrainRecipe.from_dict(state["meta"]["recipe"]), state["model"]
        elif (source.parent / CONFIG_FILE).is_file():  # weights.pt inside a bundle
            bundle = load_bundle(source.parent)
            config, recipe, weights = bundle.config, bundle.recipe, state
        else:
            raise CheckpointError(f"{source} carries no architecture config; pass the bundle or run directory, "
                                  "or a checkpoint.pt / best.pt written by `hrvit-nas train`")
    else:
        raise UserError(f"model {str(source)!r} not found; pass a bundle or run directory, or its checkpoint.pt / best.pt")
    model = HRViT(config)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"the weights of {source} do not fit its config ({first}); re-export or re-train the bundle") from None
    return TrainedModel(model.to(device).eval(), config, recipe)


# ---------------------------------------------------------------------------------------- predict
def image_files(target: str | Path) -> list[Path]:
    """One image, or the images directly inside a directory (sorted)."""
    from training.data.datasets import IMAGE_SUFFIXES

    target = Path(target)
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise UserError(f"{str(target)!r} not found; pass an image file or a directory of images")
    images = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{target} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a directory of images")
    stems = defaultdict(list)
    for image in images:
        stems[image.stem].append(image.name)
    clashing = [names for names in stems.values() if len(names) > 1]
    if clashing:
        raise UserError(f"{target}: {' and '.join(clashing[0])} would write the same {clashing[0][0].rsplit('.', 1)[0]}.png; rename one")
    return images


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map: class index bits spread over the high bits of R, G and B, so
    neighbouring classes get clearly different colours. ``uint8[num_classes, 3]``."""
    ids = np.arange(num_classes)
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= (((ids >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return colours


def predict_images(
    trained: TrainedModel,
    images: Sequence[Path],
    out_dir: str | Path,
    *,
    mode: str = "auto",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    batch_size: int = 8,
    opacity: float = 0.5,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write ``<out>/<stem>.png`` (palette map) and ``<out>/overlay/<stem>.png`` per image; return the maps.

    ``auto`` runs the whole image at once unless it exceeds ``crop`` (default: the training crop) on a
    side, where it slides ``crop`` windows every ``stride``. Images of one size share a batch.
    """
    from training.data.datasets import read_image
    from training.data.transforms import normalize
    from training.inference import predict_sliding, predict_whole

    if mode not in PREDICT_MODES:
        raise UserError(f"--mode {mode!r} unknown; allowed: {', '.join(PREDICT_MODES)}")
    if batch_size < 1 or not 0 <= opacity <= 1:
        raise UserError(f"batch size {batch_size} / opacity {opacity}: use a batch size >= 1 and an opacity in [0, 1]")
    crop = crop or trained.recipe.crop_size
    stride = stride or trained.recipe.sliding_stride()
    num_classes = trained.config.head.num_classes
    colours = palette(max(num_classes, 256))  # a PNG palette has 256 entries
    out_dir = Path(out_dir)
    by_size: dict[tuple[int, int], list[tuple[Path, torch.Tensor]]] = defaultdict(list)
    for path in images:
        image = read_image(path)
        by_size[tuple(image.shape[-2:])].append((path, image))
    written = []
    for (height, width), group in by_size.items():
        slide = mode == "slide" or (mode == "auto" and (height > crop[0] or width > crop[1]))
        for first in range(0, len(group), batch_size):
            chunk = group[first : first + batch_size]
            batch = normalize(torch.stack([image for _, image in chunk]).float() / 255).to(device)
            with torch.inference_mode():
                logits = predict_sliding(trained.model, batch, crop, stride, num_classes) if slide else predict_whole(trained.model, batch)
            labels = logits.argmax(1).cpu().numpy()
            for (path, image), label in zip(chunk, labels):
                written.append(_write_prediction(out_dir, path.stem, image, label, colours, opacity))
        log(f"{len(group)} image(s) of {height}x{width}: {'sliding window ' + 'x'.join(map(str, crop)) if slide else 'whole image'}")
    return written


def _write_prediction(out_dir: Path, stem: str, image: torch.Tensor, label: np.ndarray, colours: np.ndarray, opacity: float) -> Path:
    if len(colours) <= 256:
        mask = Image.fromarray(label.astype(np.uint8), mode="P")
        mask.putpalette(colours.reshape(-1).tolist())
    else:  # more classes than a palette holds: a 16-bit index map
        mask = Image.fromarray(label.astype(np.uint16))
    path = out_dir / f"{stem}.png"
    with atomic_path(path) as tmp:
        mask.save(tmp, format="PNG")
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
    blended = (1 - opacity) * rgb + opacity * colours[label].astype(np.float32)
    with atomic_path(out_dir / OVERLAY_DIR / f"{stem}.png") as tmp:
        Image.fromarray(blended.round().clip(0, 255).astype(np.uint8)).save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------------------- evaluate
def evaluate_model(trained: TrainedModel, spec, *, mode: str | None = None,
                   device: torch.device | str = "cpu") -> tuple[dict[str, Any], list[str] | None]:
    """(metrics, class names): mIoU, per-class IoU, aAcc (pixel accuracy) and mAcc of the model on
    ``spec``'s validation split, with the training recipe's protocol unless ``mode`` (whole / slide) is given."""
    from training.trainer import build_val_set, make_evaluator

    if spec.num_classes != trained.config.head.num_classes:
        raise UserError(f"the dataset has {spec.num_classes} classes, the model predicts {trained.config.head.num_classes}; "
                        "evaluate on the dataset it was trained for")
    recipe = trained.recipe if mode is None else trained.recipe.replace(eval_mode=mode)
    val_set = build_val_set(spec)
    return make_evaluator(val_set, spec, recipe, torch.device(device))(trained.model), getattr(val_set, "class_names", None)
