"""ArchConfig: presets, serialisation round-trips, stable hashing and every validation error."""

import json
import subprocess
import sys

import pytest

from hrvit_space import ArchConfig, ConfigError, HeadConfig, preset


def test_presets_describe_the_paper_variants():
    b1, b2, b3 = preset("b1"), preset("b2"), preset("b3")
    assert b1.module_branches == (1, 2, 3, 3, 4, 4)
    assert b1.channels == (32, 64, 128, 256) and b1.mlp_ratios == (4, 4, 4, 4) and b1.dim_head == 32
    assert b2.channels == (48, 96, 240, 384) and b2.mlp_ratios == (2, 3, 3, 3) and b2.dim_head == 24
    assert b2.depths[-1] == (1, 1, 6, 2) and b3.depths[-1] == (1, 1, 6, 3)
    assert b3.head.width == 768 and b1.head.width == 256
    assert all(p.window_sizes == (1, 2, 7, 7) for p in (b1, b2, b3))


@pytest.mark.parametrize("name", ["b1", "b2", "b3"])
def test_yaml_and_json_round_trip(name, tmp_path):
    config = preset(name)
    assert ArchConfig.from_yaml(config.to_yaml()) == config
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"cfg{suffix}"
        config.save(path)
        assert ArchConfig.load(path) == config
    assert json.loads(config.to_json())["schema_version"] == 1


def test_preset_key_with_overrides():
    config = ArchConfig.from_dict({"preset": "b1", "mlp_ratios": [2, 2, 2, 2], "head": {"kind": "none"}})
    assert config.mlp_ratios == (2, 2, 2, 2) and config.head == HeadConfig(kind="none")
    assert config.channels == preset("b1").channels


def test_hash_is_stable_and_ignores_the_display_name():
    config = preset("b1")
    assert config.content_hash() == config.replace(name="renamed").content_hash()
    assert config.content_hash() != config.replace(mlp_ratios=(2, 4, 4, 4)).content_hash()
    # Stable across processes (no reliance on Python's randomised hash()).
    code = "from hrvit_space import preset; print(preset('b1').content_hash())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == config.content_hash()


def test_integral_float_ratios_hash_like_ints():
    assert preset("b1").replace(mlp_ratios=(4.0, 4.0, 4.0, 4.0)).content_hash() == preset("b1").content_hash()


def test_drop_path_rates_rise_linearly_over_module_depth():
    rates = preset("b1").replace(drop_path_rate=0.2).drop_path_rates()
    flat = [r for module in rates for r in module]
    assert [len(m) for m in rates] == [1, 1, 6, 6, 6, 2]
    assert flat[0] == 0 and flat[-1] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(flat, flat[1:]))


B1 = preset("b1").to_dict()


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"depths": [[1], [1, 1], [1, 1, -1], [1, 1, 6], [1, 1, 6, 2], [1, 1, 2, 2]]}, "depths[2][2]"),
        ({"depths": [[1], [1, 1], [1, 1, 6], [1, 1, 6], [1, 1, 6, 0], [1, 1, 2, 0]]}, "branch 3"),
        ({"depths": [[1, 1], [1, 1], [1, 1, 6], [1, 1, 6], [1, 1, 6, 2], [1, 1, 2, 2]]}, "depths[0]"),
        ({"depths": [[1], [1, 1, 1], [1, 1, 6], [1, 1, 6], [1, 1, 6, 2], [1, 1, 2, 2]]}, "depths[1]"),
        ({"depths": [[1], [1, 1], [1, 1, 6]]}, "depths"),
        ({"depths": [[1], [1, 1], [1, 1.5, 6], [1, 1, 6], [1, 1, 6, 2], [1, 1, 2, 2]]}, "depths[2][1]"),
        ({"window_sizes": [1, 2, 7, 17]}, "window_sizes[3]"),
        ({"window_sizes": [0, 2, 7, 7]}, "window_sizes[0]"),
        ({"window_sizes": [1, 2, 7]}, "window_sizes"),
        ({"mlp_ratios": [4, 4, 4]}, "mlp_ratios"),
        ({"mlp_ratios": [4, 4, 4, 0.1]}, "mlp_ratios[3]"),
        ({"mlp_ratios": [4, -2, 4, 4]}, "mlp_ratios[1]"),
        ({"channels": [32, 64, 128, 255]}, "channels[3]"),
        ({"dim_head": 48}, "dim_head"),
        ({"dim_head": 0}, "dim_head"),
        ({"head": {"kind": "fcn"}}, "head.kind"),
        ({"head": {"kind": "segformer", "widht": 3}}, "head.widht"),
        ({"head": {"kind": "segformer", "num_classes": 0}}, "head.num_classes"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"input_size": [512]}, "input_size"),
        ({"in_chans": 0}, "in_chans"),
        ({"colour": "blue"}, "colour"),
        ({"schema_version": 9}, "schema_version"),
    ],
)
def test_every_invalid_field_is_named_with_its_allowed_values(changes, field):
    with pytest.raises(ConfigError) as error:
        ArchConfig.from_dict({**B1, **changes})
    message = str(error.value)
    assert field in message and "allowed" in message


def test_window_validity_depends_on_the_declared_input_size():
    assert preset("b1").replace(input_size=(224, 224)).window_sizes == (1, 2, 7, 7)
    with pytest.raises(ConfigError, match=r"window_sizes\[3\].*6x6.*input 192x192"):
        preset("b1").replace(input_size=(192, 192))


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="b1, b2, b3"):
        preset("b9")
    with pytest.raises(ConfigError, match="not found"):
        ArchConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ArchConfig.load(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        ArchConfig.load(bad)
