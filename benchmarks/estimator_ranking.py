"""How well do the cheap accuracy estimators rank architectures? (synthetic data, CPU, ~30 minutes)

Trains a small supernet briefly on the procedural synthetic dataset, then for a seeded sample of its
members compares the ``supernet`` and ``zero-cost`` estimators with standalone short training
(Kendall tau, Spearman rho). Prints the per-member table, the correlations and the wall time of each
phase. Shorter runs: lower --supernet-iterations / --train-iterations / --members.

    python benchmarks/estimator_ranking.py [--members 8] [--supernet-iterations 200] [--train-iterations 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hrvit_space.space import SearchSpace  # noqa: E402
from training.data import DatasetSpec  # noqa: E402
from training.rank_check import rank_check  # noqa: E402
from training.recipe import TrainRecipe  # noqa: E402
from training.supernet_train import train_supernet  # noqa: E402

# Three branches at 64x64 input (16, 8, 4 pixels a side): depth 1-3 per block, two windows and ratios.
TINY_SPACE = {
    "base": {"channels": [16, 32, 48], "dim_head": 8, "input_size": [64, 64], "drop_path_rate": 0.0,
             "head": {"kind": "segformer", "width": 32, "num_classes": 4, "dropout": 0.0}},
    "depths": [[[1]], [[1], [1, 3]], [[1], [1, 3], [1, 3]], [[1], [1, 2], [1, 3]]],
    "windows": [[1, 2], [2, 4], [2, 4]],
    "mlp_ratios": [[2, 4]] * 3,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--supernet-iterations", type=int, default=200)
    parser.add_argument("--train-iterations", type=int, default=100)
    parser.add_argument("--samples", type=int, default=256, help="synthetic training images (validation: a quarter)")
    parser.add_argument("--val-samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more only contend on shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = DatasetSpec.parse(f"synthetic:num_samples={args.samples},size=64,num_classes=4,seed=0")
    space = SearchSpace.from_dict(TINY_SPACE)
    recipe = TrainRecipe.for_spec(spec, iterations=args.supernet_iterations, eval_interval=0, checkpoint_interval=0)
    print(f"space: {space!r}; supernet recipe: {recipe.iterations} iterations, batch {recipe.batch_size}, crop {recipe.crop_size}")
    with tempfile.TemporaryDirectory(prefix="hrvit-estimator-ranking-") as out:
        started = time.perf_counter()
        checkpoint = train_supernet(space, recipe, out, device="cpu", log=lambda line: print(line, flush=True))
        supernet_s = time.perf_counter() - started
        started = time.perf_counter()
        result = rank_check(checkpoint, None, args.members, args.train_iterations, device="cpu",
                            val_samples=args.val_samples, batches=10, log=lambda line: print(line, flush=True))
        rank_s = time.perf_counter() - started
    print()
    print(result.to_text())
    print(f"\nwall time: supernet training {supernet_s / 60:.1f} min, rank check {rank_s / 60:.1f} min "
          f"({args.members} members x {args.train_iterations} standalone iterations)")


if __name__ == "__main__":
    main()
