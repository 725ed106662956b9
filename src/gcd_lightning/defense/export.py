"""A trained defense as one self-contained folder: ``export_defense`` writes it, ``load_defense`` reads it.

The folder holds ``defense.yaml`` (what to build: each part's ``_target_`` and settings, the
normalisation, the number of classes, the input shape, the content hash of the classifier the
detectors were trained for) and one state dict per part. ``f``'s own weights are included when
the run trained ``f``; a user's own classifier (``model=external``) is not copied: it is passed at
load time, or rebuilt from the user's file that its recorded config names. Weights load with
``weights_only=True``, and opening a folder runs no code of its own: every ``_target_`` in ``defense.yaml``
must be the package's (``defense.trust``) unless the user passes ``trust_code=True``.

The classifier in the file and the one passed to ``load_defense`` is the network *behind* the
recorded normalisation (``normalization.mean/std``): ``load_defense`` puts that normalisation in
front of it, as the pipeline does (``models.normalized``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from torch import nn

from gcd_lightning.defense.gcd import GCD
from gcd_lightning.defense.trust import check_trusted
from gcd_lightning.models.normalize import normalized
from gcd_lightning.utils.files import load_torch, umask_mode
from gcd_lightning.utils.hashing import state_dict_hash, to_plain

FORMAT = "gcd-lightning-defense/2"
NETWORK_ONLY = "gcd-lightning-defense/1"  # an older folder: its rectifier.pt holds only f_rec's inner network
READABLE = (FORMAT, NETWORK_ONLY)
DESCRIPTION = "defense.yaml"
CLASSIFIER = "classifier.pt"
RECTIFIER = "rectifier.pt"


def detector_file(name: str) -> str:
    return f"detector_{name}.pt"


def export_defense(
    gcd: GCD,
    folder: str | os.PathLike,
    *,
    classifier_net: Mapping[str, Any],
    external: bool,
    rectifier_net: Mapping[str, Any],
    detector_specs: Mapping[str, Mapping[str, Any]],
    rectifier_spec: Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    input_shape: Sequence[int],
    dataset: str,
) -> Path:
    """Write ``gcd`` into ``folder`` (replaced as a whole, never left half-written).

    ``gcd.classifier`` must be a ``models.normalized`` network (the pipeline's): its inner network is
    stored. The rectifier, any ``Rectifier`` built from ``rectifier_spec`` and ``network=`` (``f_rec``, the
    normalised ``rectifier_net``), is stored whole: its network and whatever state of its own it has.

    Args:
        classifier_net: the config that builds ``f``'s network (``model.net``).
        external: ``f`` is the user's own classifier: its weights are not copied.
        rectifier_net: the config that builds ``f_rec``'s network.
        detector_specs: each detector's config (``defense.detectors``), its body config under ``body``.
        rectifier_spec: the rectifier's config (``defense.rectifier``), without the network.
        mean, std: the normalisation in front of ``f`` and ``f_rec``.
        num_classes, input_shape, dataset: what the defense classifies.
    """
    folder = Path(folder)
    classifier = gcd.classifier[1]
    description = {
        "format": FORMAT,
        "dataset": dataset,
        "num_classes": int(num_classes),
        "input_shape": [int(v) for v in input_shape],
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "classifier": {
            "sha256": state_dict_hash(classifier),
            "net": to_plain(classifier_net),
            "weights": None if external else CLASSIFIER,
        },
        "detectors": {
            name: {"spec": to_plain(spec), "weights": detector_file(name)} for name, spec in detector_specs.items()
        },
        "rectifier": {"spec": to_plain(rectifier_spec), "net": to_plain(rectifier_net), "weights": RECTIFIER},
    }
    if list(description["detectors"]) != gcd.detector_names:
        raise ValueError(f"export_defense: detector_specs {list(detector_specs)} must follow the defense's {gcd.detector_names}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (staging / DESCRIPTION).write_text(yaml.safe_dump(description, sort_keys=False))
        if not external:
            torch.save(classifier.state_dict(), staging / CLASSIFIER)
        for name, detector in zip(gcd.detector_names, gcd.detectors):
            torch.save(detector.state_dict(), staging / detector_file(name))
        torch.save(gcd.rectifier.state_dict(), staging / RECTIFIER)
        os.chmod(staging, umask_mode(0o777))  # mkdtemp makes it 0700
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_description(folder: Path) -> dict[str, Any]:
    """``defense.yaml`` of an exported defense, with an error naming the folder when it is not one."""
    path = folder / DESCRIPTION
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported defense: {DESCRIPTION} is missing (a run writes <run dir>/defense/)")
    try:
        description = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RuntimeError(f"{path} is corrupt ({err}); export the defense again") from err
    if not isinstance(description, dict) or description.get("format") not in READABLE:
        found = description.get("format") if isinstance(description, dict) else None
        raise RuntimeError(f"{path}: unknown format {found!r}; this version reads {list(READABLE)}")
    return description


def load_defense(
    folder: str | os.PathLike,
    classifier: nn.Module | None = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
    trust_code: bool = False,
) -> GCD:
    """The exported defense in ``folder`` as a ``GCD`` module in eval mode on ``device``.

    ``defense(x)`` gives logits, ``defense.predict(x)`` labels, flags, each detector's ``p⁻``, the
    deciding detector and whether ``f`` or the rectifier answered (``Prediction``).

    Args:
        folder: the ``defense/`` folder of a run.
        classifier: the network to protect, without its normalisation (the recorded one is put
            in front). By default the exported ``f``, or the user's own classifier rebuilt from
            the file its recorded config names.
        strict: refuse a classifier whose weights differ from those the detectors were trained
            for (content hash); ``False`` loads it anyway (the detectors may then be meaningless).
        device: where the modules go.
        trust_code: build whatever ``defense.yaml`` names (a user's own detector or network class); by default
            only the package's own modules, and a folder naming anything else is refused before it is imported
            (``defense.trust``).
    """
    folder = Path(folder)
    description = read_description(folder)
    check_trusted(description, str(folder / DESCRIPTION), trust_code)
    recorded = description["classifier"]
    if classifier is None and recorded["weights"] is None:
        try:
            classifier = hydra.utils.instantiate(recorded["net"])  # the user's classifier, from the file it names
        except Exception as err:
            raise ValueError(
                f"{folder} protects a classifier of your own, which is not stored in it, and rebuilding it from "
                f"its recorded config failed ({err}); pass it: load_defense(folder, classifier=net) (without normalisation)"
            ) from err
    elif classifier is None:
        classifier = hydra.utils.instantiate(recorded["net"])
        classifier.load_state_dict(load_torch(folder / recorded["weights"], "the defense's classifier"))
    found = state_dict_hash(classifier)
    if strict and found != recorded["sha256"]:
        raise ValueError(
            f"the classifier's weights (hash {found}) differ from those the defense in {folder} was trained for "
            f"(hash {recorded['sha256']}); pass that classifier, or strict=False to load anyway"
        )
    norm = description["normalization"]
    f = normalized(classifier, norm["mean"], norm["std"]).eval()
    detectors = []
    for name, entry in description["detectors"].items():
        detector = hydra.utils.instantiate(entry["spec"], classifier=f)
        detector.load_state_dict(load_torch(folder / entry["weights"], f"the defense's detector {name}"))
        detectors.append(detector.eval())
    rectifier_entry = description["rectifier"]
    network = hydra.utils.instantiate(rectifier_entry["net"])
    rectifier = hydra.utils.instantiate(rectifier_entry["spec"], network=normalized(network, norm["mean"], norm["std"]))
    state = load_torch(folder / rectifier_entry["weights"], "the defense's rectifier")
    (network if description["format"] == NETWORK_ONLY else rectifier).load_state_dict(state)
    gcd = GCD(f, detectors, rectifier, input_shape=description["input_shape"])
    return gcd.to(device).eval()
