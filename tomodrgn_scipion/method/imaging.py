"""The per-image forward model: CTF x dose attenuation x stage-tilt attenuation.

One :class:`ImagingParams` serves simulation (which applies the whole transfer), reconstruction
and training (which weight by the parts the user asks for).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from . import dose as dose_mod
from .ctf import compute_ctf

Tensor = torch.Tensor


@dataclass
class ImagingParams:
    """Imaging parameters of N tilt images, each a float64 array of shape (N,).

    Attributes
    ----------
    dfu, dfv : defocus U and V, A (positive = under-focus)
    dfang : astigmatism angle, degrees
    voltage : kV
    cs : spherical aberration, mm
    w : amplitude contrast fraction
    phase_shift : degrees
    dose : cumulative dose, e/A^2
    ctf_scalefactor : cos(stage tilt)
    """

    dfu: np.ndarray
    dfv: np.ndarray
    dfang: np.ndarray
    voltage: np.ndarray
    cs: np.ndarray
    w: np.ndarray
    phase_shift: np.ndarray
    dose: np.ndarray
    ctf_scalefactor: np.ndarray

    def __len__(self) -> int:
        return len(self.dfu)

    def subset(self, rows: np.ndarray) -> "ImagingParams":
        """The parameters of the given rows."""
        return ImagingParams(**{f.name: np.asarray(getattr(self, f.name))[rows] for f in fields(self)})

    def ctf(self, freqs_a: Tensor) -> Tensor:
        """CTF (tomoDRGN sign), shape (N, M), at frequencies ``freqs_a`` (M, 2) in 1/A."""
        t = {f.name: torch.as_tensor(getattr(self, f.name), dtype=torch.float64, device=freqs_a.device) for f in fields(self)}
        return compute_ctf(freqs_a, t["dfu"], t["dfv"], t["dfang"], t["voltage"], t["cs"], t["w"], t["phase_shift"])

    def attenuation(self, freqs_a: Tensor, dose_weight: bool = True, tilt_weight: bool = True,
                    dose_mask: bool = False) -> Tensor:
        """Dose and stage-tilt attenuation of each image at each frequency (no CTF).

        Parameters
        ----------
        freqs_a : Tensor, shape (M, 2)
            ``(kx, ky)`` in 1/A.
        dose_weight : bool
            Include the amplitude attenuation ``exp(-N / 2Ne(k))``.
        tilt_weight : bool
            Include ``cos(tilt)``.
        dose_mask : bool
            Zero frequencies whose cumulative dose exceeds the optimal exposure.

        Returns
        -------
        Tensor, shape (N, M), dtype of ``freqs_a``
        """
        a = torch.ones(len(self), freqs_a.shape[0], dtype=freqs_a.dtype, device=freqs_a.device)
        k = freqs_a.norm(dim=-1)
        if dose_weight:
            a = a * dose_mod.dose_weights(k, torch.as_tensor(self.dose), torch.as_tensor(self.voltage)).to(a)
        if tilt_weight:
            a = a * dose_mod.tilt_weights(torch.as_tensor(self.ctf_scalefactor, device=a.device)).to(a)[:, None]
        if dose_mask:
            a = a * dose_mod.optimal_exposure_mask(k, torch.as_tensor(self.dose), torch.as_tensor(self.voltage)).to(a)
        return a

    def transfer(self, freqs_a: Tensor, dose_weight: bool = True, tilt_weight: bool = True,
                 dose_mask: bool = False) -> Tensor:
        """Signal transfer of each image at each frequency: CTF times :meth:`attenuation`.

        Returns
        -------
        Tensor, shape (N, M), dtype of ``freqs_a``
        """
        h = self.ctf(freqs_a)
        if dose_weight or tilt_weight or dose_mask:
            h = h * self.attenuation(freqs_a, dose_weight, tilt_weight, dose_mask)
        return h
