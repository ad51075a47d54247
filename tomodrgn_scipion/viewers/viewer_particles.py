"""Viewer of the protocols that output particle tilt series (imports, select): the particles' lowest-dose
images and their tilt scheme (stage tilt against accumulated dose, tilts per particle), for our sets and
reliontomo's pseudo-subtomograms alike."""
from __future__ import annotations

import numpy as np
import pyworkflow.protocol.params as params
from matplotlib.figure import Figure
from pyworkflow.viewer import View

from ..method import plots
from ..protocols import TomoDrgnProtImportParticles, TomoDrgnProtImportRelionParticles, TomoDrgnProtSelect
from .figures import image_grid, lowest_dose_images
from .viewer_base import TomoDrgnViewerBase


def particle_files(parts) -> tuple[str, list[str], str | None]:
    """(star file the method reads, particle names in set order, data folder) of a set of either class:
    ours (its star, ``_rlnGroupName``), or reliontomo's (its optimisation set, ``_rlnTomoParticleName``)."""
    from ..convert.relion5 import is_relion_set, item_names

    if is_relion_set(parts):
        return parts.filesMaster, item_names(parts), None
    return parts.getStar(), parts.getParticleIds(), parts.getDataDir()


def tilt_scheme_figure(star_path: str, title: str) -> Figure:
    """Accumulated dose against stage tilt of every tilt image, and the number of tilts per particle."""
    from ..method.star import TiltSeriesStar

    star = TiltSeriesStar(star_path)
    fig, axes = plots.new_figure(2, ncols=2, panel_size=(4.8, 3.8))
    ax = axes[0]
    tilt = np.degrees(np.arccos(np.clip(star.ctf_scalefactor, -1, 1)))
    ax.scatter(tilt, star.dose, s=plots.marker_size(star.n_images), color=plots.OKABE_ITO[0], linewidths=0)
    ax.set_xlabel("stage tilt |θ| (°, from _rlnCtfScalefactor)")
    ax.set_ylabel("accumulated dose (e/Å², -_rlnCtfBfactor / 4)")
    ax.set_title(f"{star.n_images} tilt images")
    ax = axes[1]
    counts = np.bincount(star.particle_index)
    values, freq = np.unique(counts, return_counts=True)
    ax.bar(values, freq, color=plots.OKABE_ITO[1])
    ax.set_xlabel("tilt images per particle")
    ax.set_ylabel("particles")
    ax.set_xticks(values)
    ax.set_title(f"{star.n_particles} particles")
    fig.suptitle(title)
    return fig


class TomoDrgnParticlesViewer(TomoDrgnViewerBase):
    """Particle images (lowest-dose tilt) and the tilt scheme of an imported or selected particle set."""

    _label = "viewer tomoDRGN particles"
    _targets = [TomoDrgnProtImportParticles, TomoDrgnProtImportRelionParticles, TomoDrgnProtSelect]

    def _defineParams(self, form) -> None:
        form.addSection(label="Particles")
        form.addParam("first", params.IntParam, default=0, label="From particle", help="0-based index in the set.")
        form.addParam("maxImages", params.IntParam, default=16, label="Images to show")
        form.addParam("displayImages", params.LabelParam, label="Particle images (lowest-dose tilt)")
        form.addParam("displayTilts", params.LabelParam, label="Tilt scheme and tilts per particle")

    def _getVisualizeDict(self) -> dict:
        return {"displayImages": self._showImages, "displayTilts": self._showTilts}

    def _particles(self):
        return getattr(self.protocol, "outputParticles", None) or getattr(self.protocol, "outputRelionParticles", None)

    def imagesFigure(self) -> Figure:
        parts = self._particles()
        star, names, datadir = particle_files(parts)
        ids = names[self.first.get(): self.first.get() + max(1, self.maxImages.get())]
        images, titles = lowest_dose_images(star, ids, datadir)
        return image_grid(list(images), titles, f"particles {self.first.get()}..{self.first.get() + len(ids) - 1} of "
                                                f"{parts.getSize()}, lowest-dose tilt")

    def _showImages(self, _param=None) -> list[View]:
        parts = self._particles()
        if parts is None:
            return self.missing("No particles yet: run (or wait for) this protocol.")
        if not 0 <= self.first.get() < parts.getSize():
            return self.missing(f"Particles are numbered 0 to {parts.getSize() - 1}.")
        return self.figureView(self.imagesFigure(), f"{self.protocol.getRunName()}: particle images")

    def _showTilts(self, _param=None) -> list[View]:
        parts = self._particles()
        if parts is None:
            return self.missing("No particles yet: run (or wait for) this protocol.")
        return self.figureView(tilt_scheme_figure(particle_files(parts)[0], f"{self.protocol.getRunName()}"),
                               f"{self.protocol.getRunName()}: tilt scheme")
