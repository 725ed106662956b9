"""The shared LightningDataModule of every image data set.

A subclass says how to load its full training set and its test set; this base carves a validation
split out of the training set with a seeded permutation and serves the three splits as data sets
and data loaders. Every item is ``(x, y)``: ``x`` float32 (C, H, W) in [0, 1] (no normalisation;
models carry their own) and ``y`` an int64 scalar tensor.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

SPLITS = ("train", "val", "test")


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministically split ``range(n)`` into (train, val) index tensors, each sorted ascending.

    The ``val_size`` validation indices are the first entries of a permutation drawn from a
    generator seeded with ``seed``; the remaining indices form the training split.
    """
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for a training set of {n} examples, got {val_size}")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return permutation[val_size:].sort().values, permutation[:val_size].sort().values


def subset(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """``dataset`` restricted to ``indices``; an in-memory ``TensorDataset`` stays one (indexed tensors)."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(tensor[indices] for tensor in dataset.tensors))
    return Subset(dataset, indices.tolist())


class ImageDataModule(pl.LightningDataModule, abc.ABC):
    """Train/val/test splits of an image classification data set.

    Args:
        root: folder the data set lives in (its layout is the subclass's business).
        batch_size: examples per batch of every data loader.
        val_size: training examples held out as the validation split.
        seed: seed of the validation split and of the training loader's shuffling.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._splits: dict[str, Dataset] | None = None

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of classes."""

    @property
    @abc.abstractmethod
    def in_channels(self) -> int:
        """Channels of every image (1 grey, 3 RGB)."""

    @property
    @abc.abstractmethod
    def image_size(self) -> int:
        """Height (= width) of every image."""

    @abc.abstractmethod
    def load_train_test(self) -> tuple[Dataset, Dataset]:
        """The full training set (before the validation split) and the test set."""

    def data_files(self) -> list[Path]:
        """The files whose bytes define the data set (their content fingerprints it; see ``data.fingerprint``).

        Every file the data module reads its images and labels from, and nothing it merely could
        read: a subclass must list them so that the caches are keyed by the data's content.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not list its data files: implement data_files() to return every file "
            "its images and labels are read from, so that the caches are keyed by the data's content"
        )

    def prepare_data(self) -> None:
        """Make the data available on disk (download when allowed); by default there is nothing to do."""

    def setup(self, stage: str | None = None) -> None:
        """Load the data and carve the validation split; idempotent, and ``stage`` does not matter."""
        if self._splits is not None:
            return
        full_train, test = self.load_train_test()
        train_indices, val_indices = split_indices(len(full_train), self.val_size, self.seed)
        self._splits = {
            "train": subset(full_train, train_indices),
            "val": subset(full_train, val_indices),
            "test": test,
        }

    def dataset(self, split: str) -> Dataset:
        """The data set of ``split`` (one of ``SPLITS``), running ``setup`` first if needed."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
        self.setup()
        assert self._splits is not None
        return self._splits[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order is fixed by ``seed``."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in the data set's order."""
        return self._loader("test", shuffle=False)
