"""White-box (adaptive) attacks on the whole GCD (section 4.2, Tables 3-4).

``objectives`` holds the math (the L+1-class view of a detected classifier after Carlini &
Wagner 2017a, and eq. 14); ``models`` wraps the trained parts into differentiable modules that
the unchanged attacks of ``gcd_lightning.attacks`` optimise against.
"""
