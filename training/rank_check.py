"""Do cheap estimators rank architectures like real training does?

For a seeded sample of supernet members, score each with the estimators and with standalone short
training (the reference), then report per estimator Kendall's tau and Spearman's rho against it, each
with a bootstrap 95% interval (members resampled with replacement), and the top-3 overlap. With 8-12
members the intervals are wide; they say how much of a tau is luck of the sample.

The reference is itself noisy: at CPU budgets two seeds of the same standalone recipe ranked 12 members
at Kendall tau 0.0-0.4 against each other (benchmarks/estimator_ranking.py, 2026-12-02/03), and no
estimator can be judged above the tau its reference reaches against itself. ``reference_seeds`` >= 2
trains every member from that many seeds, ranks by their mean and reports their agreement.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from scipy.stats import kendalltau, spearmanr

from hrvit_nas import UserError

REFERENCE = "standalone"


@dataclass
class RankCheckResult:
    scores: pd.DataFrame  # one row per member: name, config hash, one column per estimator + standalone
    # One row per estimator: kendall_tau (+ _low/_high 95% bootstrap bounds), kendall_p, spearman_rho (+ bounds),
    # spearman_p, top3_overlap.
    correlations: pd.DataFrame
    reference_agreement: float | None = None  # mean Kendall tau between the reference seeds' rankings; None: one seed

    def to_text(self) -> str:
        seeds = sum(column.startswith(f"{REFERENCE}:seed") for column in self.scores.columns)
        agreement = (f"{REFERENCE} reproducibility: Kendall tau {self.reference_agreement:.3f} between its {seeds} seeds' rankings "
                     "(mean over pairs); no estimator can be judged above it" if self.reference_agreement is not None else
                     f"{REFERENCE} reproducibility: not measured (one seed); --reference-seeds 2 says how well the reference "
                     "ranks against itself")
        return (f"scores per member:\n{self.scores.to_string(index=False, float_format=lambda v: f'{v:.4f}')}\n\n"
                f"rank correlation with {REFERENCE} training ({len(self.scores)} members, bootstrap 95% intervals):\n"
                f"{correlation_table(self.correlations).to_string(index=False)}\n{agreement}")

    def save(self, out_dir: str | Path) -> None:
        from hrvit_nas import atomic_write_text

        out_dir = Path(out_dir)
        atomic_write_text(out_dir / "rank_scores.csv", self.scores.to_csv(index=False))
        atomic_write_text(out_dir / "rank_correlations.csv", self.correlations.to_csv(index=False))


def distinct_members(space, count: int, seed: int) -> list:
    """Largest, smallest and random members, without duplicates (by config hash)."""
    import random

    if count < 3:
        raise UserError(f"--members {count}: rank correlation needs at least 3 members")
    rng = random.Random(seed)
    members, seen = [], set()
    candidates = [space.largest(), space.smallest()]
    for _ in range(100 * count):
        if len(members) == count or (not candidates and space.size() <= len(members)):
            break
        config = candidates.pop(0) if candidates else space.sample(rng)
        key = config.replace(name=None).content_hash()
        if key not in seen:
            seen.add(key)
            members.append(config.replace(name=config.name or f"member{len(members)}"))
    if len(members) < 3:
        raise UserError(f"the supernet's space has only {len(members)} distinct members; rank-check needs at least 3")
    return members


def seed_agreement(per_seed: pd.DataFrame) -> float:
    """Mean Kendall tau over every pair of columns (one column per seed): the tau a noisy ranking reaches against itself."""
    columns = list(per_seed.columns)
    if len(columns) < 2:
        raise ValueError("seed agreement needs at least two seed columns")
    return float(sum(kendalltau(per_seed[a], per_seed[b]).statistic for i, a in enumerate(columns) for b in columns[i + 1:])
                 / (len(columns) * (len(columns) - 1) / 2))


def _bootstrap_interval(statistic, x, y, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of a paired rank statistic over members resampled with replacement."""
    import numpy as np
    from scipy.stats import bootstrap

    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples with constant scores give NaN statistics; they are dropped
        result = bootstrap((np.asarray(x, float), np.asarray(y, float)), lambda a, b: statistic(a, b).statistic,
                           paired=True, vectorized=False, n_resamples=resamples, method="percentile", rng=seed,
                           confidence_level=0.95)
    statistics = result.bootstrap_distribution[~np.isnan(result.bootstrap_distribution)]
    if len(statistics) < resamples // 2:
        return math.nan, math.nan
    low, high = np.percentile(statistics, [2.5, 97.5])
    return float(low), float(high)


def top_overlap(estimate: Sequence[float], reference: Sequence[float], k: int = 3) -> float:
    """Share of the reference's ``k`` best members that are also the estimator's ``k`` best (ties: first listed)."""
    best = lambda values: set(sorted(range(len(values)), key=lambda i: -values[i])[:k])  # noqa: E731
    return len(best(list(estimate)) & best(list(reference))) / min(k, len(reference))


