"""The user's own classifier (``model=external``): a torchvision architecture with a local state dict, a
``torch.export`` program (``.pt2``) or a TorchScript file (deprecated by torch). Each takes pixels already
normalised by ``Normalize`` and gives logits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
            ``weights_path``; ``None`` when ``weights_path`` is a ``torch.export`` program or a TorchScript file.
        weights_path: the state dict of ``arch`` (``torch.save(net.state_dict(), path)``), a ``torch.export``
            program (a ``.pt2`` file, ``torch.export.save(torch.export.export(net.eval(), (x,)), path)``, exported
            with a dynamic batch dimension), or the TorchScript file (``torch.jit.save(torch.jit.script(net), path)``)
            when ``torchscript``.
        num_classes: outputs of ``arch``'s last layer (a TorchScript model's are checked by the
            classifier stage on real images).
        torchscript: ``weights_path`` is a TorchScript file holding architecture and weights.

    The parameters come back frozen: ``f`` is evaluated, never trained, and a copy that is
    fine-tuned (the rectifier's start, ``RectifierFineTune``) switches them back on.

    Raises one-line errors that name the config key and the fix (``model.arch``, ``model.torchscript``,
    ``model.weights_path``) for a missing, unreadable or mismatched file or an unknown architecture.
    """
    exported = Path(weights_path).suffix == EXPORTED_SUFFIX
    if (arch is None) == (not torchscript) and not (exported and arch is None and not torchscript):
        raise ValueError(
            f"model=external with model.arch={arch!r} and model.torchscript={torchscript}: set exactly one, "
            "model.arch=<torchvision name> for a state dict or model.torchscript=true for a TorchScript file; "
            "a torch.export program (model.weights_path=<file>.pt2) takes neither"
        )
    path = weights_file(weights_path)
    if exported:
        net = load_exported(path)
    else:
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


EXPORTED_SUFFIX = ".pt2"


class ExportedNetwork(nn.Module):
    """A ``torch.export`` program as a module. Its graph was exported in one mode (inference: batch norm on
    its running statistics) and a program has no mode to switch (``.module().eval()`` raises), so ``train``
    and ``eval`` set this wrapper's flag only; its parameters train as any module's."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program = program.module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedNetwork:
        self.training = mode
        return self


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside the block with ``weights_only=True``: ``torch.export.load`` falls back to
    unpickling (running) what it cannot load that way; here such a file fails instead."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def load_exported(path: Path) -> nn.Module:
    """``torch.export.load`` of a ``.pt2`` program, its tensors loaded with ``weights_only=True``, as a module."""
    try:
        with weights_only_loads():
            program = torch.export.load(str(path))
    except Exception as err:
        raise RuntimeError(
            f"model.weights_path={path} is not a torch.export program of tensors only ({first_line(err)}); save your model "
            "with torch.export.save(torch.export.export(net.eval(), (x,), dynamic_shapes=...), path), or give a state "
            "dict with model.arch=<torchvision name>"
        ) from err
    return ExportedNetwork(program)


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
