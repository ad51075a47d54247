"""``mapback``: ChimeraX scripts placing particles in their tomograms, coloured by label.

The orientation convention is pinned against the simulator: the volume placed by the script's
``view matrix``, rendered independently (scipy ``affine_transform``), projected along z and passed
through the CTF of the particle's 0-degree tilt image, must reproduce that simulated image, and the
transposed rotation must not.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import affine_transform

from tomodrgn_scipion.method import fft
from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.ctf import compute_ctf
from tomodrgn_scipion.method.mapback import safe_name, _file_names
from tomodrgn_scipion.method.plots import OKABE_ITO, UNASSIGNED
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.stacks import ImageSource, read_volume
from tomodrgn_scipion.method.star import TiltSeriesStar
from tomodrgn_scipion.method.transforms import euler_to_matrix

BOX = 32
PIXEL = 6.0
N_PARTICLES = 6
COORD_PIXEL = 10.0  # coordinates binned differently from the particles, as in real tomograms


@pytest.fixture(scope="module")
def sim(tmp_path_factory, phantom) -> Path:
    """Noise-free, unshifted particles of both phantom states; tilts 0, +6, -6 (0 acquired first)."""
    out = tmp_path_factory.mktemp("mapback_sim")
    simulate(list(phantom), out, SimulationConfig(n_particles=N_PARTICLES, particles_per_tomogram=3, tilt_max=6.0,
                                                  tilt_step=6.0, snr=0.0, shift_std=0.0, pixel_size=PIXEL, seed=1))
    return out


def ground_truth(sim: Path) -> dict[str, np.ndarray]:
    import pandas as pd

    gt = pd.read_csv(sim / "ground_truth.csv")
    return {"euler": gt[["rot", "tilt", "psi"]].to_numpy(float), "tomogram": gt["tomogram"].to_numpy(str),
            "label": gt["label"].to_numpy(int)}


def coordinates(n: int) -> np.ndarray:
    """Particle coordinates in tomogram pixels, (N, 3)."""
    return np.random.default_rng(7).uniform(50.0, 450.0, (n, 3)).round(2)


def write_volstar(path: Path, coords_px: np.ndarray, euler: np.ndarray, tomograms, pixel: float | None = COORD_PIXEL,
                  origin: tuple[str, np.ndarray] | None = None) -> Path:
    """A Warp-style volume-series star: one row per particle."""
    cols = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
            "rlnMicrographName"]
    values = [[f"{v:.3f}" for v in c] + [f"{v:.6f}" for v in e] + [f"{t}.tomostar"]
              for c, e, t in zip(coords_px, euler, tomograms)]
    if pixel is not None:
        cols.append("rlnPixelSize")
        values = [v + [repr(pixel)] for v in values]
    if origin is not None:
        kind, shifts = origin
        cols += [f"rlnOrigin{a}{kind}" for a in "XYZ"]
        values = [v + [f"{s:.4f}" for s in sh] for v, sh in zip(values, shifts)]
    text = "\ndata_\n\nloop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(cols))
    text += "".join("\t".join(v) + "\n" for v in values) + "\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def volstar(sim, tmp_path_factory) -> Path:
    """Volume-series star of the simulated particles: their 3-D orientations and made-up coordinates."""
    gt = ground_truth(sim)
    path = tmp_path_factory.mktemp("mapback_star") / "volumes.star"
    return write_volstar(path, coordinates(N_PARTICLES), gt["euler"], gt["tomogram"])


def parse_volumes(cxc: Path) -> list[tuple[int, np.ndarray, str, str]]:
    """(particle, 3x4 matrix, volume path, colour) of every volume the script places."""
    text = cxc.read_text()
    opens = re.findall(r'^open "([^"]+)" name particle_(\d+)$', text, re.M)
    mats = re.findall(r"^view matrix models #(\d+),(\S+)$", text, re.M)
    colors = re.findall(r"^volume #(\d+) .*color (#[0-9A-Fa-f]{6})$", text, re.M)
    assert len(opens) == len(mats) == len(colors)
    out = []
    for k, ((vol, pid), (model, m), (model2, color)) in enumerate(zip(opens, mats, colors), 1):
        assert int(model) == int(model2) == k  # models numbered in order of opening
        out.append((int(pid), np.array([float(v) for v in m.split(",")]).reshape(3, 4), vol, color))
    return out


def parse_markers(cxc: Path) -> list[tuple[int, np.ndarray, str, float]]:
    """(marker set, position in A, colour, radius) of every marker."""
    pat = r"^marker #(\d+) position (\S+),(\S+),(\S+) color (#[0-9A-Fa-f]{6}) radius (\S+)$"
    return [(int(s), np.array([float(x), float(y), float(z)]), c, float(r))
            for s, x, y, z, c, r in re.findall(pat, cxc.read_text(), re.M)]


def place_volume(vol: np.ndarray, matrix: np.ndarray, pixel: float, center_a: np.ndarray, box: int) -> np.ndarray:
    """Render a volume as ChimeraX would place it, on a box of the same pixel size centred on ``center_a``.

    ChimeraX puts voxel ``v`` (x, y, z index; header origin 0) at ``R (v pixel) + t`` in the scene. The output
    voxel ``u`` sits at scene point ``center_a + pixel (u - box // 2)``, so it takes the input value at
    ``R^-1 (scene - t) / pixel``. Arrays are indexed [z, y, x], hence the axis reversal ``P``.
    """
    rot, t = matrix[:, :3], matrix[:, 3]
    rinv = np.linalg.inv(rot)
    c = np.full(3, box // 2, dtype=float)
    rev = np.eye(3)[::-1]
    offset = rev @ rinv @ ((center_a - t) / pixel - c)
    return affine_transform(vol.astype(np.float64), rev @ rinv @ rev, offset=offset, order=3, mode="constant")


def image_model(vol_placed: np.ndarray, star: TiltSeriesStar, row: int) -> np.ndarray:
    """Protein-light image of a placed volume: projection along z, times the CTF of star row ``row``."""
    d = vol_placed.shape[0]
    k = (np.arange(d) - d // 2) / d
    kx, ky = np.meshgrid(k, k)
    freqs = torch.as_tensor(np.stack([kx.ravel(), ky.ravel()], 1) / star.pixel_size)
    params = [torch.as_tensor(v[[row]]) for v in (star.dfu, star.dfv, star.dfang, star.voltage, star.cs, star.w, star.phase_shift)]
    ctf = compute_ctf(freqs, *params).numpy().reshape(d, d) * (kx ** 2 + ky ** 2 < 0.25)
    proj = torch.as_tensor(vol_placed.sum(axis=0))
    return -fft.ifft2_center(fft.fft2_center(proj) * torch.as_tensor(ctf)).real.numpy()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def tree_digest(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------- orientation
def test_volume_star_angles_are_the_zero_tilt_image_angles(sim):
    """The 0-degree image's pose is the particle's 3-D orientation (the stage tilt Ry(0) is the identity)."""
    star = TiltSeriesStar(sim / "particles.star")
    gt = ground_truth(sim)
    assert star.particle_ids == [f"{t[-3:]}_{i % 3:06d}" for i, t in enumerate(gt["tomogram"])]
    for i, rows in enumerate(star.rows_of_particle):
        row = rows[0]
        assert star.stage_tilt_deg[row] == 0.0
        a_img = euler_to_matrix(*torch.as_tensor(star.euler[row]))[0]
        a_gt = euler_to_matrix(*torch.as_tensor(gt["euler"][i]))[0]
        assert torch.allclose(a_img, a_gt, atol=1e-4)


def test_volumes_reproduce_the_simulated_zero_tilt_images(sim, volstar, tmp_path, phantom):
    """Core convention: the script's rotation is RELION's A (not A^T) about the volume centre."""
    out = tmp_path / "out"
    assert main(["mapback", str(volstar), "--labels", str(sim / "labels.txt"), "-o", str(out), "--mode", "volumes",
                 "--vols-dir", str(sim / "volumes"), "--particles", str(sim / "particles.star")]) == 0
    star = TiltSeriesStar(sim / "particles.star")
    images = ImageSource(star.image_names, star.path)
    gt, coords = ground_truth(sim), coordinates(N_PARTICLES)
    placed = [p for cxc in sorted(out.glob("*.cxc")) for p in parse_volumes(cxc)]
    assert sorted(p[0] for p in placed) == list(range(N_PARTICLES))
    right, wrong = [], []
    for pid, m, vol_path, _ in placed:
        assert Path(vol_path) == (sim / "volumes" / f"vol_{gt['label'][pid]:03d}.mrc").resolve()
        vol, pixel = read_volume(vol_path)
        np.testing.assert_array_equal(vol, phantom[gt["label"][pid]])
        row = star.rows_of_particle[pid][0]
        image = images.get([row])[0].astype(np.float64)
        center = coords[pid] * COORD_PIXEL
        m_t = m.copy()
        m_t[:, :3] = m[:, :3].T
        m_t[:, 3] = center - m_t[:, :3] @ np.full(3, BOX // 2 * pixel)  # same centre, transposed rotation
        right.append(corr(image_model(place_volume(vol, m, pixel, center, BOX), star, row), image))
        wrong.append(corr(image_model(place_volume(vol, m_t, pixel, center, BOX), star, row), image))
    print("correlation with A:", np.round(right, 4), "with A^T:", np.round(wrong, 4))
    assert min(right) > 0.99
    assert max(wrong) < min(right) - 0.1
    assert np.mean(wrong) < 0.85


def test_translation_puts_volume_centre_at_particle(sim, tmp_path):
    """t = centre - A c: the volume's centre voxel lands on coordinate x pixel size - origin (A or px)."""
    gt, coords = ground_truth(sim), coordinates(N_PARTICLES)
    shifts = np.random.default_rng(3).normal(0.0, 2.0, (N_PARTICLES, 3))
    c_model = np.full(3, BOX // 2 * PIXEL)  # vol_000.mrc: header origin 0, 6 A voxels
    for kind, origin_a in (("Angst", shifts), ("", shifts * COORD_PIXEL)):
        star = write_volstar(tmp_path / f"v{kind}.star", coords, gt["euler"], gt["tomogram"], origin=(kind, shifts))
        out = tmp_path / f"out{kind}"
        assert main(["mapback", str(star), "--labels", str(sim / "labels.txt"), "-o", str(out), "--mode", "volumes",
                     "--vols-dir", str(sim / "volumes")]) == 0
        placed = [p for cxc in sorted(out.glob("*.cxc")) for p in parse_volumes(cxc)]
        assert len(placed) == N_PARTICLES
        for pid, m, _, _ in placed:
            want = coords[pid] * COORD_PIXEL - origin_a[pid]
            np.testing.assert_allclose(m[:, :3] @ c_model + m[:, 3], want, atol=2e-3)
            np.testing.assert_allclose(m[:, :3] @ m[:, :3].T, np.eye(3), atol=1e-5)


def test_simulator_volume_star_maps_back(sim, tmp_path):
    """simulate's particles_volumes.star is accepted as is, with its particles.star, in both modes."""
    vol_star = sim / "particles_volumes.star"
    for mode in ("markers", "volumes"):
        out = tmp_path / mode
        assert main(["mapback", str(vol_star), "--labels", str(sim / "labels.txt"), "-o", str(out), "--mode", mode,
                     "--vols-dir", str(sim / "volumes"), "--particles", str(sim / "particles.star")]) == 0
        assert sorted(p.name for p in out.glob("*.cxc")) == ["tomo_000.cxc", "tomo_001.cxc"]
    from tomodrgn_scipion.method.star import read_star

    df = read_star(vol_star)
    coords = df[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float) * PIXEL
    markers = parse_markers(tmp_path / "markers" / "tomo_001.cxc")
    np.testing.assert_allclose(np.stack([m[1] for m in markers]), coords[3:], atol=2e-3)
    placed = parse_volumes(tmp_path / "volumes" / "tomo_000.cxc")
    assert [p[0] for p in placed] == [0, 1, 2]


def test_coords_pixel_size_overrides_the_star(sim, volstar, tmp_path):
    out = tmp_path / "out"
    assert main(["mapback", str(volstar), "--labels", str(sim / "labels.txt"), "-o", str(out),
                 "--coords-pixel-size", "2.5"]) == 0
    coords = coordinates(N_PARTICLES)
    markers = parse_markers(out / "tomo_000.cxc")
    np.testing.assert_allclose(np.stack([m[1] for m in markers]), coords[:3] * 2.5, atol=2e-3)


# -------------------------------------------------------------------------------------------- markers
def test_markers_one_per_particle_coloured_by_label(sim, tmp_path, capsys):
    gt, coords = ground_truth(sim), coordinates(N_PARTICLES)
    star = write_volstar(tmp_path / "v.star", coords, gt["euler"], gt["tomogram"])
    labels = np.array([2, 0, -1, 1, 2, 0])
    (tmp_path / "labels.txt").write_text("".join(f"{v}\n" for v in labels))
    out = tmp_path / "out"
    assert main(["mapback", str(star), "--labels", str(tmp_path / "labels.txt"), "-o", str(out),
                 "--particles", str(sim / "particles.star")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and printed[-1].endswith("mapback_summary.txt")
    assert sorted(p.name for p in out.iterdir()) == ["mapback_summary.txt", "tomo_000.cxc", "tomo_001.cxc"]
    colors = {0: OKABE_ITO[0], 1: OKABE_ITO[1], 2: OKABE_ITO[2], -1: UNASSIGNED}
    for t, cxc in enumerate(("tomo_000.cxc", "tomo_001.cxc")):
        markers = parse_markers(out / cxc)
        members = np.arange(3 * t, 3 * t + 3)
        assert len(markers) == 3
        for (mset, pos, color, radius), i in zip(markers, members):
            assert mset == 1
            np.testing.assert_allclose(pos, coords[i] * COORD_PIXEL, atol=2e-3)
            assert color.upper() == colors[labels[i]].upper()
            assert radius == pytest.approx(BOX * PIXEL / 4)  # a quarter of the box of the --particles stacks
    summary = (out / "mapback_summary.txt").read_text().splitlines()
    table = {line.split("\t")[0]: line.split("\t") for line in summary if not line.startswith("#")}
    assert table["label"] == ["label", "color", "tomo_000.tomostar", "tomo_001.tomostar", "total"]
    assert table["2"] == ["2", OKABE_ITO[2], "1", "1", "2"]
    assert table["-1"] == ["-1", UNASSIGNED, "1", "0", "1"]
    assert table["all"][-1] == "6"


def test_marker_radius_default_and_override(sim, volstar, tmp_path):
    out = tmp_path / "a"
    assert main(["mapback", str(volstar), "--labels", str(sim / "labels.txt"), "-o", str(out)]) == 0
    assert {m[3] for m in parse_markers(out / "tomo_001.cxc")} == {50.0}  # box unknown
    out = tmp_path / "b"
    assert main(["mapback", str(volstar), "--labels", str(sim / "labels.txt"), "-o", str(out),
                 "--marker-radius", "33"]) == 0
    assert {m[3] for m in parse_markers(out / "tomo_001.cxc")} == {33.0}


def test_tomogram_selects_one_file(sim, volstar, tmp_path, capsys):
    for name in ("tomo_001.tomostar", "tomo_001"):
        out = tmp_path / name
        assert main(["mapback", str(volstar), "--labels", str(sim / "labels.txt"), "-o", str(out),
                     "--tomogram", name]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["mapback_summary.txt", "tomo_001.cxc"]
        assert len(parse_markers(out / "tomo_001.cxc")) == 3
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_unlabelled_particles_are_grey_markers_in_volumes_mode(sim, volstar, tmp_path):
    labels = np.loadtxt(sim / "labels.txt", dtype=int)
    labels[[0, 4]] = -1
    (tmp_path / "labels.txt").write_text("".join(f"{v}\n" for v in labels))
    out = tmp_path / "out"
    assert main(["mapback", str(volstar), "--labels", str(tmp_path / "labels.txt"), "-o", str(out),
                 "--mode", "volumes", "--vols-dir", str(sim / "volumes"), "--vol-level", "0.5"]) == 0
    vols, markers = parse_volumes(out / "tomo_000.cxc"), parse_markers(out / "tomo_000.cxc")
    assert [v[0] for v in vols] == [1, 2]
    assert [(m[0], m[2]) for m in markers] == [(3, UNASSIGNED)]  # marker set numbered after the volumes
    assert "level 0.5 " in (out / "tomo_000.cxc").read_text()


def test_file_names_are_safe_and_distinct():
    assert safe_name("TS 01/tomo:a.tomostar") == "tomo_a"
    assert safe_name("../x.mrc") == "x"
    assert _file_names(["a/t.mrc", "b/t.mrc", "t"]) == {"a/t.mrc": "t", "b/t.mrc": "t_2", "t": "t_3"}


# ------------------------------------------------------------------------------------------ bad input
def bad(args: list[str], capsys, folder: Path) -> str:
    before = tree_digest(folder)
    code = main(["mapback", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert tree_digest(folder) == before  # inputs untouched
    return err


@pytest.fixture
def work(sim, volstar, tmp_path) -> Path:
    data = Path(shutil.copytree(sim, tmp_path / "data"))
    shutil.copy(volstar, data / "volumes.star")
    return data


def test_particles_count_mismatch(work, tmp_path, capsys):
    gt = ground_truth(work)
    star = write_volstar(work / "five.star", coordinates(5), gt["euler"][:5], gt["tomogram"][:5])
    (work / "five.txt").write_text("0\n1\n0\n1\n0\n")
    err = bad([str(star), "--labels", str(work / "five.txt"), "-o", str(tmp_path / "o"),
               "--particles", str(work / "particles.star")], capsys, work)
    assert "five.star" in err and "5 particles" in err and "6 particles" in err


def test_particles_grouping_mismatch(work, tmp_path, capsys):
    gt = ground_truth(work)
    tomos = gt["tomogram"].copy()
    tomos[2] = "tomo_001"
    star = write_volstar(work / "moved.star", coordinates(N_PARTICLES), gt["euler"], tomos)
    err = bad([str(star), "--labels", str(work / "labels.txt"), "-o", str(tmp_path / "o"),
               "--particles", str(work / "particles.star")], capsys, work)
    assert "moved.star: row 3:" in err and "particles.star" in err


def test_labels_wrong_length(work, tmp_path, capsys):
    (work / "short.txt").write_text("0\n1\n")
    err = bad([str(work / "volumes.star"), "--labels", str(work / "short.txt"), "-o", str(tmp_path / "o")], capsys, work)
    assert "short.txt" in err and "2 labels" in err


def test_labels_not_integers(work, tmp_path, capsys):
    (work / "float.txt").write_text("0\n1\n0.5\n1\n0\n1\n")
    err = bad([str(work / "volumes.star"), "--labels", str(work / "float.txt"), "-o", str(tmp_path / "o")], capsys, work)
    assert "float.txt: line 3:" in err


def test_missing_coords_pixel_size(work, tmp_path, capsys):
    gt = ground_truth(work)
    star = write_volstar(work / "nopix.star", coordinates(N_PARTICLES), gt["euler"], gt["tomogram"], pixel=None)
    err = bad([str(star), "--labels", str(work / "labels.txt"), "-o", str(tmp_path / "o")], capsys, work)
    assert "nopix.star" in err and "--coords-pixel-size" in err


def test_bad_coordinate_names_the_row(work, tmp_path, capsys):
    lines = (work / "volumes.star").read_text().splitlines()
    data_rows = [i for i, line in enumerate(lines) if "\t" in line]
    fields = lines[data_rows[3]].split("\t")
    fields[1] = "abc"
    lines[data_rows[3]] = "\t".join(fields)
    (work / "badcoord.star").write_text("\n".join(lines) + "\n")
    err = bad([str(work / "badcoord.star"), "--labels", str(work / "labels.txt"), "-o", str(tmp_path / "o")], capsys, work)
    assert "badcoord.star: row 4: column _rlnCoordinateY has 'abc'" in err


def test_unknown_tomogram(work, tmp_path, capsys):
    err = bad([str(work / "volumes.star"), "--labels", str(work / "labels.txt"), "-o", str(tmp_path / "o"),
               "--tomogram", "tomo_999"], capsys, work)
    assert "tomo_999" in err and "tomo_000.tomostar" in err
    assert not (tmp_path / "o").exists()


def test_missing_volume(work, tmp_path, capsys):
    (work / "volumes" / "vol_001.mrc").unlink()
    err = bad([str(work / "volumes.star"), "--labels", str(work / "labels.txt"), "-o", str(tmp_path / "o"),
               "--mode", "volumes", "--vols-dir", str(work / "volumes")], capsys, work)
    assert "vol_001.mrc" in err and "not found" in err
    assert not (tmp_path / "o").exists()


def test_volumes_mode_needs_vols_dir(work, tmp_path, capsys):
    err = bad([str(work / "volumes.star"), "--labels", str(work / "labels.txt"), "-o", str(tmp_path / "o"),
               "--mode", "volumes"], capsys, work)
    assert "--vols-dir" in err
