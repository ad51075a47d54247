"""Fourier shell correlation, resolution and low-pass filtering of volumes."""
from __future__ import annotations

import numpy as np
import torch

from . import fft
from .lattice import radial_shells

Tensor = torch.Tensor


def shell_mean(values: Tensor, shells: Tensor, n_shells: int) -> Tensor:
    """Mean of ``values`` over each integer shell ``0 .. n_shells - 1`` (0 where a shell is empty)."""
    s = shells.reshape(-1)
    keep = s < n_shells
    total = torch.zeros(n_shells, dtype=values.dtype, device=values.device).index_add_(0, s[keep], values.reshape(-1)[keep])
    count = torch.bincount(s[keep], minlength=n_shells).to(values.dtype)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def fsc(vol1: Tensor, vol2: Tensor) -> Tensor:
    """Fourier shell correlation of two real volumes.

    Parameters
    ----------
    vol1, vol2 : Tensor, shape (D, D, D)

    Returns
    -------
    Tensor, float64, shape (D // 2 + 1,)
        FSC at shells ``s = 0 .. D/2``; shell s holds frequency ``s / D`` cycles per pixel.
    """
    d = vol1.shape[-1]
    f1 = fft.fft3_center(vol1.to(torch.float64))
    f2 = fft.fft3_center(vol2.to(torch.float64))
    shells = radial_shells(d, 3, vol1.device).reshape(-1)
    n = d // 2 + 1
    keep = shells < n
    s = shells[keep]

    def shell_sum(x: Tensor) -> Tensor:
        return torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, s, x.reshape(-1)[keep])

    num = shell_sum((f1 * f2.conj()).real)
    den = torch.sqrt(shell_sum(f1.abs() ** 2) * shell_sum(f2.abs() ** 2))
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def resolution_at(curve: np.ndarray, d: int, pixel_size: float, threshold: float = 0.143) -> tuple[float, float]:
    """Where an FSC curve first falls below a threshold.

    Parameters
    ----------
    curve : numpy.ndarray, shape (D // 2 + 1,)
        FSC per shell.
    d : int
        Box size.
    pixel_size : float
        A per pixel.
    threshold : float

    Returns
    -------
    freq : float
        Crossing frequency in 1/A, linearly interpolated between shells; Nyquist when the curve
        never falls below the threshold.
    resolution : float
        ``1 / freq`` in A.
    """
    curve = np.asarray(curve, dtype=np.float64)
    below = np.flatnonzero(curve[1:] < threshold)
    if below.size == 0:
        shell = float(len(curve) - 1)
    else:
        j = int(below[0]) + 1
        a, b = curve[j - 1], curve[j]
        shell = (j - 1) + (a - threshold) / (a - b) if a != b else float(j)
        shell = max(shell, 1e-6)
    freq = shell / (d * pixel_size)
    return freq, 1.0 / freq


def lowpass(vol: Tensor, cutoff_freq: float, pixel_size: float, edge_shells: float = 2.0) -> Tensor:
    """Low-pass a volume with a raised-cosine edge.

    Parameters
    ----------
    vol : Tensor, shape (D, D, D)
    cutoff_freq : float
        Frequency (1/A) where the filter is 0.5.
    pixel_size : float
        A per pixel.
    edge_shells : float
        Width of the cosine edge in Fourier shells.

    Returns
    -------
    Tensor, shape (D, D, D), dtype of ``vol``
    """
    d = vol.shape[-1]
    k = torch.arange(d, dtype=torch.float64, device=vol.device) - d // 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    r = torch.sqrt(kx * kx + ky * ky + kz * kz)
    cut = cutoff_freq * d * pixel_size
    t = ((r - (cut - edge_shells / 2)) / edge_shells).clamp(0.0, 1.0)
    filt = 0.5 * (1.0 + torch.cos(torch.pi * t))
    return fft.ifft3_center(fft.fft3_center(vol.to(torch.float64)) * filt).real.to(vol.dtype)


def masked_correlation(a: np.ndarray, b: np.ndarray, radius_fraction: float = 1.0) -> float:
    """Pearson correlation of two volumes inside the inscribed sphere.

    Parameters
    ----------
    a, b : numpy.ndarray, shape (D, D, D)
    radius_fraction : float
        Sphere radius as a fraction of ``D / 2``.
    """
    d = a.shape[-1]
    x = np.arange(d) - d // 2
    zz, yy, xx = np.meshgrid(x, x, x, indexing="ij")
    m = np.sqrt(xx ** 2 + yy ** 2 + zz ** 2) < radius_fraction * d / 2
    return float(np.corrcoef(np.asarray(a, dtype=np.float64)[m], np.asarray(b, dtype=np.float64)[m])[0, 1])
