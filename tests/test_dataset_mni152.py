"""The mni152 kind on the real template files shipped in the nilearn wheel (installed by the `test` extra)."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from training.data import DatasetError, DatasetSpec, build_dataset
from training.data import mni152
from training.recipe import TrainRecipe


def test_slices_are_real_image_mask_pairs_with_four_classes():
    spec = DatasetSpec.parse("mni152:size=48")
    train, val = build_dataset(spec, "train"), build_dataset(spec, "val")
    assert spec.num_classes == 4 and train.class_names == list(mni152.CLASS_NAMES)
    assert len(train) > 80 and len(val) > 25  # the template gives ~120 brain slices; a quarter is val
    image, mask = train.raw(len(train) // 2)
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8 and mask.shape == (48, 48)
    assert torch.equal(image[0], image[1])  # the grey T1 on three channels
    assert set(mask.unique().tolist()) == {0, 1, 2, 3}  # a mid-brain slice holds every tissue
    assert (image[0][mask == 0] == 0).float().mean() > 0.9  # background is outside the skull-stripped brain
    # White matter is brighter than grey matter on T1: the labels fit the image, not just its shape.
    assert image[0][mask == 3].float().mean() > image[0][mask == 2].float().mean() + 20
    normalised, same_mask = train[0]
    assert normalised.dtype == torch.float32 and torch.equal(same_mask, train.raw(0)[1])


def test_classes_3_merges_csf_into_background_and_keeps_the_tissues():
    four, three = DatasetSpec.parse("mni152:size=32"), DatasetSpec.parse("mni152:size=32,classes=3")
    assert (four.num_classes, three.num_classes) == (4, 3) and DatasetSpec.from_dict(three.to_dict()) == three
    original, merged = build_dataset(four, "train"), build_dataset(three, "train")
    assert merged.class_names == list(mni152.MERGED_CLASS_NAMES) and merged.num_classes == 3
    assert torch.equal(merged.images, original.images)
    # Background and CSF become label 0; grey and white matter keep their pixels as labels 1 and 2.
    assert torch.equal(merged.masks == 0, original.masks <= 1)
    assert torch.equal(merged.masks == 1, original.masks == 2) and torch.equal(merged.masks == 2, original.masks == 3)
    assert original.masks.max() == 3  # merging did not alter the cached 4-class slices
    with pytest.raises(DatasetError, match="classes=5; allowed: 4"):
        DatasetSpec.parse("mni152:classes=5")
    with pytest.raises(DatasetError, match="has 3 classes"):
        DatasetSpec(kind="mni152", num_classes=4, options={"classes": 3})


def test_hemispheres_2_splits_each_tissue_at_the_midline_and_training_does_not_flip():
    from training.trainer import build_train_set

    tissue, sides = DatasetSpec.parse("mni152:size=48,classes=3"), DatasetSpec.parse("mni152:size=48,classes=3,hemispheres=2")
    assert sides.num_classes == 5 and DatasetSpec.from_dict(sides.to_dict()) == sides
    merged, split = build_dataset(tissue, "val"), build_dataset(sides, "val")
    assert split.class_names == ["background/csf", "grey matter (left)", "white matter (left)", "grey matter (right)", "white matter (right)"]
    assert torch.equal(split.images, merged.images)
    # Folding the sides back gives the tissue labels: nothing but the hemisphere changed.
    assert torch.equal(torch.where(split.masks > 2, split.masks - 2, split.masks), merged.masks)
    # Image columns run along MNI x (left to right): left tissue lies left of the centre, right tissue right of it.
    columns = torch.arange(48).expand_as(split.masks)
    left, right = columns[(split.masks == 1) | (split.masks == 2)], columns[split.masks >= 3]
    assert left.max() < right.min() and abs(float(left.max() + right.min()) / 2 - 24) <= 1  # one plane, the centre
    assert left.float().mean() < 20 < 28 < right.float().mean()  # each side holds a hemisphere, not a sliver
    assert tissue.mirror_invariant and not sides.mirror_invariant
    recipe = TrainRecipe.for_spec(sides)
    assert all("Flip" not in type(step).__name__ or step.p == 0 for step in build_train_set(sides, recipe).transform.augment)
    assert any("Flip" in type(step).__name__ and step.p > 0 for step in build_train_set(tissue, recipe).transform.augment)
    with pytest.raises(DatasetError, match="hemispheres=3; allowed: 1"):
        DatasetSpec.parse("mni152:hemispheres=3")


def test_split_by_slab_keeps_a_gap_between_train_and_val():
    split = mni152.split_slices(40, slab=4)
    assert split["val"] == [12, 13, 14, 15, 28, 29, 30, 31]
    assert not set(split["train"]) & set(split["val"])
    nearest = min(abs(t - v) for t in split["train"] for v in split["val"])
    assert nearest == mni152.GAP + 1
    train, val = build_dataset(DatasetSpec.parse("mni152:size=32"), "train"), build_dataset(DatasetSpec.parse("mni152:size=32"), "val")
    assert not {bytes(x.numpy()) for x in train.images} & {bytes(x.numpy()) for x in val.images}


def test_slices_are_deterministic_across_builds():
    spec = DatasetSpec.parse("mni152:size=32,slab=6")
    mni152.slices.cache_clear()
    first = build_dataset(spec, "val").raw(3)
    mni152.slices.cache_clear()
    second = build_dataset(spec, "val").raw(3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_files_come_from_the_installed_wheel():
    distribution = importlib.metadata.distribution("nilearn")
    for relative in mni152.FILES.values():
        assert distribution.locate_file(relative).is_file()


def test_spec_round_trip_recipe_and_errors():
    spec = DatasetSpec.parse("mni152:size=40")
    assert DatasetSpec.from_dict(spec.to_dict()) == spec and spec.image_size == (40, 40)
    assert TrainRecipe.for_spec(spec).crop_size == (40, 40)
    with pytest.raises(DatasetError, match="unknown mni152 option"):
        DatasetSpec.parse("mni152:seed=1")
    with pytest.raises(DatasetError, match="no root directory"):
        DatasetSpec(kind="mni152", root="/data")
    with pytest.raises(DatasetError, match="has 4 classes"):
        DatasetSpec(kind="mni152", num_classes=3)


def test_missing_nilearn_names_the_extra(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DatasetError, match=r"hrvit-nas\[brain\]"):
        mni152._volumes()
