"""White-box evaluation: the L+1 construction, eq. 14, double backprop through DET_IS, BPDA + EOT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gcd_lightning.attacks import PGD, DDN, Norm, run_attack
from gcd_lightning.defense.base import Detector, Rectifier
from gcd_lightning.defense.detector import SubDetector
from gcd_lightning.defense.ensemble import entropy_select, is_flagged
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.defense.guided_masking import GuidedMasking
from gcd_lightning.whitebox import indicators
from gcd_lightning.intervals import mean_interval, rate_interval, wilson_interval
from gcd_lightning.defense.baselines.robust_training import Preprocessed
from gcd_lightning.whitebox.blend import BlendSearch, size
from gcd_lightning.whitebox.hopskipjump import HopSkipJump
from gcd_lightning.whitebox.models import GuardedClassifier, PurifiedClassifier, RandomizedGCD, Seeded
from gcd_lightning.whitebox.opgd import MODES, AdaptivePGD, ball_map, ball_preimage, ball_projection, project_out, run_adaptive
from gcd_lightning.whitebox.suite import LPlusOneView, within
from gcd_lightning.whitebox.objectives import (
    DetectorEvasion,
    HingeEvasion,
    detector_gaps,
    detector_hinge,
    ensemble_flags,
    combined_loss,
    combined_margins,
    detector_as_class_logits,
    detector_log_probabilities,
)

L = 4


def smooth_classifier(seed: int = 0) -> nn.Module:
    """A tiny classifier with a smooth activation, so that finite differences of G are meaningful.

    Its weights are scaled up and its hidden units centred on the middle of the pixel cube, so
    that all L classes occur on random images (a plain random init predicts one class everywhere).
    """
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, L))
    with torch.no_grad():
        f[1].weight.mul_(4.0)
        f[1].bias.copy_(-f[1].weight.sum(1) / 2)
        f[3].weight.mul_(4.0)
    return f.double().eval()


def sensitivity_detector(classifier: nn.Module, seed: int = 1) -> SubDetector:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
    return SubDetector(body, "is", optimizer=torch.optim.SGD, classifier=classifier).double().eval()


class FlaggingDetector(Detector):
    """A pixel detector that flags everything with near certainty but still has input gradients."""

    name = "org"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.linear = nn.Linear(16, 2).double()
        self.linear.bias.data = torch.tensor([-20.0, 20.0], dtype=torch.float64)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def flagging_detector() -> Detector:
    return FlaggingDetector()


def test_l_plus_one_prediction_is_the_detected_classifiers_decision():
    z_f = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])  # benign, flagged, tie (benign: p+ >= p-)
    z = detector_as_class_logits(z_f, p.log())
    assert z.shape == (3, L + 1)
    assert z.argmax(1).tolist() == [0, L, 0]
    # the natural classes keep f's cross entropy and margins; their maximum is log p+
    y = torch.tensor([1, 2, 3])
    assert F.cross_entropy(z[:, :L], y) == pytest.approx(F.cross_entropy(z_f, y).item())
    assert torch.allclose(z[:, :L].amax(1), p[:, 0].log())
    assert torch.allclose(z[:, L], p[:, 1].log())


def test_eq14_loss_and_margins_add_the_weighted_detector_loss():
    torch.manual_seed(0)
    z_f, det_logits, y = torch.randn(6, L), torch.randn(6, 2), torch.randint(0, L, (6,))
    log_p = F.log_softmax(det_logits, dim=1)
    z = detector_as_class_logits(z_f, log_p)
    beta = 2.5
    l_gcd = F.cross_entropy(det_logits, torch.zeros(6, dtype=torch.long), reduction="none")  # CE at "benign"
    expected = F.cross_entropy(z_f, y, reduction="none") - beta * l_gcd
    assert torch.allclose(combined_loss(z, y, beta), expected, atol=1e-6)
    v = combined_margins(z, y, beta)
    rows = torch.arange(6)
    for k in range(L):
        keep = y != k
        assert torch.allclose((v[rows, y] - v[:, k])[keep], (z_f[rows, y] - z_f[:, k] + beta * l_gcd)[keep], atol=1e-6)


def test_detector_evasion_success_needs_a_fooled_classifier_and_no_flag():
    z = detector_as_class_logits(
        torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1]]).log(),
    )
    y = torch.tensor([0, 0, 0])
    assert DetectorEvasion(L, 1.0, targeted=False).success(z, y, targeted=False).tolist() == [True, False, False]
    target = torch.tensor([1, 1, 1])
    assert DetectorEvasion(L, 1.0, targeted=True).success(z, target, targeted=True).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="beta"):
        DetectorEvasion(L, -1.0, targeted=False)


def test_ensemble_log_probabilities_follow_the_more_confident_detector():
    org = torch.tensor([[4.0, -4.0], [0.1, 0.0]])
    is_ = torch.tensor([[0.0, 0.2], [-5.0, 5.0]])
    log_p = detector_log_probabilities([org, is_])
    assert torch.allclose(log_p[0], F.log_softmax(org[0], 0)) and torch.allclose(log_p[1], F.log_softmax(is_[1], 0))


def test_attack_gradient_through_det_is_uses_double_backprop_and_matches_finite_differences():
    f = smooth_classifier()
    model = LPlusOneView(GuardedClassifier(f, [sensitivity_detector(f)]), L)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)

    def detector_term(x):
        return -model(x)[:, :L].amax(1)  # L_GCD through the L+1 outputs

    (grad,) = torch.autograd.grad(detector_term(x).sum(), x)
    assert grad.abs().sum() > 0
    assert torch.autograd.gradcheck(detector_term, (x,), eps=1e-6, atol=1e-5)
    # the part through dG/dx matters: with G detached from x, the gradient is zero
    det = model.guarded.detectors[0]
    g_detached = det.features(x.detach())
    (no_path,) = torch.autograd.grad(-F.log_softmax(det.body(g_detached), 1)[:, 0].sum() + 0 * x.sum(), x)
    assert no_path.abs().sum() == 0 and not torch.allclose(grad, no_path)


def test_bpda_eot_gradient_is_the_mean_rectifier_gradient_at_the_masks():
    f, f_rec = smooth_classifier(0), smooth_classifier(3)
    gcd = GCD(f, [flagging_detector(), sensitivity_detector(f)],
              GuidedMasking(f_rec, alpha=0.3, p=0.5, generator=torch.Generator().manual_seed(0)))
    model = RandomizedGCD(gcd, eot_samples=5)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1])
    (grad,) = torch.autograd.grad(F.nll_loss(model(x), y, reduction="sum"), x)
    # the same masks again, differentiated at the masked points and averaged over the draws (BPDA: dm/dx = I)
    gcd.rectifier.generator.manual_seed(0)
    result = gcd.detect(x.detach())
    masks = gcd.rectifier.mask(x, gcd.saliency(x.detach(), result.decided), 5).requires_grad_(True)
    probs = torch.softmax(f_rec(masks), 1).view(5, 2, L).mean(0)
    (expected,) = torch.autograd.grad(F.nll_loss(probs.log(), y, reduction="sum"), masks)
    assert grad.abs().sum() > 0
    assert torch.allclose(grad, expected.view(5, 2, 1, 4, 4).sum(0), atol=1e-6)
    assert not torch.equal(masks[:2], masks[2:4])  # EOT draws differ


def test_whitebox_attacks_raise_their_objective_and_evade_the_detector():
    """PGD and DDN on eq. 14 (the L+1 loss) against f + DET_IS: the loss rises, budgets hold, most inputs evade.

    (Success versus budget on the trained GCD is a reported figure, ``whitebox.budget.*``.)
    """
    f = smooth_classifier().float()
    model = LPlusOneView(GuardedClassifier(f, [sensitivity_detector(f).float()]), L).float()
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4)
    y = f(x).argmax(1)
    objective = DetectorEvasion(L, beta=1.0, targeted=False)
    with torch.no_grad():
        before = objective.loss(model(x), y)
    for eps in (0.05, 1.0):
        torch.manual_seed(0)
        x_adv = run_attack(PGD(model, eps=eps, nb_iter=30, eps_iter=eps / 8, objective=objective), x, y, progress=False)
        with torch.no_grad():
            assert objective.loss(model(x_adv), y).mean() > before.mean()
        assert (x_adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        assert objective.success(model(x_adv), y, targeted=False).float().mean() >= 0.5
    x_ddn = run_attack(DDN(model, steps=60, objective=objective), x, y, progress=False)
    with torch.no_grad():
        assert objective.success(model(x_ddn), y, targeted=False).float().mean() >= 0.5


def test_ensemble_is_evaded_exactly_when_the_gaps_sum_below_zero():
    torch.manual_seed(3)
    logits = torch.randn(2000, 4) * 3
    gaps = detector_gaps(logits)
    assert torch.equal(ensemble_flags(logits), gaps.sum(1) > 0)
    p_org, p_is = torch.softmax(logits[:, :2], 1), torch.softmax(logits[:, 2:], 1)
    assert torch.equal(ensemble_flags(logits), is_flagged(entropy_select(p_org, p_is)[0]))  # GCD.detect's rule
    assert not ensemble_flags(logits[:, :0]).any()  # no detector (NoDET) flags nothing


def test_both_detector_hinge_gives_a_gradient_to_the_detector_eq11_did_not_select():
    org = torch.tensor([[3.0, -3.0]], requires_grad=True)  # confident "benign": eq. 11 selects it
    det_is = torch.tensor([[0.0, 1.0]], requires_grad=True)  # flags the input, less confident: not selected
    assert not ensemble_flags(torch.cat([org, det_is], 1)).item()
    (old,) = torch.autograd.grad(-detector_log_probabilities([org, det_is])[:, 0].sum(), det_is)
    assert old.abs().sum() == 0  # the L+1 loss sees the selected detector only
    for term, kappa in (("each", 0.0), ("sum", 8.0)):
        (new,) = torch.autograd.grad(detector_hinge(torch.cat([org, det_is], 1), kappa, term).sum(), det_is)
        assert new.abs().sum() > 0, term
    objective = HingeEvasion(L, kappa=0.5, beta=1.0, targeted=False, term="each")
    outputs = torch.cat([torch.tensor([[0.0, 3.0, 0.0, 0.0]]), org.detach(), det_is.detach()], 1)
    assert objective.success(outputs, torch.tensor([0]), False).item()  # fooled, ensemble says benign
    assert objective.total_loss(outputs, torch.tensor([0])).item() == pytest.approx(1.5)  # only DET_IS: relu(1 + 0.5)
    assert torch.equal(objective.loss(outputs, torch.tensor([0])), -objective.total_loss(outputs, torch.tensor([0])))


def test_projections_are_orthogonal_and_respect_the_balls():
    torch.manual_seed(0)
    u, v = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    w = project_out(u, v)
    assert (w * v).flatten(1).sum(1).abs().max() < 1e-5
    assert torch.equal(project_out(u, torch.zeros_like(v)), u)
    x = torch.rand(5, 1, 4, 4)
    for norm, eps in ((Norm.L2, 0.7), (Norm.LINF, 0.1)):
        delta = ball_projection(torch.randn(5, 1, 4, 4) * 3, x, norm, eps)
        size = delta.flatten(1).norm(dim=1) if norm is Norm.L2 else delta.flatten(1).abs().amax(1)
        assert (size <= eps + 1e-6).all() and ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    # L2: a true projection keeps the direction and lands on the sphere (inside the box), unlike an element-wise clamp
    mid = torch.full((1, 1, 4, 4), 0.5)
    d = torch.randn(1, 1, 4, 4)
    projected = ball_projection(d * 10 / d.norm(), mid, Norm.L2, 0.4)
    assert projected.norm().item() == pytest.approx(0.4, rel=1e-5) and torch.allclose(projected / 0.4, d / d.norm(), atol=1e-6)


@pytest.mark.parametrize("update", ["steepest", "adam", "apgd"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_adaptive_pgd_stays_in_budget_and_evades_f_plus_det_is(mode, norm, eps, update):
    f = smooth_classifier().float()
    model = GuardedClassifier(f, [sensitivity_detector(f).float()])
    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    y = f(x).argmax(1)
    objective = HingeEvasion(L, kappa=0.0, beta=1.0, targeted=False, term="each")
    attack = AdaptivePGD(model, objective, norm, eps, steps=30, restarts=2, mode=mode, update=update)
    result = run_adaptive(attack, x, y, None, batch_size=16, seed=0, progress=False)
    delta = (result["x_adv"] - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    assert (size <= eps + 1e-5).all() and ((result["x_adv"] >= 0) & (result["x_adv"] <= 1)).all()
    with torch.no_grad():
        judged = objective.success(model(result["x_adv"]), y, False)
    assert torch.equal(judged, result["success"])  # the recorded success is the real decision at x_adv
    assert judged.float().mean() >= 0.5
    assert result["loss"].shape == (32, 31) and not result["silent"].any()


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_adaptive_pgd_on_the_nonzero_support_never_moves_a_zero_pixel_and_still_evades(norm, eps):
    f = smooth_classifier().float()
    model = GuardedClassifier(f, [sensitivity_detector(f).float()])
    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4) * (torch.rand(32, 1, 4, 4) > 0.4)  # about 40% zero pixels ("background")
    y = f(x).argmax(1)
    objective = HingeEvasion(L, kappa=0.0, beta=1.0, targeted=False)
    attack = AdaptivePGD(model, objective, norm, eps, steps=30, restarts=2, mode="orthogonal", support="nonzero")
    result = run_adaptive(attack, x, y, None, batch_size=16, seed=0, progress=False)
    assert torch.equal(result["x_adv"][x == 0], x[x == 0])  # the first run, the random restarts and every step
    delta = (result["x_adv"] - x).flatten(1)
    assert ((delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)) <= eps + 1e-5).all()
    with torch.no_grad():
        assert torch.equal(objective.success(model(result["x_adv"]), y, False), result["success"])
    assert result["success"].float().mean() >= 0.5
    with pytest.raises(ValueError, match="unknown support 'sparse'"):
        AdaptivePGD(model, objective, norm, eps, support="sparse")
    with pytest.raises(ValueError, match="unknown update 'lbfgs'"):
        AdaptivePGD(model, objective, norm, eps, update="lbfgs")


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_ball_map_stays_in_the_ball_and_its_preimage_inverts_it(norm, eps):
    torch.manual_seed(0)
    w = torch.randn(6, 1, 4, 4) * 3
    size = ball_map(w, Norm(norm), eps).flatten(1)
    assert ((size.norm(dim=1) if norm == "l2" else size.abs().amax(1)) <= eps + 1e-6).all()
    delta = ball_projection(torch.randn(6, 1, 4, 4), torch.full((6, 1, 4, 4), 0.5), Norm(norm), eps * 0.9)
    assert torch.allclose(ball_map(ball_preimage(delta, Norm(norm), eps), Norm(norm), eps), delta, atol=1e-5)


class MovedPixels(nn.Module):
    """A density-like detector: its "adversarial" logit counts the faintly lit pixels (0 < v < 0.45), about
    one per pixel moved off a black background; clean images (pixels 0 or ≥ 0.5) score 0 against a benign 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = (torch.tanh(x.relu() / 0.02) * torch.sigmoid((0.45 - x) / 0.02)).flatten(1).sum(1)
        return torch.stack([torch.full_like(moved, 2.0), moved], dim=1)


