"""hrvit-nas: neural-architecture / hardware co-design for HRViT segmentation backbones."""

__version__ = "0.1.0"
