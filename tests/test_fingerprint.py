"""The data fingerprint: caches follow the data's content, and its memo saves rereads without being trusted blindly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import compose_config
from data_fixtures import random_mnist, write_cifar10, write_image_folder, write_mnist_idx

from gcd_lightning.data import CIFAR10DataModule, ImageFolderDataModule, MNISTDataModule
from gcd_lightning.data.base import ImageDataModule
from gcd_lightning.data.fingerprint import data_fingerprint
from gcd_lightning.pipeline.attack_stage import adversarial_spec
from gcd_lightning.pipeline.classifier_stage import classifier_key
from gcd_lightning.pipeline.checks import check_config
from gcd_lightning.pipeline.context import CODE_VERSIONS, RunContext
from gcd_lightning.pipeline.detectors_stage import detectors_group
from gcd_lightning.pipeline.evaluate_stage import evaluation_key
from gcd_lightning.pipeline.rectifier_stage import rectifier_key
from gcd_lightning.utils import hashing


@pytest.fixture
def hash_calls(monkeypatch) -> list[Path]:
    """The files whose content ``file_hash`` reads, in call order."""
    calls: list[Path] = []
    real = hashing.file_hash

    def counting(path, length=16):
        calls.append(Path(path))
        return real(path, length)

    monkeypatch.setattr(hashing, "file_hash", counting)
    return calls


def mnist_files(root: Path, seed: int) -> list[Path]:
    """A tiny MNIST in torchvision's raw layout under ``root``; its four IDX files."""
    write_mnist_idx(root, random_mnist(n_train=12, n_test=4, seed=seed))
    return MNISTDataModule(root, download=False).data_files()


def mnist_context(data_dir: Path, tmp_path: Path) -> RunContext:
    """A run's context on the MNIST files in ``data_dir``, with its caches under ``tmp_path/cache``."""
    cfg = compose_config(
        [f"paths.data_dir={data_dir}", "logger=none", "dataset.datamodule.download=false",
         "dataset.datamodule.val_size=2"],
        tmp_path,
    )
    return RunContext.build(cfg)


def test_other_data_in_the_same_place_gets_its_own_caches(tmp_path):
    data_dir = tmp_path / "data"
    mnist_files(data_dir, seed=0)
    first = mnist_context(data_dir, tmp_path)
    first_identity, first_dir = first.dataset_identity(), classifier_key(first).id
    mnist_files(data_dir, seed=1)  # same format, same names and sizes, same config: other digits
    second = mnist_context(data_dir, tmp_path)

    assert first.cfg.dataset == second.cfg.dataset
    assert second.dataset_identity()["fingerprint"] != first_identity["fingerprint"]
    assert second.dataset_identity() != first_identity
    assert classifier_key(second).id != first_dir
    assert (tmp_path / "cache" / "fingerprints.json").is_file()


def test_the_fingerprint_is_computed_once_per_run(tmp_path, hash_calls):
    data_dir = tmp_path / "data"
    mnist_files(data_dir, seed=0)
    ctx = mnist_context(data_dir, tmp_path)
    assert ctx.dataset_identity() == ctx.dataset_identity()
    assert len(hash_calls) == 4


def test_same_content_anywhere_gives_the_same_fingerprint_and_the_memo_saves_rereads(tmp_path, hash_calls):
    memo = tmp_path / "cache" / "fingerprints.json"
    here, there = mnist_files(tmp_path / "here", seed=0), mnist_files(tmp_path / "there", seed=0)
    fingerprint = data_fingerprint(here, memo)
    assert len(hash_calls) == 4

    assert data_fingerprint(here, memo) == fingerprint
    assert len(hash_calls) == 4  # unchanged files: all from the memo
    assert data_fingerprint(there, memo) == fingerprint  # same bytes, same names, other folder
    assert len(hash_calls) == 8

    changed = here[0]
    changed.write_bytes(changed.read_bytes()[:-1] + b"\x01")
    assert data_fingerprint(here, memo) != fingerprint
    assert hash_calls[8:] == [changed.resolve()]  # only the changed file is read again


def test_renaming_a_file_changes_the_fingerprint(tmp_path):
    files = mnist_files(tmp_path / "data", seed=0)
    fingerprint = data_fingerprint(files, tmp_path / "memo.json")
    renamed = files[0].rename(files[0].with_name("renamed"))
    assert data_fingerprint([renamed, *files[1:]], tmp_path / "memo.json") != fingerprint


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", "\udcff", "bogus entries"],
    ids=["not-json", "not-an-object", "not-utf8", "bad-entries"],
)
def test_a_corrupt_memo_is_ignored_and_rebuilt(tmp_path, hash_calls, content):
    files = mnist_files(tmp_path / "data", seed=0)
    memo = tmp_path / "fingerprints.json"
    expected = data_fingerprint(files, tmp_path / "clean.json")
    hash_calls.clear()
    if content == "bogus entries":  # current size and mtime, but no usable hash: never trusted
        entries = {str(file.resolve()): {"size": file.stat().st_size, "mtime_ns": file.stat().st_mtime_ns,
                                         "hash": "0" * 63 + "x"} for file in files}
        memo.write_text(json.dumps(entries))
    else:
        memo.write_bytes(content.encode("utf-8", "surrogateescape"))

    assert data_fingerprint(files, memo) == expected
    assert len(hash_calls) == 4
    assert json.loads(memo.read_text()) == json.loads((tmp_path / "clean.json").read_text())


def test_a_missing_file_is_named(tmp_path):
    files = mnist_files(tmp_path / "data", seed=0)
    files[2].unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(files[2]))):
        data_fingerprint(files, tmp_path / "fingerprints.json")


