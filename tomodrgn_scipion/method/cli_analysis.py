"""Commands ``analyze``, ``pc_traversal``, ``graph_traversal`` and ``filter`` of ``tomodrgn-scipion``.

Particle indices in every file these commands read or write (``labels.txt``, ``centers_ind.txt``,
``--ind``) count particles of the star file in order of first appearance of ``_rlnGroupName``,
from 0; ``labels.txt`` holds -1 for particles that were not trained on.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cliutil import add_device_arg, resolve_device
from .errors import InputError
from .outputs import safe_name, write_text

if TYPE_CHECKING:  # imported where used: every command's start-up would pay for pandas and matplotlib
    import pandas as pd
    from matplotlib.figure import Figure

    from .analysis import PCAResult, TrainingRun

log = logging.getLogger("tomodrgn_scipion")


# -------------------------------------------------------------------------------------------- analyze
def add_volume_args(p: argparse.ArgumentParser) -> None:
    """Options of the volumes that ``analyze`` generates (as ``eval_vol``'s)."""
    g = p.add_argument_group("volumes")
    g.add_argument("--skip-vol", action="store_true", help="do not generate volumes")
    g.add_argument("--downsample", type=int, help="render at this (even) box instead of the training box")
    g.add_argument("--lowpass", type=float, help="low-pass filter the volumes at this resolution, A")
    g.add_argument("--flip", action="store_true", help="flip the handedness (mirror along z)")
    g.add_argument("--invert", action="store_true", help="invert the contrast")
    add_device_arg(g)


def add_analyze(p: argparse.ArgumentParser) -> None:
    """Arguments of ``analyze``."""
    p.add_argument("outdir", type=Path, help="train_vae output folder")
    p.add_argument("--epoch", type=int, default=-1, help="epoch to analyse (weights.E.pt, z.E.npy); default: the last")
    p.add_argument("--ksample", type=int, default=20, help="number of k-means clusters (default: 20)")
    p.add_argument("-o", "--anadir", type=Path, help="output folder (default: OUTDIR/analyze.E)")
    p.add_argument("--pc", type=int, default=2, help="number of principal components to traverse (default: 2)")
    p.add_argument("--n-per-pc", type=int, default=10, help="volumes along each PC, at the 5th..95th percentiles (default: 10)")
    p.add_argument("--skip-umap", action="store_true", help="no UMAP even when zdim > 2")
    p.add_argument("--particles", type=Path, help="the training star file, if it has moved since training")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and UMAP (default: 0)")
    add_volume_args(p)


@dataclass
class Analysis:
    """What ``analyze`` computed and drew (the figures are kept for inspection)."""

    anadir: Path
    epoch: int
    z: np.ndarray
    pca: PCAResult
    umap: np.ndarray | None
    labels: np.ndarray
    centers_row: np.ndarray
    centers_ind: np.ndarray
    table: pd.DataFrame
    controls: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)
    volumes: list[Path] = field(default_factory=list)


def embedding_2d(p: PCAResult) -> tuple[np.ndarray, str, str]:
    """PC1/PC2 coordinates for plots, with axis labels (zdim 1: PC1 against 0)."""
    ex = p.explained * 100
    if p.coords.shape[1] == 1:
        return np.column_stack([p.coords[:, 0], np.zeros(len(p.coords))]), f"PC1 ({ex[0]:.1f} % of variance)", ""
    return p.coords[:, :2], f"PC1 ({ex[0]:.1f} % of variance)", f"PC2 ({ex[1]:.1f} % of variance)"


def controls_table(table: pd.DataFrame, embeddings: dict[str, np.ndarray]) -> pd.DataFrame:
    """Spearman correlation of every per-particle numeric column with every embedding axis.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per analysed particle (:func:`.analysis.per_particle_table`).
    embeddings : dict
        Axis name -> values per particle, shape (N,).

    Returns
    -------
    pandas.DataFrame
        Rows: columns of ``table``; columns: the axes, plus ``max |rho|``; sorted by it, largest first.
    """
    import pandas as pd

    from .analysis import spearman

    numeric = [c for c in table.columns if c != "tomogram"]
    rho = pd.DataFrame({ax: [spearman(table[c].to_numpy(), v) for c in numeric] for ax, v in embeddings.items()},
                       index=pd.Index(numeric, name="column"))
    rho["max |rho|"] = rho.abs().max(axis=1)
    return rho.sort_values("max |rho|", ascending=False, na_position="last")


