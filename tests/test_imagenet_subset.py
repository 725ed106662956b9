"""The ImageNet-subset builder: seeded choices, test images from val, counts, links, manifest, errors, atomic writes, loading."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import CONF, REPO
from data_fixtures import write_imagenet_train, write_imagenet_val
from gcd_lightning.data import DatasetNotFoundError, ImageFolderDataModule
from gcd_lightning.data import imagenet_subset as subset

spec = importlib.util.spec_from_file_location("build_imagenet_subset", REPO / "scripts" / "build_imagenet_subset.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

N_TRAIN, N_TEST, N_VAL = 4, 2, 3


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """A fake ImageNet: ``train/`` (25 classes x 12 tiny JPEGs) and ``val/`` beside it (25 x 3, per-class layout).

    Returns ``train/``; shared, never modified.
    """
    root = tmp_path_factory.mktemp("imagenet")
    write_imagenet_val(root / "val", per_class=N_VAL)
    return write_imagenet_train(root / "train")


def build(src: Path, dst: Path, **kwargs) -> dict:
    """``build_imagenet_subset`` with the tests' small counts, no progress bar and the val folder beside ``src``.

    The val folder is passed only for the default test source (``val``) and when no ``val`` is given.
    """
    if kwargs.get("test_source", "val") == "val":
        kwargs.setdefault("val", src.parent / "val")
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
    for val in (None, imagenet.parent / "val"):
        alone = subset.plan_subset(imagenet, [wnid], N_TRAIN, N_TEST, seed=0, val=val)
        among = subset.plan_subset(imagenet, ["n00000001", wnid, "n00000007"], N_TRAIN, N_TEST, seed=0, val=val)
        assert all(alone[split][wnid] == among[split][wnid] for split in ("train", "test"))


def test_counts_disjoint_splits_symlinks_and_manifest(imagenet, tmp_path):
    dst = tmp_path / "subset"
    manifest = build(imagenet, dst, seed=3)
    assert json.loads((dst / subset.MANIFEST).read_text()) == manifest
    classes = manifest["classes"]
    val = imagenet.parent / "val"
    assert manifest == {
        "source": str(imagenet.absolute()),
        "test_source": "val",
        "val_source": str(val.absolute()),
        "seed": 3,
        "mode": "symlink",
        "class_choice": "seeded random",
        "classes": classes,
        "n_test_requested": N_TEST,
        "counts": {"train": dict.fromkeys(classes, N_TRAIN), "test": dict.fromkeys(classes, N_TEST)},
    }
    assert sorted(p.name for p in dst.iterdir()) == ["manifest.json", "test", "train"]
    listing = files(dst)
    for wnid in classes:
        train, test = listing[f"train/{wnid}"], listing[f"test/{wnid}"]
        assert (len(train), len(test)) == (N_TRAIN, N_TEST) and not train & test
        for split, names, source in (("train", train, imagenet), ("test", test, val)):
            for name in names:
                link = dst / split / wnid / name
                assert link.is_symlink() and Path(os.readlink(link)) == source.absolute() / wnid / name
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
        ["--src", str(imagenet), "--val", str(imagenet.parent / "val"), "--dst", str(dst), "--classes-file", str(classes_file)]
        + ["--n-classes", "3", "--n-train", "5", "--n-test", "3", "--seed", "7", "--mode", "copy"]
    )
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["classes"] == ["n00000002", "n00000010", "n00000024"] and manifest["class_choice"] == "listed"
    assert (manifest["seed"], manifest["mode"], manifest["test_source"]) == (7, "copy", "val")
    assert manifest["counts"]["test"] == dict.fromkeys(manifest["classes"], 3)
    assert f"3 classes, 5 train + 3 test images each (test from val), in {dst.resolve()}" in capsys.readouterr().out


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
    val = write_imagenet_val(tmp_path / "val", n_classes=3, per_class=2)
    for image in sorted((src / "n00000001").glob("*.JPEG"))[:2]:
        image.unlink()
    with pytest.raises(ValueError, match=r"needs 4 \+ 2 images; too few in .* for: n00000001 \(4\)$"):
        build(src, tmp_path / "subset", n_classes=3, test_source="train")
    build(src, tmp_path / "other", n_classes=3, n_train=3, n_test=1, test_source="train")  # 4 images: 3 + 1
    build(src, tmp_path / "subset", n_classes=3)  # test images from val: 4 train images are enough
    with pytest.raises(ValueError, match=r"needs 5 images; too few in .* for: n00000001 \(4\)$"):
        build(src, tmp_path / "short", n_classes=3, n_train=5)
    shutil.rmtree(val / "n00000000")
    for image in (val / "n00000002").glob("*.JPEG"):
        image.unlink()
    with pytest.raises(ValueError, match=r"at least 1 test image in the val folder .*: n00000000 \(no folder\), "
                       r"n00000002 \(0 images\) \(check that --val"):
        build(src, tmp_path / "short", n_classes=3)
    assert not (tmp_path / "short").exists()


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
    for inside in (imagenet, imagenet / "n00000001" / "subset", imagenet.parent, imagenet.parent / "val" / "subset"):
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
    sources = sorted(imagenet.parent.rglob("*"))
    manifest = build(imagenet, dst, seed=1, overwrite=True)
    assert json.loads((dst / "manifest.json").read_text()) == manifest and manifest["seed"] == 1
    assert set(files(dst)) == {f"{split}/{wnid}" for split in ("train", "test") for wnid in manifest["classes"]}
    assert sorted(imagenet.parent.rglob("*")) == sources
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
        script.main(["--src", str(tmp_path / "nowhere"), "--val", str(tmp_path / "val"), "--dst", str(tmp_path / "subset")])


# --- test images from ILSVRC val (the default) or from train (the paper's split, contaminated) ---


def test_test_images_come_from_val_and_the_train_images_do_not_depend_on_the_test_source(imagenet, tmp_path):
    from_val = build(imagenet, tmp_path / "val_subset", seed=5)
    from_train = build(imagenet, tmp_path / "train_subset", seed=5, test_source="train")
    val, ours, papers = imagenet.parent / "val", files(tmp_path / "val_subset"), files(tmp_path / "train_subset")
    assert from_val["classes"] == from_train["classes"]
    for wnid in from_val["classes"]:
        assert ours[f"train/{wnid}"] == papers[f"train/{wnid}"]  # the same train draw either way
        assert ours[f"test/{wnid}"] <= {p.name for p in subset.class_images(val / wnid)}
        assert papers[f"test/{wnid}"] <= {p.name for p in subset.class_images(imagenet / wnid)}
        assert not papers[f"test/{wnid}"] & papers[f"train/{wnid}"]
    assert (from_val["test_source"], from_val["val_source"], "warning" in from_val) == ("val", str(val.absolute()), False)
    assert (from_train["test_source"], from_train["val_source"]) == ("train", None)
    assert "pretrained" in from_train["warning"] and "inflated" in from_train["warning"]


def test_each_class_gets_at_most_its_val_images(tmp_path):
    src = write_imagenet_train(tmp_path / "train", n_classes=3, per_class=6)
    val = write_imagenet_val(tmp_path / "val", n_classes=3, per_class=N_VAL)
    next((val / "n00000001").glob("*.JPEG")).unlink()  # 2 val images left in that class
    manifest = build(src, tmp_path / "subset", n_classes=3, n_test=5)
    assert manifest["n_test_requested"] == 5
    assert manifest["counts"]["test"] == {"n00000000": 3, "n00000001": 2, "n00000002": 3}  # min(n_test, available)
    assert manifest["counts"]["train"] == dict.fromkeys(manifest["classes"], N_TRAIN)
    fewer = build(src, tmp_path / "fewer", n_classes=3, n_test=1)
    assert fewer["counts"]["test"] == dict.fromkeys(manifest["classes"], 1)
    for wnid in manifest["classes"]:  # a seeded draw: the single image is one of the larger draw's
        assert files(tmp_path / "fewer")[f"test/{wnid}"] <= files(tmp_path / "subset")[f"test/{wnid}"]


def test_a_missing_val_folder_says_how_to_fix_it(imagenet, tmp_path, capsys):
    dst = tmp_path / "subset"
    with pytest.raises(ValueError, match=r"no val folder was given: pass --val /path/to/imagenet/val .* or --test-source train"):
        build(imagenet, dst, val=None)
    with pytest.raises(SystemExit, match="^error: the test images come from ImageNet's val folder .* --test-source train"):
        script.main(["--src", str(imagenet), "--dst", str(dst)])
    assert not dst.exists()
    script.main(["--src", str(imagenet), "--dst", str(dst), "--test-source", "train", "--n-train", "4", "--n-test", "2"])
    printed = capsys.readouterr()
    assert "4 train + 2 test images each (test from train)" in printed.out and "warning: test images drawn" in printed.err


def test_val_folder_errors(imagenet, tmp_path):
    dst = tmp_path / "subset"
    with pytest.raises(DatasetNotFoundError, match="ImageNet val folder not found .* No folder .*--val .*valprep.sh"):
        build(imagenet, dst, val=tmp_path / "nowhere")
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in sorted((imagenet.parent / "val" / "n00000000").glob("*.JPEG"))[:2]:
        shutil.copy(image, flat / image.name)
    with pytest.raises(DatasetNotFoundError, match="holds 2 images directly but no class folders .* sort them into"):
        build(imagenet, dst, val=flat)
    with pytest.raises(ValueError, match="--val was given with --test-source train, .* drop --val"):
        build(imagenet, dst, test_source="train", val=imagenet.parent / "val")
    with pytest.raises(ValueError, match=r"test_source \(--test-source\) must be one of val, train, got 'test'"):
        build(imagenet, dst, test_source="test")
    assert siblings(dst) == ["flat"]


def test_the_script_help_names_the_test_sources_and_the_contaminated_one(capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--val VAL" in text and "--test-source {val,train}" in text and "CONTAMINATED" in text
    assert "--test-source train" in script.__doc__ and "contaminated" in script.__doc__
    assert "Contaminated" in subset.__doc__
