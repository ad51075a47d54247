"""Packaging of scipion-em-tomodrgn.

Install for development with ``pip install -e .`` (the ``make venv`` target
does it), or into Scipion with ``scipion3 installp -p /path/to/repo --devel``.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    """Read ``__version__`` from ``tomodrgn_scipion/__init__.py`` without importing it.

    Returns
    -------
    str
        The version string.
    """
    text = (HERE / "tomodrgn_scipion" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("__version__ not found in tomodrgn_scipion/__init__.py")
    return match.group(1)


def read_method_requirements() -> list:
    """``METHOD_REQUIREMENTS`` of ``tomodrgn_scipion/constants.py`` (a module without imports).

    Returns
    -------
    list of str
        The method's requirements besides torch.
    """
    namespace: dict = {}
    exec((HERE / "tomodrgn_scipion" / "constants.py").read_text(encoding="utf-8"), namespace)
    return list(namespace["METHOD_REQUIREMENTS"])


def read_readme() -> str:
    """Long description for PyPI (empty if README.md is absent)."""
    readme = HERE / "README.md"
    return readme.read_text(encoding="utf-8") if readme.exists() else ""


setup(
    name="scipion-em-tomodrgn",
    version=read_version(),  # 0.1.0
    description="Scipion plugin for tomoDRGN-style cryo-ET heterogeneity analysis in PyTorch",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    url="https://github.com/scipion-em/scipion-em-tomodrgn",
    packages=find_packages(include=["tomodrgn_scipion", "tomodrgn_scipion.*"]),
    package_data={
        "tomodrgn_scipion": ["protocols.conf", "*.mrc", "*.json", "**/*.mrc", "**/*.json"],
    },
    include_package_data=False,
    python_requires=">=3.10",
    install_requires=[
        "scipion-pyworkflow>=3.11",
        "scipion-em>=3.11",
        "scipion-em-tomo>=3.12",
        # RELION 5 tomography objects and protocols (RelionSetOfPseudoSubtomograms) we take and hand back
        "scipion-em-reliontomo>=4.0.5",
        # reliontomo imports scipion.install (scipion-app) without declaring it
        "scipion-app>=3.8",
        "torch>=2.0",
        *read_method_requirements(),
    ],
    entry_points={
        # pyworkflow uses the entry point *name* as the module to import.
        "pyworkflow.plugin": ["tomodrgn_scipion = tomodrgn_scipion"],
        "console_scripts": ["tomodrgn-scipion = tomodrgn_scipion.method.cli:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
    ],
    keywords="scipion cryo-et cryoem tomography heterogeneity tomodrgn pytorch",
)
