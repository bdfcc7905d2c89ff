"""``hrvit-nas train``, ``train-supernet``, ``rank-check`` and ``fit-predictor``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hrvit_nas.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train one architecture (config file or export bundle)",
                                  description="Full training of a config or export bundle; the output directory becomes a bundle with weights.")
    train.add_argument("target", help="export bundle directory or architecture config YAML/JSON")
    train.add_argument("--recipe", help="train.yaml (default: the bundle's, else the dataset's paper recipe)")
    train.add_argument("--data", help="dataset spec, e.g. ade20k:/data/ADEChallengeData2016 or synthetic:num_samples=64")
    train.add_argument("--iterations", type=int, help="override the recipe's iteration count")
    train.add_argument("--init", help="initial weights: weights.pt, checkpoint.pt or a reference HRViT checkpoint")
    train.add_argument("--out", help="output directory (default: runs/<config name or hash>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out exactly where its checkpoint stopped")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun sets one GPU per process)")
    train.set_defaults(func=_train)

    supernet = subparsers.add_parser("train-supernet", help="train a weight-sharing supernet (sandwich rule + distillation)",
                                     description="Sandwich-rule supernet training over a search space with in-place distillation.")
    supernet.add_argument("--space", default="default", help="search space YAML, or 'default'")
    supernet.add_argument("--data", help="dataset spec (required unless --recipe names one)")
    supernet.add_argument("--out", required=True, help="output directory (supernet.pt, checkpoint.pt, metrics)")
    supernet.add_argument("--recipe", help="train.yaml (default: the dataset's recipe)")
    supernet.add_argument("--iterations", type=int, help="override the recipe's iteration count")
    supernet.add_argument("--init", help="initial weights: our checkpoint/supernet.pt or a reference-format HRViT checkpoint")
    supernet.add_argument("--random-members", type=int, default=2, help="random members per step besides largest and smallest")
    supernet.add_argument("--distill", choices=("kl", "hard"), default="kl", help="KL on soft logits, or CE on the largest member's argmax")
    supernet.add_argument("--resume", action="store_true", help="continue the run in --out")
    supernet.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    supernet.set_defaults(func=_train_supernet)

    rank = subparsers.add_parser("rank-check", help="rank correlation of estimators vs standalone training",
                                 description="Kendall tau and Spearman rho of cheap estimators against standalone short training.")
    rank.add_argument("--supernet", required=True, help="supernet.pt from train-supernet")
    rank.add_argument("--data", help="dataset spec (default: the supernet's training data)")
    rank.add_argument("--members", type=int, default=8, help="number of members to compare (>= 3)")
    rank.add_argument("--train-iterations", type=int, default=200, help="standalone training iterations per member")
    rank.add_argument("--estimators", default="supernet,zero-cost", help="comma-separated estimator names")
    rank.add_argument("--batches", type=int, default=20, help="BN recalibration batches for the supernet estimator")
    rank.add_argument("--val-samples", type=int, help="cap on validation images per evaluation")
    rank.add_argument("--out", help="directory for rank_scores.csv and rank_correlations.csv")
    rank.add_argument("--seed", type=int, default=0)
    rank.add_argument("--device", default="auto")
    rank.add_argument("--predictor", help="also rank an accuracy predictor (JSON from fit-predictor)")
    rank.set_defaults(func=_rank_check)

    fit = subparsers.add_parser("fit-predictor", help="fit an accuracy predictor on supernet-evaluated members",
                                description="Score members with the supernet, fit a small MLP on their knobs, save it with its held-out tau.")
    fit.add_argument("--supernet", required=True, help="supernet.pt from train-supernet")
    fit.add_argument("--out", required=True, help="predictor JSON to write (use with --estimator predictor)")
    fit.add_argument("--samples", type=int, default=64, help="distinct members scored by the supernet (a quarter held out)")
    fit.add_argument("--data", help="dataset spec (default: the supernet's training data)")
    fit.add_argument("--batches", type=int, default=20, help="BN recalibration batches per member")
    fit.add_argument("--val-samples", type=int, help="cap on validation images per evaluation")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto")
    fit.set_defaults(func=_fit_predictor)


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{flag} {value}: must be a positive integer")


def _recipe(recipe_path: str | None, data: str | None, iterations: int | None, fallback=None):
    """Recipe from --recipe, else ``fallback`` (a bundle's), else the --data kind's defaults; then overrides."""
    from training.data import DatasetSpec
    from training.recipe import TrainRecipe

    _positive(iterations, "--iterations")
    spec = DatasetSpec.parse(data) if data else None
    if recipe_path:
        recipe = TrainRecipe.load(recipe_path)
    elif fallback is not None:
        recipe = fallback
    elif spec is not None:
        recipe = TrainRecipe.for_spec(spec)
    else:
        raise UserError("no dataset given; pass --data SPEC (e.g. --data synthetic:num_samples=64) or --recipe train.yaml")
    if spec is not None:
        recipe = recipe.replace(dataset=spec.to_dict())
    try:  # the recipe's dataset entry is validated before any work starts
        DatasetSpec.from_dict(recipe.dataset)
    except UserError as error:
        raise UserError(f"recipe dataset: {error}; or pass --data SPEC") from None
    if iterations is not None:
        recipe = recipe.replace(iterations=iterations)
    return recipe


def _train(args: argparse.Namespace) -> int:
    from hrvit_space.config import ArchConfig
    from training.bundle import load_bundle
    from training.trainer import train

    target = Path(args.target)
    init = args.init
    if target.is_dir():
        bundle = load_bundle(target)
        config = bundle.config
        recipe = _recipe(args.recipe, args.data, args.iterations, fallback=bundle.recipe)
        if init is None and bundle.weights_path is not None and not args.resume:
            init = bundle.weights_path
    else:
        config = ArchConfig.load(target)
        recipe = _recipe(args.recipe, args.data, args.iterations)
    out = Path(args.out) if args.out else Path("runs") / config.run_name()
    metrics = train(config, recipe, out, resume=args.resume, init_weights=init, device=args.device)
    print(json.dumps({"out": str(out), **{k: v for k, v in metrics.items() if not isinstance(v, list)}}, indent=2))
    return 0


def _train_supernet(args: argparse.Namespace) -> int:
    from hrvit_space.space import SearchSpace
    from training.supernet_train import train_supernet

    space = SearchSpace.default() if args.space == "default" else SearchSpace.load(args.space)
    recipe = _recipe(args.recipe, args.data, args.iterations)
    path = train_supernet(space, recipe, args.out, resume=args.resume, init=args.init, device=args.device,
                          random_members=args.random_members, distill=args.distill)
    print(f"supernet written to {path}")
    return 0


def _rank_check(args: argparse.Namespace) -> int:
    from training.rank_check import rank_check

    _positive(args.train_iterations, "--train-iterations")
    _positive(args.batches, "--batches")
    _positive(args.val_samples, "--val-samples")
    estimators = tuple(name.strip() for name in args.estimators.split(",") if name.strip())
    if not estimators:
        raise UserError("--estimators is empty; pass e.g. --estimators supernet,zero-cost")
    result = rank_check(args.supernet, args.data, args.members, args.train_iterations, estimators=estimators,
                        device=args.device, seed=args.seed, batches=args.batches, val_samples=args.val_samples,
                        predictor=args.predictor)
    print(result.to_text())
    if args.out:
        result.save(args.out)
    return 0


def _fit_predictor(args: argparse.Namespace) -> int:
    from training.accuracy_predictor import fit_from_supernet

    _positive(args.samples, "--samples")
    _positive(args.batches, "--batches")
    _positive(args.val_samples, "--val-samples")
    predictor = fit_from_supernet(args.supernet, args.samples, data=args.data, batches=args.batches,
                                  val_samples=args.val_samples, device=args.device, seed=args.seed)
    predictor.save(args.out)
    print(json.dumps({"out": args.out, **predictor.metrics}, indent=2))
    return 0
