"""The adaptive suite (whitebox/suite.py) and ``gcd_lightning.evaluate``: APGD's step-size control, the cascade, the
decision-based fallback behind the unbounded check, the checks, the API and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from gcd_lightning.attacks.base import Norm
from gcd_lightning.defense.base import Detector
from gcd_lightning.evaluate import evaluate, main as evaluate_main, write
from gcd_lightning.whitebox.models import GuardedClassifier
from gcd_lightning.whitebox.objectives import HingeEvasion, ensemble_flags
from gcd_lightning.whitebox.opgd import AdaptivePGD, ApgdState, apgd_checkpoints, run_adaptive
from gcd_lightning.whitebox.suite import (
    CLEAN, LPlusOneView, Suite, SuiteAttack, guarded_target, load_suite, run_suite, suite_names,
)
from test_trust import tiny_defense
from test_whitebox import L, linear_pair, sensitivity_detector, smooth_classifier


def test_apgd_checkpoints_are_autoattacks():
    # AutoAttack's apgd counts 22 steps, then intervals shrinking by 3 down to 6: 22, 41, 57, 70, 80, 87, 93, 99
    assert apgd_checkpoints(100)[:-1] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(100)[-1] == 100 and apgd_checkpoints(1) == [1]


def test_apgd_halves_its_step_and_restarts_from_the_best_point_when_the_loss_stalls():
    x = torch.full((2, 1, 2, 2), 0.5)
    state = ApgdState(torch.zeros_like(x), 0.1, 100)
    assert torch.allclose(state.eta, torch.tensor(0.2))  # 2ε
    g = torch.ones_like(x)
    delta = torch.zeros_like(x)
    best = None
    for step in range(23):
        # image 0 improves at every step; image 1's loss rises after step 0: its best point is the start
        loss = torch.tensor([10.0 - step, 10.0 + step])
        if step == 0:
            best = delta.clone()
        delta = state.step(delta, g, loss, step, x, Norm.LINF, 0.1)
    # checkpoint 22: image 0 improved at every step (keeps η), image 1 never (η halves, back at its best point)
    assert torch.allclose(state.eta, torch.tensor([0.2, 0.1]))
    assert (delta[1] - best[1]).abs().max() <= 0.1 + 1e-6 and delta[0].abs().max() == pytest.approx(0.1)


def test_apgd_is_at_least_as_strong_as_fixed_step_pgd_on_a_classifier():
    f = smooth_classifier().float()
    model = GuardedClassifier(f, [])
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4)
    y = f(x).argmax(1)
    won = {}
    for update in ("steepest", "apgd"):
        attack = AdaptivePGD(model, HingeEvasion(L, 1.0, 1.0, False), "linf", 0.08, steps=30, mode="joint", update=update)
        won[update] = run_adaptive(attack, x, y, None, 64, 0, False)["success"]
    assert 0 < won["steepest"].sum() < 64
    assert won["apgd"].sum() >= won["steepest"].sum()


class CountingModel(nn.Module):
    """A model that counts the rows it is asked about (which images an attack still works on)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


def detected_pair():
    f = smooth_classifier().float()
    return f, GuardedClassifier(f, [sensitivity_detector(f).float()])


def test_the_cascade_attacks_only_what_is_still_robust_and_logs_each_attacks_new_wins():
    f, model = detected_pair()
    torch.manual_seed(0)
    x = torch.rand(40, 1, 4, 4)
    y = f(x).argmax(1)
    suite = Suite("test", (SuiteAttack("weak", mode="joint", steps=2), SuiteAttack("strong", mode="orthogonal", steps=30),
                           SuiteAttack("again", mode="selective", steps=30)))
    counting = CountingModel(model).eval()
    target = guarded_target("det_is", model, L, False, attacked=counting)
    result = run_suite(target, x, y, suite, "linf", 0.3)
    weak, strong, again = result.log
    assert (result.by != CLEAN).all()  # f right at every clean image: all attacked
    assert weak.attacked == 40 and strong.attacked == 40 - weak.won and again.attacked == strong.attacked - strong.won
    assert [r.robust_after for r in result.log] == sorted([r.robust_after for r in result.log], reverse=True)
    assert result.log[-1].robust_after == pytest.approx(1 - result.won.float().mean().item())
    for i, record in enumerate(result.log):
        assert (result.by == i).sum() == record.won
    assert torch.equal(result.won, result.by >= 0)
    assert result.won.float().mean() >= 0.5 and (result.linf[result.won] <= 0.3 + 1e-6).all()
    assert torch.equal(target.judge(result.x_adv, y), result.won)  # every win is the real decision at its example
    assert torch.equal(result.x_adv[~result.won], x[~result.won])
    assert result.unbounded >= 0.99


