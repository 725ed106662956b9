"""Benchmark our HopSkipJump against ART's on the same classifier, images and starting points (not part of the tests).

Both implement Chen, Jordan & Wainwright (2020) as a minimum-norm, decision-based attack; here both start from the
same points, our ``BlendSearch``'s wins at L∞ ε = 1 against the undefended classifier ``f`` (ART's
``x_adv_init``), and run the same iterations and decision budget per gradient estimate (``init_evals·√t`` up
to ``max_evals``), in L2 and in L∞. Reported per norm: the median distance to the clean image where each won
(from a shared start: the nearer the better), the share won, the per-image ratio ours / ART's, the decisions
each asked for per image (ours without its start's), and the wall time of each. Needs ART: ``pip install adversarial-robustness-toolbox`` (``make bench-hsj`` does).

Example::

    python scripts/bench_hsj.py --checkpoint cache/classifier/<f>.pt --data-root data --n 100 --out outputs/bench_hsj
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch

from bench_attacks import classifier_arguments, compose_config, count_images, load_classifier
from bench_tvm import save_measures
from gcd_lightning.adversarial import predict, select_correct, stack
from gcd_lightning.attacks import Norm, run_attack
from gcd_lightning.whitebox.blend import BlendSearch, size
from gcd_lightning.whitebox.hopskipjump import HopSkipJump
from gcd_lightning.whitebox.models import GuardedClassifier
from gcd_lightning.whitebox.objectives import HingeEvasion


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    classifier_arguments(parser, 100)
    parser.add_argument("--donors", type=int, default=500, help="validation images BlendSearch may start from")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--init-evals", type=int, default=25)
    parser.add_argument("--max-evals", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench_hsj")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides")
    return parser.parse_args(argv)


def last_child(model: torch.nn.Module) -> torch.nn.Module:
    """Where to count queries: ART calls a model's children in turn, past its own ``forward`` and hooks."""
    return list(model.children())[-1]


def art_walk(model: torch.nn.Module, x: torch.Tensor, start: torch.Tensor, norm: Norm, args: argparse.Namespace) -> tuple[torch.Tensor, int]:
    """ART's ``HopSkipJump`` on ``model`` from ``start``, untargeted, with our iteration and decision budget; and its queries."""
    from art.attacks.evasion import HopSkipJump as ArtHopSkipJump
    from art.estimators.classification import PyTorchClassifier

    model = copy.deepcopy(model).double()  # ART's searches compute in float64
    classifier = PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), tuple(x.shape[1:]), int(model(x[:1].double()).shape[1]),
                                   clip_values=(0.0, 1.0), device_type="cpu")
    attack = ArtHopSkipJump(classifier, targeted=False, norm=2 if norm is Norm.L2 else np.inf, max_iter=args.iterations,
                            max_eval=args.max_evals, init_eval=args.init_evals, batch_size=len(x), verbose=False)
    np.random.seed(args.seed)
    with count_images(last_child(model)) as queries:
        found = attack.generate(x.double().numpy(), x_adv_init=start.double().numpy())
    return torch.from_numpy(found).float(), queries[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = compose_config("pgd_untargeted", args)
    model = load_classifier(cfg, args.checkpoint, torch.device("cpu"))
    datamodule = hydra.utils.instantiate(cfg.dataset.datamodule)
    datamodule.prepare_data()
    test_set = datamodule.dataset("test")
    index, _ = select_correct(model, test_set, args.n, args.seed, 100)
    x, y = stack(test_set, index)
    donors = stack(datamodule.dataset("val"), torch.arange(args.donors))[0]
    judge = GuardedClassifier(model, []).eval()
    objective = HingeEvasion(cfg.dataset.num_classes, 0.0, 1.0, False)
    blend = BlendSearch(judge, objective, donors, Norm.LINF.value, 1.0)
    with count_images(last_child(model)) as start_queries:  # ours runs its start again: these queries are not the walk's
        start = run_attack(blend, x, y, batch_size=len(x), progress=False, seed=args.seed)
    started = predict(model, start, len(x)) != y
    x, y, start = x[started], y[started], start[started]
    result: dict = {"n": len(x), "iterations": args.iterations, "init_evals": args.init_evals, "max_evals": args.max_evals,
                    "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    for norm in (Norm.L2, Norm.LINF):
        ours_attack = HopSkipJump(blend, norm.value, args.iterations, args.init_evals, args.max_evals)
        began = time.perf_counter()
        with count_images(last_child(model)) as ours_queries:
            ours = run_attack(ours_attack, x, y, batch_size=len(x), progress=False, seed=args.seed)
        ours_seconds = time.perf_counter() - began
        began = time.perf_counter()
        theirs, art_queries = art_walk(model, x, start, norm, args)
        art_seconds = time.perf_counter() - began
        won_ours, won_art = predict(model, ours, len(x)) != y, predict(model, theirs, len(x)) != y
        d_start, d_ours, d_art = size(x, start, norm), size(x, ours, norm), size(x, theirs, norm)
        both = won_ours & won_art
        result |= {
            f"{norm.value}.start_median": d_start.median().item(),
            f"{norm.value}.ours_median": d_ours[won_ours].median().item(), f"{norm.value}.art_median": d_art[won_art].median().item(),
            f"{norm.value}.ours_won": won_ours.float().mean().item(), f"{norm.value}.art_won": won_art.float().mean().item(),
            f"{norm.value}.ratio_median": (d_ours[both] / d_art[both]).median().item(),
            f"{norm.value}.ours_queries_per_image": (ours_queries[0] - start_queries[0]) / len(x),
            f"{norm.value}.art_queries_per_image": art_queries / len(x),
            f"{norm.value}.ours_seconds": ours_seconds, f"{norm.value}.art_seconds": art_seconds,
        }
    save_measures(result, Path(args.out), "bench_hsj")
    return 0


if __name__ == "__main__":
    sys.exit(main())
