"""Every experiment file composes, resolves and builds its parts; bad names fail clearly."""

from __future__ import annotations

import subprocess
import sys

import hydra
import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import CONF, compose_config
from gcd_lightning.attacks import Attack
from gcd_lightning.models import SmallCNN, normalized
from gcd_lightning.pipeline.checks import check_config, check_keys
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.pipeline.run import parse_stage, run

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ATTACKS = sorted(p.stem for p in (CONF / "attack").glob("*.yaml"))
ATTACK_NAMES = (
    "fgsm_untargeted", "pgd_untargeted", "pgd_targeted", "deepfool_untargeted",
    "cw_untargeted", "cw_targeted", "ddn_untargeted", "ddn_targeted",
)
# experiment prefix -> the dataset, model and detector body its experiments pick
GRID = {
    "mnist": ("mnist", "small_cnn", "small_cnn"),
    "cifar": ("cifar10", "vgg11", "vgg11"),
    "imagenet": ("imagenet_subset", "resnet152", "vgg11"),
}


def test_the_24_experiments_exist():
    assert set(EXPERIMENTS) == {f"{prefix}_{attack}" for prefix in GRID for attack in ATTACK_NAMES}
    assert set(ATTACKS) == set(ATTACK_NAMES)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_config([f"+experiment={experiment}"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    prefix, attack = experiment.split("_", 1)
    dataset, model_name, detector = GRID[prefix]
    names = tuple(resolved[group]["name"] for group in ("dataset", "model", "detector", "attack"))
    assert names == (dataset, model_name, detector, attack)
    check_keys(cfg)  # every key of every instantiated node is a parameter of its target
    assert resolved["experiment_name"] == f"{dataset}_{attack}"
    assert resolved["attack"]["targeted"] == attack.endswith("_targeted")
    model = normalized(SmallCNN(cfg.dataset.in_channels, cfg.dataset.num_classes), cfg.dataset.mean, cfg.dataset.std)
    built = hydra.utils.instantiate(cfg.attack.attack)(model=model.eval())
    assert isinstance(built, Attack)
    assert built.targeted == cfg.attack.targeted
    # the classifier and the detector body on images of the data set's shape, shapes only (meta
    # device): ResNet-152 on 224x224 images costs nothing
    images = torch.zeros(2, cfg.dataset.in_channels, cfg.dataset.image_size, cfg.dataset.image_size, device="meta")
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model.net)
        body = hydra.utils.instantiate(cfg.detector.body)
        rectifier = None if cfg.rectifier.net is None else hydra.utils.instantiate(cfg.rectifier.net)
    assert net(images).shape == (2, cfg.dataset.num_classes)
    assert body(images).shape == (2, 2)
    # f_rec: a copy of f, except on the ImageNet subset (the paper's Wide ResNet, 4.3)
    assert (rectifier is not None) == (prefix == "imagenet")
    if rectifier is not None:
        assert cfg.rectifier.net._target_.endswith("wide_resnet50_2")
        assert rectifier(images).shape == (2, cfg.dataset.num_classes)


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("imagenet_")])
def test_imagenet_experiments_ask_for_no_more_images_than_the_splits_hold(experiment, tmp_path):
    # test images: ILSVRC val, 50 per class (1,000); the detectors' pairs: f's validation split. Only the
    # correctly classified ones are attacked, so each split must hold at least as many images as asked for
    cfg = compose_config([f"+experiment={experiment}"], tmp_path)
    assert cfg.adversarial.train_split == "val"
    assert cfg.adversarial.n_test <= 50 * cfg.dataset.num_classes == 1000
    assert cfg.adversarial.n_train <= cfg.dataset.datamodule.val_size


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



def config_context(overrides: list[str], tmp_path) -> RunContext:
    """A ``RunContext`` of the root config with ``overrides`` and no data (``source_split`` reads the config only)."""
    return RunContext(cfg=compose_config(overrides, tmp_path), datamodule=None, output_dir=tmp_path, cache_dir=tmp_path,
                      device=torch.device("cpu"), loggers=[])


@pytest.mark.parametrize(("overrides", "source"), [([], "val"), (["adversarial.train_split=train"], "train")])
def test_detector_pairs_come_from_the_validation_split_unless_asked(overrides, source, tmp_path):
    ctx = config_context(overrides, tmp_path)
    assert (ctx.source_split("train"), ctx.source_split("test")) == (source, "test")


