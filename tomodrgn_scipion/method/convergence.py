"""Command ``convergence_vae``: has a ``train_vae`` run stopped changing?

Three signals are followed across the checkpoints of a run, each between consecutive *examined*
epochs (every ``--epoch-interval``-th checkpoint, counted back from ``--epoch``):

* **z shift**: the median over particles of ``||z_e - z_prev||``, divided by the RMS spread of
  ``z_e`` about its mean, so that it does not depend on the scale of the latent space.
* **volumes**: ``--n-vols`` anchor particles are chosen once, by k-means on z of the last examined
  epoch (each centre moved onto its nearest particle). At every examined epoch a volume is rendered
  at each anchor's own z of that epoch with that epoch's decoder, as tomoDRGN does, so a drift or
  rotation of the latent space as a whole does not count as a change of the volumes. Consecutive
  volumes of an anchor are compared by their real-space correlation inside the inscribed sphere and
  by the resolution at which their FSC (soft spherical mask) falls to 0.5.
* **loss**: the relative change ``|L_e - L_prev| / |L_prev|`` of the total training loss.

Verdict: a comparison (an examined epoch against the one before) is *stable* when the mean volume
correlation over anchors is >= ``--corr-threshold``, the z shift <= ``--shift-threshold`` and the loss
change <= ``--loss-threshold``; a value that cannot be computed (NaN) is not stable. The run has
*converged since epoch N* when at least the last two comparisons are stable; N is the earlier epoch
of the first comparison of the unbroken stable run that ends at the last examined epoch (from epoch
N on, every examined checkpoint agrees with the one before). Otherwise it has *not yet converged*,
and the line says which criteria fail at the last examined epoch.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cliutil import add_device_arg, resolve_device
from .errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .analysis import TrainingRun
    from .generate import VolumeOptions

log = logging.getLogger("tomodrgn_scipion")

MAX_EXAMINED = 20
FSC_THRESHOLD = 0.5
MIN_STABLE = 2


# ------------------------------------------------------------------------------------------- epochs
def checkpoint_epochs(run: "TrainingRun", last: int) -> list[int]:
    """Epochs up to ``last`` (inclusive) that have weights and z, ascending.

    Parameters
    ----------
    run : TrainingRun
    last : int
        Last epoch to consider (1-based: epochs done).

    Returns
    -------
    list of int
    """
    out = []
    for e in run.epochs:
        if e > last:
            continue
        if not (run.outdir / f"z.{e}.npy").is_file():
            log.warning("%s: weights.%d.pt has no z.%d.npy beside it; epoch %d is left out", run.outdir, e, e, e)
            continue
        out.append(e)
    return out


def default_interval(n_checkpoints: int, max_examined: int = MAX_EXAMINED) -> int:
    """The smallest checkpoint interval that examines at most ``max_examined`` of ``n_checkpoints``."""
    return max(1, math.ceil((n_checkpoints - 1) / max(1, max_examined - 1)))


def examined_epochs(checkpoints: list[int], interval: int) -> list[int]:
    """Every ``interval``-th checkpoint, counted back from the last one (which is always examined).

    Parameters
    ----------
    checkpoints : list of int
        Epochs with a checkpoint, ascending.
    interval : int
        >= 1.

    Returns
    -------
    list of int
        Ascending.
    """
    return checkpoints[::-1][::interval][::-1]


# ------------------------------------------------------------------------------------------ metrics
def z_shift(z_prev: np.ndarray, z_next: np.ndarray) -> float:
    """Median displacement of the particles in z, relative to the spread of ``z_next``.

    Parameters
    ----------
    z_prev, z_next : numpy.ndarray, shape (N, zdim)
        Latent means of the same particles at two epochs.

    Returns
    -------
    float
        ``median_i ||z_next_i - z_prev_i|| / sqrt(mean_i ||z_next_i - mean(z_next)||^2)``, dimensionless;
        0 when nothing moved, inf when the particles moved but ``z_next`` has no spread.
    """
    a = np.asarray(z_prev, dtype=np.float64)
    b = np.asarray(z_next, dtype=np.float64)
    moved = float(np.median(np.linalg.norm(b - a, axis=1)))
    spread = float(np.sqrt(((b - b.mean(0)) ** 2).sum(1).mean()))
    if moved == 0.0:
        return 0.0
    return moved / spread if spread > 0 else float("inf")


def soft_sphere(d: int, inner: float = 0.85, outer: float = 1.0) -> np.ndarray:
    """Spherical mask, 1 inside ``inner`` and 0 beyond ``outer`` (fractions of ``d / 2``), cosine edge.

    Returns
    -------
    numpy.ndarray, float64, shape (d, d, d)
    """
    x = np.arange(d) - d // 2
    zz, yy, xx = np.meshgrid(x, x, x, indexing="ij")
    r = np.sqrt(xx ** 2 + yy ** 2 + zz ** 2) / (d / 2)
    t = np.clip((r - inner) / (outer - inner), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def compare_volumes(a: np.ndarray, b: np.ndarray, pixel_size: float, mask: np.ndarray | None = None,
                    ) -> tuple[float, float]:
    """Agreement of two volumes of one anchor at two epochs.

    Parameters
    ----------
    a, b : numpy.ndarray, shape (D, D, D)
    pixel_size : float
        A per pixel.
    mask : numpy.ndarray, shape (D, D, D), optional
        Applied to both before the FSC; default :func:`soft_sphere`.

    Returns
    -------
    correlation : float
        Pearson correlation inside the inscribed sphere (NaN when a volume is constant there).
    resolution : float
        Where the FSC falls below 0.5, A (Nyquist, ``2 * pixel_size``, when it never does).
    """
    import torch

    from .fsc import fsc, masked_correlation, resolution_at

    d = a.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = masked_correlation(a, b)
    m = soft_sphere(d) if mask is None else mask
    curve = fsc(torch.from_numpy(a.astype(np.float64) * m), torch.from_numpy(b.astype(np.float64) * m)).numpy()
    return corr, resolution_at(curve, d, pixel_size, FSC_THRESHOLD)[1]


def relative_change(prev: float, new: float) -> float:
    """``|new - prev| / |prev|`` (NaN when either is unknown; inf when ``prev`` is 0 and ``new`` is not)."""
    if not (np.isfinite(prev) and np.isfinite(new)):
        return float("nan")
    if new == prev:
        return 0.0
    return abs(new - prev) / abs(prev) if prev != 0 else float("inf")


# ------------------------------------------------------------------------------------------ verdict
@dataclass(frozen=True)
class Thresholds:
    """What counts as stable between two examined epochs.

    Attributes
    ----------
    corr : float
        Least mean volume correlation (Pearson r).
    shift : float
        Largest z shift (dimensionless, see :func:`z_shift`).
    loss : float
        Largest relative change of the total loss.
    """

    corr: float = 0.98
    shift: float = 0.1
    loss: float = 0.01

    def failures(self, corr: float, shift: float, loss_change: float) -> list[str]:
        """The criteria one comparison misses, as short phrases (empty when it is stable)."""
        out = []
        if not corr >= self.corr:
            out.append(f"volume correlation {corr:.4f} < {self.corr:g}" if np.isfinite(corr)
                       else "volume correlation undefined (a volume is constant)")
        if not shift <= self.shift:
            out.append(f"z shift {shift:.4f} > {self.shift:g}" if not np.isnan(shift) else "z shift undefined")
        if not loss_change <= self.loss:
            out.append(f"loss change {loss_change:.4f} > {self.loss:g}" if not np.isnan(loss_change)
                       else "loss unknown (no loss.csv or run.log line for the epoch)")
        return out


def verdict(epochs: np.ndarray, corr: np.ndarray, shift: np.ndarray, loss_change: np.ndarray,
            thresholds: Thresholds) -> tuple[int | None, np.ndarray, str]:
    """Apply the convergence rule of this module to the metrics of the examined epochs.

    Parameters
    ----------
    epochs : numpy.ndarray, int, shape (M,)
        Examined epochs, ascending, M >= 2.
    corr, shift, loss_change : numpy.ndarray, shape (M,)
        Mean volume correlation, z shift and relative loss change of epoch i against epoch i - 1
        (entry 0 unused).
    thresholds : Thresholds

    Returns
    -------
    since : int or None
        The epoch the run has been converged since; None when it has not converged.
    stable : numpy.ndarray, bool, shape (M,)
        Whether each comparison is stable (entry 0 False: nothing to compare with).
    line : str
        ``converged since epoch N (...)`` or ``not yet converged: <reason>``.
    """
    m = len(epochs)
    stable = np.zeros(m, dtype=bool)
    for i in range(1, m):
        stable[i] = not thresholds.failures(corr[i], shift[i], loss_change[i])
    run = 0
    while run < m - 1 and stable[m - 1 - run]:
        run += 1
    last, prev = int(epochs[-1]), int(epochs[-2])
    if run >= MIN_STABLE:
        since = int(epochs[m - 1 - run])
        return since, stable, (f"converged since epoch {since} ({run} consecutive stable comparisons up to epoch {last}: "
                               f"volume correlation >= {thresholds.corr:g}, z shift <= {thresholds.shift:g}, "
                               f"loss change <= {thresholds.loss:g})")
    if run == 0:
        why = "; ".join(thresholds.failures(corr[-1], shift[-1], loss_change[-1]))
        return None, stable, f"not yet converged: epoch {last} vs {prev}: {why}"
    if m - 1 < MIN_STABLE:
        return None, stable, (f"not yet converged: epoch {last} vs {prev} is stable, but {MIN_STABLE} consecutive stable "
                              f"comparisons are needed and only {m} epochs were examined (lower --epoch-interval or "
                              f"train longer)")
    why = "; ".join(thresholds.failures(corr[-2], shift[-2], loss_change[-2]))
    return None, stable, (f"not yet converged: only the last comparison (epoch {last} vs {prev}) is stable; epoch {prev} vs "
                          f"{int(epochs[-3])}: {why}")


# ----------------------------------------------------------------------------------------- analysis
@dataclass
class ConvergenceResult:
    """Convergence metrics of one training run.

    Attributes
    ----------
    epochs : numpy.ndarray, int64, shape (M,)
        Examined epochs, ascending.
    anchor_rows : numpy.ndarray, int64, shape (K,)
        Rows of z (``particle_ids.txt`` order) of the anchor particles.
    anchor_ids : list of str
        Their ``_rlnGroupName``.
    anchor_z : numpy.ndarray, float32, shape (K, zdim)
        Their z at the last examined epoch.
    z_shift : numpy.ndarray, shape (M,)
        See :func:`z_shift`; entry i compares epochs i - 1 and i (entry 0 NaN).
    corr : numpy.ndarray, shape (M, K)
        Volume correlation per anchor against the previous examined epoch (row 0 NaN).
    fsc05 : numpy.ndarray, shape (M, K)
        Resolution at FSC 0.5 per anchor against the previous examined epoch, A (row 0 NaN).
    loss_epoch : numpy.ndarray, int64, shape (L,)
        Every epoch with a loss, up to the last examined one.
    loss_total, loss_recon : numpy.ndarray, shape (L,)
        Total and reconstruction loss of those epochs (dimensionless, per-image mean).
    loss_at : numpy.ndarray, shape (M,)
        Total loss at the examined epochs (NaN where unknown).
    loss_change : numpy.ndarray, shape (M,)
        Relative change of the total loss against the previous examined epoch (entry 0 NaN).
    pixel_size : float
        A per pixel of the volumes.
    volumes : list of numpy.ndarray, float32, shape (D, D, D)
        Anchor volumes of the last examined epoch.
    thresholds : Thresholds
    stable : numpy.ndarray, bool, shape (M,)
    since : int or None
        Epoch converged since; None when not converged.
    line : str
        The verdict line.
    """

    epochs: np.ndarray
    anchor_rows: np.ndarray
    anchor_ids: list[str]
    anchor_z: np.ndarray
    z_shift: np.ndarray
    corr: np.ndarray
    fsc05: np.ndarray
    loss_epoch: np.ndarray
    loss_total: np.ndarray
    loss_recon: np.ndarray
    loss_at: np.ndarray
    loss_change: np.ndarray
    pixel_size: float
    volumes: list[np.ndarray]
    thresholds: Thresholds
    stable: np.ndarray
    since: int | None
    line: str

    @property
    def corr_mean(self) -> np.ndarray:
        """Mean volume correlation over anchors, shape (M,)."""
        return self.corr.mean(1)

    @property
    def corr_min(self) -> np.ndarray:
        """Volume correlation of the worst anchor, shape (M,)."""
        return self.corr.min(1)

    @property
    def fsc05_mean(self) -> np.ndarray:
        """Mean resolution at FSC 0.5 over anchors, A, shape (M,)."""
        return self.fsc05.mean(1)


def choose_anchors(z: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows of the particles nearest the k-means centres of ``z`` (shape (N, zdim)), without repeats.

    Returns
    -------
    numpy.ndarray, int64, shape (K,)
        K <= n: two centres may share a nearest particle.
    """
    from .analysis import kmeans

    if not 1 <= n <= len(z):
        raise InputError(f"--n-vols {n}: must be between 1 and the number of particles ({len(z)})")
    rows = kmeans(z, n, seed).centers_row
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


