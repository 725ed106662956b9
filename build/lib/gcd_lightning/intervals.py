"""95% confidence intervals for the rates we report (success rates, accuracies)."""

from __future__ import annotations

import math

import torch

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: two-sided 95% intervals."""


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval (Wilson 1927) for a binomial rate ``successes / n``.

    ``center ± half`` with ``center = (p̂ + z²/2n) / (1 + z²/n)`` and
    ``half = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/4n²)``. Unlike the normal (Wald) interval it
    stays inside [0, 1] and is not empty at a rate of 0 or 1, which white-box success rates
    often are. ``n = 0`` gives ``(nan, nan)``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return math.nan, math.nan
    rate = successes / n
    denominator = 1 + z * z / n
    center = (rate + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def rate_interval(hits: torch.Tensor) -> tuple[float, float, float]:
    """``(rate, low, high)`` of a boolean (N,) tensor: its mean and Wilson's 95% interval."""
    n, k = hits.numel(), int(hits.sum())
    low, high = wilson_interval(k, n)
    return (k / n if n else math.nan), low, high


def mean_interval(per_item: torch.Tensor, z: float = Z95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of per-image rates in [0, 1] (N,): a normal 95% interval for the mean.

    For a randomised defense judged over several draws, ``per_item`` holds each image's success
    over the draws; the images are the sampling unit, so the interval covers both the choice of
    images and the defense's randomness. Clipped to [0, 1]; one image gives a zero-width interval.
    """
    values = per_item.double().flatten()
    n = values.numel()
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = values.mean().item()
    half = z * values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else 0.0
    return mean, max(0.0, mean - half), min(1.0, mean + half)
