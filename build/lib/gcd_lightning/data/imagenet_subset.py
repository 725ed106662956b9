"""Build the paper's 20-class ImageNet subset from a local ImageNet train folder and val folder.

The sources are ImageNet's train folder in ImageFolder layout, ``<src>/<wnid>/*.JPEG``, and its
val folder sorted into the same layout, ``<val>/<wnid>/*.JPEG`` (``ILSVRC2012_img_val.tar``
extracted, then moved into one folder per class, e.g. by the usual ``valprep.sh``). The subset
takes ``n_classes`` classes (a given list of wnids, or a seeded random choice of the train
folder's classes) and, per class, ``n_train`` train images and up to ``n_test`` test images,
written as ``<dst>/train/<wnid>/<file>`` and ``<dst>/test/<wnid>/<file>`` -- the tree
``ImageFolderDataModule`` reads -- plus ``<dst>/manifest.json``. Files are symlinked by default
(hard links or copies on request), so the subset costs no space.

Where the test images come from (``test_source``):

* ``"val"`` (the default): ImageNet's val folder. The pretrained base models (ResNet-152, the
  Wide ResNet-50-2 rectifier) trained on ImageNet's train images, so only val images are unseen
  by them. ImageNet has 50 val images per class, so a class gets ``min(n_test, its val images)``
  test images: 50 per class with the default ``n_test`` of 260, 1,000 for 20 classes. The
  manifest records the counts per class and the ``n_test`` asked for.
* ``"train"``: the paper's split (4.1: 1,040 train and 260 test images per class), the test
  images drawn from the train folder beside the train images. **Contaminated**: the pretrained
  models trained on those test images, which inflates every accuracy and every number built on
  them. Kept to reproduce the paper's setting only.

Every choice is seeded and independent of the machine: the classes are drawn from the sorted
class folders, and each class's images from its sorted file list shuffled by a generator seeded
with ``(seed, wnid)`` (the val images with ``(seed, wnid, "val")``), so a class gets the same
images whichever other classes are chosen, and the same train images whichever the test source.
The subset is built in a temporary folder next to ``dst`` and renamed into place, so ``dst`` is
either absent, the old subset or the complete new one.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import yaml
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from tqdm import tqdm

from gcd_lightning.data.errors import DatasetNotFoundError
from gcd_lightning.data.imagefolder import TEST_DIR, TRAIN_DIR
from gcd_lightning.utils.files import save_json

N_CLASSES = 20
N_TRAIN = 1040
N_TEST = 260
MODES = ("symlink", "hardlink", "copy")
TEST_SOURCES = ("val", "train")
"""Where the test images come from: ImageNet's val folder (default) or its train folder (the paper's, contaminated)."""
MANIFEST = "manifest.json"
CONTAMINATED = (
    "test images drawn from ImageNet's train folder (the paper's split): the pretrained ResNet-152 and "
    "Wide ResNet-50-2 trained on them, so every accuracy on this subset is inflated"
)
VAL_HOW_TO = (
    "point --val at ImageNet's val folder sorted into one folder per wnid (ILSVRC2012_img_val.tar extracted, "
    "then e.g. valprep.sh), or build the paper's split with --test-source train (contaminated: the test images "
    "then come from the train folder the pretrained models trained on)."
)


def read_class_list(path: str | os.PathLike[str]) -> list[str] | None:
    """The wnids listed in a YAML file (a list of strings), or ``None`` when it is empty or ``null``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found at {path.resolve()}")
    content = yaml.safe_load(path.read_text())
    if content is None or content == []:
        return None
    if not isinstance(content, list) or not all(isinstance(wnid, str) for wnid in content):
        raise ValueError(f"{path.resolve()} must hold a YAML list of wnids (or null), found {content!r}")
    duplicates = sorted({wnid for wnid in content if content.count(wnid) > 1})
    if duplicates:
        raise ValueError(f"{path.resolve()} lists these classes more than once: {', '.join(duplicates)}")
    return content


