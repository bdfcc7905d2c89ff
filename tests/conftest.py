"""Fixtures and helpers shared by the test modules.

``one_thread``: modules of tiny models opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
``new_study_url``: a fresh SQLite study made by ``make_study`` (a study exactly as ``hrvit-nas search``
stores it, with fake measurements), for the report, export and safety tests; ``data`` reads the
"tiny" study at the requesting module's ``study_url`` as the reports do. ``settled_bytes``: an SQLite
file's bytes for "nothing stored was changed" checks.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from hrvit_space import ArchConfig, HeadConfig, SearchSpace
from search import SearchSettings, load_or_create_study

FINGERPRINT = {"device": "cpu", "cpu": "test-cpu", "torch": "2.13.0", "threads": 2}
LATENCY_BUDGET_MS = 6.0
COMPONENTS = ("stem", "patch_embed", "attention", "mixcfn", "des", "fusion", "norm", "head")


def settled_bytes(db: Path) -> bytes:
    """``db``'s bytes once every committed page is in the file. An earlier command's connections may still
    be open; when garbage collection closes the last one, SQLite checkpoints its write-ahead log into the
    file, which changed the bytes of an untouched study between two reads (a flaky comparison)."""
    gc.collect()
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.read_bytes()


def tiny_space() -> SearchSpace:
    base = ArchConfig(
        channels=(8, 16, 32, 64), depths=((1,), (1, 1), (1, 1, 1), (1, 1, 1, 1)), window_sizes=(1, 1, 1, 1),
        mlp_ratios=(2, 2, 2, 2), dim_head=8, head=HeadConfig(width=16, num_classes=150), input_size=(64, 64),
    )
    depths = [[(1, 2)] * len(module) for module in base.depths]
    return SearchSpace(base, depths, [(1, 2)] * 4, [(2, 4)] * 4)


def two_branch_space() -> SearchSpace:
    """The smallest HRViT layout: quick to trace, count and export."""
    base = ArchConfig(channels=(8, 16), depths=((1,), (1, 1)), window_sizes=(1, 1), mlp_ratios=(2, 2), dim_head=8,
                      head=HeadConfig(width=16, num_classes=150), input_size=(32, 32))
    return SearchSpace(base, [[(1,)], [(1, 2), (1, 2)]], [(1,), (1, 2)], [(2, 4), (2, 4)])


def fake_measurements(config: ArchConfig, rng: random.Random) -> dict:
    """Cheap, monotone stand-ins for the profiler and the estimator (deeper/wider: slower, more accurate)."""
    per_branch = {
        str(b): sum(m[b] for m in config.depths if b < len(m)) * config.channels[b] ** 2 * (1 + config.mlp_ratios[b]) / 1e6
        for b in range(config.num_branches)
    }
    params = sum(per_branch.values())
    gmacs = params * 0.8 + sum(config.window_sizes) * 0.01
    latency = 1.0 + 40 * gmacs * (1 + 0.05 * rng.random())
    return {
        "params_m": params, "gmacs": gmacs, "gflops": 2 * gmacs, "latency_ms": latency, "latency_source": "measured",
        "energy_mj": 0.3 * latency, "accuracy": 1 - math.exp(-8 * params) + 0.02 * rng.random(),
        # The profiler's keys: branches plus "shared" (stem, head), and its eight components.
        "params_m_by_branch": {**per_branch, "shared": 0.1 * params},
        "gmacs_by_branch": {**{k: v * 0.8 for k, v in per_branch.items()}, "shared": 0.1 * gmacs},
        "gmacs_by_component": dict(zip(COMPONENTS, gmacs * np.array([0.02, 0.03, 0.3, 0.4, 0.02, 0.1, 0.03, 0.1]))),
    }


def make_study(storage: str, name: str = "tiny", objectives=("accuracy", "latency", "energy"),
               budgets: dict | None = None, trials: int = 16, seed: int = 0, space: SearchSpace | None = None,
               breakdowns: bool = True, baselines: dict[int, str] | None = None) -> optuna.Study:
    """A study exactly as `hrvit-nas search` stores it (settings, user_attrs, constraints), with fake measurements."""
    budgets = {"max_latency_ms": LATENCY_BUDGET_MS} if budgets is None else budgets
    space = space or tiny_space()
    settings = SearchSettings(space=space, objectives=list(objectives), budgets=budgets, device="cpu", seed=seed)
    study = load_or_create_study(settings, name, storage)
    distributions = {knob.name: CategoricalDistribution(knob.choices) for knob in space.knobs()}
    rng = random.Random(seed)
    for number in range(trials):
        config = space.largest() if number == 0 else space.sample(rng)
        params = space.encode(config)
        m = fake_measurements(config, rng)
        if not breakdowns:  # as stored by a search that did not record them
            m = {k: v for k, v in m.items() if not k.endswith(("_by_branch", "_by_component"))}
        over = {k: m[b.removeprefix("max_")] - v for k, v in budgets.items() for b in [k] if m[b.removeprefix("max_")] > v}
        user_attrs = {
            "config": config.to_dict(), "config_hash": config.content_hash(), "measurements": m,
            "fingerprint": FINGERPRINT, "estimator": settings.estimator, "feasible": not over, "violations": over,
        }
        if number in (baselines or {0: "b1"}):
            user_attrs["baseline"] = (baselines or {0: "b1"})[number]
        if number == trials - 1:  # one crashed trial, as the search records it
            user_attrs = {"config": config.to_dict(), "measurements": {}, "failure_reason": "RuntimeError: out of memory"}
            study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=distributions, user_attrs=user_attrs))
            continue
        constraints = {k: m[k.removeprefix("max_")] - v for k, v in budgets.items()}
        values = [m[{"accuracy": "accuracy", "latency": "latency_ms", "energy": "energy_mj", "params": "params_m", "flops": "gflops"}[o]] for o in objectives]
        study.add_trial(create_trial(values=values, params=params, distributions=distributions, user_attrs=user_attrs,
                                     constraints=constraints or None))
    return study


@pytest.fixture(scope="session")
def new_study_url(tmp_path_factory):
    """``new_study_url(**make_study options)``: the SQLite URL of a freshly made study."""
    def create(**options) -> str:
        url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'study.db'}"
        make_study(url, **options)
        return url

    return create


@pytest.fixture(scope="module")
def data(study_url):
    from reports.study_data import load_study_data

    return load_study_data("tiny", study_url)


def run_cli(argv: list[str]) -> int:
    """`hrvit-nas ...` as a user runs it (UserError -> message on stderr, exit 2)."""
    from hrvit_nas.cli import main

    return main(argv)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run far faster so (more threads only
    contend at their barriers, 10x slower under load); the previous count is restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
