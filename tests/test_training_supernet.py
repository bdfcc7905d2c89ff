"""Supernet training (sandwich rule + distillation), the data-driven estimators and rank-check."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from scipy.stats import kendalltau

from hrvit_nas.errors import UserError
from hrvit_space.config import ConfigError
from hrvit_space.space import SearchSpace
from search.estimators import make_estimator
from test_training import SPEC, run_cli, tiny_config
from training.estimators import ShortTrainEstimator, SupernetEstimator
from training.recipe import TrainRecipe
from training.accuracy_predictor import fit_from_supernet
from training.rank_check import correlations, rank_check, seed_agreement, top_overlap
from training.supernet_train import distillation_loss, load_supernet, sandwich_members, train_supernet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SPACE = {
    "base": {"channels": [16, 32], "dim_head": 8, "input_size": [32, 32], "drop_path_rate": 0.0,
             "head": {"kind": "segformer", "width": 32, "num_classes": 4, "dropout": 0.0}},
    "depths": [[[1]], [[1, 2], [1, 2]]],
    "windows": [[1, 2], [1, 2]],
    "mlp_ratios": [[2, 4]] * 2,
}


@pytest.fixture(scope="module")
def trained_supernet(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("supernet")
    recipe = TrainRecipe.for_spec(SPEC, iterations=16, batch_size=4, lr=8e-3, warmup_iters=4, eval_interval=0, checkpoint_interval=0)
    path = train_supernet(SearchSpace.from_dict(TINY_SPACE), recipe, out, device="cpu", random_members=1, log=lambda _: None)
    yield path
    torch.set_num_threads(threads)


def test_sandwich_members_are_largest_smallest_and_seeded_random():
    space = SearchSpace.from_dict(TINY_SPACE)
    members = sandwich_members(space, seed=0, iteration=5, random_members=2)
    assert members[0] == space.largest() and members[1] == space.smallest() and len(members) == 4
    assert sandwich_members(space, 0, 5, 2) == members
    assert any(sandwich_members(space, 0, it, 2)[2:] != members[2:] for it in range(6, 12))


def test_distillation_loss_is_zero_only_when_student_matches_teacher():
    teacher = torch.randn(2, 4, 8, 8)
    assert distillation_loss(teacher.clone(), teacher, "kl").item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(torch.randn(2, 4, 8, 8), teacher, "kl").item() > 0.01
    hard_target = torch.nn.functional.one_hot(teacher.argmax(1), 4).permute(0, 3, 1, 2).float() * 20
    assert distillation_loss(hard_target, teacher, "hard").item() < 1e-6


def test_labels_mode_trains_every_member_on_the_labels(tmp_path):
    recipe = TrainRecipe.for_spec(SPEC, iterations=2, batch_size=4, eval_interval=0, checkpoint_interval=0)
    path = train_supernet(SearchSpace.from_dict(TINY_SPACE), recipe, tmp_path, device="cpu", random_members=1, distill="labels",
                          log=lambda _: None)
    assert load_supernet(path)[1].base.head.num_classes == 4
    losses = [float(line.split(",")[1]) for line in (tmp_path / "train_log.csv").read_text().splitlines()[1:]]
    # Three members each add a label cross-entropy near ln(4) at the start (distillation would add ~0 for clones).
    assert losses and losses[0] > 3 * 0.8 * math.log(4), losses
    with pytest.raises(UserError, match="allowed: kl, hard, labels"):
        train_supernet(SearchSpace.from_dict(TINY_SPACE), recipe, tmp_path / "bad", device="cpu", distill="soft")


def test_supernet_trains_and_its_estimator_scores_members(trained_supernet):
    supernet, space, recipe = load_supernet(trained_supernet)
    assert recipe.iterations == 16 and space.base.head.num_classes == 4
    before = {k: v.clone() for k, v in supernet.state_dict().items()}

    estimator = make_estimator("supernet", checkpoint=str(trained_supernet), batches="2", val_samples="8", device="cpu", seed="0")
    assert isinstance(estimator, SupernetEstimator)
    largest, smallest = estimator.estimate(space.largest()), estimator.estimate(space.smallest())
    # Better than predicting the majority class everywhere (~0.17 mIoU): the shared weights learned.
    assert largest > 0.25 and smallest > 0.25, (largest, smallest)
    assert estimator.estimate(space.largest()) == largest  # deterministic
    # Estimation works on copies: the supernet's weights and BN statistics are untouched.
    assert all(torch.equal(before[k], v) for k, v in estimator.supernet.state_dict().items())
    # A config from the search (other head classes / input size) maps onto the supernet by its knobs.
    assert estimator.estimate(space.largest().replace(input_size=(64, 64))) == largest

    outside = space.largest().replace(depths=((1,), (3, 2)))
    with pytest.raises(ConfigError, match="depth_m1_b0"):
        estimator.estimate(outside)
    with pytest.raises(UserError, match="not in the supernet's space"):
        estimator.estimate(tiny_config(channels=(16, 48), mlp_ratios=(2, 2)))


def test_rank_check_reports_correlations_against_standalone_training(trained_supernet, tmp_path):
    predictor = fit_from_supernet(trained_supernet, 8, batches=1, val_samples=4, device="cpu", log=lambda _: None)
    assert predictor.target == {"metric_name": "mIoU, supernet-inherited", "unit": "0-1"}
    assert predictor.metrics["heldout_samples"] == 3 and predictor.metrics["heldout_mae"] < 0.5
    predictor.save(tmp_path / "predictor.json")
    result = rank_check(trained_supernet, None, members=4, train_iterations=2, device="cpu", batches=1, val_samples=4,
                        predictor=tmp_path / "predictor.json", reference_seeds=2, log=lambda _: None)
    scores = result.scores
    assert list(scores["member"][:2]) == ["largest", "smallest"] and scores["config_hash"].is_unique
    assert {"supernet", "zero-cost", "predictor", "standalone", "standalone:seed0", "standalone:seed1"} <= set(scores.columns)
    # the reference is the mean of its seeds, and its agreement with itself is reported beside the estimators
    assert scores["standalone"].tolist() == pytest.approx(((scores["standalone:seed0"] + scores["standalone:seed1"]) / 2).tolist())
    assert scores["standalone:seed0"].tolist() != scores["standalone:seed1"].tolist()  # the seeds train differently
    expected_agreement = kendalltau(scores["standalone:seed0"], scores["standalone:seed1"])[0]
    assert result.reference_agreement == pytest.approx(expected_agreement)
    assert f"standalone reproducibility: Kendall tau {expected_agreement:.3f} between its 2 seeds" in result.to_text()
    with pytest.raises(UserError, match="--reference-seeds 0"):
        rank_check(trained_supernet, None, members=4, reference_seeds=0)
    table = result.correlations.set_index("estimator")
    row = table.loc["supernet"]
    expected = kendalltau(scores["supernet"], scores["standalone"])[0]
    assert (math.isnan(expected) and math.isnan(row["kendall_tau"])) or row["kendall_tau"] == pytest.approx(expected)
    assert row["measures"] == "mIoU, supernet-inherited" and table.loc["predictor", "measures"] == "mIoU, predicted"
    assert 0 <= row["top3_overlap"] <= 1
    text = result.to_text()
    assert "kendall tau [95% CI]" in text and "top3 overlap" in text and "mIoU, supernet-inherited" in text


def test_rank_statistics_intervals_and_top_overlap():
    import pandas as pd

    reference = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    scores = pd.DataFrame({"standalone": reference, "same": reference, "reversed": reference[::-1],
                           "noisy": [0.2, 0.1, 0.4, 0.3, 0.6, 0.5, 0.8, 0.7, 1.0, 0.9]})
    table = correlations(scores, ["same", "reversed", "noisy"], resamples=500).set_index("estimator")
    assert table.loc["same", "kendall_tau"] == pytest.approx(1.0) and table.loc["same", "kendall_tau_low"] == pytest.approx(1.0)
    assert table.loc["reversed", "kendall_tau_high"] == pytest.approx(-1.0) and table.loc["reversed", "top3_overlap"] == 0
    noisy = table.loc["noisy"]
    assert noisy["kendall_tau_low"] < noisy["kendall_tau"] < noisy["kendall_tau_high"] <= 1
    assert noisy["spearman_rho_low"] < noisy["spearman_rho"] <= noisy["spearman_rho_high"]
    assert noisy["top3_overlap"] == pytest.approx(2 / 3)  # best three: 1.0, 0.9, 0.8 vs 0.9, 1.0, 0.7
    assert top_overlap([3, 2, 1], [1, 2, 3], k=1) == 0 and top_overlap([1, 2, 3], [1, 2, 3], k=2) == 1
    seeds = pd.DataFrame({"a": reference, "b": reference, "c": reference[::-1]})
    assert seed_agreement(seeds[["a", "b"]]) == pytest.approx(1.0) and seed_agreement(seeds[["a", "c"]]) == pytest.approx(-1.0)
    assert seed_agreement(seeds) == pytest.approx((1 - 1 - 1) / 3)  # the mean over the three pairs


def test_supernet_training_and_estimators_form_no_import_circle():
    import ast
    import inspect

    import training.supernet_train as module

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module))) if isinstance(node, ast.ImportFrom)}
    assert "training.estimators" not in imported and "training.evaluation" in imported


def test_short_train_prunes_only_single_objective_studies():
    estimator = ShortTrainEstimator(data="synthetic:num_samples=16,val_samples=8,size=32,num_classes=4",
                                    iterations="4", eval_points="2", batch_size="4", device="cpu")
    config = tiny_config()

    class PruneAlways(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    single = optuna.create_study(direction="maximize", pruner=PruneAlways())
    trial = single.ask()
    with pytest.raises(optuna.TrialPruned, match="after 2 iterations"):
        estimator.estimate(config, trial)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values.keys() == {2}

    multi = optuna.create_study(directions=["maximize", "minimize"], pruner=PruneAlways())
    trial = multi.ask()
    score = estimator.estimate(config, trial)
    assert 0 <= score <= 1 and score == estimator.estimate(config)  # same training, same score
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {}


def test_short_train_with_another_seed_shares_the_data_and_trains_as_that_seed_would():
    data = "synthetic:num_samples=8,val_samples=4,size=32,num_classes=4"
    options = dict(iterations="3", eval_points="1", batch_size="4", device="cpu")
    estimator = ShortTrainEstimator(data=data, seed=0, **options)
    reseeded = estimator.with_seed(5)
    assert reseeded.train_set is estimator.train_set and reseeded.val_set is estimator.val_set
    assert (estimator.recipe.seed, reseeded.recipe.seed) == (0, 5)
    config = tiny_config()
    score = reseeded.estimate(config)
    assert score == ShortTrainEstimator(data=data, seed=5, **options).estimate(config) != estimator.estimate(config)


def test_short_train_trains_on_crops_and_validates_on_whole_images():
    estimator = ShortTrainEstimator(data="synthetic:num_samples=8,val_samples=4,size=32,num_classes=4", iterations="1",
                                    eval_points="1", batch_size="2", crop="16", device="cpu")
    image, mask = estimator.train_set[0]
    assert image.shape[-2:] == mask.shape == (16, 16)
    assert estimator.val_set[0][1].shape == (32, 32)
    assert 0 <= estimator.estimate(tiny_config()) <= 1


def test_estimator_options_are_validated():
    with pytest.raises(UserError, match="checkpoint=PATH"):
        SupernetEstimator()
    with pytest.raises(UserError, match="iterations='many'"):
        ShortTrainEstimator(data="synthetic", iterations="many")
    with pytest.raises(UserError, match="crop=0"):
        ShortTrainEstimator(data="synthetic", crop=0)
    with pytest.raises(UserError, match="data= is required"):
        ShortTrainEstimator()
    with pytest.raises(UserError, match="not found"):
        SupernetEstimator(checkpoint="/no/such/supernet.pt")


def test_cli_train_supernet_and_rank_check(tmp_path, capsys, trained_supernet):
    (tmp_path / "space.yaml").write_text(SearchSpace.from_dict(TINY_SPACE).to_yaml())
    data = "synthetic:num_samples=8,val_samples=4,size=32,num_classes=4"
    code = run_cli(["train-supernet", "--space", str(tmp_path / "space.yaml"), "--data", data, "--iterations", "1",
                    "--out", str(tmp_path / "sn"), "--device", "cpu", "--init", str(trained_supernet)])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "sn" / "supernet.pt").is_file() and "supernet written" in out
    assert "initialised" in out and "kept fresh" not in out  # every tensor came from the other supernet

    assert run_cli(["train-supernet", "--space", str(tmp_path / "nope.yaml"), "--data", data, "--out", str(tmp_path / "x")]) == 2
    assert "search space file" in capsys.readouterr().err
    assert run_cli(["rank-check", "--supernet", str(tmp_path / "missing.pt"), "--members", "3"]) == 2
    assert "not found" in capsys.readouterr().err
    assert run_cli(["rank-check", "--supernet", str(trained_supernet), "--members", "2"]) == 2
    assert "at least 3 members" in capsys.readouterr().err
    assert run_cli(["rank-check", "--supernet", str(trained_supernet), "--estimators", "oracle"]) == 2
    assert "unknown estimator 'oracle'" in capsys.readouterr().err
    assert run_cli(["rank-check", "--supernet", str(trained_supernet), "--reference-seeds", "0"]) == 2
    assert "--reference-seeds 0" in capsys.readouterr().err

    predictor = tmp_path / "predictor.json"
    code = run_cli(["fit-predictor", "--supernet", str(trained_supernet), "--samples", "8", "--batches", "1",
                    "--val-samples", "4", "--device", "cpu", "--out", str(predictor)])
    assert code == 0 and predictor.is_file() and '"heldout_kendall_tau"' in capsys.readouterr().out
    assert run_cli(["fit-predictor", "--supernet", str(trained_supernet), "--samples", "4", "--out", str(tmp_path / "p2.json")]) == 2
    assert "at least 8" in capsys.readouterr().err and not (tmp_path / "p2.json").exists()
