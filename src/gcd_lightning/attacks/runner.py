"""Run an attack over a large set in mini-batches."""

from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from gcd_lightning.attacks.base import Attack


def run_attack(
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    batch_size: int = 250,
    progress: bool = True,
    desc: str | None = None,
) -> torch.Tensor:
    """``attack.perturb`` over mini-batches of ``x`` (N, C, H, W), ``y`` (N,) and ``target`` (N,) or None.

    Each batch moves to the attack's device; the adversarial images come back concatenated on the
    CPU, in the input order. A tqdm bar on stderr counts images (``progress=False`` hides it).
    """
    if batch_size < 1:
        raise ValueError(f"run_attack: batch_size must be positive, got {batch_size}")
    if len(y) != len(x) or (target is not None and len(target) != len(x)):
        raise ValueError(f"run_attack: {len(x)} images but {len(y)} labels" + ("" if target is None else f" and {len(target)} targets"))
    device = attack.device
    out = []
    with tqdm(total=len(x), desc=desc or type(attack).__name__, unit="img", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            batch_target = None if target is None else target[start:stop].to(device)
            x_adv = attack.perturb(x[start:stop].to(device), y[start:stop].to(device), batch_target)
            out.append(x_adv.cpu())
            bar.update(len(x_adv))
    if not out:
        return x.new_empty((0, *x.shape[1:]))
    return torch.cat(out)
