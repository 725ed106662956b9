"""An ImageFolder tree (``train/<class>/*``, ``test/<class>/*``) as a lazy LightningDataModule.

This is how the 20-class ImageNet subset is stored. Images are decoded on access and resized
deterministically: ``Resize(image_size * 256 / 224)`` (shorter side), ``CenterCrop(image_size)``,
``ToTensor`` -- the standard ImageNet evaluation crop, with no augmentation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from gcd_lightning.data.base import ImageDataModule
from gcd_lightning.data.errors import DatasetCorruptError, DatasetNotFoundError

TRAIN_DIR = "train"
TEST_DIR = "test"


def _as_int64(label: int) -> torch.Tensor:
    """Target transform: the class index as an int64 scalar tensor (module level, so workers can pickle it)."""
    return torch.tensor(label, dtype=torch.int64)


def eval_transform(image_size: int) -> transforms.Compose:
    """Resize the shorter side to ``image_size * 256 / 224``, center-crop ``image_size``, to [0, 1] tensor."""
    return transforms.Compose(
        [transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )


class ImageFolderDataModule(ImageDataModule):
    """RGB images in ``<root>/train/<class>/`` and ``<root>/test/<class>/``, loaded lazily.

    Class names (sorted folder names) come from ``train/``; ``test/`` must have the same folders.

    Args:
        root: folder holding ``train/`` and ``test/``.
        image_size: side of the square crop.
        batch_size, val_size, seed, num_workers, pin_memory: see ``ImageDataModule``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 224,
        batch_size: int = 128,
        val_size: int = 1000,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(root, batch_size, val_size, seed, num_workers, pin_memory)
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self._image_size = image_size
        self._classes: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def classes(self) -> list[str]:
        """Class names, sorted; index = label. Checks that ``test/`` has the same classes as ``train/``."""
        if self._classes is None:
            train_classes = self._find_classes(TRAIN_DIR)
            test_classes = self._find_classes(TEST_DIR)
            if test_classes != train_classes:
                only_train = sorted(set(train_classes) - set(test_classes))
                only_test = sorted(set(test_classes) - set(train_classes))
                raise DatasetCorruptError(
                    self.root / TEST_DIR,
                    f"class folders differ from {TRAIN_DIR}/ (only in {TRAIN_DIR}/: {only_train or 'none'}; "
                    f"only in {TEST_DIR}/: {only_test or 'none'})",
                    f"{TRAIN_DIR}/ and {TEST_DIR}/ must hold the same class folders.",
                )
            self._classes = train_classes
        return self._classes

    def _not_found(self, reason: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            "ImageFolder data set",
            self.root,
            (f"{TRAIN_DIR}/<class>/<image>", f"{TEST_DIR}/<class>/<image>"),
            "build the 20-class ImageNet subset into this folder (scripts/build_imagenet_subset.py --src "
            "<ImageNet train folder> --val <ImageNet val folder> --dst <this folder>), or point "
            "dataset.datamodule.root at an ImageFolder tree (train/ and test/ with one folder of JPEG/PNG "
            "images per class).",
            reason,
        )

    def _find_classes(self, split_dir: str) -> list[str]:
        folder = self.root / split_dir
        if not folder.is_dir():
            raise self._not_found(f"No folder {os.path.abspath(folder)}.")
        try:
            classes, _ = find_classes(str(folder))
        except FileNotFoundError as error:
            raise self._not_found(f"No class folders in {os.path.abspath(folder)}.") from error
        return classes

    def data_files(self) -> list[Path]:
        """Every image file that the ``train/`` and ``test/`` data sets read (symlinks as listed, not resolved).

        Other files in the tree are left out, the ImageNet subset's ``manifest.json`` included: it
        records where the images came from (absolute source paths), not what they are.
        """
        return [Path(path) for split_dir in (TRAIN_DIR, TEST_DIR) for path, _ in self._image_folder(split_dir).samples]

    def prepare_data(self) -> None:
        """Nothing to download; fails early (``DatasetNotFoundError``) when the tree is absent."""
        _ = self.classes

    def _image_folder(self, split_dir: str) -> ImageFolder:
        _ = self.classes  # presence and train/test class agreement
        try:
            dataset = ImageFolder(
                str(self.root / split_dir), transform=eval_transform(self._image_size), target_transform=_as_int64
            )
        except FileNotFoundError as error:  # a class folder without any image
            raise self._not_found(f"{error} (in {os.path.abspath(self.root / split_dir)}).") from error
        return dataset

    def load_train_test(self) -> tuple[Dataset, Dataset]:
        """Lazy ``ImageFolder`` data sets of ``train/`` and ``test/``."""
        return self._image_folder(TRAIN_DIR), self._image_folder(TEST_DIR)
