"""Orthogonal and selective PGD (Bryniarski et al. 2022) on a classifier guarded by detectors, L∞ and L2.

The loss of a guarded classifier has two parts, ``f``'s and the detectors' (``HingeEvasion``).
Their gradients often point against each other, and a step on their sum then undoes itself.
Orthogonal PGD steps on one part at a time with the other part's gradient projected out:

* while ``f`` is not fooled: ``g = ∇L_f − proj_{∇L_det} ∇L_f``, which fools ``f`` without
  changing the detectors' loss to first order;
* once ``f`` is fooled (its hinge satisfied): ``g = ∇L_det − proj_{∇L_f} ∇L_det``, which evades
  the detectors without undoing the misclassification.

Selective PGD takes the same two steps without the projections; ``joint`` is plain PGD on the sum.
Projections are per example: ``proj_v u = (⟨u, v⟩ / ‖v‖²) v``.

``support="nonzero"`` restricts the perturbation to the input's non-zero elements (MNIST's strokes): the
gradient, the random starts and so every iterate are zero wherever the clean input is zero. A
density model such as ``DET_PD``'s PixelCNN gives a near-certain probability to MNIST's all-zero
background, so a dense step, however small, costs many bits per moved background pixel; on the
strokes a change costs little. Where an input has no zero element the variant is the ordinary attack.

``update="adam"`` takes C&W's optimiser into the ball (Carlini & Wagner 2017, section V): Adam on a free
variable ``w`` that a smooth map sends into the ball, ``δ = ε·tanh(w)`` (L∞) or ``δ = ε·w·min(1, 1/‖w‖₂)``
(L2), then ``x + δ`` clipped to the box ``[0, 1]``. Two things differ from projected steepest steps. Adam's
steps shrink where the gradient is small or changes sign, where ``sign(g)`` moves every element by the
full step. And the clip is sticky: an element pushed past the box (MNIST's black background, pushed
below 0) has a zero gradient there and stays clean, while a projected iterate is put back on the
boundary and moves off it again at the next step. The attack so chooses its own sparse support, which
a density detector (``DET_PD``) prices far lower than a dense change.

``update="apgd"`` makes the attack step-size free in the manner of APGD (Croce & Hein 2020, algorithm 1): the
step ``η`` starts at ``2ε`` per image, a momentum of 0.75 mixes each projected step with the last one, and at
checkpoints ``w_j`` (``apgd_checkpoints``) the step halves and the iterate restarts from the image's best point
when fewer than ρ = 75% of the steps since the last checkpoint lowered the loss, or when neither the step nor
the best loss moved since then. ``step_size`` and the fixed halving schedule are not used.

Every iterate is judged by the real decision (the objective's ``success``). An image leaves the
batch at its first success, which it keeps, or when its loss reaches zero (its gradient is zero:
it cannot move); otherwise it keeps its iterate of lowest loss. Against a random target (``stop="loss"``) a
success of the averaged model does not decide a single draw, so an image moves on until its loss is zero. So an image's result does not
depend on which images share its batch. Restarts from random points of the ball rerun the images
not yet won.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.attacks.base import Attack, Norm, check_attack_inputs, input_gradients_only
from gcd_lightning.whitebox.objectives import HingeEvasion

MODES = ("joint", "orthogonal", "selective")
SUPPORTS = ("all", "nonzero")
UPDATES = ("steepest", "adam", "apgd")
STOPS = ("success", "loss")
STARTS = ("clean", "random")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-12
APGD_MOMENTUM, APGD_RHO, APGD_FIRST_STEP = 0.75, 0.75, 2.0  # α, ρ and η⁽⁰⁾/ε of Croce & Hein (2020)


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints ``w_j = ⌈p_j·N⌉`` for ``N = steps`` (Croce & Hein 2020, section 3.2), ``w_0 = 0`` excluded:
    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``, up to ``N`` (22, 41, 57, 70, 80, 87,
    93, 99 for N = 100, as AutoAttack's code counts them)."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    return sorted({min(steps, math.ceil(p * steps - 1e-9)) for p in fractions[1:]} - {0})


def project_out(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u − proj_v u`` per example (rows of the batch): the part of ``u`` orthogonal to ``v``.

    Where ``v`` is zero, ``u`` is returned unchanged.
    """
    flat_u, flat_v = u.flatten(1), v.flatten(1)
    squared = (flat_v * flat_v).sum(dim=1, keepdim=True)
    coefficient = torch.where(squared > 0, (flat_u * flat_v).sum(dim=1, keepdim=True) / squared.clamp_min(1e-30), 0.0)
    return (flat_u - coefficient * flat_v).view_as(u)


