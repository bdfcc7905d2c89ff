"""HRViT architectures: validated configs, the search space, the model and its weight-sharing supernet."""

from hrvit_space.config import PRESETS, ArchConfig, ConfigError, HeadConfig, preset
from hrvit_space.space import Knob, SearchSpace

__all__ = ["PRESETS", "ArchConfig", "ConfigError", "HeadConfig", "Knob", "SearchSpace", "preset"]
