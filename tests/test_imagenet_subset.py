"""The ImageNet-subset builder: seeded choices, counts, links, manifest, errors, atomic writes, loading."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from conftest import CONF, REPO
from data_fixtures import write_imagenet_train
from gcd_lightning.data import DatasetNotFoundError, ImageFolderDataModule
from gcd_lightning.data import imagenet_subset as subset

spec = importlib.util.spec_from_file_location("build_imagenet_subset", REPO / "scripts" / "build_imagenet_subset.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

N_TRAIN, N_TEST = 4, 2


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """A fake ImageNet train folder: 25 classes x 12 tiny JPEGs (shared, never modified)."""
    return write_imagenet_train(tmp_path_factory.mktemp("imagenet") / "train")


def build(src: Path, dst: Path, **kwargs) -> dict:
    """``build_imagenet_subset`` with the tests' small counts and no progress bar."""
    return subset.build_imagenet_subset(src, dst, **{"n_train": N_TRAIN, "n_test": N_TEST, "progress": False, **kwargs})


def files(dst: Path) -> dict[str, set[str]]:
    """``{"train/<wnid>": {file names}, ...}`` of a built subset."""
    return {
        f"{split}/{folder.name}": {f.name for f in folder.iterdir()}
        for split in ("train", "test")
        for folder in (dst / split).iterdir()
    }


def siblings(dst: Path) -> list[str]:
    """Everything next to ``dst`` (temporary folders must not be left behind)."""
    return sorted(p.name for p in dst.parent.iterdir())


def test_seeded_choice_is_reproducible_and_depends_on_the_seed(imagenet, tmp_path):
    first = build(imagenet, tmp_path / "a", seed=0)
    again = build(imagenet, tmp_path / "b", seed=0)
    other = build(imagenet, tmp_path / "c", seed=1)
    assert first == again and files(tmp_path / "a") == files(tmp_path / "b")
    assert len(first["classes"]) == subset.N_CLASSES == 20 and first["classes"] == sorted(first["classes"])
    assert other["classes"] != first["classes"]
    shared = sorted(set(first["classes"]) & set(other["classes"]))
    assert any(files(tmp_path / "a")[f"train/{w}"] != files(tmp_path / "c")[f"train/{w}"] for w in shared)


def test_a_class_draws_the_same_images_whichever_classes_are_chosen(imagenet):
    wnid = "n00000003"
    images = subset.class_images(imagenet / wnid)
    assert len(images) == 12 and images == sorted(images)  # notes.txt is not an image
    alone = subset.plan_subset(imagenet, [wnid], N_TRAIN, N_TEST, seed=0)
    among = subset.plan_subset(imagenet, ["n00000001", wnid, "n00000007"], N_TRAIN, N_TEST, seed=0)
    assert all(alone[split][wnid] == among[split][wnid] for split in ("train", "test"))


def test_counts_disjoint_splits_symlinks_and_manifest(imagenet, tmp_path):
    dst = tmp_path / "subset"
    manifest = build(imagenet, dst, seed=3)
    assert json.loads((dst / subset.MANIFEST).read_text()) == manifest
    classes = manifest["classes"]
    assert manifest == {
        "source": str(imagenet.absolute()),
        "seed": 3,
        "mode": "symlink",
        "class_choice": "seeded random",
        "classes": classes,
        "counts": {"train": dict.fromkeys(classes, N_TRAIN), "test": dict.fromkeys(classes, N_TEST)},
    }
    assert sorted(p.name for p in dst.iterdir()) == ["manifest.json", "test", "train"]
    listing = files(dst)
    for wnid in classes:
        train, test = listing[f"train/{wnid}"], listing[f"test/{wnid}"]
        assert (len(train), len(test)) == (N_TRAIN, N_TEST) and not train & test
        for split, names in (("train", train), ("test", test)):
            for name in names:
                link = dst / split / wnid / name
                assert link.is_symlink() and Path(os.readlink(link)) == imagenet.absolute() / wnid / name
    assert siblings(dst) == ["subset"]


@pytest.mark.parametrize("mode", ["hardlink", "copy"])
def test_hardlink_and_copy_modes(imagenet, tmp_path, mode):
    dst = tmp_path / "subset"
    manifest = build(imagenet, dst, mode=mode)
    wnid = manifest["classes"][0]
    placed = next((dst / "train" / wnid).iterdir())
    source = imagenet / wnid / placed.name
    assert not placed.is_symlink() and placed.read_bytes() == source.read_bytes()
    assert os.path.samefile(placed, source) == (mode == "hardlink")
    assert manifest["mode"] == mode