def correlations(scores: pd.DataFrame, estimators: list[str], reference: str = REFERENCE, *, resamples: int = 2000,
                 seed: int = 0, top: int = 3) -> pd.DataFrame:
    """Per estimator: Kendall tau and Spearman rho against ``reference`` with bootstrap 95% intervals, top-k overlap."""
    rows = []
    for name in estimators:
        row: dict[str, Any] = {"estimator": name}
        for label, statistic in (("kendall_tau", kendalltau), ("spearman_rho", spearmanr)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant scores: the correlation is NaN, shown as such
                value = statistic(scores[name], scores[reference])
            low, high = _bootstrap_interval(statistic, scores[name], scores[reference], resamples, seed)
            row.update({label: value.statistic, f"{label}_low": low, f"{label}_high": high,
                        f"{label.split('_')[0]}_p": value.pvalue})
        row[f"top{top}_overlap"] = top_overlap(scores[name], scores[reference], top)
        rows.append(row)
    return pd.DataFrame(rows)


def correlation_table(correlations: pd.DataFrame) -> pd.DataFrame:
    """The correlations as printed: ``tau [low, high]`` cells, top-k overlap as a fraction of k."""
    def cell(row, label: str) -> str:
        return f"{row[label]:.3f} [{row[label + '_low']:.3f}, {row[label + '_high']:.3f}]"

    top = next(c for c in correlations.columns if c.startswith("top") and c.endswith("_overlap"))
    return pd.DataFrame({
        "estimator": correlations["estimator"],
        "measures": correlations.get("measures", correlations["estimator"]),
        "kendall tau [95% CI]": [cell(row, "kendall_tau") for _, row in correlations.iterrows()],
        "p": correlations["kendall_p"].map(lambda v: f"{v:.3g}"),
        "spearman rho [95% CI]": [cell(row, "spearman_rho") for _, row in correlations.iterrows()],
        top.replace("_", " "): correlations[top].map(lambda v: f"{v:.2f}"),
    })


def rank_check(
    supernet: str | Path,
    data: str | None = None,
    members: int = 8,
    train_iterations: int = 200,
    *,
    estimators: tuple[str, ...] = ("supernet", "zero-cost"),
    device: str = "auto",
    seed: int = 0,
    batches: int = 20,
    val_samples: int | None = None,
    predictor: str | Path | None = None,
    reference_seeds: int = 1,
    log: Callable[[str], None] = print,
) -> RankCheckResult:
    """Score ``members`` members of the supernet's space by each estimator and by standalone training.

    ``predictor`` (a fitted accuracy predictor's JSON) adds the ``predictor`` estimator. ``reference_seeds``
    trains each member from seeds ``seed``, ``seed + 1``, ...: the reference is their mean.
    """
    if not isinstance(reference_seeds, int) or isinstance(reference_seeds, bool) or reference_seeds < 1:
        raise UserError(f"--reference-seeds {reference_seeds!r}; allowed: an integer >= 1 (2 or more measure the reference's noise)")
    from search import make_estimator
    from training.estimators import ShortTrainEstimator, SupernetEstimator

    supernet_estimator = SupernetEstimator(checkpoint=str(supernet), data=data, batches=batches, val_samples=val_samples,
                                           device=device, seed=seed)
    spec = supernet_estimator.spec
    crop = supernet_estimator.recipe.crop_size
    built: dict[str, Any] = {}
    for name in estimators:
        built[name] = supernet_estimator if name == "supernet" else make_estimator(name, input_size=crop, device=str(supernet_estimator.device), seed=seed)
    if predictor is not None:  # registered like every estimator, so rank_check needs no import of its module
        built["predictor"] = make_estimator("predictor", predictor=str(predictor))
    reference = ShortTrainEstimator(data=spec, iterations=train_iterations, eval_points=1, val_samples=val_samples, device=device, seed=seed)
    references = {f"{REFERENCE}:seed{seed + k}": reference.with_seed(seed + k) for k in range(reference_seeds)}
    rows = []
    for index, config in enumerate(distinct_members(supernet_estimator.space, members, seed)):
        row: dict[str, Any] = {"member": config.name, "config_hash": config.replace(name=None).content_hash()}
        for name, estimator in built.items():
            row[name] = float(estimator.estimate(config))
        per_seed = {column: reference.estimate(config) for column, reference in references.items()}
        row[REFERENCE] = sum(per_seed.values()) / len(per_seed)
        if reference_seeds > 1:
            row.update(per_seed)
        log(f"[{index + 1}/{members}] {row['member']}: " + ", ".join(f"{k} {row[k]:.4f}" for k in [*built, REFERENCE]))
        rows.append(row)
    scores = pd.DataFrame(rows)
    table = correlations(scores, list(built), seed=seed)
    table.insert(1, "measures", [getattr(built[name], "metric_name", name) for name in built])
    return RankCheckResult(scores, table, seed_agreement(scores[list(references)]) if reference_seeds > 1 else None)
