"""What a defense folder may build when it is opened: the package's own modules, nothing else unless trusted.

``defense.yaml`` names what to build with Hydra's ``_target_`` keys. Instantiating a name runs whatever
it names: ``torch.load`` of a pickle next to it, ``os.system``, a module whose import does something.
A folder someone shared must be as safe to open as a ``torch.load(weights_only=True)`` checkpoint (the
promise of Hugging Face's ``trust_remote_code=False``), so before anything is imported every target is
checked:

* a name under ``gcd_lightning.`` is imported (our own modules only) and must be an ``nn.Module`` class
  the package defines (a ``Detector``, a ``Rectifier``, a network) or one of its network builders
  (``models.BUILDERS``); a function reached through a module attribute (``gcd_lightning.x.torch.load``)
  is none of these;
* a name under ``torchvision.models.`` must be one of its model builders (``list_models()``), built
  without downloaded weights;
* anything else is refused, naming the key, before it is imported.

``trust_code=True`` lifts the check for a user's own classes (their detector, their network), as
``trust_remote_code=True`` does: only for folders whose author you trust.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import hydra
import torchvision
from torch import nn

OWN_PREFIX = "gcd_lightning."
TORCHVISION_PREFIX = "torchvision.models."
TARGET_KEY = "_target_"


class UntrustedCode(ValueError):
    """A defense folder asks to build something that is not the package's own; nothing of it ran."""


def targets(node: Any, path: str) -> Iterator[tuple[str, Mapping]]:
    """``(key path, spec)`` of every mapping with a ``_target_`` in a nested description (dicts and lists, Hydra's
    ``_args_`` included); the path names its ``_target_`` key."""
    if isinstance(node, Mapping):
        if TARGET_KEY in node:
            yield (f"{path}.{TARGET_KEY}" if path else TARGET_KEY), node
        for key, value in node.items():
            yield from targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from targets(value, f"{path}[{i}]")


def own_builders() -> tuple[Any, ...]:
    from gcd_lightning.models import BUILDERS

    return BUILDERS


def refusal(spec: Mapping) -> str | None:
    """Why the ``_target_`` of ``spec`` may not be built from a shared folder, or None when it may (module docstring)."""
    target = spec[TARGET_KEY]
    if not isinstance(target, str):
        return f"{target!r} is not a name"
    if target.startswith(OWN_PREFIX):
        try:
            obj = hydra.utils.get_object(target)
        except Exception:  # noqa: BLE001 - any failure to find it is a refusal
            return f"{target!r} does not exist in gcd_lightning"
        own_module = isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__.startswith(OWN_PREFIX)
        if own_module or any(obj is builder for builder in own_builders()):
            return None
        return f"{target!r} is not one of gcd_lightning's modules or network builders"
    if target.startswith(TORCHVISION_PREFIX):
        if target[len(TORCHVISION_PREFIX):] not in torchvision.models.list_models():
            return f"{target!r} is not a torchvision.models builder (torchvision.models.list_models())"
        asked = [name for name in ("weights", "pretrained") if spec.get(name) not in (None, False)]
        return f"{target!r} with downloaded weights ({asked[0]}={spec[asked[0]]!r})" if asked else None
    return f"{target!r} is not gcd_lightning's or a torchvision.models builder"


def check_trusted(description: Any, where: str, trust_code: bool = False) -> None:
    """Refuse ``description`` (a parsed ``defense.yaml``) unless every target in it may be built (module docstring).

    Raises ``UntrustedCode`` with one line naming the first key that is refused; with ``trust_code`` nothing is checked.
    """
    if trust_code:
        return
    for key, spec in targets(description, ""):
        reason = refusal(spec)
        if reason is not None:
            raise UntrustedCode(f"{where}: {key} = {reason}; a defense folder runs no code of its own. Open it with "
                                "trust_code=True (on the command line trust_code=true) only if you trust its author")
