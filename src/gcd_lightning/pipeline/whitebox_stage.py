"""Stage ``whitebox`` (``threat=whitebox``): adaptive attacks on f, each detector and the whole GCD (Tables 3-4).

The first ``threat.n_test`` images of the grey-box test set are attacked against five targets:

* ``nodet``: ``f`` alone (NoDET of Table 3), the configured attack and ``AdaptivePGD`` on ``f``'s
  hinge, so that NoDET faces attacks as strong as the detected targets do;
* ``det_<name>`` for each detector of the defense (GCD: ``det_org``, ``det_is``) and each baseline: ``f``
  guarded by that detector alone (a baseline that is not differentiable, ``DET_TWS``, is attacked
  through its differentiable ``surrogate()``, BPDA/EOT, and judged by itself);
* ``gcd``: ``f`` guarded by the defense's detection (GCD's ensemble, eq. 10-11). Success: ``f`` fooled
  and the input not flagged (Table 3's "Our");
* ``bpda_eot``: the whole randomised GCD with its rectifier (``RandomizedGCD``), judged end to end;
* ``rec_<name>`` for each Table 5 baseline of ``threat.rectifier_baselines`` that the run builds
  (``rectifier_baseline=[...]``): the defended classifier, attacked like NoDET, through BPDA + EOT where a
  purifier (TVM, PixelDefend) stands in front of it (``PurifiedClassifier``), judged by itself.

Each detector target is attacked by several attacks ("variants"), and each image counts the
strongest result (``strongest``), judged by the real decision rule:

* ``l1_*``: the configured attack on the L+1-class view (C&W 2017a): targeted at the target,
  untargeted on eq. 14 and / or the merged loss (``threat.untargeted_loss``). These were the
  stage's only attacks before the adaptive evaluation, and are reported apart as "previous";
* ``hinge_b<β>``: the configured attack on ``HingeEvasion`` (hinges on ``f``'s margin and on
  every detector's logit gap, confidence κ), once per β of ``threat.adaptive.betas``;
* ``orthogonal`` / ``selective`` / ``joint``: ``AdaptivePGD`` (Bryniarski et al. 2022) at the
  attack's norm and budget (L2 attacks: ``threat.adaptive.l2_eps``), best iterate, restarts;
* ``<mode>_nonzero``: ``AdaptivePGD`` on the input's non-zero pixels only (``threat.adaptive.support_modes``;
  MNIST's strokes), which a density detector (``DET_PD``) does not price as it prices a dense change;
  left out where no attacked image has a zero pixel (there it is the ordinary attack);
* ``<mode>_adam``: ``AdaptivePGD`` with C&W's optimiser in the ball (``update="adam"``, ``threat.adaptive.adam_modes``):
  Adam through a smooth map into the ball with a sticky box, so it picks a sparse support of its own;
* ``surrogate``: orthogonal PGD with the backward pass of ``DET_IS`` (``DET_sal``) through a softplus copy of ``f``
  (``threat.adaptive.surrogate_beta``; BPDA), beside the exact double backprop;
* ``blend``: ``BlendSearch``, decision-based, no gradient: bisection toward the nearest validation images
  (``threat.adaptive.blend``) that the real target classifies as wanted and does not flag;
* ``boundary``: ``HopSkipJump`` from ``BlendSearch``'s unbounded wins (``threat.adaptive.boundary``), decision-based,
  on a target whose gradient attacks fail the unbounded check below (there a gradient may mislead; a walk along
  the real decision boundary does not; ``targets: all`` on every detector target), unbounded, then cut at the budget.

The hinge and PGD variants run once per detector term of ``threat.adaptive.detector_terms``
(``detector_hinge``): ``each`` (no suffix) and ``sum`` (suffix ``_sum``, eq. 11's own boundary).
On a target with one detector both terms are the same loss, attacked once as ``each``.

Around them: the unbounded check on every detector target (gradient attacks at L∞ ε = 1), with
``BlendSearch`` at L∞ ε = 1 beside it (how far toward an accepted image of another class a win lies),
fixed-budget robustness of GCD (success and robust accuracy at each L∞ and L2 ε of
``threat.robustness``, Tramèr's check), indicators of attack failure (Pintor et al. 2022), GCD
end to end over ``threat.judge_draws`` mask draws with seeds disjoint from the attacks', and a
Wilson 95% interval on every success rate. Each attack's output is cached like the grey-box sets
(``cache/whitebox``), keyed by what it depends on, so a sweep recomputes only what changed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet, Sets, outputs, perturbation_norms, predict, robust_accuracy, stack, strongest
from gcd_lightning.attacks import Attack, Norm, run_attack
from gcd_lightning.attacks.objective import PLAIN, Objective
from gcd_lightning.cache import Key
from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.baselines.robust_training import Preprocessed
from gcd_lightning.defense.detector import DetectorInput, SubDetector
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.intervals import mean_interval, rate_interval
from gcd_lightning.reporting.paper import ROBUST_CLASSIFIERS
from gcd_lightning.pipeline.context import CODE_VERSIONS, CONF_DIR, RunContext
from gcd_lightning.pipeline.components import run_gcd
from gcd_lightning.utils.hashing import spec_hash, state_dict_hash, tensor_hash
from gcd_lightning.whitebox import indicators
from gcd_lightning.whitebox.blend import BlendSearch
from gcd_lightning.whitebox.hopskipjump import HopSkipJump
from gcd_lightning.whitebox.models import DetectedClassifier, GuardedClassifier, PurifiedClassifier, RandomizedGCD
from gcd_lightning.whitebox.objectives import DETECTOR_TERMS, UNTARGETED_LOSSES, DetectorEvasion, HingeEvasion, ensemble_flags
from gcd_lightning.whitebox.opgd import MODES, AdaptivePGD, run_adaptive
from gcd_lightning.whitebox.suite import UNBOUNDED_LINF, decision_checks, in_ball
from gcd_lightning.whitebox.surrogate import SurrogateGradient

log = logging.getLogger(__name__)

JUDGE_SEED, JUDGE_STRIDE = indicators.JUDGE_SEED, indicators.JUDGE_STRIDE  # end-to-end judging: seeds no attack uses
WALK_TARGETS = ("failed", "all")  # threat.adaptive.boundary.targets: where the gradient attacks fail the unbounded check, or every detector target

WHITEBOX_SETS = Sets("whitebox", "white-box result")
Judge = Callable[[torch.Tensor], torch.Tensor]
"""Adversarial images -> (N,) bool success."""


def check_threat(threat: DictConfig) -> None:
    """Refuse unknown or out-of-range white-box settings (``run`` calls it first, before any training)."""
    if threat.untargeted_loss not in (*UNTARGETED_LOSSES, "both"):
        raise ValueError(f"threat.untargeted_loss={threat.untargeted_loss!r} is unknown; choose one of {(*UNTARGETED_LOSSES, 'both')}")
    adaptive = threat.adaptive
    terms = list(adaptive.detector_terms)
    if not terms or len(set(terms)) < len(terms) or any(term not in DETECTOR_TERMS for term in terms):
        raise ValueError(f"threat.adaptive.detector_terms={terms} must list distinct terms from {DETECTOR_TERMS}, "
                         "e.g. [each, sum]")
    for key, modes in (("adaptive.modes", adaptive.modes), ("adaptive.support_modes", adaptive.support_modes),
                       ("adaptive.adam_modes", adaptive.adam_modes), ("robustness.modes", threat.robustness.modes)):
        unknown = [mode for mode in modes if mode not in MODES]
        if unknown:
            raise ValueError(f"threat.{key}: unknown {unknown}; choose from {MODES}")
    for key in ("steps", "restarts", "n_test", "judge_draws"):
        value = adaptive[key] if key in adaptive else threat[key]
        if int(value) < 1:
            raise ValueError(f"threat.{'adaptive.' if key in adaptive else ''}{key}={value} must be at least 1")
    budgets = [adaptive.l2_eps, *threat.robustness.linf_eps, *threat.robustness.l2_eps]
    if any(not float(b) > 0 for b in budgets) or any(float(b) > 1 for b in threat.robustness.linf_eps):
        raise ValueError(f"threat budgets must be > 0 (L∞ ones at most 1): adaptive.l2_eps, robustness.linf_eps, robustness.l2_eps = {budgets}")
    unknown = [name for name in threat.rectifier_baselines if not (CONF_DIR / "rectifier_baseline" / f"{name}.yaml").is_file()]
    if unknown:
        known = sorted(p.stem for p in (CONF_DIR / "rectifier_baseline").glob("*.yaml"))
        raise ValueError(f"threat.rectifier_baselines: unknown {unknown}; choose from {known}")
    if int(adaptive.blend.donors) < 0 or int(adaptive.blend.candidates) < 1 or int(adaptive.blend.steps) < 1:
        raise ValueError(f"threat.adaptive.blend: donors must be >= 0 (0: off), candidates and steps >= 1; got "
                         f"{dict(adaptive.blend)}")
    walk = adaptive.boundary
    if int(walk.iterations) < 0 or not 1 <= int(walk.init_evals) <= int(walk.max_evals) or walk.targets not in WALK_TARGETS:
        raise ValueError("threat.adaptive.boundary: iterations must be >= 0 (0: off), 1 <= init_evals <= max_evals and targets "
                         f"one of {WALK_TARGETS}; got {dict(walk)}")
    if adaptive.kappa < 0 or any(b < 0 for b in adaptive.betas) or (adaptive.surrogate_beta is not None and adaptive.surrogate_beta <= 0):
        raise ValueError("threat.adaptive: kappa and betas must be >= 0, surrogate_beta > 0 or null")


def suffixed(name: str, term: str) -> str:
    """A variant's name under detector term ``term``: ``each`` keeps the name, another term is appended."""
    return name if term == "each" else f"{name}_{term}"


