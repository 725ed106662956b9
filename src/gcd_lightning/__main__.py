"""``python -m gcd_lightning +experiment=<name> [overrides]`` (installed: ``gcd-lightning ...``).

The configs are read from the package's ``conf`` folder (in a checkout, a link to the top-level
``conf/``; in a wheel, a copy), so the command works from any directory.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from gcd_lightning.pipeline import run  # here: --help, --cfg and a refused override answer without loading torch

    run(cfg)


if __name__ == "__main__":
    main()
