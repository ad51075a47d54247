"""scipion-em-tomodrgn: tomoDRGN-style cryo-ET heterogeneity analysis in PyTorch.

The package has two halves:

* ``tomodrgn_scipion.method``: the scientific code and the ``tomodrgn-scipion``
  command line program. It does not need Scipion and runs in any Python
  environment with torch (for instance a separate environment with a CUDA
  build of torch).
* the Scipion plugin (this module's :class:`Plugin`, ``protocols``,
  ``viewers``, ``convert``), which needs ``pwem``/``pyworkflow``.

``pwem`` is imported in a ``try`` block: where it is missing, ``Plugin`` is
simply not defined and ``import tomodrgn_scipion.method`` still works.
"""
import os
import re
import shlex
import sys
from typing import Any, Dict, Optional

from .constants import (CITE_CRYODRGN, CITE_TOMODRGN, CLI_MODULE, CLI_NAME,
                        PLUGIN_URL, TOMODRGN_CUDA_LIB,
                        TOMODRGN_CUDA_LIB_DEFAULT, TOMODRGN_ENV_ACTIVATION,
                        TOMODRGN_ENV_ACTIVATION_DEFAULT)

__version__ = "0.1.0"

# Read by Scipion (plugin manager, protocol "Cite" tab): keys of bibtex.py.
_references = [CITE_TOMODRGN, CITE_CRYODRGN]

_SUBCOMMAND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------
# Scipion-free helpers (usable by the CLI and in environments without pwem)
# ---------------------------------------------------------------------------
def _clean_activation(activation: Optional[str]) -> str:
    """Normalise an environment activation command.

    Parameters
    ----------
    activation : str or None
        Shell command that activates a Python environment, possibly empty or
        ending in ``&&`` or ``;``.

    Returns
    -------
    str
        The command without surrounding blanks and without a trailing ``&&``
        or ``;``; an empty string when nothing is to be activated.
    """
    cmd = (activation or "").strip()
    while cmd.endswith("&&") or cmd.endswith(";"):
        cmd = cmd[:-2] if cmd.endswith("&&") else cmd[:-1]
        cmd = cmd.rstrip()
    return cmd


def cli_program(subcommand: str, activation: Optional[str] = None) -> str:
    """Shell program string that runs one ``tomodrgn-scipion`` subcommand.

    Parameters
    ----------
    subcommand : str
        CLI subcommand, e.g. ``"backproject"``. A single word made of letters,
        digits, ``_``, ``.`` and ``-``.
    activation : str, optional
        Shell command activating another Python environment that has this
        package installed. Empty or ``None``: use the interpreter running
        this code.

    Returns
    -------
    str
        With an activation: ``"<activation> && tomodrgn-scipion <subcommand>"``
        (the console script is looked up on the activated ``PATH``).
        Without: ``"<bin dir of sys.executable>/tomodrgn-scipion <subcommand>"``
        if that console script exists, else
        ``"<sys.executable> -m tomodrgn_scipion.method.cli <subcommand>"``.
        Paths are shell-quoted. Arguments are appended by the caller.

    Raises
    ------
    ValueError
        If ``subcommand`` is empty or not a single plain word.
    """
    if not isinstance(subcommand, str) or not _SUBCOMMAND_RE.match(subcommand):
        raise ValueError("Invalid tomodrgn-scipion subcommand: %r" % (subcommand,))

    activation = _clean_activation(activation)
    if activation:
        return "%s && %s %s" % (activation, CLI_NAME, subcommand)

    # Do not resolve symlinks: a venv's bin/python links to the base
    # interpreter, whose bin folder does not hold our console script.
    script = os.path.join(os.path.dirname(sys.executable), CLI_NAME)
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return "%s %s" % (shlex.quote(script), subcommand)
    return "%s -m %s %s" % (shlex.quote(sys.executable), CLI_MODULE, subcommand)


