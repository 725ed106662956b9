"""The stages of a run (classifier → attack → …) and the ``run(cfg)`` that chains them."""

from gcd_lightning.pipeline.run import Stage, run

__all__ = ["Stage", "run"]
