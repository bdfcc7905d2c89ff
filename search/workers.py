"""``run_search``: validate, open or resume the study, then run one or several local worker processes.

Workers are separate processes (spawned, so each has its own torch runtime) sharing the study through
its storage; on a machine with several GPUs each is pinned to one GPU via ``CUDA_VISIBLE_DEVICES``, so
latency and energy measurements do not collide. Worker ``i`` seeds its sampler from ``(seed, trials in
the study, i)`` so that workers propose different architectures and a resume continues. Machines
sharing a PostgreSQL/MySQL study each run this same loop; give each machine its own ``--seed``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import optuna

from hrvit_nas import UserError
from search.progress import SearchProgress
from search.storage import DEFAULT_RUN_ROOT, HEARTBEAT_S, open_storage, storage_url
from search.evaluator import TrialEvaluator
from search.settings import SearchSettings
from search.study_setup import load_or_create_study, preflight
from search.worker_loop import deadline, run_worker


def run_search(
    settings: SearchSettings,
    study_name: str,
    storage: str | None = None,
    n_trials: int = 20,
    *,
    workers: int = 1,
    run_dir: str | Path | None = None,
    progress: bool = False,
    heartbeat_s: int = HEARTBEAT_S,
    max_minutes: float | None = None,
) -> optuna.Study:
    """Run (or resume) ``study_name`` until it holds ``n_trials`` COMPLETE trials; return the study.

    ``storage`` defaults to ``$HRVIT_NAS_STORAGE``, else ``<run_dir>/study.db`` (SQLite); ``run_dir`` to
    ``runs/<study_name>``. ``max_minutes`` bounds the run, set-up included: no trial starts after it (the
    ones in flight finish), so a slow host ends with fewer trials, and a re-run continues the study.
    """
    if not isinstance(n_trials, int) or n_trials < 1:
        raise UserError(f"--trials {n_trials!r}: it must be a positive integer")
    stop_at = deadline(max_minutes)
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers {workers!r}: it must be a positive integer")
    if not study_name or not isinstance(study_name, str):
        raise UserError("--study: give the study a non-empty name")
    if n_trials > settings.space.size():
        raise UserError(f"--trials {n_trials} exceeds the {settings.space.size()} members of the search space; lower --trials or widen the space")
    url = storage_url(storage, Path(run_dir) if run_dir else DEFAULT_RUN_ROOT / study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url, heartbeat_s=heartbeat_s, fast_commits=True)
    evaluator = TrialEvaluator(settings)  # loads the estimator and latency predictor: their errors come first
    study = load_or_create_study(settings, study_name, store, check=lambda: preflight(evaluator, progress=progress))
    with SearchProgress(n_trials, enabled=progress) as bar:
        if workers == 1:
            run_worker(settings, study_name, store, n_trials, evaluator=evaluator, callbacks=[bar.update], stop_at=stop_at)
        else:
            _run_processes(settings, study_name, url, n_trials, workers, heartbeat_s, stop_at, on_poll=lambda: bar.update(study))
        bar.update(study, force=True)
    return optuna.load_study(study_name=study_name, storage=store)


def _worker_main(settings_dict: dict, study_name: str, url: str, n_trials: int, worker: int, heartbeat_s: int, threads: int,
                 stop_at: float | None) -> None:
    import torch

    from profiling import set_default_threads

    torch.set_num_threads(threads)
    set_default_threads(threads)  # the profiler's timing threads: several workers must not oversubscribe the cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        settings = SearchSettings.from_dict(settings_dict)
        run_worker(settings, study_name, open_storage(url, heartbeat_s=heartbeat_s, fast_commits=True), n_trials, worker=worker,
                   stop_at=stop_at)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


def worker_threads(workers: int) -> int:
    """CPU threads per worker: ``--threads`` (``$HRVIT_NAS_THREADS``) when set, else the cores this process
    may use split among the workers, so ``workers`` processes timing at once never oversubscribe them."""
    from profiling import THREADS_ENV, default_threads

    return default_threads() if os.environ.get(THREADS_ENV) else max(1, default_threads() // workers)


def _gpu_count(device: str) -> int:
    if device not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _run_processes(settings, study_name, url, n_trials, workers, heartbeat_s, stop_at, *, on_poll) -> None:
    context = multiprocessing.get_context("spawn")
    gpus = _gpu_count(settings.device)
    threads = worker_threads(workers)
    processes = []
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        for index in range(workers):
            if gpus > 1:
                os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)  # inherited by the spawned child only
            process = context.Process(
                target=_worker_main,
                args=(settings.to_dict(), study_name, url, n_trials, index, heartbeat_s, threads, stop_at),
                name=f"hrvit-search-worker-{index}",
            )
            process.start()
            processes.append(process)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    try:
        while any(p.is_alive() for p in processes):
            on_poll()
            time.sleep(1.0)
    finally:
        for process in processes:
            process.join()
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if failed:
        raise UserError(
            f"search worker(s) stopped with an error: {failed} (see their messages above); "
            "completed trials are kept: re-run the same command to resume"
        )
