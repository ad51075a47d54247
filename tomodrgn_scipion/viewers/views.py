"""Views the viewers return: a matplotlib figure in a Tk window (:class:`FigureView`), work done off the GUI
thread with a progress line (:class:`BackgroundView`), and volumes opened in ChimeraX (:class:`ChimeraXView`,
with :func:`chimerax_program` and :func:`volumes_script`).

Figures are plain :class:`matplotlib.figure.Figure` objects, so what a view shows can be saved or inspected
without a screen; only :meth:`FigureView.show` needs Tk.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable, Sequence

from matplotlib.figure import Figure
from pyworkflow.viewer import View

from ..method.outputs import write_text
from ..method.plots import OKABE_ITO

#: Environment variables that may point at ChimeraX: the executable itself or its installation folder.
CHIMERAX_VARIABLES = ("CHIMERAX_PATH", "CHIMERAX_HOME", "CHIMERA_HOME")
CHIMERAX_NAMES = ("ChimeraX", "chimerax")


class FigureView(View):
    """A figure in its own window, with matplotlib's toolbar (zoom, pan, save as PNG/PDF/SVG).

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    title : str
        Window title.
    tkParent : tkinter widget, optional
        Parent of the window (the viewer's form); the application's root when not given.
    """

    def __init__(self, figure: Figure, title: str, tkParent=None):
        super().__init__()
        self.figure = figure
        self.title = title
        self._tkParent = tkParent
        self.window = None

    def show(self, block: bool | None = None) -> None:
        """Open the window. Without any Tk application running, make one and wait until it is closed."""
        import tkinter as tk

        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg, NavigationToolbar2Tk

        parent = self._tkParent or tk._default_root  # noqa: SLF001 (the running application's root, if any)
        own_root = parent is None
        win = tk.Tk() if own_root else tk.Toplevel(parent)
        win.title(self.title)
        canvas = FigureCanvasTkAgg(self.figure, master=win)
        toolbar = NavigationToolbar2Tk(canvas, win, pack_toolbar=False)
        toolbar.update()
        toolbar.pack(side=tk.BOTTOM, fill=tk.X)
        canvas.get_tk_widget().pack(side=tk.TOP, fill=tk.BOTH, expand=True)
        canvas.draw()
        self.window, self.canvas = win, canvas
        if own_root if block is None else block:
            win.mainloop()

    def save(self, path: str | os.PathLike, dpi: int = 100) -> None:
        """Write the figure as PNG (atomically)."""
        from ..method.plots import save_figure

        save_figure(self.figure, path, dpi)


class BackgroundView(View):
    """Work of seconds to minutes (a UMAP, ``convergence_vae``) done on a worker thread, so that the window
    never freezes: a small window shows a progress line (what is being done, the latest progress message the
    method logs, the seconds so far) until the work ends, then the views it made open.

    Parameters
    ----------
    work : callable
        Makes the views to show; runs on the worker thread, so it must not touch Tk (figures are plain
        matplotlib objects, and a :class:`FigureView` only uses Tk when shown).
    title : str
        Title of the progress window.
    doing : str
        The progress line's start, e.g. "computing the UMAP of 400 particles".
    tkParent : tkinter widget, optional
        Parent of the windows; the application's root when not given.

    Attributes
    ----------
    result : list of View
        The views of the work (or a message view of its error), once it has ended.
    line : str
        The progress line shown last.
    """

    POLL_MS = 200

    def __init__(self, work: Callable[[], list[View]], title: str, doing: str, tkParent=None):
        super().__init__()
        self.work, self.title, self.doing = work, title, doing
        self._tkParent = tkParent
        self.result: list[View] | None = None
        self.line = doing
        self.window = None
        self.thread: threading.Thread | None = None
        self._latest = ""
        #: Open the result's views when the work ends (False: leave them in :attr:`result`).
        self.open_when_done = True

    def _run(self) -> None:
        import logging

        view = self

        class Latest(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.thread == threading.get_ident():
                    view._latest = record.getMessage()

        handler = Latest(logging.INFO)
        log = logging.getLogger("tomodrgn_scipion")
        log.addHandler(handler)
        level = log.level
        log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
        try:
            self.result = self.work()
        except Exception as exc:  # noqa: BLE001 (any failure of the work is shown as one line, not lost in a thread)
            from pyworkflow.viewer import MSG_ERROR, MessageView

            from ..method.errors import MethodError

            text = str(exc) if isinstance(exc, MethodError) else f"{type(exc).__name__}: {exc}"
            self.result = [MessageView(text.splitlines()[0] if text else type(exc).__name__, self.title, MSG_ERROR,
                                       tkParent=self._tkParent)]
        finally:
            log.removeHandler(handler)
            log.setLevel(level)

    def run_here(self) -> list[View]:
        """Do the work on this thread (scripts and tests without a screen) and return its views."""
        self._run()
        return self.result

    def done(self) -> bool:
        """Whether the work has ended."""
        return self.result is not None

    def show(self, block: bool | None = None) -> None:
        """Start the work and return at once; the progress window updates itself from Tk's event loop."""
        import time
        import tkinter as tk

        parent = self._tkParent or tk._default_root  # noqa: SLF001 (the running application's root, if any)
        if parent is None:
            for v in self.run_here():
                v.show()
            return
        win = tk.Toplevel(parent)
        win.title(self.title)
        text = tk.StringVar(win, self.doing)
        tk.Label(win, textvariable=text, padx=16, pady=12, anchor="w", width=90).pack(fill=tk.X)
        self.window = win
        t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"tomodrgn viewer: {self.title}", daemon=True)
        self.thread.start()

        def poll() -> None:
            if self.thread.is_alive():
                latest = f": {self._latest}" if self._latest else ""
                self.line = f"{self.doing}{latest} ({time.monotonic() - t0:.0f} s)"
                text.set(self.line)
                win.after(self.POLL_MS, poll)
                return
            win.destroy()
            if self.open_when_done:
                for v in self.result:
                    v.show()

        win.after(self.POLL_MS, poll)