def ball_projection(delta: torch.Tensor, x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """``delta`` projected onto the ``norm`` ball of radius ``eps``, then into the box: ``x + delta ∈ [0, 1]``.

    L∞ clamps element-wise; L2 rescales each example to norm ``eps`` at most (the true projection
    onto the ball; clamping element-wise, as some reference code does, leaves a cube of radius
    ``eps·√d``). The box clamp only shrinks coordinates, so the result stays in the ball.
    """
    if norm is Norm.LINF:
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0) - x


def ascent_direction(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The steepest unit step for a gradient ``g``: ``sign(g)`` (L∞) or ``g/‖g‖₂`` (L2, zero stays zero)."""
    if norm is Norm.LINF:
        return g.sign()
    norms = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return g / norms.clamp_min(1e-12)


def ball_map(w: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """The smooth map of ``update="adam"``'s free variable into the ball: ``ε·tanh(w)`` (L∞), ``ε·w·min(1, 1/‖w‖₂)`` (L2)."""
    if norm is Norm.LINF:
        return eps * torch.tanh(w)
    norms = w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
    return eps * w / norms.clamp_min(1.0)


def ball_preimage(delta: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """A ``w`` with ``ball_map(w) = delta`` (up to the L∞ edge, pulled in by 1e-6 where tanh never gets)."""
    if norm is Norm.LINF:
        return torch.atanh((delta / eps).clamp(-1 + 1e-6, 1 - 1e-6))
    return delta / eps


def adam_direction(g: torch.Tensor, moments: tuple[torch.Tensor, torch.Tensor], t: int, norm: Norm
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Adam's descent direction at its step ``t`` (from 1) for gradient ``g``, and the updated moments.

    ``m̂ / (√v̂ + ε)`` with the bias-corrected first and second moments (Kingma & Ba 2015, algorithm 1):
    each element in about [-1, 1] in L∞, like ``sign(g)``; scaled to unit norm per example in L2.
    """
    (beta1, beta2), (m, v) = ADAM_BETAS, moments
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    direction = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + ADAM_EPS)
    return (direction if norm is Norm.LINF else ascent_direction(direction, Norm.L2)), (m, v)


def random_start(x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """A uniform point of the L∞ ball, or a point of the L2 ball (uniform direction, radius ``eps·U``), in the box."""
    if norm is Norm.LINF:
        delta = (torch.rand_like(x) * 2 - 1) * eps
    else:
        direction = ascent_direction(torch.randn_like(x), Norm.L2)
        delta = direction * eps * torch.rand(len(x), *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return ball_projection(delta, x, norm, eps)


class ApgdState:
    """Per-image state of APGD's step-size control (module docstring), for the images still in the batch."""

    def __init__(self, delta: torch.Tensor, eps: float, steps: int) -> None:
        n = len(delta)
        self.checkpoints = apgd_checkpoints(steps)
        self.eta = torch.full((n,), APGD_FIRST_STEP * eps, device=delta.device, dtype=delta.dtype)
        self.previous = delta.clone()
        self.best_delta, self.best_loss = delta.clone(), torch.full((n,), torch.inf, device=delta.device, dtype=delta.dtype)
        self.last_loss = torch.full_like(self.best_loss, torch.inf)
        self.improved = torch.zeros(n, device=delta.device)
        self.eta_at_checkpoint, self.best_at_checkpoint = self.eta.clone(), self.best_loss.clone()
        self.last_checkpoint = 0

    def keep(self, rows: torch.Tensor) -> None:
        """Only the images at ``rows`` (bool) stay in the batch."""
        for name in ("eta", "previous", "best_delta", "best_loss", "last_loss", "improved", "eta_at_checkpoint", "best_at_checkpoint"):
            setattr(self, name, getattr(self, name)[rows])

    def step(self, delta: torch.Tensor, g: torch.Tensor, loss: torch.Tensor, step: int, x: torch.Tensor, norm: Norm,
             eps: float) -> torch.Tensor:
        """The next ``delta`` from the current one, its descent gradient ``g`` and loss, at iteration ``step`` (from 0)."""
        shape = (-1, *([1] * (delta.dim() - 1)))
        if step > 0:
            self.improved += (loss < self.last_loss).float()
        self.last_loss = loss
        better = loss < self.best_loss
        self.best_loss, self.best_delta[better] = torch.where(better, loss, self.best_loss), delta[better]
        if step in self.checkpoints:
            span = step - self.last_checkpoint
            stalled = (self.improved < APGD_RHO * span) | ((self.eta == self.eta_at_checkpoint) & (self.best_loss == self.best_at_checkpoint))
            self.eta = torch.where(stalled, self.eta / 2, self.eta)
            delta = torch.where(stalled.view(shape), self.best_delta, delta)  # restart from the best point
            self.previous = torch.where(stalled.view(shape), self.best_delta, self.previous)
            self.improved.zero_()
            self.eta_at_checkpoint, self.best_at_checkpoint, self.last_checkpoint = self.eta.clone(), self.best_loss.clone(), step
        z = ball_projection(delta - self.eta.view(shape) * ascent_direction(g, norm), x, norm, eps)
        momentum = 1.0 if step == 0 else APGD_MOMENTUM
        following = ball_projection(delta + momentum * (z - delta) + (1 - momentum) * (delta - self.previous), x, norm, eps)
        self.previous = delta
        return following


class AdaptivePGD(Attack):
    """PGD on ``HingeEvasion`` in L∞ or L2, ``joint``, ``orthogonal`` or ``selective`` (module docstring).

    Args:
        model: a ``GuardedClassifier`` (outputs ``f``'s logits, then each detector's two).
        objective: the ``HingeEvasion`` of those outputs (κ, β, targeted, detector term).
        norm: ``"linf"`` or ``"l2"``.
        eps: the budget, > 0.
        steps: iterations per restart, ≥ 1.
        step_size: the step as a fraction of ``eps``; it halves after 50% and 75% of the steps.
        restarts: runs per image, ≥ 1; the first starts at ``x`` (``start="clean"``), the others at random points.
        mode: one of ``MODES``.
        targeted: reach ``target`` (must match the objective).
        support: ``"all"``, or ``"nonzero"``: perturb only the elements where the input is not zero.
        update: ``"steepest"``, projected steps ``sign(g)`` (L∞) or ``g/‖g‖₂`` (L2); ``"adam"``, Adam on
            the free variable of the module docstring, ``step_size`` its learning rate (``w`` in units of ``eps``);
            or ``"apgd"``, APGD's step-size control and momentum (``step_size`` unused).
        stop: ``"success"``, an image leaves at its first success; ``"loss"``, only at zero loss (every hinge met with
            its margin κ): for a random target, whose single draws a success of the averaged model does not decide.
        start: ``"clean"``, the first run starts at ``x``; ``"random"``, every run starts at a random point of the
            ball (a restart of another attack that already started at ``x`` with the same settings).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: HingeEvasion,
        norm: str,
        eps: float,
        steps: int = 100,
        step_size: float = 0.1,
        restarts: int = 1,
        mode: str = "orthogonal",
        targeted: bool = False,
        support: str = "all",
        update: str = "steepest",
        stop: str = "success",
        start: str = "clean",
    ) -> None:
        super().__init__(model, targeted, objective)
        if not isinstance(objective, HingeEvasion):
            raise ValueError("AdaptivePGD: the objective must be a HingeEvasion (it splits f's and the detectors' losses)")
        if objective.targeted != bool(targeted):
            raise ValueError(f"AdaptivePGD: targeted={targeted} but the objective has targeted={objective.targeted}")
        if mode not in MODES:
            raise ValueError(f"AdaptivePGD: unknown mode {mode!r}; choose one of {MODES}")
        if support not in SUPPORTS:
            raise ValueError(f"AdaptivePGD: unknown support {support!r}; choose one of {SUPPORTS}")
        if update not in UPDATES:
            raise ValueError(f"AdaptivePGD: unknown update {update!r}; choose one of {UPDATES}")
        if stop not in STOPS:
            raise ValueError(f"AdaptivePGD: unknown stop {stop!r}; choose one of {STOPS}")
        if start not in STARTS:
            raise ValueError(f"AdaptivePGD: unknown start {start!r}; choose one of {STARTS}")
        if not eps > 0 or not steps >= 1 or not step_size > 0 or not restarts >= 1:
            raise ValueError(
                f"AdaptivePGD: need eps > 0, steps >= 1, step_size > 0, restarts >= 1; "
                f"got eps={eps}, steps={steps}, step_size={step_size}, restarts={restarts}"
            )
        self.norm = Norm(norm)
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.restarts = int(restarts)
        self.mode = mode
        self.support = support
        self.update = update
        self.stop = stop
        self.start = start

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self._run(x, target if self.targeted else y)["x_adv"]

    def run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``perturb`` with what the failure indicators need, each per image (N rows).

        Returns ``x_adv``; ``success`` (bool, the real decision at ``x_adv``); ``loss`` (N,
        steps + 1), the hinge loss at every iterate of the first run (the last value repeated
        once the image has left the batch); ``silent`` (bool): the first gradient was
        zero or not finite although the loss was positive.
        """
        check_attack_inputs(x, y, target, self.targeted)
        if self.model.training:
            raise RuntimeError("attack: the model is in train mode; call model.eval() before attacking")
        with torch.enable_grad(), input_gradients_only(self.model):
            result = self._run(x, target if self.targeted else y)
        result["x_adv"] = result["x_adv"].detach().clamp_(0.0, 1.0)
        return result

    def _run(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(x)
        best_x, best_loss = x.clone(), torch.full((n,), torch.inf, device=x.device, dtype=x.dtype)
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        trace = torch.zeros(n, self.steps + 1, device=x.device, dtype=x.dtype)
        silent = torch.zeros(n, dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            rows = (~best_success).nonzero().flatten()
            if len(rows) == 0:
                break
            xs, ls = x[rows], labels[rows]
            clean = restart == 0 and self.start == "clean"
            delta = torch.zeros_like(xs) if clean else random_start(xs, self.norm, self.eps) * self._free(xs)
            w = delta if self.update != "adam" else ball_preimage(delta, self.norm, self.eps)  # the variable stepped
            moments = torch.zeros_like(xs), torch.zeros_like(xs)  # Adam's, per element
            apgd = ApgdState(delta, self.eps, self.steps) if self.update == "apgd" else None
            for step in range(self.steps + 1):
                w.requires_grad_(True)
                delta = w if self.update != "adam" else (xs + ball_map(w, self.norm, self.eps)).clamp(0.0, 1.0) - xs
                outputs = self.model(xs + delta)
                class_loss = self.objective.class_loss(outputs, ls)
                detector_loss = self.objective.detector_loss(outputs)
                total = class_loss + detector_loss
                success = self.objective.success(outputs.detach(), ls, self.targeted)
                better = (success & ~best_success[rows]) | ((success == best_success[rows]) & (total.detach() < best_loss[rows]))
                best_x[rows[better]] = (xs + delta).detach()[better]
                best_loss[rows[better]] = total.detach()[better]
                best_success[rows[better]] = success[better]
                if restart == 0:
                    trace[rows, step:] = total.detach()[:, None]
                moving = total.detach() > 0  # at zero loss the gradient is zero: it would not move
                if self.stop == "success":
                    moving &= ~success
                if step == self.steps or not bool(moving.any()):
                    break
                g = self._gradient(w, class_loss, detector_loss) * self._free(xs)
                if restart == 0 and step == 0:
                    flat = g.flatten(1)
                    silent[rows] = ((flat == 0).all(dim=1) | ~flat.isfinite().all(dim=1)) & (total.detach() > 0)
                with torch.no_grad():
                    halved = 0.5 ** ((step >= self.steps // 2) + (step >= 3 * self.steps // 4))
                    if self.update == "steepest":
                        w = ball_projection(w - self.eps * self.step_size * halved * ascent_direction(g.nan_to_num(0.0), self.norm),
                                            xs, self.norm, self.eps)
                    elif apgd is not None:
                        w = apgd.step(w.detach(), g.nan_to_num(0.0), total.detach(), step, xs, self.norm, self.eps)
                    else:
                        direction, moments = adam_direction(g.nan_to_num(0.0), moments, step + 1, self.norm)
                        w = w - self.step_size * halved * direction
                rows, xs, ls, w = rows[moving], xs[moving], ls[moving], w[moving]
                moments = moments[0][moving], moments[1][moving]
                if apgd is not None:
                    apgd.keep(moving)
        return {"x_adv": best_x, "success": best_success, "loss": trace, "silent": silent}

    def _free(self, x: torch.Tensor) -> torch.Tensor | float:
        """1 where the perturbation may be non-zero (``support``), as a mask of ``x``'s shape or the scalar 1."""
        return (x != 0).to(x.dtype) if self.support == "nonzero" else 1.0

    def _gradient(self, delta: torch.Tensor, class_loss: torch.Tensor, detector_loss: torch.Tensor) -> torch.Tensor:
        """The direction to descend: the joint gradient, or one part's, with the other's projected out."""
        if self.mode == "joint":
            (g,) = torch.autograd.grad((class_loss + detector_loss).sum(), delta)
            return g
        g_class, g_detector = (
            torch.autograd.grad(part.sum(), delta, retain_graph=True, allow_unused=True)[0] for part in (class_loss, detector_loss)
        )
        g_class = torch.zeros_like(delta) if g_class is None else g_class
        g_detector = torch.zeros_like(delta) if g_detector is None else g_detector
        fooled = (class_loss.detach() <= 0).view(-1, *([1] * (delta.dim() - 1)))
        if self.mode == "orthogonal":
            return torch.where(fooled, project_out(g_detector, g_class), project_out(g_class, g_detector))
        return torch.where(fooled, g_detector, g_class)


def run_adaptive(
    attack: AdaptivePGD,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    batch_size: int,
    seed: int,
    progress: bool = True,
    desc: str = "adaptive PGD",
) -> dict[str, torch.Tensor]:
    """``attack.run`` over mini-batches (batch ``i`` after ``torch.manual_seed(seed + i)``), shared by DDP ranks; on the CPU."""
    device = attack.device

    def batch(_: int, rows: slice) -> dict[str, torch.Tensor]:
        result = attack.run(x[rows].to(device), y[rows].to(device), None if target is None else target[rows].to(device))
        return {key: value.cpu() for key, value in result.items()}

    return distributed.map_batches(batch, len(x), batch_size, seed, progress, desc)