def test_adams_update_keeps_the_background_black_where_sign_steps_light_it():
    """The sticky box of ``update="adam"`` (module docstring of ``opgd``): a background pixel pushed below 0 stays
    at 0, so against a detector that counts moved background pixels it evades more often than sign steps."""
    f = smooth_classifier().float()
    model = GuardedClassifier(f, [MovedPixels()]).eval()
    torch.manual_seed(0)
    x = (0.5 + 0.5 * torch.rand(64, 1, 4, 4)) * (torch.rand(64, 1, 4, 4) > 0.5)  # strokes on a black background
    y = f(x).argmax(1)
    objective = HingeEvasion(L, kappa=0.0, beta=1.0, targeted=False)
    with torch.no_grad():
        assert not ensemble_flags(model(x)[:, L:]).any()  # no clean image is flagged
    runs = {update: run_adaptive(AdaptivePGD(model, objective, "linf", 0.3, steps=30, restarts=2, mode="joint", update=update),
                                 x, y, None, batch_size=32, seed=0, progress=False) for update in ("steepest", "adam")}
    kept = {update: (r["x_adv"][x == 0] == 0).float().mean().item() for update, r in runs.items()}
    won = {update: r["success"].float().mean().item() for update, r in runs.items()}
    assert kept["adam"] >= 0.97 and kept["steepest"] <= 0.92
    assert won["adam"] >= won["steepest"] + 0.05


