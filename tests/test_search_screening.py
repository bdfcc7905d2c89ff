"""The cheap-first sampler screens a latency budget with the latency predictor: no measurement is spent
on a candidate the predictor already puts over the budget."""

from __future__ import annotations

import itertools
import statistics

from optuna.trial import TrialState
from test_latency_predictor import QUICK, SPACE
from test_search import _one_thread_shared_cache, sqlite_url  # noqa: F401  (autouse fixture)


def test_predicted_latency_budget_is_screened_before_measuring(tmp_path):
    from profiling import LatencyPredictor
    from search import SearchSettings, run_search

    predictor = LatencyPredictor.build(SPACE, "cpu", calibration=4, holdout=4, **QUICK)
    path = tmp_path / "predictor.json"
    predictor.save(path)
    members = [SPACE.decode(dict(zip([k.name for k in SPACE.knobs()], values)))
               for values in itertools.product(*(k.choices for k in SPACE.knobs()))]
    budget = statistics.median(predictor.predict(c) for c in members)  # half the space is over it
    settings = SearchSettings(space=SPACE, objectives="latency,params", budgets={"max_latency_ms": budget},
                              latency_predictor=str(path), device="cpu")
    study = run_search(settings, "screened", sqlite_url(tmp_path), 6)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    for trial in complete:
        assert trial.user_attrs["measurements"]["latency_source"] == "predictor"
        assert trial.user_attrs["feasible"], "the sampler proposed a member the predictor puts over the budget"
        assert trial.user_attrs["screening"]["candidates"] <= len(members) // 2 + 1