def test_unknown_train_split_names_the_config_key(tmp_path):
    ctx = config_context(["adversarial.train_split=test"], tmp_path)
    assert ctx.source_split("test") == "test"  # the test set never depends on it
    with pytest.raises(ValueError, match=r"adversarial\.train_split='test'.*val.*train"):
        ctx.source_split("train")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rectifier.alpha=1.5", r"rectifier\.alpha=1\.5 is not allowed: it must be a number in \[0, 1\]"),
        ("rectifier.alpha=abc", r"rectifier\.alpha='abc' is not allowed: it must be a number in \[0, 1\]"),
        ("rectifier.p=-0.1", r"rectifier\.p=-0\.1 .* \[0, 1\]"),
        ("adversarial.n_test=0", r"adversarial\.n_test=0 .* an integer >= 1"),
        ("adversarial.train_split=test", r"adversarial\.train_split='test' .* one of \['val', 'train'\]"),
        ("classifier.max_epochs=0", r"classifier\.max_epochs=0 .* an integer >= 1"),
        ("dataset.linf_eps=0", r"dataset\.linf_eps=0 .* \(0, 1\]"),
        ("dataset.num_classes=1", r"dataset\.num_classes=1 .* an integer >= 2"),
        ("dataset.datamodule.batch_size=0", r"dataset\.datamodule\.batch_size=0 .* an integer >= 1"),
        ("dataset.std=[0.3,0.3]", r"dataset\.std=\[0\.3, 0\.3\] .* dataset\.in_channels=1 number\(s\) in \(0, 1\]"),
        ("dataset.mean=[1.5]", r"dataset\.mean=\[1\.5\] .* in \[0, 1\]"),
        ("attack=pgd_untargeted attack.eps=-1", r"attack=pgd_untargeted: PGD: eps must lie in \(0, 1\], got -1"),
        ("attack.attack.learning_rate=nan", r"attack=cw_targeted: CW: learning_rate must lie in"),
        ("threat=whitebox threat.suite=strongest", r"threat\.suite=strongest: suite=strongest: no such suite; choose one of \[.paper., .plus., .rand., .standard.\]"),
        ("threat=whitebox threat.suite=rand", r"threat\.suite=rand: a suite without eot_samples"),
        ("threat=whitebox threat.rand_suite=standard", r"threat\.rand_suite=standard: the randomised GCD needs a suite with eot_samples > 0"),
        ("threat=whitebox threat.n_test=0", r"threat\.n_test=0 must be at least 1"),
        ("threat=whitebox threat.donors=-1", r"threat\.donors=-1 must be at least 0"),
        ("threat=whitebox threat.robustness.linf_eps=[0.1,2]", r"threat budgets must be > 0 \(L∞ ones at most 1\)"),
        ("threat=whitebox threat.rectifier_baselines=[tvn]", r"threat\.rectifier_baselines: unknown \[.tvn.\]; choose from \[.ddn., .pd., .pgd., .tvm.\]"),
        ("model.net.width=0", r"model\.net: SmallCNN: width must be at least 1, got 0 \(model\.net\.\* in the config\)"),
        ("model.optimizer.lr=-1", r"model\.optimizer: Invalid learning rate: -1"),
        ("defense.train_attacks=[pgd_targeted,nope]", r"defense\.train_attacks: unknown attack\(s\) \['nope'\]; choose from"),
        ("evaluate.transfer_attacks=[cw]", r"evaluate\.transfer_attacks: unknown attack\(s\) \['cw'\]"),
    ],
)
def test_bad_values_fail_before_any_work_naming_key_value_and_range(override, message, tmp_path):
    cfg = compose_config(override.split(), tmp_path)
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing written, nothing cached


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+rectifier.alhpa=0.3", r"\+rectifier\.alhpa: no config defines 'rectifier\.alhpa' .*did you mean rectifier\.alpha\?"),
        ("+seeed=3", r"\+seeed: no config defines 'seeed' .*did you mean seed\?"),
        ("+trainer.max_epoch=3", r"trainer\.max_epoch: pytorch_lightning\.Trainer takes no argument 'max_epoch'; did you mean trainer\.max_epochs\?"),
        ("+model.net.widht=8", r"model\.net\.widht: gcd_lightning\.models\.SmallCNN takes no argument 'widht'; did you mean model\.net\.width\?"),
        ("+attack.attack.stepsize=0.1", r"attack\.attack\.stepsize: gcd_lightning\.attacks\.PGD takes no argument 'stepsize'"),
    ],
)
def test_a_misspelled_added_key_is_refused_with_the_key_it_meant(override, message, tmp_path):
    overrides = ["+experiment=mnist_pgd_untargeted", override]
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(ValueError, match=message):
        check_config(cfg, overrides)


def test_added_parameters_of_instantiated_nodes_and_groups_are_accepted(tmp_path):
    overrides = ["+experiment=mnist_pgd_untargeted", "+trainer.limit_train_batches=20", "++rectifier.alpha=0.3"]
    check_config(compose_config(overrides, tmp_path), overrides)


def test_the_command_line_refuses_a_misspelled_key_before_any_work(tmp_path):
    command = [sys.executable, "-m", "gcd_lightning", "+experiment=mnist_pgd_untargeted", "+rectifier.alhpa=0.3",
               f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}", "logger=none"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "+rectifier.alhpa: no config defines 'rectifier.alhpa'" in done.stderr + done.stdout
    assert not (tmp_path / "cache").exists()
