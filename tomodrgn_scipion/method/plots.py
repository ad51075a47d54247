"""Figures of the analysis commands, built as :class:`matplotlib.figure.Figure` objects (no pyplot, no
window, no global state) so that callers can save them and tests can inspect what was drawn.

Colours: the Okabe-Ito palette for categories and ``cividis`` for continuous values, both readable with
the common colour-vision deficiencies. Beyond 8 categories plots cycle the 8 colours and tell the rounds
apart by marker shape (scatter) or hatching (bars).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .outputs import atomic_write

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
CONTINUOUS = "cividis"
UNASSIGNED = "#BBBBBB"


def category_colors(n: int) -> list[str] | np.ndarray:
    """``n`` distinguishable colours: Okabe-Ito up to 8, else ``n`` samples of cividis (RGBA rows)."""
    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    from matplotlib import colormaps

    return colormaps[CONTINUOUS](np.linspace(0.0, 1.0, n))


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
HATCHES = ["", "//", "..", "xx", "\\\\", "oo", "--", "++"]


def category_style(j: int) -> tuple[str, str, str]:
    """Colour, scatter marker and bar hatch of category ``j`` (unique for the first 64)."""
    return OKABE_ITO[j % 8], MARKERS[(j // 8) % 8], HATCHES[(j // 8) % 8]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write a figure as PNG, atomically."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def new_figure(n_panels: int = 1, ncols: int = 1, panel_size: tuple[float, float] = (5.0, 4.0),
               ) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` axes on a grid of ``ncols`` columns (unused grid cells removed)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def scatter_labels(ax: Axes, xy: np.ndarray, labels: np.ndarray, centers: np.ndarray | None = None,
                   size: float | None = None) -> None:
    """Points coloured by integer label (one legend entry per label; label -1 grey, "not analysed").

    Parameters
    ----------
    ax : Axes
    xy : numpy.ndarray, shape (N, 2)
    labels : numpy.ndarray, int, shape (N,)
    centers : numpy.ndarray, shape (K, 2), optional
        Cluster centres, drawn as numbered black-edged markers.
    """
    uniq = [int(u) for u in np.unique(labels) if u >= 0]
    s = size or marker_size(len(xy))
    for lab in uniq:
        m = labels == lab
        color, marker, _ = category_style(lab)
        ax.scatter(xy[m, 0], xy[m, 1], s=s, color=color, marker=marker, label=f"cluster {lab} ({int(m.sum())})",
                   linewidths=0)
    if (labels < 0).any():
        m = labels < 0
        ax.scatter(xy[m, 0], xy[m, 1], s=s, color=UNASSIGNED, label=f"unassigned ({int(m.sum())})", linewidths=0)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], s=60, c="white", edgecolors="black", marker="o", zorder=3)
        for i, (x, y) in enumerate(centers):
            ax.annotate(str(i), (x, y), ha="center", va="center", fontsize=7, zorder=4)
    _legend(ax, len(uniq))


def _legend(ax: Axes, n: int) -> None:
    if n > 40:
        return
    if n > 8:
        ax.legend(fontsize=7, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 + n // 21)
    else:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", framealpha=0.8)


def scatter_values(ax: Axes, xy: np.ndarray, values: np.ndarray, label: str, fig: Figure) -> None:
    """Points coloured by a continuous value, with a labelled colour bar."""
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=marker_size(len(xy)), cmap=CONTINUOUS, linewidths=0)
    fig.colorbar(sc, ax=ax, label=label)


def hexbin(ax: Axes, xy: np.ndarray, fig: Figure, gridsize: int = 40) -> None:
    """Density of points as a hexagonal histogram, with a colour bar of particle counts."""
    hb = ax.hexbin(xy[:, 0], xy[:, 1], gridsize=gridsize, cmap=CONTINUOUS, mincnt=1)
    fig.colorbar(hb, ax=ax, label="particles per bin")


def lines(ax: Axes, x: np.ndarray, ys: dict[str, np.ndarray], xlabel: str, ylabel: str,
          markers: bool = True) -> None:
    """Several curves against one x, Okabe-Ito colours, with a legend."""
    for (name, y), color in zip(ys.items(), OKABE_ITO):
        ax.plot(x, y, color=color, marker="o" if markers else None, ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(ys) > 1:
        ax.legend(fontsize=8)


def stacked_bars(ax: Axes, names: Sequence[str], counts: np.ndarray, series: Sequence[str], xlabel: str,
                 ylabel: str) -> None:
    """Stacked bars: ``counts[i, j]`` = height of series ``j`` at bar ``i``."""
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for j, name in enumerate(series):
        color, _, hatch = category_style(j)
        ax.bar(x, counts[:, j], bottom=bottom, color=color, hatch=hatch, edgecolor="white", linewidth=0.3, label=name)
        bottom += counts[:, j]
    rotation = 90 if len(names) > 8 else 30 if max((len(n) for n in names), default=0) > 10 else 0
    ax.set_xticks(x, names, rotation=rotation, ha="right" if rotation == 30 else "center",
                  fontsize=7 if len(names) > 20 else 9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend(ax, len(series))


def fsc_figure(freq: np.ndarray, curve: np.ndarray, freq_0143: float, title: str = "",
               label: str = "half-map FSC") -> Figure:
    """An FSC curve with the 0.143 threshold and the resolution where the curve crosses it.

    Parameters
    ----------
    freq : numpy.ndarray, shape (S,)
        Spatial frequency of each shell, 1/A.
    curve : numpy.ndarray, shape (S,)
        FSC per shell.
    freq_0143 : float
        Frequency of the 0.143 crossing, 1/A (drawn as a vertical line labelled with 1/freq in A).
    """
    fig, (ax,) = new_figure(1, panel_size=(6.0, 4.0))
    ax.plot(freq, curve, color=OKABE_ITO[0], marker="o", ms=3, label=label)
    ax.axhline(0.143, color=OKABE_ITO[5], ls="--", lw=1, label="FSC = 0.143")
    if np.isfinite(freq_0143) and freq_0143 > 0:
        ax.axvline(freq_0143, color="#999999", ls=":", lw=1, label=f"{1 / freq_0143:.1f} Å at 0.143")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, float(freq[-1]))
    ax.set_title(title)
    ax.legend(loc="upper right")
    return fig


def marker_size(n: int) -> float:
    """Scatter marker area (points^2) that keeps ``n`` points readable: smaller as they get denser."""
    return float(np.clip(4000.0 / max(n, 1), 1.0, 20.0))
