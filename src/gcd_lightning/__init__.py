"""gcd-lightning: the Guided Complementary Defense (Li, Wang & Wu) with Lightning and Hydra."""

__version__ = "0.1.0"