def source_classes(src: str | os.PathLike[str]) -> list[str]:
    """The sorted class folder names of the ImageNet train folder ``src``."""
    src = Path(src)
    how_to = "point --src at ImageNet's train folder (ILSVRC2012_img_train extracted: one folder of JPEGs per wnid)."
    expected = ("<wnid>/<image>.JPEG",)
    if not src.is_dir():
        raise DatasetNotFoundError("ImageNet train folder", src, expected, how_to, f"No folder {src.absolute()}.")
    classes = sorted(entry.name for entry in os.scandir(src) if entry.is_dir())
    if not classes:
        raise DatasetNotFoundError("ImageNet train folder", src, expected, how_to, "It has no class folders.")
    return classes


def check_val_folder(val: str | os.PathLike[str]) -> Path:
    """``val`` if it is ImageNet's val folder in per-class layout (``<val>/<wnid>/*.JPEG``); else ``DatasetNotFoundError``.

    A flat val folder (``ILSVRC2012_val_*.JPEG`` directly inside, as the tar extracts) is refused
    with the hint to sort it into class folders first.
    """
    val = Path(val)
    expected = ("<wnid>/ILSVRC2012_val_<number>.JPEG",)
    if not val.is_dir():
        raise DatasetNotFoundError("ImageNet val folder", val, expected, VAL_HOW_TO, f"No folder {val.absolute()}.")
    if not any(entry.is_dir() for entry in os.scandir(val)):
        flat = len(class_images(val))
        reason = (
            f"It holds {flat} images directly but no class folders (the flat layout of ILSVRC2012_img_val.tar): "
            "sort them into <wnid>/ folders first."
            if flat
            else "It has no class folders."
        )
        raise DatasetNotFoundError("ImageNet val folder", val, expected, VAL_HOW_TO, reason)
    return val


def choose_classes(
    available: Sequence[str], n_classes: int, seed: int, listed: Sequence[str] | None = None
) -> list[str]:
    """The subset's classes, sorted: ``listed`` (checked against ``available``) or a seeded choice of ``n_classes``.

    Raises ``ValueError`` when ``listed`` does not hold ``n_classes`` wnids or there are fewer than
    ``n_classes`` available, and ``FileNotFoundError`` naming the listed classes that are not available.
    """
    if listed is not None:
        if len(listed) != n_classes:
            raise ValueError(f"{len(listed)} classes are listed but n_classes is {n_classes}")
        missing = sorted(set(listed) - set(available))
        if missing:
            raise FileNotFoundError(f"listed classes without a folder in the source: {', '.join(missing)}")
        return sorted(listed)
    if len(available) < n_classes:
        raise ValueError(f"{n_classes} classes requested but the source has only {len(available)}")
    return sorted(random.Random(seed).sample(sorted(available), n_classes))


