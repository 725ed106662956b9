"""The one input guard of attacks and defenses: refuse what they cannot work on, with one clear message each."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_inputs(x: torch.Tensor, input_shape: Sequence[int] | None = None) -> None:
    """Raise unless ``x`` is a float batch (N, C, H, W) of finite values in [0, 1] of the shape the defense expects.

    NaN or infinite values are refused, never scored: a detector's output on them is meaningless,
    and a NaN probability compares as "benign".

    Args:
        x: the images.
        input_shape: ``(C, H, W)`` the defense was trained for; ``None`` checks the rest only.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    expected = "(N, " + ", ".join(map(str, input_shape)) + ")" if input_shape is not None else "(N, C, H, W)"
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images of shape {expected}, got shape {tuple(x.shape)} (add a batch axis with x[None])")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"expected images of shape {expected} (channels, height, width the defense was trained for), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype} (for 8-bit images use x.float() / 255)")
    if not len(x):
        return
    low, high = torch.aminmax(x)  # one pass; NaN propagates into both
    if not (torch.isfinite(low) and torch.isfinite(high)):
        bad = (~torch.isfinite(x).flatten(1).all(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"images {bad[:10]}{' ...' if len(bad) > 10 else ''} contain NaN or infinite values, which can be neither attacked nor scored"
        )
    if low < 0 or high > 1:
        raise ValueError(
            f"expected pixel values in [0, 1], got values in [{low.item():.4g}, {high.item():.4g}] (for 0-255 images divide by 255)"
        )