class Rounded(nn.Module):
    """A purifier that is not differentiable: every pixel snapped to 0 or 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.round()


class Noisy(nn.Module):
    """A random purifier: uniform noise of ±0.2, clipped to the box."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + (torch.rand_like(x) - 0.5) * 0.4).clamp(0, 1)


def test_purified_classifier_passes_the_purifier_with_bpda():
    f = smooth_classifier()
    model = PurifiedClassifier(Preprocessed(f, Rounded()), eot_samples=1)
    x = torch.rand(5, 1, 4, 4, dtype=torch.double, requires_grad=True)
    out = model(x)
    z = x.detach().round().requires_grad_(True)
    expected = torch.log_softmax(f(z), dim=1)
    assert torch.allclose(out, expected)  # the forward pass is the real defended classifier's
    weights = torch.randn(5, L, dtype=torch.double)
    (g,) = torch.autograd.grad((out * weights).sum(), x)
    (g_at_purified,) = torch.autograd.grad((expected * weights).sum(), z)
    assert torch.allclose(g, g_at_purified) and g.abs().sum() > 0  # backward: the purifier is the identity (BPDA)


def test_purified_classifier_averages_its_draws_eot_and_refuses_a_classifier_without_purifier():
    f = smooth_classifier()
    model = PurifiedClassifier(Preprocessed(f, Noisy()), eot_samples=3)
    x = torch.rand(4, 1, 4, 4, dtype=torch.double)
    torch.manual_seed(5)
    out = model(x)
    torch.manual_seed(5)
    draws = Noisy()(x.repeat(3, 1, 1, 1))
    expected = torch.softmax(f(draws), dim=1).view(3, 4, L).mean(dim=0).log()
    assert torch.allclose(out, expected)
    with pytest.raises(ValueError, match="has no purifier; attack its network itself"):
        PurifiedClassifier(Preprocessed(f), eot_samples=2)
    with pytest.raises(ValueError, match="eot_samples must be at least 1"):
        PurifiedClassifier(Preprocessed(f, Noisy()), eot_samples=0)


