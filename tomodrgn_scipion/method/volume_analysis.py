"""Command ``analyze_volumes``: PCA and k-means over a folder of volumes (as written by ``eval_vol``).

Each volume is one sample: its voxels inside an optional mask form a vector, and PCA of these
vectors (mean-centred) gives the main ways the volumes differ. k-means groups similar volumes and
names the volume nearest each cluster centre. Volumes along the first principal components (the
mean, and the mean plus and minus 2 standard deviations along each PC) show what each PC changes.

Choices, and why:

* At least 3 volumes are needed: with 2 there is a single principal axis (their difference) and no
  PC1-PC2 plane to plot.
* The mask selects voxels, it does not weight them: voxels whose mask value is above
  ``--mask-threshold`` are analysed, each with equal weight. A soft mask's fall-off is therefore cut
  at the threshold; weighting by the mask would make the PCA depend on how the mask was softened.
* k-means runs on the coordinates along all principal components, which keep every distance
  between the (masked) volumes exactly, so it groups the volumes as k-means over voxels would,
  at a fraction of the cost.
* The PC volumes are whole volumes: inside the mask, the mean plus or minus 2 sd along the PC;
  outside it, the mean of all volumes, so they can be viewed like the inputs.
"""
from __future__ import annotations

import argparse
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("tomodrgn_scipion")

#: Fewest volumes analysed (PC1 and PC2 need 3).
MIN_VOLUMES = 3
#: Beyond this many volumes the scatter plot names only the k-means centre volumes.
MAX_POINT_NAMES = 100
#: The PC volumes sit this many standard deviations either side of the mean.
N_SD = 2.0


# ----------------------------------------------------------------------------------------------- inputs
def _natural_key(name: str) -> list:
    """Sort key reading runs of digits as numbers: ``vol_2`` before ``vol_10``."""
    # re.split with a group alternates text, digits, text, ...: the types line up position by position
    return [int(t) if i % 2 else t.lower() for i, t in enumerate(re.split(r"(\d+)", name))]


def list_volumes(voldir: Path, exclude: Path | None = None) -> list[Path]:
    """The ``*.mrc`` files of ``voldir`` in natural sort order.

    Parameters
    ----------
    voldir : Path
        Folder of volumes (not searched recursively; hidden files, such as half-written temporary
        files, are skipped).
    exclude : Path, optional
        A file not to count as a volume (the mask, when it lies in ``voldir``).

    Returns
    -------
    list of Path
    """
    if not voldir.is_dir():
        raise InputError(f"{voldir}: not a folder")
    skip = exclude.resolve() if exclude is not None else None
    paths = [p for p in voldir.iterdir()
             if p.suffix.lower() == ".mrc" and not p.name.startswith(".") and p.is_file() and p.resolve() != skip]
    return sorted(paths, key=lambda p: _natural_key(p.name))


def read_mask(path: Path, shape: tuple[int, ...], threshold: float) -> np.ndarray:
    """The voxels selected by a mask volume.

    Parameters
    ----------
    path : Path
        Mask (.mrc), same shape as the volumes.
    shape : tuple of int
        Shape of the volumes, (D, D, D).
    threshold : float
        Voxels whose mask value is above this are selected.

    Returns
    -------
    numpy.ndarray, bool, shape (D, D, D)
    """
    from .stacks import read_volume

    mask, _ = read_volume(path)
    if mask.shape != tuple(shape):
        raise InputError(f"{path}: mask shape {mask.shape} differs from the volumes' {tuple(shape)}")
    sel = mask > threshold
    n = int(sel.sum())
    if n < 2:
        raise InputError(f"{path}: {n} voxel(s) above --mask-threshold {threshold:g}; at least 2 are needed")
    return sel


@dataclass
class VolumeSet:
    """Masked voxels of a set of volumes.

    Attributes
    ----------
    paths : list of Path
        The volume files, in the order of the rows.
    voxels : numpy.ndarray, float32, shape (N, M)
        Row ``i``: the ``M`` voxels of volume ``i`` inside the mask, in C order of ``[z, y, x]``.
    mean : numpy.ndarray, float32, shape (D, D, D)
        Voxel-wise mean of the whole volumes (density units of the input).
    mask : numpy.ndarray, bool, shape (D, D, D)
        Voxels analysed (all when no mask is given).
    pixel_size : float
        A per pixel, from the first volume's header.
    """

    paths: list[Path]
    voxels: np.ndarray
    mean: np.ndarray
    mask: np.ndarray
    pixel_size: float


