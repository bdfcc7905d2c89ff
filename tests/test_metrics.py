"""Confusion-matrix metrics against hand-computed values, merging, and the JSON/CSV result files."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from training.metrics import ConfusionMatrix, write_metrics

# 3 classes, ignore 255. Pixels (target -> prediction):
#   0->0 x3, 0->1 x1, 1->1 x2, 1->0 x1, class 2 never occurs, 255 -> anything is skipped.
TARGET = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 255]])
PREDICTION = torch.tensor([[0, 0, 0, 1], [1, 1, 0, 2]])


def filled() -> ConfusionMatrix:
    matrix = ConfusionMatrix(3)
    matrix.update(PREDICTION[None], TARGET[None])
    return matrix


def test_matrix_counts_target_rows_prediction_columns_and_skips_ignore():
    assert filled().matrix.tolist() == [[3, 1, 0], [1, 2, 0], [0, 0, 0]]


def test_metrics_match_hand_computation():
    metrics = filled().compute()
    # IoU_0 = 3 / (4 + 4 - 3) = 0.6, IoU_1 = 2 / (3 + 3 - 2) = 0.5, class 2 absent everywhere -> NaN
    assert metrics["per_class_iou"][:2] == pytest.approx([0.6, 0.5])
    assert math.isnan(metrics["per_class_iou"][2])
    assert metrics["miou"] == pytest.approx(0.55)  # NaN class excluded from the mean
    assert metrics["pixel_accuracy"] == pytest.approx(5 / 7)
    assert metrics["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_class_predicted_but_absent_from_target_counts_as_zero_iou():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    metrics = matrix.compute()
    assert metrics["per_class_iou"][0] == pytest.approx(0.5)
    assert metrics["per_class_iou"][2] == 0.0 and math.isnan(metrics["per_class_iou"][1])
    assert metrics["miou"] == pytest.approx(0.25)
    assert math.isnan(metrics["per_class_accuracy"][2])  # no target pixels: accuracy undefined


def test_logits_are_reduced_by_argmax():
    logits = torch.nn.functional.one_hot(PREDICTION, 3).permute(2, 0, 1).float()[None] * 5
    matrix = ConfusionMatrix(3)
    matrix.update(logits, TARGET[None])
    assert torch.equal(matrix.matrix, filled().matrix)


def test_merge_of_shards_equals_one_pass():
    left, right = ConfusionMatrix(3), ConfusionMatrix(3)
    left.update(PREDICTION[:1], TARGET[:1])
    right.update(PREDICTION[1:], TARGET[1:])
    assert torch.equal(left.merge(right).matrix, filled().matrix)
    assert torch.equal(filled().all_reduce().matrix, filled().matrix)  # no process group: unchanged
    with pytest.raises(ValueError):
        left.merge(ConfusionMatrix(4))


def test_rejects_out_of_range_labels_and_shape_mismatch():
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="0..2"):
        matrix.update(torch.tensor([[0]]), torch.tensor([[7]]))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        matrix.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert matrix.matrix.sum() == 0  # a rejected update adds nothing


def test_empty_matrix_reports_nan_not_an_error():
    metrics = ConfusionMatrix(2).compute()
    assert math.isnan(metrics["miou"]) and math.isnan(metrics["pixel_accuracy"])


def test_json_and_csv_results(tmp_path):
    matrix = filled()
    document = matrix.to_json_dict(class_names=["sky", "road", "car"])
    assert document["per_class"][2] == {"class": "car", "iou": None, "accuracy": None, "target_pixels": 0, "predicted_pixels": 0}
    assert document["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [0, 0, 0]]

    write_metrics(matrix.compute(), tmp_path / "eval.json", tmp_path / "eval.csv", class_names=["sky", "road", "car"])
    stored = json.loads((tmp_path / "eval.json").read_text())  # strict JSON: no NaN tokens
    assert stored["miou"] == pytest.approx(0.55) and stored["per_class"][0]["iou"] == pytest.approx(0.6)
    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    assert [row["class"] for row in rows] == ["sky", "road", "car"]
    assert float(rows[1]["iou"]) == pytest.approx(0.5) and rows[2]["iou"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.csv", "eval.json"]  # no temporaries left

    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        write_metrics(matrix.compute(), tmp_path / "other.json", class_names=["a", "b"])
    assert not (tmp_path / "other.json").exists()
