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


# ------------------------------------------------------------------- small inputs (presets, default space)
def test_presets_fit_their_windows_to_a_small_input():
    for name in ("b1", "b2", "b3"):
        config, note = preset(name).fit_to_input((128, 128))
        assert config.input_size == (128, 128) and config.window_sizes == (1, 2, 7, 4)  # branch 3 is 4x4
        assert note == "input 128x128: window_sizes [1, 2, 7, 7] -> [1, 2, 7, 4] (clipped to the branch feature maps)"
    assert preset("b1").fit_to_input((512, 512)) == (preset("b1"), None)


def test_default_space_fits_its_window_choices_to_a_small_input():
    space, note = SearchSpace.default().fit_to_input((96, 96))
    assert space.window_choices[2:] == ((2, 4, 6), (2, 3))  # branches 2 and 3 are 6x6 and 3x3
    assert space.base.input_size == (96, 96) and "windows[3] [2, 4, 7] -> [2, 3]" in note
    assert all(space.contains(space.sample(seed)) for seed in range(5))


def test_profile_a_preset_at_128(capsys):
    assert main(["profile", "--preset", "b1", "--input", "128x128", "--no-latency", "--no-cache"]) == 0
    captured = capsys.readouterr()
    assert "1 x 128x128" in captured.out
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "window_sizes [1, 2, 7, 7] -> [1, 2, 7, 4]" in notes[0]


def test_search_the_default_space_at_96(capsys, tmp_path):
    argv = ["search", "--study", "small", "--run-dir", str(tmp_path), "--trials", "1", "--input", "96x96",
            "--objectives", "params,flops", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 trials" in captured.out and "clipped to the branch feature maps" in captured.err


def test_explicit_space_and_config_keep_the_hard_error(capsys, tmp_path):
    space_file = tmp_path / "space.yaml"
    SearchSpace.default().save(space_file)
    argv = ["search", "--study", "s", "--run-dir", str(tmp_path), "--space", str(space_file), "--input", "96x96", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: space windows[2]") and "hrvit-nas space show --yaml" in err
    preset("b1").save(tmp_path / "b1.yaml")
    assert main(["profile", str(tmp_path / "b1.yaml"), "--input", "128x128", "--no-latency"]) == 2
    assert capsys.readouterr().err.startswith("error: window_sizes[3]")
    assert not (tmp_path / "study.db").exists()
