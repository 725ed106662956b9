"""The config checked before any work: every bad value fails in the first second, naming the key, the value and the range.

``check_config`` runs first in ``run``: the settings below with their types and ranges, the
keys of every instantiated node (``check_keys``: each must be a parameter of its ``_target_``),
the networks and optimizers built once (``check_builds``: their constructors check their values),
the keys the command line added (``check_additions``: a ``+key=value`` that no config file defines
and nothing reads is refused), the attack built once on a stand-in model (so each attack's own
constructor checks its budget and steps), and the white-box settings (``whitebox_stage.check_threat``).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
import torch
from torch import nn

from gcd_lightning.adversarial import UNION_MODES
from gcd_lightning.pipeline.context import CONF_DIR, TRAIN_SOURCES, attack_names
from gcd_lightning.pipeline.whitebox_stage import check_threat

Check = Callable[[object], bool]
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def integer(low: int) -> tuple[Check, str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"an integer >= {low}"


def number(low: float, high: float, low_open: bool = False, high_open: bool = False) -> tuple[Check, str]:
    def ok(v: object) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return ok, f"a number in {interval}"


def one_of(*choices: object) -> tuple[Check, str]:
    return (lambda v: v in choices), f"one of {list(choices)}"


def optional(rule: tuple[Check, str]) -> tuple[Check, str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


RULES: dict[str, tuple[Check, str]] = {
    "seed": integer(0),
    "defense_seed": optional(integer(0)),
    "adversarial.train_split": one_of(*TRAIN_SOURCES),
    "adversarial.n_train": integer(1),
    "defense.train_union": one_of(*UNION_MODES),
    "adversarial.n_test": integer(1),
    "adversarial.batch_size": integer(1),
    "evaluate.n_clean": optional(integer(1)),
    "evaluate.mask_draws": integer(1),
    "dataset.num_classes": integer(2),
    "dataset.in_channels": integer(1),
    "dataset.image_size": integer(1),
    "dataset.linf_eps": number(0, 1, low_open=True),
    "dataset.pgd_step": number(0, 1, low_open=True),
    "dataset.pgd_steps": integer(1),
    "dataset.datamodule.batch_size": integer(1),
    "dataset.datamodule.val_size": integer(1),
    "dataset.datamodule.num_workers": integer(0),
    "detector.max_epochs": integer(1),
    "detector.batch_size": integer(1),
    "detector.val_fraction": number(0, 1, low_open=True, high_open=True),
    "rectifier.alpha": number(0, 1),
    "rectifier.p": number(0, 1),
    "rectifier.k": integer(1),
    "rectifier.max_epochs": integer(1),
    "rectifier.batch_size": integer(1),
}


def accepted(target: str) -> set[str] | None:
    """The keyword names ``target`` (a class or function path) takes; None when it takes any (``**kwargs``)."""
    obj = hydra.utils.get_object(target)
    parameters = inspect.signature(obj).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def check_keys(node: object, path: str = "") -> None:
    """Every key of a node with a ``_target_`` is a parameter of that target, all the way down.

    ``+trainer.max_epoch=3`` or ``model.net.widht=8`` would otherwise fail deep inside a stage or,
    for a target that takes ``**kwargs``, be silently ignored.
    """
    if not isinstance(node, DictConfig):
        return
    target = node.get("_target_") if "_target_" in node else None
    names = accepted(target) if isinstance(target, str) else None
    for key in node:
        where = f"{path}.{key}" if path else str(key)
        if names is not None and key not in HYDRA_KEYS and key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"did you mean {path}.{close[0]}?" if close else f"it accepts {sorted(names)}"
            raise ValueError(f"{where}: {target} takes no argument {key!r}; {hint}")
        if OmegaConf.is_dict(node._get_node(key)):
            check_keys(node[key], where)


def check_additions(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Refuse a ``+key=value`` that adds a key no config defines and no ``_target_`` reads.

    Adding a parameter of an instantiated node (``+trainer.limit_train_batches=20``) is allowed
    (``check_keys`` checks its name); adding anywhere else is a typo of an existing key. Hydra's
    ``++key=value`` (add or change, on purpose) is not checked.
    """
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if not override.is_add() or (CONF_DIR / key.replace(".", "/")).is_dir():
            continue  # a change of an existing key, ++, or a config group (+experiment=...)
        parent_path, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
        if isinstance(parent, DictConfig) and "_target_" in parent:
            continue
        siblings = [str(k) for k in parent if k != name] if isinstance(parent, DictConfig) else []
        close = difflib.get_close_matches(name, siblings, n=1)
        hint = f"did you mean {parent_path + '.' if parent_path else ''}{close[0]}? " if close else ""
        raise ValueError(f"+{key}: no config defines {key!r} and nothing reads it; {hint}"
                         f"drop the '+' to change an existing key")