def occupancy(labels: np.ndarray, tomograms: np.ndarray, k: int) -> pd.DataFrame:
    """Particles of each cluster in each tomogram: rows tomograms (sorted), columns clusters 0..k-1."""
    import pandas as pd

    tomos = sorted(set(tomograms))
    counts = np.zeros((len(tomos), k), dtype=np.int64)
    pos = {t: i for i, t in enumerate(tomos)}
    np.add.at(counts, ([pos[t] for t in tomograms], labels), 1)
    return pd.DataFrame(counts, index=pd.Index(tomos, name="tomogram"), columns=[f"cluster {j}" for j in range(k)])


def figure_embedding(xy: np.ndarray, xlabel: str, ylabel: str, title: str, labels: np.ndarray | None = None,
                     centers: np.ndarray | None = None, density: bool = False) -> Figure:
    """Scatter (coloured by cluster when ``labels`` is given) or hexbin of a 2-D embedding."""
    from . import plots

    fig, (ax,) = plots.new_figure(1, panel_size=(6.0, 5.0))
    if density:
        plots.hexbin(ax, xy, fig)
    elif labels is not None:
        plots.scatter_labels(ax, xy, labels, centers)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=plots.marker_size(len(xy)), color=plots.OKABE_ITO[0], linewidths=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def figure_explained(p: PCAResult) -> Figure:
    """Explained variance ratio per principal component, with the cumulative curve."""
    from . import plots

    fig, (ax,) = plots.new_figure(1, panel_size=(5.0, 3.5))
    x = np.arange(1, len(p.explained) + 1)
    ax.bar(x, p.explained * 100, color=plots.OKABE_ITO[0], label="component")
    ax.plot(x, np.cumsum(p.explained) * 100, color=plots.OKABE_ITO[5], marker="o", ms=3, label="cumulative")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance (%)")
    ax.set_xticks(x)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    return fig


