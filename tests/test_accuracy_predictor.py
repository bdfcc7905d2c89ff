"""The accuracy predictor: fitted on (member, score) pairs, measured on held-out members, saved as JSON."""

from __future__ import annotations

import json
import random

import pytest
import torch

from hrvit_space.space import SearchSpace
from search.estimators import make_estimator
from training.accuracy_predictor import AccuracyPredictor, PredictorError, features, fit_predictor
from training.rank_check import distinct_members

SPACE = {
    "base": {"channels": [16, 32, 48], "dim_head": 8, "input_size": [64, 64], "drop_path_rate": 0.0,
             "head": {"kind": "segformer", "width": 32, "num_classes": 4, "dropout": 0.0}},
    "depths": [[[1]], [[1], [1, 3]], [[1], [1, 3], [1, 3]], [[1], [1, 2], [1, 3]]],
    "windows": [[1, 2], [2, 4], [2, 4]],
    "mlp_ratios": [[2, 4]] * 3,
}


@pytest.fixture(scope="module")
def samples():
    """40 members whose score grows with depth and width of the knobs plus noise (a learnable, known trend)."""
    space = SearchSpace.from_dict(SPACE)
    configs = distinct_members(space, 40, seed=0)
    rng = random.Random(1)
    scores = [0.3 + 0.04 * float(row.sum()) + rng.gauss(0, 0.01) for row in features(space, configs)]
    return space, configs, scores


def test_fit_ranks_held_out_members_and_round_trips_through_json(samples, tmp_path):
    space, configs, scores = samples
    predictor = fit_predictor(space, configs, scores, seed=0, target={"metric_name": "mIoU, supernet-inherited", "unit": "0-1"})
    metrics = predictor.metrics
    assert metrics["heldout_samples"] == 10 and metrics["train_samples"] == 30
    assert metrics["heldout_kendall_tau"] > 0.6 and metrics["heldout_mae"] < 0.05, metrics

    path = tmp_path / "predictor.json"
    predictor.save(path)
    stored = json.loads(path.read_text())  # plain JSON: no pickle anywhere
    assert stored["metrics"] == metrics and stored["target"]["metric_name"] == "mIoU, supernet-inherited"
    loaded = AccuracyPredictor.load(path)
    assert loaded.predict(configs[:5]) == pytest.approx(predictor.predict(configs[:5]), abs=1e-6)
    # Same samples and seed, same predictor: a refit reproduces the stored numbers.
    assert fit_predictor(space, configs, scores, seed=0).predict(configs[:2]) == predictor.predict(configs[:2])


def test_predictor_estimator_is_registered_and_maps_search_configs(samples, tmp_path):
    space, configs, scores = samples
    fit_predictor(space, configs, scores, seed=0).save(tmp_path / "p.json")
    estimator = make_estimator("predictor", predictor=str(tmp_path / "p.json"), input_size=(64, 64), device="cpu", seed=0)
    assert (estimator.metric_name, estimator.unit) == ("mIoU, predicted", "0-1")
    largest = space.largest()
    score = estimator.estimate(largest)
    # A search's config with its own input size still names the same member.
    assert estimator.estimate(largest.replace(input_size=(128, 128))) == score
    assert estimator.estimate(space.largest()) > estimator.estimate(space.smallest())


def test_bad_predictor_files_and_too_few_samples_are_user_errors(samples, tmp_path):
    space, configs, scores = samples
    with pytest.raises(PredictorError, match="fit-predictor"):
        AccuracyPredictor.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PredictorError, match="not a predictor file"):
        AccuracyPredictor.load(tmp_path / "other.json")
    (tmp_path / "weights.pt").write_bytes(b"\x80\x04not json")
    with pytest.raises(PredictorError, match="not a predictor file"):
        AccuracyPredictor.load(tmp_path / "weights.pt")
    damaged = fit_predictor(space, configs, scores, seed=0).to_dict()
    damaged["layers"][0]["weight"] = [[1.0]]
    (tmp_path / "damaged.json").write_text(json.dumps(damaged))
    with pytest.raises(PredictorError, match="damaged"):
        AccuracyPredictor.load(tmp_path / "damaged.json")
    with pytest.raises(PredictorError, match="at least 8"):
        fit_predictor(space, configs[:5], scores[:5])
    with pytest.raises(PredictorError, match="predictor=PATH"):
        make_estimator("predictor")


def test_features_scale_each_knob_over_its_choices(samples):
    space, _, _ = samples
    largest, smallest = features(space, [space.largest(), space.smallest()])
    varying = torch.tensor([len(k.choices) > 1 for k in space.knobs()])
    assert torch.all(largest[varying] == 1) and torch.all(smallest == 0)
