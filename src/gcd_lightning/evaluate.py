"""The adaptive suite on any detection defense: ``evaluate(...)`` in Python, ``python -m gcd_lightning.evaluate`` on a folder.

    python -m gcd_lightning.evaluate defense=<folder> norm=linf|l2 eps=<ε> n=<N> out=<dir>
        [targeted=false] [suite=standard|plus|rand|<file.yaml>] [inputs=<file.pt>] [data=data] [seed=0]
        [batch_size=100] [donors=500] [device=auto|cpu|cuda] [progress=true] [trust_code=false]

``defense`` is a folder a run exported (``<run dir>/defense``). The images are the first ``n`` of the test
split of the data set the defense records (under ``data``), or ``inputs=<file.pt>``: a dict with
``images`` (N, C, H, W) in [0, 1], ``labels`` (N,) and, for ``targeted=true``, optionally ``targets`` (N,)
(else drawn with the seed). The attacker's own clean images for the decision-based fallback are the
first ``donors`` of the validation split (none with ``inputs=``). The suite runs as a cascade
(``whitebox.suite``) and ``out`` gets ``metrics.json`` (``success``: the share of the N images that
evade the detectors and fool ``f`` within the budget; ``robust_accuracy``: clean right, not flagged and
not won; each with its Wilson 95% interval; the log of the cascade; the checks), ``report.md`` and
``examples.pt`` (every image's result).

In Python, ``evaluate(defense, images, labels, norm=..., eps=...)`` takes a loaded defense (``GCD``), a
folder, a classifier alone (NoDET), or ``(classifier, [detectors])`` with a baseline or a detector of
your own (one detector decides alone, two are GCD's entropy ensemble, eq. 10-11).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import OmegaConf
from torch import nn

from gcd_lightning import cli
from gcd_lightning.adversarial import outputs, stack
from gcd_lightning.attacks.base import Norm, random_targets
from gcd_lightning.cache import Kind
from gcd_lightning.defense.export import load_defense, read_description
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.defense.trust import UntrustedCode
from gcd_lightning.inputs import check_inputs
from gcd_lightning.intervals import rate_interval
from gcd_lightning.utils.files import load_torch, save_json, save_text, save_torch
from gcd_lightning.utils.provenance import FILE as PROVENANCE
from gcd_lightning.utils.provenance import provenance
from gcd_lightning.whitebox import indicators
from gcd_lightning.whitebox.models import GuardedClassifier, RandomizedGCD
from gcd_lightning.whitebox.objectives import ensemble_flags
from gcd_lightning.whitebox.suite import (
    CLEAN,
    AttackRecord,
    Suite,
    SuiteResult,
    Target,
    decision_checks,
    guarded_target,
    load_suite,
    run_suite,
)

JUDGE_DRAWS = 5  # a randomised defense (suite rand) is won on an image when fooled in most of this many draws
CONF_DIR = Path(__file__).resolve().parent / "conf"

Defense = GCD | nn.Module | tuple | str | os.PathLike


@dataclasses.dataclass
class Evaluation:
    """What ``evaluate`` found: every image's result, the cascade's log and the checks.

    Attributes:
        target: what was attacked (``gcd``, ``det_<name>``, ``nodet``, ``gcd_end_to_end``).
        detectors: the names of the defense's detectors, in order.
        result: the ``SuiteResult`` (per image: won, by which attack, the example, its distances).
        correct, flagged: (N,) ``f`` right at the clean image; the defense flags it (GCD end to end: its final
            answer right in most draws; nothing is flagged, as it answers every image).
        checks: the ``indicators.Check``s run after the cascade.
    """

    target: str
    detectors: list[str]
    norm: str
    eps: float
    suite: str
    targeted: bool
    result: SuiteResult
    correct: torch.Tensor
    flagged: torch.Tensor
    checks: list[indicators.Check]

    @property
    def robust(self) -> torch.Tensor:
        """(N,) bool: right at the clean image, not flagged there, and not won (Tramèr 2022; Bryniarski et al. 2022)."""
        return self.correct & ~self.flagged & ~self.result.won

    def summary(self) -> dict[str, Any]:
        """The figures ``metrics.json`` holds."""
        result = self.result
        success, s_low, s_high = rate_interval(result.won)
        robust, r_low, r_high = rate_interval(self.robust)
        won = result.won & (result.by >= 0)  # the distances of the attacks' wins (a clean win has none)
        return {
            "target": self.target, "detectors": self.detectors, "suite": self.suite, "norm": self.norm, "eps": self.eps,
            "targeted": self.targeted, "n": len(won), "won_clean": int((result.by == CLEAN).sum()),
            "success": success, "success_ci": [s_low, s_high],
            "robust_accuracy": robust, "robust_accuracy_ci": [r_low, r_high],
            "clean_accuracy": self.correct.float().mean().item(), "flagged_clean": self.flagged.float().mean().item(),
            "l2_median": result.l2[won].median().item() if won.any() else float("nan"),
            "linf_median": result.linf[won].median().item() if won.any() else float("nan"),
            "seconds": result.seconds, "f_resists": int(result.f_resists.sum()),
            "cascade": [dataclasses.asdict(record) for record in result.log],
            "checks": {check.name: {"value": check.value, "failed": check.failed, "meaning": check.meaning} for check in self.checks},
        }


    def state(self) -> dict[str, Any]:
        """Everything it holds as tensors, strings and numbers (``Evaluations``: loads with ``weights_only=True``)."""
        result = dataclasses.asdict(self.result)
        return {**{field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name not in ("result", "checks")},
                "result": result, "checks": [dataclasses.asdict(check) for check in self.checks]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Evaluation:
        fields = dict(state["result"])
        fields["log"] = [AttackRecord(**record) for record in fields["log"]]
        return cls(**{**state, "result": SuiteResult(**fields), "checks": [indicators.Check(**c) for c in state["checks"]]})


@dataclasses.dataclass(frozen=True)
class Evaluations(Kind[Evaluation]):
    """Evaluations in the cache (``cache.Kind``): the white-box stage's, one per target, budget and suite."""

    folder: str = "whitebox"
    what: str = "white-box evaluation"
    suffix: str = ".pt"

    def load(self, path: Path) -> Evaluation:
        return Evaluation.from_state(load_torch(path, f"cached {self.what}"))

    def save(self, value: Evaluation, path: Path) -> None:
        save_torch(value.state(), path)


