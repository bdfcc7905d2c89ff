"""training.deploy and the Bundle writer: what ``hrvit-nas export`` relies on, tested without a study."""

from __future__ import annotations

import pytest
import torch

from hrvit_space import ArchConfig, HeadConfig
from training import Bundle, ExportError, TrainRecipe, compare_outputs, initialised_model, load_bundle


def test_output_check_rejects_a_mismatch():
    reference = [torch.zeros(2, 3)]
    assert compare_outputs("ONNX", reference, [torch.full((2, 3), 1e-6)]) == pytest.approx(1e-6)
    with pytest.raises(ExportError, match="ONNX output differs from PyTorch"):
        compare_outputs("ONNX", reference, [torch.full((2, 3), 0.1)])


def test_a_written_bundle_reads_back_with_its_weights(tmp_path):
    config = ArchConfig(channels=(8, 16), depths=((1,), (1, 1)), window_sizes=(1, 1), mlp_ratios=(2, 2), dim_head=8,
                        head=HeadConfig(width=16, num_classes=4), input_size=(32, 32), name="tiny")
    model = initialised_model(config)
    written = Bundle(config, TrainRecipe.for_dataset("synthetic"), None, {"trial": 3}).write(tmp_path, weights=model.state_dict())
    assert written == load_bundle(tmp_path)
    assert written.config == config and written.metrics == {"trial": 3} and written.weights_path == tmp_path / "weights.pt"
    state = torch.load(written.weights_path, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
