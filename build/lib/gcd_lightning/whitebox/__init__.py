"""White-box (adaptive) attacks on each detector and the whole GCD (section 4.2, Tables 3-4).

``objectives`` holds the math (the L+1-class view of a detected classifier after Carlini &
Wagner 2017a, eq. 14, and the hinge losses on ``f`` and every detector); ``models`` wraps the
trained parts into differentiable modules; ``opgd`` is orthogonal / selective PGD (Bryniarski et
al. 2022); ``surrogate`` the softplus BPDA for ``DET_IS``; ``indicators`` the checks of attack
failure (Pintor et al. 2022) and the robust-accuracy figures.
"""
