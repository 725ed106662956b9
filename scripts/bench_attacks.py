"""Benchmark the eight attack configs against a trained classifier (not part of the tests).

Composes ``conf/config.yaml`` with Hydra once per ``conf/attack/*.yaml``, loads the classifier's
weights (a state_dict of ``normalized(net, mean, std)``, as the classifier stage caches it), picks
the first ``--n`` correctly classified test images of a seeded permutation (as the pipeline does)
and reports per attack: success rate, median L2 of the successes, largest L∞, target hit rate,
seconds, throughput in img-steps/s (images x forward passes, each followed by its backward pass;
DeepFool does one backward per candidate class) against the ceiling (plain forward+backward of
the same model at the same batch size) - and compares our DDN with advertorch's ``DDNL2Attack``
on the same images. Every requirement is checked (PASS/FAIL, exit status 1 on a failure) and the
results are written to ``--out`` as ``bench_attacks.json`` and ``bench_attacks.md``.

Example::

    python scripts/bench_attacks.py --checkpoint cache/classifier/<f>.pt --data-root data [overrides]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from gcd_lightning.adversarial import perturbation_norms, predict, select_correct, stack
from gcd_lightning.attacks import DDN, Attack, Norm, random_targets
from gcd_lightning.attacks.advertorch_compat import DDNL2Attack
from gcd_lightning.attacks.base import input_gradients_only
from gcd_lightning.models import normalized

log = logging.getLogger("bench_attacks")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ATTACK_CONFIGS = (
    "fgsm_untargeted",
    "pgd_untargeted",
    "pgd_targeted",
    "deepfool_untargeted",
    "cw_untargeted",
    "cw_targeted",
    "ddn_untargeted",
    "ddn_targeted",
)
# minimum success rate (targeted: the target is reached) per attack config
SUCCESS_BARS = {
    "pgd_untargeted": 0.95,
    "pgd_targeted": 0.95,
    "deepfool_untargeted": 0.99,
    "cw_untargeted": 0.99,
    "cw_targeted": 0.99,
    "ddn_untargeted": 0.99,
    "ddn_targeted": 0.99,
}
LINF_TOLERANCE = 1e-6
DDN_OVER_CW_L2 = 1.05  # our DDN's median L2 may exceed CW's by at most 5 %
DDN_OVER_ADVERTORCH_L2 = 1.01  # "matches" advertorch's DDN: median L2 within 1 %
DDN_OVER_ADVERTORCH_TIME = 1.05  # and time per step within 5 % (the timing noise of a shared CPU)


def classifier_arguments(parser: argparse.ArgumentParser, n: int) -> None:
    """The arguments every bench on a trained classifier takes: its weights, the data, the configs, the images."""
    parser.add_argument("--checkpoint", type=Path, required=True, help="state_dict of the normalised classifier")
    parser.add_argument("--data-root", default="data", help="paths.data_dir (default: data)")
    parser.add_argument("--dataset", default="mnist", help="conf/dataset entry (default: mnist)")
    parser.add_argument("--model", default="small_cnn", help="conf/model entry (default: small_cnn)")
    parser.add_argument("--n", type=int, default=n, help=f"correctly classified test images (default: {n})")


def compose_config(attack: str, args: argparse.Namespace) -> DictConfig:
    """The run config of the pipeline for one attack (Hydra compose API on ``conf/``)."""
    overrides = [
        f"dataset={args.dataset}",
        f"model={args.model}",
        f"attack={attack}",
        f"paths.data_dir={args.data_root}",
        f"seed={args.seed}",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def load_classifier(cfg: DictConfig, checkpoint: Path, device: torch.device) -> nn.Module:
    """``normalized(net, mean, std)`` with the weights of ``checkpoint``, in eval mode."""
    model = normalized(hydra.utils.instantiate(cfg.model.net), cfg.dataset.mean, cfg.dataset.std)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.to(device).eval()


@contextlib.contextmanager
def count_images(model: nn.Module) -> Iterator[list[int]]:
    """Count the images that go through ``model.forward``; yields a one-element list holding the count."""
    count = [0]

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        count[0] += args[0].shape[0]

    handle = model.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def ceiling_throughput(model: nn.Module, x: torch.Tensor, y: torch.Tensor, min_seconds: float = 3.0) -> float:
    """img-steps/s of a plain forward + backward (cross-entropy, gradient w.r.t. the input) on batch ``x``."""

    def step() -> None:
        x_req = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_req), y, reduction="sum")
        torch.autograd.grad(loss, x_req)

    with torch.enable_grad(), input_gradients_only(model):
        step()  # warm-up
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            step()
            steps += 1
        seconds = time.perf_counter() - start
    return steps * len(x) / seconds


class AdvertorchDDN(Attack):
    """advertorch's ``DDNL2Attack`` behind our contract (same input checks, no weight gradients)."""

    norm = Norm.L2

    def __init__(self, model: nn.Module, like: DDN) -> None:
        super().__init__(model, like.targeted)
        self.steps = like.steps
        self._advertorch = DDNL2Attack(
            model,
            nb_iter=like.steps,
            gamma=like.gamma,
            init_norm=like.init_norm,
            quantize=like.quantize,
            levels=like.levels,
            targeted=like.targeted,
        )

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self._advertorch.perturb(x, target if self.targeted else y)