def figure_controls(xy: np.ndarray, xlabel: str, ylabel: str, table: pd.DataFrame, rho: pd.DataFrame,
                    max_panels: int = 24) -> Figure:
    """The embedding coloured by each per-particle column (most correlated first), one panel each."""
    from . import plots

    cols = [c for c in rho.index if np.isfinite(rho.loc[c, "max |rho|"])][:max_panels] or list(rho.index[:1])
    fig, axes = plots.new_figure(max(1, len(cols)), ncols=4, panel_size=(4.2, 3.4))
    for ax, c in zip(axes, cols):
        plots.scatter_values(ax, xy, table[c].to_numpy(), c, fig)
        ax.set_title(f"{c}  (max |ρ| {rho.loc[c, 'max |rho|']:.2f})", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    return fig


def figure_occupancy(occ: pd.DataFrame) -> Figure:
    """Particles per cluster in each tomogram, as stacked bars."""
    from . import plots

    fig, (ax,) = plots.new_figure(1, panel_size=(max(5.0, 0.3 * len(occ) + 2), 4.0))
    plots.stacked_bars(ax, list(occ.index), occ.to_numpy(), list(occ.columns), "tomogram", "particles")
    ax.set_title("cluster occupancy per tomogram")
    return fig


def figure_loss(loss: dict[str, np.ndarray], epoch: int) -> Figure:
    """Reconstruction loss and KL divergence per epoch, the analysed epoch marked."""
    from . import plots

    fig, axes = plots.new_figure(2, ncols=2, panel_size=(4.5, 3.5))
    plots.lines(axes[0], loss["epoch"], {"reconstruction": loss["recon"]}, "epoch", "reconstruction loss (MSE)")
    plots.lines(axes[1], loss["epoch"], {"KL divergence": loss["kl"]}, "epoch", "KL divergence (nats per particle)")
    for ax in axes:
        ax.axvline(epoch, color="#999999", ls=":", lw=1)
    return fig


def run_analysis(run: TrainingRun, epoch: int | None, k: int, anadir: Path | None = None, n_pcs: int = 2,
                 n_per_pc: int = 10, skip_umap: bool = False, skip_vol: bool = False, star_path: Path | None = None,
                 seed: int = 0, device: str = "cpu", volume_options=None) -> Analysis:
    """Everything ``analyze`` does; see :func:`add_analyze` for the options and the module for indices."""
    from . import plots
    from .analysis import kmeans, pc_traversal, pca, per_particle_table, read_loss, star_index, star_order, umap_embedding
    from .generate import VolumeOptions, write_volumes

    t0 = time.monotonic()
    epoch = run.resolve_epoch(epoch)
    z = run.z(epoch)
    n, zdim = z.shape
    if not 1 <= k <= n:
        raise InputError(f"--ksample {k}: must be between 1 and the number of particles ({n})")
    if not 0 <= n_pcs <= zdim:
        raise InputError(f"--pc {n_pcs}: must be between 0 and zdim ({zdim})")
    if n_per_pc < 1:
        raise InputError(f"--n-per-pc {n_per_pc}: must be >= 1")
    opts = volume_options or VolumeOptions()
    opts.out_box(run.box)
    anadir = anadir or run.outdir / f"analyze.{epoch}"
    star = run.open_star(star_path)
    table = per_particle_table(star, run.particle_ids)
    log.info("analysing epoch %d of %s: %d particles, zdim %d", epoch, run.outdir, n, zdim)
    figs: dict[str, Figure] = {}

    p = pca(z)
    _save_npy(anadir / "z_pca.npy", p.coords.astype(np.float32))
    xy, xl, yl = embedding_2d(p)
    figs["pca_explained.png"] = figure_explained(p)
    figs["z_pca.png"] = figure_embedding(xy, xl, yl, f"latent space, epoch {epoch}")
    figs["z_pca_hexbin.png"] = figure_embedding(xy, xl, yl, f"latent space density, epoch {epoch}", density=True)

    um = None
    if zdim > 2 and not skip_umap:
        t = time.monotonic()
        um = umap_embedding(z, seed)
        if um is not None:
            _save_npy(anadir / "umap.npy", um)
            figs["umap.png"] = figure_embedding(um, "UMAP1", "UMAP2", f"UMAP of z, epoch {epoch}")
            figs["umap_hexbin.png"] = figure_embedding(um, "UMAP1", "UMAP2", f"UMAP density, epoch {epoch}", density=True)
            log.info("UMAP in %.1f s", time.monotonic() - t)

    km = kmeans(z, k, seed)
    kdir = anadir / f"kmeans{k}"
    labels_star = star_order(km.labels, run.particle_ids, star.particle_ids)
    centers_ind = star_index(km.centers_row, run.particle_ids, star.particle_ids)
    write_text(kdir / "labels.txt", "\n".join(str(v) for v in labels_star) + "\n")
    write_text(kdir / "centers.txt", _rows(km.centers))
    write_text(kdir / "centers_ind.txt", "\n".join(str(v) for v in centers_ind) + "\n")
    figs[f"kmeans{k}/z_pca_kmeans.png"] = figure_embedding(
        xy, xl, yl, f"k-means, {k} clusters (centres numbered)", km.labels, xy[km.centers_row])
    if um is not None:
        figs[f"kmeans{k}/umap_kmeans.png"] = figure_embedding(
            um, "UMAP1", "UMAP2", f"k-means, {k} clusters (centres numbered)", km.labels, um[km.centers_row])
    occ = occupancy(km.labels, table["tomogram"].to_numpy(), k)
    write_text(kdir / "occupancy.csv", occ.to_csv())
    figs[f"kmeans{k}/occupancy.png"] = figure_occupancy(occ)

    axes = {f"PC{i + 1}": p.coords[:, i] for i in range(min(zdim, 2))}
    if um is not None:
        axes.update({"UMAP1": um[:, 0], "UMAP2": um[:, 1]})
    rho = controls_table(table, axes)
    write_text(anadir / "controls.csv", rho.to_csv(float_format="%.4f"))
    figs["controls.png"] = figure_controls(xy, xl, yl, table, rho)

    trav = {}
    for d in range(1, n_pcs + 1):
        zt, vals = pc_traversal(p, d, n_per_pc)
        trav[d] = (zt, vals)
        write_text(anadir / f"pc{d}" / "z_values.txt", _rows(zt))
        write_text(anadir / f"pc{d}" / "pc_values.txt", "\n".join(f"{v:.6g}" for v in vals) + "\n")
    if trav:
        fig = figure_embedding(xy, xl, yl, "PC traversals (5th..95th percentiles)")
        ax = fig.axes[0]
        for (d, (zt, vals)), color in zip(trav.items(), plots.OKABE_ITO[5:] + plots.OKABE_ITO):
            pts = (zt - p.mean) @ p.components[: min(zdim, 2)].T
            ax.plot(pts[:, 0], pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts)), color=color, marker="o", ms=4,
                    lw=1, label=f"PC{d} traversal")
        ax.legend(fontsize=8)
        figs["z_pca_traversals.png"] = fig

    loss = read_loss(run.outdir)
    if len(loss["epoch"]):
        figs["loss.png"] = figure_loss(loss, epoch)

    for name, fig in figs.items():
        plots.save_figure(fig, anadir / name)

    vols: list[Path] = []
    if not skip_vol:
        model = run.model(epoch, device)
        vols += write_volumes(model.decoder, list(km.centers), run.box, run.pixel_size, kdir, "vol_", opts)
        for d, (zt, _) in trav.items():
            vols += write_volumes(model.decoder, list(zt), run.box, run.pixel_size, anadir / f"pc{d}", "vol_", opts)

    result = Analysis(anadir, epoch, z, p, um, labels_star, km.centers_row, centers_ind, table, rho, figs, vols)
    write_text(anadir / "summary.txt", _summary(run, result, k, skip_umap, time.monotonic() - t0))
    return result


