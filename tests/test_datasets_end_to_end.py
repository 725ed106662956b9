"""CIFAR-10 and the ImageNet subset end to end, on tiny fixtures in their real on-disk formats.

The experiments are the real ``cifar_*`` / ``imagenet_*`` files; only the models (the small CNN
instead of VGG11 / ResNet-152), the image size of the ImageFolder data and the sizes of the
subsets are shrunk so that the whole GCD pipeline runs in seconds on a CPU.
"""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from conftest import compose_config, shrink
from data_fixtures import write_cifar10, write_image_folder
from gcd_lightning.pipeline import run

KEYS = ("classifier.test_acc", "attack.test.success_rate", "detector.auc.gcd", "gcd.acc.adv", "gcd.acc.clean")


def tiny_run(tmp_path, experiment: str, data_root, *overrides: str) -> tuple[dict[str, float], float]:
    cfg = shrink(compose_config([f"+experiment={experiment}", "model=small_cnn", "detector=small_cnn",
                                 f"paths.data_dir={data_root}", *overrides], tmp_path))
    with open_dict(cfg):
        cfg.classifier.max_epochs = 4
        cfg.adversarial.n_train, cfg.adversarial.n_test, cfg.adversarial.batch_size = 30, 10, 10
        cfg.evaluate.n_clean = 10
        cfg.dataset.datamodule.val_size = 5
        cfg.adversarial.train_split = "train"  # 5 validation images cannot give 30 pairs; the MNIST runs test the val split
        cfg.dataset.datamodule.batch_size = 16
        if cfg.rectifier.net is not None:  # the ImageNet experiments' own rectifier network, tiny like f
            cfg.rectifier.net = cfg.model.net
    return run(cfg), cfg.dataset.linf_eps


def check(metrics: dict[str, float], eps: float) -> None:
    for key in KEYS:
        assert key in metrics, key
    assert metrics["classifier.test_acc"] >= 0.5  # class-coloured images (chance: 0.1 and 0.25)
    assert metrics["attack.test.success_rate"] >= 0.8
    assert metrics["attack.test.linf_max"] <= eps + 1e-6
    assert metrics["detector.auc.gcd"] > 0.5


@pytest.mark.slow
def test_cifar10_experiment_runs_end_to_end_on_a_batches_py_fixture(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=40, n_test=40, learnable=True)
    check(*tiny_run(tmp_path, "cifar_pgd_untargeted", tmp_path / "data"))


@pytest.mark.slow
def test_imagenet_subset_experiment_runs_end_to_end_on_an_image_folder_fixture(tmp_path):
    classes = tuple(f"n0{i:07d}" for i in range(4))
    write_image_folder(tmp_path / "data" / "imagenet_subset", classes=classes, n_train=40, n_test=10)
    # solid colours sit far apart: a larger eps than ImageNet's 8/255 lets PGD cross them
    metrics, eps = tiny_run(tmp_path, "imagenet_pgd_untargeted", tmp_path / "data", "dataset.image_size=32",
                            "dataset.linf_eps=0.25", "dataset.pgd_step=0.03")
    check(metrics, eps)
    assert metrics["eval.n_clean"] == 10