def class_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files (the extensions ``torchvision``'s ImageFolder reads) directly in ``folder``, sorted by name."""
    return sorted(
        Path(entry.path)
        for entry in os.scandir(folder)
        if entry.is_file() and has_file_allowed_extension(entry.name, IMG_EXTENSIONS)
    )


def split_images(
    images: Sequence[Path], wnid: str, n_train: int, n_test: int, seed: int
) -> tuple[list[Path], list[Path]]:
    """Disjoint (train, test) draws of ``n_train`` and ``n_test`` of ``images`` (sorted), seeded by ``(seed, wnid)``."""
    if len(images) < n_train + n_test:
        raise ValueError(f"class {wnid} has {len(images)} images, fewer than the {n_train} + {n_test} needed")
    shuffled = sorted(images)
    random.Random(f"{seed}:{wnid}").shuffle(shuffled)
    return shuffled[:n_train], shuffled[n_train : n_train + n_test]


def draw_val_images(images: Sequence[Path], wnid: str, n_test: int, seed: int) -> list[Path]:
    """``min(n_test, len(images))`` of a class's val ``images`` (sorted), drawn by a shuffle seeded with ``(seed, wnid, "val")``."""
    shuffled = sorted(images)
    random.Random(f"{seed}:{wnid}:val").shuffle(shuffled)
    return shuffled[:n_test]


def plan_subset(
    src: str | os.PathLike[str],
    classes: Sequence[str],
    n_train: int,
    n_test: int,
    seed: int,
    val: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, list[Path]]]:
    """``{"train": {wnid: files}, "test": {wnid: files}}``; a ``ValueError`` names every class with too few images.

    With ``val`` the test images come from ``<val>/<wnid>/``, ``min(n_test, available)`` per class
    (at least one needed), and the train images are the first ``n_train`` of the same draw as
    without it; without ``val`` both come from ``src`` (the paper's split, contaminated).
    """
    plan: dict[str, dict[str, list[Path]]] = {TRAIN_DIR: {}, TEST_DIR: {}}
    n_from_src = n_train if val is not None else n_train + n_test
    short, no_val = [], []
    for wnid in classes:
        images = class_images(Path(src) / wnid)
        if len(images) < n_from_src:
            short.append(f"{wnid} ({len(images)})")
            continue
        train, test = split_images(images, wnid, n_train, n_from_src - n_train, seed)
        if val is not None:
            folder = Path(val) / wnid
            test = draw_val_images(class_images(folder), wnid, n_test, seed) if folder.is_dir() else []
            if not test:
                no_val.append(f"{wnid} ({'no folder' if not folder.is_dir() else '0 images'})")
        plan[TRAIN_DIR][wnid], plan[TEST_DIR][wnid] = train, test
    problems = []
    if short:
        needed = f"{n_train}" if val is not None else f"{n_train} + {n_test}"
        problems.append(f"each class needs {needed} images; too few in {Path(src).absolute()} for: {', '.join(short)}")
    if no_val:
        problems.append(
            f"each class needs at least 1 test image in the val folder {Path(val).absolute()}; none for: "
            f"{', '.join(no_val)} (check that --val is ImageNet's val folder sorted into <wnid>/ folders)"
        )
    if problems:
        raise ValueError("; ".join(problems))
    return plan


def place(source: Path, target: Path, mode: str) -> None:
    """Put ``source`` at ``target`` as an absolute symlink, a hard link or a copy (``mode``, one of ``MODES``)."""
    if mode == "symlink":
        target.symlink_to(source.absolute())
    elif mode == "hardlink":
        try:
            os.link(source, target)
        except OSError as error:
            raise OSError(
                f"cannot hard-link {source} to {target} ({error}); hard links need the same file system: "
                "use --mode symlink or copy"
            ) from error
    else:
        shutil.copy2(source, target)


def _check_destination(sources: Sequence[Path], dst: Path, overwrite: bool) -> None:
    """Refuse a ``dst`` that overlaps one of ``sources``, is a file, or is a non-empty folder (unless ``overwrite``)."""
    dst_real = dst.resolve()
    for src in sources:
        src_real = src.resolve()
        if src_real == dst_real or src_real in dst_real.parents or dst_real in src_real.parents:
            raise ValueError(f"the destination {dst_real} and the source {src_real} must not contain each other")
    if not dst.exists():
        return
    if not dst.is_dir():
        raise FileExistsError(f"the destination {dst.absolute()} exists and is not a folder")
    if not any(dst.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"the destination {dst.absolute()} exists and is not empty; pass --overwrite to replace it"
        )
    if not (dst / MANIFEST).is_file():
        raise FileExistsError(
            f"refusing to overwrite {dst.absolute()}: it has no {MANIFEST}, so it is not a subset built by this "
            "tool; remove it yourself if it may go"
        )


def _sibling(dst: Path, suffix: str) -> Path:
    """A fresh hidden folder next to ``dst`` (same file system, so renames are atomic), with umask permissions."""
    folder = dst.parent / f".{dst.name}.{uuid.uuid4().hex}.{suffix}"
    folder.mkdir()
    return folder


def _replace(tmp: Path, dst: Path) -> None:
    """Rename the finished ``tmp`` onto ``dst``; a non-empty ``dst`` is moved aside first and removed after."""
    if not (dst.exists() and any(dst.iterdir())):
        os.replace(tmp, dst)  # an empty folder is replaced by the rename
        return
    old = _sibling(dst, "old") / dst.name
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old.parent)  # the old subset's links go, never the files they point to