def _save_npy(path: Path, array: np.ndarray) -> None:
    from .training import save_npy

    save_npy(array, path)


def _rows(values: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:.6g}" for v in row) for row in np.atleast_2d(values)) + "\n"


def _summary(run: TrainingRun, r: Analysis, k: int, skip_umap: bool, seconds: float) -> str:
    n, zdim = r.z.shape
    sizes = np.bincount(r.labels[r.labels >= 0], minlength=k)
    n_star = len(r.labels)
    lines = [
        f"analysis of {run.outdir} at epoch {r.epoch} (of {run.final_epoch})",
        f"particles: {n} analysed of {n_star} in {run.star}" + ("" if n == n_star else " (the others have label -1)"),
        f"zdim {zdim}; PCA explained variance: " + ", ".join(f"PC{i + 1} {v * 100:.1f} %" for i, v in enumerate(r.pca.explained[:5])),
        "UMAP: " + ("umap.npy" if r.umap is not None else "skipped (" + ("--skip-umap" if skip_umap else
                                                                         "zdim <= 2" if zdim <= 2 else "umap-learn not installed") + ")"),
        f"k-means, {k} clusters: sizes " + " ".join(str(int(s)) for s in sizes) + f"; labels in kmeans{k}/labels.txt (star order)",
        "cluster centres: particles " + " ".join(str(i) for i in r.centers_ind) +
        f" (kmeans{k}/centers_ind.txt)",
    ]
    top = r.controls.dropna(subset=["max |rho|"]).head(3)
    if len(top):
        lines.append("metadata most related to the embedding (Spearman): " +
                     "; ".join(f"{c} {v:.2f}" for c, v in top["max |rho|"].items()))
    lines.append(f"volumes: {len(r.volumes)}; plots: {len(r.figures)}; {seconds:.1f} s")
    return "\n".join(lines) + "\n"


def run_analyze(a: argparse.Namespace) -> None:
    """Run ``analyze``."""
    from .analysis import TrainingRun
    from .generate import VolumeOptions

    run = TrainingRun.open(a.outdir)
    if run.zdim == 0:
        raise InputError(f"{a.outdir}: a homogeneous (train_nn) run has no latent space to analyse")
    opts = VolumeOptions(downsample=a.downsample, lowpass=a.lowpass, flip=a.flip, invert=a.invert)
    r = run_analysis(run, a.epoch, a.ksample, a.anadir, a.pc, a.n_per_pc, a.skip_umap, a.skip_vol, a.particles,
                     a.seed, resolve_device(a.device) if not a.skip_vol else "cpu", opts)
    print((r.anadir / "summary.txt").read_text(), end="")
    print(f"outputs in {r.anadir}")


# --------------------------------------------------------------------------------------- traversals
def read_latent(path: Path) -> np.ndarray:
    """Latent points of particles (``.npy`` or text, one row each, at least two), float32, shape (N, zdim)."""
    from .cli_train import read_z

    z = read_z(path)
    if len(z) < 2:
        raise InputError(f"{path}: needs the latent points of at least two particles, got {len(z)}")
    return z


