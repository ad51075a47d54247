"""Import particle tilt series (Warp/M RELION 3.0, RELION 3.1, RELION 5, WarpTools) as a :class:`TomoDrgnParticles` set."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pyworkflow.protocol.params as params
from pwem.protocols import ProtImport

from ..constants import CITE_CRYODRGN, CITE_TOMODRGN
from ..method.errors import InputError
from ..objects import TomoDrgnParticles


SOURCES = ("auto", "relion3", "relion31", "relion5", "warptools")


class TomoDrgnProtImportParticles(ProtImport):
    """Import particle tilt series: a RELION 3.0 image-series star (Warp 1/M: one row per tilt image,
    ``_rlnGroupName`` = particle, ``_rlnCtfBfactor`` = -4 x dose, ``_rlnCtfScalefactor`` = cos(tilt)), a RELION 3.1
    star with an optics table, or a RELION 5 / WarpTools optimisation set (particles.star + tomograms.star, 2D
    stacks). Every block and column is kept with the set, so an exported subset has all of them, unchanged."""

    _label = "import particle tilt series"
    _possibleOutputs = {"outputParticles": TomoDrgnParticles}

    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("starFile", params.PathParam, label="Star file",
                      help="A RELION 3.0 or 3.1 image-series star file (one row per tilt image; Warp 1/M export), or a "
                           "RELION 5 / WarpTools optimisation set (or its particles.star, with the tomograms star below).")
        form.addParam("sourceSoftware", params.EnumParam, choices=list(SOURCES), default=0, label="Format",
                      help="auto: detected from the file's blocks and columns. relion3: Warp 1/M image series; relion31: "
                           "with an optics table; relion5: RELION 5 particle series (2D stacks); warptools: "
                           "WarpTools ts_export_particles --2d.")
        form.addParam("tomogramsFile", params.PathParam, allowsNull=True, label="Tomograms star (optional)",
                      help="tomograms.star, when the star file above is a RELION 5 / WarpTools particles.star rather than "
                           "its optimisation set.")
        form.addParam("dataDir", params.PathParam, allowsNull=True, label="Image stacks folder (optional)",
                      help="Where the .mrcs stacks are, if not where the star file's _rlnImageName paths say "
                           "(relative to the star file's folder).")
        form.addParam("proteinDark", params.BooleanParam, default=False, label="Images are protein-dark?",
                      help="No (default): protein-light images, as Warp/M and RELION export them; the method "
                           "inverts them. Yes: protein-dark, as recorded (tomoDRGN's --uninvert-data).")
        form.addParam("copyStar", params.BooleanParam, default=True, expertLevel=params.LEVEL_ADVANCED,
                      label="Copy the star file into the project?",
                      help="Yes: the set keeps a copy (the original may then move or change). The stacks are "
                           "never copied; relative image paths are resolved from the original folder.")

    # ------------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.importStep, needsGPU=False)

    def importStep(self) -> None:
        from ..convert.particles import particles_from_star
        from ..workflow import prefer_tomography_view

        # a project made from the workflow template opens in the Tomography view once its import has run
        project = self.getProject()
        prefer_tomography_view(project.path if project is not None else os.getcwd())

        src = os.path.abspath(self.starFile.get())
        datadir = self.dataDir.get() or None
        star_path = src
        tomograms = self.tomogramsFile.get() or None
        from ..convert.particles import is_particle_series

        if is_particle_series(src):
            # several files that name each other by RELION-project paths: kept where they are; a
            # particles.star given with its tomograms gets an optimisation set naming both
            if tomograms:
                star_path = self._getExtraPath("particles_optimisation_set.star")
                with open(star_path, "w") as fh:
                    fh.write(f"\ndata_\n\n_rlnTomoParticlesFile {src}\n_rlnTomoTomogramsFile {os.path.abspath(tomograms)}\n")
        elif self.copyStar:
            star_path = self._getExtraPath(os.path.basename(src))
            shutil.copyfile(src, star_path)
            # image paths in the star are relative to the original folder: look there too
            datadir = datadir or os.path.dirname(src)
        path = self._getPath("tomodrgn_particles.sqlite")
        out = TomoDrgnParticles(filename=path)
        try:
            star = particles_from_star(star_path, out, datadir=datadir, protein_dark=bool(self.proteinDark),
                                       source_software=SOURCES[self.sourceSoftware.get()])
        except InputError as exc:
            raise InputError(str(exc).replace(star_path, src)) from None
        counts = np.array([len(r) for r in star.rows_of_particle])
        self.summaryVar.set(f"{star.n_particles} particles, {star.n_images} tilt images "
                           f"({counts.min()}-{counts.max()} per particle), box {self._box(star, datadir)} px, "
                           f"{star.pixel_size:g} A/px, dose {out.getAcquisition().getDosePerFrame():.3g} e/A^2 per tilt; "
                           f"{star.source}{', CTF-premultiplied' if star.ctf_premultiplied.any() else ''}")
        self._store(self.summaryVar)
        self._defineOutputs(outputParticles=out)

    @staticmethod
    def _box(star, datadir: str | None) -> int:
        """The box of the stacks, after checking every stack's header against its mode and size (a truncated
        stack, or one whose header mode does not match its data, is refused with one line)."""
        from ..method.stacks import ImageSource

        src = ImageSource(star.image_names, star.image_anchor, datadir=datadir, lazy=True, named_in=star.path)
        try:
            return int(src.box)
        finally:
            src.close()

    # ------------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        from ..method.star import TiltSeriesStar

        path = self.starFile.get()
        if not path:
            return ["Give the star file."]
        if not os.path.isfile(path):
            return [f"{path}: star file not found"]
        if self.dataDir.get() and not os.path.isdir(self.dataDir.get()):
            return [f"{self.dataDir.get()}: image stacks folder not found"]
        tomograms = self.tomogramsFile.get() or None
        if tomograms and not os.path.isfile(tomograms):
            return [f"{tomograms}: tomograms star not found"]
        try:
            self._box(TiltSeriesStar(path, source_software=SOURCES[self.sourceSoftware.get()], tomograms=tomograms),
                      self.dataDir.get() or None)
        except InputError as exc:
            return [str(exc)]
        except OSError as exc:
            return [f"{exc.filename or path}: cannot read ({exc.strerror or exc})"]
        return []

    def _summary(self) -> list[str]:
        if not self.hasAttribute("outputParticles"):
            return ["Not imported yet."]
        return [f"Imported {self.summaryVar.get()}", f"from {self.starFile.get()}"]

    def _methods(self) -> list[str]:
        if not self.hasAttribute("outputParticles"):
            return []
        return [f"Particle tilt series ({self.summaryVar.get()}) were imported for tomoDRGN-style heterogeneity "
                f"analysis [{CITE_TOMODRGN}]."]

    def _citations(self) -> list[str]:
        return [CITE_TOMODRGN, CITE_CRYODRGN]

    def __init__(self, **kwargs):
        from pyworkflow.object import String

        super().__init__(**kwargs)
        self.summaryVar = String()

    @classmethod
    def getClassLabel(cls, prependPackageName: bool = True) -> str:
        """"tomoDRGN - import particle tilt series", as :class:`.protocol_base.TomoDrgnLabel` names the others."""
        from .protocol_base import TomoDrgnLabel

        return TomoDrgnLabel.getClassLabel.__func__(cls, prependPackageName)