def build_imagenet_subset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    n_classes: int = N_CLASSES,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = 0,
    mode: str = "symlink",
    overwrite: bool = False,
    progress: bool = True,
    val: str | os.PathLike[str] | None = None,
    test_source: str = "val",
) -> dict:
    """Build the subset of ``src`` (and ``val``) in ``dst`` and return its manifest (also written to ``dst/manifest.json``).

    Args:
        src: ImageNet's train folder, ``<src>/<wnid>/*.JPEG``.
        dst: the subset's folder; must be absent or empty, or (with ``overwrite``) an earlier subset.
        classes: the wnids to take, or ``None`` for a seeded random choice of ``n_classes``.
        n_classes: number of classes.
        n_train: images per class in ``train/``, from ``src``.
        n_test: images per class in ``test/``; from ``val``, at most the class's val images (50 in ImageNet).
        seed: seed of the class choice and of each class's image draw.
        mode: ``"symlink"`` (absolute links to the source files), ``"hardlink"`` or ``"copy"``.
        overwrite: replace a non-empty ``dst`` that holds an earlier subset.
        progress: show a tqdm progress bar.
        val: ImageNet's val folder in per-class layout, ``<val>/<wnid>/*.JPEG``; needed when
            ``test_source`` is ``"val"``.
        test_source: ``"val"`` (default: test images from ``val``, unseen by the pretrained models)
            or ``"train"`` (the paper's split: test images from ``src`` too, which the pretrained
            models trained on -- contaminated).

    Every check (arguments, sources, destination, classes, image counts) runs before anything is
    written. Raises ``DatasetNotFoundError`` (no source folder), ``FileNotFoundError`` (a listed
    class is missing), ``FileExistsError`` (``dst`` is in the way) or ``ValueError``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name, value in (("n_classes", n_classes), ("n_train", n_train), ("n_test", n_test)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if test_source not in TEST_SOURCES:
        raise ValueError(f"test_source (--test-source) must be one of {', '.join(TEST_SOURCES)}, got {test_source!r}")
    if test_source == "val" and val is None:
        raise ValueError(
            "the test images come from ImageNet's val folder (--test-source val, the default), but no val folder "
            "was given: pass --val /path/to/imagenet/val (one folder of JPEGs per wnid, as after valprep.sh), or "
            "--test-source train for the paper's split (contaminated: the pretrained models trained on those test images)"
        )
    if test_source == "train" and val is not None:
        raise ValueError(
            "--val was given with --test-source train, which draws the test images from the train folder and would "
            "ignore it: drop --val, or use --test-source val"
        )
    src, dst = Path(src), Path(dst)
    available = source_classes(src)
    val = check_val_folder(val) if val is not None else None
    chosen = choose_classes(available, n_classes, seed, classes)
    _check_destination([src] if val is None else [src, val], dst, overwrite)
    plan = plan_subset(src, chosen, n_train, n_test, seed, val)
    manifest = {
        "source": str(src.absolute()),
        "test_source": test_source,
        "val_source": None if val is None else str(val.absolute()),
        "seed": seed,
        "mode": mode,
        "class_choice": "listed" if classes is not None else "seeded random",
        "classes": chosen,
        "n_test_requested": n_test,
        "counts": {split: {wnid: len(files) for wnid, files in per_class.items()} for split, per_class in plan.items()},
    }
    if test_source == "train":
        manifest["warning"] = CONTAMINATED
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(dst, "tmp")
    try:
        total = sum(len(files) for per_class in plan.values() for files in per_class.values())
        with tqdm(total=total, desc="imagenet subset", unit="img", disable=not progress) as bar:
            for split, per_class in plan.items():
                for wnid, files in per_class.items():
                    folder = tmp / split / wnid
                    folder.mkdir(parents=True)
                    for source in files:
                        place(source, folder / source.name, mode)
                        bar.update()
        save_json(manifest, tmp / MANIFEST)
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest

