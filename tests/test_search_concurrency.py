"""Processes that start together on a brand-new storage, exact --trials, resume without replay, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from test_search import TINY_SPACE, _one_thread_shared_cache, sqlite_url, tiny_settings  # noqa: F401  (autouse fixture)
from test_search_storage import new_postgres_database, postgres_url  # noqa: F401  (fixtures)

from hrvit_nas.errors import UserError

REPO = Path(__file__).resolve().parent.parent
PROCESSES = 4
TRIALS = 6
# Each process waits for the start file, then runs the CLI: all four hit the new storage at once.
RACER = textwrap.dedent("""
    import os, sys, time
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.001)
    from hrvit_nas.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def race(tmp_path: Path, storage: str) -> list[subprocess.CompletedProcess]:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    start = tmp_path / "start"
    argv = ["search", "--study", "race", "--storage", storage, "--space", str(space), "--objectives", "params,flops",
            "--device", "cpu", "--trials", str(TRIALS), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HRVIT_NAS_CACHE_DIR": str(tmp_path / "cache")}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(start), *argv], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(PROCESSES)]
    time.sleep(3.0)  # every interpreter up and polling
    start.touch()
    outputs = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        outputs.append(subprocess.CompletedProcess(racer.args, racer.returncode, out, err))
    return outputs


def assert_exactly_the_target(outputs, storage: str) -> None:
    from search import open_storage

    for done in outputs:
        assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="race", storage=open_storage(storage, heartbeat_s=None))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == TRIALS
    assert len({tuple(sorted(t.params.items())) for t in complete}) == TRIALS
    assert "settings" in study.user_attrs


def test_processes_started_together_on_a_new_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert_exactly_the_target(race(tmp_path, url), url)


def test_processes_started_together_on_a_new_postgres_database(tmp_path, new_postgres_database):
    assert_exactly_the_target(race(tmp_path, new_postgres_database), new_postgres_database)


# ------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("sampler", ["random", "cheap-first"])
def test_resume_continues_instead_of_replaying(tmp_path, sampler):
    from search import run_search

    url = sqlite_url(tmp_path)
    run_search(tiny_settings(sampler=sampler, seed=5), "resume", url, 3)
    study = run_search(tiny_settings(sampler=sampler, seed=5), "resume", url, 6)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6, "no replayed proposal is stored"
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6


def test_worker_seeds_differ_by_progress_and_worker():
    from search.samplers import derive_seed

    seeds = {derive_seed(5, trials, worker) for trials in (0, 3) for worker in (0, 1)}
    assert len(seeds) == 4 and derive_seed(5, 3, 1) == derive_seed(5, 3, 1)


@pytest.mark.parametrize("sampler", ["random", "nsga2", "cheap-first"])
def test_every_member_once_and_no_duplicate_stored(tmp_path, sampler):
    """Duplicates are rejected before a trial is stored: the whole space, each member exactly once."""
    from search import SearchSettings, run_search
    from hrvit_space import SearchSpace

    four = SearchSpace.from_dict({**TINY_SPACE, "depths": [[[1, 2]], [[1], [1, 2]]], "windows": [[1], [1]], "mlp_ratios": [[4], [4]]})
    settings = SearchSettings(space=four, objectives=["params", "flops"], device="cpu", sampler=sampler)
    study = run_search(settings, "all", sqlite_url(tmp_path), 4)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    with pytest.raises(UserError, match="--trials 5 exceeds the 4 members"):
        run_search(settings, "all", sqlite_url(tmp_path), 5)


# ------------------------------------------------------------------------------------- secrets
def test_storage_passwords_never_appear_in_messages(tmp_path):
    from search import open_storage

    with pytest.raises(UserError) as unknown:
        open_storage("redis://user:S3CRET@localhost:6379/0")
    with pytest.raises(UserError, match="cannot open the study storage") as unreachable:
        open_storage("postgres://user:S3CRET@127.0.0.1:1/db")  # postgres:// is PostgreSQL, not an unknown scheme
    with pytest.raises(UserError) as query:
        open_storage("postgresql://user@127.0.0.1:1/db?password=S3CRET")
    for error in (unknown, unreachable, query):
        assert "S3CRET" not in str(error.value) and "***" in str(error.value)


def test_storage_url_from_the_environment(tmp_path, monkeypatch):
    from search import open_storage, run_search

    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("HRVIT_NAS_STORAGE", url)
    run_search(tiny_settings(), "env", None, 1, run_dir=tmp_path / "unused")
    assert optuna.get_all_study_names(open_storage(url)) == ["env"]
    assert not (tmp_path / "unused").exists()


def test_postgres_password_from_a_pgpass_file(tmp_path, monkeypatch, postgres_url):
    """libpq's PGPASSFILE supplies the password: the URL on the command line carries none."""
    from sqlalchemy.engine import make_url

    from search import open_storage

    parts = make_url(postgres_url)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{parts.host}:{parts.port}:{parts.database}:{parts.username}:{parts.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    url = f"postgres://{parts.username}@{parts.host}:{parts.port}/{parts.database}"
    assert isinstance(open_storage(url, heartbeat_s=None), optuna.storages.RDBStorage)