def measure(
    attacks: dict[str, Attack],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
    seed: int,
) -> dict[str, dict]:
    """Run ``attacks`` on (x, y) and summarise each result.

    Several attacks run interleaved batch by batch (in alternating order), so that a load from
    elsewhere on the machine hits them alike. The ceiling (on the first batch) is the better of a
    measurement just before and one just after.
    """
    device = next(model.parameters()).device
    first_batch = x[:batch_size].to(device), y[:batch_size].to(device)
    ceiling = ceiling_throughput(model, *first_batch)
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in attacks}
    seconds = dict.fromkeys(attacks, 0.0)
    images = dict.fromkeys(attacks, 0)
    names = list(attacks)
    torch.manual_seed(seed)
    batches = range(0, len(x), batch_size)
    for number, start in enumerate(tqdm(batches, desc=" vs ".join(names), unit="batch", file=sys.stderr)):
        xb, yb, tb = (t[start : start + batch_size].to(device) for t in (x, y, target))
        for name in names if number % 2 == 0 else reversed(names):
            attack = attacks[name]
            with count_images(model) as counted:
                began = time.perf_counter()
                x_adv = attack.perturb(xb, yb, tb if attack.targeted else None)
                seconds[name] += time.perf_counter() - began
            images[name] += counted[0]
            outputs[name].append(x_adv.cpu())
    ceiling = max(ceiling, ceiling_throughput(model, *first_batch))
    return {
        name: summarise(name, attack, model, x, y, target, torch.cat(outputs[name]), seconds[name], images[name], ceiling, len(batches))
        for name, attack in attacks.items()
    }


def summarise(
    name: str,
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    x_adv: torch.Tensor,
    seconds: float,
    images: int,
    ceiling: float,
    n_batches: int,
) -> dict:
    """One row of the report."""
    pred = predict(model, x_adv, len(x))
    success = pred == target if attack.targeted else pred != y
    l2, linf = perturbation_norms(x, x_adv)
    steps = getattr(attack, "steps", None)
    return {
        "attack": name,
        "targeted": attack.targeted,
        "norm": attack.norm.value,
        "success_rate": success.float().mean().item(),
        "median_l2": l2[success].median().item() if success.any() else float("nan"),
        "max_linf": linf.max().item(),
        "target_hit_rate": (pred == target).float().mean().item() if attack.targeted else None,
        "seconds": seconds,
        "img_steps": images,
        "img_steps_per_s": images / seconds,
        "ceiling_img_steps_per_s": ceiling,
        "ratio_to_ceiling": images / seconds / ceiling,
        "ms_per_step": None if steps is None else 1000 * seconds / (steps * n_batches),
    }


