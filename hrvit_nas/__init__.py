"""hrvit-nas: neural-architecture / hardware co-design for HRViT segmentation backbones.

The base every package may import (the bottom of the import order): the user-error type, atomic
writes and the lazy-export helper of the package faces. All of it is standard-library only.
"""

from hrvit_nas.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from hrvit_nas.errors import UserError
from hrvit_nas.lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["UserError", "atomic_path", "atomic_write_bytes", "atomic_write_text", "lazy_exports"]