def assess(run: "TrainingRun", epochs: list[int], n_vols: int = 5, seed: int = 0, device: str = "cpu",
           options: "VolumeOptions | None" = None, thresholds: Thresholds = Thresholds()) -> ConvergenceResult:
    """Compute the convergence metrics of ``run`` at ``epochs`` and the verdict.

    Parameters
    ----------
    run : TrainingRun
        A ``train_vae`` run (zdim > 0).
    epochs : list of int
        Epochs to examine, ascending, at least two, each with ``weights.E.pt`` and ``z.E.npy``.
    n_vols : int
        Number of anchor particles (k of the k-means).
    seed : int
        Seed of the k-means.
    device : str
        Torch device to render volumes on.
    options : VolumeOptions, optional
        Rendering options (``downsample``); default the training box.
    thresholds : Thresholds

    Returns
    -------
    ConvergenceResult
    """
    from .analysis import read_loss
    from .generate import VolumeOptions, render
    from .progress import Progress

    if len(epochs) < 2:
        raise InputError(f"{run.outdir}: at least two checkpoints are needed to compare, got {len(epochs)}")
    options = options or VolumeOptions()
    options.out_box(run.box)
    m = len(epochs)
    z_last = run.z(epochs[-1])
    anchors = choose_anchors(z_last, n_vols, seed)
    k = len(anchors)
    log.info("%s: examining epochs %s with %d anchor particles (rows %s of z)", run.outdir,
             ", ".join(str(e) for e in epochs), k, ", ".join(str(r) for r in anchors))

    shift = np.full(m, np.nan)
    corr = np.full((m, k), np.nan)
    res = np.full((m, k), np.nan)
    prog = Progress(m, "examined", "epochs", log)
    prev_z: np.ndarray | None = None
    prev_vols: list[np.ndarray] = []
    pixel, mask = run.pixel_size, None
    for i, e in enumerate(epochs):
        z = z_last if e == epochs[-1] else run.z(e)
        decoder = run.model(e, device).decoder
        vols = []
        for j, row in enumerate(anchors):
            vol, pixel = render(decoder, z[row], run.box, run.pixel_size, options)
            if mask is None:
                mask = soft_sphere(vol.shape[-1])
            if prev_vols:
                corr[i, j], res[i, j] = compare_volumes(prev_vols[j], vol, pixel, mask)
            vols.append(vol)
        if prev_z is not None:
            shift[i] = z_shift(prev_z, z)
        prev_z, prev_vols = z, vols
        prog.update(1)

    loss = read_loss(run.outdir)
    keep = loss["epoch"] <= epochs[-1]
    by_epoch = dict(zip(loss["epoch"].tolist(), loss["total"].tolist()))
    loss_at = np.array([by_epoch.get(e, np.nan) for e in epochs], dtype=np.float64)
    change = np.full(m, np.nan)
    for i in range(1, m):
        change[i] = relative_change(loss_at[i - 1], loss_at[i])

    with np.errstate(invalid="ignore"):
        corr_mean = corr.mean(1)
    since, stable, line = verdict(np.asarray(epochs), corr_mean, shift, change, thresholds)
    return ConvergenceResult(
        epochs=np.asarray(epochs, dtype=np.int64), anchor_rows=anchors.astype(np.int64),
        anchor_ids=[run.particle_ids[r] for r in anchors], anchor_z=z_last[anchors], z_shift=shift, corr=corr,
        fsc05=res, loss_epoch=loss["epoch"][keep], loss_total=loss["total"][keep], loss_recon=loss["recon"][keep],
        loss_at=loss_at, loss_change=change, pixel_size=pixel, volumes=prev_vols, thresholds=thresholds,
        stable=stable, since=since, line=line)


