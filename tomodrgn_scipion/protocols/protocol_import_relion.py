"""Register a RELION 5 particle set made outside Scipion (``relion_tomo_subtomo``, or WarpTools/M output in
the same optimisation-set layout) as scipion-em-reliontomo's ``RelionSetOfPseudoSubtomograms``, with its
coordinates on Scipion tomograms: the object reliontomo's "Extract subtomos" gives, built by reliontomo's
own reader, so reliontomo's refinement, classification and reconstruction and our training all take it.
(reliontomo's own star imports are disabled when it is configured for RELION 5.)"""
from __future__ import annotations

import os

import pyworkflow.protocol.params as params
from pwem.protocols import ProtImport

from ..constants import CITE_TOMODRGN
from ..method.errors import InputError
from .protocol_base import TomoDrgnLabel


class TomoDrgnProtImportRelionParticles(TomoDrgnLabel, ProtImport):
    """Import a RELION 5 optimisation set (its particles.star and tomograms.star) as reliontomo's
    pseudo-subtomogram set, with one 3D coordinate per particle on the chosen tomograms."""

    _label = "import RELION 5 particles"
    _possibleOutputs = {}

    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("optimisationSet", params.PathParam, label="Optimisation set",
                      help="RELION 5 *_optimisation_set.star naming the particles.star (data_general, data_optics, "
                           "data_particles with _rlnTomoParticleName and _rlnCenteredCoordinateX/Y/ZAngst or "
                           "_rlnCoordinateX/Y/Z) and "
                           "the tomograms.star of the particles.")
        form.addParam("inputTomograms", params.PointerParam, pointerClass="SetOfTomograms", important=True,
                      label="Tomograms", help="The particles' tomograms: their tilt-series ids are the particles' "
                                              "_rlnTomoName. Their acquisition becomes the set's.")

    # ------------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.importStep, needsGPU=False)

    def _files(self) -> tuple[str, str, str]:
        """(optimisation set, particles.star, tomograms.star), absolute."""
        from ..convert.relion5 import OPT_PARTICLES, OPT_TOMOGRAMS, read_optimisation_set

        opt = os.path.abspath(self.optimisationSet.get())
        files = read_optimisation_set(opt)
        if OPT_TOMOGRAMS not in files:
            raise InputError(f"{opt}: optimisation set without _{OPT_TOMOGRAMS}")
        for label in (OPT_PARTICLES, OPT_TOMOGRAMS):
            if not os.path.isfile(files[label]):
                raise InputError(f"{opt}: _{label} {files[label]} not found")
        return opt, files[OPT_PARTICLES], files[OPT_TOMOGRAMS]

    def importStep(self) -> None:
        from reliontomo.constants import PSUBTOMOS_SQLITE
        from reliontomo.convert import readSetOfPseudoSubtomograms
        from reliontomo.objects import createSetOfRelionPSubtomograms
        from tomo.objects import SetOfCoordinates3D

        from ..convert.relion5 import are_2d_stacks, place_coordinates, read_optimisation_set, read_star_text

        opt, particles, tomograms = self._files()
        # RELION writes paths relative to its project folder, which Scipion's is not: copies with the stacks
        # and tilt-series star files as absolute paths (nothing else changed) are what the set keeps
        from ..convert.relion5 import with_absolute_paths, write_optimisation_set

        own_particles, own_tomograms = self._getExtraPath("particles.star"), self._getExtraPath("tomograms.star")
        with_absolute_paths(particles, "particles", ["rlnImageName", "rlnCtfImage"], own_particles)
        with_absolute_paths(tomograms, "global", ["rlnTomoTiltSeriesStarFile", "rlnEtomoDirectiveFile",
                                                  "rlnTomoReconstructedTomogram"], own_tomograms)
        trajectories = read_optimisation_set(opt).get("rlnTomoTrajectoriesFile")
        opt = self._getExtraPath("optimisation_set.star")
        write_optimisation_set(opt, own_particles, own_tomograms, trajectories)
        particles, tomograms = own_particles, own_tomograms
        star = read_star_text(particles)
        optics = star.block("optics", particles)
        ts_px = float(optics.column("rlnTomoTiltSeriesPixelSize", particles)[0])
        px = float(optics.column("rlnImagePixelSize", particles)[0])
        box = int(float(optics.column("rlnImageSize", particles)[0]))

        tomos = self.inputTomograms.get()
        coords = SetOfCoordinates3D.create(self._getPath(), template="coordinates%s.sqlite")
        coords.setPrecedents(self.inputTomograms)
        coords.setSamplingRate(tomos.getSamplingRate())
        coords.setBoxSize(int(round(box * px / tomos.getSamplingRate())))
        # one coordinate per row, in file order: reliontomo's reader pairs rows and coordinates in that order
        for c, _name in place_coordinates(particles, tomos, tomograms):
            coords.append(c)
        self._defineOutputs(outputCoordinates=coords)
        self._defineSourceRelation(self.inputTomograms, coords)

        pset = createSetOfRelionPSubtomograms(self._getPath(), opt, coords, template=PSUBTOMOS_SQLITE,
                                              tsSamplingRate=ts_px, relionBinning=px / ts_px, boxSize=box,
                                              are2dStacks=are_2d_stacks(star, particles),
                                              acquisition=tomos.getAcquisition())
        readSetOfPseudoSubtomograms(pset)
        self._defineOutputs(outputRelionParticles=pset)
        self._defineSourceRelation(self.inputTomograms, pset)

    # ------------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        from ..convert.relion5 import TOMO_NAME, read_star_text, unquote

        if not self.optimisationSet.get() or not os.path.isfile(self.optimisationSet.get()):
            return [f"Optimisation set not found: {self.optimisationSet.get()}"]
        try:
            _, particles, _ = self._files()
            star = read_star_text(particles)
            for name in ("optics", "particles"):
                star.block(name, particles)
            tomo_names = {unquote(v) for v in star.block("particles").column(TOMO_NAME, particles)}
        except InputError as exc:
            return [str(exc)]
        tomos = self.inputTomograms.get()
        if tomos is None:
            return ["Choose the tomograms."]
        missing = sorted(tomo_names - {t.getTsId() for t in tomos})
        if missing:
            return [f"No tomogram with tilt-series id {missing[0]} among the chosen tomograms: its particles "
                    f"cannot be placed."]
        return []

    def _summary(self) -> list[str]:
        if not self.hasAttribute("outputRelionParticles"):
            return ["Not imported yet."]
        p = self.outputRelionParticles
        return [f"{p.getSize()} particles ({'2D stacks' if p.are2dStacks() else '3D pseudo-subtomograms'}), box "
                f"{p.getBoxSize()} px, {p.getCurrentSamplingRate():g} A/px, from {self.optimisationSet.get()}"]

    def _citations(self) -> list[str]:
        return [CITE_TOMODRGN]
