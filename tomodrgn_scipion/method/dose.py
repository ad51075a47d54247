"""Radiation-damage (dose) and stage-tilt weighting of tilt images.

Critical exposure of Grant & Grigorieff (eLife 2015), fitted at 300 kV:
``Ne(k) = 0.245 * k ** -1.665 + 2.81`` (e/A^2, k in 1/A), scaled by 0.8 at 200 kV (and by
interpolation between). A frequency's amplitude after a cumulative dose N falls as
``exp(-N / (2 Ne(k)))``; the exposure that maximises its SNR is ``2.51284 Ne(k)``.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

NE_A, NE_B, NE_C = 0.245, -1.665, 2.81
OPTIMAL_EXPOSURE_FACTOR = 2.51284


def voltage_scale(voltage_kv: Tensor | float) -> Tensor:
    """Factor on Ne: 1 at 300 kV, 0.8 at 200 kV, linear between and held flat outside."""
    v = torch.as_tensor(voltage_kv, dtype=torch.float64)
    return (0.8 + 0.2 * (v - 200.0) / 100.0).clamp(0.8, 1.0)


def critical_exposure(freq_a: Tensor, voltage_kv: Tensor | float = 300.0) -> Tensor:
    """Critical exposure Ne(k), e/A^2.

    Parameters
    ----------
    freq_a : Tensor, any shape
        Spatial frequency ``|k|`` in 1/A; zero gives infinity (no damage at the origin).
    voltage_kv : Tensor broadcastable with ``freq_a``, or float

    Returns
    -------
    Tensor, same shape as the broadcast of the inputs
    """
    k = freq_a.to(torch.float64)
    ne = torch.where(k > 0, NE_A * torch.pow(k.clamp(min=1e-30), NE_B) + NE_C, torch.full_like(k, float("inf")))
    return ne * voltage_scale(voltage_kv).to(k.device)


def dose_weights(freq_a: Tensor, dose_e_per_a2: Tensor, voltage_kv: Tensor | float = 300.0) -> Tensor:
    """Amplitude attenuation ``exp(-N / (2 Ne(k)))`` of each frequency in each tilt image.

    Parameters
    ----------
    freq_a : Tensor, shape (M,)
        Frequencies ``|k|`` in 1/A.
    dose_e_per_a2 : Tensor, shape (N,)
        Cumulative dose of each image, e/A^2.
    voltage_kv : Tensor, shape (N,), or float

    Returns
    -------
    Tensor, shape (N, M), float32 in [0, 1]
    """
    n = torch.as_tensor(dose_e_per_a2, dtype=torch.float64, device=freq_a.device).reshape(-1, 1)
    v = torch.as_tensor(voltage_kv, dtype=torch.float64, device=freq_a.device)
    v = v.reshape(-1, 1) if v.ndim else v
    ne = critical_exposure(freq_a.reshape(1, -1), v)
    return torch.exp(-n / (2.0 * ne)).to(torch.float32)


def optimal_exposure_mask(freq_a: Tensor, dose_e_per_a2: Tensor, voltage_kv: Tensor | float = 300.0) -> Tensor:
    """True where the cumulative dose is at most the optimal exposure ``2.51284 Ne(k)``.

    Shapes as in :func:`dose_weights`; returns bool, shape (N, M).
    """
    n = torch.as_tensor(dose_e_per_a2, dtype=torch.float64, device=freq_a.device).reshape(-1, 1)
    v = torch.as_tensor(voltage_kv, dtype=torch.float64, device=freq_a.device)
    v = v.reshape(-1, 1) if v.ndim else v
    return n <= OPTIMAL_EXPOSURE_FACTOR * critical_exposure(freq_a.reshape(1, -1), v)


def tilt_weights(ctf_scalefactor: Tensor) -> Tensor:
    """Stage-tilt weight ``cos(tilt)`` of each image.

    Parameters
    ----------
    ctf_scalefactor : Tensor, shape (N,)
        ``_rlnCtfScalefactor``, which Warp writes as ``cos(tilt)``.

    Returns
    -------
    Tensor, shape (N,)
        ``cos(arccos(s))``, i.e. the scale factor itself, clipped to [0, 1]. (Upstream tomoDRGN passes
        the tilt in radians to a function expecting degrees, so its weights are all ~1.)
    """
    tilt_rad = torch.arccos(ctf_scalefactor.to(torch.float64).clamp(-1.0, 1.0))
    return torch.cos(tilt_rad).clamp(0.0, 1.0).to(torch.float32)