def test_a_guarded_target_does_not_attack_what_f_alone_resists_and_loses_nothing_by_it():
    f, model = detected_pair()
    torch.manual_seed(0)
    x = torch.rand(40, 1, 4, 4)
    y = f(x).argmax(1)
    suite = Suite("test", (SuiteAttack("joint", mode="joint", steps=20), SuiteAttack("orthogonal", mode="orthogonal", steps=20)))
    alone = run_suite(guarded_target("nodet", GuardedClassifier(f, []), L, False), x, y, suite, "linf", 0.06)
    resists = ~alone.won
    assert 0 < resists.sum() < 40  # a budget where f alone resists some images, not all
    assert alone.log[1].note == "skipped: without detectors it repeats joint"  # orthogonal on f alone is joint, step for step
    counting = CountingModel(model).eval()
    pruned = run_suite(guarded_target("det_is", model, L, False, attacked=counting), x, y, suite, "linf", 0.06, f_resists=resists)
    full = run_suite(guarded_target("det_is", model, L, False), x, y, suite, "linf", 0.06)
    assert pruned.log[0].attacked == 40 - int(resists.sum())  # clean f is right everywhere: the rest all attacked
    assert torch.equal(pruned.f_resists, resists) and not (pruned.won & resists).any()
    assert not (full.won & resists).any()  # a win must fool f: the full cascade wins none of them either
    assert torch.equal(pruned.won, full.won)  # and each image's attack does not depend on its batch: the same verdict
    with pytest.raises(ValueError, match="f_resists must be a \\(40,\\) bool"):
        run_suite(guarded_target("det_is", model, L, False), x, y, suite, "linf", 0.06, f_resists=resists.float())