def defense_parts(defense: Defense, trust_code: bool = False) -> tuple[nn.Module, list[nn.Module], GCD | None]:
    """``(f, detectors, gcd or None)`` of anything ``evaluate`` takes (module docstring)."""
    if isinstance(defense, (str, os.PathLike)):
        defense = load_defense(defense, trust_code=trust_code)
    if isinstance(defense, GCD):
        return defense.classifier, list(defense.detectors), defense
    if isinstance(defense, tuple) and len(defense) == 2 and isinstance(defense[0], nn.Module):
        classifier, detectors = defense
        return classifier, list(detectors), None
    if isinstance(defense, nn.Module):
        return defense, [], None
    raise TypeError(f"evaluate: defense must be a GCD, a defense folder, a classifier or (classifier, [detectors]); "
                    f"got {type(defense).__name__}")


def target_name(detectors: Sequence[nn.Module]) -> str:
    if not detectors:
        return "nodet"
    return "gcd" if len(detectors) == 2 else f"det_{getattr(detectors[0], 'name', type(detectors[0]).__name__)}"


def gcd_draws(gcd: GCD, x: torch.Tensor, batch_size: int, draws: int = JUDGE_DRAWS) -> torch.Tensor:
    """(draws, N) GCD's final labels under that many draws of its masks (judging seeds: no attack uses them)."""
    from gcd_lightning.pipeline.components import run_gcd

    return torch.stack([run_gcd(gcd, x, batch_size, indicators.JUDGE_SEED + d * indicators.JUDGE_STRIDE)["label"]
                        for d in range(draws)])


