"""Homogeneous reconstruction by Fourier back-projection of the particle tilt series (``tomodrgn-scipion
backproject``): a map, its half maps and their FSC, e.g. to check the poses before training."""
from __future__ import annotations

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import FSC, Volume
from pyworkflow.object import Float

from ..constants import CITE_TOMODRGN
from .protocol_base import (PARTICLE_CLASSES, TomoDrgnProtBase, add_relion_contrast_param, input_errors,
                            relion_or_own_args)

FSC_COLUMNS = ("shell", "frequency_1_per_A", "resolution_A", "fsc")


def read_fsc_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (1/A) and FSC values of a ``backproject`` FSC table, one row per shell."""
    table = np.atleast_1d(np.genfromtxt(path, delimiter=",", names=True))
    missing = [c for c in FSC_COLUMNS if c not in (table.dtype.names or ())]
    if missing:
        raise ValueError(f"{path}: FSC table without column(s) {', '.join(missing)}")
    return table["frequency_1_per_A"].astype(np.float64), table["fsc"].astype(np.float64)


class TomoDrgnProtBackproject(TomoDrgnProtBase):
    """Back-project the tilt images of a particle set into one homogeneous map using their poses and CTF.
    The particles are split into two halves: the half maps give a Fourier shell correlation and the
    resolution at FSC 0.143. A quick check of the imported poses, and a reference for the heterogeneous
    volumes."""

    _label = "back-project"
    _possibleOutputs = {"outputVolume": Volume, "outputFSC": FSC}
    MAP_NAME = "map"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.resolution = Float()  # A at FSC 0.143, kept so the summary needs neither the CSV nor torch

    # ------------------------------------------------------------------------------------ form
    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass=PARTICLE_CLASSES, important=True,
                      label="Particle tilt series",
                      help="From our import protocol or a selection of them, or reliontomo's 2D-stack "
                           "pseudo-subtomograms (3D ones must be re-extracted as 2D stacks first).")
        add_relion_contrast_param(form)
        line = form.addLine("Weighting", expertLevel=params.LEVEL_ADVANCED,
                            help="--recon-dose-weight: weight frequencies by their dose attenuation; "
                                 "--recon-tilt-weight: weight images by cos(stage tilt); --l-dose-mask: drop "
                                 "frequencies exposed beyond 2.51284 x the critical dose.")
        line.addParam("doseWeight", params.BooleanParam, default=False, label="dose")
        line.addParam("tiltWeight", params.BooleanParam, default=False, label="tilt")
        line.addParam("doseMask", params.BooleanParam, default=False, label="dose mask")
        form.addParam("pad", params.IntParam, default=2, validators=[params.GE(1)], expertLevel=params.LEVEL_ADVANCED,
                      label="Fourier oversampling", help="--pad: 2 reduces interpolation artefacts; 1 saves memory.")
        self._addGpuParams(form)

    # ------------------------------------------------------------------------------------ paths
    def inputStar(self) -> str:
        """What the command reads: the optimisation set of reliontomo particles, else our set's star file in its
        own format."""
        if self.isRelionInput():
            return self._getExtraPath("particles_optimisation_set.star")
        from ..convert.particles import particle_star_name

        return self._getExtraPath(particle_star_name(self.inputParticles.get(), "particles"))

    def mapPath(self, suffix: str = "", ext: str = ".mrc") -> str:
        """``map.mrc`` and the files ``backproject`` writes beside it (``_half1``, ``_fsc`` + ``.csv``...)."""
        return self._getExtraPath(f"{self.MAP_NAME}{suffix}{ext}")

    # ------------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep, needsGPU=False)
        self._insertFunctionStep(self.backprojectStep)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def isRelionInput(self) -> bool:
        from ..convert.relion5 import is_relion_set

        return is_relion_set(self.inputParticles.get())

    def convertInputStep(self) -> None:
        from ..convert.particles import star_from_particles
        from ..convert.relion5 import optimisation_set_for

        if self.isRelionInput():
            optimisation_set_for(self.inputParticles.get(), self._getExtraPath(), stem="particles")
        else:
            star_from_particles(self.inputParticles.get(), self.inputStar())

    def backprojectStep(self) -> None:
        parts = self.inputParticles.get()
        args: list[object] = [self.inputStar(), "-o", self.mapPath(), *relion_or_own_args(self, parts),
                              "--pad", self.pad.get(), *self._deviceArgs()]
        for flag, on in (("--recon-dose-weight", self.doseWeight), ("--recon-tilt-weight", self.tiltWeight),
                         ("--l-dose-mask", self.doseMask)):
            if on.get():
                args.append(flag)
        self._runCli("backproject", args)

    def createOutputStep(self) -> None:
        from ..method.fsc import resolution_at

        parts = self.inputParticles.get()
        pixel = parts.getSamplingRate()
        vol = Volume()
        vol.setFileName(self.mapPath())
        vol.setSamplingRate(pixel)
        vol.setHalfMaps([self.mapPath("_half1"), self.mapPath("_half2")])

        freq, curve = read_fsc_csv(self.mapPath("_fsc", ".csv"))
        fsc = FSC(objLabel=f"{self.getRunName()} half maps")
        fsc.setData(freq.tolist(), curve.tolist())
        # the table has D/2 + 1 shells for a box of D pixels
        self.resolution.set(resolution_at(curve, 2 * (len(curve) - 1), pixel)[1])
        self._store(self.resolution)

        self._defineOutputs(outputVolume=vol, outputFSC=fsc)
        self._defineSourceRelation(self.inputParticles, vol)
        self._defineSourceRelation(self.inputParticles, fsc)

    # ------------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        parts = self.inputParticles.get()
        if parts is None:
            return ["Choose the particle tilt series."]
        errors = input_errors(parts)
        if not self.isRelionInput() and not self._exists(parts.getStar()):
            errors.append(f"{parts.getStar()}: star file of the particle set not found")
        if parts.getSize() < 2:
            errors.append(f"Half maps need at least 2 particles; the set has {parts.getSize()}.")
        if self.pad.get() is None or self.pad.get() < 1:
            errors.append("Fourier oversampling must be >= 1.")
        return errors + self._gpuErrors()

    def _summary(self) -> list[str]:
        if not self.hasAttribute("outputVolume"):
            return ["Map not computed yet."]
        pixel = self.outputVolume.getSamplingRate()
        return [f"Map of {self.inputParticles.get().getSize()} particles at {pixel:g} A/px: FSC 0.143 between "
                f"half maps at {self.resolution.get():.1f} A (Nyquist {2 * pixel:.1f} A)."]

    def _methods(self) -> list[str]:
        if not self.hasAttribute("outputVolume"):
            return []
        weights = [name for name, on in (("dose", self.doseWeight), ("tilt", self.tiltWeight)) if on.get()]
        how = f", with {' and '.join(weights)} weighting" if weights else ""
        return [f"A homogeneous map was reconstructed from {self.inputParticles.get().getSize()} particle tilt series "
                f"by Fourier back-projection{how} as in tomoDRGN [{CITE_TOMODRGN}]; the FSC between maps of two "
                f"random halves of the particles fell to 0.143 at {self.resolution.get():.1f} A."]