def add_pc_traversal(p: argparse.ArgumentParser) -> None:
    """Arguments of ``pc_traversal``."""
    p.add_argument("zfile", type=Path, help="latent points, one row per particle (z.npy or text)")
    p.add_argument("--dim", type=int, nargs="+", help="principal components to traverse, 1-based (default: all)")
    p.add_argument("-n", type=int, default=10, help="points along each component (default: 10)")
    p.add_argument("--lim", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="range of PC values (default: 5th and 95th percentiles of the particles)")
    p.add_argument("--use-percentile-spacing", action="store_true",
                   help="points at evenly spaced percentiles of the particles in the range, not evenly spaced values")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder: pcN/z_values.txt for eval_vol --zfile")


def run_pc_traversal(a: argparse.Namespace) -> None:
    """Run ``pc_traversal``."""
    from .analysis import pc_traversal, pca

    z = read_latent(a.zfile)
    p = pca(z)
    for d in a.dim or range(1, z.shape[1] + 1):
        zt, vals = pc_traversal(p, d, a.n, tuple(a.lim) if a.lim else None, a.use_percentile_spacing)
        write_text(a.outdir / f"pc{d}" / "z_values.txt", _rows(zt))
        write_text(a.outdir / f"pc{d}" / "pc_values.txt", "\n".join(f"{v:.6g}" for v in vals) + "\n")
        print(f"PC{d} ({p.explained[d - 1] * 100:.1f} % of variance): {len(zt)} points from {vals[0]:.3g} to "
              f"{vals[-1]:.3g} -> {a.outdir / f'pc{d}' / 'z_values.txt'}")


def add_graph_traversal(p: argparse.ArgumentParser) -> None:
    """Arguments of ``graph_traversal``."""
    p.add_argument("zfile", type=Path, help="latent points, one row per particle (z.npy or text)")
    p.add_argument("--anchors", type=int, nargs="+", required=True,
                   help="rows of the z file to visit in order (with all particles trained on: particle indices)")
    p.add_argument("--max-neighbors", type=int, default=10, help="neighbours per particle in the graph (default: 10)")
    p.add_argument("--avg-neighbors", type=float, default=5.0,
                   help="keep edges shorter than the distance giving this many neighbours on average (default: 5)")
    p.add_argument("-o", "--outz", type=Path, required=True, help="latent points along the path (text, for eval_vol --zfile)")
    p.add_argument("--outind", type=Path, help="rows of the z file along the path (text)")


def run_graph_traversal(a: argparse.Namespace) -> None:
    """Run ``graph_traversal``."""
    from .analysis import graph_path

    z = read_latent(a.zfile)
    rows, dist = graph_path(z, a.anchors, a.max_neighbors, a.avg_neighbors)
    write_text(a.outz, _rows(z[rows]))
    if a.outind:
        write_text(a.outind, "\n".join(str(r) for r in rows) + "\n")
    print(f"path through {len(rows)} particles, length {dist[-1]:.3g} in z -> {a.outz}")


# -------------------------------------------------------------------------------------------- filter
def add_filter(p: argparse.ArgumentParser) -> None:
    """Arguments of ``filter``."""
    from .cliutil import PARTICLES_HELP, add_format_args

    p.add_argument("particles", type=Path, help=PARTICLES_HELP)
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--ind", type=Path, help="particle indices (0-based, star order; .txt one per line, .npy or .pkl)")
    sel.add_argument("--labels", type=Path, help="one integer label per particle, star order (e.g. kmeansK/labels.txt)")
    p.add_argument("--labels-sel", type=int, nargs="+", help="labels to select (with --labels)")
    p.add_argument("--action", choices=("keep", "drop"), default="keep",
                   help="keep the selected particles, or drop them and keep the rest (default: keep)")
    p.add_argument("--tomogram", help="also write OUT_<tomogram>.star for this tomogram, or one per tomogram with 'all'")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output star file, in the input's format: for an optimisation set, the new optimisation set "
                        "(X_optimisation_set.star; its X_particles.star is written beside it and names the same tomograms.star)")
    g = p.add_argument_group("format")
    add_format_args(g)


def _read_ints(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        if path.suffix == ".pkl":
            import pickle

            with open(path, "rb") as fh:
                raw = np.asarray(pickle.load(fh)).reshape(-1)
        elif path.suffix == ".npy":
            raw = np.load(path).reshape(-1)
        else:
            raw = np.loadtxt(path, ndmin=1)
    except Exception as exc:
        raise InputError(f"{path}: cannot read {what} ({exc})") from None
    if raw.size and (not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw))):
        raise InputError(f"{path}: {what} must be integers")
    return raw.astype(np.int64)


