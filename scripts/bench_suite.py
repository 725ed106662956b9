"""Benchmark the standard suite against AutoAttack's APGD-CE + APGD-T (``pyautoattack``) on a classifier (not part of the tests).

On a classifier without a detector the suite's attacks are APGD on ``f``'s margin hinge (joint; orthogonal and
selective are the same loss there), then targeted at ``f``'s most likely other classes; AutoAttack's APGD-CE and
APGD-T run with its standard version's settings. Both run on the same correctly classified test images at the same budget; reported per
budget: the robust accuracy each leaves, the images only one of them won, and the wall time of each. AutoAttack is
an independent implementation of APGD (Croce & Hein 2020): a suite that leaves clearly more robust accuracy is
weaker than the standard. Needs ``pyautoattack`` (``pip install -e '.[bench]'``; ``make bench-suite`` does).

Example (the classifier ``make demo`` trained, or Table 5's PGD-trained one)::

    python scripts/bench_suite.py --checkpoint cache/classifier/<f>.pt --data-root data --n 200 --out outputs/bench_suite

With ``--purifier tvm`` the checkpoint is Table 5's network trained behind TVM (``conf/rectifier_baseline/tvm.yaml``)
and the target is that defended classifier: both sides attack it through BPDA + EOT of the purifier (the suite as the
white-box stage's ``rec_tvm`` target, its ``rand`` suite's draws; AutoAttack's APGD with as many EOT iterations), and
both are judged by the defended classifier under one fixed draw of its randomness.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from bench_attacks import CONF_DIR, classifier_arguments, compose_config, load_classifier
from bench_tvm import save_measures
from gcd_lightning.adversarial import select_correct, stack
from gcd_lightning.evaluate import evaluate, evaluate_target
from gcd_lightning.pipeline.whitebox_stage import defended_target
from gcd_lightning.whitebox.models import PurifiedClassifier
from gcd_lightning.whitebox.suite import load_suite

BUDGETS = {"linf": [0.1, 0.2, 0.3], "l2": [1.0, 2.0]}
PURIFIERS = ("tvm",)  # conf/rectifier_baseline entries with a random preprocess


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    classifier_arguments(parser, 200)
    parser.add_argument("--norms", nargs="+", choices=list(BUDGETS), default=["linf", "l2"])
    parser.add_argument("--eps", nargs="+", type=float, default=None,
                        help="only these budgets of the chosen norms (default: every budget of BUDGETS)")
    parser.add_argument("--suite", default="standard")
    parser.add_argument("--purifier", choices=PURIFIERS, default=None,
                        help="the checkpoint's network behind this Table 5 purifier, attacked through BPDA + EOT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench_suite")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides")
    args = parser.parse_args(argv)
    known = sorted({eps for norm in args.norms for eps in BUDGETS[norm]})
    if args.eps is not None and set(args.eps) - set(known):
        parser.error(f"--eps {sorted(set(args.eps) - set(known))}: not a budget of --norms {' '.join(args.norms)}; choose from {known}")
    return args


def autoattack_robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int,
                      judge: torch.nn.Module | None = None, eot_iter: int = 1) -> torch.Tensor:
    """(N,) bool: AutoAttack's APGD-CE then APGD-T, with its standard version's settings (one restart, 9 target
    classes), leave the image classified right (by ``judge``, default ``model``); ``eot_iter`` gradients averaged per
    step for a random ``model`` (as its ``rand`` version does)."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps, version="custom",
                           attacks=["apgd-ce", "apgd-t"], seed=seed)
    adversary.verbose = False
    adversary.apgd.n_restarts, adversary.apgd_targeted.n_target_classes = 1, 9
    adversary.apgd.eot_iter = adversary.apgd_targeted.eot_iter = eot_iter
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        right = (judge or model)(x_adv).argmax(1) == y
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if (size > eps * (1 + 1e-4) + 1e-6).any():
        raise RuntimeError(f"AutoAttack left the {norm} ball of radius {eps}: largest {size.max().item()}")
    return right


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = compose_config("pgd_untargeted", args)
    model = load_classifier(cfg, args.checkpoint, torch.device("cpu"))
    datamodule = hydra.utils.instantiate(cfg.dataset.datamodule)
    datamodule.prepare_data()
    datamodule.setup()
    test = datamodule.dataset("test")
    target = None
    if args.purifier:  # Table 5's defended classifier: BPDA + EOT on both sides, one fixed draw judges
        recipe = OmegaConf.load(CONF_DIR / "rectifier_baseline" / f"{args.purifier}.yaml")[args.purifier]
        defense = hydra.utils.instantiate(recipe).defense(model).eval()
        eot = load_suite("rand").eot_samples
        target = defended_target(f"rec_{args.purifier}", defense, args.purifier, int(cfg.dataset.num_classes), False, 250, eot)
        model, judged, eot_iter = PurifiedClassifier(defense, 1), target.model, eot
    else:
        judged, eot_iter = model, 1
    index, _ = select_correct(judged, test, args.n, args.seed, 250)
    x, y = stack(test, index)
    result: dict = {"checkpoint": str(args.checkpoint), "n": len(x), "suite": args.suite, "machine": platform.node(),
                    "threads": torch.get_num_threads(), "purifier": args.purifier, "eot": eot_iter}
    for norm in args.norms:
        for eps in [eps for eps in BUDGETS[norm] if args.eps is None or eps in args.eps]:
            start = time.perf_counter()
            if target is None:
                ours = evaluate(model, x, y, norm=norm, eps=eps, suite=args.suite, seed=args.seed)
            else:
                ours = evaluate_target(target.target, target.model, x, y, norm=norm, eps=eps, suite=args.suite, seed=args.seed)
            ours_seconds = time.perf_counter() - start
            start = time.perf_counter()
            theirs = autoattack_robust(model, x, y, norm, eps, args.seed, judge=judged, eot_iter=eot_iter)
            theirs_seconds = time.perf_counter() - start
            key = f"{norm}_{eps:g}"
            result[f"{key}.robust_ours"] = ours.robust.float().mean().item()
            result[f"{key}.robust_autoattack"] = theirs.float().mean().item()
            result[f"{key}.won_only_by_ours"] = int((ours.result.won & theirs).sum())
            result[f"{key}.won_only_by_autoattack"] = int((~ours.result.won & ~theirs).sum())
            result[f"{key}.seconds_ours"], result[f"{key}.seconds_autoattack"] = ours_seconds, theirs_seconds
    save_measures(result, Path(args.out), f"bench_suite_{args.checkpoint.stem}{'_' + args.purifier if args.purifier else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
