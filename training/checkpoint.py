"""Atomic training checkpoints, safe loading of user files, and the RNG state an exact resume needs.

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: a file handed to us can hold tensors
and plain data (dicts, lists, tuples, numbers, strings), never code. Our own formats store only such
data. Reference checkpoints often also pickle an object or two (timm's ``args`` Namespace, an mmcv
config): ``load_foreign_checkpoint`` reads those as empty stand-ins of a class that is never imported,
drops them, and names them, while a file that asks to *call* anything on load is refused outright.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_nas import UserError, atomic_path


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, unsafe or belongs to a different run."""


def save_checkpoint(path: str | Path, state: Any) -> None:
    """Write ``state`` so that a crash mid-write keeps the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Tensors and plain data of a file of ours; anything else in it is refused, never executed."""
    path = _existing(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refused to load {str(path)!r}: it holds pickled Python objects ({_describe_unsafe(path)}), and loading "
            "them could run code from the file; only tensors and plain data are read. Use files written by hrvit-nas, "
            "or pass a reference checkpoint to `train --init`"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise _unreadable(path, error) from None


def load_foreign_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, list[str]]:
    """``(content, ignored)`` of a checkpoint written by other code (reference HRViT, timm, mmseg).

    Objects of classes outside the weights-only allow-list become inert stand-ins (their class is not
    imported, their state is dropped) and ``ignored`` names those classes. A file whose pickle calls a
    function or class to build its content (the way pickle payloads run code) is refused.
    """
    path = _existing(path)
    try:
        unknown = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint (legacy format) or corrupt: the strict reader decides
        return load_checkpoint(path, map_location), []
    stand_ins = [(_stand_in(name), name) for name in unknown]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location=map_location, weights_only=True), unknown
    except _RefusedCall as refused:
        raise CheckpointError(
            f"refused to load {str(path)!r}: its pickle calls {refused.name} while loading, which is how a file runs "
            "code; nothing was executed. Re-save the weights alone (torch.save(model.state_dict(), path)) from a trusted copy"
        ) from None
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"refused to load {str(path)!r}: {error}; only tensors and plain data are read") from None
    except Exception as error:  # noqa: BLE001
        raise _unreadable(path, error) from None


class _RefusedCall(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _NoCalls(type):
    """Metaclass of the stand-ins: unpickling may create one empty (NEWOBJ), never call it (REDUCE)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _RefusedCall(cls.refused_name)


class _StandIn(metaclass=_NoCalls):
    refused_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_StandIn":
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        """The pickled attributes are dropped: nothing of ours reads them."""


def _stand_in(name: str) -> type:
    return _NoCalls(f"Ignored[{name}]", (_StandIn,), {"refused_name": name})


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; check the path (training writes <out>/checkpoint.pt)")
    return path


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}: {error}); it is corrupt or not a torch file")


def _describe_unsafe(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy (non-zip) file: its globals are not listed statically
        return "types outside the weights-only allow-list"
    return ", ".join(sorted(names)) or "types outside the weights-only allow-list"


# ---------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every generator training draws from in this process, as plain data (weights-only loadable)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = {**state["numpy"], "state": dict(state["numpy"]["state"])}
    numpy_state["state"]["key"] = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
