"""The paper's published numbers, printed beside ours in reports (Li, Wang & Wu, Tables 2-5)."""

from __future__ import annotations

# Table 2 (grey-box): F = base accuracy under attack, then detection AUC of DET_org, DET_IS, GCD.
TABLE2 = {
    "mnist": {
        "fgsm_untargeted": (0.65, 1.00, 0.99, 1.00),
        "pgd_untargeted": (0.00, 1.00, 0.89, 1.00),
        "pgd_targeted": (0.00, 1.00, 0.72, 1.00),
        "deepfool_untargeted": (0.00, 1.00, 1.00, 1.00),
        "cw_untargeted": (0.00, 0.99, 1.00, 1.00),
        "cw_targeted": (0.00, 1.00, 1.00, 1.00),
        "ddn_untargeted": (0.00, 1.00, 1.00, 1.00),
        "ddn_targeted": (0.00, 1.00, 1.00, 1.00),
    },
}

# Table 2's baseline detectors (AUC, grey-box) by our name: DET_sal, DET_PD, DET_TWS, DET_MDS.
TABLE2_BASELINES = {
    "mnist": {
        "fgsm_untargeted": {"sal": 1.00, "pd": 1.00, "tws": 0.73, "mds": 0.81},
        "pgd_untargeted": {"sal": 1.00, "pd": 1.00, "tws": 0.75, "mds": 0.89},
        "pgd_targeted": {"sal": 1.00, "pd": 1.00, "tws": 0.93, "mds": 0.90},
        "deepfool_untargeted": {"sal": 1.00, "pd": 0.98, "tws": 0.99, "mds": 0.87},
        "cw_untargeted": {"sal": 1.00, "pd": 0.93, "tws": 0.95, "mds": 0.89},
        "cw_targeted": {"sal": 1.00, "pd": 0.98, "tws": 0.99, "mds": 0.93},
        "ddn_untargeted": {"sal": 1.00, "pd": 0.98, "tws": 0.80, "mds": 0.89},
        "ddn_targeted": {"sal": 1.00, "pd": 1.00, "tws": 1.00, "mds": 0.95},
    },
}
DETECTORS = {"org": "DET_org", "is": "DET_IS"}
"""GCD's detectors as the paper names them (``defense.detectors`` keys ``org`` and ``is``); ``TABLE2``'s columns 1 and 2."""


def detector_label(name: str) -> str:
    """How reports name a detector of the defense: the paper's ``DET_org`` / ``DET_IS``, else ``DET_<name>``."""
    return DETECTORS.get(name, f"DET_{name}")


# the paper's column name of each baseline (ours without a published column keep their own name)
BASELINE_COLUMNS = {"sal": "DET_sal", "pd": "DET_PD", "tws": "DET_TWS", "mds": "DET_MDS", "gnorm": "‖G‖₂", "squeeze": "Squeeze"}

# Table 5: accuracy of GCD ("Our") and of the base model F, on clean images and under each attack.
TABLE5 = {
    "mnist": {
        "clean": (0.91, 0.92),
        "fgsm_untargeted": (0.85, 0.56),
        "pgd_untargeted": (0.84, 0.27),
        "pgd_targeted": (0.89, 0.66),
        "deepfool_untargeted": (0.90, 0.00),
        "cw_untargeted": (0.90, 0.00),
        "cw_targeted": (0.89, 0.00),
        "ddn_untargeted": (0.90, 0.00),
        "ddn_targeted": (0.90, 0.00),
    },
}

