"""The user's own classifier (``model=external``): a torchvision architecture with a local state dict,
or a TorchScript file. Either takes pixels already normalised by ``Normalize`` and gives logits."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from gcd_lightning.models.resnet import load_matching


def external_classifier(arch: str | None, weights_path: str, num_classes: int, torchscript: bool = False) -> nn.Module:
    """The network of ``weights_path``, ready to evaluate (nothing is downloaded).

    Args:
        arch: a ``torchvision.models`` name (``torchvision.models.list_models()``), built with
            ``get_model(arch, num_classes=num_classes)`` and given the state dict of
            ``weights_path``; ``None`` when ``weights_path`` is a TorchScript file.
        weights_path: the state dict of ``arch`` (``torch.save(net.state_dict(), path)``), or the
            TorchScript file (``torch.jit.save(torch.jit.script(net), path)``) when ``torchscript``.
        num_classes: outputs of ``arch``'s last layer (a TorchScript model's are checked by the
            classifier stage on real images).
        torchscript: ``weights_path`` is a TorchScript file holding architecture and weights.

    The parameters come back frozen: ``f`` is evaluated, never trained, and a copy that is
    fine-tuned (the rectifier's start, ``RectifierFineTune``) switches them back on.

    Raises one-line errors that name the config key and the fix (``model.arch``, ``model.torchscript``,
    ``model.weights_path``) for a missing, unreadable or mismatched file or an unknown architecture.
    """
    if (arch is None) == (not torchscript):
        raise ValueError(
            f"model=external with model.arch={arch!r} and model.torchscript={torchscript}: set exactly one, "
            "model.arch=<torchvision name> for a state dict or model.torchscript=true for a TorchScript file"
        )
    path = weights_file(weights_path)
    net = load_torchscript(path) if torchscript else load_torchvision(arch, path, num_classes)
    for parameter in net.parameters():  # a deep copy of a ScriptModule keeps leaf parameters only when frozen
        parameter.requires_grad_(False)
    return net


def weights_file(weights_path: str) -> Path:
    """``model.weights_path`` as an existing file, or an error that says how to set it."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights_path={weights_path}: no file at {path.resolve()}; "
            "set it to your model's state dict (with model.arch) or TorchScript file (with model.torchscript=true)"
        )
    return path


def load_torchscript(path: Path) -> nn.Module:
    """``torch.jit.load`` on the CPU, or an error for a file that is not TorchScript."""
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise RuntimeError(
            f"model.weights_path={path} is not a TorchScript file ({first_line(err)}); save your model with "
            "torch.jit.save(torch.jit.script(net), path), or give a state dict with model.arch=<torchvision name> "
            "model.torchscript=false"
        ) from err


def load_torchvision(arch: str, path: Path, num_classes: int) -> nn.Module:
    """torchvision's ``arch`` with ``num_classes`` outputs and the state dict at ``path``."""
    if arch not in torchvision.models.list_models():
        raise ValueError(
            f"model.arch={arch!r} is not a torchvision model; set it to one of torchvision.models.list_models() "
            "(e.g. resnet18), or use model.arch=null model.torchscript=true for a TorchScript file"
        )
    net = torchvision.models.get_model(arch, num_classes=num_classes)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise not_a_state_dict(path, first_line(err)) from err
    if not isinstance(state, dict):
        raise not_a_state_dict(path, f"it holds a {type(state).__name__}")
    load_matching(net, state, f"model.weights_path={path} (for model.arch={arch}, dataset.num_classes={num_classes})")
    return net


def not_a_state_dict(path: Path, reason: str) -> RuntimeError:
    return RuntimeError(
        f"model.weights_path={path} is not a state dict ({reason}); save it with torch.save(net.state_dict(), path), "
        "or set model.arch=null model.torchscript=true for a TorchScript file"
    )


def first_line(err: BaseException) -> str:
    """The exception's type and the first sentence of its message, for one-line errors."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].split('. ')[0] if lines else ''}"
