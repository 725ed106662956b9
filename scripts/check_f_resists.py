"""Attack again, without the f-first shortcut, the images a white-box evaluation skipped because ``f`` alone resisted them.

The suite does not attack, on a defense with detectors, the images that ``f`` alone resisted under the same suite and
budget (a win must fool ``f``; ``run_suite``'s ``f_resists``). This checks that claim on a cached evaluation of the
white-box stage: the defense's full cascade (``evaluate(..., f_first=False)``) on exactly those images, at the same
budget and goal. A win here is an image the shortcut cost. Not part of the tests (minutes per row on 2 CPU cores).

Example, after ``make whitebox``::

    python scripts/check_f_resists.py --run outputs/whitebox/mnist_pgd_untargeted --target gcd --norm linf --eps 0.1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gcd_lightning import load_defense
from gcd_lightning.evaluate import Evaluations, defense_parts, evaluate


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a white-box run folder (its config.yaml and defense/)")
    parser.add_argument("--target", default="gcd", help="a target that guards f: gcd or det_<name>")
    parser.add_argument("--norm", required=True, choices=["linf", "l2"])
    parser.add_argument("--eps", required=True, type=float)
    parser.add_argument("--cache", type=Path, default=Path("cache"))
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(args.run / "config.yaml")
    suite = cfg.threat.suite
    pattern = f"{cfg.dataset.name}_{cfg.attack.name}_{args.target}_{suite}_{args.norm}{args.eps:g}_*.pt"
    entries = sorted((args.cache / "whitebox").glob(pattern), key=lambda p: p.stat().st_mtime)
    if not entries:
        parser.error(f"no cached evaluation {args.cache / 'whitebox' / pattern}; run the white-box stage with that budget first")
    evaluation = Evaluations().load(entries[-1])  # the latest
    if evaluation.targeted:
        parser.error("a targeted row: its goals are not in the cached evaluation; check an untargeted row")
    skipped = evaluation.result.f_resists
    x = evaluation.result.x_adv[skipped]  # never attacked: the clean images
    defense = load_defense(args.run / "defense")
    if args.target != "gcd":
        defense = (defense.classifier, [d for d in defense.detectors if f"det_{d.name}" == args.target])
    classifier, _, _ = defense_parts(defense)
    with torch.no_grad():
        labels = classifier(x).argmax(dim=1)  # f is right on every one of them (else the clean image was won)
    again = evaluate(defense, x, labels, norm=args.norm, eps=args.eps, suite=suite, seed=int(cfg.seed), f_first=False)
    summary = {"entry": entries[-1].name, "skipped": int(skipped.sum()), "won_without_shortcut": int(again.result.won.sum()),
               "seconds": again.result.seconds,
               "cascade": [(r.name, r.attacked, r.won) for r in again.result.log if not r.note]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
