"""Stage ``evaluate``: the grey-box rows of the paper's Table 2 (detection AUC) and Table 5 (accuracy).

Counting: the test pairs are the images ``f`` classifies correctly and their attacks. AUCs are
given on the pairs whose attack succeeded (``detector.auc.*``, the paper's setting) and on all
pairs (``detector.auc_all.*``); accuracies under attack are over all pairs, and over the
successful ones (``*.acc.adv_successful``). ``*.robust_acc.all`` (``robust_accuracy``) is the
accuracy under attack over every test image examined to find the pairs (``eval.n_examined``),
the misclassified clean ones, which the attack skipped, counted as errors. GCD masks flagged
inputs at random, so its accuracy under attack is the mean over ``evaluate.mask_draws`` draws of
the masks (with their standard deviation, minimum and maximum). Clean accuracy and the
false-positive rate are over the clean test split (its first ``evaluate.n_clean`` images; all by
default), with one draw.

Beside the metrics the stage writes the per-image scores (``scores.pt``: each detector's ``p⁻``
and ``‖G‖₂`` of clean and successful adversarial images) and their figures: ROC curves and the
``‖G‖₂`` histogram (Fig. 3 / 4), whose norms are computed in float64 by a float64 copy of ``f``
(``float64_copy``). It also runs Table 1's experiment: the attack's success after zeroing the 5% /
10% most salient pixels by the detector gradient, next to zeroing as many random pixels.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet, predict, robust_accuracy, stack
from gcd_lightning.cache import Key, Kind
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.defense.rectifier import zero_most_salient
from gcd_lightning.defense.sensitivity import input_sensitivity
from gcd_lightning.pipeline.components import ensemble_saliency, gcd_batch, run_gcd
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.reporting import figures
from gcd_lightning.scoring import auc
from gcd_lightning.utils.files import load_torch, save_torch
from gcd_lightning.utils.hashing import to_plain

TABLE1_FRACTIONS = (0.05, 0.10)
DRAW_STRIDE = 100_003  # seeds of successive mask draws lie this far apart, beyond any set's batch count


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` (parameters and buffers), in eval mode on the same device; ``model`` is untouched.

    For the ``‖G‖₂`` histograms only (``sensitivity_norm``): in float32, ``1 − p_ŷ`` of a confident
    prediction is a multiple of 2⁻²⁴, which puts a dip into the histogram just above 10⁻⁶·⁵. The
    detectors keep float32 (they see ``asinh(G / τ)`` with τ = 1e-4, where that makes no difference).
    """
    return copy.deepcopy(model).to(torch.float64).eval()


