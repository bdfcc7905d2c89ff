"""``hrvit-nas train``, ``train-supernet``, ``rank-check``, ``fit-predictor``, ``predict`` and ``evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hrvit_nas import UserError


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
    _cfg_options_argument(train)
    train.add_argument("--keep-last", type=int, default=0, metavar="N",
                       help="also keep the last N checkpoints as iter_<n>.pt (default 0: only checkpoint.pt and best.pt)")
    train.add_argument("--log-interval", type=int, default=50, metavar="N", help="iterations per train_log.csv row (default 50)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
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
    supernet.add_argument("--distill", choices=("kl", "hard", "labels"), default="kl",
                          help="KL on soft logits, CE on the largest member's argmax, or labels only (no distillation: the ablation)")
    supernet.add_argument("--resume", action="store_true", help="continue the run in --out")
    supernet.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _cfg_options_argument(supernet)
    supernet.set_defaults(func=_train_supernet)

    rank = subparsers.add_parser("rank-check", help="rank correlation of estimators vs standalone training",
                                 description="Kendall tau and Spearman rho (bootstrap 95% intervals) and top-3 overlap of cheap estimators "
                                             "against standalone short training, on the supernet's space and your data.")
    rank.add_argument("--supernet", required=True, help="supernet.pt from train-supernet")
    rank.add_argument("--data", help="dataset spec (default: the supernet's training data)")
    rank.add_argument("--members", type=int, default=8, help="number of members to compare (>= 3)")
    rank.add_argument("--train-iterations", type=int, default=200, help="standalone training iterations per member")
    rank.add_argument("--estimators", default="supernet,zero-cost,params", help="comma-separated estimator names "
                      "(params: the capacity proxy any estimator should beat)")
    rank.add_argument("--reference-seeds", type=int, default=1, help="standalone runs per member, each from its own seed; "
                      "the reference is their mean and 2 or more print how well it agrees with itself (default 1)")
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

    predict = subparsers.add_parser("predict", help="segmentation maps (palette PNGs + overlays) for images",
                                    description="Predict with a trained model: one palette PNG of class indices and one overlay per image.")
    predict.add_argument("model", help="bundle or run directory, or a run's checkpoint.pt / best.pt")
    predict.add_argument("images", help="an image file or a directory of images (.jpg, .jpeg, .png)")
    predict.add_argument("--out", required=True, help="output directory (<stem>.png maps, overlay/<stem>.png)")
    predict.add_argument("--mode", default="auto", help="auto (sliding window for images larger than the crop), whole or slide")
    predict.add_argument("--crop", metavar="HxW", help="sliding-window size (default: the training crop)")
    predict.add_argument("--stride", metavar="HxW", help="sliding-window stride (default: the recipe's, 3/4 of the crop)")
    predict.add_argument("--batch-size", type=int, default=8, help="images of one size per forward pass (default 8)")
    predict.add_argument("--opacity", type=float, default=0.5, help="weight of the class colours in the overlay (default 0.5)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.set_defaults(func=_predict)

    evaluate = subparsers.add_parser("evaluate", help="mIoU, per-class IoU and aAcc of a trained model on a dataset",
                                     description="Score a trained model on a dataset's validation split.")
    evaluate.add_argument("model", help="bundle or run directory, or a run's checkpoint.pt / best.pt")
    evaluate.add_argument("--data", help="dataset spec (default: the one the model was trained on)")
    evaluate.add_argument("--mode", choices=("whole", "slide"), help="inference mode (default: the training recipe's)")
    evaluate.add_argument("--out", help="directory for metrics.json and metrics.csv")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.set_defaults(func=_evaluate)


def _cfg_options_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override recipe fields, mmseg-style: --cfg-options lr=1e-4 crop_size=[256,256] dataset.root=/data")


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{flag} {value}: must be a positive integer")


def _recipe(recipe_path: str | None, data: str | None, iterations: int | None, cfg_options: list[str], fallback=None):
    """Recipe from --recipe, else ``fallback`` (a bundle's), else the --data kind's defaults; then
    --data, --iterations and --cfg-options, in that order."""
    from training.data import DatasetSpec
    from training.overrides import apply_cfg_options
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
    if iterations is not None:
        recipe = recipe.replace(iterations=iterations)
    recipe = apply_cfg_options(recipe, cfg_options)
    try:  # the recipe's dataset entry is validated before any work starts
        DatasetSpec.from_dict(recipe.dataset)
    except UserError as error:
        raise UserError(f"recipe dataset: {error}; or pass --data SPEC") from None
    return recipe


def _train(args: argparse.Namespace) -> int:
    from hrvit_space import ArchConfig
    from training.bundle import load_bundle
    from training.trainer import train

    _positive(args.log_interval, "--log-interval")
    if args.keep_last < 0:
        raise UserError(f"--keep-last {args.keep_last}: must be 0 (keep only checkpoint.pt) or a positive count")
    target = Path(args.target)
    init = args.init
    if target.is_dir():
        bundle = load_bundle(target)
        config = bundle.config
        recipe = _recipe(args.recipe, args.data, args.iterations, args.cfg_options, fallback=bundle.recipe)
        if init is None and bundle.weights_path is not None and not args.resume:
            init = bundle.weights_path
    else:
        config = ArchConfig.load(target)
        recipe = _recipe(args.recipe, args.data, args.iterations, args.cfg_options)
    out = Path(args.out) if args.out else Path("runs") / config.run_name()
    metrics = train(config, recipe, out, resume=args.resume, init_weights=init, device=args.device, keep_last=args.keep_last,
                    log_interval=args.log_interval, progress=not args.no_progress and sys.stderr.isatty())
    print(json.dumps({"out": str(out), **{k: v for k, v in metrics.items() if not isinstance(v, list)}}, indent=2))
    return 0


def _train_supernet(args: argparse.Namespace) -> int:
    from hrvit_space import SearchSpace
    from training.supernet_train import train_supernet

    space = SearchSpace.default() if args.space == "default" else SearchSpace.load(args.space)
    recipe = _recipe(args.recipe, args.data, args.iterations, args.cfg_options)
    path = train_supernet(space, recipe, args.out, resume=args.resume, init=args.init, device=args.device,
                          random_members=args.random_members, distill=args.distill)
    print(f"supernet written to {path}")
    return 0


def _rank_check(args: argparse.Namespace) -> int:
    from training.rank_check import rank_check

    _positive(args.train_iterations, "--train-iterations")
    _positive(args.batches, "--batches")
    _positive(args.val_samples, "--val-samples")
    _positive(args.reference_seeds, "--reference-seeds")
    estimators = tuple(name.strip() for name in args.estimators.split(",") if name.strip())
    if not estimators:
        raise UserError("--estimators is empty; pass e.g. --estimators supernet,zero-cost")
    result = rank_check(args.supernet, args.data, args.members, args.train_iterations, estimators=estimators,
                        device=args.device, seed=args.seed, batches=args.batches, val_samples=args.val_samples,
                        predictor=args.predictor, reference_seeds=args.reference_seeds)
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


def _size(text: str | None, flag: str) -> tuple[int, int] | None:
    from hrvit_space import parse_input_size

    return None if text is None else parse_input_size(text, flag)


def _predict(args: argparse.Namespace) -> int:
    from profiling import resolve_device
    from training.predict import image_files, load_trained_model, predict_images

    device = resolve_device(args.device)
    images = image_files(args.images)
    trained = load_trained_model(args.model, device)
    written = predict_images(trained, images, args.out, mode=args.mode, crop=_size(args.crop, "--crop"),
                             stride=_size(args.stride, "--stride"), batch_size=args.batch_size, opacity=args.opacity, device=device)
    print(f"{len(written)} segmentation map(s) written to {args.out} (overlays in {Path(args.out) / 'overlay'})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from profiling import resolve_device
    from training.data import DatasetSpec
    from training.metrics import write_metrics
    from training.predict import evaluate_model, load_trained_model

    device = resolve_device(args.device)
    trained = load_trained_model(args.model, device)
    spec = DatasetSpec.parse(args.data) if args.data else DatasetSpec.from_dict(trained.recipe.dataset)
    metrics, class_names = evaluate_model(trained, spec, mode=args.mode, device=device)
    names = class_names or [str(c) for c in range(len(metrics["per_class_iou"]))]
    print(f"mIoU {metrics['miou']:.4f}  aAcc {metrics['pixel_accuracy']:.4f}  mAcc {metrics['mean_accuracy']:.4f}")
    width = max(len(name) for name in names)
    for name, iou, accuracy in zip(names, metrics["per_class_iou"], metrics["per_class_accuracy"]):
        print(f"  {name:<{width}}  IoU {iou:.4f}  Acc {accuracy:.4f}")
    if args.out:
        out = Path(args.out)
        write_metrics(metrics, json_path=out / "metrics.json", csv_path=out / "metrics.csv", class_names=class_names)
        print(f"metrics written to {out / 'metrics.json'} and {out / 'metrics.csv'}")
    return 0
