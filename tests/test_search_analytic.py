"""The analytic counts the search screens with equal the profiler's traced counts (fvcore)."""

import pytest
import torch

from hrvit_space import SearchSpace, preset
from hrvit_space.config import HeadConfig
from hrvit_space.model import build_model
from profiling import analytic_counts, count_flops, count_params

# Odd input sides pad the attention strips; a 0-depth module-branch and a new branch per module.
SPACE = SearchSpace.from_dict({
    "base": {"channels": [16, 32, 64, 128], "depths": [[1], [1, 1], [1, 1, 1], [1, 1, 1, 1]], "dim_head": 8,
             "input_size": [70, 52], "head": {"kind": "segformer", "width": 32, "num_classes": 5}},
    "depths": [[[1, 2]], [[0, 1], [1]], [[1], [0, 2], [1]], [[1], [1], [1, 2], [1, 2]]],
    "windows": [[1, 3], [2], [1, 2], [1, 2]],
    "mlp_ratios": [[2, 3], [4], [2], [1, 2]],
})


def _nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


def _assert_equal_to_traced(config, batch: int = 1) -> None:
    model = build_model(config).eval()
    params, params_by_component, params_by_branch = count_params(model)
    with torch.no_grad():
        traced = count_flops(model, torch.zeros(batch, config.in_chans, *config.input_size))
    counts = analytic_counts(config, batch=batch)
    assert counts.params == params
    assert _nonzero(counts.params_by_component) == params_by_component
    assert counts.params_by_branch == params_by_branch
    assert counts.macs == traced.macs and counts.flops == traced.flops
    assert counts.macs_by_component == _nonzero(traced.macs_by_component)
    assert counts.macs_by_branch == _nonzero(traced.macs_by_branch)


@pytest.mark.parametrize("seed,head", [(0, "segformer"), (1, "classification"), (2, "none"), (3, "segformer")])
def test_analytic_counts_equal_the_traced_counts(seed, head):
    torch.set_num_threads(1)
    config = SPACE.sample(seed).replace(head=HeadConfig(kind=head, width=32, num_classes=5))
    _assert_equal_to_traced(config, batch=2 if seed == 3 else 1)


def test_analytic_counts_of_the_b1_preset_at_a_small_input():
    torch.set_num_threads(1)
    _assert_equal_to_traced(preset("b1", input_size=(224, 224)))


def test_analytic_counts_follow_the_input_size_argument():
    config = SPACE.sample(0)
    assert analytic_counts(config, input_size=(64, 64)) == analytic_counts(config.replace(input_size=(64, 64)))
