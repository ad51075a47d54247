"""SIGKILL of each writing command at chosen points: what is left under a final name is whole, and the rerun works.

Each run is a real ``tomodrgn-scipion`` process. A small harness stops it at a chosen point of its writing
(the temporary file of an output just created and still empty, or the moment before or after an output's
rename) and says so; the test then kills it with SIGKILL, checks every file under a final name, and reruns
the command in this process (``--load latest`` for training when a checkpoint exists). ``train_vae`` must
end with the weights and z of an uninterrupted run, bit for bit, and leave no temporary file; a second
``train_vae`` into the folder of one still running is refused by the lock.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.starsyntax import check_star_syntax

HARNESS = r"""
import os, sys, tempfile, time
kind, name, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
stem, suffix = os.path.splitext(name)

def stop():
    print("stopped", flush=True)
    time.sleep(120)

real_replace, real_mkstemp = os.replace, tempfile.mkstemp

def replace(src, dst, *a, **k):
    hit = os.path.basename(str(dst)) == name
    if hit and kind == "before":
        stop()
    real_replace(src, dst, *a, **k)
    if hit and kind == "after":
        stop()

def mkstemp(*a, **k):
    r = real_mkstemp(*a, **k)
    if kind == "temp" and k.get("prefix") == f".{stem}." and k.get("suffix", "").endswith(suffix):
        stop()
    return r

os.replace, tempfile.mkstemp = replace, mkstemp
from tomodrgn_scipion.method.cli import main
sys.exit(main(argv))
"""

SMALL_VAE = ["--zdim", "2", "-n", "2", "--enc-layers-A", "1", "--enc-dim-A", "8", "--out-dim-A", "4",
             "--enc-layers-B", "1", "--enc-dim-B", "8", "--dec-layers", "1", "--dec-dim", "8", "--seed", "0"]
TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tomodrgn_scipion.method.phantom import two_state_phantom
    from tomodrgn_scipion.method.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("kill")
    simulate(list(two_state_phantom(16)), out / "data", SimulationConfig(
        n_particles=8, particles_per_tomogram=4, tilt_max=6.0, tilt_step=3.0, snr=1.0, seed=5))
    assert main(["train_vae", str(out / "data/particles.star"), "-o", str(out / "reference"), *SMALL_VAE]) == 0
    (out / "ind.txt").write_text("0\n3\n5\n")
    return out


def stopped_run(kind: str, name: str, argv: list[str]) -> subprocess.Popen:
    """A tomodrgn-scipion process stopped at ``kind`` (temp, before, after) of the output named ``name``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, kind, name, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.strip() == "stopped":
            return proc
    proc.wait()
    raise AssertionError(f"the run ended (status {proc.returncode}) before {kind} {name}: {proc.stderr.read()[-2000:]}")


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def check_whole(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder`` is a whole file of its kind; returns them."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for p in files:
        if p.suffix == ".pt":
            ck = torch.load(p, weights_only=True)
            assert {"epoch", "model", "optimizer", "model_config", "norm"} <= set(ck), p
        elif p.suffix == ".npy":
            assert np.isfinite(np.load(p, allow_pickle=False)).all(), p
        elif p.suffix in (".mrc", ".mrcs"):
            with mrcfile.open(p) as m:  # strict: a short or inconsistent file raises
                assert m.data is not None and np.isfinite(m.data).all(), p
        elif p.suffix == ".star":
            check_star_syntax(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.read_bytes()[-8:-4] == b"IEND", p
        elif p.suffix in (".csv", ".txt"):
            assert p.read_text().endswith("\n"), p
    return files


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if TMP_RE.match(p.name)]


TRAIN_POINTS = [
    ("temp", "weights.1.pt"),   # the first checkpoint's temporary file exists, still empty
    ("before", "weights.2.pt"),  # the last checkpoint written under its temporary name, not renamed
    ("after", "weights.2.pt"),   # between the last checkpoint and the final files
    ("after", "z.2.npy"),        # final weights written, z of the last epoch in part
    ("before", "z_logvar.npy"),  # everything but the very last file
]


@pytest.mark.parametrize("kind,name", TRAIN_POINTS, ids=[f"{k}_{n}" for k, n in TRAIN_POINTS])
def test_train_vae_killed_then_resumed_ends_as_uninterrupted(data, tmp_path, capsys, kind, name):
    out = tmp_path / "run"
    argv = ["train_vae", str(data / "data/particles.star"), "-o", str(out), *SMALL_VAE]
    proc = stopped_run(kind, name, argv)
    if (kind, name) == ("before", "weights.2.pt"):
        # while it runs, a second run into the same folder is refused by the lock
        assert main(argv) == 2
        assert "another training run" in capsys.readouterr().err
    sigkill(proc)
    check_whole(out)
    has_checkpoint = any(re.fullmatch(r"weights\.\d+\.pt", p.name) for p in out.iterdir())
    assert main(argv + (["--load", "latest"] if has_checkpoint else [])) == 0
    assert not temporaries(out)
    check_whole(out)
    ref = data / "reference"
    for f in ("z.npy", "z_logvar.npy", "z.2.npy", "z.1.npy"):
        assert np.array_equal(np.load(out / f), np.load(ref / f)), f
    for f in ("weights.pt", "weights.2.pt"):
        a, b = torch.load(out / f, weights_only=True)["model"], torch.load(ref / f, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in b), f


OTHER_POINTS = [
    ("backproject", "after", "map_half1.mrc",
     lambda d, o: ["backproject", str(d / "data/particles.star"), "-o", str(o / "map.mrc")]),
    ("filter", "temp", "sel.star",
     lambda d, o: ["filter", str(d / "data/particles.star"), "--ind", str(d / "ind.txt"), "-o", str(o / "sel.star")]),
    ("simulate", "temp", "tomo_001.mrcs",
     lambda d, o: ["simulate", "-o", str(o / "sim"), "-n", "8", "--particles-per-tomogram", "4", "--phantom-box", "16", "--tilt-max", "6"]),
    ("eval_vol", "before", "vol_001.mrc",
     lambda d, o: ["eval_vol", "-w", str(d / "reference/weights.pt"), "-c", str(d / "reference/config.json"),
                   "--zfile", str(d / "reference/z.npy"), "-o", str(o / "vols")]),
]


@pytest.mark.parametrize("command,kind,name,args", OTHER_POINTS, ids=[f"{c}_{k}_{n}" for c, k, n, _ in OTHER_POINTS])
def test_killed_command_leaves_whole_files_and_reruns(data, tmp_path, command, kind, name, args):
    out = tmp_path / "out"
    out.mkdir()
    argv = args(data, out)
    sigkill(stopped_run(kind, name, argv))
    before = {p: p.read_bytes() for p in check_whole(out)}
    if kind == "temp" and command != "simulate":
        # outputs appear together when the command ends well; killed before that, none is there
        assert not before
    assert main(argv) == 0
    files = check_whole(out)
    assert any(p.name == name for p in files)
    assert set(before) <= set(files)
