"""The training data stream: endless, resumable, and a pure function of (seed, rank, position).

Each sample's augmentation runs under its own seed, so workers and restarts cannot change it; model
randomness (drop path, dropout) comes from the global generators, whose states the checkpoint stores.
"""

from __future__ import annotations

import contextlib
import random
import sys
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hrvit_nas import UserError
from training.checkpoint import seed_everything
from training.distributed import DistContext
from training.recipe import TrainRecipe


@contextlib.contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block under its own seed (or none) and leave the global generators exactly as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class StreamSampler(Sampler):
    """An endless, resumable stream of ``(index, sample_seed)`` for one rank.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``; rank ``r`` takes every ``world_size``-th entry.
    ``start`` skips the samples this rank consumed before a resume, without drawing them.
    """

    def __init__(self, num_samples: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < world_size:
            raise UserError(f"the training set has {num_samples} samples, fewer than the {world_size} processes; use a larger dataset")
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.rank, self.world_size = rank, world_size
        self.per_rank = num_samples // world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        epoch, order = -1, None
        while True:
            current, offset = divmod(position, self.per_rank)
            if current != epoch:
                epoch = current
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.num_samples, generator=generator)[self.rank :: self.world_size].tolist()
            sample_seed = (self.seed * 2_654_435_761 + self.rank * 40_503 + position) % 2**62
            yield order[offset], sample_seed
            position += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a size hint
        return sys.maxsize


class SeededSamples(Dataset):
    """Applies each sample's loading and augmentation under the seed the sampler gave it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        with isolated_rng(sample_seed):
            return self.dataset[index]


def train_stream(dataset: Dataset, recipe: TrainRecipe, ctx: DistContext, start_iteration: int) -> Iterator:
    per_rank = recipe.batch_size // ctx.world_size
    sampler = StreamSampler(len(dataset), recipe.seed, start_iteration * per_rank, ctx.rank, ctx.world_size)
    loader = DataLoader(
        SeededSamples(dataset), batch_size=per_rank, sampler=sampler, num_workers=recipe.num_workers,
        pin_memory=ctx.device.type == "cuda", drop_last=True, persistent_workers=recipe.num_workers > 0,
        generator=torch.Generator().manual_seed(recipe.seed),  # keeps the global generator untouched
    )
    return iter(loader)
