"""Constants of the scipion-em-tomodrgn plugin.

This module must stay importable without Scipion (no pwem/pyworkflow imports):
the command line program and a GPU-only Python environment may use it.
"""

# ---------------------------------------------------------------------------
# Package identity
# ---------------------------------------------------------------------------
#: Distribution name on PyPI.
DISTRIBUTION_NAME = "scipion-em-tomodrgn"
#: Importable module name. Never ``tomodrgn``, so the plugin cannot shadow the
#: upstream tomoDRGN package when both are installed.
MODULE_NAME = "tomodrgn_scipion"
#: Name of the console script installed by ``setup.py``.
CLI_NAME = "tomodrgn-scipion"
#: Module run with ``python -m`` when the console script is not found.
CLI_MODULE = MODULE_NAME + ".method.cli"
#: Project home page, shown by Scipion's plugin manager.
PLUGIN_URL = "https://github.com/scipion-em/scipion-em-tomodrgn"

#: What the method (``tomodrgn_scipion.method`` and the command line) needs besides torch: installed with
#: the plugin (setup.py) and into the dedicated environment of ``scipion3 installb tomodrgn``.
METHOD_REQUIREMENTS = (
    "mrcfile",
    "starfile>=0.5",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "scikit-learn",
    # optional at run time (analyze skips UMAP without it), installed by default
    "umap-learn",
)

# ---------------------------------------------------------------------------
# Scipion configuration variables (scipion.conf, [PLUGINS] section)
# ---------------------------------------------------------------------------
#: Shell command that activates another Python environment before the CLI
#: runs, e.g. ``source /opt/tomodrgn-gpu/bin/activate`` or
#: ``conda activate tomodrgn-gpu``. Empty: run in Scipion's own environment.
#: Its default: empty until ``scipion3 installb tomodrgn`` has created the dedicated environment, then the
#: activation of that environment (``Plugin._defineVariables``).
TOMODRGN_ENV_ACTIVATION = "TOMODRGN_ENV_ACTIVATION"
TOMODRGN_ENV_ACTIVATION_DEFAULT = ""

#: Optional folder with CUDA libraries, prepended to ``LD_LIBRARY_PATH`` of
#: the command. Empty: leave ``LD_LIBRARY_PATH`` as it is (pip CUDA builds of
#: torch ship their own CUDA libraries).
TOMODRGN_CUDA_LIB = "TOMODRGN_CUDA_LIB"
TOMODRGN_CUDA_LIB_DEFAULT = ""

# ---------------------------------------------------------------------------
# Citations: keys of the entries in ``tomodrgn_scipion/bibtex.py``
# ---------------------------------------------------------------------------
CITE_TOMODRGN = "Powell2024"
CITE_CRYODRGN = "Zhong2021"
#: DOIs of the cited papers, by citation key.
CITATION_DOIS = {
    CITE_TOMODRGN: "10.1038/s41592-024-02210-z",
    CITE_CRYODRGN: "10.1038/s41592-020-01049-4",
}
