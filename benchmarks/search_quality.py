"""How close do the samplers get to the true Pareto front? (issue 3, "Quality of the search")

A reduced space (512 members, 64x64 input, 3 branches) is enumerated once with a deterministic cost:
parameters and FLOPs (the profiler's counts) and the zero-cost (NASWOT) score; the table is cached in a
JSON file. Each sampler then searches the table through the same parameter encoding and sampler
settings as ``hrvit-nas search`` (objectives: accuracy = zero-cost score, params, FLOPs), and we print the
hypervolume after 25/50/100 trials (COMPLETE trials, i.e. distinct architectures evaluated: a
duplicate proposal is pruned by the search's ``DuplicateGuard`` and costs no evaluation) as a fraction of the exhaustive front's hypervolume: median (min)
over seeds, at one fixed reference point (10% beyond the exhaustive nadir), with Optuna's hypervolume.

    python benchmarks/search_quality.py [--seeds 5] [--trials 100] [--table /tmp/hrvit-search-quality.json]

Goal: >= 0.98 at 100 trials, and never below random.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hrvit_space import SearchSpace  # noqa: E402
from search.objectives import OBJECTIVES  # noqa: E402
from search.progress import hypervolume_history  # noqa: E402
from search.study import DuplicateGuard, make_sampler, suggest_config  # noqa: E402

OBJECTIVE_NAMES = ("accuracy", "params", "flops")
CHECKPOINTS = (25, 50, 100)
SAMPLERS = ("nsga2", "tpe", "random")
REDUCED_SPACE = {
    "base": {
        "channels": [16, 32, 64],
        "depths": [[1], [1, 1], [1, 1, 1]],
        "dim_head": 8,
        "input_size": [64, 64],
        "head": {"kind": "segformer", "width": 32, "num_classes": 8},
    },
    "depths": [[[1, 2]], [[1, 2], [1, 2]], [[1, 2], [1, 2], [1, 2]]],
    "windows": [[1], [1], [1, 2]],
    "mlp_ratios": [[4], [2, 4], [2, 4]],
}


def knob_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def build_table(space: SearchSpace, path: Path) -> dict[str, list[float]]:
    """knob values -> [zero-cost score, params M, GFLOPs] for every member; cached in ``path``."""
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("space") == space.to_dict():
            return cached["table"]
    import torch

    from hrvit_nas.atomic import atomic_write_text
    from hrvit_space.model import build_model
    from profiling import count_flops, count_params
    from search.estimators import ZeroCostEstimator

    torch.set_num_threads(1)
    estimator = ZeroCostEstimator(input_size=space.base.input_size, device="cpu", seed=0, batch=8)
    knobs = space.knobs()
    table = {}
    start = time.perf_counter()
    for i, values in enumerate(itertools.product(*(k.choices for k in knobs))):
        params = dict(zip((k.name for k in knobs), values))
        config = space.decode(params)
        model = build_model(config).eval()
        with torch.no_grad():
            macs = count_flops(model, torch.zeros(1, 3, *config.input_size)).macs
        table[knob_key(params)] = [estimator.estimate(config), count_params(model)[0] / 1e6, 2 * macs / 1e9]
        if i % 64 == 63:
            print(f"  enumerated {i + 1}/{space.size()} in {time.perf_counter() - start:.0f} s", flush=True)
    atomic_write_text(path, json.dumps({"space": space.to_dict(), "table": table}))
    return table


def directions() -> list[str]:
    return [OBJECTIVES[name].direction for name in OBJECTIVE_NAMES]


def exhaustive_study(table: dict[str, list[float]]) -> optuna.Study:
    study = optuna.create_study(directions=directions())
    study.add_trials([optuna.trial.create_trial(values=v) for v in table.values()])
    return study


def reference_point(table: dict[str, list[float]]) -> list[float]:
    """10% beyond the exhaustive nadir in every objective (in the objectives' own directions)."""
    values = np.array(list(table.values()))
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions()])
    minimised = values * signs
    worst, best = minimised.max(axis=0), minimised.min(axis=0)
    return list((worst + 0.1 * (worst - best)) * signs)


def search_history(table, space: SearchSpace, sampler: str, seed: int, trials: int, reference) -> list[float]:
    duplicates = DuplicateGuard()

    def objective(trial: optuna.Trial) -> list[float]:
        config = suggest_config(trial, space)
        earlier = duplicates.check(trial, config.content_hash())
        return list(earlier.values) if earlier else table[knob_key(space.encode(config))]

    study = optuna.create_study(directions=directions(), sampler=make_sampler(sampler, seed))
    complete = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,))
    study.optimize(objective, callbacks=[complete])
    return [hv for _, hv in hypervolume_history(study, reference)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=max(CHECKPOINTS))
    parser.add_argument("--table", type=Path, default=Path("/tmp/hrvit-search-quality.json"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    space = SearchSpace.from_dict(REDUCED_SPACE)
    print(f"reduced space: {space.size()} members, objectives {', '.join(OBJECTIVE_NAMES)}")
    table = build_table(space, args.table)
    reference = reference_point(table)
    exact = hypervolume_history(exhaustive_study(table), reference)[-1][1]
    front = len(exhaustive_study(table).best_trials)
    print(f"exhaustive front: {front} members, hypervolume {exact:.6g} at reference {np.round(reference, 4).tolist()}")

    checkpoints = [c for c in CHECKPOINTS if c <= args.trials]
    results: dict[str, dict[int, list[float]]] = {}
    for sampler in SAMPLERS:
        results[sampler] = {c: [] for c in checkpoints}
        start = time.perf_counter()
        for seed in range(args.seeds):
            history = search_history(table, space, sampler, seed, args.trials, reference)
            for c in checkpoints:
                results[sampler][c].append(history[c - 1] / exact)
        print(f"  {sampler}: {args.seeds} seeds in {time.perf_counter() - start:.1f} s", flush=True)

    print(f"\nhypervolume / exhaustive hypervolume, median (min) over {args.seeds} seeds")
    print("sampler   " + "".join(f"{c:>8d} trials" for c in checkpoints))
    for sampler in SAMPLERS:
        cells = "".join(f"{statistics.median(results[sampler][c]):>8.3f} ({min(results[sampler][c]):.3f})" for c in checkpoints)
        print(f"{sampler:<10}{cells}")
    for sampler in ("nsga2", "tpe"):
        last = max(checkpoints)
        median = statistics.median(results[sampler][last])
        versus = median / statistics.median(results["random"][last])
        verdict = "meets" if median >= 0.98 else "misses"
        print(f"{sampler}: {median:.3f} at {last} trials ({verdict} the 0.98 goal), {versus:.3f}x random")


if __name__ == "__main__":
    main()
