"""Dataset readers on tiny generated directories, the synthetic dataset, and image+mask augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from hrvit_nas.errors import UserError
from training.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSpec,
    EvalTransform,
    SyntheticSegmentation,
    TrainTransform,
    build_dataset,
)
from training.metrics import ConfusionMatrix

# ----------------------------------------------------------------------------- helpers


def write_image(path: Path, height: int = 12, width: int = 16, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, labels: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def label_grid(height: int = 12, width: int = 16, values: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Vertical stripes cycling through ``values``."""
    return np.array(values)[(np.arange(width) // 3) % len(values)][None].repeat(height, axis=0)


def make_ade20k(root: Path) -> None:
    for folder in ("training", "validation"):
        for index in range(2):
            write_image(root / "images" / folder / f"ADE_{folder}_{index}.jpg", seed=index)
            write_mask(root / "annotations" / folder / f"ADE_{folder}_{index}.png", label_grid(values=(0, 1, 150)))


def make_cityscapes(root: Path) -> None:
    for split in ("train", "val"):
        for city in ("aachen", "bremen"):
            stem = f"{city}_000000_000019"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            write_mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", label_grid(values=(0, 18, 255)))


def make_folder(root: Path, classes: tuple[str, ...] = ("sky", "road", "car")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in ("train", "val"):
        for index in range(3):
            write_image(root / "images" / split / f"img{index}.png", seed=index)
            write_mask(root / "masks" / split / f"img{index}.png", label_grid(values=(0, 2, 255)), mode="P")


def assert_user_error(fn, *fragments: str) -> None:
    with pytest.raises(UserError) as info:
        fn()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value!s}"


# ----------------------------------------------------------------------------- DatasetSpec


def test_spec_parse_forms_and_derived_class_counts(tmp_path):
    make_folder(tmp_path / "mine", classes=("a", "b", "c", "d", "e"))
    assert DatasetSpec.parse("synthetic") == DatasetSpec(kind="synthetic", num_classes=4)
    spec = DatasetSpec.parse("synthetic:num_samples=64,size=32,seed=3,num_classes=6")
    assert spec.num_classes == 6 and spec.options == {"num_samples": 64, "size": 32, "seed": 3, "num_classes": 6}
    assert DatasetSpec.parse("ade20k:/data/ADEChallengeData2016").num_classes == 150
    assert DatasetSpec.parse("cityscapes:/data/cs").num_classes == 19
    assert DatasetSpec.parse(f"folder:{tmp_path / 'mine'}").num_classes == 5
    for original in (spec, DatasetSpec.parse("ade20k:/x")):
        assert DatasetSpec.from_dict(original.to_dict()) == original
    assert DatasetSpec.from_dict({"kind": "ade20k", "root": "/x"}).num_classes == 150


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("imagenet:/x", "ade20k:/path"),
        ("ade20k", "needs a root"),
        ("synthetic:colour=3", "unknown synthetic option(s) colour"),
        ("synthetic:size=big", "key=integer"),
        ("synthetic:num_classes", "key=integer"),
        ("folder:/does/not/exist", "classes.txt"),
    ],
)
def test_spec_parse_rejects_bad_text_with_the_accepted_forms(text, fragment):
    assert_user_error(lambda: DatasetSpec.parse(text), fragment)


def test_spec_rejects_contradicting_class_count_and_unknown_keys():
    assert_user_error(lambda: DatasetSpec(kind="ade20k", root="/x", num_classes=151), "150 classes")
    assert_user_error(lambda: DatasetSpec.from_dict({"kind": "ade20k", "path": "/x"}), "unknown: path")
    assert_user_error(lambda: DatasetSpec(kind="synthetic", options={"num_classes": 300}, ignore_index=255), "collides")


# ----------------------------------------------------------------------------- readers


def test_ade20k_reader_reduces_zero_label(tmp_path):
    make_ade20k(tmp_path)
    dataset = build_dataset(DatasetSpec.parse(f"ade20k:{tmp_path}"), "val")
    assert len(dataset) == 2 and dataset.num_classes == 150 and dataset.class_names[0] == "wall"
    image, mask = dataset[0]
    assert image.shape == (3, 12, 16) and image.dtype == torch.float32
    assert mask.shape == (12, 16) and mask.dtype == torch.int64
    # file labels 0 ("other"), 1, 150 become ignore, 0, 149
    assert mask[0, :9].tolist() == [255, 255, 255, 0, 0, 0, 149, 149, 149]


@pytest.mark.parametrize(
    "remove, fragments",
    [
        ("", ("does not exist",)),
        ("images/training", ("lacks images/training", "annotations/{training,validation}")),
        ("annotations/training", ("lacks annotations/training",)),
        ("annotations/training/ADE_training_1.png", ("1 of 2 images have no mask", "ADE_training_1.png")),
        ("images/training/*", ("holds no images",)),
    ],
)
def test_ade20k_reader_names_what_is_missing(tmp_path, remove, fragments):
    root = tmp_path / "ADEChallengeData2016"
    if remove:
        make_ade20k(root)
        for path in sorted(root.glob(remove), reverse=True):
            _remove(path)
    assert_user_error(lambda: build_dataset(DatasetSpec.parse(f"ade20k:{root}"), "train"), *fragments)


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        path.rmdir()
    else:
        path.unlink()


