"""Independent reference: projections by a direct (slow) DFT sum over every voxel."""
from __future__ import annotations

import numpy as np


def exact_projection_ft(vol: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Centred 2D DFT of the projection of ``vol`` through RELION matrix ``a``, inside the Nyquist circle.

    F(k) = sum_u V(u) exp(-2 pi i (A^T k) . u), with u the voxel coordinates about the centre and k the
    image frequencies (cycles per pixel); frequencies with |k| >= 1/2 are set to 0.

    Returns
    -------
    numpy.ndarray, complex128, shape (D, D), indexed [ky, kx]
    """
    d = vol.shape[0]
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    u = np.stack([x.ravel(), y.ravel(), z.ravel()], 1).astype(np.float64)
    v = vol.ravel().astype(np.float64)
    k = c / d
    ky, kx = np.meshgrid(k, k, indexing="ij")
    inside = (kx ** 2 + ky ** 2) < 0.25
    k2 = np.stack([kx[inside], ky[inside]], 1)
    k3 = k2 @ a[:2, :]  # row vectors: (kx, ky, 0) @ A
    out = np.zeros(d * d, dtype=np.complex128)
    vals = np.empty(len(k3), dtype=np.complex128)
    for s in range(0, len(k3), 64):
        vals[s:s + 64] = np.exp(-2j * np.pi * (k3[s:s + 64] @ u.T)) @ v
    out[inside.ravel()] = vals
    return out.reshape(d, d)


def centred_ifft2(f: np.ndarray) -> np.ndarray:
    """Inverse of a centred 2D DFT (origin at D // 2), real part."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(f))).real
