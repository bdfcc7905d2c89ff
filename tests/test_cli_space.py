"""`hrvit-nas space ...`: exit codes and messages a user sees."""

import yaml

from hrvit_nas.cli import main
from hrvit_space import ArchConfig, SearchSpace, preset


def test_show_lists_knobs_and_size(capsys):
    assert main(["space", "show"]) == 0
    out = capsys.readouterr().out
    assert "depth_m2_b2" in out and "[2, 4, 6, 8]" in out and f"{SearchSpace.default().size():,} members" in out


def test_show_yaml_is_a_loadable_space_file(capsys, tmp_path):
    assert main(["space", "show", "--yaml"]) == 0
    path = tmp_path / "space.yaml"
    path.write_text(capsys.readouterr().out)
    assert SearchSpace.load(path) == SearchSpace.default()
    assert main(["space", "show", "--space", str(path)]) == 0


def test_sample_prints_a_valid_member(capsys, tmp_path):
    assert main(["space", "sample", "--seed", "5"]) == 0
    config = ArchConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert SearchSpace.default().contains(config.replace(name=None))
    assert main(["space", "sample", "--seed", "5"]) == 0
    assert ArchConfig.from_yaml(capsys.readouterr().out) == config


def test_validate_ok_and_errors(capsys, tmp_path):
    good = tmp_path / "good.yaml"
    preset("b2").save(good)
    assert main(["space", "validate", str(good)]) == 0
    assert capsys.readouterr().out.startswith("ok: b2")

    bad = tmp_path / "bad.yaml"
    bad.write_text(preset("b1").to_yaml().replace("window_sizes: [1, 2, 7, 7]", "window_sizes: [1, 2, 7, 70]"))
    assert main(["space", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: window_sizes[3]") and "Traceback" not in err

    assert main(["space", "validate", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_validate_accepts_space_files(capsys, tmp_path):
    path = tmp_path / "space.yaml"
    SearchSpace.default().save(path)
    assert main(["space", "validate", str(path)]) == 0
    assert "search space with 25 knobs" in capsys.readouterr().out