class Quantised(nn.Module):
    """``f`` on pixels rounded to quarters: its input gradient is zero almost everywhere (masked)."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f((x * 4).round() / 4)


class NoDetector(Detector):
    name = "none"

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, -1.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 2) + 0 * x.flatten(1)[:, :1]


def test_a_masked_gradient_fails_the_unbounded_check_and_the_decision_based_fallback_wins():
    f, _, _ = linear_pair()
    masked = GuardedClassifier(Quantised(f), [NoDetector()])
    torch.manual_seed(0)
    x = torch.rand(30, 1, 4, 4)
    y = masked(x)[:, :2].argmax(1)
    donors = torch.rand(200, 1, 4, 4)
    suite = load_suite({"name": "t", "attacks": [{"name": "apgd", "steps": 10}, {"name": "blend", "kind": "blend", "fallback": True},
                                                 {"name": "walk", "kind": "boundary", "steps": 3, "fallback": True}]})
    result = run_suite(guarded_target("det_none", masked, 2, False), x, y, suite, "l2", 3.0, donors=donors)
    apgd, blend, walk = result.log
    assert apgd.won == 0 and result.silent == 1.0  # no gradient: the gradient attack cannot move
    assert result.unbounded < 0.99
    assert blend.attacked == 30 and blend.won > 0  # the decision-based attacks then run on what is left
    assert walk.attacked == 30 - blend.won
    assert (result.l2[result.won] <= 3.0 + 1e-5).all() and result.won.float().mean() >= 0.5
    without = run_suite(guarded_target("det_none", masked, 2, False), x, y, suite, "l2", 3.0)  # no donors: said, not run
    assert without.log[1].note.startswith("skipped: no donors") and not without.won.any()


def test_suites_are_configs_with_fixed_settings_and_bad_ones_are_refused(tmp_path):
    assert {"standard", "plus", "rand"} <= set(suite_names())
    standard = load_suite("standard")
    assert standard.attacks[0].update == "apgd" and [a.fallback for a in standard.attacks][-2:] == [True, True]
    assert load_suite("rand").eot_samples > 0
    with pytest.raises(ValueError, match="suite=nope: no such suite"):
        load_suite("nope")
    with pytest.raises(ValueError, match="mode='sideways' is unknown"):
        load_suite({"name": "x", "attacks": [{"name": "a", "mode": "sideways"}]})
    with pytest.raises(ValueError, match="unknown keys \\['step_size'\\]"):
        load_suite({"name": "x", "attacks": [{"name": "a", "step_size": 0.1}]})
    with pytest.raises(ValueError, match="first attack must be a gradient attack"):
        load_suite({"name": "x", "attacks": [{"name": "b", "kind": "blend", "fallback": True}]})
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\nattacks:\n  - {name: only, mode: selective, steps: 5}\n")
    assert load_suite(own).attacks[0].mode == "selective"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_defense(tmp_path_factory.mktemp("defense") / "defense")


def test_evaluate_a_defense_folder_its_detector_alone_and_the_classifier_alone(folder):
    from gcd_lightning import load_defense

    gcd = load_defense(folder)
    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 28, 28), torch.randint(0, 10, (12,))
    quick = Suite("quick", (SuiteAttack("apgd", steps=5),))
    whole = evaluate(folder, x, y, norm="linf", eps=0.3, suite=quick)
    assert whole.target == "gcd" and whole.detectors == ["org", "is"]
    s = whole.summary()
    assert s["n"] == 12 and 0 <= s["robust_accuracy"] <= 1 - s["success"] + 1e-9
    already = whole.result.by == CLEAN  # f wrong and not flagged at the clean image: won without an attack
    assert already.any() and (~whole.correct[already]).all() and (~whole.flagged[already]).all()
    assert whole.result.won[~whole.correct & ~whole.flagged].all()
    assert torch.equal(whole.robust, whole.correct & ~whole.flagged & ~whole.result.won)
    alone = evaluate((gcd.classifier, [gcd.detectors[1]]), x, y, norm="linf", eps=0.3, suite=quick)
    assert alone.target == "det_is"
    nodet = evaluate(gcd.classifier, x, y, norm="l2", eps=2.0, suite=quick, targets=(y + 1) % 10)
    assert nodet.target == "nodet" and nodet.targeted and not nodet.flagged.any()
    assert (nodet.result.l2 <= 2.0 + 1e-5).all()
    assert {c.name for c in whole.checks} == {"silent", "incomplete", "unbounded", "noise", "random", "tramer"}


def test_evaluate_command_line_writes_metrics_report_and_examples(folder, tmp_path):
    torch.manual_seed(1)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    torch.save({"images": x, "labels": y}, tmp_path / "inputs.pt")
    suite = tmp_path / "quick.yaml"
    suite.write_text("name: quick\nattacks:\n  - {name: apgd, steps: 3}\n  - {name: apgd_t, steps: 3, classes: 2}\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gcd_lightning.evaluate", f"defense={folder}", "norm=linf", "eps=0.2", "n=5",
                           f"inputs={tmp_path / 'inputs.pt'}", f"suite={suite}", f"out={out}", "progress=false"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 5 and {"success", "robust_accuracy", "success_ci", "cascade", "checks"} <= set(metrics)
    assert [r["name"] for r in metrics["cascade"]][:1] == ["apgd"]
    examples = torch.load(out / "examples.pt", weights_only=True)
    assert examples["x_adv"].shape == (5, 1, 28, 28) and examples["won"].float().mean().item() == pytest.approx(metrics["success"])
    assert ((examples["x_adv"] - x[:5]).abs().flatten(1).amax(1) <= 0.2 + 1e-6).all()
    assert "## The cascade" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["norm=l3", "eps=0.3"], "norm=l3 is unknown"),
    (["norm=linf", "eps=2"], "eps=2 must be > 0 \\(at most 1 for linf"),
    (["norm=linf", "eps=0.3", "suite=nope"], "suite=nope: no such suite"),
    (["norm=linf", "eps=0.3", "colour=red"], "unknown argument 'colour=red'"),
])
def test_evaluate_command_line_refuses_bad_arguments_with_one_line(folder, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        evaluate_main([f"defense={folder}", "n=2", f"out={tmp_path}", *args])


def test_evaluate_refuses_an_untrusted_folder(folder, tmp_path):
    import shutil

    import yaml

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    description = yaml.safe_load((copy / "defense.yaml").read_text())
    description["rectifier"]["spec"]["extra"] = {"_target_": "os.system", "command": "touch pwned"}
    (copy / "defense.yaml").write_text(yaml.safe_dump(description))
    with pytest.raises(SystemExit, match=r"evaluate: .*rectifier\.spec\.extra\._target_ = 'os\.system'"):
        evaluate_main([f"defense={copy}", "norm=linf", "eps=0.3", "n=2", f"out={tmp_path}"])


def test_the_rand_suite_attacks_gcd_end_to_end_and_judges_its_draws(folder):
    from gcd_lightning import load_defense

    gcd = load_defense(folder)
    torch.manual_seed(2)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    rand = Suite("rand", (SuiteAttack("apgd_eot", term="each", steps=3),), eot_samples=2)
    result = evaluate(gcd, x, y, norm="linf", eps=0.3, suite=rand)
    assert result.target == "gcd_end_to_end" and result.result.log[0].attacked <= 4
    assert not result.flagged.any()  # end to end, GCD answers every image
    from gcd_lightning.evaluate import gcd_draws

    assert torch.equal(result.correct, (gcd_draws(gcd, x, 100) == y).float().mean(0) > 0.5)
    assert torch.equal(result.result.won[result.result.by == CLEAN], ~result.correct[result.result.by == CLEAN])
    with pytest.raises(ValueError, match="give a GCD with its rectifier"):
        evaluate(gcd.classifier, x, y, norm="linf", eps=0.3, suite=rand)
    write(result, folder.parent / "rand_out")
    assert json.loads((folder.parent / "rand_out" / "metrics.json").read_text())["target"] == "gcd_end_to_end"


def test_the_minimum_norm_attack_wins_inside_the_l2_budget_and_is_skipped_in_linf():
    f, model = detected_pair()
    torch.manual_seed(3)
    x = torch.rand(30, 1, 4, 4)
    y = f(x).argmax(1)
    suite = Suite("ddn", (SuiteAttack("apgd", steps=1), SuiteAttack("ddn", kind="ddn", steps=60)))
    target = guarded_target("det_is", model, L, False)
    result = run_suite(target, x, y, suite, "l2", 1.0)
    assert result.log[1].won > 0 and (result.l2[result.won] <= 1.0 + 1e-5).all()
    assert torch.equal(target.judge(result.x_adv, y), result.won)
    in_linf = run_suite(target, x, y, suite, "linf", 0.1)
    assert in_linf.log[1].note == "skipped: an L2 attack, the budget is L∞" and in_linf.log[1].attacked == 0


def test_the_unbounded_check_runs_the_gradient_attacks_in_turn_until_they_reach_every_image():
    f, model = detected_pair()
    torch.manual_seed(4)
    x = torch.rand(30, 1, 4, 4)
    y = f(x).argmax(1)
    target = guarded_target("det_is", model, L, False)
    weak = SuiteAttack("weak", mode="joint", steps=1, update="steepest")
    alone = run_suite(target, x, y, Suite("weak", (weak,)), "linf", 0.001)
    assert alone.unbounded < 0.99  # one step of 0.1 at L∞ 1 reaches few
    both = run_suite(target, x, y, Suite("both", (weak, SuiteAttack("strong", mode="orthogonal", steps=50))), "linf", 0.001)
    assert both.unbounded >= 0.99 and not both.won.any()  # the second reaches them at L∞ 1, nothing at 0.001


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 1.5)])
def test_the_paper_suite_runs_the_papers_attack_on_the_l_plus_one_view(norm, eps):
    """suite=paper: PGD (L∞) or DDN (L2) on eq. 14's loss over the L+1 view; wins judged by the real decision, in budget,
    and the L+1 view flags exactly where the detector does."""
    f, model = detected_pair()
    torch.manual_seed(5)
    x = torch.rand(30, 1, 4, 4)
    y = f(x).argmax(1)
    view = LPlusOneView(model, L)
    z, guarded = view(x), model(x)
    assert z.shape == (30, L + 1) and torch.equal(z.argmax(1) == L, ensemble_flags(guarded[:, L:]))
    paper = load_suite("paper")
    assert [a.kind for a in paper.attacks] == ["paper"] and "paper" in suite_names()
    target = guarded_target("det_is", model, L, False)
    result = run_suite(target, x, y, paper, norm, eps)
    assert result.log[0].won > 0 and torch.equal(target.judge(result.x_adv, y), result.won)
    assert ((result.linf if norm == "linf" else result.l2)[result.won] <= eps * (1 + 1e-5) + 1e-6).all()
    assert math.isnan(result.silent) and result.unbounded >= result.won.float().mean().item()  # reran at L∞ 1
    alone = run_suite(guarded_target("nodet", GuardedClassifier(f, []), L, False), x, y, paper, norm, eps)  # no detector
    assert alone.won.float().mean() >= result.won.float().mean()


class Brightness(Detector):
    """A user's own detector, defined outside the package: flags images brighter on average than a threshold."""

    name = "bright"

    def forward(self, x):
        gap = (x.mean(dim=(1, 2, 3)) - 0.55) * 40
        return torch.stack([-gap, gap], dim=1)