def requirement_checks(rows: dict[str, dict], eps: dict[str, float], comparison: dict[str, dict]) -> list[dict]:
    """Each requirement as {check, passed, value}."""
    checks = []

    def add(check: str, passed: bool, value: str) -> None:
        checks.append({"check": check, "passed": bool(passed), "value": value})

    for name, row in rows.items():
        if name in eps:
            add(f"{name}: max L∞ <= eps + 1e-6", row["max_linf"] <= eps[name] + LINF_TOLERANCE, f"{row['max_linf']:.6f} vs eps {eps[name]:.6f}")
        if name in SUCCESS_BARS:
            add(f"{name}: success >= {SUCCESS_BARS[name]:.0%}", row["success_rate"] >= SUCCESS_BARS[name], f"{row['success_rate']:.2%}")
    for kind in ("untargeted", "targeted"):
        ddn, cw = rows[f"ddn_{kind}"], rows[f"cw_{kind}"]
        add(
            f"ddn_{kind}: median L2 <= {DDN_OVER_CW_L2} x cw_{kind}",
            ddn["median_l2"] <= DDN_OVER_CW_L2 * cw["median_l2"],
            f"{ddn['median_l2']:.4f} vs {cw['median_l2']:.4f}",
        )
        ours, theirs = comparison[kind]["ours"], comparison[kind]["advertorch"]
        add(f"ddn_{kind}: success >= advertorch DDN", ours["success_rate"] >= theirs["success_rate"], f"{ours['success_rate']:.2%} vs {theirs['success_rate']:.2%}")
        add(
            f"ddn_{kind}: median L2 <= {DDN_OVER_ADVERTORCH_L2} x advertorch DDN",
            ours["median_l2"] <= DDN_OVER_ADVERTORCH_L2 * theirs["median_l2"],
            f"{ours['median_l2']:.4f} vs {theirs['median_l2']:.4f}",
        )
        add(
            f"ddn_{kind}: time per step <= {DDN_OVER_ADVERTORCH_TIME} x advertorch DDN",
            ours["ms_per_step"] <= DDN_OVER_ADVERTORCH_TIME * theirs["ms_per_step"],
            f"{ours['ms_per_step']:.1f} ms vs {theirs['ms_per_step']:.1f} ms",
        )
    return checks


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(meta: dict, rows: dict[str, dict], comparison: dict[str, dict], checks: list[dict]) -> str:
    """The report as Markdown tables."""
    lines = [
        f"# Attack benchmark: {meta['dataset']}, {meta['n']} correctly classified test images",
        "",
        f"checkpoint `{meta['checkpoint']}`, batch size {meta['batch_size']}, seed {meta['seed']}, "
        f"{meta['device']} ({meta['threads']} threads), torch {meta['torch']}",
        "",
        "| attack | success | median L2 | max L∞ | target hit | seconds | img-steps/s | ceiling | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        lines.append(
            f"| {row['attack']} | {row['success_rate']:.2%} | {row['median_l2']:.4f} | {row['max_linf']:.4f} | "
            f"{fmt(row['target_hit_rate'], '.2%')} | {row['seconds']:.1f} | {row['img_steps_per_s']:.0f} | "
            f"{row['ceiling_img_steps_per_s']:.0f} | {row['ratio_to_ceiling']:.2f} |"
        )
    lines += ["", "## DDN: ours vs advertorch `DDNL2Attack` (same images, same settings)", ""]
    lines += ["| variant | implementation | success | median L2 | ms/step (batch) | img-steps/s | seconds |", "|---|---|---|---|---|---|---|"]
    for kind, pair in comparison.items():
        for impl, row in pair.items():
            lines.append(
                f"| {kind} | {impl} | {row['success_rate']:.2%} | {row['median_l2']:.4f} | {row['ms_per_step']:.1f} | "
                f"{row['img_steps_per_s']:.0f} | {row['seconds']:.1f} |"
            )
    lines += ["", "## Requirements", "", "| check | value | result |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {'PASS' if c['passed'] else 'FAIL'} |" for c in checks]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    classifier_arguments(parser, 1000)
    parser.add_argument("--batch-size", type=int, default=250, help="attack batch size (default: 250)")
    parser.add_argument("--seed", type=int, default=0, help="image choice, targets and attack randomness (default: 0)")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACK_CONFIGS), choices=ATTACK_CONFIGS, metavar="NAME", help="subset of the configs (default: all; the checks need all)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_attacks"), help="report folder")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides, e.g. model.net.width=32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    configs = {name: compose_config(name, args) for name in args.attacks}
    cfg = next(iter(configs.values()))
    model = load_classifier(cfg, args.checkpoint, device)
    datamodule = hydra.utils.instantiate(cfg.dataset.datamodule)
    datamodule.prepare_data()
    test_set = datamodule.dataset("test")
    index, examined = select_correct(model, test_set, args.n, args.seed, args.batch_size)
    x, y = stack(test_set, index)
    target = random_targets(y, cfg.dataset.num_classes, torch.Generator().manual_seed(args.seed + 1))
    log.info("%d correctly classified test images out of the first %d examined", len(x), examined)
    rows, eps, comparison = {}, {}, {}
    for name, attack_cfg in configs.items():
        attack = hydra.utils.instantiate(attack_cfg.attack.attack)(model=model)
        if attack_cfg.attack.norm == Norm.LINF.value:
            eps[name] = float(attack_cfg.attack.eps)
        if isinstance(attack, DDN):
            kind = "targeted" if attack.targeted else "untargeted"
            pair = measure({name: attack, f"advertorch_{name}": AdvertorchDDN(model, attack)}, model, x, y, target, args.batch_size, args.seed)
            rows[name] = pair[name]
            comparison[kind] = {"ours": pair[name], "advertorch": pair[f"advertorch_{name}"]}
        else:
            rows[name] = measure({name: attack}, model, x, y, target, args.batch_size, args.seed)[name]
        log.info("%s: %s", name, json.dumps(rows[name]))

    checks = requirement_checks(rows, eps, comparison) if set(args.attacks) == set(ATTACK_CONFIGS) else []
    meta = {
        "dataset": args.dataset,
        "n": len(x),
        "n_examined": examined,
        "checkpoint": str(args.checkpoint),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": str(device) if device.type != "cpu" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    report = markdown(meta, rows, comparison, checks)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_attacks.md").write_text(report)
    (args.out / "bench_attacks.json").write_text(json.dumps({"meta": meta, "attacks": rows, "ddn_vs_advertorch": comparison, "checks": checks}, indent=2))
    print(report)
    failed = [c["check"] for c in checks if not c["passed"]]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks PASS" + (f"; FAIL: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
