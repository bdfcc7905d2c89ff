"""Bad or hostile user files: one clean `error:` line and exit 2, sane size limits, no path outside runs/."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from hrvit_space import ArchConfig, ConfigError, HeadConfig, SearchSpace, preset
from hrvit_space.config import LIMITS, path_slug


def run_cli(argv: list[str]) -> int:
    from hrvit_nas.cli import main

    return main(argv)


def tiny_config(**changes) -> ArchConfig:
    config = ArchConfig(
        channels=(16, 32), depths=((1,), (1, 1)), window_sizes=(1, 2), mlp_ratios=(2, 2), dim_head=8,
        head=HeadConfig(width=32, num_classes=4, dropout=0.0), drop_path_rate=0.0, input_size=(32, 32), name="tiny",
    )
    return config.replace(**changes)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------- item 7: unreadable user files
LATIN1 = "name: caf\xe9\n".encode("latin-1")  # not UTF-8


@pytest.mark.parametrize("argv", [
    ["space", "validate", "{file}"],
    ["space", "show", "--space", "{file}"],
    ["profile", "{file}", "--no-latency"],
    ["train", "{file}", "--data", "synthetic"],
    ["train", "{config}", "--recipe", "{file}", "--data", "synthetic"],
])
def test_non_utf8_files_are_one_clean_error(tmp_path, capsys, argv):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(LATIN1)
    tiny_config().save(tmp_path / "config.yaml")
    argv = [a.format(file=bad, config=tmp_path / "config.yaml") for a in argv]
    assert run_cli(argv) == 2
    assert "not UTF-8" in one_error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: permissions cannot make it unreadable")
def test_unreadable_file_is_one_clean_error(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    tiny_config().save(path)
    path.chmod(0)
    try:
        assert run_cli(["space", "validate", str(path)]) == 2
        assert "cannot be read" in one_error_line(capsys)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("content, message", [
    (b"a: [1\n", "not valid YAML/JSON"),  # YAML's own message spans several lines
    (b"\x00\x01binary", "not valid YAML/JSON"),
    (b"[" * 50_000 + b"]" * 50_000, "nests too deeply"),
], ids=["multi-line-message", "binary", "deep-nesting"])
def test_malformed_yaml_is_one_error_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    for argv in (["space", "validate", str(bad)], ["profile", str(bad), "--no-latency"]):
        assert run_cli(argv) == 2
        assert message in one_error_line(capsys)


def test_loaders_raise_user_errors_for_non_utf8(tmp_path):
    from training.recipe import RecipeError, TrainRecipe

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(LATIN1)
    for load, error in ((ArchConfig.load, ConfigError), (SearchSpace.load, ConfigError), (TrainRecipe.load, RecipeError)):
        with pytest.raises(error, match="not UTF-8"):
            load(bad)


# --------------------------------------------------------------------- item 9: a directory, not a file
def test_space_validate_says_a_directory_is_a_directory(tmp_path, capsys):
    assert run_cli(["space", "validate", str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert "is a directory" in err and "not found" not in err


# ------------------------------------------------------------------------------ item 8: upper bounds
@pytest.mark.parametrize("changes, field", [
    ({"depths": ((1,), (1, 1_000_000))}, "depths[1][1]"),
    ({"dim_head": 10**23}, "dim_head"),
    ({"channels": (16, 2**20)}, "channels[1]"),
    ({"mlp_ratios": (2, 1000)}, "mlp_ratios[1]"),
    ({"head": {"width": 10**9, "num_classes": 4}}, "head.width"),
    ({"head": {"width": 32, "num_classes": 10**9}}, "head.num_classes"),
    ({"in_chans": 10**6}, "in_chans"),
    ({"depths": ((1,),) + ((1, 1),) * 100}, "depths"),
])
def test_configs_beyond_sane_limits_are_refused_naming_the_limit(changes, field):
    with pytest.raises(ConfigError) as error:
        tiny_config(**changes)
    message = str(error.value)
    assert message.startswith(field) and re.search(r"at most \d+", message), message


def test_window_limit_applies_even_when_the_feature_map_is_larger():
    with pytest.raises(ConfigError, match=r"window_sizes\[0\].*at most 64"):
        tiny_config(window_sizes=(100, 2), input_size=(4096, 4096))


def test_presets_are_within_the_limits():
    for name in ("b1", "b2", "b3"):
        config = preset(name)
        assert max(max(module) for module in config.depths) <= LIMITS["depth"]
        assert max(config.window_sizes) <= LIMITS["window"]


def test_space_validate_refuses_a_huge_depth_choice(tmp_path, capsys):
    space = SearchSpace.default().to_dict()
    space["depths"][2][2] = [2, 1_000_000]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert run_cli(["space", "validate", str(path)]) == 2
    err = one_error_line(capsys)
    assert "depths[2][2]" in err and str(LIMITS["depth"]) in err


def test_space_refuses_depth_choices_above_the_limit():
    space = SearchSpace.default()
    depths = [list(module) for module in space.depth_choices]
    depths[0][0] = (1, LIMITS["depth"] + 1)
    with pytest.raises(ConfigError, match=rf"depths\[0\]\[0\].*0\.\.{LIMITS['depth']}"):
        SearchSpace(space.base, depths, space.window_choices, space.ratio_choices)


def test_space_validate_refuses_a_huge_dim_head_config(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**tiny_config().to_dict(), "dim_head": 10**23}))
    assert run_cli(["space", "validate", str(path)]) == 2
    assert "dim_head" in one_error_line(capsys)


# ------------------------------------------------------------------ item 5: run directory from name
@pytest.mark.parametrize("name, slug", [
    ("../../x", "x"), ("/etc/passwd", "etc-passwd"), ("..", ""), ("b1 small/v2", "b1-small-v2"), ("ok-name_1.2", "ok-name_1.2"),
])
def test_path_slug_is_one_safe_component(name, slug):
    assert path_slug(name) == slug
    assert "/" not in path_slug(name) and path_slug(name) not in (".", "..")


def test_run_name_falls_back_to_the_hash():
    config = tiny_config(name="../..")
    assert config.run_name() == config.content_hash()


def test_train_default_out_stays_under_runs(tmp_path, monkeypatch, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    torch.set_num_threads(1)
    tiny_config(name="../../escape").save(work / "config.yaml")
    data = "synthetic:num_samples=8,val_samples=4,size=32,num_classes=4"
    assert run_cli(["train", "config.yaml", "--data", data, "--iterations", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert Path(summary["out"]) == Path("runs") / "escape"
    assert (work / "runs" / "escape").is_dir()
    assert not (tmp_path / "escape").exists() and not (work / "escape").exists()


# --------------------------------------------------------------------- item 12: declared Optuna
def test_pyproject_declares_the_optuna_the_code_needs():
    """``Trial.set_constraint`` (search/evaluator.py) first shipped in Optuna 5.0."""
    import optuna

    assert hasattr(optuna.trial.Trial, "set_constraint")
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    [spec] = [d for d in pyproject["project"]["dependencies"] if re.match(r"optuna\b", d)]
    assert re.fullmatch(r"optuna>=5(\.0)*", spec.replace(" ", "")), spec