# Table 5's rectifier baselines (accuracy, grey-box) by our name (conf/rectifier_baseline/): PixelDefend,
# DDN and PGD adversarial training, TVM; the "clean" row first.
TABLE5_BASELINES = {
    "mnist": {
        "clean": {"pd": 0.90, "ddn": 0.86, "pgd": 0.84, "tvm": 0.67},
        "fgsm_untargeted": {"pd": 0.75, "ddn": 0.82, "pgd": 0.82, "tvm": 0.49},
        "pgd_untargeted": {"pd": 0.64, "ddn": 0.80, "pgd": 0.81, "tvm": 0.57},
        "pgd_targeted": {"pd": 0.86, "ddn": 0.84, "pgd": 0.87, "tvm": 0.53},
        "deepfool_untargeted": {"pd": 0.88, "ddn": 0.26, "pgd": 0.76, "tvm": 0.65},
        "cw_untargeted": {"pd": 0.88, "ddn": 0.70, "pgd": 0.73, "tvm": 0.66},
        "cw_targeted": {"pd": 0.86, "ddn": 0.72, "pgd": 0.53, "tvm": 0.65},
        "ddn_untargeted": {"pd": 0.89, "ddn": 0.74, "pgd": 0.76, "tvm": 0.66},
        "ddn_targeted": {"pd": 0.89, "ddn": 0.59, "pgd": 0.64, "tvm": 0.65},
    },
}
# the paper's column name of each rectifier baseline, in its order
RECTIFIER_COLUMNS = {"pd": "PD", "ddn": "DDN", "pgd": "PGD", "tvm": "TVM"}

# Table 3 (white-box): attack success rate against f alone (NoDET), f + DET_IS, and GCD ("Our").
TABLE3 = {
    "mnist": {
        "fgsm_untargeted": (0.271, 0.012, 0.000),
        "pgd_untargeted": (1.000, 0.871, 0.263),
        "pgd_targeted": (1.000, 1.000, 0.437),
        "deepfool_untargeted": (1.000, 0.828, 0.286),
        "cw_untargeted": (1.000, 0.000, 0.008),
        "cw_targeted": (1.000, 0.180, 0.471),
        "ddn_untargeted": (1.000, 0.004, 0.941),
        "ddn_targeted": (1.000, 0.808, 0.392),
    },
    "cifar10": {
        "fgsm_untargeted": (0.315, 0.009, 0.000),
        "pgd_untargeted": (0.945, 0.805, 0.143),
        "pgd_targeted": (0.957, 0.734, 0.463),
        "deepfool_untargeted": (1.000, 0.738, 0.394),
        "cw_untargeted": (1.000, 0.009, 0.023),
        "cw_targeted": (1.000, 0.556, 0.321),
        "ddn_untargeted": (1.000, 0.019, 0.014),
        "ddn_targeted": (1.000, 1.000, 1.000),
    },
    "imagenet_subset": {
        "fgsm_untargeted": (0.608, 0.566, 0.180),
        "pgd_untargeted": (1.000, 0.359, 0.425),
        "pgd_targeted": (1.000, 0.456, 0.485),
        "deepfool_untargeted": (0.995, 0.087, 0.087),
        "cw_untargeted": (1.000, 0.009, 0.023),
        "cw_targeted": (0.995, 0.056, 0.015),
        "ddn_untargeted": (1.000, 0.159, 0.092),
        "ddn_targeted": (1.000, 0.338, 0.326),
    },
}

# Table 4: median L2 of the "failed" defenses' white-box attacks, without and with GCD. The paper
# gives one column per attack without naming the data set (its text: DDN-U on MNIST, DDN-T on CIFAR-10).
TABLE4 = {
    "ddn_untargeted": (0.787, 10.252),
    "ddn_targeted": (0.45, 0.618),
}

# Published robust MNIST classifiers, (name, L∞ radius, robust accuracy), for Tramèr's (2022) check:
# a detector robust at ε implies a classifier robust at ε/2. Madry et al. 2018, Table 1 (PGD, 100 steps,
# 20 restarts); Zhang et al. 2019 (TRADES, 1/λ = 6), Table 5. A classifier robust at 0.3 is robust at
# every smaller radius, so these bound from below what is known to be reachable at 0.15.
ROBUST_CLASSIFIERS = {
    "mnist": {
        "linf": [
            ("PGD adversarial training (Madry et al. 2018)", 0.3, 0.893),
            ("TRADES (Zhang et al. 2019)", 0.3, 0.9607),
        ],
        "l2": [],
    },
}
