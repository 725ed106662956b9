"""Adversarial sets: which images were attacked, what came out, and whether it worked.

A set is built from a seeded subset of a split whose images ``f`` classifies correctly (the
others are skipped and counted, as AutoAttack does), and is cached on disk under a key that
hashes everything that determines it (``Sets``, a kind of ``cache`` entry), so that a rerun or a
sweep reuses it and a changed config never does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from gcd_lightning import distributed
from gcd_lightning.attacks import Attack, random_targets, run_attack
from gcd_lightning.cache import Kind
from gcd_lightning.utils.files import load_torch, save_torch

TENSOR_FIELDS = ("index", "x_adv", "y", "target", "success", "l2", "linf")


@dataclasses.dataclass
class AdversarialSet:
    """One attack's output on one subset of a split.

    Attributes:
        index: (N,) positions of the clean images in the split.
        x_adv: (N, C, H, W) adversarial images in [0, 1].
        y: (N,) true labels.
        target: (N,) target classes of a targeted attack, -1 for untargeted ones.
        success: (N,) bool, ``f`` predicts ``target`` (targeted) or not ``y`` (untargeted).
        l2, linf: (N,) norms of the perturbation ``x_adv - x``.
        n_examined: images looked at to find N correctly classified ones.
        seconds: wall time of the attack.
        extras: per-image tensors an attack reports beside its images (N rows each), e.g. the
            loss trace that the white-box failure indicators read.
    """

    index: torch.Tensor
    x_adv: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor
    success: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    n_examined: int
    seconds: float
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def summary(self) -> dict[str, float]:
        """Success rate, median L2 of the successful examples, the largest L∞, counts, time."""
        won = self.success
        return {
            "n": len(self),
            "n_skipped_misclassified": self.n_examined - len(self),
            "success_rate": won.float().mean().item() if len(self) else float("nan"),
            "l2_median": self.l2[won].median().item() if won.any() else float("nan"),
            "linf_max": self.linf.max().item() if len(self) else float("nan"),
            "seconds": self.seconds,
        }

    def save(self, path: Path) -> None:
        """Atomic write of the tensors and counters."""
        payload = {name: getattr(self, name) for name in TENSOR_FIELDS}
        payload["meta"] = torch.tensor([self.n_examined, self.seconds], dtype=torch.float64)
        payload["extras"] = dict(self.extras)
        save_torch(payload, path)

    @classmethod
    def load(cls, path: Path) -> AdversarialSet:
        payload = load_torch(path, "cached adversarial set")
        missing = [name for name in (*TENSOR_FIELDS, "meta") if name not in payload]
        if missing:
            raise RuntimeError(f"cached adversarial set at {path} lacks {missing}; delete it and rerun to rebuild it")
        n_examined, seconds = payload["meta"].tolist()
        return cls(**{name: payload[name] for name in TENSOR_FIELDS}, n_examined=int(n_examined), seconds=seconds,
                   extras=payload.get("extras", {}))


@dataclasses.dataclass(frozen=True)
class Sets(Kind[AdversarialSet]):
    """Adversarial sets in the cache (``cache.Kind``): the attack stage's under ``adversarial/``, the white-box
    stage's under ``whitebox/``."""

    folder: str = "adversarial"
    what: str = "adversarial set"
    suffix: str = ".pt"

    def load(self, path: Path) -> AdversarialSet:
        return AdversarialSet.load(path)

    def save(self, value: AdversarialSet, path: Path) -> None:
        value.save(path)


UNION_MODES = ("balanced", "all")


def union(sets: Sequence[AdversarialSet], mode: str = "all") -> AdversarialSet:
    """Several attacks' sets of one split as one (attack-agnostic training, ``defense.train_union``).

    ``all``: every set's rows, one set after another; a clean image attacked by K attacks appears K
    times, once with each attack, so the union is K times as large as one attack's set.
    ``balanced``: row ``r`` of the k-th set is kept when ``r % K == k``. The sets of one classifier
    and seed share their images in one order, so each clean image appears once, with one attack's
    example: the same size and the same clean/adversarial balance as a single attack's set, and
    each attack has an equal share (up to one row). Counters add up under ``all``; under
    ``balanced`` ``n_examined`` is the largest set's. Per-image extras are dropped (they differ by attack).
    """
    if not sets:
        raise ValueError("union: no adversarial sets")
    if mode not in UNION_MODES:
        raise ValueError(f"union: mode must be one of {list(UNION_MODES)}, got {mode!r} (defense.train_union)")
    if mode == "balanced":
        rows = [torch.arange(k, len(s), len(sets)) for k, s in enumerate(sets)]
        tensors = {name: torch.cat([getattr(s, name)[r] for s, r in zip(sets, rows)]) for name in TENSOR_FIELDS}
        return AdversarialSet(**tensors, n_examined=max(s.n_examined for s in sets),
                              seconds=sum(s.seconds * len(r) / max(len(s), 1) for s, r in zip(sets, rows)))
    tensors = {name: torch.cat([getattr(s, name) for s in sets]) for name in TENSOR_FIELDS}
    return AdversarialSet(**tensors, n_examined=sum(s.n_examined for s in sets), seconds=sum(s.seconds for s in sets))


