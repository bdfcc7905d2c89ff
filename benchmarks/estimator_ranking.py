"""Do the accuracy estimators rank architectures like standalone training does, on a real task?

Task: brain-tissue segmentation on slices of the MNI ICBM152 template (``mni152`` dataset kind, shipped
in the nilearn wheel: ``pip install -e ".[brain]"``), train/val split by slab, ``--classes`` 3 (default:
background with CSF, grey and white matter) or 4 (CSF apart; its IoU swung 0.00-0.12 between two seeds
of one member in the 2026-12-02 pilots, as much as the whole spread between members), each tissue split
into its left and right hemisphere with ``--hemispheres 2`` (the default: 5 classes, trained without
flips). Why split: on tissue alone the smallest (3 blocks) and largest (22 blocks) members tied within
seed noise even after 1500 iterations (0.830 and 0.827, 2026-12-03 pilots), so the reference could not
rank anything; telling the symmetric hemispheres apart needs context reaching the midline, and after
1000 iterations the largest member led the smallest by 0.034 (0.767 against 0.733, two seeds each). Slices are
``--size`` (128) pixels, trained on random ``--crop`` (64) crops and validated whole. The SegFormer head
predicts at 1/4 resolution, which caps mIoU on the thin grey-matter ribbon and CSF: the table prints the
mIoU of an oracle that knows the true mask at 1/4 resolution (0.61 at 64 pixels, 0.71 at 128), and at
64-pixel slices every member plateaued within 2 points of that ceiling, so no estimator could rank them
(3 classes at 128: 0.87).

1. Members: ``--members`` (12) of a space whose depths (0-3 per module and branch: 3 to 22 HRViT
   blocks), windows and MLP ratios vary, picked at evenly spaced ranks of FLOPs among distinct samples,
   so they span the space's params/FLOPs range.
2. Reference: each member trained standalone with one recipe and ``--standalone-seeds`` (2) seeds; its
   validation mIoU curves are logged and the reference score is the plateau (mean of the last three
   evaluations) averaged over the seeds. Each evaluation scores the EMA of the weights (``--ema``) with BN
   recalibrated: the raw weights' mIoU jumped by up to 0.074 between neighbouring evaluations. The table shows the gain over the last quarter of training, so
   a reader sees whether the curves had flattened, and the reference's own reproducibility: Kendall tau
   between the seeds' rankings and the mean seed-to-seed spread. On 2026-12-02 one member's two seeds
   differed by as much as the smallest and largest members did; an estimator cannot be judged above the
   tau the reference reaches against itself.
3. Supernet variants, each trained with the sandwich rule and in-place distillation, then scored by
   inheritance with BN recalibration: ``sandwich-kl`` (the default recipe), ``bn-5`` / ``bn-50`` (same
   supernet, 5 or 50 instead of 20 recalibration batches), ``warm-start`` (initialised from the trained largest member),
   ``long`` (twice the iterations), ``hard`` (distillation on the teacher's argmax), ``labels`` (no
   distillation: every sampled member learns from the labels).
4. Other estimators: short-train (``--short-iterations``), zero-cost (NASWOT), params, FLOPs, and the
   accuracy predictor fitted on ``--predictor-samples`` supernet-scored members (the benchmark members
   excluded), whose held-out tau against supernet scores is reported too.
5. Per estimator: Kendall tau and Spearman rho against the reference with bootstrap 95% intervals and
   the top-3 overlap (training.rank_check). Goal: supernet tau >= 0.7 with its lower bound above the
   zero-cost tau.

CPU, 2 idle cores, the defaults ``--threads 1 --jobs 1`` (one worker process trains the standalone members while the
main process trains and scores the supernet): about 60 minutes at ``--scale 1`` with one standalone seed,
30 with ``--scale 0.5`` (estimated from the idle per-iteration times of 2026-12-01; on cores shared with
other work it is slower; the plateau line says whether the standalone curves flattened); each further
``--standalone-seeds`` adds the standalone phase once more (``--jobs 2`` runs seeds side by side). Measured
2026-12-02 on 2 cores beside other work (load 3-4): a 360-iteration standalone run (EMA evaluations
included) took 1.9-2.6 min for the smaller half of the members, so 12 members x 2 seeds take over 55 min
alone, while the supernet (800 iterations, 4 members a step) took 16.5 min and scoring 12 members with 50
BN batches 1.6 min: the standalone phase is the one to shorten or spread over ``--jobs``. On 2 idle
cores (2026-12-03), ``--standalone-iterations 1200 --supernet-iterations 1000 --jobs 2`` with two seeds
and two supernet variants took 38.6 min. A GPU
user runs it bigger with ``--scale 4 --size 256 --crop 128 --device cuda`` (scale multiplies every
iteration count and the predictor's samples). ``--smoke`` runs every phase for a few iterations (about a minute)
to prove the script works; its numbers mean nothing.

Reproducibility: the kernels are picked by timing (``hrvit_space.kernels``), and at this budget training
is chaotic enough that their rounding differences move one supernet's scores by 0.03 mIoU between two
runs of the same recipe (their rankings agreed at tau 0.36 on 2026-12-03). Set ``HRVIT_NAS_KERNELS=first``
for bitwise-repeatable runs; compare estimators only by what repeats. ``--supernet-seeds N`` trains each
variant's supernet from N seeds and scores by their mean, printing the seeds' agreement beside the
reference's. ``--reference rank_scores.csv`` reuses an earlier run's standalone reference (matched by
config hash) instead of training one, so a supernet recipe is compared in the supernet's own time;
``benchmarks/reference/mni152-hemispheres-1200it-3seeds.csv`` is the default members' reference of
2026-12-03 (run 2 in RESULTS.md: 3 seeds x 1200 iterations, rebuilt from its table, so without per-seed
columns).

    python benchmarks/estimator_ranking.py --out runs/estimator-ranking [--scale 0.5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402

from hrvit_nas.atomic import atomic_write_text  # noqa: E402
from hrvit_space.space import SearchSpace  # noqa: E402
from search.estimators import make_estimator  # noqa: E402
from training.accuracy_predictor import fit_predictor  # noqa: E402
from training.data import DatasetSpec, build_dataset  # noqa: E402
from training.estimators import ShortTrainEstimator, SupernetEstimator  # noqa: E402
from training.rank_check import REFERENCE, correlation_table, correlations, distinct_members, seed_agreement  # noqa: E402
from training.recipe import TrainRecipe  # noqa: E402
from training.supernet_train import train_supernet  # noqa: E402

# Three branches (stride 4, 8, 16), MLP ratio 1 or 4, two windows per branch. Depths 0-3 per module and
# branch: the smallest member has one HRViT block per branch (3 in all), the largest 22. Why 0: with
# depth >= 1 everywhere (9 to 22 blocks) the smallest and largest members' standalone plateaus differed by
# 0.005-0.01 mIoU after 300 iterations (2026-12-02 pilots), within reach of seed noise.
SPACE = {
    "base": {"channels": [16, 32, 48], "dim_head": 8, "input_size": [64, 64], "drop_path_rate": 0.0,
             "head": {"kind": "segformer", "width": 32, "num_classes": 4, "dropout": 0.0}},
    "depths": [[[1, 2]], [[0, 2], [1, 3]], [[0, 2], [0, 3], [1, 3]], [[0, 2], [0, 2], [0, 3]]],
    "windows": [[1, 2], [2, 4], [2, 4]],
    "mlp_ratios": [[1, 4]] * 3,
}
HEAD_STRIDE = 4  # the SegFormer head's output stride
PLATEAU_GAIN = 0.01  # a curve gaining less than this over its last quarter counts as converged
PLATEAU_EVALS = 3  # the plateau is the mean of the last this many evaluations (one evaluation alone swings by 0.02-0.05)
VARIANTS = {  # name: (iteration factor, warm start from the largest member, BN batches, distillation, reuses)
    "sandwich-kl": (1, False, None, "kl", None),
    "bn-5": (1, False, 5, "kl", "sandwich-kl"),
    "bn-50": (1, False, 50, "kl", "sandwich-kl"),
    "warm-start": (1, True, None, "kl", None),
    "long": (2, False, None, "kl", None),
    "hard": (1, False, None, "hard", None),
    "labels": (1, False, None, "labels", None),
}


@dataclasses.dataclass
class Settings:
    members: int = 12
    standalone_iterations: int = 1500
    evaluations: int = 10
    supernet_iterations: int = 2000
    random_members: int = 2
    short_iterations: int = 150
    bn_batches: int = 20
    predictor_samples: int = 64
    val_samples: int | None = None
    resamples: int = 2000

    def scaled(self, factor: float) -> "Settings":
        grow = lambda n: max(1, round(n * factor))  # noqa: E731
        return dataclasses.replace(self, standalone_iterations=grow(self.standalone_iterations),
                                   supernet_iterations=grow(self.supernet_iterations),
                                   short_iterations=grow(self.short_iterations), predictor_samples=grow(self.predictor_samples))


SMOKE = Settings(members=4, standalone_iterations=4, evaluations=2, supernet_iterations=3, random_members=1,
                 short_iterations=2, bn_batches=1, predictor_samples=9, val_samples=4, resamples=100)


def spanning_members(space: SearchSpace, count: int, flops) -> list:
    """``count`` distinct members at evenly spaced FLOPs ranks (smallest and largest included)."""
    pool = sorted(distinct_members(space, max(20 * count, 200), seed=0), key=flops.estimate)
    picks = [round(i * (len(pool) - 1) / (count - 1)) for i in range(count)]
    return [pool[index].replace(name=f"m{rank:02d}") for rank, index in enumerate(picks)]


def standalone(member, recipe: TrainRecipe, out: Path, device: str, ema: float, bn_batches: int) -> dict:
    """Train ``member`` from scratch; its curve, plateau and the gain over the last quarter.

    Every evaluation scores an exponential moving average of the weights (decay ``ema``; 0 = the raw
    weights) with BN statistics recalibrated on ``bn_batches`` fixed training batches, the way the
    supernet estimator scores an inherited member. Why: in the 2026-12-02 pilots the raw weights' mIoU
    jumped by up to 0.074 (white-matter IoU by 0.17) between neighbouring evaluations late in training,
    so one evaluation ranked a member by where it happened to stand; the EMA moved by at most 0.014.
    (Recalibrating the raw weights' BN alone still left jumps of 0.038.)
    """
    import copy
    import tempfile

    from hrvit_space import HRViT, recalibrate_bn
    from training.checkpoint import save_checkpoint, seed_everything
    from training.distributed import DistContext
    from training.evaluation import calibration_batches, val_loader
    from training.inference import evaluate
    from training.loop import run_training
    from training.optim import segmentation_loss
    from training.trainer import build_train_set, build_val_set, fit_config_to_data

    run = out / f"{member.name}-seed{recipe.seed}"
    run.mkdir(parents=True, exist_ok=True)
    spec = DatasetSpec.from_dict(recipe.dataset)
    config = fit_config_to_data(member, recipe, spec.num_classes, log=lambda _: None)
    train_set, val_set = build_train_set(spec, recipe), build_val_set(spec)
    calibration = calibration_batches(train_set, bn_batches, min(recipe.batch_size, len(train_set)), seed=0)
    loader = val_loader(val_set, spec)
    seed_everything(recipe.seed)
    model = HRViT(config)
    average = copy.deepcopy(model)
    state = {"averaged": 0, "last": 0}

    def catch_up(done: int) -> None:
        """Fold the weights after ``done`` optimizer steps into the average (once per step)."""
        if done > state["averaged"]:
            decay = min(ema, (1 + done) / (10 + done))  # short warm-up: early averages do not keep the random init
            with torch.no_grad():
                for kept, current in zip(average.parameters(), model.parameters()):
                    kept.lerp_(current, 1 - decay)
            state["averaged"] = done

    def step(trained, images, masks, precision, iteration: int) -> float:
        catch_up(iteration)
        state["last"] = iteration
        loss = segmentation_loss(trained(images), masks, spec.ignore_index)
        precision.backward(loss)
        return loss.item()

    def score(_model) -> dict:
        catch_up(state["last"] + 1)
        scored = average if ema > 0 else copy.deepcopy(model)
        recalibrate_bn(scored, [images.to(device) for images in calibration])
        with torch.no_grad():
            return evaluate(scored, loader, spec.num_classes, device=device, ignore_index=spec.ignore_index)

    with tempfile.TemporaryDirectory(prefix="standalone-") as scratch:
        history = run_training(model, recipe, scratch, train_set, step, evaluate=score, meta={}, ctx=DistContext(0, 1, torch.device(device)),
                               log=lambda _: None)
    weights = run / "weights.pt"
    save_checkpoint(weights, (average if ema > 0 else model).state_dict())
    curve = pd.DataFrame({"iteration": [h["iteration"] for h in history], "miou": [h["miou"] for h in history],
                          **{f"iou.{name}": [h["per_class_iou"][c] for h in history] for c, name in enumerate(train_set.class_names)}})
    atomic_write_text(run / "eval_history.csv", curve.to_csv(index=False))
    quarter = max(1, len(curve) // 4)
    plateau = float(curve["miou"].tail(PLATEAU_EVALS).mean())
    earlier = float(curve["miou"].iloc[-1 - quarter]) if len(curve) > quarter else float("nan")
    return {"plateau": plateau, "last_quarter_gain": float(curve["miou"].iloc[-1]) - earlier,
            "curve": curve["miou"].round(4).tolist(), "weights": weights}


def resolution_ceiling(spec: DatasetSpec) -> float:
    """Validation mIoU of an oracle that knows the true mask only at the head's 1/4 resolution."""
    from training.metrics import ConfusionMatrix

    val = build_dataset(spec, "val")
    masks = torch.stack([val[i][1] for i in range(len(val))])
    one_hot = torch.nn.functional.one_hot(masks, spec.num_classes).permute(0, 3, 1, 2).float()
    coarse = torch.nn.functional.avg_pool2d(one_hot, HEAD_STRIDE)
    oracle = torch.nn.functional.interpolate(coarse, size=masks.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    confusion = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    confusion.update(oracle, masks)
    return confusion.compute()["miou"]


def supernet_job(space: SearchSpace, recipe: TrainRecipe, out: Path, device: str, distill: str, random_members: int,
                 init: str | None, label: str) -> Path:
    """One supernet trained from ``recipe.seed`` (a top-level function, so worker processes can run it)."""
    return train_supernet(space, recipe, out, device=device, distill=distill, random_members=random_members, init=init,
                          log=lambda line: print(f"{label}: {line}", flush=True))


def read_reference(path: Path, members: list) -> list[dict]:
    """Each member's standalone reference from an earlier run's ``rank_scores.csv`` (matched by config hash)."""
    frame = pd.read_csv(path, dtype={"config_hash": str})
    required = {"config_hash", REFERENCE, "seed_spread", "last_quarter_gain"}
    if not required <= set(frame.columns):
        raise ValueError(f"--reference {path} lacks the columns {', '.join(sorted(required - set(frame.columns)))}; pass the "
                         "rank_scores.csv an earlier run of this benchmark wrote")
    kept = [c for c in frame.columns if c in (REFERENCE, "seed_spread", "last_quarter_gain", "curve") or re.fullmatch(r"seed\d+", c)]
    by_hash = frame.set_index("config_hash")[kept]
    hashes = [m.replace(name=None).content_hash() for m in members]
    missing = [m.name for m, h in zip(members, hashes) if h not in by_hash.index]
    if missing:
        raise ValueError(f"--reference {path} lacks members {', '.join(missing)}: it was made for other members (another space, "
                         "--members, --crop or --hemispheres); rerun without --reference")
    return [by_hash.loc[h].dropna().to_dict() for h in hashes]


class SeedMean:
    """Supernet estimators trained from different seeds, scored by their mean (one seed's ranking is mostly noise here)."""

    def __init__(self, scorers: list[SupernetEstimator]) -> None:
        self.scorers = scorers
        self.metric_name, self.unit = scorers[0].metric_name, scorers[0].unit

    def per_seed(self, member) -> list[float]:
        return [scorer.estimate(member) for scorer in self.scorers]

    @staticmethod
    def combine(per_seed: list[float]) -> float:
        """The score of a member from its per-seed scores."""
        return float(np.mean(per_seed))

    def estimate(self, member) -> float:
        return self.combine(self.per_seed(member))


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(map(str, row)) + " |\n" for row in frame.itertuples(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/estimator-ranking", help="runs, CSV tables and results.md")
    parser.add_argument("--variants", default="sandwich-kl,bn-5", help=f"supernet variants: {', '.join(VARIANTS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every iteration count (GPU: 4 or more)")
    parser.add_argument("--size", type=int, default=128, help="slice size in pixels, validated whole (GPU: 256)")
    parser.add_argument("--crop", type=int, default=64, help="side of the random training crops (GPU: 128)")
    parser.add_argument("--members", type=int, help="benchmark members (default 12)")
    parser.add_argument("--classes", type=int, choices=(3, 4), default=3, help="4: background, CSF, grey, white matter; 3 (default): "
                        "CSF merged into background (CSF's IoU swings 0.00-0.12 between seeds of one member)")
    parser.add_argument("--hemispheres", type=int, choices=(1, 2), default=2, help="2 (default): each tissue class split into "
                        "left and right hemisphere, a task that needs long-range context; 1: tissue only (members tie)")
    parser.add_argument("--ema", type=float, default=0.98, help="decay of the weight average the standalone members are scored "
                        "with (0: the raw weights); their BN statistics are recalibrated like the supernet estimator's (default 0.98)")
    parser.add_argument("--standalone-iterations", type=int, help="iterations per standalone member (overrides --scale for them)")
    parser.add_argument("--supernet-iterations", type=int, help="supernet iterations (overrides --scale for the supernet)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each process")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes training the standalone members "
                        "(alongside the main process, which trains and scores the estimators meanwhile)")
    parser.add_argument("--standalone-seeds", type=int, default=2, help="seeds per standalone member; the reference is "
                        "their mean plateau and the table says how well the seeds agree (default 2)")
    parser.add_argument("--supernet-seeds", type=int, default=1, help="supernets trained per variant, each from its own seed; "
                        "a variant's score is their mean and the table says how well the seeds agree (default 1)")
    parser.add_argument("--reference", type=Path, help="rank_scores.csv of an earlier run with the same members: reuse its "
                        "standalone reference (the expensive phase) instead of training one; the supernet seeds then train side "
                        "by side in the --jobs workers")
    parser.add_argument("--smoke", action="store_true", help="a few iterations of every phase (proves the script runs)")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
    for name in variants:  # a variant reusing another's supernet needs that one trained first
        reused = VARIANTS[name][4]
        if reused and reused not in variants[: variants.index(name)]:
            parser.error(f"variant {name} reuses the {reused} supernet; list {reused} before it")
    for name in ("standalone_seeds", "supernet_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}; allowed: an integer >= 1")
    if args.reference is not None:
        if not args.reference.is_file():
            parser.error(f"--reference {args.reference}: no such file; pass the rank_scores.csv of an earlier run")
        if any(VARIANTS[name][1] for name in variants):
            parser.error("the warm-start variant starts from a standalone member, which --reference does not train; drop one of them")
    if not 0 <= args.ema < 1:
        parser.error(f"--ema {args.ema}; allowed: a decay in [0, 1) (0 scores the raw weights)")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}; allowed: an integer >= 1")
    settings = (SMOKE if args.smoke else Settings()).scaled(args.scale)
    for name in ("members", "standalone_iterations", "supernet_iterations"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}; allowed: an integer >= 1")
            settings = dataclasses.replace(settings, **{name: getattr(args, name)})
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        parser.error(f"--out {out} is not empty; choose a new directory (runs are not overwritten)")
    log = lambda line: print(line, flush=True)  # noqa: E731
    timings: dict[str, float] = {}
    started = time.perf_counter()

    spec = DatasetSpec.parse(f"mni152:size={args.size},classes={args.classes},hemispheres={args.hemispheres}")
    if not 0 < args.crop <= args.size:
        parser.error(f"--crop {args.crop} must be between 1 and --size {args.size}")
    space = SearchSpace.from_dict({**SPACE, "base": {**SPACE["base"], "input_size": [args.crop, args.crop],
                                                     "head": {**SPACE["base"]["head"], "num_classes": spec.num_classes}}})
    size = (args.crop, args.crop)
    proxies = {name: make_estimator(name, input_size=size, device=args.device, seed=0) for name in ("zero-cost", "params", "flops")}
    members = spanning_members(space, settings.members, proxies["flops"])
    ceiling = resolution_ceiling(spec)
    classes = build_dataset(spec, "val").class_names
    log(f"{len(members)} members, {proxies['flops'].estimate(members[0]):.3f}-{proxies['flops'].estimate(members[-1]):.3f} GFLOPs; {settings}")
    rows = [{"member": m.name, "config_hash": m.replace(name=None).content_hash()} for m in members]
    try:
        reference = read_reference(args.reference, members) if args.reference is not None else None
    except ValueError as error:
        parser.error(str(error))

    submitted = time.perf_counter()
    interval = max(1, settings.standalone_iterations // settings.evaluations)
    recipe = TrainRecipe.for_spec(spec, iterations=settings.standalone_iterations, eval_interval=interval, checkpoint_interval=0,
                                  crop_size=size)
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=torch.set_num_threads, initargs=(args.threads,)) as pool:
        # the standalone members train in worker processes while this one trains and scores the estimators
        seeds = range(args.standalone_seeds)
        runs = [] if reference is not None else [
            [pool.submit(standalone, member, dataclasses.replace(recipe, seed=seed), out / "standalone", args.device, args.ema,
                         settings.bn_batches) for seed in seeds]
            for member in members]
        train_all = pool.map if reference is not None else map  # the workers are free when no standalone member trains
        checkpoints: dict[str, list[Path]] = {}
        supernet_scorers: dict[str, SeedMean] = {}
        for name in variants:
            factor, warm, batches, distill, reused = VARIANTS[name]
            phase = time.perf_counter()
            if reused is None:
                super_recipe = TrainRecipe.for_spec(spec, iterations=settings.supernet_iterations * factor, eval_interval=0, checkpoint_interval=0,
                                                    crop_size=size)
                init = str(runs[-1][0].result()["weights"]) if warm else None
                checkpoints[name] = list(train_all(supernet_job, *zip(*[
                    (space, dataclasses.replace(super_recipe, seed=seed), out / "supernet" / name / f"seed{seed}", args.device, distill,
                     settings.random_members, init, f"supernet {name} seed {seed}") for seed in range(args.supernet_seeds)])))
            scorer = SeedMean([SupernetEstimator(checkpoint=str(path), batches=batches or settings.bn_batches, val_samples=settings.val_samples,
                                                 device=args.device) for path in checkpoints[reused or name]])
            supernet_scorers[name] = scorer
            for row, member in zip(rows, members):
                per_seed = scorer.per_seed(member)
                row[f"supernet:{name}"] = scorer.combine(per_seed)
                row.update({f"supernet:{name}:seed{seed}": value for seed, value in enumerate(per_seed)})
            timings[f"supernet {name}"] = time.perf_counter() - phase
            atomic_write_text(out / "scores_partial.csv", pd.DataFrame(rows).to_csv(index=False))  # a run stopped later keeps these
            log(f"supernet {name}: {args.supernet_seeds} seed(s), scored {len(members)} members in {timings[f'supernet {name}'] / 60:.1f} min")

        phase = time.perf_counter()
        short = ShortTrainEstimator(data=spec, iterations=settings.short_iterations, eval_points=1, val_samples=settings.val_samples,
                                    crop=args.crop, device=args.device)
        for row, member in zip(rows, members):
            row["short-train"] = short.estimate(member)
            for name, proxy in proxies.items():
                row[name] = proxy.estimate(member)
        timings["short-train and proxies"] = time.perf_counter() - phase

        phase = time.perf_counter()
        scorer = supernet_scorers[variants[0]]
        taken = {row["config_hash"] for row in rows}
        candidates = distinct_members(space, settings.predictor_samples + len(members), seed=1)
        samples = [c for c in candidates if c.replace(name=None).content_hash() not in taken][: settings.predictor_samples]
        predictor = fit_predictor(space, samples, [scorer.estimate(c) for c in samples], seed=0,
                                  target={"metric_name": scorer.metric_name, "unit": scorer.unit})
        predictor.save(out / "predictor.json")
        for row, value in zip(rows, predictor.predict(members)):
            row["predictor"] = value
        timings["predictor"] = time.perf_counter() - phase
        for index, (row, member) in enumerate(zip(rows, members)):
            if reference is not None:
                row.update(reference[index])
                continue
            results = [run.result() for run in runs[index]]
            plateaus = [r["plateau"] for r in results]
            row.update({REFERENCE: float(np.mean(plateaus)), "last_quarter_gain": max(r["last_quarter_gain"] for r in results),
                        "seed_spread": float(np.ptp(plateaus)), "curve": json.dumps([r["curve"] for r in results]),
                        **{f"seed{seed}": plateau for seed, plateau in zip(seeds, plateaus)}})
            log(f"standalone {member.name}: plateau mIoU {row[REFERENCE]:.4f} over {len(plateaus)} seed(s) "
                f"(spread {row['seed_spread']:.4f}, largest last-quarter gain {row['last_quarter_gain']:+.4f})")
    if reference is None:
        timings["standalone (overlaps the others)"] = time.perf_counter() - submitted

    scores = pd.DataFrame(rows)
    estimators = [f"supernet:{name}" for name in variants] + ["predictor", "short-train", "zero-cost", "params", "flops"]
    table = correlations(scores, estimators, resamples=settings.resamples)
    names = {**{f"supernet:{n}": f"{supernet_scorers[n].metric_name} ({n})" for n in variants}, "predictor": "mIoU, predicted",
             "short-train": short.metric_name, **{n: getattr(p, "metric_name", n) for n, p in proxies.items()}}
    table.insert(1, "measures", [names[name] for name in estimators])
    scores.to_csv(out / "rank_scores.csv", index=False)
    table.to_csv(out / "rank_correlations.csv", index=False)
    timings["total"] = time.perf_counter() - started

    by_name = table.set_index("estimator")
    zero_cost_tau = float(by_name.loc["zero-cost", "kendall_tau"])
    met = [n for n in variants if by_name.loc[f"supernet:{n}", "kendall_tau"] >= 0.7
           and by_name.loc[f"supernet:{n}", "kendall_tau_low"] > zero_cost_tau]
    member_table = scores[["member", REFERENCE, "seed_spread", "last_quarter_gain", *estimators]].round(4)
    seed_columns = [c for c in scores.columns if re.fullmatch(r"seed\d+", c)]
    if len(seed_columns) > 1:
        per_seed = scores[seed_columns]
        seed_tau = seed_agreement(per_seed)
        centred_spread = float(np.ptp((per_seed - per_seed.mean()).to_numpy(), axis=1).mean())
        seed_line = (f"Reference reproducibility: Kendall tau {seed_tau:.3f} between the seeds' rankings (mean over pairs); mean "
                     f"seed-to-seed spread {scores['seed_spread'].mean():.4f} mIoU against a member range of "
                     f"{scores[REFERENCE].max() - scores[REFERENCE].min():.4f}; {centred_spread:.4f} once each seed's mean over "
                     "the members is removed (a seed shifts every member alike: the seed sets the data order, shared by all).")
    elif reference is not None:
        seed_line = f"Reference reproducibility: not in --reference {args.reference} (it has no per-seed columns)."
    else:
        seed_line = "Reference reproducibility: not measured (one standalone seed; use --standalone-seeds 2)."
    if args.supernet_seeds > 1:
        agreements = []
        for name in variants:
            columns = [f"supernet:{name}:seed{seed}" for seed in range(args.supernet_seeds)]
            against = ", ".join(f"{scipy.stats.kendalltau(scores[c], scores[REFERENCE]).statistic:.3f}" for c in columns)
            agreements.append(f"{name}: Kendall tau {seed_agreement(scores[columns]):.3f} between seeds (mean over pairs), "
                              f"each seed against the reference {against}")
        supernet_line = "Supernet reproducibility (each variant's supernets from different seeds): " + "; ".join(agreements) + "."
    else:
        supernet_line = "Supernet reproducibility: not measured (one supernet per variant; use --supernet-seeds 2)."
    unconverged = scores.loc[scores["last_quarter_gain"] >= PLATEAU_GAIN, "member"].tolist()
    plateau_line = (f"Standalone curves: all {len(members)} gained < {PLATEAU_GAIN} mIoU over their last quarter (converged)."
                    if not unconverged else f"Standalone curves NOT converged (gain >= {PLATEAU_GAIN} over the last quarter): "
                    f"{', '.join(unconverged)}; rerun with a larger --scale.")
    report = "\n".join([
        f"## Estimator ranking on mni152 ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads, device {args.device}; run time {timings['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in timings.items() if k != 'total')} min).",
        f"Settings: {settings}, size {args.size}, crop {args.crop}, {spec.num_classes} classes ({', '.join(classes)}), plateau = mean of the last "
        f"{PLATEAU_EVALS} evaluations of the standalone weights' EMA (decay {args.ema}, BN recalibrated)"
        f"{f' read from {args.reference} (its own standalone settings; the ones above are unused)' if reference is not None else ''}, variants {', '.join(variants)}{' (SMOKE: numbers mean nothing)' if args.smoke else ''}.",
        "",
        f"Rank correlation with standalone training ({len(members)} members, plateau mIoU; bootstrap 95% intervals):",
        "",
        markdown(correlation_table(table)),
        plateau_line,
        seed_line,
        supernet_line,
        f"Resolution ceiling: an oracle that knows the true val masks at 1/{HEAD_STRIDE} resolution scores {ceiling:.3f} mIoU; "
        f"standalone plateaus span {scores[REFERENCE].min():.3f}-{scores[REFERENCE].max():.3f}.",
        f"Goal (supernet tau >= 0.7 with its lower bound above the zero-cost tau {zero_cost_tau:.3f}): "
        + (f"met by {', '.join(met)}." if met else "NOT met by any variant."),
        f"Predictor held out (vs supernet scores, {predictor.metrics['heldout_samples']} of {len(samples)} members): "
        f"tau {_number(predictor.metrics['heldout_kendall_tau'])}, MAE {predictor.metrics['heldout_mae']:.4f}.",
        "",
        "Per member (standalone plateau averaged over seeds, the seeds' spread, the largest gain over the last quarter, estimator scores):",
        "",
        markdown(member_table),
    ])
    atomic_write_text(out / "results.md", report + "\n")
    print("\n" + report)


if __name__ == "__main__":
    main()
