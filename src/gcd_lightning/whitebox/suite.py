"""The adaptive suite: a fixed cascade of step-size-free attacks on a detection defense (AutoAttack's shape).

AutoAttack (Croce & Hein 2020) made a standard of robustness evaluation by fixing a small ensemble of
parameter-free attacks and running it as a cascade: each attack sees only the points that are still
robust, and the log shows the robust accuracy after each attack. A ``Suite`` does the same for a
classifier guarded by detectors:

* its attacks (``SuiteAttack``, read from ``conf/suite/<name>.yaml``) run in order, cheap ones first;
  an image leaves the cascade at its first win, which it keeps;
* every result is judged by the target's real decision (``Target.judge``: ``f`` fooled and, for GCD,
  the entropy ensemble of eq. 10-11 not flagging), never by the loss the attack climbed;
* the gradient attacks are ``AdaptivePGD`` with APGD's step-size control (``update="apgd"``), on the
  hinge of ``f``'s margin and the detectors' gaps (``HingeEvasion``; ``term: sum`` is eq. 11's own
  boundary), jointly or orthogonal / selective (Bryniarski et al. 2022); ``classes: k`` runs the
  attack targeted at each of ``f``'s ``k`` most likely other classes in turn (APGD-T's);
* ``kind: paper`` is the paper's own attack (section 4.2, ``suite=paper``): PGD (L∞) or DDN (L2) with fixed
  steps on the L+1 view of the detected classifier, eq. 14's loss untargeted (``DetectorEvasion``), to
  reproduce its protocol beside the standard suite;
* a target guarded by detectors can only be won where ``f`` is fooled (the win must also evade them): given
  ``f_resists``, the images the same suite could not win on ``f`` alone at this budget, it does not attack them
  (they count as robust; ``SuiteResult.f_resists``). The white-box stage and ``evaluate`` run ``f`` alone first;
* the *unbounded check* then attacks the images still robust with the suite's gradient attacks in turn
  at L∞ ε = 1, where every image is reachable; when they win fewer than ``UNBOUNDED_MIN`` of all the
  gradient misleads, and the decision-based attacks (``kind: blend``, then ``kind: boundary``,
  ``fallback: true``) join the cascade: they read only the real decision (``BlendSearch``,
  ``HopSkipJump``), and need the attacker's own clean images (``donors``).

``run_suite`` returns every image's strongest result and the log (``AttackRecord``: which attack won
which images that no earlier one did).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from gcd_lightning.adversarial import outputs, perturbation_norms
from gcd_lightning.attacks.base import Norm
from gcd_lightning.attacks.ddn import DDN
from gcd_lightning.attacks.objective import PLAIN
from gcd_lightning.attacks.pgd import PGD
from gcd_lightning.attacks.runner import run_attack
from gcd_lightning.whitebox import indicators
from gcd_lightning.whitebox.blend import BlendSearch
from gcd_lightning.whitebox.hopskipjump import HopSkipJump
from gcd_lightning.whitebox.objectives import (
    DETECTOR_TERMS,
    DetectorEvasion,
    HingeEvasion,
    detector_as_class_logits,
    detector_log_probabilities,
    ensemble_flags,
)
from gcd_lightning.whitebox.opgd import MODES, SUPPORTS, UPDATES, AdaptivePGD, run_adaptive

KINDS = ("apgd", "ddn", "paper", "blend", "boundary")
GRADIENT = ("apgd", "paper")  # the kinds the unbounded check runs again at L∞ ε = 1
DECISION_BASED = ("blend", "boundary")
UNBOUNDED_LINF = 1.0  # an L∞ budget of 1 reaches every image in [0, 1]
CLEAN = -2  # SuiteResult.by of an image won at its clean version
KAPPA = 1.0  # confidence of the hinges the gradient attacks descend (an image leaves at its first judged win, so it only shapes the loss)
SUITE_DIR = Path(__file__).resolve().parents[1] / "conf" / "suite"


@dataclasses.dataclass(frozen=True)
class SuiteAttack:
    """One attack of a suite, with fixed settings (no per-row knobs).

    Attributes:
        name: its name in the log.
        kind: ``apgd`` (``AdaptivePGD``), ``ddn`` (DDN, Rony et al. 2019: a minimum-norm L2 attack on the same hinge,
            capped at the budget; L2 budgets only), ``paper`` (the paper's attack: PGD or DDN on the L+1 view, eq. 14),
            ``blend`` (``BlendSearch``) or ``boundary`` (``HopSkipJump`` from
            ``BlendSearch``'s unbounded wins, cut at the budget).
        mode, term, support, update: ``AdaptivePGD``'s (``apgd``; ``term`` also ``ddn``'s).
        classes: 0, or targeted at each of ``f``'s ``classes`` most likely other classes in turn (untargeted goals); on
            a given goal, its ``restarts`` runs toward it from random starts (``run_gradient``).
        steps, restarts: iterations per run and runs per image (``apgd``; ``ddn``, ``paper``, ``boundary``: its iterations).
        fallback: decision-based; runs only where the gradient attacks fail the unbounded check.
    """

    name: str
    kind: str = "apgd"
    mode: str = "joint"
    term: str = "sum"
    support: str = "all"
    update: str = "apgd"
    classes: int = 0
    steps: int = 100
    restarts: int = 1
    fallback: bool = False

    def __post_init__(self) -> None:
        checks = (("kind", self.kind, KINDS), ("mode", self.mode, MODES), ("term", self.term, DETECTOR_TERMS),
                  ("support", self.support, SUPPORTS), ("update", self.update, UPDATES))
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"suite attack {self.name!r}: {key}={value!r} is unknown; choose one of {allowed}")
        if self.steps < 1 or self.restarts < 1 or self.classes < 0:
            raise ValueError(f"suite attack {self.name!r}: steps and restarts must be >= 1, classes >= 0; got "
                             f"{self.steps}, {self.restarts}, {self.classes}")
        if (self.kind in DECISION_BASED) != self.fallback:
            raise ValueError(f"suite attack {self.name!r}: the decision-based kinds (blend, boundary) and only they are "
                             "fallback: true")


@dataclasses.dataclass(frozen=True)
class Suite:
    """An ordered cascade of attacks (``SuiteAttack``), gradient attacks before the decision-based fallback.

    ``eot_samples`` > 0 makes it a suite for a randomised target (``rand``): its gradient is the mean over
    that many draws of the target's randomness (EOT), which the target's ``attacked`` model computes.
    """

    name: str
    attacks: tuple[SuiteAttack, ...]
    eot_samples: int = 0

    def __post_init__(self) -> None:
        if not self.attacks or self.attacks[0].kind not in GRADIENT:
            raise ValueError(f"suite {self.name!r}: its first attack must be a gradient attack (kind: {' or '.join(GRADIENT)}): "
                             "the unbounded check reruns them, and the silent and incomplete checks read an apgd first")
        names = [attack.name for attack in self.attacks]
        if len(set(names)) < len(names):
            raise ValueError(f"suite {self.name!r}: attack names must differ, got {names}")
        fallback = [attack.fallback for attack in self.attacks]
        if fallback != sorted(fallback):
            raise ValueError(f"suite {self.name!r}: the decision-based attacks (fallback) come after the gradient attacks")


def suite_names() -> list[str]:
    """The suites shipped in ``conf/suite``."""
    return sorted(path.stem for path in SUITE_DIR.glob("*.yaml"))


def load_suite(name: str | Path | Mapping[str, Any]) -> Suite:
    """A suite by name (``conf/suite/<name>.yaml``), from a YAML file of your own, or from its mapping."""
    if isinstance(name, Mapping):
        spec = dict(name)
    else:
        path = Path(name) if str(name).endswith((".yaml", ".yml")) else SUITE_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"suite={name}: no such suite; choose one of {suite_names()} or give a .yaml file of your own")
        spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - {"name", "attacks", "eot_samples"}
    if unknown:
        raise ValueError(f"suite {spec.get('name', name)!r}: unknown keys {sorted(unknown)}; a suite has name, attacks, eot_samples")
    fields = {field.name for field in dataclasses.fields(SuiteAttack)}
    attacks = []
    for entry in spec.get("attacks") or []:
        bad = set(entry) - fields
        if bad:
            raise ValueError(f"suite {spec.get('name')!r}, attack {entry.get('name')!r}: unknown keys {sorted(bad)}; choose from "
                             f"{sorted(fields)}")
        attacks.append(SuiteAttack(**entry))
    return Suite(str(spec.get("name", name)), tuple(attacks), int(spec.get("eot_samples", 0)))


Judge = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(adversarial images, labels) -> (N,) bool: the target's real decision is the attacker's win."""


@dataclasses.dataclass
class Target:
    """What the suite attacks and who judges it.

    Attributes:
        name: its name in the log (``gcd``, ``det_is``, ``nodet``, ...).
        attacked: the model the gradient attacks differentiate, outputs as ``GuardedClassifier``'s
            (``f``'s L logits, then each detector's two): the target itself, or a stand-in (a surrogate of a
            detector that is not differentiable; the randomised GCD's expected answer under EOT).
        judge: the target's real decision; with ``judged`` its model for the decision-based attacks.
        judged: the model whose outputs the judge reads (``GuardedClassifier``), or None when the judge is
            random (GCD end to end): the decision-based attacks then do not run.
        num_classes: L.
        random: ``attacked`` averages draws of a random defense (EOT): the gradient attacks push each image until their
            hinge is met with its margin, not only until the average is fooled (``AdaptivePGD(stop="loss")``).
    """

    name: str
    attacked: nn.Module
    judge: Judge
    num_classes: int
    judged: nn.Module | None = None
    random: bool = False


def guarded_target(name: str, model: nn.Module, num_classes: int, targeted: bool, batch_size: int = 100,
                   attacked: nn.Module | None = None, random: bool = False) -> Target:
    """A ``GuardedClassifier`` judged by its own outputs: ``f`` fooled, and not flagged by its detectors (eq. 10-11)."""
    rule = HingeEvasion(num_classes, 0.0, 1.0, targeted)

    def judge(x_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return rule.success(outputs(model, x_adv, batch_size), labels, targeted)

    return Target(name, model if attacked is None else attacked, judge, num_classes, judged=model, random=random)


@dataclasses.dataclass
class AttackRecord:
    """One line of the cascade's log."""

    name: str
    attacked: int        # images it was run on (those still robust)
    won: int             # images it won that no earlier attack did
    robust_after: float  # share of all images still robust after it
    seconds: float
    note: str = ""       # why it did not run, where it did not


@dataclasses.dataclass
class SuiteResult:
    """Every image's strongest result under a suite, and how the cascade got there.

    Attributes:
        won: (N,) bool, the image was won within the budget.
        by: (N,) int64, the index in ``attacks`` of the attack that won it, ``CLEAN`` (-2) where the clean image
            itself is a win (``f`` wrong and not flagged; never attacked), -1 where nothing won.
        attacks: the names of the suite's attacks, in order.
        x_adv: (N, C, H, W) the winning example, ``x`` where nothing won.
        l2, linf: (N,) the size of ``x_adv − x``.
        log: one ``AttackRecord`` per attack that ran.
        unbounded: share of all images won at L∞ ε = 1 (the budget's wins, then the gradient attacks again on
            the rest, in turn, until 0.99).
        silent, incomplete: the first attack's share of images with a zero first gradient, and its loss still
            falling at the end on the images it lost (``indicators``); nan unless the first attack is an ``apgd``.
        seconds: the cascade's wall time.
        f_resists: (N,) bool, not attacked because ``f`` alone resisted the suite there (``run_suite``'s ``f_resists``).
    """

    won: torch.Tensor
    by: torch.Tensor
    attacks: list[str]
    x_adv: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    log: list[AttackRecord]
    unbounded: float
    silent: float
    incomplete: float
    seconds: float
    f_resists: torch.Tensor


def in_ball(size: torch.Tensor, eps: float) -> torch.Tensor:
    """(N,) bool: perturbation sizes ``size`` are at most ``eps``, to a float32 tolerance."""
    return size <= eps * (1 + 1e-5) + 1e-6


def within(x: torch.Tensor, x_adv: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """(N,) bool: ``x_adv`` lies in the box and in the ``norm`` ball of radius ``eps`` around ``x``."""
    l2, linf = perturbation_norms(x, x_adv)
    in_box = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(dim=1)
    return in_box & in_ball(linf if norm is Norm.LINF else l2, eps)


def decision_checks(model: nn.Module, x: torch.Tensor, clean: torch.Tensor, num_classes: int, batch_size: int) -> tuple[float, bool]:
    """The ``noise`` and ``random`` checks of a detected classifier (``GuardedClassifier``) at clean images ``x`` whose
    outputs are ``clean``: the share of decisions (label, flag) that uniform noise of ±``indicators.NOISE`` changes
    (seeded apart from every attack), and whether a second pass gives other outputs (AutoAttack's check)."""
    decision = indicators.defended_decision(clean, num_classes, ensemble_flags(clean[:, num_classes:]))
    generator = torch.Generator().manual_seed(indicators.JUDGE_SEED - 1)
    noisy = outputs(model, (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * indicators.NOISE).clamp(0, 1), batch_size)
    changed = indicators.decision_changes(decision, indicators.defended_decision(noisy, num_classes, ensemble_flags(noisy[:, num_classes:])))
    return changed, not torch.equal(outputs(model, x, batch_size), clean)


def likely_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, num_classes: int, batch_size: int) -> torch.Tensor:
    """(N, k) ``f``'s ``k`` most likely classes other than ``y`` at the clean images (APGD-T's targets)."""
    logits = outputs(model, x, batch_size)[:, :num_classes].clone()
    logits[torch.arange(len(y)), y] = -torch.inf
    return logits.topk(min(k, num_classes - 1), dim=1).indices


def has_detectors(target: Target, x: torch.Tensor) -> bool:
    """Whether ``target``'s attacked model outputs detector logits after ``f``'s (one forward pass on ``x[:1]``)."""
    return outputs(target.attacked, x[:1], 1).shape[1] > target.num_classes


def gradient_attack(target: Target, attack: SuiteAttack, norm: Norm, eps: float, targeted: bool,
                    start: str = "clean") -> AdaptivePGD:
    objective = HingeEvasion(target.num_classes, KAPPA, 1.0, targeted, attack.term)
    return AdaptivePGD(target.attacked, objective, norm.value, eps, attack.steps, 0.1, attack.restarts, attack.mode, targeted,
                       attack.support, attack.update, "loss" if target.random else "success", start)


def run_gradient(target: Target, attack: SuiteAttack, x: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None,
                 norm: Norm, eps: float, seed: int, batch_size: int, progress: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``attack`` on ``x``; with ``classes`` once per likely class, each image keeping the win of its most likely class.
    The classes go as many at a time as fill one batch (one at a time against a random target), each pair of an image
    and a class one row (an image won leaves before the next classes): few robust images make a full batch, and a run
    from ``x`` does not depend on its batch.
    With ``classes`` and a given ``goal`` (a targeted row: one class to reach) its runs start at random points of the
    ball: from ``x`` it would repeat the suite's untargeted-view run on that goal step for step (APGD is deterministic
    from ``x``)."""
    if not attack.classes or goal is not None:
        start = "random" if attack.classes else "clean"
        result = run_adaptive(gradient_attack(target, attack, norm, eps, goal is not None, start), x, y, goal, batch_size, seed,
                              progress, f"{target.name} {attack.name}")
        return result.pop("x_adv"), result
    classes = likely_classes(target.attacked, x, y, attack.classes, target.num_classes, batch_size)
    x_adv, won, first = x.clone(), torch.zeros(len(x), dtype=torch.bool), {}
    begin = 0
    while begin < classes.shape[1]:
        rows = (~won).nonzero().flatten()
        if len(rows) == 0:
            break
        # against a random target a run goes on to zero loss even where an earlier class already won: one class at a time
        per = 1 if target.random else max(1, batch_size // len(rows))
        ranks = range(begin, min(begin + per, classes.shape[1]))
        begin = ranks[-1] + 1
        pairs = rows.repeat(len(ranks))  # rank-major: the rows of each class in turn
        result = run_adaptive(gradient_attack(target, attack, norm, eps, True), x[pairs], y[pairs],
                              torch.cat([classes[rows, rank] for rank in ranks]), batch_size, seed + ranks[0], progress,
                              f"{target.name} {attack.name} (classes {ranks[0] + 1}-{ranks[-1] + 1})")
        first = first or {key: value[:len(rows)] for key, value in result.items() if key != "x_adv"}  # the likeliest class's run
        hits = target.judge(result["x_adv"], y[pairs]).view(len(ranks), len(rows))
        found = result["x_adv"].view(len(ranks), len(rows), *x.shape[1:])
        for hit, example in zip(hits, found):  # the likeliest class first
            new = hit & ~won[rows]
            x_adv[rows[new]], won[rows[new]] = example[new], True
    return x_adv, first


class LPlusOneView(nn.Module):
    """A detected classifier's outputs (``GuardedClassifier``'s: ``f``'s L logits, then two per detector) as the L+1
    logits of section 4.2 (``detector_as_class_logits``; index L: "adversarial"), which the paper's attack reads."""

    def __init__(self, guarded: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.guarded, self.num_classes = guarded, int(num_classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.guarded(x)
        detectors = list(out[:, self.num_classes:].split(2, dim=1))
        return detector_as_class_logits(out[:, :self.num_classes], detector_log_probabilities(detectors))


def run_paper(target: Target, attack: SuiteAttack, x: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None,
              norm: Norm, eps: float, seed: int, batch_size: int, progress: bool) -> torch.Tensor:
    """The paper's attack (section 4.2): on the L+1 view of ``f`` and its detectors, eq. 14's loss untargeted and the
    cross entropy of the target targeted (``DetectorEvasion``, β = 1); L∞: PGD from a random start with Madry et al.'s
    step ``2.5 ε / steps``; L2: DDN capped at ``eps``. Without detectors (NoDET) the same attack on ``f`` alone."""
    targeted = goal is not None
    detected = has_detectors(target, x)
    model = LPlusOneView(target.attacked, target.num_classes) if detected else target.attacked
    objective = DetectorEvasion(target.num_classes, 1.0, targeted) if detected else PLAIN
    if norm is Norm.LINF:
        chosen = PGD(model, eps=eps, nb_iter=attack.steps, eps_iter=min(1.0, 2.5 * eps / attack.steps), targeted=targeted,
                     objective=objective)
    else:
        chosen = DDN(model, steps=attack.steps, quantize=False, max_norm=eps, targeted=targeted, objective=objective)
    return run_attack(chosen, x, y, goal, batch_size=batch_size, progress=progress, desc=f"{target.name} {attack.name}", seed=seed)


def run_minimum_norm(target: Target, attack: SuiteAttack, x: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None,
                     eps: float, seed: int, batch_size: int, progress: bool) -> torch.Tensor:
    """DDN on the hinge of ``f``'s margin and the detectors' gaps, its norm capped at the L2 budget ``eps``."""
    targeted = goal is not None
    ddn = DDN(target.attacked, steps=attack.steps, quantize=False, max_norm=eps, targeted=targeted,
              objective=HingeEvasion(target.num_classes, KAPPA, 1.0, targeted, attack.term))
    return run_attack(ddn, x, y, goal, batch_size=batch_size, progress=progress, desc=f"{target.name} {attack.name}", seed=seed)


def run_decision(target: Target, attack: SuiteAttack, x: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None,
                 norm: Norm, eps: float, donors: torch.Tensor, seed: int, batch_size: int, progress: bool) -> torch.Tensor:
    """``BlendSearch`` at the budget, or ``HopSkipJump`` from its unbounded wins cut at the budget, on the real decision."""
    targeted = goal is not None
    rule = HingeEvasion(target.num_classes, 0.0, 1.0, targeted)
    if attack.kind == "blend":
        search = BlendSearch(target.judged, rule, donors, norm.value, eps, targeted=targeted)
    else:
        start = BlendSearch(target.judged, rule, donors, Norm.LINF.value, UNBOUNDED_LINF, targeted=targeted)
        search = HopSkipJump(start, norm.value, attack.steps)
    return run_attack(search, x, y, goal, batch_size=batch_size, progress=progress, desc=f"{target.name} {attack.name}", seed=seed)


def run_suite(target: Target, x: torch.Tensor, y: torch.Tensor, suite: Suite, norm: Norm | str, eps: float, *,
              goal: torch.Tensor | None = None, donors: torch.Tensor | None = None, seed: int = 0, batch_size: int = 100,
              progress: bool = False, f_resists: torch.Tensor | None = None) -> SuiteResult:
    """Run ``suite`` on ``target`` as a cascade (module docstring).

    Args:
        x, y: (N, C, H, W) images in [0, 1] and their true labels.
        norm, eps: the threat model.
        goal: (N,) target classes of a targeted attack, None for untargeted.
        donors: the attacker's clean images for the decision-based fallback; None leaves it out.
        f_resists: (N,) bool, for a target whose every win must fool ``f``: the images ``f`` alone resisted under the
            same suite, budget and goal; the cascade does not attack them (the unbounded check does, at L∞ ε = 1).
    """
    norm = Norm(norm)
    if not eps > 0 or (norm is Norm.LINF and eps > 1):
        raise ValueError(f"run_suite: eps={eps} must be > 0 (at most 1 in L∞)")
    labels = y if goal is None else goal
    start = time.perf_counter()
    won = target.judge(x, labels)  # won without a perturbation (f wrong and not flagged): never attacked, as AutoAttack does
    by, x_adv = torch.where(won, CLEAN, -1), x.clone()
    if f_resists is None:
        f_resists = torch.zeros_like(won)
    if f_resists.shape != won.shape or f_resists.dtype != torch.bool:
        raise ValueError(f"run_suite: f_resists must be a ({len(x)},) bool tensor, got {tuple(f_resists.shape)} {f_resists.dtype}")
    f_resists = f_resists & ~won
    log: list[AttackRecord] = []
    silent = incomplete = float("nan")
    unbounded = float("nan")
    gradient = [attack for attack in suite.attacks if attack.kind in GRADIENT]  # the unbounded check's attacks
    detected = has_detectors(target, x)
    ran: dict[SuiteAttack, str] = {}  # without detectors, an apgd attack's mode and term change nothing: each runs once

    def take(i: int, rows: torch.Tensor, found: torch.Tensor, began: float) -> None:
        hit = target.judge(found, labels[rows]) & within(x[rows], found, norm, eps)
        new = rows[hit]
        won[new], by[new], x_adv[new] = True, i, found[hit]
        log.append(AttackRecord(suite.attacks[i].name, len(rows), int(hit.sum()), 1 - won.float().mean().item(),
                                time.perf_counter() - began))

    for i, attack in enumerate(suite.attacks):
        rows = (~won & ~f_resists).nonzero().flatten()
        if len(rows) == 0:
            note = "every image already won" if won.all() else "every image left is one f alone resists"
            log.append(AttackRecord(attack.name, 0, 0, 1 - won.float().mean().item(), 0.0, f"skipped: {note}"))
            continue
        if attack.fallback:
            if unbounded != unbounded:  # nan: the unbounded check has not run yet
                unbounded = unbounded_check(target, gradient, x, y, goal, won, seed, batch_size, progress)
            skip = ("the gradient attacks pass the unbounded check" if unbounded >= indicators.UNBOUNDED_MIN else
                    "no donors (the attacker's clean images)" if donors is None else
                    "a random judge (no decision to walk along)" if target.judged is None else "")
            if skip:
                log.append(AttackRecord(attack.name, 0, 0, 1 - won.float().mean().item(), 0.0, f"skipped: {skip}"))
                continue
        if attack.kind == "ddn" and norm is not Norm.L2:
            log.append(AttackRecord(attack.name, 0, 0, 1 - won.float().mean().item(), 0.0, "skipped: an L2 attack, the budget is L∞"))
            continue
        same = dataclasses.replace(attack, name="", mode="joint", term="sum")
        if attack.kind == "apgd" and not detected and same in ran:  # the same steps from the same seeds: it cannot win more
            log.append(AttackRecord(attack.name, 0, 0, 1 - won.float().mean().item(), 0.0,
                                    f"skipped: without detectors it repeats {ran[same]}"))
            continue
        ran.setdefault(same, attack.name)
        began = time.perf_counter()
        args = (target, attack, x[rows], y[rows], None if goal is None else goal[rows])
        if attack.kind == "ddn":
            found = run_minimum_norm(*args, eps, seed, batch_size, progress)
        elif attack.kind == "apgd":
            found, extras = run_gradient(*args, norm, eps, seed, batch_size, progress)
            if i == 0:
                silent = indicators.silent_share(extras["silent"])
                incomplete = indicators.incomplete_optimisation(extras["loss"], extras["success"])
        elif attack.kind == "paper":
            found = run_paper(*args, norm, eps, seed, batch_size, progress)
        else:
            found = run_decision(*args, norm, eps, donors, seed, batch_size, progress)
        take(i, rows, found, began)
    if unbounded != unbounded:
        unbounded = unbounded_check(target, gradient, x, y, goal, won, seed, batch_size, progress)
    l2, linf = perturbation_norms(x, x_adv)
    return SuiteResult(won, by, [a.name for a in suite.attacks], x_adv, l2, linf, log, unbounded, silent, incomplete,
                       time.perf_counter() - start, f_resists)


def unbounded_check(target: Target, attacks: list[SuiteAttack], x: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None,
                    won: torch.Tensor, seed: int, batch_size: int, progress: bool) -> float:
    """Share of all images won at L∞ ε = 1: those won at the budget, then the rest attacked there by the suite's gradient
    ``attacks`` in turn, each on what the ones before left, until ``UNBOUNDED_MIN`` is reached (Pintor et al. 2022: every
    image is reachable there, so working attacks win nearly all)."""
    labels = y if goal is None else goal
    reached = won.clone()
    for attack in attacks:
        rows = (~reached).nonzero().flatten()
        if reached.float().mean().item() >= indicators.UNBOUNDED_MIN or len(rows) == 0:
            break
        args = (target, attack, x[rows], y[rows], None if goal is None else goal[rows], Norm.LINF, UNBOUNDED_LINF, seed,
                batch_size, progress)
        found = run_paper(*args) if attack.kind == "paper" else run_gradient(*args)[0]
        reached[rows[target.judge(found, labels[rows])]] = True
    return reached.float().mean().item()
