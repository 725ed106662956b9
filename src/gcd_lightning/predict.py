"""``python -m gcd_lightning.predict defense=<folder> inputs=<images> out=<file.csv>``: a saved defense on your images.

``inputs`` is a folder of PNG/JPEG files, a ``.pt`` tensor or a ``.npy`` array of images
(N, C, H, W) with values in [0, 1]. One CSV row per image: its label, whether it was flagged,
``p⁻`` of each detector and of the ensemble, the deciding detector, and the labels of ``f`` and of
the rectifier (empty where ``f`` answered). An image that cannot be read or does not fit the
defense (size, channels, range, NaN/inf) gets its reason in the ``error`` column and the others
are still answered; with ``nonfinite=flag`` an image with NaN/inf values is flagged instead,
with no label. Options: ``batch_size=256``, ``device=auto|cpu|cuda``, ``progress=true``,
``nonfinite=refuse|flag``, ``trust_code=false`` (``true`` builds a folder's own classes: ``load_defense``).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from gcd_lightning import cli
from gcd_lightning.defense.export import load_defense
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.defense.trust import UntrustedCode
from gcd_lightning.inputs import check_inputs
from gcd_lightning.utils.files import load_torch, save_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".pt", ".npy")
OPTIONS = {"defense": None, "inputs": None, "out": None, "batch_size": "256", "device": "auto", "progress": "true",
           "nonfinite": "refuse", "trust_code": "false"}


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments (Hydra's style) into a dict, with a clear error for anything else."""
    return cli.key_values(argv, OPTIONS, "predict", __doc__)


def read_image(path: Path, input_shape: Sequence[int]) -> torch.Tensor:
    """One PNG/JPEG as a float (C, H, W) tensor in [0, 1], converted to the defense's channel count."""
    channels = input_shape[0]
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        array = np.asarray(image, dtype=np.uint8)
    x = torch.from_numpy(array.copy()).float().div(255)
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if tuple(x.shape) != tuple(input_shape):
        raise ValueError(f"image is {x.shape[2]}x{x.shape[1]} with {x.shape[0]} channel(s); the defense expects {tuple(input_shape)}")
    return x


def read_inputs(source: Path, input_shape: Sequence[int]) -> Iterator[tuple[str, torch.Tensor | None, str]]:
    """``(name, image or None, error)`` for every input in ``source``, in a stable order."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise SystemExit(f"predict: {source} holds no files; give PNG/JPEG images, a .pt or a .npy file")
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                yield path.name, None, f"unknown file type {path.suffix!r}; expected one of {IMAGE_SUFFIXES}"
                continue
            try:
                yield path.name, read_image(path, input_shape), ""
            except (OSError, UnidentifiedImageError, ValueError) as err:
                yield path.name, None, f"unreadable: {err}".replace("\n", " ")
        return
    if not source.is_file():
        raise SystemExit(f"predict: inputs={source} does not exist")
    if source.suffix == ".pt":
        array = load_torch(source, "inputs")
    elif source.suffix == ".npy":
        try:
            array = torch.from_numpy(np.load(source, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise SystemExit(f"predict: {source} is not a readable .npy array ({err})") from err
    else:
        raise SystemExit(f"predict: unknown input type {source.suffix!r}; give a folder of {IMAGE_SUFFIXES} images, a .pt or a .npy")
    if not isinstance(array, torch.Tensor) or array.dim() != 4:
        shape = tuple(array.shape) if isinstance(array, torch.Tensor) else type(array).__name__
        raise SystemExit(f"predict: {source} must hold images of shape (N, {', '.join(map(str, input_shape))}), got {shape}")
    for i, image in enumerate(array):
        yield f"{source.name}[{i}]", image, ""


def answer(defense: GCD, names: list[str], images: list[torch.Tensor], device: torch.device,
           nonfinite: str = "refuse") -> list[dict[str, object]]:
    """One CSV row per image of a batch that passed the input guard; labels of -1 (non-finite inputs) are empty."""
    prediction = defense.predict(torch.stack(images).to(device), nonfinite=nonfinite)
    scores = {name: score.cpu() for name, score in prediction.adversarial_scores.items()}
    detector_names = defense.detector_names
    rows = []
    for i, name in enumerate(names):
        rectified, label, f_label = (int(t[i]) for t in (prediction.rectified_label, prediction.label, prediction.f_label))
        rows.append(
            {
                "file": name,
                "label": "" if label < 0 else label,
                "flagged": bool(prediction.flagged[i]),
                **{f"p_adv_{key}": f"{float(value[i]):.6g}" for key, value in scores.items()},
                "decided_by": detector_names[int(prediction.detection.decided[i])],
                "f_label": "" if f_label < 0 else f_label,
                "rectified_label": "" if rectified < 0 else rectified,
                "error": "",
            }
        )
    return rows


def predict_folder(defense: GCD, source: Path, batch_size: int, device: torch.device, progress: bool,
                   nonfinite: str = "refuse") -> list[dict[str, object]]:
    """Every input of ``source`` through ``defense``, in batches; rows in input order (``nonfinite``: see ``GCD.predict``)."""
    rows: list[dict[str, object]] = []
    pending: list[tuple[int, str, torch.Tensor]] = []

    def flush() -> None:
        for (slot, _, _), row in zip(pending, answer(defense, [n for _, n, _ in pending], [x for _, _, x in pending], device, nonfinite)):
            rows[slot] = row
        pending.clear()

    for name, image, error in tqdm(read_inputs(source, defense.input_shape), desc="predict", unit="image", disable=not progress):
        if image is not None:
            try:
                # flagged later rather than refused: the guard checks the rest of the image
                guarded = torch.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0) if nonfinite == "flag" else image
                check_inputs(guarded[None], defense.input_shape)
            except ValueError as err:
                image, error = None, str(err)
        rows.append({"file": name, "error": error})
        if image is not None:
            pending.append((len(rows) - 1, name, image))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return rows


def to_csv(rows: list[dict[str, object]], detector_names: Sequence[str]) -> str:
    columns = ["file", "label", "flagged", *(f"p_adv_{n}" for n in [*detector_names, "gcd"]), "decided_by", "f_label", "rectified_label", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        batch_size = int(args["batch_size"])
    except ValueError:
        batch_size = 0
    if batch_size < 1:
        raise SystemExit(f"predict: batch_size={args['batch_size']} must be a positive integer")
    device = cli.device(args["device"], "predict")
    if args["nonfinite"] not in ("refuse", "flag"):
        raise SystemExit(f"predict: nonfinite={args['nonfinite']} is unknown; choose refuse or flag")
    try:
        defense = load_defense(args["defense"], device=device, trust_code=cli.flag(args, "trust_code", "predict"))
    except UntrustedCode as err:
        raise SystemExit(f"predict: {err}") from None
    rows = predict_folder(defense, Path(args["inputs"]), batch_size, device, cli.flag(args, "progress", "predict"), args["nonfinite"])
    out = save_text(to_csv(rows, defense.detector_names), args["out"])
    failed = sum(1 for row in rows if row["error"])
    print(f"predict: {len(rows) - failed} of {len(rows)} inputs answered ({failed} with errors) -> {out}")
    return out


if __name__ == "__main__":
    main()
