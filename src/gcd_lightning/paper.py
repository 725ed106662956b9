"""The paper's published numbers, printed beside ours in reports (Li, Wang & Wu, Tables 2 and 5)."""

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
