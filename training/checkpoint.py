"""Atomic training checkpoints and the random-number state an exact resume needs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_nas.atomic import atomic_path
from hrvit_nas.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or belongs to a different run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` so that a crash mid-write keeps the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; check the path (training writes <out>/checkpoint.pt)")
    try:
        # Our checkpoints hold RNG states (numpy arrays, tuples), so the restricted unpickler is too narrow.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}: {error}); it is corrupt or not a torch file") from None


def rng_state() -> dict[str, Any]:
    """Every generator that training draws from in this process (python, numpy, torch CPU/CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
