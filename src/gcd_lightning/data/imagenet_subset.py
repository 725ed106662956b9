"""Build the paper's 20-class ImageNet subset from a local ImageNet train folder.

The source is ImageNet's train folder in ImageFolder layout, ``<src>/<wnid>/*.JPEG``. The subset
takes ``n_classes`` classes (a given list of wnids, or a seeded random choice of the available
ones) and, per class, ``n_train`` + ``n_test`` distinct images, written as
``<dst>/train/<wnid>/<file>`` and ``<dst>/test/<wnid>/<file>`` -- the tree ``ImageFolderDataModule``
reads -- plus ``<dst>/manifest.json``. Files are symlinked by default (hard links or copies on
request), so the subset costs no space.

Every choice is seeded and independent of the machine: the classes are drawn from the sorted
class folders, and each class's images from its sorted file list shuffled by a generator seeded
with ``(seed, wnid)``, so a class gets the same images whichever other classes are chosen. The
subset is built in a temporary folder next to ``dst`` and renamed into place, so ``dst`` is
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
MANIFEST = "manifest.json"


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


def plan_subset(
    src: str | os.PathLike[str], classes: Sequence[str], n_train: int, n_test: int, seed: int
) -> dict[str, dict[str, list[Path]]]:
    """``{"train": {wnid: files}, "test": {wnid: files}}``; a ``ValueError`` names every class with too few images."""
    plan: dict[str, dict[str, list[Path]]] = {TRAIN_DIR: {}, TEST_DIR: {}}
    short = []
    for wnid in classes:
        images = class_images(Path(src) / wnid)
        if len(images) < n_train + n_test:
            short.append(f"{wnid} ({len(images)})")
            continue
        plan[TRAIN_DIR][wnid], plan[TEST_DIR][wnid] = split_images(images, wnid, n_train, n_test, seed)
    if short:
        raise ValueError(
            f"each class needs {n_train} + {n_test} images; too few in {Path(src).absolute()} for: {', '.join(short)}"
        )
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


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse a ``dst`` that overlaps ``src``, is a file, or is a non-empty folder (unless ``overwrite``)."""
    src_real, dst_real = src.resolve(), dst.resolve()
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
) -> dict:
    """Build the subset of ``src`` in ``dst`` and return its manifest (also written to ``dst/manifest.json``).

    Args:
        src: ImageNet's train folder, ``<src>/<wnid>/*.JPEG``.
        dst: the subset's folder; must be absent or empty, or (with ``overwrite``) an earlier subset.
        classes: the wnids to take, or ``None`` for a seeded random choice of ``n_classes``.
        n_classes: number of classes.
        n_train, n_test: images per class in ``train/`` and ``test/``.
        seed: seed of the class choice and of each class's image draw.
        mode: ``"symlink"`` (absolute links to the source files), ``"hardlink"`` or ``"copy"``.
        overwrite: replace a non-empty ``dst`` that holds an earlier subset.
        progress: show a tqdm progress bar.

    Every check (arguments, source, destination, classes, image counts) runs before anything is
    written. Raises ``DatasetNotFoundError`` (no source folder), ``FileNotFoundError`` (a listed
    class is missing), ``FileExistsError`` (``dst`` is in the way) or ``ValueError``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name, value in (("n_classes", n_classes), ("n_train", n_train), ("n_test", n_test)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    src, dst = Path(src), Path(dst)
    chosen = choose_classes(source_classes(src), n_classes, seed, classes)
    _check_destination(src, dst, overwrite)
    plan = plan_subset(src, chosen, n_train, n_test, seed)
    manifest = {
        "source": str(src.absolute()),
        "seed": seed,
        "mode": mode,
        "class_choice": "listed" if classes is not None else "seeded random",
        "classes": chosen,
        "counts": {split: {wnid: len(files) for wnid, files in per_class.items()} for split, per_class in plan.items()},
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(dst, "tmp")
    try:
        total = len(chosen) * (n_train + n_test)
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