def sensitivity_norm(classifier64: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``‖G(x, ŷ)‖₂`` (eq. 1) of each image of one batch, computed in float64; float64, on the CPU.

    ``classifier64`` is ``float64_copy(f)``; the images are cast to float64 for this pass only.
    """
    parameter = next(classifier64.parameters())
    if parameter.dtype != torch.float64:
        raise ValueError(
            f"sensitivity_norm: the ‖G‖₂ histograms are computed in float64, but the classifier's parameters are "
            f"{parameter.dtype}; pass float64_copy(classifier)"
        )
    g = input_sensitivity(classifier64, x.to(parameter.device, torch.float64))
    return g.flatten(1).norm(dim=1).cpu()


def sensitivity_norms(classifier64: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``sensitivity_norm`` of every image, batch by batch (``classifier64``: ``float64_copy(f)``)."""
    return distributed.map_batches(lambda _, rows: sensitivity_norm(classifier64, x[rows]), len(x), batch_size)


def saliency_ablation(ctx: RunContext, gcd: GCD, adv_test: AdversarialSet) -> dict[str, float]:
    """Table 1: success of the successful attacks once their most detector-salient pixels are zeroed.

    ``table1.success.top{5,10}`` zero the 5% / 10% locations of highest ``|∂L_DET/∂x|`` (the
    deciding detector's, eq. 11); ``table1.success.random{5,10}`` zero as many random locations,
    the control that tells saliency from mere pixel loss.
    """
    bs, targeted = ctx.cfg.adversarial.batch_size, bool(ctx.cfg.attack.targeted)
    won = adv_test.success
    metrics = {"table1.n": float(won.sum())}
    if not won.any():
        return metrics | {f"table1.success.{name}{round(f * 100)}": float("nan") for f in TABLE1_FRACTIONS for name in ("top", "random")}
    x_adv = adv_test.x_adv[won]
    labels = (adv_test.target if targeted else adv_test.y)[won]
    saliency = ensemble_saliency(gcd, x_adv, bs)
    random_saliency = torch.rand(saliency.shape, generator=torch.Generator().manual_seed(ctx.cfg.seed))
    for fraction in TABLE1_FRACTIONS:
        for name, guide in (("top", saliency), ("random", random_saliency)):
            pred = predict(gcd.classifier, zero_most_salient(x_adv, guide, fraction), bs)
            success = pred == labels if targeted else pred != labels
            metrics[f"table1.success.{name}{round(fraction * 100)}"] = success.float().mean().item()
    return metrics


def mask_draws(gcd: GCD, adv_test: AdversarialSet, first: torch.Tensor, batch_size: int, seed: int, draws: int) -> dict[str, float]:
    """GCD's accuracy on the adversarial test images, averaged over ``draws`` draws of its random masks.

    ``first`` holds the labels of the first draw (``run_gcd`` seeded with ``seed``); draw ``d``
    reseeds with ``seed + d·DRAW_STRIDE``. Returns the mean accuracy on all pairs and on the
    successful ones, and the standard deviation and range over the draws of the former.
    """
    if draws < 1:
        raise ValueError(f"evaluate.mask_draws must be at least 1, got {draws}")
    labels = [first] + [run_gcd(gcd, adv_test.x_adv, batch_size, seed + d * DRAW_STRIDE)["label"] for d in range(1, draws)]
    right = torch.stack([label == adv_test.y for label in labels]).double()  # (draws, N)
    per_draw = right.mean(dim=1)
    return {
        "gcd.acc.adv": per_draw.mean().item(),
        "gcd.acc.adv_successful": right[:, adv_test.success].mean().item(),
        "gcd.acc.adv_std": per_draw.std().item() if draws > 1 else 0.0,
        "gcd.acc.adv_min": per_draw.min().item(),
        "gcd.acc.adv_max": per_draw.max().item(),
        "eval.mask_draws": float(draws),
    }


def clean_answers(
    ctx: RunContext, gcd: GCD, classifier: nn.Module, classifier64: nn.Module, rows: torch.Tensor, pairs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``gcd_batch`` plus ``f``'s label (``f_label``) and the true one (``y``) of the clean test images at ``rows``.

    The images are read batch by batch, so a large test split never sits in memory at once, and
    only once: ``g_norm`` holds ``sensitivity_norm`` (float64, by ``classifier64`` = ``float64_copy(f)``)
    of those among ``pairs`` (NaN for the others).
    """
    cfg = ctx.cfg
    test = ctx.datamodule.dataset("test")
    device = next(classifier.parameters()).device

    def answer(_: int, batch: slice) -> dict[str, torch.Tensor]:
        x, y = stack(test, rows[batch])
        with torch.no_grad():
            f_label = classifier(x.to(device)).argmax(dim=1).cpu()
        in_pairs = torch.isin(rows[batch], pairs)
        g_norm = torch.full((len(x),), float("nan"), dtype=torch.float64)
        if in_pairs.any():
            g_norm[in_pairs] = sensitivity_norm(classifier64, x[in_pairs])
        return gcd_batch(gcd, x) | {"f_label": f_label, "y": y, "g_norm": g_norm}

    return distributed.map_batches(
        answer, len(rows), cfg.adversarial.batch_size, cfg.seed, cfg.progress, "GCD on clean test images"
    )


@dataclasses.dataclass(frozen=True)
class Evaluated(Kind[tuple[dict, dict]]):
    """The stage's result in the cache: its metrics and the per-image scores (``scores.pt``'s content)."""

    folder: str = "evaluation"
    what: str = "grey-box evaluation"
    suffix: str = ".pt"

    def load(self, path: Path) -> tuple[dict, dict]:
        saved = load_torch(path, f"cached {self.what}")
        return saved["metrics"], saved["scores"]

    def save(self, value: tuple[dict, dict], path: Path) -> None:
        metrics, scores = value
        save_torch({"metrics": metrics, "scores": scores}, path)


def evaluation_key(ctx: RunContext, ids: dict[str, str]) -> Key:
    """The stage's entry: ``ids`` (``f``, the detectors, the rectifier, the adversarial test set, each by its cache
    id), the defense's config, ``evaluate``'s settings (but the transfer attacks, a stage of their own), the batch
    size and the seed."""
    cfg = ctx.cfg
    spec = {
        **ids,
        "defense": to_plain({"detectors": cfg.defense.detectors, "rectifier": cfg.defense.rectifier}),
        "evaluate": {"n_clean": cfg.evaluate.n_clean, "mask_draws": cfg.evaluate.mask_draws},
        "batch_size": cfg.adversarial.batch_size,
        "seed": cfg.seed,
        **code_version("evaluate"),
    }
    return Key(f"{cfg.dataset.name}_{cfg.attack.name}", spec)


def run_evaluate_stage(ctx: RunContext, gcd: GCD, adv_test: AdversarialSet, ids: dict[str, str]) -> dict[str, float]:
    """``evaluate`` (the metrics and the scores), cached under ``evaluation_key(ctx, ids)``; writes ``scores.pt`` and
    the figures of the run either way."""
    (metrics, scores), cached = ctx.cache.get_or_build(Evaluated(), evaluation_key(ctx, ids), lambda _: evaluate(ctx, gcd, adv_test))
    title = f"{ctx.cfg.dataset.name} {ctx.cfg.attack.name}"
    distributed.write_on_rank_zero(save_torch, scores, ctx.output_dir / "scores.pt")
    distributed.write_on_rank_zero(
        figures.roc_curves, scores["clean"], scores["adv"], f"ROC, {title}", ctx.output_dir / "roc.png"
    )
    distributed.write_on_rank_zero(
        figures.sensitivity_histogram,
        scores["g_norm"]["clean"], scores["g_norm"]["adv"], f"input sensitivity, {title}", ctx.output_dir / "sensitivity.png",
    )
    return metrics | {"evaluate.cached": float(cached)}


def evaluate(ctx: RunContext, gcd: GCD, adv_test: AdversarialSet) -> tuple[dict[str, float], dict]:
    """Detection AUCs, accuracies of ``f`` and of GCD on clean and adversarial test images; and the scores.

    One pass over the clean test split answers both for the clean accuracies (its first
    ``n_clean`` images) and for the clean halves of the test pairs; in a DDP run every pass is
    shared by the ranks.
    """
    cfg = ctx.cfg
    bs = cfg.adversarial.batch_size
    classifier = gcd.classifier
    test = ctx.datamodule.dataset("test")
    n_clean = cfg.evaluate.n_clean or len(test)
    if not 0 < n_clean <= len(test):
        raise ValueError(f"evaluate.n_clean={n_clean} but the test split has {len(test)} images; ask for 1 to {len(test)} (null: all)")
    rows = torch.unique(torch.cat([torch.arange(n_clean), adv_test.index]))  # sorted
    classifier64 = float64_copy(classifier)  # the ‖G‖₂ histograms only; GCD and its detectors stay float32
    on_split = clean_answers(ctx, gcd, classifier, classifier64, rows, adv_test.index)
    on_clean = {name: value[torch.searchsorted(rows, adv_test.index)] for name, value in on_split.items()}
    on_adv = run_gcd(gcd, adv_test.x_adv, bs, cfg.seed)
    won, y = adv_test.success, adv_test.y
    metrics = {"eval.n_pairs": float(len(adv_test)), "eval.n_successful": float(won.sum())}
    names = [*gcd.detector_names, "gcd"]
    for name in names:
        metrics[f"detector.auc.{name}"] = auc(on_clean[name], on_adv[name][won])
        metrics[f"detector.auc_all.{name}"] = auc(on_clean[name], on_adv[name])
    scores = {
        "clean": {name: on_clean[name] for name in names},
        "adv": {name: on_adv[name][won] for name in names},
        "g_norm": {"clean": on_clean["g_norm"], "adv": sensitivity_norms(classifier64, adv_test.x_adv[won], bs)},
    }
    del classifier64
    metrics.update(saliency_ablation(ctx, gcd, adv_test))
    metrics["detector.tpr.adv"] = on_adv["flagged"][won].float().mean().item()
    for k, name in enumerate(gcd.detector_names):  # the share of the successful attacks each detector decided
        metrics[f"detector.{name}_share.adv"] = (on_adv["decided"][won] == k).float().mean().item()
    base_adv = predict(classifier, adv_test.x_adv, bs) == y
    metrics["base.acc.adv"] = base_adv.float().mean().item()
    metrics["base.acc.adv_successful"] = base_adv[won].float().mean().item()
    metrics.update(mask_draws(gcd, adv_test, on_adv["label"], bs, cfg.seed, cfg.evaluate.mask_draws))
    metrics["eval.n_examined"] = float(adv_test.n_examined)
    for model in ("base", "gcd"):
        metrics[f"{model}.robust_acc.all"] = robust_accuracy(metrics[f"{model}.acc.adv"], len(adv_test), adv_test.n_examined)

    counted = rows < n_clean  # the pairs' originals beyond the first n_clean images only served the AUCs
    metrics["eval.n_clean"] = float(n_clean)
    metrics["base.acc.clean"] = (on_split["f_label"] == on_split["y"])[counted].double().mean().item()
    metrics["gcd.acc.clean"] = (on_split["label"] == on_split["y"])[counted].double().mean().item()
    metrics["detector.fpr.clean"] = on_split["flagged"][counted].double().mean().item()
    return metrics, scores
