"""Stage ``whitebox`` (``threat=whitebox``): the adaptive suite on every target of a run (Tables 3-4).

The stage is a driver of ``gcd_lightning.evaluate``: it builds the run's targets and evaluates each with the suite
``threat.suite`` (``whitebox.suite``: a cascade of step-size-free attacks, each image judged by the target's real
decision), on the first ``threat.n_test`` images of the grey-box test set, at the row's budget (an L∞ attack's ε;
``threat.l2_eps`` for an L2 attack), targeted at the grey-box targets on a targeted row:

* ``nodet``: ``f`` alone (NoDET of Table 3), evaluated first at every budget: a target that guards ``f`` with
  detectors does not attack the images ``f`` alone resists there (a win must fool ``f``; ``run_suite``'s ``f_resists``);
* ``det_<name>``: ``f`` guarded by one detector of the defense (GCD: ``det_org``, ``det_is``), or by one baseline
  (``baseline=[...]``); a baseline that is not differentiable is attacked through its ``surrogate()`` (BPDA/EOT)
  and judged by itself;
* ``gcd``: ``f`` guarded by the defense's detection (eq. 10-11; Table 3's "Our");
* ``bpda_eot``: GCD end to end, its rectifier included, under ``threat.rand_suite`` (EOT through its random masks,
  any ``Rectifier`` through ``expected_probabilities``), won where its answer is fooled in most draws;
* ``rec_<name>``: Table 5's defended classifiers of ``threat.rectifier_baselines`` that the run builds
  (``rectifier_baseline=[...]``), a purifier passed with BPDA + EOT, judged under one fixed draw of its randomness.

Each evaluation is cached (``cache/whitebox``) by what it depends on. After them, on their results:

* GCD at each fixed budget of ``threat.robustness``: an image counts as won at a budget when any of GCD's
  evaluations won it inside that ball, so robust accuracy never rises with ε; Tramèr's check at ε/2 against
  published classifiers evaluated there and against the run's own Table 5 classifiers, evaluated there by the suite;
* GCD's checks (``evaluate.run_checks``: silent, incomplete, unbounded, noise, random) and each other target's
  unbounded check;
* GCD end to end over ``threat.judge_draws`` mask draws (seeds no attack uses), the grey-box examples on the same
  images, and a Wilson 95% interval on every rate.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet, outputs, robust_accuracy, stack
from gcd_lightning.attacks import Norm
from gcd_lightning.cache import Key
from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.baselines.robust_training import Preprocessed
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.evaluate import Evaluation, Evaluations, as_suite, evaluate_target, gcd_fooled, gcd_right, randomized_target
from gcd_lightning.intervals import mean_interval, rate_interval
from gcd_lightning.pipeline.context import CODE_VERSIONS, CONF_DIR, RunContext
from gcd_lightning.reporting.paper import ROBUST_CLASSIFIERS
from gcd_lightning.utils.hashing import spec_hash, state_dict_hash, tensor_hash
from gcd_lightning.whitebox import indicators
from gcd_lightning.whitebox.models import GuardedClassifier, PurifiedClassifier, Seeded
from gcd_lightning.whitebox.objectives import HingeEvasion
from gcd_lightning.whitebox.suite import CLEAN, Suite, Target, guarded_target, in_ball, suite_names

log = logging.getLogger(__name__)

EVALUATIONS = Evaluations()


def check_threat(threat: DictConfig) -> None:
    """Refuse unknown or out-of-range white-box settings (``run`` calls it first, before any training)."""
    for key in ("suite", "rand_suite"):
        try:
            suite = as_suite(threat[key])
        except ValueError as err:
            raise ValueError(f"threat.{key}={threat[key]}: {err}") from None
        if (key == "rand_suite") != bool(suite.eot_samples):
            raise ValueError(f"threat.{key}={threat[key]}: " + ("the randomised GCD needs a suite with eot_samples > 0, e.g. rand"
                             if key == "rand_suite" else f"a suite without eot_samples, one of {suite_names()}"))
    for key in ("n_test", "batch_size", "judge_draws"):
        if int(threat[key]) < 1:
            raise ValueError(f"threat.{key}={threat[key]} must be at least 1")
    if int(threat.donors) < 0:
        raise ValueError(f"threat.donors={threat.donors} must be at least 0 (0: no decision-based fallback)")
    budgets = [threat.l2_eps, *threat.robustness.linf_eps, *threat.robustness.l2_eps]
    if any(not float(b) > 0 for b in budgets) or any(float(b) > 1 for b in threat.robustness.linf_eps):
        raise ValueError(f"threat budgets must be > 0 (L∞ ones at most 1): l2_eps, robustness.linf_eps, robustness.l2_eps = {budgets}")
    unknown = [name for name in threat.rectifier_baselines if not (CONF_DIR / "rectifier_baseline" / f"{name}.yaml").is_file()]
    if unknown:
        known = sorted(p.stem for p in (CONF_DIR / "rectifier_baseline").glob("*.yaml"))
        raise ValueError(f"threat.rectifier_baselines: unknown {unknown}; choose from {known}")


@dataclasses.dataclass
class Attacked:
    """One target of the stage: what the suite attacks (``target``), the detected classifier its checks read
    (``model``), what its cached evaluations depend on beyond the images (``spec``), for a randomised target its
    clean answers (``correct``), and whether it is ``f`` guarded by detectors (``guards_f``: a win must fool ``f``, so
    the images ``f`` alone resists are not attacked, ``run_suite``'s ``f_resists``)."""

    target: Target
    model: nn.Module
    spec: dict
    correct: torch.Tensor | None = None
    guards_f: bool = False


def build_targets(ctx: RunContext, gcd: GCD, ids: Mapping[str, str], baselines: Mapping[str, Detector],
                  table5: Mapping[str, tuple[Preprocessed, str]], rand: Suite, x: torch.Tensor, y: torch.Tensor,
                  targeted: bool) -> dict[str, Attacked]:
    """The run's targets (module docstring), in the report's order; ``rand``: the suite of the random ones (its EOT draws)."""
    cfg, bs = ctx.cfg, int(ctx.cfg.threat.batch_size)
    classifier, num_classes = gcd.classifier, int(cfg.dataset.num_classes)

    def guarded(name: str, detectors: list[nn.Module], spec: dict, attacked: list[nn.Module] | None = None) -> Attacked:
        model = GuardedClassifier(classifier, detectors)
        through = None if attacked is None else GuardedClassifier(classifier, attacked)
        return Attacked(guarded_target(name, model, num_classes, targeted, bs, through), model, spec, guards_f=bool(detectors))

    found = {"nodet": guarded("nodet", [], {})}
    found |= {f"det_{d.name}": guarded(f"det_{d.name}", [d], {"detectors": ids["detectors"], "detector": d.name}) for d in gcd.detectors}
    found["gcd"] = guarded("gcd", list(gcd.detectors), {"detectors": ids["detectors"]})
    if gcd.rectifier is not None:
        found["bpda_eot"] = Attacked(randomized_target(gcd, rand, num_classes, targeted, bs), found["gcd"].model,
                                     {"detectors": ids["detectors"], "rectifier": ids["rectifier"],
                                      "gcd": [cfg.rectifier.alpha, cfg.rectifier.p]},
                                     correct=gcd_right(gcd, x, y, bs))
    for name, detector in baselines.items():
        stand_in = detector if detector.differentiable else detector.surrogate()
        if stand_in is None:
            log.warning("white-box: baseline %s is not differentiable and has no surrogate; it is left out", name)
            continue
        spec = {"baseline": [state_dict_hash(detector), OmegaConf.to_container(cfg.baseline[name], resolve=True)],
                **({} if detector.differentiable else {"surrogate": type(stand_in).__name__})}
        found[f"det_{name}"] = guarded(f"det_{name}", [detector], spec, None if detector.differentiable else [stand_in])
    for name, (defense, identity) in table5.items():
        found[f"rec_{name}"] = defended_target(f"rec_{name}", defense, identity, num_classes, targeted, bs,
                                               rand.eot_samples)
    return found


def defended_target(name: str, defense: Preprocessed, identity: str, num_classes: int, targeted: bool, batch_size: int,
                    eot_samples: int) -> Attacked:
    """A Table 5 defended classifier: its network attacked directly, or through its purifier with BPDA + EOT
    (``PurifiedClassifier``); judged by the defended classifier under one fixed draw of its randomness (``Seeded``)."""
    judged = GuardedClassifier(Seeded(defense, indicators.JUDGE_SEED), [])
    if defense.preprocess is None:
        return Attacked(guarded_target(name, judged, num_classes, targeted, batch_size), judged, {"rectifier_baseline": identity})
    attacked = GuardedClassifier(PurifiedClassifier(defense, eot_samples), [])
    return Attacked(guarded_target(name, judged, num_classes, targeted, batch_size, attacked, random=True), judged,
                    {"rectifier_baseline": identity, "eot": eot_samples})


def run_whitebox_stage(
    ctx: RunContext,
    gcd: GCD,
    classifier_id: str,
    rectifier_id: str,
    detectors_id: str,
    adv_test: AdversarialSet,
    baselines: dict[str, Detector] | None = None,
    defended: dict[str, tuple[Preprocessed, str]] | None = None,
) -> dict[str, float]:
    """Evaluate every target with the suite, then the checks and budgets on the results; the flat ``whitebox.*`` metrics.

    ``baselines`` (``baseline=[...]``): more detectors, each a target ``det_<name>``. ``defended``
    (``rectifier_baseline=[...]``): Table 5's defended classifiers with their identities; those named in
    ``threat.rectifier_baselines`` are targets ``rec_<name>``.
    """
    cfg, threat = ctx.cfg, ctx.cfg.threat  # checked by run() before any training (check_threat)
    targeted, bs, num_classes = bool(cfg.attack.targeted), int(threat.batch_size), int(cfg.dataset.num_classes)
    n = min(int(threat.n_test), len(adv_test))
    index = adv_test.index[:n]
    x, y = stack(ctx.datamodule.dataset("test"), index)
    goal = adv_test.target[:n] if targeted else None
    labels = goal if targeted else y
    norm = Norm(cfg.attack.norm)
    eps = float(cfg.attack.eps) if norm is Norm.LINF else float(threat.l2_eps)
    val = ctx.datamodule.dataset("val")
    donors = stack(val, torch.arange(min(int(threat.donors), len(val))))[0] if threat.donors else None
    table5 = {name: entry for name, entry in (defended or {}).items() if name in threat.rectifier_baselines}
    if set(defended or {}) - set(table5):
        log.info("white-box: rectifier baselines %s are not attacked (threat.rectifier_baselines=%s)",
                 sorted(set(defended) - set(table5)), list(threat.rectifier_baselines))
    suite, rand = as_suite(threat.suite), as_suite(threat.rand_suite)  # each read once
    targets = build_targets(ctx, gcd, {"detectors": detectors_id, "rectifier": rectifier_id}, baselines or {}, table5, rand, x, y,
                            targeted)
    base_spec = {"version": CODE_VERSIONS["whitebox"], "images": spec_hash({"index": index.tolist(), "labels": labels.tolist()}),
                 "classifier": classifier_id, "seed": int(cfg.seed), "batch_size": bs,
                 "donors": None if donors is None else tensor_hash(donors)}

    @functools.cache  # each evaluation is read from the cache (or built) once per run
    def evaluated(name: str, at: Norm, budget: float) -> Evaluation:
        entry, chosen = targets[name], rand if name == "bpda_eot" else suite
        f_resists = ~evaluated("nodet", at, budget).result.won if entry.guards_f else None  # f alone first, at this budget
        spec = {**base_spec, **entry.spec, "target": name, "suite": dataclasses.asdict(chosen), "norm": at.value, "eps": budget,
                "f_resists": None if f_resists is None else f_resists.nonzero().flatten().tolist()}
        key = Key(f"{cfg.dataset.name}_{cfg.attack.name}_{name}_{chosen.name}_{at.value}{budget:g}", spec)
        return ctx.cache.get_or_build(EVALUATIONS, key, lambda _: evaluate_target(
            entry.target, entry.model, x, y, norm=at, eps=budget, targets=goal, suite=chosen, seed=int(cfg.seed), donors=donors,
            batch_size=bs, progress=bool(cfg.progress), correct=entry.correct, f_resists=f_resists))[0]

    results = {name: evaluated(name, norm, eps) for name in targets}
    metrics: dict[str, float] = {"whitebox.n": float(n), "whitebox.eps": eps, "whitebox.judge_draws": float(threat.judge_draws),
                                 "whitebox.eot_samples": float(rand.eot_samples), f"whitebox.suite.{suite.name}": 1.0,
                                 f"whitebox.norm.{norm.value}": 1.0}
    for name, evaluation in results.items():
        metrics.update(target_metrics(name, evaluation, n))

    guarded = targets["gcd"].model
    draws = int(threat.judge_draws)
    for name in [name for name in ("gcd", "bpda_eot") if name in results]:  # GCD end to end, over draws of its masks
        fooled = gcd_fooled(gcd, results[name].result.x_adv, labels, targeted, bs, draws)
        key = f"whitebox.success.{name}_end_to_end"
        metrics[key], metrics[f"{key}_ci.low"], metrics[f"{key}_ci.high"] = mean_interval(fooled.mean(dim=0))
        metrics[f"{key}_draws.min"], metrics[f"{key}_draws.max"] = fooled.mean(1).min().item(), fooled.mean(1).max().item()
    if "bpda_eot" in results:
        metrics["whitebox.success.bpda_eot_evades"] = targets["gcd"].target.judge(results["bpda_eot"].result.x_adv, labels).float().mean().item()
    grey = adv_test.x_adv[:n]
    metrics["whitebox.greybox.success.gcd"] = targets["gcd"].target.judge(grey, labels).float().mean().item()
    metrics["whitebox.greybox.success.end_to_end"] = gcd_fooled(gcd, grey, labels, targeted, bs, draws).mean().item()
    hinge = HingeEvasion(num_classes, 1.0, 1.0, targeted, "sum")
    clean_outputs = outputs(guarded, x, bs)
    for point, out in (("clean", clean_outputs), ("adv", outputs(guarded, results["gcd"].result.x_adv, bs))):
        metrics[f"whitebox.loss.gcd.{point}"] = hinge.total_loss(out, labels).mean().item()
    metrics["whitebox.flagged_clean.gcd"] = results["gcd"].flagged.float().mean().item()
    for check in results["gcd"].checks:
        if check.name != "tramer":  # Tramèr's check runs at each fixed budget (fixed_budget_robustness)
            metrics[f"whitebox.indicator.{check.name}"], metrics[f"whitebox.indicator.{check.name}.failed"] = check.value, float(check.failed)
    suspect, device = grey[: min(len(grey), bs)], next(gcd.parameters()).device  # grey-box examples: most go through the masks

    def answers(draw: int) -> torch.Tensor:  # GCD's outputs end to end under one draw of its masks
        return distributed.map_batches(lambda _, rows: gcd(suspect[rows].to(device)).detach().cpu(), len(suspect), bs,
                                       indicators.JUDGE_SEED + draw * indicators.JUDGE_STRIDE)

    metrics["whitebox.indicator.random_end_to_end"] = float(not torch.equal(answers(0), answers(1)))

    for name in table5:  # Table 5's cells under white-box attack, beside their clean accuracy
        metrics[f"whitebox.rectifier_baseline.{name}.acc.clean"] = results[f"rec_{name}"].correct.double().mean().item()
        judged = outputs(targets[f"rec_{name}"].model, results[f"rec_{name}"].result.x_adv, bs).argmax(dim=1)
        metrics[f"whitebox.rectifier_baseline.{name}.acc.adv"] = (judged == y).double().mean().item()

    budgets = [(at, float(b)) for at, bs_ in ((Norm.LINF, threat.robustness.linf_eps), (Norm.L2, threat.robustness.l2_eps))
               for b in sorted(bs_)]
    if budgets:
        gcd_results = [results["gcd"]] + [evaluated("gcd", at, b) for at, b in budgets
                                          if not (at is norm and abs(b - eps) < 1e-12)]
        references = {(at, b): [(f"{name} classifier, this run's suite", b / 2, evaluated(f"rec_{name}", at, b / 2)
                                 .robust.float().mean().item()) for name in table5] for at, b in budgets}
        f_alone = {(at, b): evaluated("nodet", at, b).robust.double().mean().item() for at, b in budgets}
        metrics.update(fixed_budget_robustness(cfg.dataset.name, budgets, gcd_results, references, adv_test, f_alone))
    return metrics


def target_metrics(name: str, evaluation: Evaluation, n: int) -> dict[str, float]:
    """One target's figures: success with its interval, the cascade's log (the images each attack that ran won that no
    earlier one did, and the attacks' order), distances, cost, and the unbounded check."""
    result = evaluation.result
    rate, low, high = rate_interval(result.won)
    attacked = result.won & (result.by >= 0)
    metrics = {f"whitebox.success.{name}": rate, f"whitebox.success_ci.{name}.low": low, f"whitebox.success_ci.{name}.high": high,
               f"whitebox.l2_median.{name}": result.l2[attacked].median().item() if attacked.any() else float("nan"),
               f"whitebox.linf_max.{name}": result.linf.max().item(),
               f"whitebox.seconds_per_image.{name}": result.seconds / n,
               f"whitebox.won_clean.{name}": (result.by == CLEAN).float().mean().item(),
               f"whitebox.f_resists.{name}": result.f_resists.float().mean().item()}
    for i, record in enumerate(result.log):  # an attack that was skipped (every image won, or its conditions unmet) is left out
        metrics[f"whitebox.attack_order.{record.name}"] = float(i)
        if not record.note:
            metrics[f"whitebox.won_by.{name}.{record.name}"] = record.won / n
    if name != "gcd":  # GCD's is one of its indicators (whitebox.indicator.*)
        metrics[f"whitebox.target_indicator.{name}.unbounded"] = result.unbounded
        metrics[f"whitebox.target_indicator.{name}.unbounded.failed"] = float(result.unbounded < indicators.UNBOUNDED_MIN)
    return metrics


def fixed_budget_robustness(dataset: str, budgets: list[tuple[Norm, float]], gcd_results: list[Evaluation],
                            references: Mapping[tuple[Norm, float], list[tuple[str, float, float]]],
                            adv_test: AdversarialSet, f_alone: Mapping[tuple[Norm, float], float]) -> dict[str, float]:
    """GCD's success and robust accuracy at each fixed budget beside ``f_alone``'s (``f`` undefended, the same suite and
    images: ``robust_acc_f``), and Tramèr's check at ε/2.

    An image counts as won at a budget when any evaluation of GCD (at any budget or norm) won it inside that ball, so
    robust accuracy never rises with ε. Robust accuracy: clean image not flagged and not won, over the attacked images
    (``robust_acc``) and over all test images looked at to find ``adv_test`` (``robust_acc_all``). Tramèr (2022): a
    detector robust at ε implies a classifier robust at ε/2 with the same accuracy; it is compared with the published
    classifiers evaluated at ε/2 (``robust_acc_all``, whole test sets) and with ``references`` (the run's own Table 5
    classifiers evaluated at ε/2 by the suite on the same images: ``robust_acc``). Not plausible: it exceeds either.
    """
    first = gcd_results[0]
    published = ROBUST_CLASSIFIERS.get(dataset, {})
    metrics: dict[str, float] = {}
    for at, budget in budgets:
        won = torch.stack([e.result.won & in_ball(e.result.linf if at is Norm.LINF else e.result.l2, budget)
                           for e in gcd_results]).any(dim=0)
        key = f"whitebox.robust_{at.value}.{budget:.4f}"
        rate, low, high = rate_interval(won)
        robust = (first.correct & ~first.flagged & ~won).double().mean().item()
        robust_all = robust_accuracy(robust, len(adv_test), adv_test.n_examined)
        metrics[f"{key}.success"], metrics[f"{key}.success_ci.low"], metrics[f"{key}.success_ci.high"] = rate, low, high
        metrics[f"{key}.robust_acc"], metrics[f"{key}.robust_acc_all"] = robust, robust_all
        metrics[f"{key}.robust_acc_f"] = f_alone[(at, budget)]
        against_published = indicators.tramer_check(robust_all, budget, published.get(at.value, []))
        against_own = indicators.tramer_check(robust, budget, references.get((at, budget), []))
        verdicts = [c["plausible"] for c in (against_published, against_own) if c["plausible"] == c["plausible"]]
        metrics[f"{key}.tramer.radius"] = against_published["radius"]
        metrics[f"{key}.tramer.reference"] = against_published["reference"]
        metrics[f"{key}.tramer.own_reference"] = against_own["reference"]
        metrics[f"{key}.tramer.plausible"] = min(verdicts) if verdicts else float("nan")
    return metrics
