"""Volumes from a trained decoder at latent points, written as ``.mrc`` files: shared by ``eval_vol``,
``analyze``, ``convergence_vae`` and ``mapback``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import InputError

log = logging.getLogger("tomodrgn_scipion")


@dataclass
class VolumeOptions:
    """How volumes are rendered and post-processed.

    Attributes
    ----------
    downsample : int or None
        Output box (even, <= the training box); None keeps the training box.
    lowpass : float or None
        Low-pass filter resolution, A.
    flip : bool
        Mirror along z (flip handedness).
    invert : bool
        Invert the contrast.
    """

    downsample: int | None = None
    lowpass: float | None = None
    flip: bool = False
    invert: bool = False

    def out_box(self, box: int) -> int:
        """The output box for a training box ``box``; an :class:`InputError` if the options do not fit it."""
        n = self.downsample or box
        if n % 2 or not 2 <= n <= box:
            raise InputError(f"--downsample {n}: must be even and at most the training box {box}")
        if self.lowpass is not None and self.lowpass <= 0:
            raise InputError(f"--lowpass {self.lowpass}: must be a resolution in A > 0")
        return n


def render(decoder: torch.nn.Module, z: np.ndarray | None, box: int, pixel_size: float,
           options: VolumeOptions = VolumeOptions()) -> tuple[np.ndarray, float]:
    """One volume of the decoder at latent point ``z``.

    Parameters
    ----------
    decoder : FourierDecoder
    z : numpy.ndarray, shape (zdim,), or None for a homogeneous model
    box : int
        Training box, pixels.
    pixel_size : float
        Training pixel size, A.
    options : VolumeOptions

    Returns
    -------
    volume : numpy.ndarray, float32, shape (n, n, n), indexed [z, y, x]
    pixel_size : float
        A per pixel of the output (larger when downsampled).
    """
    from .fsc import lowpass
    from .models import render_volume

    n = options.out_box(box)
    pixel = pixel_size * box / n
    vol = render_volume(decoder, None if z is None else torch.as_tensor(np.asarray(z, dtype=np.float32)), box, n)
    if options.lowpass:
        vol = lowpass(vol.to(torch.float64), 1.0 / options.lowpass, pixel).to(torch.float32)
    out = vol.cpu().numpy()
    if options.flip:
        out = out[::-1].copy()
    if options.invert:
        out = -out
    return out, pixel


def write_volumes(decoder: torch.nn.Module, zs: Sequence[np.ndarray | None], box: int, pixel_size: float,
                  outdir: str | Path, prefix: str = "vol_", options: VolumeOptions = VolumeOptions()) -> list[Path]:
    """Render one volume per latent point into ``outdir/<prefix>000.mrc``, ... (atomic writes).

    Parameters
    ----------
    decoder : FourierDecoder
    zs : sequence of numpy.ndarray, shape (zdim,), or [None] for a homogeneous model
    box : int
        Training box, pixels.
    pixel_size : float
        Training pixel size, A.
    outdir : path-like
    prefix : str
    options : VolumeOptions

    Returns
    -------
    list of Path
        The files written, in the order of ``zs``.
    """
    from .progress import Progress
    from .stacks import write_mrc

    options.out_box(box)
    prog = Progress(len(zs), "generated", "volumes", log)
    paths = []
    for i, z in enumerate(zs):
        vol, pixel = render(decoder, z, box, pixel_size, options)
        path = Path(outdir) / f"{prefix}{i:03d}.mrc"
        write_mrc(path, vol, pixel)
        paths.append(path)
        prog.update(1)
    return paths
