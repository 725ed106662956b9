"""Run an attack over a large set in mini-batches, split across the processes of a DDP run."""

from __future__ import annotations

import contextlib
import sys

import torch
from tqdm.auto import tqdm

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

    Randomness (PGD's random start, …) comes from PyTorch's global generator:

    * ``seed=None``: the batches run one after another in this process and draw from the
      generator as the caller left it.
    * ``seed=s``: batch ``i`` (rows ``i*batch_size`` on) runs right after ``torch.manual_seed(s + i)``,
      so its result depends on the batch alone and the caller's generator is left untouched. The
      batches are then split across the ranks of a DDP run (contiguous blocks of batches,
      ``distributed.shard``) and gathered, so that every rank returns the same tensor that a
      single process returns for the same seed; only rank 0 shows a bar (of its own batches).
    """
    if batch_size < 1:
        raise ValueError(f"run_attack: batch_size must be positive, got {batch_size}")
    if len(y) != len(x) or (target is not None and len(target) != len(x)):
        raise ValueError(f"run_attack: {len(x)} images but {len(y)} labels" + ("" if target is None else f" and {len(target)} targets"))
    starts = range(0, len(x), batch_size)
    if seed is not None:
        mine = distributed.shard(len(starts), distributed.rank(), distributed.world_size())
        starts = starts[mine.start : mine.stop]
    device = attack.device
    rows = sum(min(batch_size, len(x) - start) for start in starts)
    bar = tqdm(total=rows, desc=desc or type(attack).__name__, unit="img", file=sys.stderr,
               disable=not (progress and distributed.is_rank_zero()))
    generator = contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    out = []
    with bar, generator:
        for start in starts:
            if seed is not None:
                torch.manual_seed(seed + start // batch_size)
            stop = start + batch_size
            batch_target = None if target is None else target[start:stop].to(device)
            x_adv = attack.perturb(x[start:stop].to(device), y[start:stop].to(device), batch_target)
            out.append(x_adv.cpu())
            bar.update(len(x_adv))
    x_adv = torch.cat(out) if out else x.new_empty((0, *x.shape[1:]))
    return x_adv if seed is None else distributed.gather_rows(x_adv)
