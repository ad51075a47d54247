"""Volumes at chosen latent points of a trained VAE (``tomodrgn-scipion eval_vol``)."""
from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import SetOfVolumes, Volume
from pyworkflow.object import CsvList

from ..constants import CITE_TOMODRGN
from .protocol_base import TomoDrgnProtBase

Z_ATTR = "_tdZ"  # the attribute TomoDrgnParticle keeps its latent vector in
WEIGHTS_RE = re.compile(r"^weights\.(\d+)\.pt$")
SOURCE_TEXT, SOURCE_FILE = 0, 1


def parse_z_text(text: str, zdim: int) -> np.ndarray:
    """Latent points typed one per line (numbers separated by blanks or commas; blank lines and ``#``
    comments ignored).

    Raises
    ------
    ValueError
        One line naming the first bad line (1-based, as typed) and what is wrong with it.
    """
    points = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        words = line.split()
        try:
            values = [float(w) for w in words]
        except ValueError:
            raise ValueError(f"Latent points, line {number} ({raw.strip()!r}): not all numbers") from None
        if len(values) != zdim:
            raise ValueError(f"Latent points, line {number} ({raw.strip()!r}): {len(values)} numbers, the model "
                             f"has zdim {zdim}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"Latent points, line {number} ({raw.strip()!r}): not a finite number")
        points.append(values)
    if not points:
        raise ValueError("No latent point given: type one per line, zdim numbers each.")
    return np.asarray(points, dtype=np.float64)


def read_z_file(path: str, zdim: int) -> np.ndarray:
    """Latent points from a ``.npy`` (points x zdim) or text file (one point per line).

    Raises
    ------
    ValueError
        One line saying why the file cannot be used.
    """
    from ..method.cli_train import read_z
    from ..method.errors import InputError

    if path.endswith(".npy"):
        try:
            z = read_z(Path(path), zdim)
        except InputError as exc:
            raise ValueError(str(exc)) from None
        if len(z) == 0:
            raise ValueError(f"{path}: no latent point")
        return z.astype(np.float64)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: z file not found")
    with open(path) as f:
        text = f.read()
    try:
        return parse_z_text(text, zdim)
    except ValueError as exc:
        raise ValueError(f"{path}: {str(exc).replace('Latent points, line', 'line')}") from None


def checkpoint_epochs(train_dir: str) -> list[int]:
    """Epochs E with a ``weights.E.pt`` in a training folder, ascending."""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(train_dir), "weights.*.pt")))
    return sorted(int(m.group(1)) for n in names if (m := WEIGHTS_RE.match(n)))


