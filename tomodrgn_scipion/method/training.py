"""Training of the VAE (``train_vae``) and of the homogeneous decoder (``train_nn``).

Loss of a batch of B particles with tilt images i and half-plane frequencies k:

``recon = sum_ik w_ik |C_ik D(k A_i, z) - Y_ik|^2 / sum_ik n_k``

where ``C`` is the CTF, ``Y`` the normalised image transform, ``n_k`` the number of full-plane
frequencies the half-plane frequency stands for (2, and 1 for k = 0) and ``w_ik = n_k`` times the
optional dose weight, tilt weight and dose mask. With every weight 1 this is the mean squared error
over the full Fourier plane, which equals tomoDRGN's mean squared Hartley-space error. The KL term
is added as ``beta * mean_B KL / (sum_ik n_k / B)``: per particle, relative to its number of
frequencies, as upstream scales it.

Randomness is drawn from generators seeded by ``(seed, epoch)``, so a run resumed from the
checkpoint of epoch E continues exactly as the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .distributed import Context, all_sum, gather_rows, share
from .errors import InputError, TrainingError
from .models import ModelConfig, TomoModel, render_volume
from .outputs import atomic_write, write_text
from .particles import Batch, ParticleTiltData
from .progress import Progress

log = logging.getLogger(__name__)
Tensor = torch.Tensor

CHECKPOINT_RE = re.compile(r"^weights\.(\d+)\.pt$")
#: Entries of every checkpoint :func:`train` writes.
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "model_config", "norm")
#: The lock file of a training folder (held with ``flock`` while a run writes there; the kernel drops it
#: when the process dies, so a killed run never blocks the next).
LOCK_NAME = ".train.lock"


# ------------------------------------------------------------------------------------------ beta
def beta_schedule(spec: str | float | None, zdim: int) -> Callable[[float], float]:
    """KL weight as a function of the (fractional) epoch, counted from 0.

    Parameters
    ----------
    spec : str, float or None
        ``None``: ``1 / zdim``. A number: constant. ``linear:START:END:EPOCHS``: from START to END over
        the first EPOCHS epochs, then END. ``cyclic:MAX:PERIOD``: cyclical annealing, rising from 0 to
        MAX over the first half of every PERIOD epochs and held at MAX for the second half.
    zdim : int
    """
    if spec is None:
        return lambda e: 1.0 / zdim
    text = str(spec)
    try:
        if text.startswith("linear:"):
            start, end, epochs = (float(x) for x in text.split(":")[1:])
            if epochs <= 0:
                raise ValueError
            return lambda e: start + (end - start) * min(e / epochs, 1.0)
        if text.startswith("cyclic:"):
            peak, period = (float(x) for x in text.split(":")[1:])
            if period <= 0:
                raise ValueError
            return lambda e: peak * min(2.0 * ((e % period) / period), 1.0)
        value = float(text)
    except ValueError:
        raise InputError(f"--beta {text}: expected a number, linear:START:END:EPOCHS or cyclic:MAX:PERIOD") from None
    if value < 0 or not math.isfinite(value):
        raise InputError(f"--beta {text}: must be a finite number >= 0")
    return lambda e: value


def learning_rate(settings: "TrainSettings", epoch: float) -> float:
    """Learning rate at a (fractional) epoch: ``lr``, or with ``lr_schedule = "cosine"`` a half cosine
    from ``lr`` down to ``lr / 100`` over the run (a resumed run follows the same curve)."""
    if settings.lr_schedule == "constant":
        return settings.lr
    t = min(epoch / settings.num_epochs, 1.0)
    return settings.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


# -------------------------------------------------------------------------------------- settings
@dataclass
class TrainSettings:
    """Optimisation settings (the rest of a run's configuration is data and architecture)."""

    num_epochs: int = 20
    batch_size: int = 1
    lr: float = 2e-4
    wd: float = 0.0
    beta: str | None = None
    seed: int = 0
    recon_dose_weight: bool = False
    recon_tilt_weight: bool = False
    l_dose_mask: bool = False
    checkpoint: int = 1
    amp: bool = True
    num_workers: int = 0
    tilt_sampling: str = "lowest-dose"
    lr_schedule: str = "constant"
    max_steps: int = 0

    def check(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        if self.num_epochs < 1:
            raise InputError(f"-n/--num-epochs {self.num_epochs}: must be >= 1")
        if self.batch_size < 1:
            raise InputError(f"-b/--batch-size {self.batch_size}: must be >= 1")
        if not self.lr > 0:
            raise InputError(f"--lr {self.lr}: must be > 0")
        if self.wd < 0:
            raise InputError(f"--wd {self.wd}: must be >= 0")
        if self.tilt_sampling not in ("random", "lowest-dose"):
            raise InputError(f"--tilt-sampling {self.tilt_sampling}: expected random or lowest-dose")
        if self.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"--lr-schedule {self.lr_schedule}: expected constant or cosine")
        if self.checkpoint < 0:
            raise InputError(f"--checkpoint {self.checkpoint}: must be >= 0")
        if self.max_steps < 0:
            raise InputError(f"--max-steps {self.max_steps}: must be >= 0")


# ------------------------------------------------------------------------------------ the model
def amp_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Autocast on CUDA (bfloat16 where supported, else float16); nothing on the CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def weighted_error(model: TomoModel, data: ParticleTiltData, b: Batch, z: Tensor | None) -> tuple[Tensor, Tensor]:
    """``sum_ik w_ik |C_ik D(k A_i, z) - Y_ik|^2`` of a batch and its ``sum_ik n_k`` (see the module docstring).

    Every half-plane frequency of every image is decoded (points outside the dose mask have weight
    0), so the slices stay a regular (N, H) array.
    """
    coords = data.half_coords.to(b.rot.device) @ b.rot  # (N, H, 3): k A for each image
    pred = model.decoder(coords, None if z is None else z[b.image_particle]).float()
    err = (pred * b.ctf[..., None] - torch.view_as_real(b.values)).square().sum(-1)
    return (b.weight * err).sum(), _total_points(data, b)


def reconstruction_loss(model: TomoModel, data: ParticleTiltData, b: Batch, z: Tensor | None) -> tuple[Tensor, Tensor]:
    """``recon`` of the module docstring and the number of full-plane points per particle."""
    err, total_points = weighted_error(model, data, b, z)
    return err / total_points, total_points / len(b.particles)


class StepLoss(nn.Module):
    """The loss of one rank's share of a batch, as a module (what DistributedDataParallel wraps).

    ``forward`` returns ``world x (sum_err + beta x sum_KL) / total_points``, where ``total_points`` is
    the number of full-plane points of the whole batch over all ranks: the gradients DDP averages over
    the ranks are then those of the loss of the whole batch on one process.
    """

    def __init__(self, model: TomoModel, data: ParticleTiltData, world: int):
        super().__init__()
        self.model = model
        self.data = data
        self.world = world

    def forward(self, b: Batch, eps: Tensor | None, beta: float, total_points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the loss to differentiate, the weighted error sum and the KL sum of this share."""
        model = self.model
        if model.encoder is not None:
            mu, logvar = model.encoder(b.enc_input)
            z = model.reparameterize(mu.float(), logvar.float(), eps)
            kl = kl_divergence(mu.float(), logvar.float()).sum()
        else:
            z, kl = None, torch.zeros((), device=b.values.device)
        err, _ = weighted_error(model, self.data, b, z)
        # on one rank, the operations (and so the rounding) of reconstruction_loss + beta * mean KL / points
        # per particle; kl / G / (total / G) = kl / total for the whole batch of G particles
        g = b.group_size
        return self.world * (err / total_points + beta * (kl / g) / (total_points / g)), err, kl


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z) || N(0, I)) per particle, shape (B,)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)


@torch.no_grad()
def infer_z(model: TomoModel, data: ParticleTiltData, batch_size: int = 64, ctx: Context | None = None,
            num_workers: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and log-variance of q(z) of every particle, deterministically (the ``ntilts``
    lowest-dose tilts of each).

    With several ranks each encodes a contiguous share of the particles and rank 0 gathers them in
    particle order (the other ranks get None). ``num_workers`` threads read streamed images ahead.

    Returns
    -------
    mu, logvar : numpy.ndarray, float32, shape (P, zdim)
    """
    ctx = ctx or Context(device=data.device)
    was_training = model.training
    model.eval()
    p = data.n_particles
    lo, hi = share(p, ctx.rank, ctx.world)
    order = np.arange(lo, hi)
    out = [np.zeros((0, model.cfg.zdim), np.float32)] * 2
    parts: list[list[Tensor]] = [[], []]
    prog = Progress(len(order), "encoded", "particles", log, every=30.0)
    for b in data.batches(order, batch_size, num_workers, encoder_only=True):
        for k, t in enumerate(model.encoder(b.enc_input)):
            parts[k].append(t.float().cpu())
        prog.update(len(b.particles))
    model.train(was_training)
    out = [torch.cat(t).numpy() if t else o for t, o in zip(parts, out)]
    mu, logvar = (gather_rows(ctx, o, p) for o in out)
    return None if mu is None else (mu, logvar)


# ------------------------------------------------------------------------------------ checkpoints
def save_torch(obj: dict, path: Path) -> None:
    """``torch.save`` atomically (an OS error is one line; the file it would replace is left as it was)."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def save_npy(array: np.ndarray, path: Path) -> None:
    """``numpy.save`` atomically, to exactly ``path`` (``numpy.save`` given a name would append ``.npy``).

    Raises
    ------
    InputError
        If ``array`` holds NaN or infinity, or the file cannot be written.
    """
    from .stacks import check_finite

    check_finite(path, array)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def latest_checkpoint(outdir: Path) -> Path:
    """The ``weights.E.pt`` of ``outdir`` with the largest E."""
    found = [(int(m.group(1)), p) for p in outdir.glob("weights.*.pt") if (m := CHECKPOINT_RE.match(p.name))]
    if not found:
        raise InputError(f"--load latest: no checkpoint weights.EPOCH.pt in {outdir}")
    return max(found)[1]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by :func:`train`; one clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a tomodrgn-scipion checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise InputError(f"{path}: not a tomodrgn-scipion checkpoint (no model configuration)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["model_config"], dict):
        raise InputError(f"{path}: not a complete tomodrgn-scipion checkpoint (missing {', '.join(missing) or 'a model configuration'})")
    return ckpt


def check_same_architecture(path: Path, saved: dict, wanted: ModelConfig) -> None:
    """Raise one line naming the first differences between a checkpoint's and this run's model."""
    want = wanted.to_dict()
    diffs = [f"{k.replace('_', '-')} {saved.get(k)!r} vs {want[k]!r}" for k in want if saved.get(k) != want[k]]
    if diffs:
        raise InputError(f"{path}: checkpoint has a different architecture than this run ({'; '.join(diffs[:4])}); "
                         f"resume with the same model options")


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", path: Path | None = None) -> TomoModel:
    """Rebuild a model and load its weights (weights that do not fit the configuration are an :class:`InputError`)."""
    try:
        model = ModelConfig.from_dict(ckpt["model_config"]).build().to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path or 'checkpoint'}: weights do not fit the model configuration they were saved with ({first[:160]})") from None
    model.eval()
    return model


# -------------------------------------------------------------------------------------- training
@dataclass
class EpochStats:
    epoch: int
    recon: float
    kl: float
    beta: float
    total: float
    seconds: float
    images_per_s: float


def _read_history(path: Path, up_to: int) -> list[EpochStats]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for i, r in enumerate(csv.DictReader(fh), 2):
            try:
                rows.append(EpochStats(**{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()}))
            except (TypeError, ValueError):
                raise InputError(f"{path}: line {i}: not a loss.csv row of train_vae ({', '.join(f'{k}={v}' for k, v in r.items())[:120]}); "
                                 f"resume with --load PATH after moving it away") from None
    return [r for r in rows if r.epoch <= up_to]


def _write_history(path: Path, history: list[EpochStats]) -> None:
    names = list(asdict(history[0]))
    lines = [",".join(names)] + [",".join(repr(float(v)) if isinstance(v, float) else str(v) for v in asdict(h).values()) for h in history]
    write_text(path, "\n".join(lines) + "\n")


def write_config(path: Path, model_cfg: ModelConfig, settings: TrainSettings, data_cfg: dict, extra: dict) -> None:
    """``config.json``: everything needed to rebuild the model and its data preprocessing."""
    cfg = {**extra, "model": model_cfg.to_dict(), "data": data_cfg, "training": asdict(settings)}
    write_text(path, json.dumps(cfg, indent=2) + "\n")


def read_config(path: str | os.PathLike) -> dict:
    """A ``config.json`` written by :func:`write_config`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON config ({exc})") from None
    if not isinstance(cfg, dict) or not {"model", "data"} <= set(cfg):
        raise InputError(f"{path}: not a tomodrgn-scipion config (needs 'model' and 'data')")
    return cfg


def train(model_cfg: ModelConfig, settings: TrainSettings, data: ParticleTiltData, outdir: str | os.PathLike,
          data_cfg: dict, extra: dict | None = None, load: str | None = None,
          ctx: Context | None = None) -> list[EpochStats]:
    """Train a model and write its outputs into ``outdir``.

    Writes ``config.json``, ``run.log`` (appended), ``loss.csv``, ``particle_ids.txt``; every
    ``checkpoint`` epochs ``weights.E.pt`` and, for a VAE, ``z.E.npy`` and ``z_logvar.E.npy``, for a
    homogeneous model ``reconstruct.E.mrc``; at the end ``weights.pt`` and ``z.npy``/``z_logvar.npy``
    or ``reconstruct.mrc``.

    Parameters
    ----------
    model_cfg : ModelConfig
    settings : TrainSettings
    data : ParticleTiltData
    outdir : path-like
    data_cfg : dict
        Data preprocessing for ``config.json`` (star, datadir, inversion, window, norm...).
    extra : dict
        More entries for ``config.json`` (command line, version).
    load : str, optional
        ``latest`` or a checkpoint path to resume from.
    ctx : Context, optional
        This process's rank in a data-parallel run (see :mod:`.distributed`); rank 0 alone writes
        files and logs. ``settings.batch_size`` is the batch of all ranks together, so the result
        does not depend on the number of ranks.

    Returns
    -------
    list of EpochStats
        One per epoch, including those of a resumed run.
    """
    settings.check()
    outdir = Path(outdir)
    ctx = ctx or Context(device=data.device)
    if not ctx.main:
        return _train(model_cfg, settings, data, outdir, data_cfg, extra or {}, load, ctx)
    with training_lock(outdir):
        return _train_locked(model_cfg, settings, data, outdir, data_cfg, extra, load, ctx)


@contextlib.contextmanager
def training_lock(outdir: Path):
    """Create ``outdir`` and hold its lock file; remove what killed runs left there under temporary names.

    Raises
    ------
    InputError
        If ``outdir`` is a file or cannot be created, or another run holds the lock.
    """
    import fcntl

    from .outputs import os_error_line, remove_stale_temporaries

    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: -o must be a folder, but this is a file")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(outdir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(os_error_line(outdir, exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise InputError(f"{outdir}: another training run (pid {holder}) is writing into this folder; "
                             f"wait for it to end or choose another -o") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for p in remove_stale_temporaries(outdir):
            log.info("removed %s, left by a run that was stopped", p.name)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _train_locked(model_cfg: ModelConfig, settings: TrainSettings, data: ParticleTiltData, outdir: Path,
                  data_cfg: dict, extra: dict | None, load: str | None, ctx: Context) -> list[EpochStats]:
    from .outputs import check_outputs

    vae = model_cfg.zdim > 0
    epochs = range(1, settings.num_epochs + 1)
    check_outputs([outdir / n for n in ("config.json", "particle_ids.txt", "loss.csv", "run.log")]
                  + [outdir / n for e in epochs for n in _output_names(e, vae, e == settings.num_epochs)])
    # delay: a run refused while it loads leaves no run.log behind
    handler = logging.FileHandler(outdir / "run.log", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("tomodrgn_scipion")
    level = root.level
    # run.log records progress whatever the caller's logging configuration is
    root.setLevel(min(root.getEffectiveLevel(), logging.INFO))
    root.addHandler(handler)
    try:
        return _train(model_cfg, settings, data, outdir, data_cfg, extra or {}, load, ctx)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _seconds_since_start() -> float:
    """Seconds since this process started (the command's start, for the time to the first step)."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # psutil absent or /proc unreadable: count from this module's import
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


def _train(model_cfg: ModelConfig, settings: TrainSettings, data: ParticleTiltData, outdir: Path, data_cfg: dict,
           extra: dict, load: str | None, ctx: Context) -> list[EpochStats]:
    device, vae, main = data.device, model_cfg.zdim > 0, ctx.main
    torch.manual_seed(settings.seed)
    model = model_cfg.build().to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.wd)
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported()) if use_amp else None
    beta_of = beta_schedule(settings.beta, model_cfg.zdim) if vae else (lambda e: 0.0)

    start_epoch, history = 0, []
    if load:
        path = latest_checkpoint(outdir) if load == "latest" else Path(load)
        ckpt = load_checkpoint(path, device)
        check_same_architecture(path, ckpt["model_config"], model_cfg)
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        for group in optim.param_groups:  # the command line, not the checkpoint, sets these
            group["lr"], group["weight_decay"] = settings.lr, settings.wd
        start_epoch = int(ckpt["epoch"])
        _check_same_particles(outdir, data)
        history = _read_history(outdir / "loss.csv", start_epoch)
        # the first line of what this run adds to run.log, once nothing can refuse it any more
        log.info("%s", ctx.describe())
        log.info("resuming from %s after epoch %d", path, start_epoch)
        if start_epoch == settings.num_epochs and _final_files_missing(outdir, start_epoch, vae):
            # killed between the last checkpoint and the final files: write what is missing
            _checkpoint(model, optim, scaler, start_epoch, data, outdir, settings, ctx, final=True, only_missing=True)
            log.info("finished the final files of epoch %d", start_epoch)
            return history
        if start_epoch >= settings.num_epochs:
            raise InputError(f"{path}: already trained {start_epoch} epochs; ask for more with -n/--num-epochs")
    else:
        log.info("%s", ctx.describe())
    if main:
        write_config(outdir / "config.json", model_cfg, settings, data_cfg, extra)
        write_text(outdir / "particle_ids.txt", "\n".join(data.particle_ids) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d particles, %d tilt images, box %d, %d parameters, batch %d%s%s, device %s%s",
             "train_vae" if vae else "train_nn", data.n_particles, data.n_images, model_cfg.box, n_params,
             settings.batch_size, f" ({ctx.world} ranks)" if ctx.distributed else "",
             ", streamed from disk" if data.lazy else ", in memory", device, ", AMP" if use_amp else "")
    if data.n_dropped:
        log.info("%d particles with fewer than %d tilt images were dropped (--ntilts)", data.n_dropped, data.ntilts)
    step_loss = StepLoss(model, data, ctx.world)
    net: nn.Module = step_loss
    if ctx.distributed:
        # every rank builds the same initial weights from the seed; DDP checks and broadcasts them
        net = nn.parallel.DistributedDataParallel(step_loss, device_ids=None)
    epochs_left = settings.num_epochs - start_epoch
    t_run = time.monotonic()
    last_good = start_epoch or None
    steps = images = 0
    train_seconds = 0.0
    first_step: float | None = None
    for epoch in range(start_epoch, settings.num_epochs):
        t0 = time.monotonic()
        model.train()
        rng = np.random.default_rng([settings.seed, epoch])
        order = rng.permutation(data.n_particles)
        noise = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        # sums over the epoch, kept on the device: reading a loss back every step would stall the GPU
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        n_batches = math.ceil(data.n_particles / settings.batch_size)
        prog = Progress(data.n_images, f"epoch {epoch + 1}", "images", log, every=30.0, final=False)
        seen = epoch_images = 0
        stop = False
        checked = 0
        for i, b in enumerate(data.batches(order, settings.batch_size, settings.num_workers,
                                           rng if settings.tilt_sampling == "random" else None, ctx.rank, ctx.world)):
            beta = beta_of(epoch + i / n_batches)
            lr = learning_rate(settings, epoch + i / n_batches)
            for group in optim.param_groups:
                group["lr"] = lr
            optim.zero_grad(set_to_none=True)
            eps = None
            if vae:
                # drawn for the whole batch, so that the draw does not depend on the number of ranks
                eps = torch.randn((b.group_size, model_cfg.zdim), generator=noise)[b.offset:b.offset + len(b.particles)]
                eps = eps.to(device, non_blocking=True)
            total = _total_points(data, b)
            all_sum(ctx, total)
            with amp_context(device, use_amp):
                loss, err, kl = net(b, eps, beta, total)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optim)
                scaler.update()
            else:
                loss.backward()
                optim.step()
            nb = b.group_size
            sums += torch.stack([nb * err.detach() / total, kl.detach(), nb * loss.detach() / ctx.world]).to(torch.float64)
            seen += nb
            epoch_images += b.group_images
            steps += 1
            if first_step is None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first_step = _seconds_since_start()
                log.info("first step after %.1f s", first_step)
            prog.update(b.group_images)
            stop = bool(settings.max_steps) and steps >= settings.max_steps
            if (i + 1) % 50 == 0 or stop:
                _check_finite(ctx, sums, epoch, checked, i, outdir, last_good)
                checked = i + 1
            if stop:
                break
        _check_finite(ctx, sums, epoch, checked, i, outdir, last_good)
        all_sum(ctx, sums)
        seconds = time.monotonic() - t0
        train_seconds += seconds
        images += epoch_images
        mean = (sums / max(seen, 1)).tolist()
        stats = EpochStats(epoch + 1, mean[0], mean[1], beta_of(epoch + 1), mean[2], seconds, epoch_images / seconds)
        history.append(stats)
        done = epoch + 1 - start_epoch
        eta = (time.monotonic() - t_run) / done * (epochs_left - done)
        kl_text = f"  KL {stats.kl:.4f}  total {stats.total:.6f}" if vae else ""
        log.info("epoch %d/%d  recon %.6f%s  %.1f s  %.0f images/s  ETA %s", stats.epoch, settings.num_epochs,
                 stats.recon, kl_text, seconds, stats.images_per_s, _hms(eta))
        if stop:
            log.info("stopped after %d steps (--max-steps), %d of %d particles of epoch %d", steps, seen,
                     data.n_particles, epoch + 1)
        if main:
            _write_history(outdir / "loss.csv", history)
        final = epoch + 1 == settings.num_epochs or stop
        if (settings.checkpoint and (epoch + 1) % settings.checkpoint == 0) or final:
            _checkpoint(model, optim, scaler, epoch + 1, data, outdir, settings, ctx, final)
            last_good = epoch + 1
        if stop:
            break
    log.info("finished %d epochs in %s", len(history) - start_epoch if history else 0, _hms(time.monotonic() - t_run))
    rate = images / max(train_seconds, 1e-9)
    # forward and backward of the decoder at every half-plane point of every image: about 3x the forward
    tflops = rate * len(data.half_coords) * 3 * model_cfg.decoder_flops_per_point() / 1e12
    log.info("throughput %.0f images/s over %d steps (decoder %.2f TFLOP/s), first step after %.1f s", rate, steps,
             tflops, first_step or 0.0)
    if device.type == "cuda":
        log.info("peak device memory %.0f MiB", torch.cuda.max_memory_allocated(device) / 2 ** 20)
    return history


def _total_points(data: ParticleTiltData, b: Batch) -> Tensor:
    """Full-plane points of this rank's share of a batch (the loss's denominator, summed over ranks)."""
    points = data.points.to(b.weight.device)
    if data.flags[2]:
        return ((b.weight > 0) * points).sum().to(torch.float32)
    return (points.sum() * b.n_images).to(torch.float32)


def _check_finite(ctx: Context, sums: Tensor, epoch: int, first: int, last: int, outdir: Path, last_good: int | None) -> None:
    """Stop training once the loss is NaN or infinite (checked every few batches: each check waits for the device)."""
    bad = torch.logical_not(torch.isfinite(sums)).any().to(torch.float32).reshape(1)
    if float(all_sum(ctx, bad).item()) > 0:
        where = outdir / f"weights.{last_good}.pt" if last_good else "none yet"
        raise TrainingError(f"loss became non-finite at epoch {epoch + 1}, between batch {first + 1} and {last + 1}; "
                            f"training stopped (last good checkpoint: {where}); lower --lr or check the input images")


def _output_names(epoch: int, vae: bool, final: bool) -> list[str]:
    """Files of a checkpoint, in the order they are written (the weights first: a run resumes from them)."""
    suffixes = [f".{epoch}"] + ([""] if final else [])
    arrays = [f"{n}{s}.npy" for s in suffixes for n in ("z", "z_logvar")] if vae else [f"reconstruct{s}.mrc" for s in suffixes]
    return [f"weights{s}.pt" for s in suffixes] + arrays


def _final_files_missing(outdir: Path, epoch: int, vae: bool) -> bool:
    return any(not (outdir / n).is_file() for n in _output_names(epoch, vae, final=True))


def _check_same_particles(outdir: Path, data: ParticleTiltData) -> None:
    """A resumed run must train on the particles of the run it continues (else z files of different runs mix)."""
    ids_path = outdir / "particle_ids.txt"
    if not ids_path.is_file():
        return
    before = ids_path.read_text(errors="replace").split()
    if before != list(data.particle_ids):
        diff = next((i for i, (a, b) in enumerate(zip(before, data.particle_ids)) if a != b), min(len(before), len(data.particle_ids)))
        raise InputError(f"{ids_path}: the run being resumed trained on {len(before)} particles, this command selects "
                         f"{len(data.particle_ids)} (first difference at particle {diff + 1}); resume with the same star "
                         f"file, --ind and --first, or train into a new -o")


def _checkpoint(model: TomoModel, optim: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, epoch: int,
                data: ParticleTiltData, outdir: Path, settings: TrainSettings, ctx: Context, final: bool,
                only_missing: bool = False) -> None:
    """Write a checkpoint's files (rank 0; every rank encodes its share of the particles for z)."""
    vae = model.cfg.zdim > 0
    names = _output_names(epoch, vae, final)
    todo = [n for n in names if not (only_missing and (outdir / n).is_file())]
    arrays: dict[str, np.ndarray] = {}
    if vae and any(n.endswith(".npy") for n in todo):
        z = infer_z(model, data, max(settings.batch_size, 64), ctx, settings.num_workers)
        if z is not None:
            arrays = {"z": z[0], "z_logvar": z[1]}
    if not ctx.main:
        return
    if not vae and any(n.endswith(".mrc") for n in todo):
        model.eval()
        arrays = {"reconstruct": render_volume(model.decoder, None, model.cfg.box).cpu().numpy()}
        model.train()
    state = {
        "epoch": epoch, "model": model.state_dict(), "optimizer": optim.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "model_config": model.cfg.to_dict(), "norm": data.norm,
    }
    for name in todo:
        path = outdir / name
        if name.endswith(".pt"):
            save_torch(state, path)
        elif name.endswith(".npy"):
            save_npy(arrays[name.split(".")[0]], path)
        else:
            from .stacks import write_mrc

            write_mrc(path, arrays["reconstruct"], data.data.pixel_size)
    log.info("checkpoint %s written", names[0])


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