def test_pgd_through_bpda_fools_a_classifier_behind_a_purifier_that_masks_its_gradient():
    """Rounding has a zero gradient everywhere, so PGD on the defended classifier as it is cannot move; through BPDA
    it fools it, within the budget, judged by the real defended classifier."""
    f = smooth_classifier().float()
    defense = Preprocessed(f, Rounded())
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4).round()  # binary images: rounding keeps them
    y = defense(x).argmax(1)
    masked = run_attack(PGD(defense, eps=0.6, nb_iter=20, eps_iter=0.1, rand_init=False), x, y, batch_size=64, progress=False)
    bpda = run_attack(PGD(PurifiedClassifier(defense, 1), eps=0.6, nb_iter=20, eps_iter=0.1, rand_init=False), x, y,
                      batch_size=64, progress=False)
    assert torch.equal(masked, x)  # no gradient: no step
    assert (bpda - x).abs().amax() <= 0.6 + 1e-6
    with torch.no_grad():
        assert (defense(bpda).argmax(1) != y).float().mean() >= 0.5


class RowCounter(nn.Module):
    """``model`` counting the images it is run on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def test_adaptive_pgd_drops_won_images_and_gives_each_image_the_same_result_in_any_batch():
    f = smooth_classifier().double()
    model = RowCounter(GuardedClassifier(f, [sensitivity_detector(f).double()])).eval()
    torch.manual_seed(0)
    x = torch.rand(24, 1, 4, 4, dtype=torch.float64)
    y = f(x).argmax(1)
    attack = AdaptivePGD(model, HingeEvasion(L, kappa=0.5, beta=1.0, targeted=False), "linf", 0.3, steps=40, mode="orthogonal")
    batched = run_adaptive(attack, x, y, None, batch_size=24, seed=0, progress=False)
    assert 0 < batched["success"].sum() < 24  # some images are won early, some never
    assert model.rows < 24 * 41  # the won ones left the batch
    alone = [run_adaptive(attack, x[i : i + 1], y[i : i + 1], None, batch_size=1, seed=0, progress=False) for i in range(24)]
    assert torch.equal(batched["success"], torch.cat([a["success"] for a in alone]))
    assert torch.allclose(batched["x_adv"], torch.cat([a["x_adv"] for a in alone]), atol=1e-12)
    assert torch.allclose(batched["loss"], torch.cat([a["loss"] for a in alone]), atol=1e-12)


def test_orthogonal_step_is_orthogonal_to_the_other_terms_gradient():
    f = smooth_classifier()
    model = GuardedClassifier(f, [sensitivity_detector(f)])
    objective = HingeEvasion(L, kappa=0.5, beta=1.0, targeted=False)
    attack = AdaptivePGD(model, objective, "linf", 0.3, mode="orthogonal")
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = f(x).argmax(1)
    delta = torch.zeros_like(x, requires_grad=True)
    outputs = model(x + delta)
    class_loss, detector_loss = objective.class_loss(outputs, y), objective.detector_loss(outputs)
    g = attack._gradient(delta, class_loss, detector_loss)
    g_det = torch.autograd.grad(detector_loss.sum(), delta, retain_graph=True)[0]
    assert (class_loss > 0).all()  # f not yet fooled: the class step, with the detector's gradient projected out
    assert (g * g_det).flatten(1).sum(1).abs().max() < 1e-9 and g.abs().sum() > 0


def test_wilson_interval_matches_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert rate_interval(torch.tensor([True] * 8 + [False] * 2))[0] == pytest.approx(0.8)
    mean, low, high = mean_interval(torch.tensor([0.0, 1.0] * 50))
    assert mean == 0.5 and (low, high) == pytest.approx((0.5 - 1.96 * 0.50252 / 10, 0.5 + 1.96 * 0.50252 / 10), abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_failure_indicators_and_tramers_check():
    loss = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.5], [5.0, 5.0, 5.0, 5.0, 5.0]])
    # the lost image's loss still falls at the end: (1.0 - 0.5) / 1.0 over the last step
    assert indicators.incomplete_optimisation(loss, torch.tensor([False, True])) == pytest.approx(0.5)
    assert indicators.incomplete_optimisation(loss, torch.tensor([True, False])) == 0.0  # a flat loss: converged
    assert indicators.incomplete_optimisation(loss, torch.tensor([True, True])) == 0.0
    assert indicators.silent_share(torch.tensor([True, False, False, False])) == 0.25
    refs = [("a", 0.3, 0.9), ("b", 0.1, 0.99)]
    check = indicators.tramer_check(0.95, 0.6, refs)  # at 0.3 "a" was evaluated: 0.95 asks for more than it
    assert check["radius"] == pytest.approx(0.3) and check["reference"] == 0.9 and check["plausible"] == 0.0
    assert indicators.tramer_check(0.95, 0.2, refs)["plausible"] == 1.0  # at 0.1 "b" reaches 0.99
    # at 0.15 nothing was evaluated: "a" at 0.3 does at least 0.9 there, which bounds nothing, so no verdict
    assert math.isnan(indicators.tramer_check(0.95, 0.3, refs)["plausible"])
    assert math.isnan(indicators.tramer_check(0.5, 2.0, [])["plausible"])


def linear_pair(seed: int = 0, side: int = 4) -> tuple[nn.Module, torch.Tensor, float]:
    """A two-class linear classifier ``[0, w·x − b]`` on ``side``×``side`` images, with its ``w`` and ``b``."""
    torch.manual_seed(seed)
    d = side * side
    w = torch.randn(d)
    b = float(w.sum() / 2)  # the boundary through the cube's centre
    f = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    with torch.no_grad():
        f[1].weight.copy_(torch.stack([torch.zeros(d), w]))
        f[1].bias.copy_(torch.tensor([0.0, -b]))
    return f.eval(), w, b


def test_blend_search_finds_the_linear_boundary_toward_the_nearest_donors():
    """Against the analytic crossing ``t* = (b − w·x) / (w·(d − x))`` of a linear boundary on each segment, over
    the ``candidates`` nearest donors of the other class (by L2): the result is the nearest crossing, within the
    bisection's tolerance, wins for the real decision, and stays inside the budget."""
    f, w, b = linear_pair()
    model = GuardedClassifier(f, []).eval()
    objective = HingeEvasion(2, kappa=0.0, beta=1.0, targeted=False)
    torch.manual_seed(1)
    pool = torch.rand(400, 1, 4, 4)
    score = pool.flatten(1) @ w - b
    x, donors = pool[score < 0][:20], pool[score > 0][:150]  # class 0 to attack, class-1 donors (every one accepted)
    y = torch.zeros(len(x), dtype=torch.long)
    steps, candidates = 14, 3
    result = BlendSearch(model, objective, donors, "l2", 100.0, candidates, steps).perturb(x, y)
    with torch.no_grad():
        assert objective.success(model(result), y, False).all()
    found = (result - x).flatten(1).norm(dim=1)
    distance = torch.cdist(x.flatten(1), donors.flatten(1))
    nearest = distance.topk(candidates, dim=1, largest=False).indices
    diff = donors[nearest].flatten(2) - x.flatten(1)[:, None]  # (N, candidates, 16)
    t_star = (b - x.flatten(1) @ w)[:, None] / (diff @ w)
    expected = (t_star * diff.norm(dim=2)).min(dim=1).values
    assert torch.allclose(found, expected, atol=diff.norm(dim=2).max().item() * 2.0**-steps + 1e-5)
    # a budget below the crossing: nothing is won, the images come back unchanged
    small = BlendSearch(model, objective, donors, "l2", float(expected.min()) * 0.9, candidates, steps).perturb(x, y)
    assert torch.equal(small, x)
    # in L∞, the budget holds and only images whose crossing fits are won
    linf = BlendSearch(model, objective, donors, "linf", 0.2, candidates, steps).perturb(x, y)
    assert ((linf - x).flatten(1).abs().amax(1) <= 0.2 + 1e-6).all()
    with torch.no_grad():
        won = objective.success(model(linf), y, False)
    assert won.any() and not won.all() and torch.equal(won, (linf != x).flatten(1).any(1))