def load_volumes(voldir: Path, mask_path: Path | None = None, mask_threshold: float = 0.5) -> VolumeSet:
    """Read the volumes of ``voldir`` and keep their voxels inside the mask.

    Parameters
    ----------
    voldir : Path
        Folder of ``*.mrc`` volumes of one shape.
    mask_path : Path, optional
        Mask volume; default: every voxel.
    mask_threshold : float
        Mask voxels above this value are analysed.

    Returns
    -------
    VolumeSet
    """
    from .stacks import read_volume

    paths = list_volumes(voldir, mask_path)
    if len(paths) < MIN_VOLUMES:
        found = f"{len(paths)} volume(s)" + (f" ({', '.join(p.name for p in paths)})" if paths else "")
        raise InputError(f"{voldir}: found {found} (*.mrc); PCA needs at least {MIN_VOLUMES}")
    first, pixel = read_volume(paths[0])
    mask = read_mask(mask_path, first.shape, mask_threshold) if mask_path is not None else np.ones(first.shape, bool)
    voxels = np.empty((len(paths), int(mask.sum())), dtype=np.float32)
    total = np.zeros(first.shape, dtype=np.float64)
    for i, path in enumerate(paths):
        vol, pix = (first, pixel) if i == 0 else read_volume(path)
        if vol.shape != first.shape:
            raise InputError(f"{path}: shape {vol.shape} differs from {first.shape} of {paths[0].name}")
        if not np.isfinite(vol).all():
            raise InputError(f"{path}: contains values that are not finite numbers")
        if abs(pix - pixel) > 1e-3 * pixel:
            log.warning("%s: pixel size %g A differs from %g A of %s; using %g A", path, pix, pixel, paths[0].name, pixel)
        voxels[i] = vol[mask]
        total += vol
    if not np.ptp(voxels, axis=0).any():
        where = " inside the mask" if mask_path is not None else ""
        raise InputError(f"{voldir}: the volumes are identical{where}; there is nothing to analyse")
    return VolumeSet(paths, voxels, (total / len(paths)).astype(np.float32), mask, pixel)


# --------------------------------------------------------------------------------------------- analysis
@dataclass
class VolumePCA:
    """Principal components of a set of volumes.

    Attributes
    ----------
    coords : numpy.ndarray, shape (N, K)
        Coordinates of each volume along the K = min(N - 1, M) principal components (PC1 first),
        in density units.
    ratio : numpy.ndarray, shape (K,)
        Fraction of the total variance along each PC.
    variance : numpy.ndarray, shape (K,)
        Variance along each PC (sample variance, ddof = 1), density units squared summed over voxels.
    components : numpy.ndarray, shape (K, M)
        Principal axes, unit vectors over the masked voxels.
    mean : numpy.ndarray, shape (M,)
        Mean of the masked voxels.
    """

    coords: np.ndarray
    ratio: np.ndarray
    variance: np.ndarray
    components: np.ndarray
    mean: np.ndarray


def volume_pca(voxels: np.ndarray) -> VolumePCA:
    """PCA of volumes given as rows of masked voxels.

    Parameters
    ----------
    voxels : numpy.ndarray, float32, shape (N, M)
        Centred here; the array is left as it was (a centred copy is made).

    Returns
    -------
    VolumePCA
        Signs follow scikit-learn's deterministic convention.
    """
    from sklearn.decomposition import PCA

    k = min(len(voxels) - 1, voxels.shape[1])
    # the full SVD is exact and deterministic; with N volumes << M voxels it costs O(N^2 M)
    p = PCA(n_components=k, svd_solver="full")
    coords = p.fit_transform(voxels)
    return VolumePCA(coords.astype(np.float64), p.explained_variance_ratio_.astype(np.float64),
                     p.explained_variance_.astype(np.float64), p.components_, p.mean_)


