"""Data modules: pixels in [0, 1] float32 (C, H, W), int64 labels, train/val/test splits.

``MNISTDataModule`` and ``CIFAR10DataModule`` hold the data in memory; ``ImageFolderDataModule``
(the ImageNet subset) decodes images lazily. A missing data set raises ``DatasetNotFoundError``,
an unreadable file ``DatasetCorruptError``; both say where they looked and what to do.

The exports are resolved on first access (PEP 562), so that ``python -m gcd_lightning.data.mnist``
does not import its own module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gcd_lightning.data.base import SPLITS, ImageDataModule
    from gcd_lightning.data.cifar import CIFAR10DataModule
    from gcd_lightning.data.errors import DatasetCorruptError, DatasetNotFoundError
    from gcd_lightning.data.imagefolder import ImageFolderDataModule
    from gcd_lightning.data.mnist import MNISTDataModule, prepare_mnist

_EXPORTS = {
    "SPLITS": "gcd_lightning.data.base",
    "ImageDataModule": "gcd_lightning.data.base",
    "CIFAR10DataModule": "gcd_lightning.data.cifar",
    "DatasetCorruptError": "gcd_lightning.data.errors",
    "DatasetNotFoundError": "gcd_lightning.data.errors",
    "ImageFolderDataModule": "gcd_lightning.data.imagefolder",
    "MNISTDataModule": "gcd_lightning.data.mnist",
    "prepare_mnist": "gcd_lightning.data.mnist",
}

__all__ = [
    "SPLITS",
    "CIFAR10DataModule",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "prepare_mnist",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
