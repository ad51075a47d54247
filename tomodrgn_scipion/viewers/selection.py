"""Selection by drawing: a lasso or a rectangle on the latent plot picks particles, and a button creates a
``select particles`` run with them (its output set and its RELION 3.0 star file)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath
from pyworkflow.viewer import View


def points_in_polygon(xy: np.ndarray, vertices: Sequence[Sequence[float]]) -> np.ndarray:
    """Rows of ``xy`` (shape (N, 2)) inside the closed polygon ``vertices`` (shape (V, 2), V >= 3), ascending.

    Points on the boundary count as inside (the polygon is grown by a hair, relative to the data's extent).
    """
    verts = np.asarray(vertices, dtype=np.float64)
    if len(verts) < 3:
        return np.zeros(0, dtype=np.int64)
    pts = np.asarray(xy, dtype=np.float64)
    eps = 1e-9 * max(float(np.ptp(pts, axis=0).max()) if len(pts) else 1.0, 1e-12)
    poly = MplPath(verts)
    # the sign of contains_points' radius that grows the polygon depends on its orientation: try both
    inside = poly.contains_points(pts, radius=eps) | poly.contains_points(pts, radius=-eps)
    return np.flatnonzero(inside).astype(np.int64)


def rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The corners of an axis-aligned rectangle, shape (4, 2)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def format_indices(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2 5 7-8"``: the select protocol's index syntax, compact."""
    idx = sorted({int(i) for i in indices})
    out: list[str] = []
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return " ".join(out)


class SelectionWindow(View):
    """A window with the latent plot, lasso and rectangle tools, and a button that creates the subset.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The latent plot; its first axes holds the points.
    xy : numpy.ndarray, shape (N, 2)
        The plotted coordinates, one row per particle.
    on_create : callable
        Called with the selected rows (ascending int64 array) and "keep" or "drop"; returns a message for
        the status line (e.g. the name of the run it created).
    title : str
    tkParent : tkinter widget, optional
    """

    def __init__(self, figure: Figure, xy: np.ndarray, on_create: Callable[[np.ndarray, str], str], title: str,
                 tkParent=None):
        super().__init__()
        self.figure = figure
        self.ax = figure.axes[0]
        self.xy = np.asarray(xy, dtype=np.float64)
        self.on_create = on_create
        self.title = title
        self._tkParent = tkParent
        self.selected = np.zeros(0, dtype=np.int64)
        self._highlight = None
        self.window = None

    # -------------------------------------------------------------------------------------- selection logic
    def select_polygon(self, vertices: Sequence[Sequence[float]]) -> np.ndarray:
        """Select the points inside a polygon (what the lasso does), replacing the previous selection."""
        self.selected = points_in_polygon(self.xy, vertices)
        self._redraw()
        return self.selected

    def select_rectangle(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Select the points inside a rectangle (what the rectangle tool does)."""
        return self.select_polygon(rectangle(x0, y0, x1, y1))

    def clear(self) -> None:
        self.selected = np.zeros(0, dtype=np.int64)
        self._redraw()

    def create(self) -> str:
        """Create the subset of the current selection; the returned message is also shown in the window."""
        if len(self.selected) == 0:
            msg = "Nothing selected: draw around some particles first."
        else:
            msg = self.on_create(self.selected, self.action)
        self._status(msg)
        return msg

    @property
    def action(self) -> str:
        return self._action.get() if self.window is not None else "keep"

    # -------------------------------------------------------------------------------------- window
    def show(self) -> None:
        import tkinter as tk

        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg, NavigationToolbar2Tk
        from matplotlib.widgets import LassoSelector, RectangleSelector

        parent = self._tkParent or tk._default_root  # noqa: SLF001
        win = tk.Tk() if parent is None else tk.Toplevel(parent)
        win.title(self.title)
        self.window = win
        bar = tk.Frame(win)
        bar.pack(side=tk.TOP, fill=tk.X)
        self._tool = tk.StringVar(win, "lasso")
        self._action = tk.StringVar(win, "keep")
        tk.Label(bar, text="Draw:").pack(side=tk.LEFT, padx=4)
        for name in ("lasso", "rectangle"):
            tk.Radiobutton(bar, text=name, value=name, variable=self._tool, command=self._set_tool).pack(side=tk.LEFT)
        tk.Button(bar, text="Clear", command=self.clear).pack(side=tk.LEFT, padx=8)
        tk.Label(bar, text="Selected particles are").pack(side=tk.LEFT, padx=4)
        for name in ("keep", "drop"):
            tk.Radiobutton(bar, text=name, value=name, variable=self._action).pack(side=tk.LEFT)
        self.create_button = tk.Button(bar, text="Create subset", command=self.create)
        self.create_button.pack(side=tk.LEFT, padx=8)
        self._status_var = tk.StringVar(win, "Draw around particles with the mouse.")
        tk.Label(win, textvariable=self._status_var, anchor="w").pack(side=tk.BOTTOM, fill=tk.X)

        self.canvas = FigureCanvasTkAgg(self.figure, master=win)
        toolbar = NavigationToolbar2Tk(self.canvas, win, pack_toolbar=False)
        toolbar.update()
        toolbar.pack(side=tk.BOTTOM, fill=tk.X)
        self.canvas.get_tk_widget().pack(side=tk.TOP, fill=tk.BOTH, expand=True)
        self._lasso = LassoSelector(self.ax, onselect=self.select_polygon, props=dict(color="black", lw=1))
        self._rect = RectangleSelector(self.ax, self._on_rectangle, useblit=False,
                                       props=dict(facecolor="none", edgecolor="black", lw=1))
        self._set_tool()
        self.canvas.draw()
        if parent is None:
            win.mainloop()

    def _set_tool(self) -> None:
        lasso = self._tool.get() == "lasso"
        self._lasso.set_active(lasso)
        self._rect.set_active(not lasso)

    def _on_rectangle(self, press, release) -> None:
        self.select_rectangle(press.xdata, press.ydata, release.xdata, release.ydata)

    def _redraw(self) -> None:
        if self._highlight is not None:
            self._highlight.remove()
            self._highlight = None
        if len(self.selected):
            pts = self.xy[self.selected]
            self._highlight = self.ax.scatter(pts[:, 0], pts[:, 1], s=40, facecolors="none", edgecolors="black",
                                              linewidths=0.8, zorder=5)
        if self.window is not None:
            self._status(f"{len(self.selected)} of {len(self.xy)} particles selected.")
            self.canvas.draw_idle()

    def _status(self, msg: str) -> None:
        if self.window is not None:
            self._status_var.set(msg)
