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
False: the white-box stage leaves this detector out rather than report a gradient-free attack on
it as a result (a BPDA/EOT attack is future work).
"""

from __future__ import annotations

import torch
from torch import nn

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
        self.register_buffer("noise_quantiles", torch.zeros(QUANTILES))
        self.register_buffer("steps_quantiles", torch.zeros(QUANTILES))

    def criteria(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) noise flip share and (N,) steps to a random other class."""
        seeds = content_seeds(x)
        with torch.no_grad():
            logits = self.classifier(x)
            label = logits.argmax(dim=1)
            noise = torch.cat([torch.randn((self.noise_draws, *x.shape[1:]), generator=torch.Generator().manual_seed(s))
                               for s in seeds]).to(x.device) * self.sigma
            noisy = (x.repeat_interleave(self.noise_draws, dim=0) + noise).clamp(0, 1)
            changed = self.classifier(noisy).argmax(dim=1) != label.repeat_interleave(self.noise_draws)
            flips = changed.view(len(x), self.noise_draws).float().mean(dim=1)
            num_classes = logits.shape[1]
            offsets = torch.tensor([int(torch.randint(1, num_classes, (1,), generator=torch.Generator().manual_seed(s + 1)))
                                    for s in seeds], device=x.device)
        target = (label + offsets) % num_classes
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