def test_each_datamodule_lists_the_files_it_reads(tmp_path):
    mnist = MNISTDataModule(tmp_path, download=False)
    assert sorted(file.name for file in mnist.data_files()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    ]
    write_cifar10(tmp_path)
    cifar_files = CIFAR10DataModule(tmp_path).data_files()
    assert len(cifar_files) == 7 and all(file.is_file() for file in cifar_files)
    assert "batches.meta" in {file.name for file in cifar_files}

    folder = write_image_folder(tmp_path / "subset", n_train=2, n_test=1)
    (folder / "manifest.json").write_text("{}")
    (folder / "train" / "cat" / "notes.txt").write_text("not an image")
    images = ImageFolderDataModule(folder).data_files()
    assert sorted(file.relative_to(folder).as_posix() for file in images) == sorted(
        f"{split}/{name}/{name}_{i}.png" for split, n in (("train", 2), ("test", 1))
        for name in ("cat", "dog", "eel") for i in range(n)
    )


def test_a_datamodule_without_data_files_says_what_to_implement(tmp_path):
    class NoFiles(MNISTDataModule):
        data_files = ImageDataModule.data_files

    with pytest.raises(NotImplementedError, match=r"NoFiles.*data_files\(\)"):
        NoFiles(tmp_path).data_files()


def test_trainer_settings_that_change_the_model_key_its_cache_and_the_others_do_not(tmp_path):
    data_dir = tmp_path / "data"
    mnist_files(data_dir, seed=0)

    def folder(*overrides: str) -> str:
        cfg = compose_config(
            [f"paths.data_dir={data_dir}", "dataset.datamodule.download=false", "dataset.datamodule.val_size=2", *overrides],
            tmp_path,
        )
        return classifier_key(RunContext.build(cfg)).id

    normal = folder()
    for changes_the_model in ("+trainer.limit_train_batches=20", "+trainer.precision=bf16-mixed", "+trainer.max_steps=5"):
        assert folder(changes_the_model) != normal, changes_the_model
    assert folder("trainer.devices=2", "trainer.log_every_n_steps=7", "progress=false") == normal
    assert folder("trainer=ddp_cpu") == normal  # strategy, devices and precision 32-true (the default) are no part


def test_raising_a_stages_code_version_keys_new_caches(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    mnist_files(data_dir, seed=0)
    cfg = compose_config([f"paths.data_dir={data_dir}", "dataset.datamodule.download=false", "dataset.datamodule.val_size=2"],
                         tmp_path)
    ctx = RunContext.build(cfg)
    before = classifier_key(ctx).id, adversarial_spec(ctx, "test", "f")
    monkeypatch.setitem(CODE_VERSIONS, "classifier", 2)
    assert classifier_key(ctx).id != before[0] and adversarial_spec(ctx, "test", "f") == before[1]
    monkeypatch.setitem(CODE_VERSIONS, "adversarial", 2)
    assert adversarial_spec(ctx, "test", "f") != before[1]


def test_defense_seed_keys_the_detectors_and_the_rectifier_but_not_f_or_the_attacks(tmp_path):
    """A seeds sweep of the defense (defense_seed=0,1,2) trains new detectors and rectifiers on one f and one attack set;
    null keeps the keys that seed gives, so existing caches stay valid."""
    data_dir = tmp_path / "data"
    mnist_files(data_dir, seed=0)

    def keys(*overrides: str) -> tuple:
        cfg = compose_config([f"paths.data_dir={data_dir}", "dataset.datamodule.download=false", "dataset.datamodule.val_size=2",
                              "+experiment=mnist_deepfool_untargeted", *overrides], tmp_path)
        ctx = RunContext.build(cfg)
        group = detectors_group(ctx, Path("mnist_deepfool_untargeted_train_0123.pt"), "f")
        return classifier_key(ctx).id, adversarial_spec(ctx, "train", "f"), group, rectifier_key(ctx, group, "f").id

    default, zero, one = keys(), keys("defense_seed=0"), keys("defense_seed=1")
    assert zero == default
    assert one[:2] == default[:2] and one[2] != default[2] and one[3] != default[3]
    with pytest.raises(ValueError, match="defense_seed"):
        check_config(compose_config(["defense_seed=-1"], tmp_path))


def test_the_grey_box_evaluation_is_keyed_by_every_part_and_setting_it_reads(tmp_path):
    """A rerun finds the evaluation; another part (f, detectors, rectifier, test set) or another setting it reads
    (mask draws, clean images, the defense's config, batch size, seed) keys a new one; the transfer attacks do not."""
    data_dir = tmp_path / "data"
    mnist_files(data_dir, seed=0)
    ids = {"classifier": "f", "detectors": "d", "rectifier": "r", "adv_test": "t"}

    def key(*overrides: str, **changed: str) -> str:
        cfg = compose_config([f"paths.data_dir={data_dir}", "dataset.datamodule.download=false", "dataset.datamodule.val_size=2",
                              "+experiment=mnist_pgd_untargeted", *overrides], tmp_path)
        return evaluation_key(RunContext.build(cfg), ids | changed).id

    base = key()
    assert key() == base and key("evaluate.transfer_attacks=[fgsm_untargeted]") == base
    others = [key(**{part: "other"}) for part in ids]
    others += [key(o) for o in ("evaluate.mask_draws=3", "evaluate.n_clean=50", "rectifier.alpha=0.2", "adversarial.batch_size=50",
                                "seed=1")]
    assert len({base, *others}) == len(others) + 1