def cli_environ(cuda_lib: Optional[str] = None,
                base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment variables for running the CLI.

    Parameters
    ----------
    cuda_lib : str, optional
        Folder(s) with CUDA libraries (``os.pathsep``-separated), prepended to
        ``LD_LIBRARY_PATH``. Empty or ``None``: not changed.
    base : dict, optional
        Starting environment; a copy of ``os.environ`` when ``None``.

    Returns
    -------
    dict
        A new dictionary; ``base`` is not modified.
    """
    env = dict(os.environ if base is None else base)
    cuda_lib = (cuda_lib or "").strip()
    if cuda_lib:
        old = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = cuda_lib + (os.pathsep + old if old else "")
    return env


# ---------------------------------------------------------------------------
# Scipion plugin (only where pwem is importable)
# ---------------------------------------------------------------------------
try:
    import pwem as _pwem
    import pyworkflow.utils as _pwutils
except ImportError as _exc:  # a GPU-only or CLI-only environment
    _pwem = None
    _pwutils = None
    #: Why the Scipion part is unavailable (None when it is available).
    PWEM_IMPORT_ERROR: Optional[ImportError] = _exc
else:
    PWEM_IMPORT_ERROR = None

if _pwem is not None:

    class Plugin(_pwem.Plugin):
        """Scipion plugin class of scipion-em-tomodrgn.

        The method is plain Python shipped inside this package, so there is
        nothing to download or compile. Protocols build their commands with
        :meth:`getProgram` and run them with ``self.runJob(program, args,
        env=Plugin.getEnviron())``.
        """

        _url = PLUGIN_URL

        @classmethod
        def getPackageDir(cls) -> str:
            """Folder of the dedicated environment of ``scipion3 installb tomodrgn``.

            Returns
            -------
            str
                ``<Scipion's software/em>/tomodrgn-<version>`` (it may not exist).
            """
            from .install import package_dir_name

            return os.path.join(_pwem.Config.EM_ROOT, package_dir_name(__version__))

        @classmethod
        def _defineVariables(cls) -> None:
            """Declare the plugin's configuration variables.

            Values come from the environment (Scipion exports the
            ``[PLUGINS]`` section of ``scipion.conf``), else the defaults:

            ``TOMODRGN_ENV_ACTIVATION``
                Shell command run before the CLI to activate another Python
                environment, e.g. ``source /opt/tomodrgn-gpu/bin/activate`` or
                ``conda activate tomodrgn-gpu``. That environment needs
                ``pip install -e /path/to/scipion-em-tomodrgn`` (or the PyPI
                package) and a CUDA build of torch. Default: the activation of
                the environment of ``scipion3 installb tomodrgn`` once it has
                been installed (:meth:`getPackageDir`), else empty: the CLI
                runs in Scipion's own Python environment.
            ``TOMODRGN_CUDA_LIB`` (default empty)
                Optional folder with CUDA libraries, prepended to
                ``LD_LIBRARY_PATH``. Not needed for pip/conda builds of torch,
                which bring their own CUDA runtime.
            """
            from .install import activation_command, installed

            package_dir = cls.getPackageDir()
            default = activation_command(package_dir) if installed(package_dir) else TOMODRGN_ENV_ACTIVATION_DEFAULT
            cls._defineVar(TOMODRGN_ENV_ACTIVATION, default,
                           description="Shell command that activates a Python environment "
                                       "with tomodrgn-scipion and (CUDA) torch installed, "
                                       "run before each tomodrgn-scipion command. Default: the "
                                       "environment of 'scipion3 installb tomodrgn' once installed, "
                                       "else empty: Scipion's own Python environment.")
            cls._defineVar(TOMODRGN_CUDA_LIB, TOMODRGN_CUDA_LIB_DEFAULT,
                           description="Optional folder with CUDA libraries, prepended to "
                                       "LD_LIBRARY_PATH for tomodrgn-scipion commands. "
                                       "Empty: LD_LIBRARY_PATH is left unchanged.")

        @classmethod
        def _getVarOrEnv(cls, name: str, default: str) -> str:
            """Value of a plugin variable.

            Falls back to the environment and then ``default`` when the
            plugin was imported directly instead of being registered by
            pyworkflow (which is what calls :meth:`_defineVariables`).
            """
            value = cls.getVar(name)
            if value is None:
                value = os.environ.get(name, default)
            return value

        @classmethod
        def getActivation(cls) -> str:
            """Activation command of the environment running the CLI.

            Returns
            -------
            str
                ``TOMODRGN_ENV_ACTIVATION`` without a trailing ``&&``/``;``;
                empty when the CLI runs in Scipion's environment.
            """
            return _clean_activation(
                cls._getVarOrEnv(TOMODRGN_ENV_ACTIVATION, TOMODRGN_ENV_ACTIVATION_DEFAULT))

        @classmethod
        def getCudaLib(cls) -> str:
            """Value of ``TOMODRGN_CUDA_LIB`` (may be empty)."""
            return (cls._getVarOrEnv(TOMODRGN_CUDA_LIB, TOMODRGN_CUDA_LIB_DEFAULT) or "").strip()

        @classmethod
        def getEnviron(cls) -> "_pwutils.Environ":
            """Environment for running ``tomodrgn-scipion`` commands.

            Returns
            -------
            pyworkflow.utils.Environ
                A copy of ``os.environ`` with ``TOMODRGN_CUDA_LIB`` (if set)
                prepended to ``LD_LIBRARY_PATH``.
            """
            return _pwutils.Environ(cli_environ(cls.getCudaLib()))

        @classmethod
        def getProgram(cls, subcommand: str) -> str:
            """Program string for ``runJob`` that runs one CLI subcommand.

            Parameters
            ----------
            subcommand : str
                e.g. ``"backproject"``.

            Returns
            -------
            str
                ``"<activation> && tomodrgn-scipion <subcommand>"`` when
                ``TOMODRGN_ENV_ACTIVATION`` is set; otherwise the
                ``tomodrgn-scipion`` console script next to the running
                interpreter, or ``"<python> -m tomodrgn_scipion.method.cli
                <subcommand>"`` if that script is missing. See
                :func:`cli_program`.
            """
            return cli_program(subcommand, cls.getActivation())

        @classmethod
        def defineBinaries(cls, env: Any) -> None:
            """Declare ``tomodrgn``: the dedicated environment of the method.

            ``scipion3 installb tomodrgn`` creates, in :meth:`getPackageDir`,
            a Python virtual environment (made by Scipion's interpreter) with
            the torch build fitting the NVIDIA driver (``nvidia-smi``; the CPU
            build without a GPU; ``TOMODRGN_TORCH_VARIANT`` forces one), the
            method's requirements and this package without its Scipion
            dependencies. Scipion's own environment is not touched. Not
            installed by default: the plugin also works in Scipion's
            environment.

            Parameters
            ----------
            env : scipion.install.funcs.Environment
                Scipion's installer environment.
            """
            from .install import (INSTALLED_FLAG, PACKAGE_NAME, chosen_variant, install_command,
                                  method_source)

            try:
                variant = chosen_variant()
            except ValueError as exc:  # a bad TOMODRGN_TORCH_VARIANT fails this package only, with its reason
                command = f"echo {shlex.quote('tomodrgn: ' + str(exc))} >&2 && exit 1"
            else:
                command = install_command(sys.executable, variant, method_source(__file__, __version__))
            env.addPackage(PACKAGE_NAME, version=__version__, tar="void.tgz",
                           commands=[(command, [INSTALLED_FLAG])], neededProgs=[], default=False)
