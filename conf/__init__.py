"""Hydra configs of gcd-lightning (a package so that the installed wheel can read them: ``gcd_lightning.conf``)."""
