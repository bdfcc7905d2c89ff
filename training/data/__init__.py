"""Segmentation data: dataset readers, the MNI152 brain slices, the synthetic dataset, and image+mask augmentation."""

from training.data.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    DatasetSpec,
    PairedSegmentation,
    build_dataset,
)
from training.data.errors import DatasetError
from training.data.mni152 import MNI152Slices
from training.data.synthetic import SyntheticSegmentation
from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNI152Slices",
    "DatasetError",
    "DatasetSpec",
    "EvalTransform",
    "PairedSegmentation",
    "SyntheticSegmentation",
    "TrainTransform",
    "build_dataset",
]