def test_evaluate_takes_f_with_a_fitted_baseline_or_a_users_own_detector(folder):
    """The same API on f + DET_MDS (fitted as the baseline stage fits it) and on f + a Detector subclass of the user's."""
    from torch.utils.data import TensorDataset

    from gcd_lightning import load_defense
    from gcd_lightning.defense.baselines import FitData
    from gcd_lightning.defense.baselines.mahalanobis import Mahalanobis

    f = load_defense(folder).classifier
    torch.manual_seed(0)
    train = TensorDataset(torch.rand(40, 1, 28, 28), torch.arange(40) % 10)
    mds = Mahalanobis(f, (1, 28, 28), noise_grid=(0.0,), fit_images=40)
    mds.fit(FitData(clean=torch.rand(20, 1, 28, 28), adversarial=torch.rand(20, 1, 28, 28) * 0.5 + 0.5,
                    clean_val=torch.rand(20, 1, 28, 28), train=train, batch_size=20))
    x, y = torch.rand(10, 1, 28, 28) * 0.9, torch.randint(0, 10, (10,))
    quick = Suite("quick", (SuiteAttack("apgd", steps=5),))
    for detector in (mds.eval(), Brightness()):
        result = evaluate((f, [detector]), x, y, norm="linf", eps=0.1, suite=quick)
        assert result.target == f"det_{detector.name}" and result.detectors == [detector.name]
        won = result.result.won & (result.result.by >= 0)  # attacked and won: judged by f and this detector's own decision
        assert (result.result.linf[won] <= 0.1 + 1e-6).all()
        assert torch.equal(result.robust, result.correct & ~result.flagged & ~result.result.won)
    assert not evaluate((f, [Brightness()]), x * 0 + 0.9, y, norm="linf", eps=0.1, suite=quick).result.won.any()  # all flagged


