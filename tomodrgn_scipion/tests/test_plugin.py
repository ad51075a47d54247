"""Tests of the package/plugin skeleton: packaging, Scipion registration,
command construction, bibliography and the Scipion-free import path.

These are plain pytest tests (no Scipion project is created). Scipion (pwem)
is a dependency of the package, so nothing here skips.
"""
import configparser
import importlib.metadata as ilm
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict

import pytest

import tomodrgn_scipion
from tomodrgn_scipion import constants as C

PKG_DIR = Path(tomodrgn_scipion.__file__).resolve().parent
PLUGIN_NAME = C.MODULE_NAME


def _scipion_env(tmp_path: Path) -> Dict[str, str]:
    """Environment for a headless pyworkflow subprocess with state under ``tmp_path``."""
    env = dict(os.environ)
    env.update({
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_HOME": str(tmp_path),
        "SCIPION_USER_DATA": str(tmp_path / "data"),
        "SCIPION_NOTIFY": "False",
        "SCIPION_TEST_NOSYNC": "1",
        "MPLBACKEND": "Agg",
    })
    env.pop(C.TOMODRGN_ENV_ACTIVATION, None)
    env.pop(C.TOMODRGN_CUDA_LIB, None)
    (tmp_path / "data").mkdir(exist_ok=True)
    return env


def _run_python(code: str, env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the one running the tests)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------
# (a) packaging metadata / entry points
# ---------------------------------------------------------------------------
def test_distribution_installed_with_matching_version():
    assert ilm.version(C.DISTRIBUTION_NAME) == tomodrgn_scipion.__version__ == "0.1.0"


def test_pyworkflow_entry_point_resolves_to_package():
    eps = [ep for ep in ilm.entry_points(group="pyworkflow.plugin") if ep.name == PLUGIN_NAME]
    assert len(eps) == 1, "pyworkflow.plugin entry point %r not installed" % PLUGIN_NAME
    ep = eps[0]
    # pyworkflow imports the entry point *name*; the value must agree with it.
    assert ep.value == PLUGIN_NAME
    assert ep.load() is tomodrgn_scipion


def test_console_script_entry_point_declared():
    eps = [ep for ep in ilm.entry_points(group="console_scripts") if ep.name == C.CLI_NAME]
    assert len(eps) == 1
    assert eps[0].value == C.CLI_MODULE + ":main"


def test_console_script_entry_point_loads():
    ep = [ep for ep in ilm.entry_points(group="console_scripts") if ep.name == C.CLI_NAME][0]
    assert callable(ep.load())


def test_protocols_conf_is_valid_for_pyworkflow():
    path = PKG_DIR / "protocols.conf"
    assert path.is_file()
    cp = configparser.ConfigParser()
    cp.optionxform = str  # pyworkflow keeps the case of view names
    assert cp.read(path) == [str(path)]
    assert cp.has_section("PROTOCOLS")
    tree = json.loads(cp.get("PROTOCOLS", "Tomography"))
    sections = [item for item in tree if item.get("tag") == "section"]
    assert [s["text"] for s in sections] == ["tomoDRGN", "Subtomogram averaging"]
    assert all(isinstance(s.get("children"), list) for s in sections)
    # where a reliontomo user looks: a section beside reliontomo's "Classification and Alignment"
    (hetero,) = sections[1]["children"]
    assert hetero["tag"] == "section" and hetero["text"] == "Heterogeneity (tomoDRGN)"
    # every protocol of the plugin is in both places, and every tree entry is a protocol of the plugin
    import tomodrgn_scipion.protocols as protocols

    offered = [n for n in protocols.__all__ if not getattr(protocols, n).isBase()]
    for section in (sections[0], hetero):
        listed = [c["value"] for c in section["children"] if c.get("tag") == "protocol"]
        assert sorted(listed) == sorted(offered) and all(n.startswith("TomoDrgnProt") for n in listed)


def test_protocol_names_are_readable_in_a_narrow_tree():
    """Every entry of the tree reads "tomoDRGN - <what it does>" (not the package name), short and distinct."""
    import tomodrgn_scipion.protocols as protocols

    cp = configparser.ConfigParser()
    cp.optionxform = str
    cp.read(PKG_DIR / "protocols.conf")
    entries = json.loads(cp.get("PROTOCOLS", "Tomography"))[0]["children"]
    labels = {e["value"]: getattr(protocols, e["value"]).getClassLabel() for e in entries if e.get("text") == "default"}
    assert len(labels) == len(entries)
    assert labels["TomoDrgnProtTrainVAE"] == "tomoDRGN - train VAE"
    assert labels["TomoDrgnProtTrainNN"] == "tomoDRGN - train homogeneous"
    assert all(v.startswith("tomoDRGN - ") and len(v) <= 40 and "tomodrgn_scipion" not in v for v in labels.values())
    assert len(set(labels.values())) == len(labels)
    assert protocols.TomoDrgnProtTrainVAE.getClassLabel(prependPackageName=False) == "train VAE"


