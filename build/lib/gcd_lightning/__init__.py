"""gcd-lightning: the Guided Complementary Defense (Li, Wang & Wu) with Lightning and Hydra.

``from gcd_lightning import load_defense`` loads a defense a run exported (``<run dir>/defense``).
"""

__version__ = "0.1.0"
__all__ = ["load_defense"]


def __getattr__(name: str):
    if name == "load_defense":  # imported on first use: `import gcd_lightning` stays light
        from gcd_lightning.defense.export import load_defense

        return load_defense
    raise AttributeError(f"module 'gcd_lightning' has no attribute {name!r}")
