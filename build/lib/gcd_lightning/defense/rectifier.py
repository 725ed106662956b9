"""The guided random mask of the rectifier (eq. 12-13) and the data it is fine-tuned on.

The saliency of an input is the magnitude of the gradient of the deciding detector's loss,
``|∂L_DET/∂x|`` (section 3.2). Pixels whose saliency exceeds a per-image threshold (eq. 12) are
suspects; each suspect is replaced, with probability ``p``, by a random value drawn from the
image's own pixel distribution (eq. 13).

Colour images (the paper only describes the single-channel case, footnote 4):

* eq. 12 treats a pixel as a location: its saliency is the largest ``|∂L_DET/∂x|`` over its
  channels, the threshold is taken per image over all locations, and the mask has shape
  (N, 1, H, W). A suspect location is replaced in all its channels at once, so no partially
  altered colour survives next to the replaced ones.
* eq. 13 draws the replacement of each channel from ``N(mean, std)`` of that channel of that
  image, so replaced values follow the colour statistics of the image.
For a single-channel image both choices are exactly the paper's rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from gcd_lightning.defense.sensitivity import input_gradients_enabled

PIXEL_LEVELS = 255
"""Replacement values are integers in [0, 255] (eq. 13), i.e. multiples of 1/255 in pixel space."""


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise a ``ValueError`` unless ``x`` is a batch of images (N, C, H, W)."""
    if x.dim() != 4:
        raise ValueError(f"{name}: expected images of shape (N, C, H, W), got {tuple(x.shape)}")


def check_fraction(value: float, name: str) -> None:
    """Raise a ``ValueError`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def detector_saliency(
    detector: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """``|∂L_DET/∂x|`` (N, C, H, W): the saliency that guides the mask (section 3.2, eq. 12).

    ``L_DET`` is the cross entropy of the detector's logits (N, 2) at ``target``, by default the
    detector's own decision ``argmax`` (adversarial for the inputs that it flagged); it is summed
    over the batch, so each example gets its own gradient. For ``DET_IS`` the gradient flows
    through the input sensitivity ``G(x)`` back to ``x`` (double backprop): a ``SubDetector``
    builds that graph whenever its input requires grad, which it does here. The result is
    detached and works under ``no_grad`` and inference mode too.
    """
    check_images(x)
    with input_gradients_enabled():
        inputs = x.detach().clone().requires_grad_(True)
        logits = detector(inputs)
        if logits.shape != (x.shape[0], 2):
            raise ValueError(
                f"detector_saliency: expected detector logits of shape ({x.shape[0]}, 2), got {tuple(logits.shape)}"
            )
        labels = logits.argmax(dim=1) if target is None else target
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, inputs)
    return grad.abs()


def guided_saliency(
    detectors: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    decided: torch.Tensor,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """The saliency of each example from the detector that decided it (section 3.2).

    ``decided`` (N,) holds the index into ``detectors`` of the detector adopted by eq. 11 for each
    example (``GCD.detect``). ``target`` (N,) optionally fixes the detector label of ``L_DET``
    (see ``detector_saliency``).
    """
    check_images(x)
    if decided.shape != (x.shape[0],) or decided.dtype != torch.long:
        raise ValueError(
            f"guided_saliency: decided must be an int64 tensor of shape ({x.shape[0]},), "
            f"got {decided.dtype} {tuple(decided.shape)}"
        )
    saliency = torch.zeros_like(x)
    for k, detector in enumerate(detectors):
        chosen = decided == k
        if chosen.any():
            saliency[chosen] = detector_saliency(detector, x[chosen], None if target is None else target[chosen])
    return saliency


def saliency_threshold(saliency: torch.Tensor, alpha: float) -> torch.Tensor:
    """The suspect pixels of eq. 12: ``|∂L/∂x_ab| > α·(G_max − G_min) + G_min``, per image.

    Args:
        saliency: (N, C, H, W) detector gradients; their magnitude is taken here. A location's
            saliency is the maximum over its channels (see the module docstring).
        alpha: the share of the saliency range below the threshold; 0 selects every location
            above the image's minimum, 1 selects none.

    Returns:
        (N, 1, H, W) bool mask of suspect locations. An image of constant saliency has none.
    """
    check_images(saliency, "saliency")
    check_fraction(alpha, "saliency_threshold: alpha")
    per_location = saliency.abs().amax(dim=1, keepdim=True)
    flat = per_location.flatten(1)
    g_min = flat.amin(dim=1).view(-1, 1, 1, 1)
    g_max = flat.amax(dim=1).view(-1, 1, 1, 1)
    return per_location > alpha * (g_max - g_min) + g_min


def random_mask(
    x: torch.Tensor,
    suspect: torch.Tensor,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace each suspect pixel with probability ``p`` by a random pixel value (eq. 13).

    ``u ~ Bernoulli(p)`` is drawn per entry of ``suspect``; where ``u = 1`` the pixel becomes
    ``x_ran ~ N(mean, std)`` of the pixels of its image and channel (the paper's ``N(σ, μ)``
    with ``σ, μ`` named the other way round), quantised to the 256 levels ``k/255`` and clipped
    to [0, 1]. Every other pixel is returned unchanged.

    Args:
        x: (N, C, H, W) images in [0, 1].
        suspect: bool mask of shape (N, 1, H, W) (locations: all channels replaced together, as
            ``saliency_threshold`` returns) or (N, C, H, W) (each entry on its own).
        p: the Bernoulli probability of replacing a suspect pixel.
        generator: the random source, for reproducible masks; the global one when ``None``.
    """
    check_images(x)
    check_fraction(p, "random_mask: p")
    n, c, h, w = x.shape
    if suspect.dtype != torch.bool or suspect.shape not in ((n, 1, h, w), (n, c, h, w)):
        raise ValueError(
            f"random_mask: suspect must be a bool mask of shape ({n}, 1, {h}, {w}) or ({n}, {c}, {h}, {w}), "
            f"got {suspect.dtype} {tuple(suspect.shape)}"
        )
    std, mean = torch.std_mean(x, dim=(2, 3), correction=0, keepdim=True)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_ran = ((mean + std * noise) * PIXEL_LEVELS).round().div(PIXEL_LEVELS).clamp(0.0, 1.0)
    u = torch.rand(suspect.shape, generator=generator, device=x.device) < p
    return torch.where(suspect & u, x_ran, x)


