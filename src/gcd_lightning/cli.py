"""What the small command lines (``predict``, ``evaluate``) share: Hydra-style ``key=value`` arguments, flags, the device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def key_values(argv: Sequence[str], options: Mapping[str, str | None], program: str, usage: str) -> dict[str, str]:
    """``key=value`` arguments over the defaults of ``options`` (None: required), one clear error for anything else."""
    args = dict(options)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            raise SystemExit(f"{program}: unknown argument {arg!r}; expected key=value with key in {sorted(options)}\n{usage}")
        args[key] = value
    missing = [key for key, value in args.items() if value is None]
    if missing:
        raise SystemExit(f"{program}: missing {', '.join(f'{key}=' for key in missing)}\n{usage}")
    return args


def flag(args: Mapping[str, str], key: str, program: str) -> bool:
    """A ``true`` / ``false`` option, or an error naming it."""
    value = args[key].lower()
    if value not in ("true", "false"):
        raise SystemExit(f"{program}: {key}={args[key]} must be true or false")
    return value == "true"


def device(choice: str, program: str) -> torch.device:
    """``device=auto|cpu|cuda``: the GPU when asked for (or ``auto`` and one is there), else the CPU."""
    if choice not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"{program}: device={choice} is unknown; choose auto, cpu or cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{program}: device=cuda but no GPU is available; use device=cpu")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")
