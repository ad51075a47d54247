"""Running Scipion without a screen: the minimal configuration a fresh machine needs before protocols can
run (``hosts.conf``: this machine, no queue), as ``scipion config --unattended`` would write it. Used by
the tests and by ``make demo``; and a virtual X screen (Xvfb) for the GUI tests and screenshots."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HOSTS_CONF = """[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s
NAME =
MANDATORY = False
SUBMIT_COMMAND =
SUBMIT_TEMPLATE =
CANCEL_COMMAND =
CHECK_COMMAND =
"""


def ensure_hosts_conf(scipion_home: str | os.PathLike | None = None) -> Path:
    """Write ``<SCIPION_HOME>/config/hosts.conf`` (or ``$SCIPION_HOSTS``) for local runs unless it exists.

    Parameters
    ----------
    scipion_home : path-like, optional
        Default: ``$SCIPION_HOME``.

    Returns
    -------
    Path
        The hosts file (existing or written).
    """
    target = os.environ.get("SCIPION_HOSTS")
    if not target:
        home = scipion_home or os.environ.get("SCIPION_HOME")
        if not home:
            raise RuntimeError("SCIPION_HOME is not set: run through the Makefile or set it")
        target = os.path.join(home, "config", "hosts.conf")
    path = Path(target)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".conf.tmp")
        tmp.write_text(HOSTS_CONF)
        os.replace(tmp, path)
    return path


class VirtualScreen:
    """Xvfb on a free display number, with ``DISPLAY`` pointing at it until :meth:`stop`.

    Parameters
    ----------
    size : str
        ``WIDTHxHEIGHTxDEPTH`` of the screen.
    """

    def __init__(self, size: str = "1600x1000x24"):
        self.size = size
        self.proc: subprocess.Popen | None = None
        self.display: str | None = None
        self._previous = os.environ.get("DISPLAY")

    @staticmethod
    def available() -> bool:
        return shutil.which("Xvfb") is not None

    def start(self) -> str:
        """Start Xvfb (it picks the display number and writes it to a pipe); returns ``:N``."""
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", self.size, "-nolisten", "tcp"],
                                     pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write_fd)
        with os.fdopen(read_fd) as fh:
            number = fh.readline().strip()
        if not number:
            self.stop()
            raise RuntimeError("Xvfb did not start")
        self.display = f":{number}"
        os.environ["DISPLAY"] = self.display
        return self.display

    def screenshot(self, path: str, window: str = "root") -> bool:
        """Capture a window (or the whole screen) with ImageMagick's ``import``; False when it is missing."""
        if shutil.which("import") is None:
            return False
        subprocess.run(["import", "-display", self.display, "-window", window, path], check=True, timeout=60)
        return True

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        if self._previous is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = self._previous
