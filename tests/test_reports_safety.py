"""`report` and `export` never harm what is already stored, and their hints are commands that work."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import run_cli
from tests.test_search_storage import new_postgres_database, postgres_url  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def study_url(new_study_url) -> str:
    return new_study_url(trials=6)


def export(study_url: str, *args: str) -> int:
    return run_cli(["export", "--study", "tiny", "--storage", study_url, *args])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ report --out FILE
def test_report_out_an_existing_file_is_a_clean_error(study_url, tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("mine")
    assert run_cli(["report", "--study", "tiny", "--storage", study_url, "--out", str(target)]) == 2
    assert "is a file" in one_error_line(capsys)
    assert target.read_text() == "mine"


# ---------------------------------------------------------------- report never changes the storage
@pytest.mark.parametrize("content", [b"", b"not a database at all, just text\n"])
def test_report_leaves_a_file_without_an_optuna_schema_untouched(tmp_path, capsys, content):
    storage = tmp_path / "study.db"
    storage.write_bytes(content)
    assert run_cli(["report", "--study", "tiny", "--storage", str(storage), "--out", str(tmp_path / "r")]) == 2
    assert "holds no Optuna study" in one_error_line(capsys)
    assert storage.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.db"]  # no report dir, no journal files


def test_report_writes_no_schema_into_an_empty_postgres_database(tmp_path, capsys, new_postgres_database):
    import sqlalchemy

    from search.storage import normalize_url

    assert run_cli(["report", "--study", "tiny", "--storage", new_postgres_database, "--out", str(tmp_path / "r")]) == 2
    assert "holds no Optuna study" in one_error_line(capsys)
    engine = sqlalchemy.create_engine(normalize_url(new_postgres_database).replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as connection:
            assert sqlalchemy.inspect(connection).get_table_names() == []
    finally:
        engine.dispose()
    assert not (tmp_path / "r").exists()


def test_report_on_the_default_missing_storage_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli(["report", "--study", "nothing", "--out", "r"]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- export --force
def test_force_refuses_a_directory_that_is_not_an_export_bundle(study_url, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert export(study_url, "--trial", "1", "--out", str(out), "--force") == 2
    assert "is not an export bundle" in one_error_line(capsys)
    assert (out / "keep.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_force_refuses_a_bundle_with_extra_files(study_url, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert export(study_url, "--trial", "1", "--out", str(out)) == 0
    capsys.readouterr()
    (out / "checkpoint.pt").write_bytes(b"weeks of training")
    assert export(study_url, "--trial", "2", "--out", str(out), "--force") == 2
    assert "is not an export bundle" in one_error_line(capsys)
    assert (out / "checkpoint.pt").read_bytes() == b"weeks of training"


def test_without_force_a_non_bundle_is_not_offered_to_force(study_url, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert export(study_url, "--trial", "1", "--out", str(out)) == 2
    err = one_error_line(capsys)
    assert "is not an export bundle" in err and "pass --force" not in err


def test_force_refuses_a_plain_file(study_url, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert export(study_url, "--trial", "1", "--out", str(out), "--force") == 2
    assert "is not an export bundle" in one_error_line(capsys)
    assert out.read_text() == "mine"


def test_force_replaces_a_multi_trial_export(study_url, tmp_path, capsys):
    out = tmp_path / "front"
    assert export(study_url, "--pick", "pareto", "--out", str(out)) == 0
    assert export(study_url, "--pick", "pareto", "--out", str(out), "--force") == 0
    assert (out / "variants.csv").is_file()


def test_export_folders_honour_the_umask(study_url, tmp_path):
    previous = os.umask(0o022)
    try:
        assert export(study_url, "--pick", "pareto", "--out", str(tmp_path / "front")) == 0
    finally:
        os.umask(previous)
    folders = [tmp_path / "front", *(p for p in (tmp_path / "front").iterdir() if p.is_dir())]
    assert len(folders) > 1
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    for file in (tmp_path / "front").rglob("*.*"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


# ------------------------------------------------------------------------------------- train hint
def test_export_hint_names_the_dataset_to_train_on(study_url, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert export(study_url, "--trial", "1", "--out", str(out)) == 0
    assert f"train it: hrvit-nas train {out} --data ade20k:/path/to/ade20k" in capsys.readouterr().out
    assert export(study_url, "--trial", "1", "--out", str(tmp_path / "b2"), "--data", "synthetic:num_classes=150") == 0
    assert capsys.readouterr().out.rstrip().endswith(f"train it: hrvit-nas train {tmp_path / 'b2'}")
