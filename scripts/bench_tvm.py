"""Benchmark our batched TVM against ART's ``TotalVarMin`` on the same images and masks (not part of the tests).

Both solve Guo et al.'s problem (``defense.baselines.tvm``) per image and channel with the same pixel
masks and settings: ours with one torch L-BFGS over the whole batch (``--our-steps`` iterations), ART with
SciPy's L-BFGS-B one image and channel at a time (``--steps`` iterations each; its ``_minimize``, fed our
masks, as ART draws its own otherwise).
Reported: the wall time of each, the pixel agreement of the two reconstructions (mean and largest
absolute difference), the objective each reaches (ours relative to ART's, per image), and with
``--checkpoint`` (a classifier ``f`` as the classifier stage caches it) how often ``f`` gives both the
same label. Needs ART: ``pip install adversarial-robustness-toolbox`` (``make bench-tvm`` does).

Example::

    python scripts/bench_tvm.py --data-root data --n 100 --out outputs/bench_tvm
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from gcd_lightning.adversarial import predict, stack
from gcd_lightning.defense.baselines.tvm import tvm_objective, tvm_solve
from gcd_lightning.models import normalized
from gcd_lightning.utils.files import load_torch, save_json, save_text

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--n", type=int, default=100, help="test images")
    parser.add_argument("--keep-prob", type=float, default=0.3)
    parser.add_argument("--weight", type=float, default=0.5, help="λ of the total variation")
    parser.add_argument("--steps", type=int, default=10, help="ART's L-BFGS-B iterations per image (max_iter)")
    parser.add_argument("--our-steps", type=int, default=30, help="our L-BFGS iterations for the whole batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for ours (small tensors: 1 is often fastest)")
    parser.add_argument("--checkpoint", default=None, help="f's weights, to compare its labels on both reconstructions")
    parser.add_argument("--out", default="outputs/bench_tvm")
    return parser.parse_args(argv)


def art_reconstruct(x: torch.Tensor, keep: torch.Tensor, weight: float, steps: int) -> torch.Tensor:
    """ART's ``TotalVarMin`` solution for each image with our mask (channels last, as ART expects), clipped to [0, 1]."""
    from art.defences.preprocessor import TotalVarMin

    art = TotalVarMin(prob=0.3, norm=2, lamb=weight, solver="L-BFGS-B", max_iter=steps, clip_values=(0.0, 1.0))
    images = x.permute(0, 2, 3, 1).double().numpy()
    masks = keep.permute(0, 2, 3, 1).numpy().astype("int")
    out = np.stack([art._minimize(image.copy(), mask) for image, mask in zip(images, masks)])
    return torch.from_numpy(np.clip(out, 0.0, 1.0)).permute(0, 3, 1, 2).float()


def save_measures(result: dict, out: Path, stem: str) -> None:
    """Write ``result`` to ``out/<stem>.json`` and as a two-column Markdown table to ``out/<stem>.md``, and print the table."""
    save_json(result, out / f"{stem}.json")
    lines = ["| measure | value |", "|---|---|", *(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                                                   for k, v in result.items())]
    save_text("\n".join(lines) + "\n", out / f"{stem}.md")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.data_dir={args.data_root}"])
    datamodule = hydra.utils.instantiate(cfg.dataset.datamodule)
    datamodule.prepare_data()
    datamodule.setup()
    x, y = stack(datamodule.dataset("test"), torch.arange(args.n))
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(args.seed)) < args.keep_prob

    tvm_solve(x[:2], keep[:2], args.weight, args.our_steps)  # warm-up: torch's first optimizer step pays one-off costs
    start = time.perf_counter()
    ours = tvm_solve(x, keep, args.weight, args.our_steps)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    theirs = art_reconstruct(x, keep, args.weight, args.steps)
    art_seconds = time.perf_counter() - start

    mask = keep.float()
    objective_ours = tvm_objective(ours.double(), x.double(), mask.double(), args.weight).sum(dim=1)
    objective_art = tvm_objective(theirs.double(), x.double(), mask.double(), args.weight).sum(dim=1)
    objective_start = tvm_objective(x.double(), x.double(), mask.double(), args.weight).sum(dim=1)
    diff = (ours - theirs).abs()
    result = {
        "n": args.n, "keep_prob": args.keep_prob, "weight": args.weight, "art_steps": args.steps, "our_steps": args.our_steps,
        "ours_seconds": ours_seconds, "art_seconds": art_seconds, "speedup": art_seconds / ours_seconds,
        "pixel_diff_mean": diff.mean().item(), "pixel_diff_max": diff.max().item(),
        "objective_start_median": objective_start.median().item(),
        "objective_ours_median": objective_ours.median().item(),
        "objective_art_median": objective_art.median().item(),
        "objective_ratio_median": (objective_ours / objective_art).median().item(),
        "objective_ratio_max": (objective_ours / objective_art).max().item(),
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }
    if args.checkpoint:
        f = normalized(hydra.utils.instantiate(cfg.model.net), cfg.dataset.mean, cfg.dataset.std)
        f.load_state_dict(load_torch(args.checkpoint, "classifier weights"))
        f.eval()
        labels_ours, labels_art = predict(f, ours, 100), predict(f, theirs, 100)
        result |= {"label_agreement": (labels_ours == labels_art).float().mean().item(),
                   "acc_ours": (labels_ours == y).float().mean().item(), "acc_art": (labels_art == y).float().mean().item()}
    save_measures(result, Path(args.out), "bench_tvm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
