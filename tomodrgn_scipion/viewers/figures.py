"""Figures of volumes and images for the viewers: central-slice montages of volumes (the view when ChimeraX
is not installed), a particle's lowest-dose tilt image, FSC curves and particle positions in tomograms."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..method import plots
from ..method.stacks import read_volume


def central_slices(vol: np.ndarray) -> np.ndarray:
    """The three central sections of a volume side by side: XY | XZ | YZ.

    Parameters
    ----------
    vol : numpy.ndarray, shape (D, D, D)
        Indexed ``[z, y, x]``.

    Returns
    -------
    numpy.ndarray, shape (D, 3 D + 2)
        Each section normalised to zero mean, unit standard deviation (a constant one stays 0), with a
        column of NaN (drawn blank) between sections.
    """
    d = vol.shape[0]
    c = d // 2
    parts = [vol[c], vol[:, c, :], vol[:, :, c]]  # XY (z = c), XZ (y = c), YZ (x = c)
    gap = np.full((d, 1), np.nan, dtype=np.float32)
    a, b, c = (_normalise(p) for p in parts)
    return np.concatenate([a, gap, b, gap, c], axis=1)


def _normalise(img: np.ndarray) -> np.ndarray:
    sd = float(img.std())
    return (img - img.mean()) / sd if sd > 0 else np.zeros_like(img)


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], suptitle: str, ncols: int = 4,
               panel_size: tuple[float, float] = (2.6, 2.6)) -> Figure:
    """Grey-scale images in a grid, one titled panel each (no axes ticks)."""
    n = max(1, len(images))
    fig, axes = plots.new_figure(n, ncols=ncols, panel_size=panel_size)
    for ax, img, title in zip(axes, images, titles):
        lo, hi = np.nanpercentile(img, [1, 99]) if np.isfinite(img).any() else (0, 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(suptitle)
    return fig


def volume_montage(paths: Sequence[str | os.PathLike], titles: Sequence[str], suptitle: str) -> Figure:
    """Central sections (XY | XZ | YZ) of each volume, one panel per volume."""
    images = [central_slices(read_volume(p)[0]) for p in paths]
    return image_grid(images, titles, suptitle + "\ncentral sections XY | XZ | YZ", ncols=2 if len(images) > 1 else 1,
                      panel_size=(6.0, 2.3))


def lowest_dose_images(star_path: str | os.PathLike, particle_ids: Sequence[str],
                       datadir: str | os.PathLike | None = None) -> tuple[np.ndarray, list[str]]:
    """The lowest-dose tilt image of each particle (the first exposure, normally near zero stage tilt).

    Returns
    -------
    images : numpy.ndarray, float32, shape (M, D, D)
    titles : list of str
        ``"<particle> (tilt <t> deg, <dose> e/A^2)"`` per image.
    """
    from ..method.stacks import ImageSource
    from ..method.star import TiltSeriesStar

    star = TiltSeriesStar(star_path)
    pos = {pid: i for i, pid in enumerate(star.particle_ids)}
    rows = []
    for pid in particle_ids:
        r = star.rows_of_particle[pos[pid]]
        rows.append(int(r[np.argmin(star.dose[r])]))
    rows_arr = np.asarray(rows, dtype=np.int64)
    src = ImageSource(star.image_names[rows_arr], star.image_anchor, datadir, lazy=True, named_in=star.path)
    images = src.get(np.arange(len(rows_arr)))
    src.close()
    titles = [f"{pid} ({star.stage_tilt_deg[r]:.0f}°, {star.dose[r]:.1f} e/Å²)" for pid, r in zip(particle_ids, rows)]
    return images, titles


def fsc_from_csv(path: str | os.PathLike, pixel_size: float, title: str) -> Figure:
    """The FSC curve of a ``*_fsc.csv`` of ``backproject`` (D/2 + 1 shells), its 0.143 resolution marked."""
    from ..method.fsc import resolution_at
    from ..protocols.protocol_backproject import read_fsc_csv

    freq, curve = read_fsc_csv(str(path))
    freq_0143, res = resolution_at(curve, 2 * (len(curve) - 1), pixel_size)
    return plots.fsc_figure(freq, curve, freq_0143, f"{title}\nFSC = 0.143 at {res:.1f} Å")


def positions_figure(centers_a: np.ndarray, labels: np.ndarray, tomogram: str) -> Figure:
    """Particle positions in one tomogram, seen from the top (XY) and the side (XZ), coloured by label.

    Parameters
    ----------
    centers_a : numpy.ndarray, shape (M, 3)
        x, y, z in the tomogram, A (the axes are drawn in nm).
    labels : numpy.ndarray, int, shape (M,)
        Cluster of each particle (-1: not analysed).
    """
    fig, axes = plots.new_figure(2, ncols=2, panel_size=(5.0, 4.5))
    nm = np.asarray(centers_a, dtype=np.float64) / 10.0
    for ax, (i, j, name) in zip(axes, [(0, 1, "top view (XY)"), (0, 2, "side view (XZ)")]):
        plots.scatter_labels(ax, nm[:, [i, j]], np.asarray(labels), size=30)
        ax.set_xlabel(f"{'xyz'[i]} (nm)")
        ax.set_ylabel(f"{'xyz'[j]} (nm)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(name)
    fig.suptitle(f"{tomogram}: {len(nm)} particles")
    return fig
