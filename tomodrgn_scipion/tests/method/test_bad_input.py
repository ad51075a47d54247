"""Bad input: one clear line naming the file and the row or column, exit status 2, inputs untouched."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.errors import InputError
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.star import read_star, write_star


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, phantom) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    simulate([phantom[0]], out, SimulationConfig(n_particles=4, particles_per_tomogram=2, tilt_max=6, snr=1.0))
    return out


@pytest.fixture
def work(tiny, tmp_path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "data"))


def tree_digest(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_backproject(star: Path, tmp_path: Path, capsys, *extra: str) -> str:
    before = tree_digest(star.parent)
    code = main(["backproject", str(star), "-o", str(tmp_path / "out" / "map.mrc"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert tree_digest(star.parent) == before  # inputs untouched
    assert not (tmp_path / "out" / "map.mrc").exists()
    return err


def edit_star(star: Path, fn) -> Path:
    df = read_star(star)
    df = fn(df)
    write_star(df, star)
    return star


def test_missing_required_column(work, tmp_path, capsys):
    star = edit_star(work / "particles.star", lambda df: df.drop(columns=["rlnCtfScalefactor"]))
    err = run_backproject(star, tmp_path, capsys)
    assert "particles.star" in err and "_rlnCtfScalefactor" in err


def test_missing_image_file(work, tmp_path, capsys):
    (work / "stacks" / "tomo_001.mrcs").unlink()
    err = run_backproject(work / "particles.star", tmp_path, capsys)
    assert "tomo_001.mrcs" in err and "row 11" in err and "not found" in err


def test_image_index_beyond_stack(work, tmp_path, capsys):
    def bump(df):
        df.loc[3, "rlnImageName"] = "99@stacks/tomo_000.mrcs"
        return df

    err = run_backproject(edit_star(work / "particles.star", bump), tmp_path, capsys)
    assert "row 4" in err and "image 99" in err and "tomo_000.mrcs" in err


@pytest.mark.parametrize("name,expected", [("x@stacks/tomo_000.mrcs", "expected N@stack.mrcs"), ("0@stacks/tomo_000.mrcs", "image 0 of")])
def test_malformed_image_name(work, tmp_path, capsys, name, expected):
    def spoil(df):
        df.loc[5, "rlnImageName"] = name
        return df

    err = run_backproject(edit_star(work / "particles.star", spoil), tmp_path, capsys)
    assert "row 6" in err and expected in err


def _rewrite_stack(path: Path, data: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.float32))


def test_stacks_with_different_boxes(work, tmp_path, capsys):
    _rewrite_stack(work / "stacks" / "tomo_001.mrcs", np.zeros((10, 16, 16)))
    err = run_backproject(work / "particles.star", tmp_path, capsys)
    assert "tomo_001.mrcs" in err and "differs" in err and "32" in err and "16" in err


def test_non_square_box(work, tmp_path, capsys):
    _rewrite_stack(work / "stacks" / "tomo_000.mrcs", np.zeros((10, 32, 30)))
    err = run_backproject(work / "particles.star", tmp_path, capsys)
    assert "tomo_000.mrcs" in err and "square" in err


def test_odd_box(work, tmp_path, capsys):
    _rewrite_stack(work / "stacks" / "tomo_000.mrcs", np.zeros((10, 31, 31)))
    err = run_backproject(work / "particles.star", tmp_path, capsys)
    assert "tomo_000.mrcs" in err and "odd" in err


def test_empty_star(work, tmp_path, capsys):
    star = edit_star(work / "particles.star", lambda df: df.iloc[:0])
    err = run_backproject(star, tmp_path, capsys)
    assert "particles.star" in err and "no particle rows" in err


def test_header_only_file(work, tmp_path, capsys):
    star = work / "empty.star"
    star.write_text("data_\n\nloop_\n_rlnImageName #1\n")
    err = run_backproject(star, tmp_path, capsys)
    assert "empty.star" in err and "no particle rows" in err


@pytest.mark.parametrize("bad", ["nan", "abc"])
def test_nan_or_text_in_numeric_column(work, tmp_path, capsys, bad):
    def spoil(df):
        df.loc[6, "rlnDefocusU"] = bad
        return df

    err = run_backproject(edit_star(work / "particles.star", spoil), tmp_path, capsys)
    assert "row 7" in err and "_rlnDefocusU" in err and bad in err


@pytest.mark.parametrize("column,value", [("rlnDetectorPixelSize", "7.0"), ("rlnVoltage", "200.0")])
def test_particle_tilts_disagree(work, tmp_path, capsys, column, value):
    def spoil(df):
        df.loc[2, column] = value
        return df

    err = run_backproject(edit_star(work / "particles.star", spoil), tmp_path, capsys)
    assert "row 3" in err and f"_{column}" in err and "000_000000" in err


def test_missing_star_file(tmp_path, capsys):
    code = main(["backproject", str(tmp_path / "nope.star"), "-o", str(tmp_path / "m.mrc")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.star" in err and "not found" in err


def test_bad_index_file(work, tmp_path, capsys):
    ind = tmp_path / "ind.txt"
    ind.write_text("0\n7\n")
    err = run_backproject(work / "particles.star", tmp_path, capsys, "--ind", str(ind))
    assert "ind.txt" in err and "7" in err and "out of range" in err


def test_console_script_prints_no_traceback(work, tmp_path):
    edit_star(work / "particles.star", lambda df: df.drop(columns=["rlnGroupName"]))
    proc = subprocess.run([sys.executable, "-m", "tomodrgn_scipion.method.cli", "backproject", str(work / "particles.star"),
                           "-o", str(tmp_path / "m.mrc")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "_rlnGroupName" in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_absent(work, tmp_path, capsys):
    err = run_backproject(work / "particles.star", tmp_path, capsys, "--device", "cuda")
    assert "CUDA" in err and "--device cuda" in err


def test_unknown_device(work, tmp_path, capsys):
    err = run_backproject(work / "particles.star", tmp_path, capsys, "--device", "gpu0")
    assert "--device gpu0" in err


def test_device_auto_with_a_gpu_number():
    """auto:N (what Scipion's "use GPU" gives): GPU N when torch sees CUDA, else the CPU; no error either way."""
    import torch

    from tomodrgn_scipion.method.cliutil import resolve_device

    assert resolve_device("auto:1") == ("cuda:1" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="auto:x"):
        resolve_device("auto:x")
