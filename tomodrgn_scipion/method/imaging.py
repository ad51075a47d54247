"""The per-image forward model: CTF x dose attenuation x stage-tilt attenuation.

One :class:`ImagingParams` serves simulation (which applies the whole transfer), reconstruction
and training (which weight by the parts the user asks for).

CTF-premultiplied images (``_rlnCtfDataAreCtfPremultiplied 1``, RELION 5's and WarpTools' default) were
multiplied by the exporter with the CTF in RELION's sign, which is minus the CTF of :mod:`.ctf`
(:data:`PREMULTIPLIED_SIGN`). With the contrast handled as for plain images (inverted for
protein-light data), such an image holds ``-CTF^2`` times the projection where a plain one holds
``CTF``: :meth:`ImagingParams.data_transfer` is what the images hold, and back-projection inserts a
premultiplied image as it is (it already is ``CTF x image`` up to that sign).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from . import dose as dose_mod
from .ctf import compute_ctf

Tensor = torch.Tensor

#: The sign of the CTF exporters premultiply with (RELION's), relative to :func:`.ctf.compute_ctf`.
PREMULTIPLIED_SIGN = -1.0


@dataclass
class ImagingParams:
    """Imaging parameters of N tilt images, each a float64 array of shape (N,).

    The fields may also be tensors on a device (see :meth:`to`): everything is then computed there,
    without reading anything back to the host.

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
    premultiplied : bool, images already multiplied by their CTF (default all False)
    dose_weighted : bool, images already weighted by their dose; no dose weight is applied again
        (default all False)
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
    premultiplied: np.ndarray | None = None
    dose_weighted: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.dfu)
        for name in ("premultiplied", "dose_weighted"):
            v = getattr(self, name)
            setattr(self, name, np.zeros(n, bool) if v is None else v if isinstance(v, Tensor) else np.asarray(v, bool))

    def __len__(self) -> int:
        return len(self.dfu)

    def subset(self, rows: np.ndarray) -> "ImagingParams":
        """The parameters of the given rows."""
        return ImagingParams(**{f.name: np.asarray(getattr(self, f.name))[rows] for f in fields(self)})

    def to(self, device: torch.device | str, pin: bool = False) -> "ImagingParams":
        """The same parameters as tensors on ``device`` (float64, and bool for the flags), copied
        without waiting for the device; ``pin`` stages them in pinned host memory first."""
        def move(v) -> Tensor:
            t = torch.as_tensor(np.asarray(v))
            t = t.to(torch.bool) if t.dtype == torch.bool else t.to(torch.float64)
            return (t.pin_memory() if pin else t).to(device, non_blocking=True)

        return ImagingParams(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def _flags(self, name: str, device: torch.device) -> Tensor | None:
        """A flag field as a tensor on ``device``, or None when it is all False (known without the device)."""
        v = getattr(self, name)
        if isinstance(v, Tensor):
            return v.to(device)
        return torch.as_tensor(v, device=device) if v.any() else None

    def ctf(self, freqs_a: Tensor) -> Tensor:
        """CTF (tomoDRGN sign), shape (N, M), at frequencies ``freqs_a`` (M, 2) in 1/A."""
        t = {k: torch.as_tensor(getattr(self, k), dtype=torch.float64, device=freqs_a.device)
             for k in ("dfu", "dfv", "dfang", "voltage", "cs", "w", "phase_shift")}
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
        dev = freqs_a.device
        a = torch.ones(len(self), freqs_a.shape[0], dtype=freqs_a.dtype, device=dev)
        k = freqs_a.norm(dim=-1)
        dose = torch.as_tensor(self.dose, dtype=torch.float64).to(dev)
        voltage = torch.as_tensor(self.voltage, dtype=torch.float64).to(dev)
        if dose_weight:
            # images the exporter already dose-weighted are not weighted a second time
            weighted = self._flags("dose_weighted", dev)
            n = dose if weighted is None else torch.where(weighted, 0.0, dose)
            a = a * dose_mod.dose_weights(k, n, voltage).to(a)
        if tilt_weight:
            a = a * dose_mod.tilt_weights(torch.as_tensor(self.ctf_scalefactor).to(dev)).to(a)[:, None]
        if dose_mask:
            a = a * dose_mod.optimal_exposure_mask(k, dose, voltage).to(a)
        return a

    def data_transfer(self, freqs_a: Tensor) -> Tensor:
        """What each image holds of the projection at each frequency: the CTF, or for premultiplied
        images ``PREMULTIPLIED_SIGN x CTF^2``.

        Returns
        -------
        Tensor, shape (N, M), dtype of ``freqs_a``
        """
        h = self.ctf(freqs_a)
        pre = self._flags("premultiplied", h.device)
        if pre is not None:
            h = torch.where(pre[:, None], PREMULTIPLIED_SIGN * h * h, h)
        return h

    def insertion(self, freqs_a: Tensor, dose_weight: bool = False, tilt_weight: bool = False,
                  dose_mask: bool = False) -> tuple[Tensor, Tensor]:
        """Back-projection terms: the factor each image transform is inserted with, and the transfer
        ``h`` whose square is its weight.

        For a plain image with ``h = CTF x attenuation`` the factor is ``h``; a premultiplied image
        already holds ``PREMULTIPLIED_SIGN x CTF x image``, so it is inserted with
        ``PREMULTIPLIED_SIGN x attenuation`` and the same weight ``h^2``.

        Returns
        -------
        factor, h : Tensor, shape (N, M), dtype of ``freqs_a``
        """
        h = self.transfer(freqs_a, dose_weight, tilt_weight, dose_mask)
        factor = h
        pre = self._flags("premultiplied", h.device)
        if pre is not None:
            att = self.attenuation(freqs_a, dose_weight, tilt_weight, dose_mask) if (dose_weight or tilt_weight or dose_mask) \
                else torch.ones_like(h)
            factor = torch.where(pre[:, None], PREMULTIPLIED_SIGN * att, h)
        return factor, h

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