class TomoDrgnProtGenerateVolumes(TomoDrgnProtBase):
    """Render the volumes a trained VAE decoder gives at chosen latent points z, e.g. cluster centres or
    points along a trajectory read off the latent-space plots. Each output volume keeps its z."""

    _label = "generate volumes"
    _possibleOutputs = {"outputVolumes": SetOfVolumes}

    # ------------------------------------------------------------------------------------ form
    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("inputRun", params.PointerParam, pointerClass="TomoDrgnProtTrainVAE", important=True,
                      label="Training run", help="A finished 'train VAE' run: its decoder renders the volumes.")
        form.addParam("epoch", params.IntParam, default=-1, label="Epoch",
                      help="Use the weights of this epoch (a checkpoint weights.E.pt of the run); -1: the last one.")
        form.addParam("zSource", params.EnumParam, choices=["typed below", "from a file"], default=SOURCE_TEXT,
                      display=params.EnumParam.DISPLAY_HLIST, label="Latent points")
        form.addParam("zValues", params.TextParam, default="", condition=f"zSource == {SOURCE_TEXT}",
                      label="Points (one per line)",
                      help="One latent point per line, zdim numbers each (blanks or commas between them). "
                           "Lines starting with # are ignored.")
        form.addParam("zFile", params.PathParam, default="", condition=f"zSource == {SOURCE_FILE}",
                      label="z file", help="Text (one point per line) or .npy (points x zdim), e.g. the "
                                           "z_values.txt of a latent-space traversal.")
        self._addVolumeParams(form)
        self._addGpuParams(form)

    # ------------------------------------------------------------------------------------ training run
    def _trainRun(self):
        return self.inputRun.get()

    def _trainConfig(self) -> dict:
        with open(self._trainRun().trainDir("config.json")) as f:
            return json.load(f)

    def _zdim(self) -> int:
        return int(self._trainConfig()["model"]["zdim"])

    def weightsPath(self) -> str:
        """``weights.E.pt`` of the chosen epoch (for -1 the largest E present)."""
        run = self._trainRun()
        epoch = self.epoch.get()
        if epoch is None or epoch < 0:
            epochs = checkpoint_epochs(run.trainDir())
            if not epochs:
                raise ValueError(f"{run.trainDir()}: no checkpoint weights.E.pt")
            epoch = epochs[-1]
        return run.trainDir(f"weights.{epoch}.pt")

    def _points(self) -> np.ndarray:
        zdim = self._zdim()
        if self.zSource.get() == SOURCE_FILE:
            return read_z_file(self.zFile.get() or "", zdim)
        return parse_z_text(self.zValues.get() or "", zdim)

    # ------------------------------------------------------------------------------------ paths
    def zPath(self) -> str:
        return self._getExtraPath("z_values.txt")

    def volumesDir(self, *parts: str) -> str:
        return self._getExtraPath("volumes", *parts)

    # ------------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep, needsGPU=False)
        self._insertFunctionStep(self.generateStep)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertInputStep(self) -> None:
        # repr keeps every digit: the volumes are rendered at exactly the points recorded with them
        z = self._points()
        with open(self.zPath(), "w") as f:
            f.writelines(" ".join(repr(float(v)) for v in row) + "\n" for row in z)

    def generateStep(self) -> None:
        run = self._trainRun()
        args: list[object] = ["-w", self.weightsPath(), "-c", run.trainDir("config.json"), "--zfile", self.zPath(),
                              "-o", self.volumesDir(), *self._deviceArgs(), *self._volumeArgs()]
        self._runCli("eval_vol", args)

    def outputPixelSize(self) -> float:
        """Training pixel size x training box / rendered box."""
        data = self._trainConfig()["data"]
        box = int(data["box"])
        return float(data["pixel_size"]) * box / (self.downsample.get() or box)

    def createOutputStep(self) -> None:
        z = np.loadtxt(self.zPath(), ndmin=2)
        pixel = self.outputPixelSize()
        vols = self._createSetOfVolumes()
        vols.setSamplingRate(pixel)
        for i, point in enumerate(z):
            path = self.volumesDir(f"vol_{i:03d}.mrc")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: eval_vol wrote no volume for latent point {i + 1}")
            vol = Volume()
            vol.setFileName(path)
            vol.setSamplingRate(pixel)
            vol.setObjId(i + 1)
            setattr(vol, Z_ATTR, CsvList(pType=float))
            getattr(vol, Z_ATTR).set([float(v) for v in point])
            vols.append(vol)
        self._defineOutputs(outputVolumes=vols)
        run = self._trainRun()
        # the data tree links particles to volumes: the source is the set the run trained on
        if run.hasAttribute("outputParticles"):
            self._defineSourceRelation(run.outputParticles, vols)
        elif run.inputParticles.get() is not None:
            self._defineSourceRelation(run.inputParticles, vols)

    # ------------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        run = self._trainRun()
        if run is None:
            return ["Choose a finished 'train VAE' run."]
        if not run.isFinished():
            return [f"The training run {run.getRunName()} has not finished (status: {run.getStatusMessage()})."]
        try:
            box = int(self._trainConfig()["data"]["box"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [f"{run.trainDir('config.json')}: cannot read the training run's configuration ({exc})"]
        errors = []
        epoch = self.epoch.get()
        epochs = checkpoint_epochs(run.trainDir())
        if not epochs:
            errors.append(f"{run.trainDir()}: the training run has no checkpoint weights.E.pt")
        elif epoch is not None and epoch >= 0 and epoch not in epochs:
            errors.append(f"Epoch {epoch} has no checkpoint; saved epochs: {', '.join(map(str, epochs))} (-1: last).")
        if self.zSource.get() == SOURCE_FILE and not self.zFile.get():
            errors.append("Give the z file.")
        else:
            try:
                self._points()
            except (ValueError, KeyError) as exc:
                errors.append(str(exc))
        down = self.downsample.get() or 0
        if down and (down < 0 or down % 2 or down > box):
            errors.append(f"Box size {down}: must be even and at most the training box {box}.")
        if (self.lowpass.get() or 0) < 0:
            errors.append("The low-pass resolution must be >= 0.")
        return errors + self._gpuErrors()

    def _summary(self) -> list[str]:
        if not self.hasAttribute("outputVolumes"):
            return ["Volumes not generated yet."]
        epoch = self.epoch.get()
        return [f"{self.outputVolumes.getSize()} volumes at {self.outputVolumes.getSamplingRate():g} A/px from "
                f"{self._trainRun().getRunName()} ({'last epoch' if epoch is None or epoch < 0 else f'epoch {epoch}'})."]

    def _methods(self) -> list[str]:
        if not self.hasAttribute("outputVolumes"):
            return []
        return [f"{self.outputVolumes.getSize()} volumes were generated by the decoder of a tomoDRGN-style VAE "
                f"[{CITE_TOMODRGN}] at chosen points of its latent space."]