def test_hopskipjump_walks_from_the_blend_to_the_nearest_point_of_a_linear_boundary():
    """On a linear boundary the nearest win is known: ``|w·x − b| / ‖w‖₂`` in L2 and ``/ ‖w‖₁`` in L∞ (the points stay
    inside the box here). From ``BlendSearch``'s wins, over three times farther, the walk comes within a few percent (L2)
    and within half again (L∞, the median), never below the minimum, never farther than its start; cut at a
    budget (the suite's ``within``), it wins exactly the images whose walk ended inside."""
    f, w, b = linear_pair(side=8)
    model = GuardedClassifier(f, []).eval()
    objective = HingeEvasion(2, kappa=0.0, beta=1.0, targeted=False)
    torch.manual_seed(1)
    pool = 0.3 + 0.4 * torch.rand(600, 1, 8, 8)
    score = pool.flatten(1) @ w - b
    x, donors = pool[score < 0][:30], pool[score > 0][:200]
    y = torch.zeros(len(x), dtype=torch.long)
    start = BlendSearch(model, objective, donors, "linf", 1.0)
    blend = start.perturb(x, y)
    for norm, dual in (("l2", w.norm()), ("linf", w.abs().sum())):
        nearest = (b - x.flatten(1) @ w) / dual
        torch.manual_seed(2)
        walk = HopSkipJump(start, norm, iterations=20).perturb(x, y)
        found, began = size(x, walk, Norm(norm)), size(x, blend, Norm(norm))
        with torch.no_grad():
            assert objective.success(model(walk), y, False).all()
        assert (found >= nearest * (1 - 1e-3)).all() and (found <= began + 1e-6).all()
        ratio = found / nearest
        assert (began / nearest).median() > 3 and (ratio.max() < 1.15 if norm == "l2" else ratio.median() < 1.5), (norm, ratio)
    budget = float(found.median())  # the suite's cut at the budget (the walk itself is minimum-norm)
    inside = found <= budget
    assert torch.equal(within(x, walk, Norm.LINF, budget), inside) and 0 < inside.sum() < len(x)
    with pytest.raises(ValueError, match="init_evals <= max_evals"):
        HopSkipJump(start, "l2", init_evals=200, max_evals=100)