def stack(dataset: Dataset, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``dataset`` at ``index`` as two tensors."""
    pairs = [dataset[i] for i in index.tolist()]
    x = torch.stack([p[0] for p in pairs])
    y = torch.as_tensor([int(p[1]) for p in pairs], dtype=torch.long)
    return x, y


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model``'s outputs for ``x``, batch by batch on the model's device (shared by the ranks of a DDP run); on the CPU."""
    device = next(model.parameters()).device
    return distributed.map_batches(lambda _, rows: model(x[rows].to(device)).cpu(), len(x), batch_size)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``f``'s labels for ``x`` (the argmax of ``outputs``), on the CPU."""
    return outputs(model, x, batch_size).argmax(dim=1)


def select_correct(model: nn.Module, dataset: Dataset, n: int, seed: int, batch_size: int) -> tuple[torch.Tensor, int]:
    """The first ``n`` positions of a seeded permutation of ``dataset`` that ``model`` classifies correctly.

    Returns the positions and how many images were examined to find them.
    """
    if n < 1:
        raise ValueError(f"the subset size must be at least 1, got {n} (adversarial.n_*)")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    chosen: list[torch.Tensor] = []
    found = examined = 0
    for chunk in order.split(batch_size):
        x, y = stack(dataset, chunk)
        positions = (predict(model, x, batch_size) == y).nonzero().flatten()[: n - found]
        chosen.append(chunk[positions])
        found += len(positions)
        if found == n:
            examined += int(positions[-1]) + 1
            break
        examined += len(chunk)
    if found < n:
        raise ValueError(f"only {found} of the {len(dataset)} images are classified correctly; ask for at most {found} (adversarial.n_*)")
    return torch.cat(chosen), examined


def robust_accuracy(acc_adv: float, n_attacked: int, n_examined: int) -> float:
    """Accuracy under attack over every examined test image, clean misclassifications counted as errors.

    The adversarial test set holds the ``n_attacked`` images that ``f`` classifies correctly among
    the first ``n_examined`` of a seeded order of the test split (the misclassified ones are skipped,
    not attacked); ``acc_adv`` is an accuracy over those ``n_attacked``. Over all ``n_examined``
    images, the skipped ones counting as errors, it is ``acc_adv · n_attacked / n_examined``: the
    robust accuracy of RobustBench and AutoAttack, comparable with accuracies over whole test sets.
    For GCD this is a lower bound: a skipped image that ``f`` gets wrong counts as GCD's error too,
    although ``f_rec`` might recover it if the detectors flagged it.
    """
    if not 0 < n_attacked <= n_examined:
        raise ValueError(
            f"robust_accuracy: need 0 < n_attacked <= n_examined, got {n_attacked} attacked of {n_examined} examined "
            "(the adversarial test set is inconsistent: delete it from cache/adversarial to rebuild it)"
        )
    if not 0.0 <= acc_adv <= 1.0:
        raise ValueError(f"robust_accuracy: acc_adv must be an accuracy in [0, 1], got {acc_adv}")
    return acc_adv * n_attacked / n_examined


def pair_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) rows of an adversarial set; a clean image and its attack stay together."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    return order[n_val:], order[:n_val]


def detection_pairs(clean: torch.Tensor, adv: AdversarialSet, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set of eq. 7: clean images (label 0) and the successful attacks on them (label 1).

    Unsuccessful attacks are left out: a minimal-norm attack that fails returns the clean image,
    which would then carry both labels.
    """
    won = rows[adv.success[rows]]
    x = torch.cat([clean[rows], adv.x_adv[won]])
    label = torch.cat([torch.zeros(len(rows)), torch.ones(len(won))]).long()
    return x, label


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example L2 and L∞ norms of ``x_adv - x``."""
    delta = (x_adv - x).flatten(1)
    return delta.norm(p=2, dim=1), delta.abs().amax(dim=1)


def generate(
    model: nn.Module,
    attack: Attack,
    dataset: Dataset,
    n: int,
    num_classes: int,
    seed: int,
    batch_size: int,
    progress: bool = True,
    desc: str = "attack",
) -> AdversarialSet:
    """Attack ``n`` correctly classified images of ``dataset`` (seeded choice, targets and random starts).

    Batch ``i`` of the attack runs after ``torch.manual_seed(seed + i)`` (``run_attack``), so in a
    DDP run the batches are split across the ranks and every rank returns the set that a single
    process builds. The choice of images and the final predictions run on every rank.
    """
    index, examined = select_correct(model, dataset, n, seed, batch_size)
    x, y = stack(dataset, index)
    target = random_targets(y, num_classes, torch.Generator().manual_seed(seed + 1)) if attack.targeted else None
    torch.manual_seed(seed)  # the global generator as later stages (the detectors' initial weights) find it
    start = time.perf_counter()
    x_adv = run_attack(attack, x, y, target, batch_size=batch_size, progress=progress, desc=desc, seed=seed)
    seconds = time.perf_counter() - start
    pred = predict(model, x_adv, batch_size)
    success = pred == target if target is not None else pred != y
    l2, linf = perturbation_norms(x, x_adv)
    return AdversarialSet(
        index=index,
        x_adv=x_adv,
        y=y,
        target=target if target is not None else torch.full_like(y, -1),
        success=success,
        l2=l2,
        linf=linf,
        n_examined=examined,
        seconds=seconds,
    )