def chimerax_program() -> str | None:
    """The ChimeraX executable: from ``CHIMERAX_PATH``/``CHIMERAX_HOME``/``CHIMERA_HOME`` (the program or
    its installation folder, as Scipion's ChimeraX plugin sets it), else ``ChimeraX``/``chimerax`` on
    ``PATH``; None when not installed."""
    for var in CHIMERAX_VARIABLES:
        value = os.environ.get(var)
        if not value:
            continue
        p = Path(value)
        candidates = [p] if p.is_file() else [p / "bin" / n for n in CHIMERAX_NAMES] + [p / n for n in CHIMERAX_NAMES]
        for c in candidates:
            if c.is_file() and os.access(c, os.X_OK):
                return str(c)
    for name in CHIMERAX_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def volumes_script(paths: Sequence[str | os.PathLike], names: Sequence[str], out: str | os.PathLike,
                   sd_level: float = 2.0) -> Path:
    """A ChimeraX command script that opens volumes side by side, each coloured and named.

    Parameters
    ----------
    paths : list of path-like
        MRC volumes (absolute paths are written, so the script works from any folder).
    names : list of str
        Model names shown in ChimeraX's model panel (e.g. ``"cluster 3 (41 particles)"``).
    out : path-like
        The ``.cxc`` file to write.
    sd_level : float
        Isosurface threshold in standard deviations above each volume's mean.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    lines = ["# volumes side by side, written by scipion-em-tomodrgn", "close session"]
    for i, (path, name) in enumerate(zip(paths, names), start=1):
        color = OKABE_ITO[(i - 1) % len(OKABE_ITO)]
        lines += [f'open "{Path(path).resolve()}"', f"volume #{i} sdLevel {sd_level:g} color {color}",
                  f'rename #{i} "{name}"']
    lines += ["tile", "view", "lighting soft"]
    write_text(out, "\n".join(lines) + "\n")
    return Path(out)


class ChimeraXView(View):
    """Runs a ChimeraX script in ChimeraX, without waiting for it to close."""

    def __init__(self, script: str | os.PathLike, program: str | None = None):
        super().__init__()
        self.script = Path(script)
        self.program = program or chimerax_program()

    def command(self) -> list[str]:
        """The command line that opens the script."""
        if self.program is None:
            raise RuntimeError("ChimeraX is not installed (set CHIMERAX_PATH or put ChimeraX on PATH)")
        return [self.program, str(self.script.resolve())]

    def show(self) -> None:
        subprocess.Popen(self.command(), cwd=str(self.script.resolve().parent))
