"""Do cheap estimators rank architectures like real training does?

For a seeded sample of supernet members, score each with the estimators and with standalone short
training (the reference), then report Kendall's tau and Spearman's rho of each estimator against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from scipy.stats import kendalltau, spearmanr

from hrvit_nas.errors import UserError

REFERENCE = "standalone"


@dataclass
class RankCheckResult:
    scores: pd.DataFrame  # one row per member: name, config hash, one column per estimator + standalone
    correlations: pd.DataFrame  # one row per estimator: kendall_tau, kendall_p, spearman_rho, spearman_p

    def to_text(self) -> str:
        return (f"scores per member:\n{self.scores.to_string(index=False, float_format=lambda v: f'{v:.4f}')}\n\n"
                f"rank correlation with {REFERENCE} training:\n"
                f"{self.correlations.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")

    def save(self, out_dir: str | Path) -> None:
        from hrvit_nas.atomic import atomic_write_text

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


def correlations(scores: pd.DataFrame, estimators: list[str]) -> pd.DataFrame:
    rows = []
    for name in estimators:
        tau, tau_p = kendalltau(scores[name], scores[REFERENCE])
        rho, rho_p = spearmanr(scores[name], scores[REFERENCE])
        rows.append({"estimator": name, "kendall_tau": tau, "kendall_p": tau_p, "spearman_rho": rho, "spearman_p": rho_p})
    return pd.DataFrame(rows)


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
    log: Callable[[str], None] = print,
) -> RankCheckResult:
    """Score ``members`` members of the supernet's space by each estimator and by standalone training."""
    from search.estimators import make_estimator
    from training.estimators import ShortTrainEstimator, SupernetEstimator

    supernet_estimator = SupernetEstimator(checkpoint=str(supernet), data=data, batches=batches, val_samples=val_samples,
                                           device=device, seed=seed)
    spec = supernet_estimator.spec
    crop = supernet_estimator.recipe.crop_size
    built: dict[str, Any] = {}
    for name in estimators:
        built[name] = supernet_estimator if name == "supernet" else make_estimator(name, input_size=crop, device=str(supernet_estimator.device), seed=seed)
    reference = ShortTrainEstimator(data=spec, iterations=train_iterations, eval_points=1, val_samples=val_samples,
                                    device=device, seed=seed)
    rows = []
    for index, config in enumerate(distinct_members(supernet_estimator.space, members, seed)):
        row: dict[str, Any] = {"member": config.name, "config_hash": config.replace(name=None).content_hash()}
        for name, estimator in built.items():
            row[name] = float(estimator.estimate(config))
        row[REFERENCE] = reference.estimate(config)
        log(f"[{index + 1}/{members}] {row['member']}: " + ", ".join(f"{k} {row[k]:.4f}" for k in [*built, REFERENCE]))
        rows.append(row)
    scores = pd.DataFrame(rows)
    return RankCheckResult(scores, correlations(scores, list(built)))
