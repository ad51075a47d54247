"""Contrast transfer function, in tomoDRGN's (cryoDRGN's) form and sign.

``CTF(k) = sqrt(1 - w^2) sin(gamma) - w cos(gamma)`` with
``gamma = 2 pi (-0.5 df lambda |k|^2 + 0.25 Cs lambda^3 |k|^4) - phase_shift`` and the astigmatic
defocus ``df = (dfU + dfV)/2 + (dfU - dfV)/2 cos(2 (angle(k) - dfAngle))``.

With positive (under-focus) defocus this CTF is ``-w`` at k = 0: images of positive density come out
dark (protein-dark). RELION's CTF is the negative of this one, for protein-light images; the data
pipeline therefore inverts protein-light images (the default) and leaves protein-dark images as they
are (``--uninvert-data``).
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def electron_wavelength(voltage_kv: Tensor | float) -> Tensor:
    """Relativistic electron wavelength in A: ``12.2639 / sqrt(V + 0.97845e-6 V^2)``, V in volts."""
    v = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1000.0
    return 12.2639 / torch.sqrt(v + 0.97845e-6 * v * v)


def compute_ctf(freqs_a: Tensor, dfu: Tensor, dfv: Tensor, dfang_deg: Tensor, voltage_kv: Tensor,
                cs_mm: Tensor, w: Tensor, phase_shift_deg: Tensor | float = 0.0,
                bfactor: Tensor | None = None) -> Tensor:
    """CTF of each image at each frequency.

    Parameters
    ----------
    freqs_a : Tensor, shape (M, 2) or (N, M, 2)
        ``(kx, ky)`` in 1/A.
    dfu, dfv : Tensor, shape (N,)
        Defocus U and V in A, positive for under-focus.
    dfang_deg : Tensor, shape (N,)
        Astigmatism angle in degrees, from the x axis.
    voltage_kv : Tensor, shape (N,)
    cs_mm : Tensor, shape (N,)
        Spherical aberration, mm.
    w : Tensor, shape (N,)
        Amplitude contrast fraction.
    phase_shift_deg : Tensor, shape (N,), or float
        Phase-plate shift in degrees.
    bfactor : Tensor, shape (N,), optional
        Envelope ``exp(-B |k|^2 / 4)``, A^2. Never pass Warp's ``_rlnCtfBfactor`` here: it encodes the
        dose, which :mod:`.dose` handles.

    Returns
    -------
    Tensor, shape (N, M), dtype of ``freqs_a``
    """
    dt = torch.float64
    dev = freqs_a.device

    def col(x: Tensor | float) -> Tensor:
        return torch.as_tensor(x, dtype=dt, device=dev).reshape(-1, 1)

    f = freqs_a.to(dt)
    if f.ndim == 2:
        f = f.unsqueeze(0)
    kx, ky = f[..., 0], f[..., 1]
    s2 = kx * kx + ky * ky
    ang = torch.atan2(ky, kx)
    lam = electron_wavelength(col(voltage_kv)).to(dev)
    df = 0.5 * (col(dfu) + col(dfv) + (col(dfu) - col(dfv)) * torch.cos(2.0 * (ang - torch.deg2rad(col(dfang_deg)))))
    cs = col(cs_mm) * 1e7
    gamma = 2.0 * math.pi * (-0.5 * df * lam * s2 + 0.25 * cs * lam ** 3 * s2 * s2) - torch.deg2rad(col(phase_shift_deg))
    wc = col(w)
    ctf = torch.sqrt(1.0 - wc * wc) * torch.sin(gamma) - wc * torch.cos(gamma)
    if bfactor is not None:
        ctf = ctf * torch.exp(-col(bfactor) / 4.0 * s2)
    return ctf.to(freqs_a.dtype)
