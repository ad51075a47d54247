"""Viewers of the protocols that make maps: back-projection (map, half maps, FSC with 0.143 marked) and
generate volumes."""
from __future__ import annotations

import glob
import os

import numpy as np
import pyworkflow.protocol.params as params
from pyworkflow.viewer import View

from ..protocols import TomoDrgnProtBackproject, TomoDrgnProtGenerateVolumes
from .figures import fsc_from_csv
from .viewer_base import TomoDrgnViewerBase, volume_names


class TomoDrgnBackprojectViewer(TomoDrgnViewerBase):
    """The back-projected map and its half maps, and their Fourier shell correlation."""

    _label = "viewer back-project"
    _targets = [TomoDrgnProtBackproject]

    def _defineParams(self, form) -> None:
        form.addSection(label="Results")
        self._addVolumeDisplayParam(form)
        form.addParam("displayMap", params.LabelParam, label="Map")
        form.addParam("displayHalves", params.LabelParam, label="Map and half maps")
        form.addParam("displayFsc", params.LabelParam, label="FSC of the half maps",
                      help="With the FSC = 0.143 threshold and the resolution where the curve crosses it.")

    def _getVisualizeDict(self) -> dict:
        return {"displayMap": self._showMap, "displayHalves": self._showHalves, "displayFsc": self._showFsc}

    def _notYet(self) -> list[View] | None:
        if not os.path.isfile(self.protocol.mapPath()):
            return self.missing("The map is written when the back-projection finishes: run (or wait for) it.")
        return None

    def _showMap(self, _param=None) -> list[View]:
        return self._notYet() or self.volumeViews([self.protocol.mapPath()], ["map"],
                                                  f"{self.protocol.getRunName()}: map")

    def _showHalves(self, _param=None) -> list[View]:
        paths = [self.protocol.mapPath(), self.protocol.mapPath("_half1"), self.protocol.mapPath("_half2")]
        return self._notYet() or self.volumeViews(paths, ["map", "half map 1", "half map 2"],
                                                  f"{self.protocol.getRunName()}: map and half maps")

    def fscFigure(self):
        pixel = self.protocol.inputParticles.get().getSamplingRate()
        return fsc_from_csv(self.protocol.mapPath("_fsc", ".csv"), pixel, f"{self.protocol.getRunName()}: half maps")

    def _showFsc(self, _param=None) -> list[View]:
        if not os.path.isfile(self.protocol.mapPath("_fsc", ".csv")):
            return self.missing("The FSC is computed when the back-projection finishes: run (or wait for) it.")
        return self.figureView(self.fscFigure(), f"{self.protocol.getRunName()}: FSC")


class TomoDrgnGenerateViewer(TomoDrgnViewerBase):
    """The generated volumes, side by side."""

    _label = "viewer generate volumes"
    _targets = [TomoDrgnProtGenerateVolumes]

    def _defineParams(self, form) -> None:
        form.addSection(label="Results")
        self._addVolumeDisplayParam(form)
        form.addParam("displayVolumes", params.LabelParam, label="Volumes")

    def _getVisualizeDict(self) -> dict:
        return {"displayVolumes": self._showVolumes}

    def _showVolumes(self, _param=None) -> list[View]:
        paths = sorted(glob.glob(self.protocol.volumesDir("vol_*.mrc")))
        if not paths:
            return self.missing("No volumes yet: run (or wait for) the generate volumes protocol.")
        names = volume_names(paths, "z point")
        try:
            z = np.loadtxt(self.protocol.zPath(), ndmin=2)
            names = [f"{n}: z = ({', '.join(f'{v:.2f}' for v in row)})" if len(row) <= 4 else n
                     for n, row in zip(names, z)]
        except OSError:
            pass
        return self.volumeViews(paths, names, f"{self.protocol.getRunName()}: volumes")
