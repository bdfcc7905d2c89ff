"""`hrvit-nas predict` writes the model's arg-max as palette PNGs (whole image, batched, sliding window);
`hrvit-nas evaluate` scores a trained model exactly as training's own evaluation does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hrvit_space.model import HRViT
from tests.test_training import run_cli, tiny_config, tiny_recipe
from training import train
from training.data.transforms import normalize
from training.inference import predict_sliding
from training.predict import palette

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    model = HRViT(tiny_config()).eval()
    directory = tmp_path / "bundle"
    directory.mkdir()
    tiny_config().save(directory / "config.yaml")
    tiny_recipe().save(directory / "train.yaml")  # crop 32x32
    torch.save(model.state_dict(), directory / "weights.pt")
    return directory, model


def write_images(directory, sizes) -> dict[str, np.ndarray]:
    directory.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for index, (height, width) in enumerate(sizes):
        images[f"img{index}"] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(images[f"img{index}"]).save(directory / f"img{index}.png")
    return images


def model_input(image: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)


def test_predict_writes_the_model_argmax_as_palette_pngs(bundle, tmp_path, capsys):
    directory, model = bundle
    # Three 32x32 images (two batches of --batch-size 2) and one larger than the 32x32 crop: sliding window.
    images = write_images(tmp_path / "images", [(32, 32), (32, 32), (32, 32), (40, 48)])
    code = run_cli(["predict", str(directory), str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                    "--batch-size", "2", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert "sliding window 32x32" in capsys.readouterr().out

    with torch.inference_mode():
        for name, image in images.items():
            x = model_input(image)
            if image.shape[:2] == (32, 32):
                logits = F.interpolate(model(x), size=image.shape[:2], mode="bilinear", align_corners=False)
            else:
                logits = predict_sliding(model, x, (32, 32), (24, 24), num_classes=4)
            expected = logits.argmax(1)[0].numpy()
            written = Image.open(tmp_path / "out" / f"{name}.png")
            assert written.mode == "P"
            np.testing.assert_array_equal(np.array(written), expected, err_msg=name)
            assert np.array(written.getpalette()[:12]).reshape(4, 3).tolist() == palette(4).tolist()
            overlay = np.array(Image.open(tmp_path / "out" / "overlay" / f"{name}.png"))
            assert overlay.shape == image.shape
            blended = (0.5 * image + 0.5 * palette(4)[expected]).round().clip(0, 255)
            np.testing.assert_allclose(overlay, blended, atol=1)


def test_predict_and_evaluate_a_training_run(tmp_path, capsys):
    train(tiny_config(), tiny_recipe(iterations=2), tmp_path / "run", device="cpu", log=lambda _: None)
    images = write_images(tmp_path / "images", [(32, 32)])
    for source in ("run", "run/best.pt", "run/checkpoint.pt", "run/weights.pt"):
        assert run_cli(["predict", str(tmp_path / source), str(tmp_path / "images" / "img0.png"), "--out",
                        str(tmp_path / "out"), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert np.array(Image.open(tmp_path / "out" / "img0.png")).shape == images["img0"].shape[:2]

    assert run_cli(["evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scored["miou"] == pytest.approx(trained["miou"]) and scored["per_class"] == trained["per_class"]
    assert f"mIoU {trained['miou']:.4f}  aAcc {trained['pixel_accuracy']:.4f}" in out and "background" in out


@pytest.mark.parametrize("argv, message", [
    (["predict", "{bundle}", "{tmp}/none", "--out", "{tmp}/o"], "not found; pass an image file or a directory"),
    (["predict", "{tmp}/none", "{tmp}/images", "--out", "{tmp}/o"], "model .* not found"),
    (["predict", "{bundle}", "{tmp}/images", "--out", "{tmp}/o", "--mode", "tiles"], "--mode 'tiles' unknown"),
    (["predict", "{bundle}", "{tmp}/images", "--out", "{tmp}/o", "--crop", "0x3"], "--crop '0x3'"),
    (["predict", "{bundle}/config.yaml", "{tmp}/images", "--out", "{tmp}/o"], "cannot be read"),
    (["evaluate", "{bundle}", "--data", "synthetic:num_classes=7"], "7 classes, the model predicts 4"),
])
def test_predict_and_evaluate_bad_input_exit_2(bundle, tmp_path, capsys, argv, message):
    import re

    write_images(tmp_path / "images", [(32, 32)])
    argv = [a.format(bundle=bundle[0], tmp=tmp_path) for a in argv]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(message, err), err
    assert not (tmp_path / "o").exists()