def test_blend_search_reads_the_detector_and_the_target():
    """A detector that flags every input leaves no accepted donor (nothing moves); a targeted search ends in the
    target class; donors of another image shape are refused."""
    f = smooth_classifier().float()
    torch.manual_seed(0)
    x, donors = torch.rand(16, 1, 4, 4), torch.rand(300, 1, 4, 4)
    y = f(x).argmax(1)
    flagged = GuardedClassifier(f, [flagging_detector().float()]).eval()
    objective = HingeEvasion(L, kappa=0.0, beta=1.0, targeted=False)
    assert torch.equal(BlendSearch(flagged, objective, donors, "linf", 1.0).perturb(x, y), x)
    target = (y + 1) % L
    targeted = HingeEvasion(L, kappa=0.0, beta=1.0, targeted=True)
    result = BlendSearch(GuardedClassifier(f, []).eval(), targeted, donors, "linf", 1.0, targeted=True).perturb(x, y, target)
    moved = (result != x).flatten(1).any(1)
    assert moved.float().mean() >= 0.5 and torch.equal(f(result[moved]).argmax(1), target[moved])
    with pytest.raises(ValueError, match="donors of shape"):
        BlendSearch(flagged, objective, torch.rand(5, 1, 3, 3), "linf", 1.0).perturb(x, y)
    with pytest.raises(ValueError, match="non-empty float"):
        BlendSearch(flagged, objective, torch.zeros(0, 1, 4, 4), "linf", 1.0)


