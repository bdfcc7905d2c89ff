"""HRViT architectures: validated configs, the search space, the model and its weight-sharing supernet."""

from hrvit_nas import lazy_exports
from hrvit_space.config import (
    PRESETS,
    SCHEMA_VERSION,
    STEM_WIDTH,
    ArchConfig,
    ConfigError,
    HeadConfig,
    branch_feature_size,
    mlp_hidden,
    parse_yaml,
    preset,
    read_yaml_file,
)
from hrvit_space.input_size import load_preset, load_space, parse_input_size
from hrvit_space.space import Knob, SearchSpace

# The model, its supernet and checkpoint/BN tools import torch: they load on first use, so that
# `from hrvit_space import ArchConfig` stays light for the CLI.
__getattr__, _lazy = lazy_exports(__name__, {
    "hrvit_space.batchnorm": ("fold_batchnorm", "recalibrate_bn"),
    "hrvit_space.kernels": ("EAGER_FORWARD_VERSION",),
    "hrvit_space.model": ("COMPONENTS", "Block", "HRViT", "build_model", "component_of", "hrvit_b1", "hrvit_b2", "hrvit_b3",
                          "optimize_for_inference"),
    "hrvit_space.reference": ("load_reference_state_dict", "reference_key", "to_reference_state_dict"),
    "hrvit_space.supernet": ("HRViTSupernet",),
})

__all__ = [
    "PRESETS", "SCHEMA_VERSION", "STEM_WIDTH", "ArchConfig", "ConfigError", "HeadConfig", "Knob", "SearchSpace",
    "branch_feature_size", "load_preset", "load_space", "mlp_hidden", "parse_input_size", "parse_yaml", "preset",
    "read_yaml_file", *_lazy,
]