def check_builds(cfg: DictConfig) -> None:
    """Build the networks (on the meta device: no memory, no time) and the optimizers (on a stand-in
    parameter) once, so that their own constructors check their values (widths, learning rates...)."""
    nets = [("detector.body", cfg.detector.body)]
    if not cfg.model.get("external", False):
        nets.append(("model.net", cfg.model.net))
    if cfg.rectifier.get("net") is not None:
        nets.append(("rectifier.net", cfg.rectifier.net))
    optimizers = [(key, OmegaConf.select(cfg, key)) for key in ("model.optimizer", "detector.optimizer", "rectifier.optimizer")]
    for key, node in nets + [(key, node) for key, node in optimizers if node is not None]:
        try:
            if key.endswith("optimizer"):
                hydra.utils.instantiate(node)(params=[torch.zeros(1, requires_grad=True)])
            else:
                with torch.device("meta"):
                    hydra.utils.instantiate(node)
        except Exception as err:  # the constructor's own words, with the key that holds the setting
            cause = err.__cause__ or err  # Hydra wraps the constructor's error
            message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            raise ValueError(f"{key}: {message} ({key}.* in the config)") from err


def command_line_overrides() -> list[str]:
    """The overrides of the running ``@hydra.main`` application (none when composed by a test or a script)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def check_config(cfg: DictConfig, overrides: Sequence[str] | None = None) -> None:
    """Raise a ``ValueError`` naming the first bad setting: key, value, what it must be.

    ``overrides``: the command line's (default: the running Hydra application's), for ``check_additions``.
    """
    check_additions(cfg, command_line_overrides() if overrides is None else overrides)
    check_keys(cfg)
    check_builds(cfg)
    for key, (ok, text) in RULES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ValueError(f"{key}={value!r} is not allowed: it must be {text}")
    for key in ("mean", "std"):
        values = cfg.dataset[key]
        ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == cfg.dataset.in_channels
        if not ok or not all(number(0, 1, low_open=key == "std")[0](v) for v in values):
            raise ValueError(f"dataset.{key}={values!r} is not allowed: it must be dataset.in_channels="
                             f"{cfg.dataset.in_channels} number(s) in {'(0' if key == 'std' else '[0'}, 1]")
    if not cfg.model.get("external", False):
        ok, text = integer(1)
        if not ok(cfg.classifier.max_epochs):
            raise ValueError(f"classifier.max_epochs={cfg.classifier.max_epochs!r} is not allowed: it must be {text}")
    try:
        hydra.utils.instantiate(cfg.attack.attack)(model=nn.Identity())
    except (ValueError, TypeError) as err:
        raise ValueError(f"attack={cfg.attack.name}: {err} (attack.* / dataset.linf_eps, pgd_step, pgd_steps)") from err
    for key in ("evaluate.transfer_attacks", "defense.train_attacks"):
        unknown = [name for name in OmegaConf.select(cfg, key, default=[]) if name not in attack_names()]
        if unknown:
            raise ValueError(f"{key}: unknown attack(s) {unknown}; choose from {attack_names()}")
    if cfg.threat.name == "whitebox":
        check_threat(cfg.threat)