class DeadAtTheImage(nn.Module):
    """Two classes: 0 with a constant logit, 1 rising with the pixels' sum only beyond ``threshold`` (a ReLU): at images
    summing below it, class 1's logit is flat (no gradient), so an attack toward class 1 must start elsewhere."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.slope = nn.Parameter(torch.tensor(10.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rise = torch.relu(x.flatten(1).sum(1) - self.threshold) * self.slope
        return torch.stack([torch.ones_like(rise), rise], dim=1)


def test_on_a_targeted_goal_the_targeted_attack_restarts_at_random_where_the_first_run_started_at_the_image():
    """A targeted row gives the goal: ``apgd_targeted``'s run from ``x`` would repeat ``apgd_joint``'s step for step; it
    starts at a random point of the ball instead, and wins images whose gradient at ``x`` is flat."""
    torch.manual_seed(6)
    x = torch.rand(40, 1, 4, 4) * 0.5 + 0.25
    x = x * 8.0 / x.flatten(1).sum(1).view(-1, 1, 1, 1)  # every image sums to 8, 0.3 below the threshold
    f = DeadAtTheImage(8.3)
    y, goal = torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)
    suite = load_suite({"name": "restart", "attacks": [{"name": "apgd_joint"}, {"name": "apgd_targeted", "classes": 9}]})
    result = run_suite(guarded_target("nodet", GuardedClassifier(f, []), 2, True), x, y, suite, "linf", 0.3, goal=goal)
    joint, targeted = result.log
    assert joint.won == 0  # from x: a flat logit, nothing to climb
    assert targeted.attacked == 40 and targeted.won >= 5  # from random starts past the threshold, then up
    assert (result.linf[result.won] <= 0.3 + 1e-6).all()
