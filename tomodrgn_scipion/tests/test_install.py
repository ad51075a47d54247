"""``scipion3 installb tomodrgn``: the torch build chosen from the NVIDIA driver, the commands that
``Plugin.defineBinaries`` registers with Scipion's real installer (run here with a fake interpreter and
a fake ``nvidia-smi`` on PATH, so nothing is downloaded), and ``TOMODRGN_ENV_ACTIVATION`` defaulting to
the environment once it is installed."""
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import tomodrgn_scipion
from tomodrgn_scipion import constants as C
from tomodrgn_scipion import install
from tomodrgn_scipion.tests.test_plugin import _run_python, _scipion_env

CHECKOUT = Path(tomodrgn_scipion.__file__).resolve().parents[1]


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_nvidia_smi(bindir: Path, output: str, status: int = 0) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    _executable(bindir / "nvidia-smi", f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(output)}\nexit {status}\n")


@pytest.mark.parametrize("text, expected", [("575.57.08\n", (575, 57, 8)), ("580.65.06\n580.65.06\n", (580, 65, 6)),
                                            ("470.82", (470, 82)), ("No devices were found", None), ("", None)])
def test_parse_driver_version(text, expected):
    assert install.parse_driver_version(text) == expected


@pytest.mark.parametrize("output, status, variant", [
    ("590.44.01", 0, "cu130"), ("580.65.06", 0, "cu130"), ("575.57.08", 0, "cu128"), ("570.26", 0, "cu128"),
    ("550.54.14", 0, "cu126"), ("525.60.13", 0, "cu126"), ("525.60.11", 0, "cpu"), ("470.82.01", 0, "cpu"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver", 9, "cpu")])
def test_variant_from_fake_nvidia_smi(tmp_path, monkeypatch, output, status, variant):
    _fake_nvidia_smi(tmp_path / "bin", output, status)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(install.TORCH_VARIANT_VAR, raising=False)
    assert install.chosen_variant() == variant


def test_no_nvidia_smi_means_cpu(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    _executable(tmp_path / "bin" / "sh", "#!/bin/false\n")  # a PATH with no nvidia-smi at all
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(install.TORCH_VARIANT_VAR, raising=False)
    assert install.driver_version() is None and install.chosen_variant() == "cpu"


def test_forced_variant(monkeypatch):
    monkeypatch.setenv(install.TORCH_VARIANT_VAR, "cu126")
    assert install.chosen_variant() == "cu126"
    monkeypatch.setenv(install.TORCH_VARIANT_VAR, "cuda12")
    with pytest.raises(ValueError, match="TOMODRGN_TORCH_VARIANT='cuda12': expected cpu, cuNNN or rocmX.Y"):
        install.chosen_variant()


FAKE_PYTHON = r"""#!/bin/bash
# A stand-in for Scipion's interpreter: "-m venv DIR" makes DIR/bin/python, a fake pip that logs its arguments.
set -e
echo "python $*" >> "$FAKE_LOG"
[ "$1 $2" = "-m venv" ] || exit 3
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'EOS'
#!/bin/bash
echo "venv-python $*" >> "$FAKE_LOG"
EOS
printf '#!/bin/bash\necho "tomodrgn-scipion $*" >> "$FAKE_LOG"\n' > "$3/bin/tomodrgn-scipion"
touch "$3/bin/activate"
chmod +x "$3/bin/python" "$3/bin/tomodrgn-scipion"
"""


def _registered_command(monkeypatch, fake_python: Path) -> tuple:
    """Run the real ``Plugin.defineBinaries`` on Scipion's real installer ``Environment``."""
    from scipion.install.funcs import Environment

    monkeypatch.setattr(sys, "executable", str(fake_python))
    env = Environment(args=[])
    tomodrgn_scipion.Plugin.defineBinaries(env)
    name = install.package_dir_name(tomodrgn_scipion.__version__)
    assert ("tomodrgn", tomodrgn_scipion.__version__) in env._packages["tomodrgn"]
    target = env.getTarget(name)
    assert not target.isDefault()  # `scipion3 installb tomodrgn`, not every installp
    commands = [c for c in target.getCommands()
                if isinstance(c._cmd, str) and any(t.endswith(install.INSTALLED_FLAG) for t in c._targets)]
    assert len(commands) == 1
    return commands[0], name


def test_define_binaries_runs_with_fake_installer(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    _fake_nvidia_smi(bindir, "575.57.08")
    fake_python = _executable(tmp_path / "python3.11", FAKE_PYTHON)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(install.TORCH_VARIANT_VAR, raising=False)
    command, name = _registered_command(monkeypatch, fake_python)
    assert command._targets[-1].endswith(os.path.join(name, install.INSTALLED_FLAG))
    assert command._cwd.endswith(name)

    # what `scipion3 installb` runs in the package folder (as Command.execute does: sh, cwd)
    pkg = tmp_path / name
    pkg.mkdir()
    log = tmp_path / "log.txt"
    done = subprocess.run(command._cmd, shell=True, cwd=pkg, env={**os.environ, "FAKE_LOG": str(log)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "python -m venv venv"
    pip = "venv-python -m pip install "
    assert calls[1] == pip + "--upgrade pip"
    assert calls[2] == pip + "torch --index-url https://download.pytorch.org/whl/cu128"
    assert calls[3] == pip + " ".join(C.METHOD_REQUIREMENTS)
    assert calls[4] == pip + f"--no-deps -e {CHECKOUT}"  # a development checkout: itself, editable
    assert calls[5] == "tomodrgn-scipion --help"
    assert (pkg / install.INSTALLED_FLAG).read_text().strip() == "cu128"
    assert install.installed(str(pkg))


def test_define_binaries_failing_step_leaves_no_flag(tmp_path, monkeypatch):
    fake_python = _executable(tmp_path / "python3.11", "#!/bin/sh\necho 'no venv module' >&2\nexit 1\n")
    monkeypatch.setenv(install.TORCH_VARIANT_VAR, "cpu")
    command, name = _registered_command(monkeypatch, fake_python)
    done = subprocess.run(command._cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no venv module" in done.stderr
    assert not install.installed(str(tmp_path))


def test_define_binaries_reports_bad_variant(tmp_path, monkeypatch):
    monkeypatch.setenv(install.TORCH_VARIANT_VAR, "gpu")
    command, _ = _registered_command(monkeypatch, Path(sys.executable))
    done = subprocess.run(command._cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "tomodrgn: TOMODRGN_TORCH_VARIANT='gpu': expected cpu, cuNNN or rocmX.Y"


def test_release_install_takes_the_pypi_package(tmp_path):
    pkg = tmp_path / "site-packages" / "tomodrgn_scipion"
    pkg.mkdir(parents=True)
    assert install.method_source(str(pkg / "__init__.py"), "1.2.3") == "scipion-em-tomodrgn==1.2.3"


def test_activation_defaults_to_the_installed_environment(tmp_path):
    """A fresh pyworkflow process: empty before `installb`, the environment's activation after it."""
    code = """
    import json
    import pyworkflow as pw
    plugins = pw.Config.getDomain().getPlugins()
    m = plugins["tomodrgn_scipion"]
    print("RESULT=" + json.dumps({"activation": m.Plugin.getActivation(), "dir": m.Plugin.getPackageDir(),
                                  "program": m.Plugin.getProgram("train_vae")}))
    """

    def result() -> dict:
        proc = _run_python(code, _scipion_env(tmp_path), tmp_path)
        assert proc.returncode == 0, proc.stderr
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
        return json.loads(line[len("RESULT="):])

    before = result()
    assert before["activation"] == ""
    pkg = Path(before["dir"])
    assert pkg == tmp_path / "software" / "em" / install.package_dir_name(tomodrgn_scipion.__version__)
    (pkg / "venv" / "bin").mkdir(parents=True)
    (pkg / "venv" / "bin" / "activate").touch()
    (pkg / install.INSTALLED_FLAG).write_text("cpu\n")
    after = result()
    assert after["activation"] == f". {pkg / 'venv' / 'bin' / 'activate'}"
    assert after["program"] == f". {pkg / 'venv' / 'bin' / 'activate'} && tomodrgn-scipion train_vae"
