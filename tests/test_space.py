"""SearchSpace: knob encoding for Optuna, sampling, extremes, YAML files and validation."""

import random

import pytest

from hrvit_space import ArchConfig, ConfigError, SearchSpace, preset


@pytest.fixture
def space():
    return SearchSpace.default()


def test_default_space_contains_b1_and_counts_members(space):
    assert space.contains(preset("b1").replace(name=None))
    assert space.size() == 2 * 4 * 16 * 16 * 48 * 36 * (2 * 3 * 3 * 3) * 3**4
    names = [k.name for k in space.knobs()]
    assert names[:3] == ["depth_m0_b0", "depth_m1_b0", "depth_m1_b1"] and names[-1] == "ratio_b3"
    assert len(names) == len(set(names)) == 17 + 4 + 4


def test_encode_decode_round_trip_for_random_members(space):
    rng = random.Random(1)
    for _ in range(50):
        config = space.sample(rng)
        assert space.decode(space.encode(config)) == config
        assert space.contains(config)


def test_sampling_is_seeded_and_reaches_every_choice(space):
    assert space.sample(3) == space.sample(3)
    seen = {knob.name: set() for knob in space.knobs()}
    rng = random.Random(0)
    for _ in range(300):
        for name, value in space.encode(space.sample(rng)).items():
            seen[name].add(value)
    assert all(seen[k.name] == set(k.choices) for k in space.knobs())


def test_largest_and_smallest(space):
    large, small = space.largest(), space.smallest()
    assert large.depths[2] == (2, 2, 8) and large.mlp_ratios == (4, 4, 4, 4) and large.window_sizes == (2, 4, 7, 7)
    assert small.depths[2] == (1, 1, 2) and small.mlp_ratios == (2, 2, 2, 2) and small.window_sizes == (1, 1, 2, 2)


def test_nearest_maps_presets_outside_the_space_onto_members(space):
    b1 = preset("b1").replace(mlp_ratios=(8, 8, 8, 8), window_sizes=(1, 2, 5, 5))
    near = space.nearest(b1)
    assert space.contains(near) and near.mlp_ratios == (4, 4, 4, 4) and near.window_sizes == (1, 2, 4, 4)
    assert near.depths == preset("b1").depths and near.name == "b1"


def test_encode_rejects_foreign_configs(space):
    with pytest.raises(ConfigError, match="window_b0"):
        space.encode(preset("b1").replace(window_sizes=(7, 2, 7, 7)))
    with pytest.raises(ConfigError, match="outside the searchable knobs"):
        space.encode(preset("b3"))
    with pytest.raises(ConfigError, match="lack knob"):
        space.decode({"depth_m0_b0": 1})


def test_yaml_round_trip_and_flat_choice_lists(space, tmp_path):
    path = tmp_path / "space.yaml"
    space.save(path)
    assert SearchSpace.load(path) == space
    data = space.to_dict() | {"mlp_ratios": [2, 4]}
    assert SearchSpace.from_dict(data).ratio_choices == ((2, 4),) * 4


def test_input_size_revalidates_windows(space):
    assert space.with_input_size((224, 224)).base.input_size == (224, 224)
    with pytest.raises(ConfigError, match=r"windows\[3\]"):
        space.with_input_size((128, 128))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"windows": [[1], [1], [1], [99]]}, r"windows\[3\]"),
        ({"mlp_ratios": [[0.01]] * 4}, r"mlp_ratios\[0\]"),
        ({"depths": [[[1]]]}, "last module has 1 branches"),
        ({"extra": 1}, "unknown key"),
        ({"base": 7}, "preset name"),
        ({"base": "b7"}, "unknown preset"),
    ],
)
def test_invalid_space_files(space, changes, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict(space.to_dict() | changes)


def test_a_branch_that_can_lose_all_blocks_is_rejected(space):
    data = space.to_dict()
    for module in data["depths"][4:]:
        module[3] = [0, 1]
    with pytest.raises(ConfigError, match="branch 3 can end with no HRViT block"):
        SearchSpace.from_dict(data)


def test_custom_base_mapping(space):
    data = space.to_dict()
    data["base"] = {"channels": [16, 32, 48, 64], "input_size": [64, 64], "dim_head": 8}
    data["windows"] = [1, 2]
    small = SearchSpace.from_dict(data)
    assert small.base.channels == (16, 32, 48, 64) and isinstance(small.sample(0), ArchConfig)