class TemperedRectifier(Rectifier):
    """A user's own rectifier: ``f_rec`` with a learned temperature, deterministic and differentiable."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.temperature = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(x) / self.temperature


def test_any_rectifier_is_attacked_end_to_end_through_its_own_graph():
    f, f_rec = smooth_classifier(0), smooth_classifier(3)
    rectifier = TemperedRectifier(f_rec)
    gcd = GCD(f, [flagging_detector(), sensitivity_detector(f)], rectifier)
    model = RandomizedGCD(gcd, eot_samples=4)  # not random: one draw, not four
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    p = gcd.detect(x).p
    expected = p[:, 0:1] * torch.softmax(f(x), 1) + p[:, 1:2] * torch.softmax(f_rec(x) / 2.0, 1)
    assert torch.allclose(model(x).exp(), expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: model(v), (x,), eps=1e-6, atol=1e-5)  # the gradient is the rectifier's own
    with pytest.raises(ValueError, match="no rectifier"):
        RandomizedGCD(GCD(f, [flagging_detector(), sensitivity_detector(f)]), eot_samples=2)


def test_seeded_makes_a_random_classifier_one_function_and_leaves_the_global_stream_alone():
    class Dropout(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * (torch.rand(len(x), 3) > 0.5)

    seeded, x = Seeded(Dropout(), seed=7), torch.rand(5, 1, 2, 2)
    torch.manual_seed(0)
    first = seeded(x)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(seeded(x), first) and torch.equal(torch.rand(1), after)  # the same answer, the same stream after
    assert not torch.equal(Dropout()(x), Dropout()(x))


def test_adaptive_pgd_against_a_random_target_moves_on_until_its_hinge_is_met():
    """``stop="loss"``: an image does not leave at its first success of the averaged model, whose single draws that does not
    decide, but when its margin reaches κ; ``stop="success"`` leaves it just past the boundary."""
    f, _, _ = linear_pair(seed=3)
    model = GuardedClassifier(f, [])
    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    y = f(x).argmax(1)
    objective = HingeEvasion(2, kappa=1.0, beta=1.0, targeted=False)
    margins = {}
    for stop in ("success", "loss"):
        attack = AdaptivePGD(model, objective, "linf", 1.0, steps=200, step_size=0.01, mode="joint", stop=stop)
        x_adv = attack.run(x, y)["x_adv"]
        with torch.no_grad():
            logits = f(x_adv)
        margins[stop] = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, 1 - y[:, None]).squeeze(1)
    assert (margins["success"] < 0).all() and (margins["loss"] <= -1.0 + 1e-4).all()  # every image won, the hinge met
    assert margins["success"].max() > -1.0  # the first success lies nearer the boundary than κ
    with pytest.raises(ValueError, match="unknown stop"):
        AdaptivePGD(model, objective, "linf", 1.0, stop="never")
