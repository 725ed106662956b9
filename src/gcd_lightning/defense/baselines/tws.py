"""``TurningWeakness`` (``DET_TWS``; Hu, Yu, Guo, Chao & Weinberger 2019): two criteria of natural images.

1. *Robust to random noise*: ``f``'s label of a natural image survives Gaussian noise; that of an
   adversarial image, which sits just across a boundary, often does not. Statistic: the share of
   ``noise_draws`` noisy copies whose label differs from ``f(x)``.
2. *Close to every other class*: a natural image reaches a random other class within a few steps of
   a targeted attack; an adversarial image made robust to noise (criterion 1) has been pushed away
   from the boundaries and needs more. Statistic: the number of steps of a targeted L∞ gradient-sign
   attack (step ``step``, at most ``max_steps``) to a random target class.

An image is flagged when either statistic is unusual for clean images. Each is turned into its rank
among the clean validation images (``rank``, from ``QUANTILES`` of them), the score is the larger
of the two ranks, and the threshold is set on that score at ``fpr``. Our choices where the paper
leaves them open: each image's random target is drawn from a generator seeded by its content, so
a score does not depend on the batch it is in; σ and the step are the config's.

Neither statistic has a useful gradient (label counts and step counts), so ``differentiable`` is
False; white-box attacks reach through ``TurningWeaknessSurrogate`` (BPDA/EOT, as the critics of
such defenses attack them) while the real detector judges.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.baselines.scored import FitData, ScoredDetector, in_batches
from gcd_lightning.defense.sensitivity import input_gradients_enabled

QUANTILES = 201


def rank(values: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """The share of clean validation statistics strictly below each value, from their ``quantiles`` (in [0, 1]):
    a value no clean image exceeds, such as no label flip at all, ranks 0."""
    return torch.searchsorted(quantiles.contiguous(), values.contiguous().to(quantiles.dtype)).to(values.dtype) / len(quantiles)


def content_seeds(x: torch.Tensor) -> list[int]:
    """One seed per image from its pixels (the same image gets the same seed in any batch)."""
    return [int(v) % (2**31 - 1) for v in (x.flatten(1).double() * 1e6).sum(dim=1).round().tolist()]


class TurningWeakness(ScoredDetector):
    """``DET_TWS``: noise robustness and steps to a random class, each ranked among clean images.

    Args:
        classifier: the protected classifier ``f`` (by reference, not a submodule).
        sigma: standard deviation of the Gaussian noise of criterion 1.
        noise_draws: noisy copies per image.
        step: L∞ step of the targeted attack of criterion 2.
        max_steps: its most steps (an image that never reaches the target counts ``max_steps + 1``).
        fpr: false-positive rate of the threshold on clean validation images.
    """

    name = "tws"
    differentiable = False

    def __init__(self, classifier: nn.Module, sigma: float = 0.1, noise_draws: int = 32, step: float = 0.01,
                 max_steps: int = 50, fpr: float = 0.05) -> None:
        super().__init__(fpr)
        if sigma <= 0 or noise_draws < 1 or step <= 0 or max_steps < 1:
            raise ValueError(f"TurningWeakness: sigma, step > 0 and noise_draws, max_steps >= 1, got "
                             f"{sigma}, {step}, {noise_draws}, {max_steps}")
        object.__setattr__(self, "classifier", classifier.eval())
        self.sigma, self.noise_draws, self.step, self.max_steps = sigma, noise_draws, step, max_steps
        self.memo: dict[str, tuple[float, ...]] = {}  # criteria by image bytes (``criteria``)
        self.register_buffer("noise_quantiles", torch.zeros(QUANTILES))
        self.register_buffer("steps_quantiles", torch.zeros(QUANTILES))

    def surrogate(self) -> TurningWeaknessSurrogate:
        return TurningWeaknessSurrogate(self)

    def random_targets(self, label: torch.Tensor, num_classes: int, seeds: list[int]) -> torch.Tensor:
        """Criterion 2's random other class of each image, drawn from its content seed."""
        offsets = torch.tensor([int(torch.randint(1, num_classes, (1,), generator=torch.Generator().manual_seed(s + 1)))
                                for s in seeds], device=label.device)
        return (label + offsets) % num_classes

    def criteria(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) noise flip share and (N,) steps to a random other class.

        Both depend on nothing but the image and ``f`` (its noise and target are seeded by its content),
        so each image's are computed once and remembered by the image's bytes (``memo``, kept in the
        cache by the pipeline): the transfer matrices of every attack's run score the same test images.
        """
        keys = [hashlib.sha1(image.detach().cpu().numpy().tobytes()).hexdigest() for image in x]
        new = [k for k, key in enumerate(keys) if key not in self.memo]
        if new:
            for key, flips, steps in zip([keys[k] for k in new], *self.compute_criteria(x[new])):
                self.memo[key] = (flips.item(), steps.item())
        flips, steps = zip(*(self.memo[key] for key in keys))
        return torch.tensor(flips, device=x.device), torch.tensor(steps, device=x.device)

    def compute_criteria(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``criteria`` of every image of ``x``, computed."""
        seeds = content_seeds(x)
        with torch.no_grad():
            logits = self.classifier(x)
            label = logits.argmax(dim=1)
            noise = torch.cat([torch.randn((self.noise_draws, *x.shape[1:]), generator=torch.Generator().manual_seed(s))
                               for s in seeds]).to(x.device) * self.sigma
            noisy = (x.repeat_interleave(self.noise_draws, dim=0) + noise).clamp(0, 1)
            changed = self.classifier(noisy).argmax(dim=1) != label.repeat_interleave(self.noise_draws)
            flips = changed.view(len(x), self.noise_draws).float().mean(dim=1)
        target = self.random_targets(label, logits.shape[1], seeds)
        steps = torch.full((len(x),), float(self.max_steps + 1), device=x.device)
        x_adv = x.detach().clone()
        with input_gradients_enabled():
            for t in range(1, self.max_steps + 1):
                x_adv.requires_grad_(True)
                loss = nn.functional.cross_entropy(self.classifier(x_adv), target, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = (x_adv.detach() - self.step * grad.sign()).clamp(0, 1)
                with torch.no_grad():
                    reached = (self.classifier(x_adv).argmax(dim=1) == target) & (steps > self.max_steps)
                steps[reached] = float(t)
                if not (steps > self.max_steps).any():
                    break
        return flips, steps

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.ranked(*self.criteria(x))

    def ranked(self, flips: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The larger of the two criteria's ranks among the clean validation images."""
        return torch.maximum(rank(flips, self.noise_quantiles), rank(steps, self.steps_quantiles))

    def fit(self, data: FitData) -> dict[str, float]:
        """The quantiles of both statistics over the clean validation images (no adversarial example
        needed), then the threshold on the same images' scores: the criteria are computed once."""
        both = in_batches(lambda x: torch.stack(self.criteria(x), dim=1), data.clean_val, data.batch_size, self.threshold.device)
        flips, steps = both.double().unbind(dim=1)
        levels = torch.linspace(0, 1, QUANTILES, dtype=torch.float64)
        self.noise_quantiles.copy_(torch.quantile(flips, levels))
        self.steps_quantiles.copy_(torch.quantile(steps, levels))
        summary = {"clean_noise_flips": flips.mean().item(), "clean_steps": steps.mean().item()}
        return {**summary, **self.calibrate(self.ranked(flips.float(), steps.float()))}


class TurningWeaknessSurrogate(Detector):
    """A differentiable stand-in for ``DET_TWS`` (BPDA/EOT): both criteria as smooth estimates on their own scales.

    1. Noise flips: the expected share of noisy copies that leave ``f``'s label, ``1 − p_ŷ(x + noise)``
       averaged over ``noise_draws`` fresh Gaussian draws (EOT).
    2. Steps to the random class: ``1 + margin / (step · ‖∇margin‖₁)``, the steps a sign attack needs at
       its first-order rate, with ``margin = z_ŷ − z_target`` (the gradient norm is held constant, BPDA).
    Each is compared with the clean value at which its rank passes ``DET_TWS``'s threshold (from the
    fitted quantiles, so nothing new is fitted; half a unit above, ``cut``) and scaled by the clean range; the adversarial logit is
    the smooth maximum of the two, as the detector flags an image when either criterion is unusual.

    Args:
        tws: the fitted ``TurningWeakness`` (by reference).
    """

    name = "tws_surrogate"

    def __init__(self, tws: TurningWeakness) -> None:
        super().__init__()
        object.__setattr__(self, "tws", tws)

    def cut(self, quantiles: torch.Tensor, resolution: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Where a criterion's rank passes the threshold, half its ``resolution`` (one draw's share, one step) above
        that clean value, as the real statistic moves in such units; and the clean range (at least ``resolution``)."""
        at = min(int(self.tws.threshold.item() * len(quantiles)), len(quantiles) - 1)
        return quantiles[at] + resolution / 2, (quantiles[-1] - quantiles[0]).clamp_min(resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tws, f = self.tws, self.tws.classifier
        logits = f(x)
        label = logits.argmax(dim=1).detach()
        noisy = (x.repeat_interleave(tws.noise_draws, dim=0) + tws.sigma * torch.randn(
            (len(x) * tws.noise_draws, *x.shape[1:]), device=x.device)).clamp(0, 1)
        kept = torch.softmax(f(noisy), dim=1).gather(1, label.repeat_interleave(tws.noise_draws)[:, None])
        flips = 1 - kept.view(len(x), tws.noise_draws).mean(dim=1)
        target = tws.random_targets(label, logits.shape[1], content_seeds(x.detach()))
        margin = logits.gather(1, label[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
        with input_gradients_enabled():
            probe = x.detach().clone().requires_grad_(True)
            out = f(probe)
            (grad,) = torch.autograd.grad((out.gather(1, label[:, None]) - out.gather(1, target[:, None])).sum(), probe)
        rate = tws.step * grad.flatten(1).abs().sum(dim=1) + 1e-12
        steps = 1 + margin.clamp_min(0) / rate
        (flip_cut, flip_range), (step_cut, step_range) = (self.cut(tws.noise_quantiles, 1 / tws.noise_draws),
                                                          self.cut(tws.steps_quantiles, 1.0))
        z = torch.stack([(flips - flip_cut) / flip_range, (steps - step_cut) / step_range], dim=1)
        return torch.stack([torch.zeros_like(flips), torch.logsumexp(4 * z, dim=1) / 4], dim=1)
