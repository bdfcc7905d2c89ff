"""HRViT architectures: validated configs, the search space, the model and its weight-sharing supernet."""

from hrvit_space.config import PRESETS, ArchConfig, ConfigError, HeadConfig, preset
from hrvit_space.space import Knob, SearchSpace

__all__ = ["PRESETS", "ArchConfig", "ConfigError", "HeadConfig", "Knob", "SearchSpace", "preset"]

# The model, its supernet and checkpoint/BN tools import torch, so they load on first use (PEP 562):
# `from hrvit_space import ArchConfig` stays light for the CLI.
_LAZY = {
    "fold_batchnorm": "batchnorm", "recalibrate_bn": "batchnorm",
    "COMPONENTS": "model", "HRViT": "model", "build_model": "model", "component_of": "model",
    "hrvit_b1": "model", "hrvit_b2": "model", "hrvit_b3": "model", "optimize_for_inference": "model",
    "load_reference_state_dict": "reference", "to_reference_state_dict": "reference",
    "HRViTSupernet": "supernet",
}
__all__ += sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"hrvit_space.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hrvit_space' has no attribute {name!r}")
