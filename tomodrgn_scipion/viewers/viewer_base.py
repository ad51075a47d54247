"""What the "Analyze Results" viewers of the plugin share: figure and message views, and volumes shown in
ChimeraX when it is installed, else as central-slice montages."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pyworkflow.protocol.params as params
from matplotlib.figure import Figure
from pwem.viewers import EmProtocolViewer
from pyworkflow.viewer import DESKTOP_TKINTER, MessageView, MSG_INFO, View

from .figures import volume_montage
from .views import ChimeraXView, FigureView, chimerax_program, volumes_script

VOLUMES_CHIMERAX, VOLUMES_SLICES = 0, 1


class TomoDrgnViewerBase(EmProtocolViewer):
    """Base of the viewers: not offered by itself."""

    _environments = [DESKTOP_TKINTER]
    _targets = []

    def visualize(self, obj, **kwargs) -> None:
        """Open the viewer's form (also outside the project window, e.g. from a script)."""
        import pyworkflow.gui.project  # noqa: F401 (pyworkflow.gui.form imports cleanly only after it)

        super().visualize(obj, **kwargs)

    def _addVolumeDisplayParam(self, form) -> None:
        form.addParam("volumeDisplay", params.EnumParam, choices=["ChimeraX", "central slices"],
                      default=VOLUMES_CHIMERAX if chimerax_program() else VOLUMES_SLICES,
                      display=params.EnumParam.DISPLAY_HLIST, label="Show volumes in",
                      help="ChimeraX opens them side by side (set CHIMERAX_PATH when it is not on PATH); "
                           "central slices: the XY, XZ and YZ central sections of each volume in a window.")

    # -------------------------------------------------------------------------------------------- views
    def viewerPath(self, *parts: str) -> str:
        """A file the viewer writes (scripts, caches): in the protocol's ``extra/viewer`` folder."""
        path = self.protocol._getExtraPath("viewer", *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def viewerDir(self, *parts: str) -> str:
        """A folder of the viewer's files (made when missing)."""
        path = self.protocol._getExtraPath("viewer", *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def figureView(self, figure: Figure, title: str) -> list[View]:
        return [FigureView(figure, title, tkParent=self.getTkRoot())]

    def missing(self, msg: str) -> list[View]:
        """What the user sees instead of an empty window: what to run or wait for first."""
        return [MessageView(msg, "Nothing to show yet", MSG_INFO, tkParent=self.getTkRoot())]

    def volumeViews(self, paths: Sequence[str], names: Sequence[str], title: str) -> list[View]:
        """The volumes in ChimeraX (one script laying them out side by side) or as a montage."""
        paths = [str(p) for p in paths]
        absent = [p for p in paths if not os.path.isfile(p)]
        if not paths or absent:
            return self.missing(f"Volume {absent[0]} is missing." if absent else "There are no volumes to show.")
        if self.getAttributeValue("volumeDisplay", VOLUMES_SLICES) == VOLUMES_CHIMERAX:
            program = chimerax_program()
            if program:
                script = volumes_script(paths, names, self.viewerPath(_slug(title) + ".cxc"))
                return [ChimeraXView(script, program)]
            views = [MessageView("ChimeraX was not found (set CHIMERAX_PATH or put ChimeraX on PATH): showing "
                                 "central slices instead.", "ChimeraX not found", MSG_INFO, tkParent=self.getTkRoot())]
        else:
            views = []
        return views + self.figureView(volume_montage(paths, names, title), title)


def _slug(text: str) -> str:
    from ..method.outputs import safe_name

    return safe_name(text.replace(" ", "_"))[:60]


def volume_names(paths: Sequence[str | os.PathLike], prefix: str) -> list[str]:
    """``"<prefix> N"`` for ``vol_NNN.mrc`` files, else the file name."""
    out = []
    for p in paths:
        stem = Path(p).stem
        out.append(f"{prefix} {int(stem[4:])}" if stem.startswith("vol_") and stem[4:].isdigit() else stem)
    return out
