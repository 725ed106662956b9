"""Every experiment file composes, resolves and builds its parts; bad names fail clearly."""

from __future__ import annotations

import hydra
import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import CONF, compose_config
from gcd_lightning.attacks import Attack
from gcd_lightning.models import SmallCNN, normalized
from gcd_lightning.pipeline.run import parse_stage

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ATTACKS = sorted(p.stem for p in (CONF / "attack").glob("*.yaml"))


def test_the_eight_mnist_experiments_exist():
    expected = {
        f"mnist_{a}"
        for a in (
            "fgsm_untargeted", "pgd_untargeted", "pgd_targeted", "deepfool_untargeted",
            "cw_untargeted", "cw_targeted", "ddn_untargeted", "ddn_targeted",
        )
    }
    assert expected <= set(EXPERIMENTS)
    assert set(ATTACKS) == {name.removeprefix("mnist_") for name in expected}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_config([f"+experiment={experiment}"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    dataset, attack = experiment.split("_", 1)
    assert resolved["dataset"]["name"] == dataset
    assert resolved["attack"]["name"] == attack
    assert resolved["experiment_name"] == experiment
    assert resolved["attack"]["targeted"] == attack.endswith("_targeted")
    model = normalized(SmallCNN(cfg.dataset.in_channels, cfg.dataset.num_classes), cfg.dataset.mean, cfg.dataset.std)
    built = hydra.utils.instantiate(cfg.attack.attack)(model=model.eval())
    assert isinstance(built, Attack)
    assert built.targeted == cfg.attack.targeted
    net = hydra.utils.instantiate(cfg.model.net)
    images = torch.zeros(2, cfg.dataset.in_channels, cfg.dataset.image_size, cfg.dataset.image_size)
    assert net(images).shape == (2, cfg.dataset.num_classes)


def test_unknown_experiment_names_the_options(tmp_path):
    with pytest.raises(MissingConfigException, match="mnist_cw_targeted"):
        compose_config(["+experiment=mnist_no_such_attack"], tmp_path)


def test_unknown_stage_lists_the_stages():
    with pytest.raises(ValueError, match="classifier, attack, detectors, rectifier, evaluate, all"):
        parse_stage("detector")


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_goal_matches_targeted_and_picks_the_papers_alpha(attack, tmp_path):
    cfg = compose_config([f"attack={attack}"], tmp_path)
    assert cfg.attack.goal == ("targeted" if cfg.attack.targeted else "untargeted")
    assert cfg.rectifier.alpha == (0.6 if cfg.attack.targeted else 0.55)  # the paper's MNIST values