def test_the_subset_loads_with_the_image_folder_data_module(imagenet, tmp_path):
    manifest = build(imagenet, tmp_path / "subset")
    module = ImageFolderDataModule(tmp_path / "subset", image_size=8, batch_size=16, val_size=10, seed=0)
    module.prepare_data()
    assert module.classes == manifest["classes"] and module.num_classes == 20
    assert len(module.dataset("train")) + len(module.dataset("val")) == 20 * N_TRAIN
    assert len(module.dataset("test")) == 20 * N_TEST
    x, y = next(iter(module.test_dataloader()))
    assert x.shape == (16, 3, 8, 8) and 0 <= x.min() and x.max() <= 1 and y.tolist() == [i // N_TEST for i in range(16)]


def test_listed_classes_through_the_script(imagenet, tmp_path, capsys):
    classes_file = tmp_path / "classes.yaml"
    classes_file.write_text("- n00000024\n- n00000002\n- n00000010\n")
    dst = tmp_path / "subset"
    script.main(
        ["--src", str(imagenet), "--dst", str(dst), "--classes-file", str(classes_file), "--n-classes", "3"]
        + ["--n-train", "5", "--n-test", "3", "--seed", "7", "--mode", "copy"]
    )
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["classes"] == ["n00000002", "n00000010", "n00000024"] and manifest["class_choice"] == "listed"
    assert (manifest["seed"], manifest["mode"]) == (7, "copy")
    assert manifest["counts"]["test"] == dict.fromkeys(manifest["classes"], 3)
    assert f"3 classes, 5 train + 3 test images each, in {dst.resolve()}" in capsys.readouterr().out


def test_the_shipped_classes_file_asks_for_a_seeded_choice():
    assert subset.read_class_list(CONF / "imagenet_subset" / "classes.yaml") is None
    assert script.CLASSES_FILE == CONF / "imagenet_subset" / "classes.yaml"


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", None), ("null\n", None), ("[]\n", None), ("- n1\n- n2\n", ["n1", "n2"])],
)
def test_class_list_file(tmp_path, content, expected):
    (tmp_path / "c.yaml").write_text(content)
    assert subset.read_class_list(tmp_path / "c.yaml") == expected


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("classes: [n1]\n", "must hold a YAML list of wnids"),
        ("- n1\n- 2\n", "must hold a YAML list"),
        ("- n1\n- n1\n", "more than once: n1"),
    ],
)
def test_bad_class_list_file(tmp_path, content, match):
    (tmp_path / "c.yaml").write_text(content)
    with pytest.raises(ValueError, match=match):
        subset.read_class_list(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match="classes file not found"):
        subset.read_class_list(tmp_path / "missing.yaml")


def test_source_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ImageNet train folder not found .* No folder .*--src"):
        build(tmp_path / "nowhere", tmp_path / "subset")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class folders"):
        build(tmp_path / "empty", tmp_path / "subset")
    assert siblings(tmp_path / "subset") == ["empty"]


def test_class_errors(imagenet, tmp_path):
    dst = tmp_path / "subset"
    with pytest.raises(FileNotFoundError, match="without a folder in the source: n99999999$"):
        build(imagenet, dst, classes=["n00000001", "n99999999"], n_classes=2)
    with pytest.raises(ValueError, match="2 classes are listed but n_classes is 20"):
        build(imagenet, dst, classes=["n00000001", "n00000002"])
    with pytest.raises(ValueError, match="26 classes requested but the source has only 25"):
        build(imagenet, dst, n_classes=26)
    assert not dst.exists()


def test_too_few_images_names_every_short_class(tmp_path):
    src = write_imagenet_train(tmp_path / "train", n_classes=3, per_class=6)
    for image in sorted((src / "n00000001").glob("*.JPEG"))[:2]:
        image.unlink()
    with pytest.raises(ValueError, match=r"needs 4 \+ 2 images; too few in .* for: n00000001 \(4\)$"):
        build(src, tmp_path / "subset", n_classes=3)
    build(src, tmp_path / "subset", n_classes=3, n_train=3, n_test=1)  # 4 images are enough for 3 + 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"mode": "move"}, "mode must be one of symlink, hardlink, copy"), ({"n_test": 0}, "n_test must be >= 1")],
)
def test_bad_arguments(imagenet, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(imagenet, tmp_path / "subset", **kwargs)


def test_destination_errors(imagenet, tmp_path):
    dst = tmp_path / "subset"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass --overwrite"):
        build(imagenet, dst)
    with pytest.raises(FileExistsError, match="refusing to overwrite .* no manifest.json"):
        build(imagenet, dst, overwrite=True)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is not a folder"):
        build(imagenet, tmp_path / "file")
    for inside in (imagenet, imagenet / "n00000001" / "subset", imagenet.parent):
        with pytest.raises(ValueError, match="must not contain each other"):
            build(imagenet, inside, overwrite=True)
    assert siblings(dst) == ["file", "subset"]


def test_an_empty_destination_folder_is_filled(imagenet, tmp_path):
    (tmp_path / "subset").mkdir()
    build(imagenet, tmp_path / "subset")
    assert (tmp_path / "subset" / "manifest.json").is_file()


def test_overwrite_replaces_an_earlier_subset_and_keeps_the_sources(imagenet, tmp_path):
    dst = tmp_path / "subset"
    build(imagenet, dst, seed=0)
    sources = sorted(imagenet.rglob("*"))
    manifest = build(imagenet, dst, seed=1, overwrite=True)
    assert json.loads((dst / "manifest.json").read_text()) == manifest and manifest["seed"] == 1
    assert set(files(dst)) == {f"{split}/{wnid}" for split in ("train", "test") for wnid in manifest["classes"]}
    assert sorted(imagenet.rglob("*")) == sources
    assert siblings(dst) == ["subset"]


def test_a_failed_build_leaves_the_destination_untouched(imagenet, tmp_path, monkeypatch):
    dst = tmp_path / "subset"
    before = build(imagenet, dst, seed=0)
    placed = []

    def fail_after_ten(source, target, mode):
        if len(placed) == 10:
            raise KeyboardInterrupt
        placed.append(target)
        target.symlink_to(source)

    monkeypatch.setattr(subset, "place", fail_after_ten)
    with pytest.raises(KeyboardInterrupt):
        build(imagenet, dst, seed=1, overwrite=True)
    assert json.loads((dst / "manifest.json").read_text()) == before
    assert siblings(dst) == ["subset"]
    with pytest.raises(KeyboardInterrupt):
        build(imagenet, tmp_path / "fresh")
    assert siblings(dst) == ["subset"]


def test_the_script_reports_errors_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match="^error: ImageNet train folder not found"):
        script.main(["--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "subset")])