def select_particles(n_particles: int, ind: Path | None = None, labels: Path | None = None,
                     labels_sel: list[int] | None = None, action: str = "keep") -> np.ndarray:
    """Particle indices (star order, ascending) that ``filter`` keeps.

    Parameters
    ----------
    n_particles : int
    ind : Path, optional
        Index file.
    labels : Path, optional
        Label file, one integer per particle.
    labels_sel : list of int
        Labels selected (with ``labels``).
    action : {"keep", "drop"}

    Returns
    -------
    numpy.ndarray, int64
    """
    if ind is not None:
        sel = _read_ints(ind, "particle index")
        bad = (sel < 0) | (sel >= n_particles)
        if bad.any():
            raise InputError(f"{ind}: particle index {sel[bad][0]} out of range 0..{n_particles - 1}")
        uniq, counts = np.unique(sel, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"{ind}: particle index {uniq[counts > 1][0]} is given {counts.max()} times")
        chosen = np.zeros(n_particles, bool)
        chosen[sel] = True
    else:
        if not labels_sel:
            raise InputError("--labels needs --labels-sel (the labels to select)")
        lab = _read_ints(labels, "label")
        if len(lab) != n_particles:
            raise InputError(f"{labels}: {len(lab)} labels, but the star file has {n_particles} particles")
        present = set(lab.tolist())
        for s in labels_sel:
            if s not in present:
                raise InputError(f"--labels-sel {s}: no particle has that label in {labels} "
                                 f"(labels present: {', '.join(str(v) for v in sorted(present))})")
        chosen = np.isin(lab, labels_sel)
    if action == "drop":
        chosen = ~chosen
    out = np.flatnonzero(chosen)
    if len(out) == 0:
        raise InputError(f"the selection leaves no particle ({action} of {n_particles}); nothing written")
    return out


def filter_rows(star, particles: np.ndarray) -> np.ndarray:
    """Rows of ``star`` (ascending, file order) of the given particles (all their tilt images)."""
    keep = np.zeros(star.n_particles, bool)
    keep[particles] = True
    return np.flatnonzero(keep[star.particle_index])


def run_filter(a: argparse.Namespace) -> None:
    """Run ``filter``."""
    from .cliutil import format_kwargs
    from .star import TiltSeriesStar

    if a.labels_sel and a.labels is None:
        raise InputError("--labels-sel needs --labels")
    star = TiltSeriesStar(a.particles, **format_kwargs(a))
    parts = select_particles(star.n_particles, a.ind, a.labels, a.labels_sel, a.action)
    tomos = np.asarray(star.tomogram_of_particle(), dtype=object)
    if a.tomogram and a.tomogram != "all" and a.tomogram not in set(tomos):
        names = sorted(set(tomos))
        raise InputError(f"--tomogram {a.tomogram}: not in {a.particles} (tomograms: {', '.join(names[:10])}"
                         f"{', ...' if len(names) > 10 else ''})")
    out = a.output if a.output.suffix == ".star" else a.output.with_suffix(".star")
    rows = filter_rows(star, parts)
    written = star.write_subset(parts, out)
    print(f"kept {len(parts)} of {star.n_particles} particles ({len(rows)} tilt images) -> {', '.join(map(str, written))}")
    if a.tomogram:
        wanted = sorted(set(tomos[parts])) if a.tomogram == "all" else [a.tomogram]
        for t in wanted:
            mine = parts[tomos[parts] == t]
            if len(mine) == 0:
                print(f"tomogram {t}: no selected particle; no file written")
                continue
            path = _per_tomogram_name(out, safe_name(t))
            r = filter_rows(star, mine)
            written = star.write_subset(mine, path)
            print(f"tomogram {t}: {len(mine)} particles ({len(r)} tilt images) -> {', '.join(map(str, written))}")


def _per_tomogram_name(out: Path, tomogram: str) -> Path:
    """``OUT_<tomogram>.star``; for an optimisation set ``X_optimisation_set.star``, ``X_<tomogram>_optimisation_set.star``."""
    tail = "_optimisation_set.star"
    if out.name.endswith(tail):
        return out.with_name(f"{out.name[:-len(tail)]}_{tomogram}{tail}")
    return out.with_name(f"{out.stem}_{tomogram}.star")
