"""Segmentation data: dataset readers, the synthetic dataset, and image+mask augmentation."""

from training.data.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    DatasetError,
    DatasetSpec,
    PairedSegmentation,
    build_dataset,
)
from training.data.synthetic import SyntheticSegmentation
from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetError",
    "DatasetSpec",
    "PairedSegmentation",
    "SyntheticSegmentation",
    "build_dataset",
    "eval_transform",
    "train_transform",
]