def target_terms(terms: list[str], detectors: list[nn.Module]) -> list[str]:
    """The detector terms a target is attacked with: every one of ``terms`` where it has several
    detectors; ``each`` alone where it has at most one (there every term is the same loss)."""
    return list(terms) if len(detectors) > 1 else ["each"]


def reads_sensitivity(detector: nn.Module) -> bool:
    """Whether ``detector`` reads an input gradient of ``f`` (``DET_IS``, ``DET_sal``), whose backward pass
    ``SurrogateGradient`` can smooth."""
    return isinstance(detector, SubDetector) and detector.kind is not DetectorInput.PIXELS


def smoothed(classifier: nn.Module, detectors: list[nn.Module], beta: float | None) -> GuardedClassifier | None:
    """``classifier`` guarded by ``detectors`` with each ``DET_IS`` differentiated through a softplus copy of it
    (``SurrogateGradient``, BPDA); None when ``beta`` is None or no detector reads the sensitivity."""
    if beta is None or not any(map(reads_sensitivity, detectors)):
        return None
    return GuardedClassifier(classifier, [SurrogateGradient(d, beta) if reads_sensitivity(d) else d for d in detectors])


@dataclasses.dataclass
class Variant:
    """One attack on one target: how to build it, what its cached result depends on, who judges it."""

    name: str
    make: Callable[[], Attack]
    spec: dict
    judge: str
    previous: bool = False  # one of the stage's attacks before the adaptive evaluation


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
    """Attack every target with every variant, judge every result; returns the flat ``whitebox.*`` metrics.

    ``baselines`` (``baseline=[...]``): more detectors, each a target ``det_<name>`` of its own
    attacked like ``DET_org`` and ``DET_IS`` (keyed in the cache by its fitted state); one that is not
    differentiable is attacked through its ``surrogate()`` (BPDA/EOT) and judged by itself.
    ``defended`` (``rectifier_baseline=[...]``): Table 5's defended classifiers with their identities; those
    named in ``threat.rectifier_baselines`` are targets ``rec_<name>`` (module docstring).
    """
    cfg, threat = ctx.cfg, ctx.cfg.threat  # checked by run() before any training (check_threat)
    adaptive = threat.adaptive
    num_classes, targeted, bs, seed = cfg.dataset.num_classes, bool(cfg.attack.targeted), threat.batch_size, cfg.seed
    n = min(int(threat.n_test), len(adv_test))
    index = adv_test.index[:n]
    x, y = stack(ctx.datamodule.dataset("test"), index)
    target = adv_test.target[:n] if targeted else None
    labels = target if targeted else y
    norm = Norm(cfg.attack.norm)
    eps = float(cfg.attack.eps) if norm is Norm.LINF else float(adaptive.l2_eps)

    classifier = gcd.classifier
    stand_ins = {name: d if d.differentiable else d.surrogate() for name, d in (baselines or {}).items()}
    for name in [name for name, d in stand_ins.items() if d is None]:
        log.warning("white-box: baseline %s is not differentiable and has no surrogate; it is left out", name)
    baselines = {name: d for name, d in (baselines or {}).items() if stand_ins[name] is not None}
    parts = ({f"det_{d.name}": [d] for d in gcd.detectors} | {f"det_{name}": [d] for name, d in baselines.items()}
             | {"gcd": list(gcd.detectors)})
    stand_in_parts = {f"det_{name}": [stand_ins[name]] for name, d in baselines.items() if not d.differentiable}
    part_ids = {f"det_{name}": {"baseline": [state_dict_hash(d), cfg.baseline[name]],
                                **({} if d.differentiable else {"surrogate": type(stand_ins[name]).__name__})}
                for name, d in baselines.items()}
    guarded = {name: GuardedClassifier(classifier, dets) for name, dets in parts.items()}  # the judges
    attacked_parts = parts | stand_in_parts  # what the attacks reach through: BPDA/EOT where not differentiable
    attacked = guarded | {name: GuardedClassifier(classifier, dets) for name, dets in stand_in_parts.items()}
    judge_objective = HingeEvasion(num_classes, 0.0, 1.0, targeted)

    def fooled(pred: torch.Tensor) -> torch.Tensor:
        return pred == labels if targeted else pred != labels

    def evades(model: nn.Module) -> Judge:
        return lambda x_adv: judge_objective.success(outputs(model, x_adv, bs), labels, targeted)

    def end_to_end(x_adv: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """(draws, N) bool: GCD's final answer is fooled, under ``draws`` draws of its masks (judging seeds)."""
        return torch.stack([fooled(run_gcd(gcd, x_adv, bs, JUDGE_SEED + d * JUDGE_STRIDE)["label"]) for d in range(draws)])

    def judged_labels(model: nn.Module, x_adv: torch.Tensor) -> torch.Tensor:
        """``model``'s labels for ``x_adv``, its randomness (TVM's dropout) drawn from the judging seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(JUDGE_SEED)
            return predict(model, x_adv, bs)

    table5 = {name: entry for name, entry in (defended or {}).items() if name in threat.rectifier_baselines}
    if set(defended or {}) - set(table5):
        log.info("white-box: rectifier baselines %s are not attacked (threat.rectifier_baselines=%s)",
                 sorted(set(defended) - set(table5)), list(threat.rectifier_baselines))
    judges: dict[str, Judge] = {"nodet": lambda x_adv: fooled(predict(classifier, x_adv, bs)),
                                **{name: evades(model) for name, model in guarded.items()},
                                **{f"rec_{name}": (lambda x_adv, d=defense: fooled(judged_labels(d, x_adv)))
                                   for name, (defense, _) in table5.items()},
                                "end_to_end": lambda x_adv: end_to_end(x_adv)[0]}
    base_spec = {
        "version": CODE_VERSIONS["whitebox"],
        "adversarial": spec_hash({"index": index.tolist(), "labels": labels.tolist()}),
        "classifier": classifier_id,
        "seed": seed,
        "batch_size": bs,
        "detectors": detectors_id,
    }

    def configured(model: nn.Module, objective: Objective) -> Callable[[], Attack]:
        return lambda: make_attack(ctx, model, objective)

    terms = list(adaptive.detector_terms)

    def adaptive_pgd(model: nn.Module, mode: str, attack_norm: Norm, budget: float, term: str, support: str = "all",
                     update: str = "steepest") -> Callable[[], Attack]:
        objective = HingeEvasion(num_classes, adaptive.kappa, 1.0, targeted, term)
        return lambda: AdaptivePGD(model, objective, attack_norm.value, budget, adaptive.steps, adaptive.step_size,
                                   adaptive.restarts, mode, targeted, support, update)

    def pgd_spec(term: str) -> dict:
        return {"kappa": adaptive.kappa, "detector_term": term, **{key: adaptive[key] for key in ("steps", "step_size", "restarts")}}

    def pgd_variant(label: str, target_name: str, mode: str, attack_norm: Norm, budget: float, term: str, support: str = "all",
                    surrogate: bool = False, update: str = "steepest") -> Variant:
        """``AdaptivePGD`` on ``target_name`` (through its ``surrogates`` copy with ``surrogate``), named and keyed:
        ``label`` with ``_nonzero`` for the non-zero support, ``_adam`` for Adam's update, and the term's suffix."""
        model = surrogates[target_name] if surrogate else attacked[target_name]
        spec = {"pgd": [mode, attack_norm.value, budget, pgd_spec(term)], **({} if support == "all" else {"support": support}),
                **({"surrogate": adaptive.surrogate_beta} if surrogate else {}), **({} if update == "steepest" else {"update": update})}
        name = label + ("" if support == "all" else f"_{support}") + ("" if update == "steepest" else f"_{update}")
        return Variant(suffixed(name, term), adaptive_pgd(model, mode, attack_norm, budget, term, support, update), spec, target_name)
    losses = [None] if targeted else (list(UNTARGETED_LOSSES) if threat.untargeted_loss == "both" else [threat.untargeted_loss])

    surrogates = {name: smoothed(classifier, dets, adaptive.surrogate_beta) for name, dets in parts.items()}
    val = ctx.datamodule.dataset("val")
    donors = stack(val, torch.arange(min(int(adaptive.blend.donors), len(val))))[0] if adaptive.blend.donors else None
    blend_key = None if donors is None else [tensor_hash(donors), adaptive.blend.candidates, adaptive.blend.steps]

    def blend_variant(label: str, target_name: str, attack_norm: Norm, budget: float) -> Variant:
        """``BlendSearch`` on the real target (the judge's model and decision), named ``label``."""
        return Variant(label, lambda: BlendSearch(guarded[target_name], judge_objective, donors, attack_norm.value, budget,
                                                  adaptive.blend.candidates, adaptive.blend.steps, targeted),
                       {"blend": [attack_norm.value, budget, blend_key]}, target_name)

    def boundary_variant(target_name: str) -> Variant:
        """``HopSkipJump`` on the real target in the row's norm, unbounded, from ``BlendSearch``'s wins at L∞ ε = 1."""
        walk = adaptive.boundary
        return Variant("unbounded_boundary",
                       lambda: HopSkipJump(BlendSearch(guarded[target_name], judge_objective, donors, Norm.LINF.value, UNBOUNDED_LINF,
                                                       adaptive.blend.candidates, adaptive.blend.steps, targeted),
                                           norm.value, walk.iterations, walk.init_evals, walk.max_evals),
                       {"boundary": [norm.value, blend_key, walk.iterations, walk.init_evals, walk.max_evals]}, target_name)
    support_modes = list(adaptive.support_modes) if bool((x == 0).any()) else []
    if adaptive.support_modes and not support_modes:
        log.info("white-box: no attacked image has a zero pixel; the non-zero-support variants would repeat the others and are left out")

    def detector_variants(name: str) -> list[Variant]:
        model = attacked[name]
        found = [
            Variant(f"l1_{loss or 'target'}", configured(DetectedClassifier(classifier, attacked_parts[name]),
                                                          DetectorEvasion(num_classes, threat.beta, targeted, loss or "eq14")),
                    {"attack": cfg.attack, "objective": None if loss is None else [loss, threat.beta if loss == "eq14" else None]},
                    name, previous=True)
            for loss in losses
        ]
        for term in target_terms(terms, parts[name]):
            found += [
                Variant(suffixed(f"hinge_b{beta:g}", term), configured(model, HingeEvasion(num_classes, adaptive.kappa, beta, targeted, term)),
                        {"attack": cfg.attack, "hinge": [adaptive.kappa, beta, term]}, name)
                for beta in adaptive.betas
            ]
            found += [pgd_variant(mode, name, mode, norm, eps, term) for mode in adaptive.modes]
            found += [pgd_variant(mode, name, mode, norm, eps, term, "nonzero") for mode in support_modes]
            found += [pgd_variant(mode, name, mode, norm, eps, term, update="adam") for mode in adaptive.adam_modes]
            if surrogates[name] is not None:
                found.append(pgd_variant("surrogate", name, "orthogonal", norm, eps, term, surrogate=True))
        return found + ([] if donors is None else [blend_variant("blend", name, norm, eps)])

    def undetected_variants(target_name: str, model: nn.Module, key: dict, previous: bool = False) -> list[Variant]:
        """NoDET's two attacks on a classifier without a detector: the configured attack (``previous``: one of the
        stage's earlier attacks) and joint PGD on its hinge; ``key`` adds to their cache keys."""
        return [Variant("plain", configured(model, PLAIN), {"attack": cfg.attack, **key}, target_name, previous=previous),
                Variant("joint", adaptive_pgd(GuardedClassifier(model, []), "joint", norm, eps, "each"),
                        {"pgd": ["joint", norm.value, eps, pgd_spec("each")], **key}, target_name)]

    def rectifier_baseline_variants(name: str, defense: Preprocessed, identity: str) -> list[Variant]:
        """NoDET's attacks on a Table 5 baseline: on its network, or with BPDA + EOT through its purifier."""
        if defense.preprocess is None:
            return undetected_variants(f"rec_{name}", defense.network, {"rectifier_baseline": identity})
        return undetected_variants(f"rec_{name}", PurifiedClassifier(defense, threat.eot_samples),
                                   {"rectifier_baseline": identity, "eot": threat.eot_samples})

    variants: dict[str, list[Variant]] = {
        "nodet": undetected_variants("nodet", classifier, {}, previous=True),
        **{f"rec_{name}": rectifier_baseline_variants(name, defense, identity) for name, (defense, identity) in table5.items()},
        **{name: detector_variants(name) for name in parts},
        "bpda_eot": [Variant("bpda_eot", configured(RandomizedGCD(gcd, threat.eot_samples), PLAIN),
                             {"attack": cfg.attack, "rectifier": rectifier_id, "eot": threat.eot_samples,
                              "gcd": [cfg.rectifier.alpha, cfg.rectifier.p]}, "end_to_end", previous=True)],
    }

    def run_variant(target_name: str, variant: Variant) -> AdversarialSet:
        spec = {**base_spec, **variant.spec, "target": target_name, "variant": variant.name, "cw": cw_budget(ctx),
                **part_ids.get(target_name, {})}
        key = Key(f"{cfg.dataset.name}_{cfg.attack.name}_{target_name}_{variant.name}", spec)
        return ctx.cache.get_or_build(WHITEBOX_SETS, key, lambda _: build(variant, f"{target_name} {variant.name}"))[0]

    def build(variant: Variant, desc: str) -> AdversarialSet:
        attack = variant.make()
        start = time.perf_counter()
        extras: dict[str, torch.Tensor] = {}
        if isinstance(attack, AdaptivePGD):
            result = run_adaptive(attack, x, y, target, bs, seed, cfg.progress, f"white-box {desc}")
            x_adv, extras = result.pop("x_adv"), result
        else:
            x_adv = run_attack(attack, x, y, target, batch_size=bs, progress=cfg.progress, desc=f"white-box {desc}", seed=seed)
        seconds = time.perf_counter() - start
        l2, linf = perturbation_norms(x, x_adv)
        return AdversarialSet(index=index, x_adv=x_adv, y=y, target=adv_test.target[:n], success=judges[variant.judge](x_adv),
                              l2=l2, linf=linf, n_examined=n, seconds=seconds, extras=extras)

    metrics: dict[str, float] = {
        "whitebox.n": float(n),
        "whitebox.beta": float(threat.beta),
        **{f"whitebox.objective.{loss}": float(loss in losses) for loss in UNTARGETED_LOSSES},
        "whitebox.eot_samples": float(threat.eot_samples),
        "whitebox.adaptive.eps": eps,
        "whitebox.adaptive.kappa": float(adaptive.kappa),
        "whitebox.adaptive.steps": float(adaptive.steps),
        "whitebox.adaptive.restarts": float(adaptive.restarts),
        **{f"whitebox.adaptive.term.{term}": float(term in terms) for term in DETECTOR_TERMS},
        "whitebox.judge_draws": float(threat.judge_draws),
    }

    def reaches(name: str, term: str) -> list[Variant]:
        """The unbounded check's attacks on ``name``, in turn (where the stage has them): orthogonal PGD on every pixel,
        on the non-zero support, Adam's update in the first of ``adam_modes``, through the surrogate."""
        supports = ["all", "nonzero"] if support_modes else ["all"]
        found = [pgd_variant("unbounded", name, "orthogonal", Norm.LINF, UNBOUNDED_LINF, term, support) for support in supports]
        found += [pgd_variant("unbounded", name, mode, Norm.LINF, UNBOUNDED_LINF, term, update="adam") for mode in adaptive.adam_modes[:1]]
        return found + ([] if surrogates[name] is None else
                        [pgd_variant("unbounded_surrogate", name, "orthogonal", Norm.LINF, UNBOUNDED_LINF, term, surrogate=True)])

    unbounded = {name: unbounded_success(run_variant(name, v) for v in reaches(name, target_terms(terms, dets)[0]))
                 for name, dets in parts.items()}
    # where the gradient attacks fail the unbounded check (or everywhere), the walk along the real decision joins the attacks
    walking = donors is not None and adaptive.boundary.iterations > 0
    walks = {name: run_variant(name, boundary_variant(name)) for name, rate in unbounded.items()
             if walking and (adaptive.boundary.targets == "all" or rate < indicators.UNBOUNDED_MIN)}
    by_variant = {name: {v.name: run_variant(name, v) for v in found} for name, found in variants.items()}
    for name, walk in walks.items():
        by_variant[name]["boundary"] = within_budget(walk, x, norm, eps)
    results = {name: strongest(list(sets.values())) for name, sets in by_variant.items()}
    for name, sets in by_variant.items():
        previous = {v.name for v in variants[name] if v.previous}
        for variant_name, adv in sets.items():
            metrics[f"whitebox.variant.{name}.{variant_name}"] = adv.success.float().mean().item()
            metrics[f"whitebox.variant_seconds.{name}.{variant_name}"] = adv.seconds / n
        for group, keep in (("previous", True), ("new", False)):
            chosen = [adv for variant_name, adv in sets.items() if (variant_name in previous) is keep]
            if chosen and len(chosen) < len(sets):
                metrics[f"whitebox.success_{group}.{name}"] = strongest(chosen).success.float().mean().item()
    for name, adv in results.items():
        won = adv.success
        rate, low, high = rate_interval(won)
        metrics[f"whitebox.success.{name}"] = rate
        metrics[f"whitebox.success_ci.{name}.low"], metrics[f"whitebox.success_ci.{name}.high"] = low, high
        metrics[f"whitebox.l2_median.{name}"] = adv.l2[won].median().item() if won.any() else float("nan")
        metrics[f"whitebox.linf_max.{name}"] = adv.linf.max().item()
        metrics[f"whitebox.seconds_per_image.{name}"] = adv.seconds / n

    for name, (defense, _) in table5.items():  # Table 5's cells under white-box attack, beside their clean accuracy
        metrics[f"whitebox.rectifier_baseline.{name}.acc.clean"] = (judged_labels(defense, x) == y).double().mean().item()
        metrics[f"whitebox.rectifier_baseline.{name}.acc.adv"] = (judged_labels(defense, results[f"rec_{name}"].x_adv) == y).double().mean().item()

    # GCD end to end, randomised: every image over judge_draws mask draws (seeds disjoint from the attacks')
    for name in ("gcd", "bpda_eot"):
        per_image = end_to_end(results[name].x_adv, int(threat.judge_draws)).double()  # (draws, N)
        mean, low, high = mean_interval(per_image.mean(dim=0))
        key = "whitebox.success.gcd_end_to_end" if name == "gcd" else "whitebox.success.bpda_eot_end_to_end"
        metrics[key], metrics[f"{key}_ci.low"], metrics[f"{key}_ci.high"] = mean, low, high
        metrics[f"{key}_draws.min"], metrics[f"{key}_draws.max"] = per_image.mean(1).min().item(), per_image.mean(1).max().item()
    metrics["whitebox.success.bpda_eot_evades"] = judges["gcd"](results["bpda_eot"].x_adv).float().mean().item()

    grey = adv_test.x_adv[:n]
    metrics["whitebox.greybox.success.gcd"] = judges["gcd"](grey).float().mean().item()
    metrics["whitebox.greybox.success.end_to_end"] = end_to_end(grey, int(threat.judge_draws)).double().mean().item()
    gcd_outputs = outputs(guarded["gcd"], x, bs)  # the clean images through f and both detectors, once
    gcd_terms = target_terms(terms, parts["gcd"])  # the indicators and the loss figures read the first
    hinge = HingeEvasion(num_classes, adaptive.kappa, 1.0, targeted, gcd_terms[0])
    for point, out in (("clean", gcd_outputs), ("adv", outputs(guarded["gcd"], results["gcd"].x_adv, bs))):
        metrics[f"whitebox.loss.gcd.{point}"] = hinge.total_loss(out, labels).mean().item()

    flagged_clean = ensemble_flags(gcd_outputs[:, num_classes:])
    metrics["whitebox.flagged_clean.gcd"] = flagged_clean.float().mean().item()
    metrics.update(fixed_budget_robustness(ctx, norm, eps, gcd_terms, pgd_variant, surrogates["gcd"] is not None, run_variant,
                                           by_variant["gcd"], flagged_clean, adv_test))

    for name, rate in unbounded.items():
        if name != "gcd":  # GCD's is one of its failure indicators, below
            metrics[f"whitebox.target_indicator.{name}.unbounded"] = rate
            metrics[f"whitebox.target_indicator.{name}.unbounded.failed"] = float(rate < indicators.UNBOUNDED_MIN)
        if donors is not None:  # where the target's accepted inputs of another class lie: no gradient, no budget
            reach = run_variant(name, blend_variant("unbounded_blend", name, Norm.LINF, UNBOUNDED_LINF))
            metrics[f"whitebox.blend_unbounded.{name}"] = reach.success.float().mean().item()
            metrics[f"whitebox.blend_unbounded_linf.{name}"] = reach.linf[reach.success].median().item() if reach.success.any() else float("nan")
    for name, walk in walks.items():  # how near the walk came, in the row's norm (BlendSearch's start: the reach above)
        sizes = walk.linf if norm is Norm.LINF else walk.l2
        metrics[f"whitebox.boundary_{norm.value}.{name}"] = sizes[walk.success].median().item() if walk.success.any() else float("nan")
    metrics.update(failure_indicators(by_variant["gcd"], results["gcd"].success, adaptive.modes, gcd_terms[0], unbounded["gcd"],
                                      guarded["gcd"], gcd, x, grey, gcd_outputs, num_classes, bs))

    if norm is Norm.L2:
        gcd_adv = results["gcd"]
        for budget in threat.l2_budgets:
            within = gcd_adv.success & (gcd_adv.l2 <= budget)
            metrics[f"whitebox.budget_l2.gcd.{float(budget):.4f}"] = within.float().mean().item()
    return metrics


def fixed_budget_robustness(ctx, norm, eps, terms, pgd_variant, has_surrogate: bool, run_variant, gcd_sets,
                            flagged_clean, adv_test: AdversarialSet) -> dict[str, float]:
    """GCD's success and robust accuracy at each fixed L∞ / L2 budget of ``threat.robustness``, and Tramèr's check.

    Each budget other than the attack's own runs ``AdaptivePGD`` in every mode of
    ``threat.robustness.modes`` on GCD (``pgd_variant``), and orthogonal PGD through its surrogate (``DET_IS``
    smoothed) when it ``has_surrogate``, each once per detector term of ``terms``. An image counts as won at a budget when *any* attack of the stage on GCD, at
    any budget or norm, succeeded with a perturbation inside that ball: the stage's own variants, the
    smaller budgets' results at the larger ones, an L2 result whose L∞ norm fits. So robust accuracy
    never rises with ε. Robust accuracy: clean image not flagged and attack failed
    (``indicators.robust_accuracy``), over the attacked images and over all test images looked at to
    find ``adv_test`` (``robust_accuracy``).
    """
    threat = ctx.cfg.threat
    references = ROBUST_CLASSIFIERS.get(ctx.cfg.dataset.name, {})
    budgets = [(budget_norm, float(b)) for budget_norm, bs in ((Norm.LINF, threat.robustness.linf_eps),
                                                               (Norm.L2, threat.robustness.l2_eps)) for b in sorted(bs)]
    candidates = list(gcd_sets.values())
    for budget_norm, budget in budgets:
        if budget_norm is norm and abs(budget - eps) < 1e-12:  # the stage's own budget: its variants on GCD are there
            continue
        for term in terms:
            candidates += [run_variant("gcd", pgd_variant(f"robust_{mode}", "gcd", mode, budget_norm, budget, term))
                           for mode in threat.robustness.modes]
            if has_surrogate:
                candidates.append(run_variant("gcd", pgd_variant("robust_surrogate", "gcd", "orthogonal", budget_norm, budget, term,
                                                                 surrogate=True)))
    metrics: dict[str, float] = {}
    for budget_norm, budget in budgets:
        won = torch.stack([s.success & within(s, budget_norm, budget) for s in candidates]).any(dim=0)
        key = f"whitebox.robust_{budget_norm.value}.{budget:.4f}"
        rate, low, high = rate_interval(won)
        robust = indicators.robust_accuracy(flagged_clean, won)
        robust_all = robust_accuracy(robust, len(adv_test), adv_test.n_examined)
        metrics[f"{key}.success"], metrics[f"{key}.success_ci.low"], metrics[f"{key}.success_ci.high"] = rate, low, high
        metrics[f"{key}.robust_acc"], metrics[f"{key}.robust_acc_all"] = robust, robust_all
        check = indicators.tramer_check(robust_all, budget, references.get(budget_norm.value, []))
        metrics[f"{key}.tramer.radius"], metrics[f"{key}.tramer.reference"] = check["radius"], check["reference"]
        metrics[f"{key}.tramer.plausible"] = check["plausible"]
    return metrics


def within(adv: AdversarialSet, norm: Norm, budget: float) -> torch.Tensor:
    """(N,) bool: the perturbation is inside the ``norm`` ball of radius ``budget`` (a float32 tolerance)."""
    return in_ball(adv.linf if norm is Norm.LINF else adv.l2, budget)


def within_budget(adv: AdversarialSet, x: torch.Tensor, norm: Norm, budget: float) -> AdversarialSet:
    """``adv`` (a minimum-norm attack's result) cut at the ``norm`` ball of radius ``budget``: outside it, ``x`` and lost."""
    inside = within(adv, norm, budget)
    return dataclasses.replace(adv, x_adv=torch.where(inside.view(-1, *([1] * (x.dim() - 1))), adv.x_adv, x),
                               success=adv.success & inside, l2=torch.where(inside, adv.l2, 0.0),
                               linf=torch.where(inside, adv.linf, 0.0))


def unbounded_success(results: Iterable[AdversarialSet]) -> float:
    """Success at L∞ ε = 1 (``UNBOUNDED_LINF``), judged by the target itself: per image the stronger of
    ``results``, the stage's attacks on it in turn, each taken only while the share is below
    ``indicators.UNBOUNDED_MIN`` (``results`` is lazy, so a later attack runs only then).

    Every image is reachable there (a clean image of another class is inside the ball), so the stage's
    attacks, if they work, must reach ~100% (Pintor et al. 2022's ``unbounded`` indicator). It runs on
    every detector target, as a detector can defeat the attacks without being robust.
    """
    won = None
    for adv in results:
        won = adv.success if won is None else won | adv.success
        if won.float().mean().item() >= indicators.UNBOUNDED_MIN:
            break
    return won.float().mean().item()


def failure_indicators(gcd_sets, won, modes, term, unbounded, model, gcd, x, grey, clean_outputs, num_classes, bs) -> dict[str, float]:
    """Pintor et al. (2022)'s indicators on the attacks against GCD: ``whitebox.indicator.<name>`` and ``.failed``.

    Each indicator reads ``AdaptivePGD`` on the hinge of detector term ``term`` (GCD's first).

    * ``silent``: images whose first gradient was zero or not finite (``AdaptivePGD``'s first mode);
    * ``incomplete``: ``AdaptivePGD``'s loss still falling over its last steps on the images that
      every attack on GCD lost (``won``: the strongest result per image);
    * ``unbounded``: success at L∞ ε = 1 (``unbounded_success``), which must reach ~100%;
    * ``noise``: clean images whose decision (label, flag) changes under uniform noise of ±1e-3;
    * ``random``: the detected classifier gives different outputs on the same inputs (AutoAttack's
      check); GCD end to end is random by design (``random_end_to_end``, information only: it is
      attacked with EOT and judged over several draws).
    """
    first = gcd_sets.get(suffixed(modes[0], term)) if modes else None
    values: dict[str, tuple[float, bool]] = {}
    if first is not None:
        silent = indicators.silent_share(first.extras["silent"])
        values["silent"] = (silent, silent > indicators.SILENT_MAX)
        incomplete = indicators.incomplete_optimisation(first.extras["loss"], won)
        values["incomplete"] = (incomplete, incomplete > indicators.INCOMPLETE_MAX)
    values["unbounded"] = (unbounded, unbounded < indicators.UNBOUNDED_MIN)
    changed, random = decision_checks(model, x, clean_outputs, num_classes, bs)
    values["noise"] = (changed, changed > indicators.NOISE_MAX)
    values["random"] = (float(random), random)
    metrics = {}
    for name, (value, failed) in values.items():
        metrics[f"whitebox.indicator.{name}"] = value
        metrics[f"whitebox.indicator.{name}.failed"] = float(failed)
    device = next(gcd.parameters()).device
    suspect = grey[: min(len(grey), bs)]  # grey-box adversarial images: most are flagged and go through the masks

    def gcd_logits(draw: int) -> torch.Tensor:
        return distributed.map_batches(lambda _, rows: gcd(suspect[rows].to(device)).detach().cpu(), len(suspect), bs,
                                       JUDGE_SEED + draw * JUDGE_STRIDE)

    metrics["whitebox.indicator.random_end_to_end"] = float(not torch.equal(gcd_logits(0), gcd_logits(1)))
    return metrics


def cw_budget(ctx: RunContext) -> dict | None:
    """The white-box CW budget (``threat.cw``) when the configured attack is CW, else None."""
    if not str(ctx.cfg.attack.attack._target_).endswith(".CW"):
        return None
    return OmegaConf.to_container(ctx.cfg.threat.cw, resolve=True)


def make_attack(ctx: RunContext, model: nn.Module, objective: Objective) -> Attack:
    """The configured attack on ``model`` with ``objective``; CW with the white-box budget of ``threat.cw``."""
    overrides: dict = {"model": model.eval(), "objective": objective, **(cw_budget(ctx) or {})}
    return hydra.utils.instantiate(ctx.cfg.attack.attack)(**overrides)
