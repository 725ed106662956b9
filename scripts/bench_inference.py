"""Inference cost of a saved defense against ``f`` alone and against its floor, on clean and adversarial traffic.

    python scripts/bench_inference.py --defense outputs/<run>/defense [--data-root data] [--n 1024]

The floor is what any GCD must compute for a batch: one forward and backward pass of ``f`` (its
prediction and ``G(x, ŷ)``) and one forward pass of each detector. The defense adds the rectifier
(with its saliency) for flagged inputs only. Adversarial traffic is PGD (L∞ 0.3, 40 steps) on
``f``. Prints one line per case, e.g. ``clean batch 256: 5.1x f, 1.07x floor`` (time per image
relative to each), and images/s of all three. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gcd_lightning import load_defense
from gcd_lightning.attacks import PGD
from gcd_lightning.data import MNISTDataModule
from gcd_lightning.defense.gcd import GCD


def images_per_second(step: Callable[[torch.Tensor], object], x: torch.Tensor, batch_size: int, min_seconds: float) -> float:
    """Run ``step`` over ``x`` in batches (one warm-up batch first), repeating for at least ``min_seconds``."""
    step(x[:batch_size])
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(x) - batch_size + 1, batch_size):
            step(x[i : i + batch_size])
            done += batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def floor(defense: GCD) -> Callable[[torch.Tensor], object]:
    """``f`` forward + backward for ``G``, then each detector's forward on what it reads."""

    def step(x: torch.Tensor) -> None:
        inputs = x.clone().requires_grad_(True)
        logits = defense.classifier(inputs)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1), reduction="sum"), inputs)
        with torch.no_grad():
            for detector in defense.detectors:
                detector.logits_from_sensitivity(g) if detector.reads_sensitivity_of(defense.classifier) else detector(x)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defense", required=True, help="an exported defense folder (<run dir>/defense)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--n", type=int, default=1024, help="test images per traffic kind")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each case for at least this long")
    args = parser.parse_args()

    torch.manual_seed(0)
    defense = load_defense(args.defense)
    data = MNISTDataModule(args.data_root, val_size=5000)
    test = data.dataset("test")
    x, y = test.tensors[0][: args.n], test.tensors[1][: args.n]
    attack = PGD(defense.classifier, eps=0.3, nb_iter=40, eps_iter=0.01, rand_init=True, targeted=False)
    x_adv = torch.cat([attack.perturb(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)])
    for traffic, images in (("clean", x), ("adversarial", x_adv)):
        flagged = defense.predict(images).flagged.float().mean().item()
        for batch_size in (1, 256):
            subset = images[: 128 if batch_size == 1 else len(images)]
            with torch.no_grad():
                f_rate = images_per_second(defense.classifier, subset, batch_size, args.min_seconds)
            floor_rate = images_per_second(floor(defense), subset, batch_size, args.min_seconds)
            gcd_rate = images_per_second(defense.predict, subset, batch_size, args.min_seconds)
            print(
                f"{traffic} batch {batch_size}: {f_rate / gcd_rate:.1f}x f, {floor_rate / gcd_rate:.2f}x floor "
                f"(images/s: f {f_rate:.0f}, floor {floor_rate:.0f}, defense {gcd_rate:.0f}; flagged {flagged:.1%})",
                flush=True,
            )


if __name__ == "__main__":
    main()
