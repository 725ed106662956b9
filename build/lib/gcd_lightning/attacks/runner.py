"""Run an attack over a large set in mini-batches, split across the processes of a DDP run."""

from __future__ import annotations

import torch

from gcd_lightning import distributed
from gcd_lightning.attacks.base import Attack


def run_attack(
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    batch_size: int = 250,
    progress: bool = True,
    desc: str | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """``attack.perturb`` over mini-batches of ``x`` (N, C, H, W), ``y`` (N,) and ``target`` (N,) or None.

    Each batch moves to the attack's device; the adversarial images come back concatenated on the
    CPU, in the input order. A tqdm bar on stderr counts images (``progress=False`` hides it).

    Randomness (PGD's random start, …) comes from PyTorch's global generator. With ``seed=s``
    batch ``i`` (rows ``i*batch_size`` on) runs right after ``torch.manual_seed(s + i)``, so its
    result depends on the batch alone and the caller's generator is left untouched; with
    ``seed=None`` the batches draw from the generator as the caller left it. The batches are
    split across the ranks of a DDP run and gathered (``distributed.map_batches``): with a seed,
    every rank returns the tensor that a single process returns.
    """
    if len(y) != len(x) or (target is not None and len(target) != len(x)):
        raise ValueError(f"run_attack: {len(x)} images but {len(y)} labels" + ("" if target is None else f" and {len(target)} targets"))
    if len(x) == 0:
        return x.clone()
    device = attack.device

    def perturb(_: int, rows: slice) -> torch.Tensor:
        batch_target = None if target is None else target[rows].to(device)
        return attack.perturb(x[rows].to(device), y[rows].to(device), batch_target).cpu()

    return distributed.map_batches(perturb, len(x), batch_size, seed, progress, desc or type(attack).__name__)