# ---------------------------------------------------------------------------
# (b) Plugin class and command construction
# ---------------------------------------------------------------------------
@pytest.fixture
def plugin(monkeypatch):
    """The Plugin class with both variables empty (no activation, no CUDA lib)."""
    P = tomodrgn_scipion.Plugin
    # Plugin._vars is one dict shared by every pyworkflow plugin class.
    monkeypatch.setitem(P._vars, C.TOMODRGN_ENV_ACTIVATION, "")
    monkeypatch.setitem(P._vars, C.TOMODRGN_CUDA_LIB, "")
    return P


def test_plugin_is_pwem_plugin():
    import pwem
    assert issubclass(tomodrgn_scipion.Plugin, pwem.Plugin)
    assert tomodrgn_scipion.PWEM_IMPORT_ERROR is None


def test_get_program_without_activation(plugin):
    program = plugin.getProgram("backproject")
    words = shlex.split(program)
    assert program.endswith("backproject") and words[-1] == "backproject"
    exe = words[0]
    assert os.path.isfile(exe) and os.access(exe, os.X_OK), program
    # The console script pip generated next to this interpreter is preferred.
    script = os.path.join(os.path.dirname(sys.executable), C.CLI_NAME)
    if os.path.isfile(script):
        assert words == [script, "backproject"]
    else:
        assert words == [sys.executable, "-m", C.CLI_MODULE, "backproject"]


def test_get_program_with_activation(plugin, monkeypatch):
    monkeypatch.setitem(plugin._vars, C.TOMODRGN_ENV_ACTIVATION, " source /opt/gpu/bin/activate && ")
    assert plugin.getActivation() == "source /opt/gpu/bin/activate"
    assert plugin.getProgram("backproject") == \
        "source /opt/gpu/bin/activate && tomodrgn-scipion backproject"


def test_get_program_rejects_bad_subcommand(plugin):
    for bad in ["", "backproject; rm -rf /", "two words", "-x"]:
        with pytest.raises(ValueError):
            plugin.getProgram(bad)


def test_get_environ(plugin, monkeypatch, tmp_path):
    import pyworkflow.utils as pwutils
    monkeypatch.setenv("LD_LIBRARY_PATH", "/old/lib")
    env = plugin.getEnviron()
    assert isinstance(env, pwutils.Environ)
    assert env["LD_LIBRARY_PATH"] == "/old/lib"
    monkeypatch.setitem(plugin._vars, C.TOMODRGN_CUDA_LIB, str(tmp_path))
    env = plugin.getEnviron()
    assert env["LD_LIBRARY_PATH"] == str(tmp_path) + os.pathsep + "/old/lib"
    assert os.environ["LD_LIBRARY_PATH"] == "/old/lib"  # a copy, not os.environ


def test_variables_fall_back_to_environment(monkeypatch):
    """Without pyworkflow registration, getters read os.environ."""
    P = tomodrgn_scipion.Plugin
    monkeypatch.delitem(P._vars, C.TOMODRGN_ENV_ACTIVATION, raising=False)
    monkeypatch.setenv(C.TOMODRGN_ENV_ACTIVATION, "conda activate tdrgn;")
    assert P.getProgram("train") == "conda activate tdrgn && tomodrgn-scipion train"




