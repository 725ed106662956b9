"""Stage ``whitebox`` (``threat=whitebox``): adaptive attacks on f, f + DET_IS and the whole GCD (Tables 3-4).

The same attack (``cfg.attack``, its update rule unchanged) runs on the first ``threat.n_test``
images of the grey-box test set against four targets:

* ``nodet``: ``f`` alone (NoDET of Table 3);
* ``det_is``: ``f`` guarded by ``DET_IS`` alone, as an L+1-class classifier;
* ``gcd``: ``f`` guarded by GCD's ensemble, as an L+1-class classifier. Success means the
  detector is evaded and ``f`` is fooled (Table 3's "Our"); the same images are also judged end
  to end (``gcd_end_to_end``: GCD's final answer, ``f_rec`` on a random mask for flagged inputs);
* ``bpda_eot``: the whole randomised GCD with its rectifier (``RandomizedGCD``), judged end to end.

Targeted attacks use the L+1 outputs with their own loss at the target. Untargeted ones use
eq. 14 (weight ``threat.beta``) and the L+1 loss with ``y`` and "adversarial" merged into one
class to leave (both ``DetectorEvasion``); with ``threat.untargeted_loss=both`` (the default)
each image counts the stronger of the two (``strongest``), and ``eq14`` or ``merged`` runs one
alone. Each attack's output is cached like the grey-box sets, per objective, so a β sweep
recomputes only what β changes and switching objectives reuses what was run. Sanity
figures guard against a false sense of security: the attacker's loss before and after the
attack, success against larger budgets, and the grey-box success on the same images for
comparison.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from gcd_lightning.adversarial import AdversarialSet, cached, outputs, perturbation_norms, predict, stack, strongest
from gcd_lightning.attacks import Attack, Norm, run_attack
from gcd_lightning.attacks.objective import PLAIN, Objective
from gcd_lightning.defense.detector import DetectorInput, SubDetector
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.pipeline.evaluate_stage import build_gcd, run_gcd
from gcd_lightning.utils.hashing import spec_hash
from gcd_lightning.whitebox.models import DetectedClassifier, RandomizedGCD
from gcd_lightning.whitebox.objectives import UNTARGETED_LOSSES, DetectorEvasion

log = logging.getLogger(__name__)

# the code's part of the cache key: raise it when a change to this stage changes what an attack computes
# (2: every batch seeded on its own, batches shared by the ranks of a DDP run)
SPEC_VERSION = 2

Judge = Callable[[torch.Tensor], torch.Tensor]
"""Adversarial images -> (N,) bool success."""


def check_threat(threat: DictConfig) -> None:
    """Refuse an unknown ``threat.untargeted_loss`` (``run`` calls it first, before any training)."""
    if threat.untargeted_loss not in (*UNTARGETED_LOSSES, "both"):
        raise ValueError(f"threat.untargeted_loss={threat.untargeted_loss!r} is unknown; choose one of {(*UNTARGETED_LOSSES, 'both')}")


def run_whitebox_stage(
    ctx: RunContext,
    classifier: nn.Module,
    classifier_id: str,
    rectifier: nn.Module,
    rectifier_id: str,
    detectors: dict[DetectorInput, SubDetector],
    detectors_id: str,
    adv_test: AdversarialSet,
) -> dict[str, float]:
    """Attack every target, judge every result; returns the flat ``whitebox.*`` metrics."""
    cfg, threat = ctx.cfg, ctx.cfg.threat
    num_classes, targeted, bs, seed = cfg.dataset.num_classes, bool(cfg.attack.targeted), threat.batch_size, cfg.seed
    n = min(int(threat.n_test), len(adv_test))
    index = adv_test.index[:n]
    x, y = stack(ctx.datamodule.dataset("test"), index)
    target = adv_test.target[:n] if targeted else None
    labels = target if targeted else y

    det_org, det_is = detectors[DetectorInput.PIXELS], detectors[DetectorInput.SENSITIVITY]
    gcd = build_gcd(ctx, classifier, rectifier, detectors)
    with_det_is = DetectedClassifier(classifier, [det_is])
    with_gcd = DetectedClassifier(classifier, [det_org, det_is])
    randomized = RandomizedGCD(gcd, threat.eot_samples)
    # the detector-evasion objectives: one for targeted attacks, eq. 14 and / or the merged loss for untargeted ones
    check_threat(threat)
    losses = [None] if targeted else (list(UNTARGETED_LOSSES) if threat.untargeted_loss == "both" else [threat.untargeted_loss])
    evasions = {loss: DetectorEvasion(num_classes, threat.beta, targeted, loss or "eq14") for loss in losses}
    evasion = evasions[losses[0]]  # every one judges success alike

    def fooled(pred: torch.Tensor) -> torch.Tensor:
        return pred == labels if targeted else pred != labels

    def evades(model: nn.Module) -> Judge:
        return lambda x_adv: evasion.success(outputs(model, x_adv, bs), labels, targeted)

    judges: dict[str, Judge] = {
        "nodet": lambda x_adv: fooled(predict(classifier, x_adv, bs)),
        "det_is": evades(with_det_is),
        "gcd": evades(with_gcd),
        "end_to_end": lambda x_adv: fooled(run_gcd(gcd, x_adv, bs, seed)["label"]),
    }
    base_spec = {
        "version": SPEC_VERSION,
        "adversarial": spec_hash({"index": index.tolist(), "labels": labels.tolist()}),
        "classifier": classifier_id,
        "attack": cfg.attack,
        "seed": seed,
        "batch_size": bs,
    }
    ids = {"detectors": detectors_id}

    # each detector-evasion objective with what its result depends on: nothing more for targeted attacks, β for eq. 14 only
    evading = {
        loss: (objective, {**ids, "objective": None if loss is None else [loss, threat.beta if loss == "eq14" else None]})
        for loss, objective in evasions.items()
    }
    # target -> its model and, per objective (None: the only one), the objective and its part of the cache key
    targets: dict[str, tuple[nn.Module, dict[str | None, tuple[Objective, dict]]]] = {
        "nodet": (classifier, {None: (PLAIN, {})}),
        "det_is": (with_det_is, evading),
        "gcd": (with_gcd, evading),
        "bpda_eot": (
            randomized,
            {None: (PLAIN, {**ids, "rectifier": rectifier_id, "eot": threat.eot_samples,
                            "gcd": [cfg.rectifier.alpha, cfg.rectifier.p]})},
        ),
    }
    main_judge = {"nodet": "nodet", "det_is": "det_is", "gcd": "gcd", "bpda_eot": "end_to_end"}

    def attack_on(name: str, scale: float = 1.0) -> dict[str | None, AdversarialSet]:
        """The target's attack with each of its objectives, each cached on its own."""
        model, variants = targets[name]
        sets = {}
        for loss, (objective, extra) in variants.items():
            spec = {**base_spec, **extra, "target": name, "scale": scale}
            path = ctx.cache_dir / "whitebox" / f"{cfg.dataset.name}_{cfg.attack.name}_{name}_{spec_hash(spec)}.pt"
            desc = f"{name}{'' if loss is None else ' ' + loss} x{scale:g}"
            sets[loss] = cached(path, spec, lambda: build(model, objective, main_judge[name], scale, desc))[0]
        return sets

    def build(model: nn.Module, objective: Objective, judge: str, scale: float, desc: str) -> AdversarialSet:
        attack = make_attack(ctx, model, objective, scale)
        start = time.perf_counter()
        x_adv = run_attack(attack, x, y, target, batch_size=bs, progress=cfg.progress, desc=f"white-box {desc}", seed=seed)
        seconds = time.perf_counter() - start
        l2, linf = perturbation_norms(x, x_adv)
        return AdversarialSet(
            index=index, x_adv=x_adv, y=y, target=adv_test.target[:n], success=judges[judge](x_adv),
            l2=l2, linf=linf, n_examined=n, seconds=seconds,
        )

    metrics: dict[str, float] = {
        "whitebox.n": float(n),
        "whitebox.beta": float(threat.beta),
        **{f"whitebox.objective.{loss}": float(loss in losses) for loss in UNTARGETED_LOSSES},
        "whitebox.eot_samples": float(threat.eot_samples),
    }
    by_objective = {name: attack_on(name) for name in targets}
    results = {name: strongest(list(sets.values())) for name, sets in by_objective.items()}
    for name, sets in by_objective.items():
        if len(sets) > 1:
            metrics.update({f"whitebox.success.{name}_{loss}": adv.success.float().mean().item() for loss, adv in sets.items()})
    for name, adv in results.items():
        won = adv.success
        metrics[f"whitebox.success.{name}"] = won.float().mean().item()
        metrics[f"whitebox.l2_median.{name}"] = adv.l2[won].median().item() if won.any() else float("nan")
        metrics[f"whitebox.linf_max.{name}"] = adv.linf.max().item()
        metrics[f"whitebox.seconds_per_image.{name}"] = adv.seconds / n
    metrics["whitebox.success.gcd_end_to_end"] = judges["end_to_end"](results["gcd"].x_adv).float().mean().item()
    metrics["whitebox.success.bpda_eot_evades"] = judges["gcd"](results["bpda_eot"].x_adv).float().mean().item()

    grey = adv_test.x_adv[:n]
    metrics["whitebox.greybox.success.gcd"] = judges["gcd"](grey).float().mean().item()
    metrics["whitebox.greybox.success.end_to_end"] = judges["end_to_end"](grey).float().mean().item()
    for loss, adv in by_objective["gcd"].items():  # each objective's own loss, before and after its attack
        key = "whitebox.loss.gcd" if loss == losses[0] else f"whitebox.loss.gcd_{loss}"
        for point, images in (("clean", x), ("adv", adv.x_adv)):
            metrics[f"{key}.{point}"] = evasions[loss].loss(outputs(with_gcd, images, bs), labels).mean().item()

    if cfg.attack.norm == Norm.LINF.value:
        for scale in sorted({1.0, *threat.linf_budget_scales}):
            adv = strongest(list(attack_on("gcd", float(scale)).values()))
            metrics[f"whitebox.budget_linf.gcd.{float(cfg.attack.eps) * scale:.4f}"] = adv.success.float().mean().item()
    else:
        gcd_adv = results["gcd"]
        for budget in threat.l2_budgets:
            within = gcd_adv.success & (gcd_adv.l2 <= budget)
            metrics[f"whitebox.budget_l2.gcd.{float(budget):.4f}"] = within.float().mean().item()
    return metrics


def make_attack(ctx: RunContext, model: nn.Module, objective: Objective, scale: float) -> Attack:
    """The configured attack on ``model`` with ``objective``.

    ``scale`` multiplies an L∞ budget ``eps`` and with it PGD's step size, so that the steps can
    still cross the larger ball (a fixed step would make a larger budget look weaker).
    """
    attack_cfg = ctx.cfg.attack.attack
    overrides: dict = {"model": model.eval(), "objective": objective}
    if scale != 1.0:
        overrides.update({key: float(attack_cfg[key]) * scale for key in ("eps", "eps_iter") if key in attack_cfg})
    return hydra.utils.instantiate(attack_cfg)(**overrides)