def kmeans_volumes(coords: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the volumes, and the volume nearest each centre.

    Parameters
    ----------
    coords : numpy.ndarray, shape (N, K)
        Coordinates along all principal components.
    k : int
        Number of clusters, 1 <= k <= N.
    seed : int
        Seed of the k-means initialisation (10 restarts).

    Returns
    -------
    labels : numpy.ndarray, int64, shape (N,)
        Cluster of each volume.
    centers_ind : numpy.ndarray, int64, shape (k,)
        Index (0-based row) of the volume nearest each cluster centre.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(coords, dtype=np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            log.warning("k-means: %s", str(w.message).split("\n")[0])
    d = ((x[None, :, :] - km.cluster_centers_[:, None, :]) ** 2).sum(-1)
    return km.labels_.astype(np.int64), d.argmin(1).astype(np.int64)


def pc_volumes(vs: VolumeSet, p: VolumePCA, n_pcs: int, n_sd: float = N_SD) -> dict[str, np.ndarray]:
    """The mean volume and, for each of the first ``n_pcs`` PCs, the mean -/+ ``n_sd`` sd along it.

    Parameters
    ----------
    vs : VolumeSet
    p : VolumePCA
        PCA of ``vs.voxels``.
    n_pcs : int
        Number of PCs (at most the number of components).
    n_sd : float
        Distance from the mean in standard deviations of the volumes' coordinates along the PC.

    Returns
    -------
    dict of str to numpy.ndarray, float32, shape (D, D, D)
        ``mean``, ``pc1_minus``, ``pc1_plus``, ``pc2_minus``, ...; outside the mask every volume is
        the mean of the inputs.
    """
    out = {"mean": vs.mean}
    for i in range(n_pcs):
        step = n_sd * np.sqrt(p.variance[i]) * p.components[i]
        for name, sign in (("minus", -1.0), ("plus", 1.0)):
            vol = vs.mean.copy()
            vol[vs.mask] = (p.mean + sign * step).astype(np.float32)
            out[f"pc{i + 1}_{name}"] = vol
    return out


# ---------------------------------------------------------------------------------------------- figures
def _pc_label(i: int, ratio: np.ndarray) -> str:
    return f"PC{i + 1} ({100 * ratio[i]:.1f} % of variance; density units)"


def scatter_figure(coords: np.ndarray, ratio: np.ndarray, labels: np.ndarray, centers_ind: np.ndarray,
                   names: list[str] | None = None) -> "Figure":
    """Volumes on PC1 and PC2, coloured by k-means cluster, each named by its index.

    Parameters
    ----------
    coords : numpy.ndarray, shape (N, K)
        PCA coordinates, K >= 2.
    ratio : numpy.ndarray, shape (K,)
        Explained variance fractions (for the axis labels).
    labels : numpy.ndarray, int, shape (N,)
        k-means cluster of each volume.
    centers_ind : numpy.ndarray, int, shape (k,)
        Volumes nearest the cluster centres, drawn ringed.
    names : list of str, optional
        Text next to each point; default: the volume index. With more than ``MAX_POINT_NAMES``
        volumes only the centre volumes are named.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; the volumes are its collections labelled ``cluster ...``.
    """
    from .plots import new_figure, scatter_labels

    names = names if names is not None else [str(i) for i in range(len(coords))]
    fig, (ax,) = new_figure(1, panel_size=(6.0, 5.0))
    xy = np.asarray(coords[:, :2], dtype=np.float64)
    scatter_labels(ax, xy, np.asarray(labels))
    c = xy[np.asarray(centers_ind, dtype=np.int64)]
    ax.scatter(c[:, 0], c[:, 1], s=90, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3)
    shown = range(len(xy)) if len(xy) <= MAX_POINT_NAMES else np.unique(centers_ind)
    for i in shown:
        ax.annotate(names[i], xy[i], xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(_pc_label(0, ratio))
    ax.set_ylabel(_pc_label(1, ratio))
    ax.set_title(f"{len(xy)} volumes, k-means with {len(centers_ind)} clusters (ringed: volume nearest each centre)",
                 fontsize=9)
    return fig


def explained_figure(ratio: np.ndarray) -> "Figure":
    """Explained variance per principal component and cumulative, in percent.

    Parameters
    ----------
    ratio : numpy.ndarray, shape (K,)

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .plots import lines, new_figure

    fig, (ax,) = new_figure(1)
    x = np.arange(1, len(ratio) + 1)
    lines(ax, x, {"per PC": 100 * ratio, "cumulative": 100 * np.cumsum(ratio)}, "principal component",
          "explained variance (%)", markers=len(ratio) <= 50)
    ax.set_ylim(0, 105)
    if len(ratio) <= 20:
        ax.set_xticks(x)
    return fig


# ---------------------------------------------------------------------------------------------- command
def analyze_volumes(voldir: Path, outdir: Path, mask: Path | None = None, mask_threshold: float = 0.5,
                    ksample: int | None = None, n_pcs: int = 3, seed: int = 0) -> dict:
    """PCA and k-means of the volumes of ``voldir``; write tables, plots and PC volumes to ``outdir``.

    Parameters
    ----------
    voldir : Path
        Folder of ``*.mrc`` volumes of one shape (at least 3).
    outdir : Path
        Output folder (created; must not be ``voldir``, whose ``*.mrc`` files are the input).
    mask : Path, optional
        Mask volume of the same shape; voxels above ``mask_threshold`` are analysed.
    mask_threshold : float
    ksample : int, optional
        Number of k-means clusters; default min(20, number of volumes).
    n_pcs : int
        PCs for which volumes are written (limited to the number of components).
    seed : int
        Seed of k-means.

    Returns
    -------
    dict
        ``volumes`` (VolumeSet), ``pca`` (VolumePCA), ``labels``, ``centers_ind``, ``n_pcs`` (used)
        and ``files`` (output group name -> list of Path).
    """
    from .outputs import write_text
    from .plots import save_figure
    from .stacks import write_mrc

    voldir, outdir = Path(voldir), Path(outdir)
    if outdir.resolve() == voldir.resolve():
        raise InputError(f"{outdir}: the output folder must differ from VOLDIR (its *.mrc files are the input)")
    if n_pcs < 1:
        raise InputError(f"--n-pcs {n_pcs}: must be >= 1")
    if mask is not None and not Path(mask).is_file():
        raise InputError(f"{mask}: mask file not found")
    vs = load_volumes(voldir, Path(mask) if mask is not None else None, mask_threshold)
    n = len(vs.paths)
    k = min(20, n) if ksample is None else ksample
    if not 1 <= k <= n:
        raise InputError(f"--ksample {k}: must be between 1 and the number of volumes ({n})")
    log.debug("%s: %d volumes of %s voxels, %d voxels analysed", voldir, n, "x".join(map(str, vs.mask.shape)), vs.voxels.shape[1])

    p = volume_pca(vs.voxels)
    labels, centers_ind = kmeans_volumes(p.coords, k, seed)
    used_pcs = min(n_pcs, len(p.ratio))
    if used_pcs < n_pcs:
        log.info("--n-pcs %d: only %d principal components exist; writing volumes for %d", n_pcs, len(p.ratio), used_pcs)

    files: dict[str, list[Path]] = {}
    names = [q.name for q in vs.paths]
    write_text(outdir / "volumes.txt", "".join(f"{s}\n" for s in names))
    header = " ".join(f"PC{i + 1}" for i in range(p.coords.shape[1]))
    write_text(outdir / "volume_pca.txt", f"# rows: volumes.txt order; columns: {header}\n"
               + "".join(" ".join(f"{v:.8g}" for v in row) + "\n" for row in p.coords))
    write_text(outdir / "explained_variance.txt", "# one row per PC: fraction_of_variance variance (density units^2, summed over voxels)\n"
               + "".join(f"{r:.8g} {v:.8g}\n" for r, v in zip(p.ratio, p.variance)))
    save_figure(explained_figure(p.ratio), outdir / "pca_explained.png")
    files["pca"] = [outdir / s for s in ("volumes.txt", "volume_pca.txt", "explained_variance.txt", "pca_explained.png")]

    write_text(outdir / "labels.txt", "".join(f"{int(v)}\n" for v in labels))
    write_text(outdir / "centers_ind.txt", "".join(f"{int(v)}\n" for v in centers_ind))
    save_figure(scatter_figure(p.coords, p.ratio, labels, centers_ind), outdir / "pca_scatter.png")
    files["kmeans"] = [outdir / s for s in ("labels.txt", "centers_ind.txt", "pca_scatter.png")]

    files["volumes"] = []
    for name, vol in pc_volumes(vs, p, used_pcs).items():
        path = outdir / f"{name}.mrc"
        write_mrc(path, vol, vs.pixel_size)
        files["volumes"].append(path)

    shown = min(len(p.ratio), 10)
    sizes = np.bincount(labels, minlength=k)
    summary = [
        "analyze_volumes",
        f"volumes: {n} from {voldir} (order: volumes.txt), box {vs.mask.shape[0]} px, {vs.pixel_size:g} A/px",
        f"mask: {mask} (voxels > {mask_threshold:g}), {vs.voxels.shape[1]} voxels" if mask is not None
        else f"mask: none, all {vs.voxels.shape[1]} voxels",
        f"principal components: {len(p.ratio)}; explained variance (%) of PC1..PC{shown}: "
        + ", ".join(f"{100 * r:.2f}" for r in p.ratio[:shown]),
        "cumulative (%): " + ", ".join(f"{100 * r:.2f}" for r in np.cumsum(p.ratio)[:shown]),
        f"k-means: {k} clusters, seed {seed}, on the coordinates along all PCs",
        "cluster sizes: " + ", ".join(f"{j}: {int(c)}" for j, c in enumerate(sizes)),
        "volume nearest each centre: " + ", ".join(f"{j}: {int(i)} ({names[i]})" for j, i in enumerate(centers_ind)),
        f"PC volumes: mean.mrc and the mean -/+ {N_SD:g} sd along PC1..PC{used_pcs} (pcN_minus.mrc, pcN_plus.mrc); "
        "outside the mask the mean of all volumes",
        "files: " + ", ".join(q.name for group in files.values() for q in group),
    ]
    write_text(outdir / "summary.txt", "\n".join(summary) + "\n")
    files["summary"] = [outdir / "summary.txt"]
    return {"volumes": vs, "pca": p, "labels": labels, "centers_ind": centers_ind, "n_pcs": used_pcs, "files": files}


def add_analyze_volumes(p: argparse.ArgumentParser) -> None:
    """Arguments of ``analyze_volumes``."""
    p.add_argument("voldir", type=Path, help="folder of volumes (*.mrc, one shape, at least 3), e.g. the output of eval_vol; "
                                             "read in natural order (vol_2 before vol_10)")
    p.add_argument("-o", "--outdir", type=Path, help="output folder (default: VOLDIR/volume_analysis)")
    p.add_argument("--mask", type=Path, help="mask volume (.mrc) of the same shape; only voxels above --mask-threshold "
                                             "are analysed, each with equal weight (default: all voxels)")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="mask voxels above this value are analysed (default: 0.5)")
    p.add_argument("--ksample", type=int, help="number of k-means clusters (default: 20, or the number of volumes if fewer)")
    p.add_argument("--n-pcs", type=int, default=3,
                   help=f"write the mean -/+ {N_SD:g} sd along each of the first N principal components (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means: same seed and volumes give the same result (default: 0)")


def run_analyze_volumes(a: argparse.Namespace) -> None:
    """Run ``analyze_volumes``."""
    outdir = a.outdir if a.outdir is not None else a.voldir / "volume_analysis"
    r = analyze_volumes(a.voldir, outdir, a.mask, a.mask_threshold, a.ksample, a.n_pcs, a.seed)
    vs, p, files = r["volumes"], r["pca"], r["files"]
    where = f"inside {a.mask} (> {a.mask_threshold:g})" if a.mask else "(no mask)"
    print(f"analysed {len(vs.paths)} volumes of {vs.mask.shape[0]}^3 at {vs.pixel_size:g} A/px, "
          f"{vs.voxels.shape[1]} voxels {where}")
    top = ", ".join(f"PC{i + 1} {100 * v:.1f} %" for i, v in enumerate(p.ratio[:3]))
    print(f"PCA ({top} of variance): {', '.join(str(q) for q in files['pca'])}")
    print(f"k-means ({len(r['centers_ind'])} clusters): {', '.join(str(q) for q in files['kmeans'])}")
    print(f"volumes (mean, -/+ {N_SD:g} sd along PC1..PC{r['n_pcs']}): {', '.join(str(q) for q in files['volumes'])}")
    print(f"summary: {files['summary'][0]}")