def test_cli_program_runs(plugin, tmp_path):
    """The program string Scipion would run starts the CLI (top-level --help)."""
    exe_words = shlex.split(plugin.getProgram("backproject"))[:-1]
    proc = subprocess.run(exe_words + ["--help"], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# (c) pyworkflow's own plugin discovery
# ---------------------------------------------------------------------------
def test_pyworkflow_discovers_plugin(tmp_path):
    code = """
    import json, os
    import pyworkflow as pw
    import pyworkflow.config as pwconfig
    domain = pw.Config.getDomain()          # SCIPION_DOMAIN=pwem
    plugins = domain.getPlugins()
    m = plugins.get("tomodrgn_scipion")
    out = {"domain": domain.__module__, "found": m is not None}
    if m is not None:
        inst = getattr(m, "_pluginInstance", None)
        out["instance"] = type(inst).__module__ + "." + type(inst).__name__
        out["bibtex"] = sorted(m._bibtex.keys())
        var = pwconfig.VariablesRegistry.variables().get("TOMODRGN_ENV_ACTIVATION")
        out["var_source"] = var.source if var else None
        out["program"] = m.Plugin.getProgram("backproject")
    print("RESULT=" + json.dumps(out))
    """
    proc = _run_python(code, _scipion_env(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    out = json.loads(line[len("RESULT="):])
    assert out["domain"] == "pwem"
    assert out["found"], proc.stdout + proc.stderr
    assert out["instance"] == "tomodrgn_scipion.Plugin"
    assert out["bibtex"] == sorted([C.CITE_TOMODRGN, C.CITE_CRYODRGN])
    assert out["var_source"] == PLUGIN_NAME
    assert out["program"].endswith("backproject")


def test_protocol_tree_loads_with_plugin(tmp_path):
    """pyworkflow's GUI tree loader merges our protocols.conf without errors."""
    pytest.importorskip("tkinter")
    code = """
    import json, logging
    import pyworkflow as pw
    from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
    errors = []
    class H(logging.Handler):
        def emit(self, record):
            if "Failed to read protocols.conf" in record.getMessage():
                errors.append(record.getMessage())
    logging.getLogger().addHandler(H()); logging.getLogger().setLevel(logging.INFO)
    domain = pw.Config.getDomain()
    tree = ProtocolTreeConfig.load(domain, pw.Config.SCIPION_PROTOCOLS)
    tomo = tree.get("Tomography")
    text = lambda node: str(node.text.get() if hasattr(node.text, "get") else node.text)
    texts = [text(c) for c in tomo.childs] if tomo else []
    sta = [c for c in tomo.childs if text(c) == "Subtomogram averaging"] if tomo else []
    sta_sections = {text(c): [str(p.value.get() if hasattr(p.value, "get") else p.value) for p in c.childs]
                    for c in sta[0].childs if c.childs} if sta else {}
    print("RESULT=" + json.dumps({"errors": errors, "texts": texts, "sta": sta_sections}))
    """
    proc = _run_python(code, _scipion_env(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    out = json.loads(line[len("RESULT="):])
    assert out["errors"] == []
    assert "tomoDRGN" in out["texts"]
    # merged with scipion-em-reliontomo's tree: our section sits beside its refinement and classification
    assert "ProtRelionRefineSubtomograms" in out["sta"]["Classification and Alignment"]
    assert "TomoDrgnProtTrainVAE" in out["sta"]["Heterogeneity (tomoDRGN)"]


# ---------------------------------------------------------------------------
# (d) bibliography
# ---------------------------------------------------------------------------
def test_bibtex_parses_with_pyworkflow_helper():
    import pyworkflow.utils as pwutils
    from tomodrgn_scipion import bibtex
    entries = pwutils.parseBibTex(bibtex.__doc__)
    assert set(entries) == {C.CITE_TOMODRGN, C.CITE_CRYODRGN}
    for key, doi in C.CITATION_DOIS.items():
        assert entries[key]["doi"] == doi
    assert set(tomodrgn_scipion._references) == set(entries)
    assert entries[C.CITE_TOMODRGN]["journal"] == "Nature Methods"
    assert entries[C.CITE_TOMODRGN]["pages"] == "1525--1536"
    assert entries[C.CITE_CRYODRGN]["pages"] == "176--185"


# ---------------------------------------------------------------------------
# (e) import without Scipion
# ---------------------------------------------------------------------------
def test_import_without_pwem(tmp_path):
    code = """
    import sys

    class BlockScipion:
        # Meta-path finder that makes pwem and pyworkflow unimportable.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pwem", "pyworkflow"):
                raise ModuleNotFoundError("No module named %r (blocked)" % name, name=name)
            return None

    sys.meta_path.insert(0, BlockScipion())
    import tomodrgn_scipion
    assert not hasattr(tomodrgn_scipion, "Plugin")
    assert isinstance(tomodrgn_scipion.PWEM_IMPORT_ERROR, ImportError)
    import tomodrgn_scipion.constants
    print("PROGRAM=" + tomodrgn_scipion.cli_program("backproject"))
    import pkgutil
    import tomodrgn_scipion.method as method
    for info in pkgutil.iter_modules(method.__path__):  # every module of the method
        __import__("tomodrgn_scipion.method." + info.name)
    try:
        tomodrgn_scipion.method.cli.main(["simulate", "--help"])
    except SystemExit as exc:  # argparse exits after printing help
        assert exc.code == 0
    bad = sorted(m for m in sys.modules if m.split(".")[0] in ("pwem", "pyworkflow"))
    assert not bad, bad
    print("OK")
    """
    env = dict(os.environ)
    env.pop(C.TOMODRGN_ENV_ACTIVATION, None)
    proc = _run_python(code, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")
    assert "backproject" in proc.stdout
