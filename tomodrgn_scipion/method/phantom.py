"""A built-in two-state phantom, generated on the fly, so demos and tests need no external data.

The particle is a chiral body of Gaussian blobs (a core and a stalk) with one mobile domain. In
state 0 the domain sits against the core; in state 1 it has swung 90 degrees around the stalk and a
small subunit has left (a conformational plus a compositional change, as between assembly states).
Sizes scale with the box, so the phantom looks the same at any D.
"""
from __future__ import annotations

import numpy as np

#: Blobs of the fixed body: (x, y, z, sigma, amplitude); positions and sigma as fractions of D.
_BODY = np.array([
    (0.00, 0.00, 0.00, 0.085, 1.00),
    (0.10, 0.04, -0.03, 0.070, 0.90),
    (-0.08, 0.07, 0.05, 0.065, 0.85),
    (0.02, -0.10, 0.06, 0.060, 0.80),
    (-0.04, -0.05, -0.10, 0.055, 0.75),
    (0.14, -0.08, 0.10, 0.045, 0.70),
    # the stalk: a bent chain of small blobs (makes the body chiral)
    (-0.16, 0.02, 0.00, 0.035, 0.70),
    (-0.22, 0.06, 0.04, 0.032, 0.65),
    (-0.26, 0.12, 0.09, 0.030, 0.60),
])
#: The mobile domain in state 0.
_DOMAIN = np.array([
    (0.12, 0.16, -0.08, 0.055, 0.90),
    (0.20, 0.20, -0.02, 0.045, 0.80),
    (0.06, 0.24, -0.12, 0.040, 0.70),
])
#: A small subunit present only in state 0.
_SUBUNIT = np.array([(0.02, 0.02, 0.20, 0.045, 0.85)])


def _rotate_about_x(blobs: np.ndarray, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    out = blobs.copy()
    y, z = blobs[:, 1], blobs[:, 2]
    out[:, 1] = np.cos(a) * y - np.sin(a) * z
    out[:, 2] = np.sin(a) * y + np.cos(a) * z
    return out


def render_blobs(blobs: np.ndarray, d: int) -> np.ndarray:
    """Sum of isotropic Gaussians on a D^3 grid.

    Parameters
    ----------
    blobs : numpy.ndarray, shape (B, 5)
        ``(x, y, z, sigma, amplitude)``; positions and sigma as fractions of the box.
    d : int
        Box size.

    Returns
    -------
    numpy.ndarray, float32, shape (D, D, D)
        Indexed ``[z, y, x]``, centre at index D // 2.
    """
    c = (np.arange(d) - d // 2) / d
    vol = np.zeros((d, d, d))
    for x, y, z, s, a in blobs:
        gx = np.exp(-((c - x) ** 2) / (2 * s * s))
        gy = np.exp(-((c - y) ** 2) / (2 * s * s))
        gz = np.exp(-((c - z) ** 2) / (2 * s * s))
        vol += a * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return vol.astype(np.float32)


def two_state_phantom(d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The two states of the built-in phantom.

    Parameters
    ----------
    d : int
        Box size in pixels (the particle spans about 60 % of it).

    Returns
    -------
    state0, state1 : numpy.ndarray, float32, shape (D, D, D)
    """
    s0 = np.concatenate([_BODY, _DOMAIN, _SUBUNIT])
    s1 = np.concatenate([_BODY, _rotate_about_x(_DOMAIN, 90.0)])
    return render_blobs(s0, d), render_blobs(s1, d)
