"""Whole-image and sliding-window inference, and evaluation over a loader, with small torch models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrvit_nas.errors import UserError
from training.inference import evaluate, predict_sliding, predict_whole

NUM_CLASSES = 3


def pixelwise_model() -> nn.Module:
    """Per-pixel (1x1 conv): translation-equivariant, so any window sees the same logits."""
    torch.manual_seed(0)
    return nn.Conv2d(3, NUM_CLASSES, kernel_size=1)


class QuarterResolution(nn.Module):
    """Like a segmentation head: logits at 1/4 of the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = pixelwise_model()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.avg_pool2d(images, 4, ceil_mode=True))


def labelled_batch(batch: int = 2, height: int = 24, width: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channel ``c`` is high exactly where the label is ``c`` (8x8 blocks)."""
    generator = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, NUM_CLASSES, (batch, height // 8, width // 8), generator=generator)
    masks = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = F.one_hot(masks, NUM_CLASSES).permute(0, 3, 1, 2).float() * 4 - 2
    return images, masks


def identity_classifier(model: nn.Module) -> nn.Module:
    conv = model.classifier if isinstance(model, QuarterResolution) else model
    with torch.no_grad():
        conv.weight.copy_(torch.eye(NUM_CLASSES)[:, :, None, None])
        conv.bias.zero_()
    return model


def test_predict_whole_upsamples_quarter_resolution_logits_to_the_image():
    model = QuarterResolution()
    images = torch.randn(2, 3, 32, 48)
    logits = predict_whole(model, images)
    assert logits.shape == (2, NUM_CLASSES, 32, 48)
    expected = F.interpolate(model(images), size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(logits, expected)


@pytest.mark.parametrize(
    "size, crop, stride",
    [
        ((37, 53), 16, 11),  # windows overlap unevenly; the last one is shifted back to the border
        ((32, 48), (16, 24), (16, 24)),  # tiling without overlap
        ((10, 12), 16, 8),  # image smaller than the crop: padded, then cut back
        ((20, 9), (8, 16), (5, 7)),  # smaller than the crop in one dimension only
    ],
)
def test_sliding_equals_whole_for_a_pixelwise_model(size, crop, stride):
    model = pixelwise_model()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        sliding = predict_sliding(model, images, crop, stride, NUM_CLASSES)
        whole = predict_whole(model, images)
    assert sliding.shape == whole.shape == (2, NUM_CLASSES, *size)
    assert torch.allclose(sliding, whole, atol=1e-5)


def test_sliding_averages_overlapping_windows():
    class WindowMean(nn.Module):
        """Each window predicts its own mean everywhere, so overlaps blend two different values."""

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean(dim=(1, 2, 3), keepdim=True).expand(-1, NUM_CLASSES, *images.shape[-2:])

    images = torch.zeros(1, 3, 1, 12)
    images[..., 8:] = 6.0  # windows [0, 8) mean 0, [4, 12) mean 3
    logits = predict_sliding(WindowMean(), images, (1, 8), (1, 4), NUM_CLASSES)
    assert logits[0, 0, 0].tolist() == [0.0] * 4 + [1.5] * 4 + [3.0] * 4


def test_sliding_rejects_stride_larger_than_crop():
    with pytest.raises(UserError, match="stride"):
        predict_sliding(pixelwise_model(), torch.randn(1, 3, 16, 16), crop=8, stride=9, num_classes=NUM_CLASSES)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_evaluate_scores_a_perfect_model_and_restores_train_mode(mode):
    model = identity_classifier(pixelwise_model()).train()
    images, masks = labelled_batch()
    masks[0, 0, :5] = 255
    metrics = evaluate(model, [(images, masks)], NUM_CLASSES, mode=mode, crop=16, stride=12)
    assert metrics["miou"] == 1.0 and metrics["pixel_accuracy"] == 1.0
    assert sum(metrics["target_pixels"]) == masks.numel() - 5
    assert model.training


def test_evaluate_upsamples_to_the_mask_resolution():
    """Images may be rescaled for inference while masks keep their original size."""
    model = identity_classifier(QuarterResolution())
    images, masks = labelled_batch(height=32, width=48)
    small_images = F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False)
    metrics = evaluate(model, [(small_images, masks)], NUM_CLASSES)
    assert sum(metrics["target_pixels"]) == masks.numel()
    assert metrics["pixel_accuracy"] > 0.8  # only block borders are blurred by the 1/8 effective stride


def test_evaluate_rejects_bad_modes():
    model = pixelwise_model()
    with pytest.raises(UserError, match="crop and stride"):
        evaluate(model, [], NUM_CLASSES, mode="slide")
    with pytest.raises(UserError, match="whole, slide"):
        evaluate(model, [], NUM_CLASSES, mode="tiles")