def test_cityscapes_reader_pairs_city_subfolders(tmp_path):
    make_cityscapes(tmp_path)
    dataset = build_dataset(DatasetSpec.parse(f"cityscapes:{tmp_path}"), "train")
    assert len(dataset) == 2 and dataset.num_classes == 19
    assert [p.parent.name for p, _ in dataset.pairs] == ["aachen", "bremen"]
    _, mask = dataset[1]
    assert mask[0, :9].tolist() == [0, 0, 0, 18, 18, 18, 255, 255, 255]


@pytest.mark.parametrize(
    "remove, fragments",
    [
        ("leftImg8bit/val", ("lacks leftImg8bit/val",)),
        ("gtFine/val", ("lacks gtFine/val",)),
        ("gtFine/val/bremen/bremen_000000_000019_gtFine_labelTrainIds.png", ("bremen_000000_000019_gtFine_labelTrainIds.png", "csCreateTrainIdLabelImgs")),
    ],
)
def test_cityscapes_reader_names_what_is_missing(tmp_path, remove, fragments):
    make_cityscapes(tmp_path)
    _remove(tmp_path / remove)
    assert_user_error(lambda: build_dataset(DatasetSpec.parse(f"cityscapes:{tmp_path}"), "val"), *fragments)


def test_folder_reader_reads_palette_masks_and_class_names(tmp_path):
    make_folder(tmp_path)
    dataset = build_dataset(DatasetSpec.parse(f"folder:{tmp_path}"), "train")
    assert len(dataset) == 3 and dataset.class_names == ["sky", "road", "car"]
    _, mask = dataset[2]
    assert mask[0, :9].tolist() == [0, 0, 0, 2, 2, 2, 255, 255, 255]


@pytest.mark.parametrize(
    "remove, fragments",
    [
        ("classes.txt", ("lacks classes.txt", "one class name per line")),
        ("masks/val", ("lacks masks/val",)),
        ("masks/val/img1.png", ("img1.png",)),
    ],
)
def test_folder_reader_names_what_is_missing(tmp_path, remove, fragments):
    make_folder(tmp_path)
    spec = DatasetSpec.parse(f"folder:{tmp_path}")  # parsed while classes.txt still exists
    _remove(tmp_path / remove)
    assert_user_error(lambda: build_dataset(spec, "val"), *fragments)


def test_folder_reader_rejects_bad_masks_when_read(tmp_path):
    make_folder(tmp_path)
    write_mask(tmp_path / "masks/train/img0.png", label_grid(values=(0, 7)))  # 7 >= 3 classes
    write_mask(tmp_path / "masks/train/img1.png", label_grid(height=5))  # wrong size
    Image.new("RGB", (16, 12)).save(tmp_path / "masks/train/img2.png")  # colour mask
    dataset = build_dataset(DatasetSpec.parse(f"folder:{tmp_path}"), "train")
    assert_user_error(lambda: dataset[0], "label 7 outside the 3 classes")
    assert_user_error(lambda: dataset[1], "img1.png", "must match")
    assert_user_error(lambda: dataset[2], "single-channel")
    (tmp_path / "images/train/img0.png").write_bytes(b"not a png")
    assert_user_error(lambda: dataset[0], "cannot read image", "img0.png")


def test_folder_class_list_mismatch_with_stored_spec(tmp_path):
    make_folder(tmp_path)
    spec = DatasetSpec.from_dict({"kind": "folder", "root": str(tmp_path), "num_classes": 5})
    assert_user_error(lambda: build_dataset(spec, "train"), "lists 3 classes")


def test_unknown_split_is_rejected():
    assert_user_error(lambda: build_dataset(DatasetSpec.parse("synthetic"), "test"), "train, val")


# ----------------------------------------------------------------------------- transforms

PALETTE = torch.tensor([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], dtype=torch.float32)


def blocky_pair(height: int = 40, width: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of 8x8 blocks and an image whose colour encodes the mask label."""
    blocks = torch.randint(0, 4, (height // 8 + 1, width // 8 + 1), generator=torch.Generator().manual_seed(1))
    mask = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:height, :width]
    image = PALETTE[mask].permute(2, 0, 1).to(torch.uint8)
    return image, mask


def decode_labels(image: torch.Tensor) -> torch.Tensor:
    """Nearest palette colour of each pixel of a normalised image."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = (image * std + mean) * 255
    distances = ((rgb.permute(1, 2, 0)[:, :, None, :] - PALETTE) ** 2).sum(-1)
    return distances.argmin(-1)


def test_train_transform_keeps_image_and_mask_aligned():
    image, mask = blocky_pair()
    transform = TrainTransform(48, scale_range=(0.5, 2.0), photometric=False)
    torch.manual_seed(0)
    for _ in range(12):
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 48, 48) and out_mask.shape == (48, 48) and out_mask.dtype == torch.int64
        labelled = out_mask != 255
        agreement = (decode_labels(out_image)[labelled] == out_mask[labelled]).float().mean()
        assert agreement > 0.93  # only bilinear-blended block borders may disagree


