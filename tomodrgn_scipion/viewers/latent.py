"""The latent space as the viewers show it: z of one epoch with its PCA, UMAP, k-means labels and the
per-particle star metadata, and the figures drawn from them.

Rows everywhere are the rows of z (``particle_ids.txt`` order of the training run), so that a point of a
plot, a row of :attr:`LatentSpace.table` and a particle id always agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..method import plots
from ..method.analysis import PCAResult, TrainingRun, pca, per_particle_table
from ..method.cli_analysis import figure_embedding
from ..method.star import TiltSeriesStar

#: Colour choices that are not star columns.
COLOR_CLUSTER, COLOR_TOMOGRAM, COLOR_NONE = "k-means cluster", "tomogram", "none"


@dataclass
class LatentSpace:
    """z of one checkpoint and what is known per particle.

    Attributes
    ----------
    epoch : int
    z : numpy.ndarray, float32, shape (N, zdim)
    ids : list of str
        ``_rlnGroupName`` of each row.
    pca : PCAResult
    umap : numpy.ndarray, shape (N, 2), or None
    labels : numpy.ndarray, int64, shape (N,), or None
        k-means cluster of each row (None before an analysis).
    centers_row : numpy.ndarray, int64, shape (K,), or None
        Rows of the particles at the cluster centres.
    table : pandas.DataFrame
        :func:`per_particle_table` of the training star, one row per row of z.
    """

    epoch: int
    z: np.ndarray
    ids: list[str]
    pca: PCAResult
    umap: np.ndarray | None
    labels: np.ndarray | None
    centers_row: np.ndarray | None
    table: pd.DataFrame

    @classmethod
    def from_training(cls, train_dir: str | os.PathLike, star: str | os.PathLike, epoch: int = -1,
                      umap_cache: str | os.PathLike | None = None) -> "LatentSpace":
        """The latent space of a training run (its latest checkpoint by default), without an analysis.

        ``umap_cache``: a folder where the UMAP of each epoch is kept (``umap.E.npy``); computed only when
        given and zdim > 2.
        """
        from ..method.analysis import umap_embedding

        run = TrainingRun.open(train_dir)
        epoch = run.resolve_epoch(epoch)
        z = run.z(epoch)
        um = None
        if umap_cache is not None and z.shape[1] > 2:
            path = Path(umap_cache) / f"umap.{epoch}.npy"
            if path.is_file():
                um = np.load(path)
            else:
                um = umap_embedding(z)
                if um is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, um)
        table = per_particle_table(TiltSeriesStar(star), run.particle_ids)
        return cls(epoch, z, run.particle_ids, pca(z), um, None, None, table)

    @classmethod
    def from_analysis(cls, train_dir: str | os.PathLike, star: str | os.PathLike, anadir: str | os.PathLike,
                      k: int) -> "LatentSpace":
        """The latent space as ``analyze`` saw it: its epoch, PCA coordinates, UMAP and k-means labels."""
        anadir = Path(anadir)
        run = TrainingRun.open(train_dir)
        epoch = _analysed_epoch(anadir, run)
        z = run.z(epoch)
        p = pca(z)
        saved = anadir / "z_pca.npy"
        if saved.is_file():  # the exact coordinates of analyze's plots
            p.coords = np.load(saved).astype(np.float64)
        um_path = anadir / "umap.npy"
        um = np.load(um_path) if um_path.is_file() else None
        st = TiltSeriesStar(star)
        pos = {pid: i for i, pid in enumerate(st.particle_ids)}
        star_rows = np.array([pos[pid] for pid in run.particle_ids], dtype=np.int64)
        kdir = anadir / f"kmeans{k}"
        labels = np.loadtxt(kdir / "labels.txt", dtype=np.int64, ndmin=1)[star_rows]
        centers_ind = np.loadtxt(kdir / "centers_ind.txt", dtype=np.int64, ndmin=1)
        row_of_star = {int(s): r for r, s in enumerate(star_rows)}
        centers_row = np.array([row_of_star[int(i)] for i in centers_ind], dtype=np.int64)
        table = per_particle_table(st, run.particle_ids)
        return cls(epoch, z, run.particle_ids, p, um, labels, centers_row, table)

    # ------------------------------------------------------------------------------------------ choices
    @property
    def n(self) -> int:
        return len(self.z)

    def color_choices(self) -> list[str]:
        """What points can be coloured by: clusters (after an analysis), tomogram, every numeric column."""
        cols = [c for c in self.table.columns if c != "tomogram"]
        return ([COLOR_CLUSTER] if self.labels is not None else []) + [COLOR_TOMOGRAM, *cols, COLOR_NONE]

    def embedding(self, kind: str = "PCA", dims: tuple[int, int] = (1, 2)) -> tuple[np.ndarray, str, str]:
        """2-D coordinates of every row, shape (N, 2), with axis labels.

        ``kind`` is ``"PCA"`` (``dims``: 1-based principal components) or ``"UMAP"``.
        """
        if kind == "UMAP":
            if self.umap is None:
                raise ValueError("no UMAP for this latent space (zdim <= 2, or skipped)")
            return self.umap[:, :2], "UMAP1", "UMAP2"
        zdim = self.pca.coords.shape[1]
        a, b = dims
        if not (1 <= a <= zdim and 1 <= b <= zdim):
            raise ValueError(f"principal components {a} and {b}: zdim is {zdim}")
        ex = self.pca.explained * 100
        if zdim == 1:
            return (np.column_stack([self.pca.coords[:, 0], np.zeros(self.n)]),
                    f"PC1 ({ex[0]:.1f} % of variance)", "")
        return (self.pca.coords[:, [a - 1, b - 1]], f"PC{a} ({ex[a - 1]:.1f} % of variance)",
                f"PC{b} ({ex[b - 1]:.1f} % of variance)")

    # ------------------------------------------------------------------------------------------ figures
    def figure(self, kind: str = "PCA", dims: tuple[int, int] = (1, 2), color: str = COLOR_CLUSTER,
               density: bool = False, title: str | None = None) -> Figure:
        """Scatter of the embedding coloured by ``color`` (a :meth:`color_choices` entry), or its hexbin."""
        xy, xl, yl = self.embedding(kind, dims)
        title = title or f"latent space ({kind}), epoch {self.epoch}, {self.n} particles"
        if density:
            return figure_embedding(xy, xl, yl, title + ": density", density=True)
        if color == COLOR_CLUSTER and self.labels is not None:
            centers = xy[self.centers_row] if self.centers_row is not None else None
            return figure_embedding(xy, xl, yl, title + ": k-means clusters", self.labels, centers)
        if color == COLOR_TOMOGRAM:
            names, codes = np.unique(self.table["tomogram"].to_numpy(dtype=str), return_inverse=True)
            fig = figure_embedding(xy, xl, yl, title + ": tomogram", codes)
            ax = fig.axes[0]
            legend = ax.get_legend()
            if legend is not None:  # name the tomograms instead of numbering them
                for text, name in zip(legend.get_texts(), names):
                    text.set_text(f"{name} ({int((self.table['tomogram'] == name).sum())})")
            return fig
        if color in self.table.columns:
            fig, (ax,) = plots.new_figure(1, panel_size=(6.5, 5.0))
            plots.scatter_values(ax, xy, self.table[color].to_numpy(dtype=np.float64), color, fig)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{title}: {color}")
            return fig
        return figure_embedding(xy, xl, yl, title)


def _analysed_epoch(anadir: Path, run: TrainingRun) -> int:
    """The epoch an analysis folder was made from (first line of its ``summary.txt``)."""
    import re

    summary = anadir / "summary.txt"
    if summary.is_file():
        m = re.search(r" at epoch (\d+)", summary.read_text().splitlines()[0])
        if m:
            return int(m.group(1))
    return run.latest_epoch
