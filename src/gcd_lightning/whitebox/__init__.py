"""White-box (adaptive) attacks on each detector and the whole GCD (section 4.2, Tables 3-4).

``objectives`` holds the math (the L+1-class view of a detected classifier after Carlini &
Wagner 2017a, eq. 14, and the hinge losses on ``f`` and every detector); ``models`` wraps the
trained parts into differentiable modules; ``opgd`` is APGD-style orthogonal / selective PGD
(Bryniarski et al. 2022); ``blend`` and ``hopskipjump`` the decision-based attacks; ``suite`` the
cascade that runs them (AutoAttack's shape); ``indicators`` the checks of attack failure (Pintor
et al. 2022) and Tramèr's check.
"""