# ------------------------------------------------------------------------------------------ outputs
PANELS = ("training loss", "loss change", "latent shift", "volume correlation", "volume FSC")


def plot_convergence(r: ConvergenceResult) -> "Figure":
    """Five panels, titled as :data:`PANELS`: loss at every epoch, then the four convergence metrics at
    the examined epochs (one point per comparison), thresholds dashed, the converged epoch dotted.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import MaxNLocator

    from .plots import OKABE_ITO, lines, new_figure

    fig, axes = new_figure(len(PANELS), ncols=2, panel_size=(5.0, 3.4))
    x = r.epochs[1:]
    t = r.thresholds
    ax = axes[0]
    lines(ax, r.loss_epoch, {"total": r.loss_total, "reconstruction": r.loss_recon}, "epoch",
          "loss (per-image mean, dimensionless)", markers=len(r.loss_epoch) <= 50)

    ax = axes[1]
    lines(ax, x, {"total loss": r.loss_change[1:]}, "epoch", "relative change of total loss")
    ax.axhline(t.loss, color="#555555", ls="--", lw=1, label=f"threshold {t.loss:g}")
    finite = r.loss_change[1:][np.isfinite(r.loss_change[1:])]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")

    ax = axes[2]
    lines(ax, x, {"median particle": r.z_shift[1:]}, "epoch", "z shift / z spread (dimensionless)")
    ax.axhline(t.shift, color="#555555", ls="--", lw=1, label=f"threshold {t.shift:g}")

    ax = axes[3]
    with np.errstate(invalid="ignore"):
        lines(ax, x, {"mean over anchors": r.corr_mean[1:], "worst anchor": r.corr_min[1:]}, "epoch",
              "real-space correlation (Pearson r)")
    ax.axhline(t.corr, color="#555555", ls="--", lw=1, label=f"threshold {t.corr:g}")

    ax = axes[4]
    with np.errstate(invalid="ignore"):
        lines(ax, x, {"mean over anchors": r.fsc05_mean[1:]}, "epoch", "resolution at FSC 0.5 (Å)")
    ax.axhline(2 * r.pixel_size, color=OKABE_ITO[5], ls=":", lw=1, label=f"Nyquist {2 * r.pixel_size:.3g} Å")

    for ax, title in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        if r.since is not None:
            ax.axvline(r.since, color="#999999", ls=":", lw=1, label=f"converged since epoch {r.since}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle(r.line if len(r.line) <= 90 else r.line[:87] + "...", fontsize=9)
    return fig


def _fmt(v: float) -> str:
    return "nan" if np.isnan(v) else f"{v:.6g}"


def write_outputs(r: ConvergenceResult, outdir: Path, run: "TrainingRun") -> dict[str, Path]:
    """Write the tables, plot, anchors, volumes and verdict of ``r`` into ``outdir``.

    Returns
    -------
    dict
        What was written: ``csv``, ``volumes_csv``, ``plot``, ``anchors``, ``vols``, ``verdict``.
    """
    from .outputs import write_text
    from .plots import save_figure
    from .stacks import write_mrc

    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": outdir / "convergence.csv", "volumes_csv": outdir / "convergence_volumes.csv",
             "plot": outdir / "convergence.png", "anchors": outdir / "anchors.txt",
             "vols": outdir / f"vols.{int(r.epochs[-1])}", "verdict": outdir / "convergence.txt"}
    rows = ["epoch,z_shift,vol_corr,vol_corr_min,fsc05_resolution_A,loss_total,loss_change,stable"]
    with np.errstate(invalid="ignore"):
        for i, e in enumerate(r.epochs):
            rows.append(",".join([str(int(e))] + [_fmt(v) for v in (r.z_shift[i], r.corr_mean[i], r.corr_min[i],
                                                                   r.fsc05_mean[i], r.loss_at[i], r.loss_change[i])]
                                 + [str(int(r.stable[i]))]))
    write_text(paths["csv"], "\n".join(rows) + "\n")
    rows = ["epoch,anchor,row,particle,vol_corr,fsc05_resolution_A"]
    for i, e in enumerate(r.epochs[1:], start=1):
        for j, (row, pid) in enumerate(zip(r.anchor_rows, r.anchor_ids)):
            rows.append(f"{int(e)},{j},{int(row)},{pid},{_fmt(r.corr[i, j])},{_fmt(r.fsc05[i, j])}")
    write_text(paths["volumes_csv"], "\n".join(rows) + "\n")
    zcols = " ".join(f"z{d + 1}" for d in range(r.anchor_z.shape[1]))
    rows = [f"# anchor particles: row of z (particle_ids.txt order), particle, z at epoch {int(r.epochs[-1])}",
            f"# row particle {zcols}"]
    rows += [f"{int(row)} {pid} " + " ".join(f"{v:.6g}" for v in z)
             for row, pid, z in zip(r.anchor_rows, r.anchor_ids, r.anchor_z)]
    write_text(paths["anchors"], "\n".join(rows) + "\n")
    for j, vol in enumerate(r.volumes):
        write_mrc(paths["vols"] / f"vol_{j:03d}.mrc", vol, r.pixel_size)
    fig = plot_convergence(r)
    save_figure(fig, paths["plot"])
    t = r.thresholds
    text = [r.line, "",
            f"run: {run.outdir}",
            f"examined epochs: {' '.join(str(int(e)) for e in r.epochs)}",
            f"anchor particles: {len(r.anchor_rows)} (rows {' '.join(str(int(x)) for x in r.anchor_rows)} of z)",
            f"thresholds: volume correlation >= {t.corr:g}; z shift <= {t.shift:g}; relative loss change <= {t.loss:g}",
            f"rule: a comparison of an examined epoch with the previous one is stable when it meets all three "
            f"thresholds; converged since epoch N when at least the last {MIN_STABLE} comparisons are stable, N being "
            f"the earlier epoch of the first comparison of that unbroken stable run"]
    write_text(paths["verdict"], "\n".join(text) + "\n")
    return paths


# ---------------------------------------------------------------------------------------------- cli
def add_convergence_vae(p: argparse.ArgumentParser) -> None:
    """Arguments of ``convergence_vae``."""
    p.add_argument("workdir", type=Path, metavar="OUTDIR", help="output folder of train_vae")
    p.add_argument("--epoch", type=int, default=-1,
                   help="last epoch to consider (1-based, a checkpoint weights.E.pt; default: the latest checkpoint)")
    p.add_argument("--epoch-interval", type=int,
                   help="examine every N-th checkpoint, counted back from --epoch (default: the smallest interval that "
                        f"examines at most {MAX_EXAMINED} checkpoints)")
    p.add_argument("--n-vols", type=int, default=5,
                   help="anchor particles (k-means of z at the last examined epoch) at which volumes are compared (default: 5)")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the k-means choosing the anchors (default: 0)")
    p.add_argument("--downsample", type=int, help="render the volumes at this (even) box instead of the training box")
    add_device_arg(p)
    p.add_argument("-o", "--outdir", type=Path, help="output folder (default: OUTDIR/convergence.E, E the last examined epoch)")
    g = p.add_argument_group("verdict")
    g.add_argument("--corr-threshold", type=float, default=0.98,
                   help="least mean correlation of the anchor volumes between examined epochs (default: 0.98)")
    g.add_argument("--shift-threshold", type=float, default=0.1,
                   help="largest median z shift between examined epochs, as a fraction of the RMS spread of z (default: 0.1)")
    g.add_argument("--loss-threshold", type=float, default=0.01,
                   help="largest relative change of the total loss between examined epochs (default: 0.01)")


def evaluate(a: argparse.Namespace) -> tuple[ConvergenceResult, dict[str, Path], int]:
    """Everything ``convergence_vae`` computes and writes, for arguments parsed by :func:`add_convergence_vae`.

    Returns
    -------
    result : ConvergenceResult
    paths : dict
        What was written (:func:`write_outputs`), plus ``outdir``.
    interval : int
        Checkpoints between examined epochs.
    """
    from .analysis import TrainingRun
    from .generate import VolumeOptions

    if not -1 <= a.corr_threshold <= 1:
        raise InputError(f"--corr-threshold {a.corr_threshold}: must be a correlation between -1 and 1")
    if not (a.shift_threshold >= 0 and a.loss_threshold >= 0):
        raise InputError("--shift-threshold and --loss-threshold must be >= 0")
    if a.epoch_interval is not None and a.epoch_interval < 1:
        raise InputError(f"--epoch-interval {a.epoch_interval}: must be >= 1")
    if a.n_vols < 1:
        raise InputError(f"--n-vols {a.n_vols}: must be >= 1")
    device = resolve_device(a.device)
    run = TrainingRun.open(a.workdir)
    if run.zdim == 0:
        raise InputError(f"{a.workdir}: a train_nn run (zdim 0) has no latent space; convergence_vae needs a train_vae run")
    if a.epoch != -1 and a.epoch < 1:
        raise InputError(f"--epoch {a.epoch}: epochs count from 1 (-1 for the latest checkpoint)")
    if a.epoch == -1:
        # the latest checkpoint: a run still training (or killed) has logged epochs beyond it
        last = run.latest_epoch
        checkpoints = checkpoint_epochs(run, last)
    else:
        last = run.resolve_epoch(a.epoch)
        checkpoints = checkpoint_epochs(run, last)
        if checkpoints and checkpoints[-1] != last:
            raise InputError(f"{a.workdir}: epoch {last} has weights but no z.{last}.npy")
    if len(checkpoints) < 2:
        have = ", ".join(str(e) for e in checkpoints) or "none"
        raise InputError(f"{a.workdir}: fewer than 2 checkpoints up to epoch {last} to compare (epochs with weights and z: "
                         f"{have}); train with --checkpoint 1 or for more epochs")
    if a.n_vols > len(run.particle_ids):
        raise InputError(f"--n-vols {a.n_vols}: more than the {len(run.particle_ids)} particles of the run")
    interval = a.epoch_interval or default_interval(len(checkpoints))
    epochs = examined_epochs(checkpoints, interval)
    if len(epochs) < 2:
        raise InputError(f"--epoch-interval {interval}: leaves only epoch {epochs[0]} of the {len(checkpoints)} checkpoints "
                         f"up to epoch {last}; use a smaller interval")
    options = VolumeOptions(downsample=a.downsample)
    options.out_box(run.box)
    thresholds = Thresholds(corr=a.corr_threshold, shift=a.shift_threshold, loss=a.loss_threshold)
    outdir = a.outdir or run.outdir / f"convergence.{epochs[-1]}"
    r = assess(run, epochs, a.n_vols, a.random_seed, device, options, thresholds)
    paths = write_outputs(r, Path(outdir), run)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return r, {**paths, "outdir": Path(outdir)}, interval


def run_convergence_vae(a: argparse.Namespace) -> None:
    """Run ``convergence_vae``."""
    r, paths, interval = evaluate(a)
    epochs, outdir = [int(e) for e in r.epochs], paths["outdir"]
    print(f"examined {len(epochs)} epochs ({epochs[0]}..{epochs[-1]}, every {interval} checkpoint(s)) at "
          f"{len(r.anchor_rows)} anchor particles")
    last_row = len(epochs) - 1
    print(f"epoch {epochs[-1]} vs {epochs[-2]}: volume correlation {r.corr_mean[last_row]:.4f}, "
          f"FSC 0.5 at {r.fsc05_mean[last_row]:.1f} A, z shift {r.z_shift[last_row]:.4f}, "
          f"loss change {r.loss_change[last_row]:.4f}")
    print(f"results: {outdir}")
    print(r.line)