def masked_duplicates(
    x_adv: torch.Tensor,
    saliency: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    p: float,
    k: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fine-tuning set ``X_ran`` of the rectifier: ``k`` randomly masked duplicates per example (section 3.2).

    The suspects of each adversarial example come from its saliency (eq. 12); each duplicate
    draws its own random mask (eq. 13). Returns ``(x, y)`` of ``N·k`` examples, the duplicates
    of one example next to each other, each with the true label of its original.
    """
    check_images(x_adv, "x_adv")
    if saliency.shape != x_adv.shape:
        raise ValueError(
            f"masked_duplicates: saliency {tuple(saliency.shape)} must have the shape of x_adv {tuple(x_adv.shape)}"
        )
    if y.shape != (x_adv.shape[0],):
        raise ValueError(f"masked_duplicates: y must have shape ({x_adv.shape[0]},), got {tuple(y.shape)}")
    if k < 1:
        raise ValueError(f"masked_duplicates: k must be at least 1, got {k}")
    suspect = saliency_threshold(saliency, alpha)
    x_masked = random_mask(x_adv.repeat_interleave(k, dim=0), suspect.repeat_interleave(k, dim=0), p, generator)
    return x_masked, y.repeat_interleave(k)


def zero_most_salient(x: torch.Tensor, saliency: torch.Tensor, fraction: float) -> torch.Tensor:
    """``x`` with the ``fraction`` of its locations of highest saliency set to 0 (the paper's Table 1).

    The motivating experiment of section 3.2: if detector gradients point at the perturbed
    pixels, removing the most salient ones should undo many attacks. Locations are ranked per
    image by the largest ``|∂L_DET/∂x|`` over channels, as in ``saliency_threshold``; ties at the
    cut are broken by position.
    """
    check_images(x)
    check_fraction(fraction, "zero_most_salient: fraction")
    if saliency.shape != x.shape:
        raise ValueError(f"zero_most_salient: saliency {tuple(saliency.shape)} must have the shape of x {tuple(x.shape)}")
    per_location = saliency.abs().amax(dim=1).flatten(1)
    k = round(fraction * per_location.shape[1])
    drop = torch.zeros_like(per_location, dtype=torch.bool)
    drop.scatter_(1, per_location.topk(k, dim=1).indices, True)
    return x.masked_fill(drop.view(x.shape[0], 1, *x.shape[2:]), 0.0)