def gcd_fooled(gcd: GCD, x_adv: torch.Tensor, labels: torch.Tensor, targeted: bool, batch_size: int,
               draws: int = JUDGE_DRAWS) -> torch.Tensor:
    """(draws, N) float: GCD's final answer at ``x_adv`` is fooled (the target, or not the label) under each draw of its masks."""
    answers = gcd_draws(gcd, x_adv, batch_size, draws)
    return (answers == labels if targeted else answers != labels).double()


def gcd_right(gcd: GCD, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) GCD end to end, which answers every image, is right at ``x`` in most of ``JUDGE_DRAWS`` draws of its masks."""
    return (gcd_draws(gcd, x, batch_size) == y).float().mean(dim=0) > 0.5


def randomized_target(gcd: GCD, suite: Suite, num_classes: int, targeted: bool, batch_size: int) -> Target:
    """GCD end to end, its rectifier included: attacked through BPDA + EOT (``RandomizedGCD``), won on an image when
    its final answer is fooled in most of ``JUDGE_DRAWS`` draws of its masks."""

    def judge(x_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return gcd_fooled(gcd, x_adv, labels, targeted, batch_size).mean(dim=0) > 0.5

    return Target("gcd_end_to_end", RandomizedGCD(gcd, suite.eot_samples), judge, num_classes, random=True)


def as_suite(suite: str | Path | Suite) -> Suite:
    return suite if isinstance(suite, Suite) else load_suite(suite)


def evaluate(defense: Defense, images: torch.Tensor, labels: torch.Tensor, *, norm: str, eps: float,
             targets: torch.Tensor | None = None, suite: str | Path | Suite = "standard", seed: int = 0,
             donors: torch.Tensor | None = None, batch_size: int = 100, progress: bool = False,
             references: Sequence[tuple[str, float, float]] = (), trust_code: bool = False, f_first: bool = True) -> Evaluation:
    """Attack ``defense`` with ``suite`` on ``images`` and judge every result by its real decision.

    Args:
        defense: a ``GCD`` (its detection, eq. 10-11; with ``suite="rand"`` GCD end to end, rectifier
            included), a defense folder, a classifier alone, or ``(classifier, [detectors])``.
        images, labels: (N, C, H, W) in [0, 1] and (N,) true labels.
        norm, eps: the threat model (``linf`` or ``l2``).
        targets: (N,) target classes for a targeted attack; None for untargeted.
        suite: a name of ``conf/suite`` (``standard``, ``plus``, ``rand``), a YAML file, or a ``Suite``.
        donors: the attacker's own clean images for the decision-based fallback (None: left out).
        references: robust classifiers ``(name, radius, accuracy)`` for Tramèr's check at ε/2.
        trust_code: for a folder, ``load_defense``'s.
        f_first: with detectors, run the suite on ``f`` alone first and do not attack the images it resists there
            (a win must fool ``f``; ``run_suite``'s ``f_resists``): the same verdict for a fraction of the work.
    """
    classifier, detectors, gcd = defense_parts(defense, trust_code)
    suite = as_suite(suite)
    check_inputs(images)
    if labels.shape != (len(images),) or (targets is not None and targets.shape != labels.shape):
        raise ValueError(f"evaluate: labels (and targets) must have shape ({len(images)},), got {tuple(labels.shape)}")
    device = next(classifier.parameters()).device
    classifier.eval()
    model = GuardedClassifier(classifier, detectors).to(device)
    with torch.no_grad():
        num_classes = classifier(images[:1].to(device)).shape[1]
    targeted = targets is not None
    correct = None
    if suite.eot_samples:
        if gcd is None or gcd.rectifier is None:
            raise ValueError(f"evaluate: suite {suite.name!r} attacks a randomised defense end to end; give a GCD with its rectifier")
        target = randomized_target(gcd, suite, num_classes, targeted, batch_size)
        correct = gcd_right(gcd, images, labels, batch_size)
    else:
        target = guarded_target(target_name(detectors), model, num_classes, targeted, batch_size)
    first = None
    if detectors and f_first and not suite.eot_samples:
        alone = GuardedClassifier(classifier, []).to(device)
        first = run_suite(guarded_target("nodet", alone, num_classes, targeted, batch_size), images, labels, suite, norm, eps,
                          goal=targets, donors=donors, seed=seed, batch_size=batch_size, progress=progress)
    evaluation = evaluate_target(target, model, images, labels, norm=norm, eps=eps, targets=targets, suite=suite, seed=seed,
                                 donors=donors, batch_size=batch_size, progress=progress, references=references, correct=correct,
                                 f_resists=None if first is None else ~first.won)
    if first is not None:  # its time is the evaluation's
        evaluation.result = dataclasses.replace(evaluation.result, seconds=evaluation.result.seconds + first.seconds)
    return evaluation


def evaluate_target(target: Target, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, norm: str | Norm, eps: float,
                    targets: torch.Tensor | None = None, suite: str | Path | Suite = "standard", seed: int = 0,
                    donors: torch.Tensor | None = None, batch_size: int = 100, progress: bool = False,
                    references: Sequence[tuple[str, float, float]] = (), correct: torch.Tensor | None = None,
                    f_resists: torch.Tensor | None = None) -> Evaluation:
    """``suite`` on a built ``target`` (what ``evaluate`` and the white-box stage share).

    ``model`` is the detected classifier (``GuardedClassifier``) whose clean outputs say where ``f`` is right and the
    detectors flag, and which the noise and random checks read. ``correct`` given (a randomised defense, which answers
    every image): it replaces ``f``'s right answers, and nothing counts as flagged. ``f_resists``: ``run_suite``'s.
    """
    suite, norm = as_suite(suite), Norm(norm)
    clean = outputs(model, images, batch_size)
    num_classes = target.num_classes
    if correct is None:
        correct, flagged = clean[:, :num_classes].argmax(dim=1) == labels, ensemble_flags(clean[:, num_classes:])
    else:
        flagged = torch.zeros_like(labels, dtype=torch.bool)
    result = run_suite(target, images, labels, suite, norm, eps, goal=targets, donors=donors, seed=seed, batch_size=batch_size,
                       progress=progress, f_resists=f_resists)
    checks = run_checks(result, model, images, clean, num_classes, batch_size, eps, correct & ~flagged & ~result.won, references)
    detectors = getattr(model, "detectors", [])
    return Evaluation(target.name, [getattr(d, "name", type(d).__name__) for d in detectors], norm.value, float(eps), suite.name,
                      targets is not None, result, correct, flagged, checks)


def run_checks(result: SuiteResult, model: nn.Module, images: torch.Tensor, clean: torch.Tensor, num_classes: int, batch_size: int,
               eps: float, robust: torch.Tensor, references: Sequence[tuple[str, float, float]]) -> list[indicators.Check]:
    """The checks after the cascade, each on its results (Pintor et al. 2022; AutoAttack's; Tramèr 2022); ``clean``: the
    detected classifier's outputs at ``images``."""
    changed, random = decision_checks(model, images, clean, num_classes, batch_size)
    checks = [
        indicators.Check("silent", result.silent, result.silent > indicators.SILENT_MAX,
                         "share of images whose first gradient was zero or not finite (gradient masking)"),
        indicators.Check("incomplete", result.incomplete, result.incomplete > indicators.INCOMPLETE_MAX,
                         "the first attack's loss still falling at its end on the images it lost (more steps would win more)"),
        indicators.Check("unbounded", result.unbounded, result.unbounded < indicators.UNBOUNDED_MIN,
                         "share won at L∞ ε = 1, where every image is reachable; below 0.99 the gradient misleads"),
        indicators.Check("noise", changed, changed > indicators.NOISE_MAX,
                         f"share of clean decisions changed by uniform noise of ±{indicators.NOISE:g}"),
        indicators.Check("random", float(random), random, "the detected classifier answers twice differently (a random defense)"),
    ]
    tramer = indicators.tramer_check(robust.float().mean().item(), eps, list(references))
    checks.append(indicators.Check("tramer", float(tramer["reference"]), tramer["plausible"] == 0.0,
                                   f"robust accuracy against the best classifier evaluated at ε/2 = {tramer['radius']:g} "
                                   "(Tramèr 2022; nan: none given)"))
    return checks


def report(evaluation: Evaluation) -> str:
    """``report.md``: the summary, the cascade's log (AutoAttack's) and the checks."""
    s = evaluation.summary()
    lines = [
        f"# White-box evaluation of {s['target']} ({', '.join(s['detectors']) or 'no detector'})",
        "",
        f"Suite `{s['suite']}`, {s['norm']} ε = {s['eps']:g}, {'targeted' if s['targeted'] else 'untargeted'}, n = {s['n']}, "
        f"{s['seconds']:.0f} s.",
        "",
        "| figure | value | 95% interval |",
        "|---|---|---|",
        f"| success (evades and fools) | {s['success']:.3f} | [{s['success_ci'][0]:.3f}, {s['success_ci'][1]:.3f}] |",
        f"| robust accuracy | {s['robust_accuracy']:.3f} | [{s['robust_accuracy_ci'][0]:.3f}, {s['robust_accuracy_ci'][1]:.3f}] |",
        f"| clean accuracy of f | {s['clean_accuracy']:.3f} | |",
        f"| clean images flagged | {s['flagged_clean']:.3f} | |",
        f"| median L2 / L∞ of the wins | {s['l2_median']:.3f} / {s['linf_median']:.3f} | |",
        "",
        "## The cascade",
        "",
        f"Won at the clean image, not attacked (f wrong and not flagged): {int((evaluation.result.by == CLEAN).sum())}.",
        f"Not attacked, as f alone resisted the same suite there (a win must fool f): {s['f_resists']}.",
        "",
        "| attack | attacked | won (new) | robust after | seconds | note |",
        "|---|---|---|---|---|---|",
        *(f"| {r['name']} | {r['attacked']} | {r['won']} | {r['robust_after']:.3f} | {r['seconds']:.1f} | {r['note']} |"
          for r in s["cascade"]),
        "",
        "## Checks",
        "",
        "| check | value | verdict | what it measures |",
        "|---|---|---|---|",
        *(f"| {name} | {c['value']:.3g} | {'**FAILED**' if c['failed'] else 'ok'} | {c['meaning']} |" for name, c in s["checks"].items()),
        "",
    ]
    return "\n".join(lines)


def write(evaluation: Evaluation, out: str | os.PathLike) -> Path:
    """``metrics.json``, ``provenance.json``, ``report.md`` and ``examples.pt`` (per image: won, by, x_adv, l2, linf, correct,
    flagged) in ``out``."""
    out = Path(out)
    result = evaluation.result
    save_json(evaluation.summary(), out / "metrics.json")
    save_json(provenance(), out / PROVENANCE)
    save_text(report(evaluation), out / "report.md")
    save_torch({"won": result.won, "by": result.by, "attacks": result.attacks, "x_adv": result.x_adv, "l2": result.l2,
                "linf": result.linf, "correct": evaluation.correct, "flagged": evaluation.flagged}, out / "examples.pt")
    return out


OPTIONS = {"defense": None, "norm": None, "eps": None, "n": None, "out": None, "targeted": "false", "suite": "standard",
           "inputs": "", "data": "data", "seed": "0", "batch_size": "100", "donors": "500", "device": "auto", "progress": "true",
           "trust_code": "false"}


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments into typed options, one clear error for anything else."""
    args = cli.key_values(argv, OPTIONS, "evaluate", __doc__)
    typed: dict[str, Any] = dict(args)
    for key, kind in (("eps", float), ("n", int), ("seed", int), ("batch_size", int), ("donors", int)):
        try:
            typed[key] = kind(args[key])
        except ValueError:
            raise SystemExit(f"evaluate: {key}={args[key]} must be a{'n integer' if kind is int else ' number'}") from None
    for key in ("targeted", "progress", "trust_code"):
        typed[key] = cli.flag(args, key, "evaluate")
    if args["norm"] not in ("linf", "l2"):
        raise SystemExit(f"evaluate: norm={args['norm']} is unknown; choose linf or l2")
    if not typed["eps"] > 0 or (args["norm"] == "linf" and typed["eps"] > 1):
        raise SystemExit(f"evaluate: eps={args['eps']} must be > 0 (at most 1 for linf: images lie in [0, 1])")
    if typed["n"] < 1 or typed["batch_size"] < 1 or typed["donors"] < 0:
        raise SystemExit("evaluate: n and batch_size must be at least 1, donors at least 0")
    typed["device"] = cli.device(args["device"], "evaluate")
    return typed


def recorded_data(dataset: str, data: str, seed: int) -> Any:
    """The data module of the data set a defense records (``conf/dataset/<name>.yaml``), its files under ``data``."""
    path = CONF_DIR / "dataset" / f"{dataset}.yaml"
    if not path.is_file():
        raise SystemExit(f"evaluate: the defense records the data set {dataset!r}, which has no conf/dataset/{dataset}.yaml; "
                         "pass inputs=<file.pt> with images and labels")
    cfg = OmegaConf.create({"paths": {"data_dir": str(Path(data).resolve())}, "seed": seed, "dataset": OmegaConf.load(path)})
    datamodule = hydra.utils.instantiate(cfg.dataset.datamodule)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def read_images(args: dict[str, Any], dataset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(images, labels, targets, donors)`` for the command line (module docstring)."""
    n = args["n"]
    if args["inputs"]:
        payload = load_torch(args["inputs"], "inputs")
        if not isinstance(payload, dict) or "images" not in payload or "labels" not in payload:
            raise SystemExit(f"evaluate: inputs={args['inputs']} must hold a dict with 'images' (N, C, H, W) and 'labels' (N,)")
        images, labels, targets = payload["images"][:n], payload["labels"][:n].long(), payload.get("targets")
        return images, labels, None if targets is None else targets[:n].long(), None
    datamodule = recorded_data(dataset, args["data"], args["seed"])
    test = datamodule.dataset("test")
    images, labels = stack(test, torch.arange(min(n, len(test))))
    val = datamodule.dataset("val")
    donors = stack(val, torch.arange(min(args["donors"], len(val))))[0] if args["donors"] else None
    return images, labels, None, donors


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        load_suite(args["suite"])
        defense = load_defense(args["defense"], device=args["device"], trust_code=args["trust_code"])
    except (UntrustedCode, ValueError, FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"evaluate: {err}") from None
    description = read_description(Path(args["defense"]))
    images, labels, targets, donors = read_images(args, description["dataset"])
    if args["targeted"] and targets is None:
        targets = random_targets(labels, int(description["num_classes"]), torch.Generator().manual_seed(args["seed"] + 1))
    evaluation = evaluate(defense, images, labels, norm=args["norm"], eps=args["eps"], targets=targets if args["targeted"] else None,
                          suite=args["suite"], seed=args["seed"], donors=donors, batch_size=args["batch_size"], progress=args["progress"])
    out = write(evaluation, args["out"])
    s = evaluation.summary()
    print(f"evaluate: {s['target']} under suite {s['suite']} at {s['norm']} ε={s['eps']:g}: success {s['success']:.3f}, robust accuracy "
          f"{s['robust_accuracy']:.3f} over {s['n']} images in {s['seconds']:.0f} s -> {out}")
    return out


if __name__ == "__main__":
    main()
