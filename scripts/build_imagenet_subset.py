"""Build the paper's 20-class ImageNet subset (train/ and test/ per class) from a local ImageNet train folder.

    python scripts/build_imagenet_subset.py --src /datasets/imagenet/train [--dst data/imagenet_subset]

The classes come from conf/imagenet_subset/classes.yaml (null: a seeded random choice); per class
1,040 train and 260 test images are drawn with a seeded shuffle and symlinked (by default) into
<dst>/{train,test}/<wnid>/, with <dst>/manifest.json. See gcd_lightning.data.imagenet_subset.
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
    parser.add_argument("--dst", type=Path, default=Path("data/imagenet_subset"), help="default: %(default)s")
    parser.add_argument(
        "--classes-file", type=Path, default=CLASSES_FILE, help="YAML list of wnids, or null for a seeded choice"
    )
    parser.add_argument("--n-classes", type=int, default=subset.N_CLASSES, help="default: %(default)s")
    parser.add_argument("--n-train", type=int, default=subset.N_TRAIN, help="train images per class (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=subset.N_TEST, help="test images per class (default: %(default)s)")
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
        )
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    n_classes = len(manifest["classes"])
    print(f"{n_classes} classes, {args.n_train} train + {args.n_test} test images each, in {args.dst.resolve()}")


if __name__ == "__main__":
    main()
