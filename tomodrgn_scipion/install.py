"""The dedicated environment that ``scipion3 installb tomodrgn`` creates (Scipion-free helpers).

``Plugin.defineBinaries`` declares one package, ``tomodrgn-<version>``: a Python virtual environment
in Scipion's ``software/em/tomodrgn-<version>/venv`` with the method (this package, without its
Scipion dependencies), its scientific dependencies and a torch build that fits the machine: the CUDA
build matching the NVIDIA driver that ``nvidia-smi`` reports, the CPU build when there is no GPU.
Scipion's own environment and its pins are left alone. Once that environment is there,
``TOMODRGN_ENV_ACTIVATION`` defaults to activating it.

This module must stay importable without Scipion.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from typing import Optional, Sequence, Tuple

from .constants import METHOD_REQUIREMENTS

#: Name of the package of ``scipion3 installb`` (and of its folder, with ``-<version>``).
PACKAGE_NAME = "tomodrgn"
#: File written last by the install command: its presence means the environment is complete.
INSTALLED_FLAG = "tomodrgn_installed"
#: Folder of the virtual environment inside the package folder.
VENV_DIR = "venv"
#: Forces a torch build ("cpu", "cu126", ...) instead of the one chosen from the driver.
TORCH_VARIANT_VAR = "TOMODRGN_TORCH_VARIANT"
#: Where pip finds each torch build.
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"

#: (lowest driver version, torch build), best first. CUDA 13.0 needs driver >= 580.65, 12.8 needs >= 570.26
#: (NVIDIA's CUDA toolkit release notes, "CUDA Toolkit and Minimum Required Driver Version"); drivers from
#: 525.60.13 on run the CUDA 12.6 build through CUDA's minor-version compatibility.
DRIVER_TABLE: Tuple[Tuple[Tuple[int, ...], str], ...] = (
    ((580, 65), "cu130"),
    ((570, 26), "cu128"),
    ((525, 60, 13), "cu126"),
)


def package_dir_name(version: str) -> str:
    """``tomodrgn-<version>``: the folder under Scipion's ``software/em``."""
    return f"{PACKAGE_NAME}-{version}"


def parse_driver_version(text: str) -> Optional[Tuple[int, ...]]:
    """The first driver version in ``nvidia-smi`` output, e.g. ``"575.57.08"`` -> ``(575, 57, 8)``.

    Parameters
    ----------
    text : str
        Output of ``nvidia-smi --query-gpu=driver_version --format=csv,noheader`` (one line per GPU).

    Returns
    -------
    tuple of int or None
        None when no version is found.
    """
    match = re.search(r"\b(\d+)\.(\d+)(?:\.(\d+))?\b", text or "")
    if match is None:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


def driver_version(nvidia_smi: str = "nvidia-smi", timeout: float = 30.0) -> Optional[Tuple[int, ...]]:
    """The NVIDIA driver version of this machine, None without a working ``nvidia-smi``.

    Parameters
    ----------
    nvidia_smi : str
        The program, looked up on ``PATH``.
    timeout : float
        Seconds to wait for it.
    """
    try:
        done = subprocess.run([nvidia_smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return parse_driver_version(done.stdout)


def torch_variant(driver: Optional[Sequence[int]]) -> str:
    """The torch build for a driver: ``"cu130"``, ``"cu128"``, ``"cu126"`` or ``"cpu"``.

    Parameters
    ----------
    driver : sequence of int or None
        Driver version (see :func:`driver_version`); None: no NVIDIA GPU.
    """
    if driver is None:
        return "cpu"
    for lowest, variant in DRIVER_TABLE:
        if tuple(driver) >= lowest:
            return variant
    return "cpu"


def chosen_variant(environ: Optional[dict] = None) -> str:
    """The torch build to install: ``TOMODRGN_TORCH_VARIANT`` when set, else the one for this driver."""
    environ = os.environ if environ is None else environ
    forced = (environ.get(TORCH_VARIANT_VAR) or "").strip()
    if forced:
        if not re.fullmatch(r"cpu|cu\d{3}|rocm[\d.]+", forced):
            raise ValueError(f"{TORCH_VARIANT_VAR}={forced!r}: expected cpu, cuNNN or rocmX.Y")
        return forced
    return torch_variant(driver_version())


def method_source(package_file: str, version: str) -> str:
    """What pip installs as the method: this checkout when it is one (``--devel``), else the release.

    Parameters
    ----------
    package_file : str
        ``tomodrgn_scipion/__init__.py`` of the running plugin.
    version : str
        The plugin's version.

    Returns
    -------
    str
        ``-e <checkout>`` (quoted) when the package lives in a source tree with ``setup.py``, else
        ``scipion-em-tomodrgn==<version>``.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(package_file)))
    if os.path.isfile(os.path.join(root, "setup.py")):
        return "-e " + shlex.quote(root)
    return f"scipion-em-tomodrgn=={version}"


def install_command(python: str, variant: str, source: str) -> str:
    """The shell command (run in the package folder) that creates the environment.

    Parameters
    ----------
    python : str
        Interpreter that creates the virtual environment (Scipion's).
    variant : str
        Torch build (:func:`torch_variant`).
    source : str
        The method for pip (:func:`method_source`).

    Returns
    -------
    str
        ``python -m venv venv``, then the venv's pip installs torch from the build's index, the method
        without its Scipion dependencies (``--no-deps``) and the method's own requirements, and
        finally writes :data:`INSTALLED_FLAG`. Steps are joined by ``&&``: a failed step stops it.
    """
    pip = f"{VENV_DIR}/bin/python -m pip install"
    steps = [
        f"rm -rf {VENV_DIR} {INSTALLED_FLAG}",
        f"{shlex.quote(python)} -m venv {VENV_DIR}",
        f"{pip} --upgrade pip",
        f"{pip} torch --index-url {TORCH_INDEX.format(variant=variant)}",
        f"{pip} " + " ".join(shlex.quote(r) for r in METHOD_REQUIREMENTS),
        f"{pip} --no-deps {source}",
        f"{VENV_DIR}/bin/tomodrgn-scipion --help > /dev/null",
        f"echo {variant} > {INSTALLED_FLAG}",
    ]
    return " && ".join(steps)


def activation_command(package_dir: str) -> str:
    """Shell command activating the environment in ``package_dir`` (POSIX ``.``, also valid in sh)."""
    return ". " + shlex.quote(os.path.join(package_dir, VENV_DIR, "bin", "activate"))


def installed(package_dir: str) -> bool:
    """Whether the install command finished in ``package_dir``."""
    return os.path.isfile(os.path.join(package_dir, INSTALLED_FLAG))
