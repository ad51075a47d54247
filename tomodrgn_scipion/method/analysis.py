"""Exploring a trained latent space: loading a training run, PCA, UMAP, k-means, traversals,
per-particle metadata and the relation of z to it. Scipion-free; the commands live in
:mod:`.cli_analysis`.

Indexing convention used by every output of the analysis commands: a *particle index* is the
0-based position of a particle in the training star file, in order of first appearance of its
``_rlnGroupName`` (the same convention as ``--ind``). The rows of ``z`` follow ``particle_ids.txt``
of the run, which lists the particles that were trained on (all of them unless ``--ind``/``--first``
or ``--ntilts`` left some out).
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

log = logging.getLogger("tomodrgn_scipion")

CHECKPOINT_RE = re.compile(r"^weights\.(\d+)\.pt$")
RUNLOG_EPOCH_RE = re.compile(r"epoch (\d+)/\d+\s+recon ([-\d.eE+naif]+)(?:\s+KL ([-\d.eE+naif]+)\s+total ([-\d.eE+naif]+))?")


# ------------------------------------------------------------------------------------ training runs
@dataclass
class TrainingRun:
    """The outputs of one ``train_vae`` (or ``train_nn``) folder.

    Attributes
    ----------
    outdir : Path
    config : dict
        ``config.json``.
    particle_ids : list of str
        ``_rlnGroupName`` of each row of z (``particle_ids.txt``).
    epochs : list of int
        Epochs with a checkpoint ``weights.E.pt`` (1-based: E epochs done), ascending.
    final_epoch : int
        Number of epochs trained (from ``loss.csv``, else the last checkpoint).
    """

    outdir: Path
    config: dict
    particle_ids: list[str]
    epochs: list[int]
    final_epoch: int
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, outdir: str | Path) -> "TrainingRun":
        """Read a training folder; one clear error when it is not one."""
        from .training import read_config

        outdir = Path(outdir)
        if not outdir.is_dir():
            raise InputError(f"{outdir}: training folder not found")
        config = read_config(outdir / "config.json")
        ids_path = outdir / "particle_ids.txt"
        if not ids_path.is_file():
            raise InputError(f"{ids_path}: not found (written by train_vae next to z.npy)")
        ids = [line.strip() for line in ids_path.read_text().splitlines() if line.strip()]
        epochs = sorted(int(m.group(1)) for p in outdir.glob("weights.*.pt") if (m := CHECKPOINT_RE.match(p.name)))
        loss = read_loss(outdir)
        final = int(loss["epoch"][-1]) if len(loss["epoch"]) else (epochs[-1] if epochs else 0)
        if not epochs:
            raise InputError(f"{outdir}: no checkpoint weights.E.pt; has train_vae run here?")
        return cls(outdir, config, ids, epochs, final)

    @property
    def zdim(self) -> int:
        """Latent dimension (0 for a homogeneous model)."""
        return int(self.config["model"]["zdim"])

    @property
    def star(self) -> Path:
        """The star file the run was trained on."""
        return Path(self.config["data"]["particles"])

    def open_star(self, path: str | Path | None = None):
        """The particles the run was trained on, read in the format it was trained with.

        Parameters
        ----------
        path : path-like, optional
            Where the star file is now, if it has moved (``--particles``).

        Returns
        -------
        TiltSeriesStar
        """
        from .star import TiltSeriesStar

        d = self.config["data"]
        star_path = Path(path) if path is not None else self.star
        if not star_path.is_file():
            raise InputError(f"{star_path}: training star file not found (moved? give it with --particles)")
        tomograms = d.get("tomograms")
        return TiltSeriesStar(star_path, source_software=d.get("source_software", "auto"),
                              tomograms=tomograms if tomograms and Path(tomograms).is_file() else None)

    @property
    def latest_epoch(self) -> int:
        """The last epoch with both ``weights.E.pt`` and ``z.E.npy`` (a run in progress or killed has
        logged epochs beyond it; ``train_vae`` always checkpoints its final epoch)."""
        have = [e for e in self.epochs if (self.outdir / f"z.{e}.npy").is_file()]
        if not have:
            raise InputError(f"{self.outdir}: no checkpoint with latent means (weights.E.pt with z.E.npy)")
        return have[-1]

    def resolve_epoch(self, epoch: int | None) -> int:
        """``None`` or -1 -> :attr:`latest_epoch`; otherwise check that the checkpoint exists."""
        if epoch is None or epoch == -1:
            return self.latest_epoch
        if epoch not in self.epochs:
            have = ", ".join(str(e) for e in self.epochs) or "none"
            raise InputError(f"{self.outdir}: no checkpoint weights.{epoch}.pt (epochs with checkpoints: {have})")
        return epoch

    def weights_path(self, epoch: int) -> Path:
        """``weights.E.pt``."""
        return self.outdir / f"weights.{epoch}.pt"

    def z(self, epoch: int) -> np.ndarray:
        """Latent means at ``epoch`` (``z.E.npy``), float32, shape (N_trained, zdim)."""
        if self.zdim == 0:
            raise InputError(f"{self.outdir}: a homogeneous (train_nn) run has no latent space")
        p = self.outdir / f"z.{epoch}.npy"
        if not p.is_file():
            raise InputError(f"{p}: not found")
        z = np.load(p).astype(np.float32)
        if z.ndim != 2 or len(z) != len(self.particle_ids):
            raise InputError(f"{p}: {z.shape[0] if z.ndim else 0} rows, but particle_ids.txt lists "
                             f"{len(self.particle_ids)} particles")
        return z

    def model(self, epoch: int, device: str = "cpu"):
        """The model of ``epoch``, in eval mode (cached)."""
        from .training import load_checkpoint, model_from_checkpoint

        key = (epoch, device)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = model_from_checkpoint(load_checkpoint(self.weights_path(epoch), device), device)
        return self._cache[key]

    @property
    def box(self) -> int:
        return int(self.config["model"]["box"])

    @property
    def pixel_size(self) -> float:
        return float(self.config["data"]["pixel_size"])


def read_loss(outdir: Path) -> dict[str, np.ndarray]:
    """Loss per epoch of a run: ``loss.csv`` when present, else the epoch lines of ``run.log``.

    Returns
    -------
    dict
        ``epoch`` (int), ``recon``, ``kl``, ``total`` (float; KL and total NaN for train_nn logs),
        each shape (N_epochs,). The last line of an epoch wins (resumed runs append to run.log).
    """
    csv_path, log_path = outdir / "loss.csv", outdir / "run.log"
    rows: dict[int, tuple[float, float, float]] = {}
    if csv_path.is_file():
        with open(csv_path, newline="") as fh:
            for r in csv.DictReader(fh):
                rows[int(r["epoch"])] = (float(r["recon"]), float(r["kl"]), float(r["total"]))
    elif log_path.is_file():
        for line in log_path.read_text(errors="replace").splitlines():
            m = RUNLOG_EPOCH_RE.search(line)
            if m:
                kl = float(m.group(3)) if m.group(3) else np.nan
                total = float(m.group(4)) if m.group(4) else float(m.group(2))
                rows[int(m.group(1))] = (float(m.group(2)), kl, total)
    ep = np.array(sorted(rows), dtype=np.int64)
    vals = np.array([rows[e] for e in ep], dtype=np.float64).reshape(-1, 3)
    return {"epoch": ep, "recon": vals[:, 0], "kl": vals[:, 1], "total": vals[:, 2]}


# ------------------------------------------------------------------------------------ embeddings
@dataclass
class PCAResult:
    """PCA of z.

    Attributes
    ----------
    coords : numpy.ndarray, shape (N, zdim)
        z in the principal axes (PC1 first).
    explained : numpy.ndarray, shape (zdim,)
        Explained variance ratio of each component.
    components : numpy.ndarray, shape (zdim, zdim)
        Principal axes (rows), unit vectors in z.
    mean : numpy.ndarray, shape (zdim,)
    """

    coords: np.ndarray
    explained: np.ndarray
    components: np.ndarray
    mean: np.ndarray

    def to_z(self, pc_values: np.ndarray) -> np.ndarray:
        """Points given in PC coordinates (shape (M, k), first k PCs) back in z, shape (M, zdim)."""
        pc_values = np.atleast_2d(pc_values)
        k = pc_values.shape[1]
        return (self.mean + pc_values @ self.components[:k]).astype(np.float32)


def pca(z: np.ndarray) -> PCAResult:
    """Principal components of ``z`` (shape (N, zdim)), deterministic signs (sklearn's convention)."""
    from sklearn.decomposition import PCA

    n = min(z.shape[1], len(z))
    p = PCA(n_components=n, svd_solver="full").fit(z.astype(np.float64))
    return PCAResult(p.transform(z.astype(np.float64)), p.explained_variance_ratio_, p.components_, p.mean_)


def umap_embedding(z: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """2-D UMAP of ``z``, shape (N, 2); None (with a log line) when umap-learn is not installed."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap
    except ImportError:
        log.info("UMAP skipped: umap-learn is not installed (pip install umap-learn)")
        return None
    import warnings

    with warnings.catch_warnings():
        # umap warns that a fixed random_state disables parallelism; reproducibility is the point here
        warnings.simplefilter("ignore", UserWarning)
        n_neighbors = int(min(15, max(2, len(z) - 1)))
        return umap.UMAP(n_neighbors=n_neighbors, random_state=seed).fit_transform(z).astype(np.float32)


@dataclass
class KMeansResult:
    """k-means of z with centres moved onto particles.

    Attributes
    ----------
    labels : numpy.ndarray, int64, shape (N,)
        Cluster of each row of z.
    centers : numpy.ndarray, float32, shape (K, zdim)
        z of the particle nearest each k-means centre.
    centers_row : numpy.ndarray, int64, shape (K,)
        Row of z of those particles.
    """

    labels: np.ndarray
    centers: np.ndarray
    centers_row: np.ndarray


def kmeans(z: np.ndarray, k: int, seed: int = 0) -> KMeansResult:
    """k-means with ``k`` clusters (10 restarts, seeded); each centre is replaced by its nearest particle."""
    from sklearn.cluster import KMeans

    if not 1 <= k <= len(z):
        raise InputError(f"--ksample {k}: must be between 1 and the number of particles ({len(z)})")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z.astype(np.float64))
    d = ((z[None, :, :].astype(np.float64) - km.cluster_centers_[:, None, :]) ** 2).sum(-1)
    rows = d.argmin(1).astype(np.int64)
    return KMeansResult(km.labels_.astype(np.int64), z[rows].astype(np.float32), rows)


def percentile_points(values: np.ndarray, n: int = 10, lo: float = 5.0, hi: float = 95.0) -> np.ndarray:
    """``n`` points at evenly spaced percentiles ``lo``..``hi`` of ``values`` (shape (n,))."""
    return np.percentile(values, np.linspace(lo, hi, n))


def pc_traversal(p: PCAResult, dim: int, n: int = 10, lim: tuple[float, float] | None = None,
                 percentile_spacing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Latent points along principal component ``dim`` (1-based), the others at the mean.

    Parameters
    ----------
    p : PCAResult
    dim : int
        1-based principal component.
    n : int
        Number of points.
    lim : (float, float), optional
        Range of PC values; default the 5th and 95th percentiles of the particles.
    percentile_spacing : bool
        Points at evenly spaced percentiles of the particles inside the range (default), else evenly
        spaced values.

    Returns
    -------
    z : numpy.ndarray, float32, shape (n, zdim)
    pc_values : numpy.ndarray, shape (n,)
    """
    if not 1 <= dim <= p.coords.shape[1]:
        raise InputError(f"--dim {dim}: must be between 1 and zdim ({p.coords.shape[1]})")
    if n < 1:
        raise InputError(f"-n {n}: at least one point")
    v = p.coords[:, dim - 1]
    lo, hi = (float(x) for x in (np.percentile(v, [5, 95]) if lim is None else sorted(lim)))
    if percentile_spacing:
        inside = v[(v >= lo) & (v <= hi)]
        if len(inside) == 0:
            raise InputError(f"--lim {lo:g} {hi:g}: no particle has PC{dim} in that range")
        vals = percentile_points(inside, n, 0.0, 100.0)
    else:
        vals = np.linspace(lo, hi, n)
    pcs = np.zeros((n, dim))
    pcs[:, dim - 1] = vals
    return p.to_z(pcs), vals


def graph_path(z: np.ndarray, anchors: list[int], max_neighbors: int = 10, avg_neighbors: float = 5.0,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Shortest path through the particles' latent points, visiting ``anchors`` in order.

    The graph joins each particle to at most ``max_neighbors`` nearest neighbours, keeping only edges
    shorter than the distance at which particles have ``avg_neighbors`` neighbours on average; edges
    are weighted by Euclidean distance in z. Consecutive anchors are joined by Dijkstra's shortest path.

    Parameters
    ----------
    z : numpy.ndarray, shape (N, zdim)
    anchors : list of int
        Rows of z, at least two.

    Returns
    -------
    rows : numpy.ndarray, int64, shape (M,)
        Rows of z along the path, anchors included, without repeats at the junctions.
    distances : numpy.ndarray, shape (M,)
        Cumulative path length in z at each point.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from sklearn.neighbors import NearestNeighbors

    n = len(z)
    if len(anchors) < 2:
        raise InputError("--anchors: give at least two particles")
    for a in anchors:
        if not 0 <= a < n:
            raise InputError(f"--anchors: {a} is out of range 0..{n - 1} (rows of the z file)")
    if max_neighbors < 1 or avg_neighbors <= 0:
        raise InputError("--max-neighbors must be >= 1 and --avg-neighbors > 0")
    k = min(max_neighbors, n - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    dist, idx = dist[:, 1:], idx[:, 1:]
    flat = np.sort(dist.ravel())
    cutoff = flat[min(len(flat) - 1, int(round(avg_neighbors * n)) - 1)]
    keep = dist <= cutoff
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    graph = coo_matrix((dist[keep], (rows, idx[keep])), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T)
    path = [anchors[0]]
    for a, b in zip(anchors[:-1], anchors[1:]):
        d, pred = dijkstra(graph, indices=a, return_predecessors=True)
        if not np.isfinite(d[b]):
            raise InputError(f"--anchors: no path from {a} to {b} in the neighbour graph; raise --avg-neighbors or "
                             f"--max-neighbors")
        seg = [b]
        while seg[-1] != a:
            seg.append(int(pred[seg[-1]]))
        path += seg[::-1][1:]
    rows_out = np.asarray(path, dtype=np.int64)
    steps = np.linalg.norm(np.diff(z[rows_out].astype(np.float64), axis=0), axis=1)
    return rows_out, np.concatenate([[0.0], np.cumsum(steps)])


# ------------------------------------------------------------------------------- particle metadata
def per_particle_table(star, particle_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per particle of an image-series star: every numeric column reduced to one value.

    A column whose value is the same on all tilt images of each particle keeps that value; one that
    varies within particles (defocus, angles...) gives its value on the particle's lowest-dose tilt
    image (the first exposure, normally at zero stage tilt) and is named ``<column> @ first tilt``.
    Columns equal on every row carry no information and are left out. Two derived columns are added:
    ``tilts`` (images per particle) and ``max dose (e/A^2)``.

    Parameters
    ----------
    star : TiltSeriesStar
    particle_ids : list of str, optional
        Particles (``_rlnGroupName``) and order of the rows; default all, in star order.

    Returns
    -------
    pandas.DataFrame
        Indexed by particle id, float64 columns; plus ``tomogram`` (str).
    """
    ids = particle_ids if particle_ids is not None else star.particle_ids
    pos = {p: i for i, p in enumerate(star.particle_ids)}
    missing = [p for p in ids if p not in pos]
    if missing:
        raise InputError(f"{star.path}: particle {missing[0]} of the training run is not in this star file")
    idx = np.array([pos[p] for p in ids], dtype=np.int64)
    pidx = star.particle_index
    counts = np.bincount(pidx, minlength=star.n_particles).astype(np.float64)
    # lowest-dose row of each particle (first in file order among ties)
    order = np.lexsort((np.arange(star.n_images), star.dose, pidx))
    first_row = order[np.r_[0, np.flatnonzero(np.diff(pidx[order])) + 1]]
    cols: dict[str, np.ndarray] = {}
    skip = {"rlnGroupName", "rlnImageName", "rlnMicrographName", "rlnTomoParticleName", "rlnTomoName", "rlnTomoFrame"}
    if star.particle_df is not None:
        # particle series: the particles.star columns are one value per particle already
        for c in star.particle_df.columns:
            v = pd.to_numeric(star.particle_df[c], errors="coerce").to_numpy(dtype=np.float64)
            if c in skip or not np.isfinite(v).all() or np.all(v == v[0]):
                continue
            cols["_" + c] = v[idx]
    for c in star.df.columns:
        if c in skip:
            continue
        v = pd.to_numeric(star.df[c], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(v).all() or np.all(v == v[0]):
            continue
        at_first = v[first_row]
        const = np.array_equal(v, at_first[pidx])
        cols["_" + c + ("" if const else " @ first tilt")] = at_first[idx]
    cols["tilts"] = counts[idx]
    maxdose = np.full(star.n_particles, -np.inf)
    np.maximum.at(maxdose, pidx, star.dose)
    cols["max dose (e/A^2)"] = maxdose[idx]
    out = pd.DataFrame(cols, index=pd.Index(ids, name="particle"))
    out["tomogram"] = np.asarray(star.tomogram_of_particle(), dtype=object)[idx]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (NaN when either is constant)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def star_order(values: np.ndarray, z_ids: list[str], star_ids: list[str], fill: int = -1) -> np.ndarray:
    """Values given per row of z, laid out per star particle (``fill`` where a particle has no z)."""
    pos = {p: i for i, p in enumerate(star_ids)}
    out = np.full(len(star_ids), fill, dtype=np.asarray(values).dtype)
    out[[pos[p] for p in z_ids]] = values
    return out


def star_index(z_rows: np.ndarray, z_ids: list[str], star_ids: list[str]) -> np.ndarray:
    """Particle indices in the star of the given rows of z."""
    pos = {p: i for i, p in enumerate(star_ids)}
    return np.array([pos[z_ids[r]] for r in z_rows], dtype=np.int64)
