"""Training recipes and export bundles: validation, round trips, clear errors."""

from __future__ import annotations

import json

import pytest

from hrvit_space.config import preset
from training import BundleError, RecipeError, TrainRecipe, load_bundle


def test_paper_defaults_for_ade20k_and_cityscapes():
    ade = TrainRecipe.for_dataset("ade20k")
    assert ade.crop_size == (512, 512) and ade.iterations == 160_000 and ade.batch_size == 16
    assert (ade.lr, ade.weight_decay, ade.warmup_iters, ade.poly_power, ade.head_lr_mult) == (6e-5, 0.01, 1500, 1.0, 10.0)
    assert ade.eval_mode == "whole"
    city = TrainRecipe.for_dataset("cityscapes")
    assert city.crop_size == (1024, 1024) and city.batch_size == 8 and city.iterations == 160_000
    assert city.eval_mode == "slide" and city.sliding_stride() == (768, 768)


def test_yaml_round_trip(tmp_path):
    recipe = TrainRecipe.for_dataset("synthetic", iterations=7, amp="bf16", grad_clip=1.0)
    recipe.save(tmp_path / "train.yaml")
    assert TrainRecipe.load(tmp_path / "train.yaml") == recipe
    assert TrainRecipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"lr": -1.0}, "lr"),
        ({"amp": "fp8"}, "amp"),
        ({"batch_size": 0}, "batch_size"),
        ({"crop_size": [64]}, "crop_size"),
        ({"eval_mode": "tiles"}, "eval_mode"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"grad_clip": 0}, "grad_clip"),
        ({"dataset": {"root": "/x"}}, "dataset"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    data = {**TrainRecipe.for_dataset("synthetic").to_dict(), **changes}
    with pytest.raises(RecipeError, match=f"recipe {field}"):
        TrainRecipe.from_dict(data)


def test_unknown_keys_and_unknown_kind_are_rejected(tmp_path):
    with pytest.raises(RecipeError, match="unknown key.*'learning_rate'"):
        TrainRecipe.from_dict({"learning_rate": 0.1})
    with pytest.raises(RecipeError, match="dataset kind.*ade20k"):
        TrainRecipe.for_dataset("imagenet")
    (tmp_path / "bad.yaml").write_text("lr: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        TrainRecipe.load(tmp_path / "bad.yaml")
    with pytest.raises(RecipeError, match="not found"):
        TrainRecipe.load(tmp_path / "missing.yaml")


def _bundle(tmp_path, weights=True, metrics=True):
    preset("b1").save(tmp_path / "config.yaml")
    TrainRecipe.for_dataset("ade20k").save(tmp_path / "train.yaml")
    if weights:
        (tmp_path / "weights.pt").write_bytes(b"stand-in")
    if metrics:
        (tmp_path / "metrics.json").write_text(json.dumps({"miou": 0.42}))
    return tmp_path


def test_load_bundle(tmp_path):
    bundle = load_bundle(_bundle(tmp_path))
    assert bundle.config == preset("b1")
    assert bundle.recipe == TrainRecipe.for_dataset("ade20k")
    assert bundle.weights_path == tmp_path / "weights.pt"
    assert bundle.metrics == {"miou": 0.42}
    bare = load_bundle(_bundle(tmp_path / "bare", weights=False, metrics=False))
    assert bare.weights_path is None and bare.metrics == {}


def test_bundle_errors_name_the_file(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    preset("b1").save(tmp_path / "half" / "config.yaml")
    with pytest.raises(BundleError, match="lacks train.yaml"):
        load_bundle(tmp_path / "half")
    bundle = _bundle(tmp_path / "broken")
    (bundle / "train.yaml").write_text("iterations: -3\n")
    with pytest.raises(BundleError, match=r"train\.yaml.*iterations"):
        load_bundle(bundle)
    (bundle / "train.yaml").write_text(TrainRecipe.for_dataset("ade20k").to_yaml())
    (bundle / "metrics.json").write_text("{not json")
    with pytest.raises(BundleError, match="metrics.json.*not valid JSON"):
        load_bundle(bundle)


def test_recipe_for_a_dataset_spec_uses_its_kind_and_synthetic_size():
    from training.data import DatasetSpec

    spec = DatasetSpec.parse("synthetic:num_samples=16,size=32")
    recipe = TrainRecipe.for_spec(spec, iterations=5)
    assert recipe.crop_size == (32, 32) and recipe.iterations == 5 and recipe.dataset == spec.to_dict()
    city = TrainRecipe.for_spec(DatasetSpec.parse("cityscapes:/data/cityscapes"))
    assert city == TrainRecipe.for_dataset("cityscapes", dataset=DatasetSpec.parse("cityscapes:/data/cityscapes").to_dict())
