"""Running Scipion without a screen: the minimal configuration a fresh machine needs before protocols can
run (``hosts.conf``: this machine, no queue), as ``scipion config --unattended`` would write it. Used by
the tests and by ``make demo``."""
from __future__ import annotations

import os
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
