"""CIFAR-10 as an in-memory LightningDataModule, read from the python-version batch files.

The data lives in ``<root>/cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``), the layout of the official archive and of
``torchvision.datasets.CIFAR10(root)``. The batches are read here rather than through torchvision,
whose reader insists on the official files' md5 sums: real data and test fixtures go through the
same checks (dict with ``data`` uint8 N x 3072 and ``labels``). torchvision is used to download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets.utils import download_and_extract_archive

from gcd_lightning.data.base import ImageDataModule
from gcd_lightning.data.download import DEFAULT_DOWNLOAD_TIMEOUT_S, socket_timeout
from gcd_lightning.data.errors import DatasetCorruptError, DatasetNotFoundError
from gcd_lightning.data.safe_pickle import load_data_pickle

log = logging.getLogger(__name__)

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
ALL_FILES = (*TRAIN_BATCHES, TEST_BATCH, META_FILE)
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def batch_dir(root: str | os.PathLike[str]) -> Path:
    """The folder holding the CIFAR-10 batch files."""
    return Path(root).expanduser().absolute() / BATCH_DIR


def _how_to(root: str | os.PathLike[str]) -> str:
    return (
        f"download the CIFAR-10 python version ({torchvision.datasets.CIFAR10.url}) and extract it so that "
        f"{batch_dir(root)} exists, or set dataset.datamodule.download=true "
        "when online."
    )


def missing_files(root: str | os.PathLike[str]) -> list[str]:
    """The CIFAR-10 file names absent from ``<root>/cifar-10-batches-py``."""
    folder = batch_dir(root)
    return [name for name in ALL_FILES if not (folder / name).is_file()]


def _read_pickled_dict(path: Path, repair: str) -> dict[str, object]:
    """Unpickle a CIFAR file into a dict with ``str`` keys (Python 2 files give ``str``, Python 3 ones ``bytes``)."""
    try:
        with open(path, "rb") as handle:
            content = load_data_pickle(handle)
    except Exception as error:  # whatever a damaged pickle raises, the file is unusable
        raise DatasetCorruptError(path, f"cannot unpickle ({type(error).__name__}: {error})", repair) from error
    if not isinstance(content, Mapping):
        raise DatasetCorruptError(path, f"expected a pickled dict, found {type(content).__name__}", repair)
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def read_batch(path: str | os.PathLike[str], repair: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file as (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    Raises ``DatasetCorruptError`` (with ``repair`` as advice) on anything but the official format.
    """
    path = Path(path)
    batch = _read_pickled_dict(path, repair)
    if "data" not in batch or "labels" not in batch:
        raise DatasetCorruptError(path, f"missing 'data' or 'labels' entry (found {sorted(batch)})", repair)
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    n_values = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n_values:
        raise DatasetCorruptError(path, f"'data' is {data.dtype} {data.shape}, expected uint8 (N, {n_values})", repair)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetCorruptError(
            path, f"'labels' is {labels.dtype} {labels.shape}, expected {data.shape[0]} integers", repair
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetCorruptError(path, f"labels outside 0..{NUM_CLASSES - 1}", repair)
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_label_names(path: str | os.PathLike[str], repair: str) -> list[str]:
    """The 10 class names stored in ``batches.meta``."""
    path = Path(path)
    names = _read_pickled_dict(path, repair).get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DatasetCorruptError(path, f"'label_names' is not a list of {NUM_CLASSES} names", repair)
    return [name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names]


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels))


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: 3 x 32 x 32 RGB images, 10 classes; 50,000 training (minus ``val_size``) and 10,000 test.

    Args:
        root: data folder holding ``cifar-10-batches-py``.
        download: let ``prepare_data`` download the official archive (md5-checked) when files are missing.
        batch_size, val_size, seed, num_workers, pin_memory: see ``ImageDataModule``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        download: bool = False,
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(root, batch_size, val_size, seed, num_workers, pin_memory)
        self.download = download
        self._classes: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def in_channels(self) -> int:
        return IMAGE_SHAPE[0]

    @property
    def image_size(self) -> int:
        return IMAGE_SHAPE[1]

    @property
    def classes(self) -> list[str]:
        """Class names from ``batches.meta`` (index = label)."""
        if self._classes is None:
            self._check_present()
            self._classes = read_label_names(batch_dir(self.root) / META_FILE, self._repair())
        return self._classes

    def _repair(self) -> str:
        return f"Delete the folder and provide CIFAR-10 again: {_how_to(self.root)}"

    def _not_found(self, reason: str) -> DatasetNotFoundError:
        return DatasetNotFoundError("CIFAR-10", batch_dir(self.root), ALL_FILES, _how_to(self.root), reason)

    def _check_present(self) -> None:
        missing = missing_files(self.root)
        if missing:
            raise self._not_found(f"Missing: {', '.join(missing)}.")

    def data_files(self) -> list[Path]:
        """The five training batches, the test batch and ``batches.meta`` (the class names)."""
        folder = batch_dir(self.root)
        return [folder / name for name in ALL_FILES]

    def prepare_data(self) -> None:
        """Download and extract the official archive when files are missing and ``download`` is set."""
        missing = missing_files(self.root)
        if not missing:
            return
        if not self.download:
            raise self._not_found(f"Missing: {', '.join(missing)}; downloading is disabled (download=false).")
        source = torchvision.datasets.CIFAR10
        log.info("downloading CIFAR-10 from %s", source.url)
        try:
            with socket_timeout(DEFAULT_DOWNLOAD_TIMEOUT_S):
                download_and_extract_archive(source.url, str(self.root), filename=source.filename, md5=source.tgz_md5)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise self._not_found(f"Download failed: {error}.") from error
        self._check_present()

    def load_train_test(self) -> tuple[Dataset, Dataset]:
        """Both splits as in-memory ``TensorDataset``s; raises ``DatasetNotFoundError``/``DatasetCorruptError``."""
        self._check_present()
        folder = batch_dir(self.root)
        train = [read_batch(folder / name, self._repair()) for name in TRAIN_BATCHES]
        test_images, test_labels = read_batch(folder / TEST_BATCH, self._repair())
        train_images = np.concatenate([images for images, _ in train])
        train_labels = np.concatenate([labels for _, labels in train])
        return _to_dataset(train_images, train_labels), _to_dataset(test_images, test_labels)
