"""The command line end to end, as the demo and the Scipion protocols run it."""
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from tomodrgn_scipion.method.cli import COMMANDS, main
from tomodrgn_scipion.method.fsc import masked_correlation
from tomodrgn_scipion.method.stacks import write_mrc
from tomodrgn_scipion.method.star import read_star


def test_simulate_then_backproject(tmp_path, capsys, phantom):
    assert main(["simulate", "-o", str(tmp_path / "data"), "-n", "30", "--tilt-max", "30", "--snr", "10", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "simulated 30 particles, 630 tilt images" in out and "particles.star" in out
    star = tmp_path / "data" / "particles.star"
    assert len(read_star(star)) == 630
    assert main(["backproject", str(star), "-o", str(tmp_path / "bp" / "map.mrc"), "--first", "20"]) == 0
    out = capsys.readouterr().out
    assert "back-projected 420 tilt images of 20 particles" in out and "FSC = 0.143 at" in out
    with mrcfile.open(tmp_path / "bp" / "map_filtered.mrc") as m:
        assert m.voxel_size.x == pytest.approx(6.0) and m.data.shape == (32, 32, 32)
        # 20 particles of two states: the map looks like their mean
        assert masked_correlation(m.data, (phantom[0] + phantom[1]) / 2) > 0.9


def test_backproject_index_selection_and_datadir(tmp_path, capsys, sim_high_snr):
    ind = tmp_path / "ind.txt"
    ind.write_text("\n".join(str(i) for i in range(0, 40, 2)) + "\n")
    assert main(["backproject", str(sim_high_snr / "particles.star"), "-o", str(tmp_path / "m.mrc"), "--ind", str(ind),
                 "--datadir", str(sim_high_snr), "--lazy", "--recon-dose-weight", "--recon-tilt-weight"]) == 0
    assert "of 20 particles" in capsys.readouterr().out


def test_simulate_from_volume_files(tmp_path, capsys, phantom):
    write_mrc(tmp_path / "a.mrc", phantom[0], 1.0)
    write_mrc(tmp_path / "b.mrc", phantom[1], 1.0)
    args = ["simulate", "-o", str(tmp_path / "out"), "--volumes", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"),
            "--pixel-size", "13.1", "-n", "4", "--tilt-max", "6", "--continuous"]
    assert main(args) == 0
    assert "continuous" in capsys.readouterr().out
    assert read_star(tmp_path / "out" / "particles.star")["rlnDetectorPixelSize"].unique().tolist() == ["13.1"]
    assert len(np.loadtxt(tmp_path / "out" / "mixing.txt")) == 4


def test_simulate_rejects_mismatched_volumes(tmp_path, capsys, phantom):
    write_mrc(tmp_path / "a.mrc", phantom[0], 1.0)
    write_mrc(tmp_path / "small.mrc", phantom[0][:16, :16, :16], 1.0)
    assert main(["simulate", "-o", str(tmp_path / "o"), "--volumes", str(tmp_path / "a.mrc"), str(tmp_path / "small.mrc")]) == 2
    err = capsys.readouterr().err
    assert "small.mrc" in err and "differ" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help(command):
    proc = subprocess.run([sys.executable, "-m", "tomodrgn_scipion.method.cli", command, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: tomodrgn-scipion " + command in proc.stdout


def test_simulate_datadir_and_uninvert_round_trip(tmp_path, capsys, phantom):
    """Protein-dark stacks written elsewhere: read back with --datadir and --uninvert-data."""
    assert main(["simulate", "-o", str(tmp_path / "star"), "--datadir", str(tmp_path / "images"), "--uninvert-data",
                 "-n", "20", "--tilt-max", "30", "--snr", "20"]) == 0
    star = tmp_path / "star" / "particles.star"
    assert read_star(star)["rlnImageName"][0] == "1@tomo_000.mrcs" and (tmp_path / "images" / "tomo_000.mrcs").is_file()
    capsys.readouterr()
    assert main(["backproject", str(star), "-o", str(tmp_path / "nodir.mrc")]) == 2  # stacks are elsewhere
    err = capsys.readouterr().err
    assert "tomo_000.mrcs" in err and "not found" in err
    for flags, sign in ((["--uninvert-data"], 1), ([], -1)):
        out = tmp_path / f"m{sign}.mrc"
        assert main(["backproject", str(star), "-o", str(out), "--datadir", str(tmp_path / "images"), *flags]) == 0
        corr = masked_correlation(mrcfile.read(out), (phantom[0] + phantom[1]) / 2)
        assert sign * corr > 0.9