def test_train_transform_without_resize_is_exactly_aligned_and_flips():
    image, mask = blocky_pair()
    transform = TrainTransform(32, scale_range=(1.0, 1.0), photometric=False, flip_prob=1.0)
    out_image, out_mask = transform(image, mask)
    assert torch.equal(decode_labels(out_image), out_mask)
    # a horizontal flip of a crop is a mirrored window of the source mask
    windows = mask.flip(-1).unfold(0, 32, 1).unfold(1, 32, 1)
    assert (windows == out_mask).flatten(2).all(-1).any()


def test_train_transform_masks_hold_only_source_labels_or_ignore():
    image, mask = blocky_pair(20, 24)
    mask = torch.where(mask == 1, torch.tensor(5), mask)  # labels {0, 2, 3, 5}
    transform = TrainTransform(64, scale_range=(0.5, 2.0), ignore_index=200)
    torch.manual_seed(0)
    for _ in range(10):
        out_image, out_mask = transform(image, mask)
        assert set(out_mask.unique().tolist()) <= {0, 2, 3, 5, 200}
        assert (out_mask == 200).any()  # a 20x24 image (at most 2x) is padded up to 64x64 with ignore
        assert torch.isfinite(out_image).all()


def test_train_transform_image_scale_sets_the_base_size():
    image, mask = blocky_pair(40, 80)
    transform = TrainTransform(200, scale_range=(1.0, 1.0), image_scale=(400, 100), photometric=False)
    _, out_mask = transform(image, mask)
    assert (out_mask != 255).sum() == 100 * 200  # rescaled to short side 100, padded to 200x200


def test_eval_transform_rescales_image_but_keeps_mask():
    image, mask = blocky_pair(40, 56)
    out_image, out_mask = EvalTransform(image_scale=(112, 80))(image, mask)
    assert out_image.shape == (3, 80, 112) and torch.equal(out_mask, mask)
    plain, _ = EvalTransform()(image, mask)
    assert torch.equal(decode_labels(plain), mask)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_split_dependent():
    first = SyntheticSegmentation(num_samples=4, size=32, num_classes=5, seed=7)
    again = SyntheticSegmentation(num_samples=4, size=32, num_classes=5, seed=7)
    for index in (3, 0):  # order of access does not matter
        assert all(torch.equal(a, b) for a, b in zip(first[index], again[index]))
    other_seed = SyntheticSegmentation(num_samples=4, size=32, num_classes=5, seed=8)
    val = SyntheticSegmentation(num_samples=4, size=32, num_classes=5, seed=7, split="val")
    assert not torch.equal(first.raw(0)[0], other_seed.raw(0)[0])
    assert not torch.equal(first.raw(0)[0], val.raw(0)[0])
    labels = torch.cat([first.raw(i)[1].flatten() for i in range(4)]).unique().tolist()
    assert labels[0] == 0 and len(labels) >= 3 and max(labels) < 5


def test_synthetic_spec_sizes_and_validation():
    spec = DatasetSpec.parse("synthetic:num_samples=12,size=24,num_classes=3")
    train, val = build_dataset(spec, "train"), build_dataset(spec, "val")
    assert (len(train), len(val)) == (12, 3)
    image, mask = train[0]
    assert image.shape == (3, 24, 24) and int(mask.max()) < 3
    assert_user_error(lambda: SyntheticSegmentation(num_classes=1), "num_classes=1")


def test_synthetic_is_learnable_by_a_tiny_conv_net():
    """Colour and texture carry the class: a small conv net beats chance clearly in a short CPU run."""
    torch.manual_seed(0)
    num_classes, size = 4, 32
    train = SyntheticSegmentation(64, size, num_classes, seed=0)
    images, masks = (torch.stack(items) for items in zip(*(train[i] for i in range(len(train)))))
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, num_classes, 1),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-3)
    for _ in range(40):
        batch = torch.randint(0, len(train), (16,))
        loss = nn.functional.cross_entropy(net(images[batch]), masks[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    matrix = ConfusionMatrix(num_classes)
    with torch.no_grad():
        for images, masks in DataLoader(SyntheticSegmentation(16, size, num_classes, seed=0, split="val"), batch_size=8):
            matrix.update(net(images), masks)
    # always predicting the majority class (background) scores about 0.6 / 4 = 0.15
    assert matrix.compute()["miou"] > 0.5
