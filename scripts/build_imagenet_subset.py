"""Build the paper's 20-class ImageNet subset (train/ and test/ per class) from local ImageNet train and val folders.

    python scripts/build_imagenet_subset.py --src /datasets/imagenet/train --val /datasets/imagenet/val [--dst data/imagenet_subset]

The classes come from conf/imagenet_subset/classes.yaml (null: a seeded random choice); per class
1,040 train images are drawn from --src and up to 260 test images from --val (ImageNet's val folder,
sorted into <val>/<wnid>/ as after valprep.sh; it has 50 images per class, so each class gets
min(260, 50) = 50), with a seeded shuffle, and symlinked (by default) into <dst>/{train,test}/<wnid>/,
with <dst>/manifest.json. --test-source train draws the 260 test images from --src instead: the
paper's split, contaminated, since the pretrained ResNet-152 and Wide ResNet-50-2 trained on those
images. See gcd_lightning.data.imagenet_subset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gcd_lightning.data import imagenet_subset as subset

CLASSES_FILE = Path(__file__).resolve().parents[1] / "conf" / "imagenet_subset" / "classes.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="ImageNet's train folder: <src>/<wnid>/*.JPEG")
    parser.add_argument(
        "--val", type=Path, default=None,
        help="ImageNet's val folder sorted into one folder per class, <val>/<wnid>/*.JPEG (as after valprep.sh); "
        "needed by --test-source val",
    )
    parser.add_argument(
        "--test-source", choices=subset.TEST_SOURCES, default="val",
        help="where the test images come from: val (default; unseen by the pretrained models) or train (the paper's "
        "split, CONTAMINATED: the pretrained ResNet-152 / Wide ResNet-50-2 trained on those images)",
    )
    parser.add_argument("--dst", type=Path, default=Path("data/imagenet_subset"), help="default: %(default)s")
    parser.add_argument(
        "--classes-file", type=Path, default=CLASSES_FILE, help="YAML list of wnids, or null for a seeded choice"
    )
    parser.add_argument("--n-classes", type=int, default=subset.N_CLASSES, help="default: %(default)s")
    parser.add_argument("--n-train", type=int, default=subset.N_TRAIN, help="train images per class (default: %(default)s)")
    parser.add_argument(
        "--n-test", type=int, default=subset.N_TEST,
        help="test images per class (default: %(default)s, the paper's); from --val at most the class's val images (50)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the class and image draws (default: %(default)s)")
    parser.add_argument("--mode", choices=subset.MODES, default="symlink", help="link or copy (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing subset in --dst")
    args = parser.parse_args(argv)
    try:
        manifest = subset.build_imagenet_subset(
            args.src,
            args.dst,
            classes=subset.read_class_list(args.classes_file),
            n_classes=args.n_classes,
            n_train=args.n_train,
            n_test=args.n_test,
            seed=args.seed,
            mode=args.mode,
            overwrite=args.overwrite,
            val=args.val,
            test_source=args.test_source,
        )
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    n_classes = len(manifest["classes"])
    tests = sorted(set(manifest["counts"]["test"].values()))
    n_test = str(tests[0]) if len(tests) == 1 else f"{tests[0]} to {tests[-1]}"
    print(
        f"{n_classes} classes, {args.n_train} train + {n_test} test images each (test from {args.test_source}), "
        f"in {args.dst.resolve()}"
    )
    if args.test_source == "train":
        print(f"warning: {subset.CONTAMINATED}", file=sys.stderr)


if __name__ == "__main__":
    main()
