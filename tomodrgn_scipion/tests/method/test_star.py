"""Reading and writing RELION 3.0 image-series star files without losing anything."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tomodrgn_scipion.method.dataset import TiltSeriesData
from tomodrgn_scipion.method.star import TiltSeriesStar, read_star, write_star


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sample_read_write_read_is_identical(sample_star, tmp_path):
    before = digest(sample_star)
    df = read_star(sample_star)
    out = tmp_path / "copy.star"
    write_star(df, out)
    again = read_star(out)
    pd.testing.assert_frame_equal(df, again)
    assert list(again.columns) == list(df.columns)
    # numeric values are the same numbers as in the file, read independently with pandas
    raw = pd.read_csv(sample_star, sep=r"\s+", skiprows=22, header=None, dtype=str)
    assert np.array_equal(raw[16].to_numpy(), again["rlnGroupName"].to_numpy())
    np.testing.assert_array_equal(raw[9].astype(float).to_numpy(), again["rlnAngleRot"].astype(float).to_numpy())
    assert digest(sample_star) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_sample_particles_and_physics_columns(sample_star):
    s = TiltSeriesStar(sample_star)
    assert s.n_images == 1296 and s.n_particles == 144
    assert s.particle_ids[:2] == ["000_000000", "000_000001"]
    assert [len(r) for r in s.rows_of_particle[:1]] == [8]
    labels = np.loadtxt(sample_star.parent / "particle_labels.txt", dtype=int)
    counts = np.array([len(r) for r in s.rows_of_particle])
    assert np.array_equal(counts, np.where(labels == 0, 8, 10))  # class D has 8 tilts, E 10
    np.testing.assert_allclose(s.dose[:3], [2.0, 4.0, 6.0])
    np.testing.assert_allclose(s.stage_tilt_deg[:3], [0.0, 3.0, 3.0], atol=1e-3)
    assert s.pixel_size == 13.1
    np.testing.assert_allclose(s.shifts_px[0], [-2.672172, -2.528634])


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    lines = ["", "data_", "", "loop_"] + [f"_{h} #{i + 1}" for i, h in enumerate(header)]
    lines += ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_extra_and_reordered_columns_and_string_ids_survive(tmp_path):
    header = ["rlnGroupName", "myScore", "rlnImageName", "rlnDetectorPixelSize", "rlnDefocusU", "rlnDefocusV",
              "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnAngleRot",
              "rlnAngleTilt", "rlnAnglePsi", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnMicrographName"]
    rows = [["0001", "1.10", f"{i}@s.mrcs", "5.0", "20000", "20000", "0", "300", "2.7", "0.07", "0", "90", "0",
             "-8.0", "1.0", "007"] for i in (1, 2)]
    rows.append(["0002", "1e-9", "3@s.mrcs", "5.0", "20000", "20000", "0", "300", "2.7", "0.07", "0", "90", "0", "-8.0", "1.0", "007"])
    path = write_table(tmp_path / "in.star", header, rows)
    s = TiltSeriesStar(path)
    assert s.particle_ids == ["0001", "0002"]
    np.testing.assert_array_equal(s.phase_shift, 0.0)  # absent column: no phase plate
    np.testing.assert_array_equal(s.shifts_px, 0.0)  # absent shifts
    assert s.tomogram_of_particle() == ["007", "007"]
    write_star(s.df, tmp_path / "out.star")
    back = read_star(tmp_path / "out.star")
    assert list(back.columns) == header
    assert back["myScore"].tolist() == ["1.10", "1.10", "1e-9"] and back["rlnMicrographName"].tolist() == ["007"] * 3


def test_shifts_in_angstrom_and_image_pixel_size(tmp_path):
    header = ["rlnImageName", "rlnImagePixelSize", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
              "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
              "rlnOriginXAngst", "rlnOriginYAngst", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnGroupName"]
    rows = [["1@s.mrcs", "2.5", "1", "1", "0", "300", "2.7", "0.1", "0", "0", "0", "5.0", "-2.5", "-20", "0.5", "a_1"]]
    s = TiltSeriesStar(write_table(tmp_path / "a.star", header, rows))
    np.testing.assert_allclose(s.shifts_px, [[2.0, -1.0]])
    assert s.pixel_size == 2.5 and s.dose[0] == 5.0 and s.stage_tilt_deg[0] == pytest.approx(60.0)
    assert s.tomogram_of_particle() == ["a"]


def test_lazy_and_eager_images_agree(sample_star):
    eager = TiltSeriesData(sample_star, invert=False, window=False)
    lazy = TiltSeriesData(sample_star, invert=False, window=False, lazy=True)
    rows = np.array([5, 1000, 3, 1295])
    np.testing.assert_array_equal(eager.real_images(rows).numpy(), lazy.real_images(rows).numpy())
    inverted = TiltSeriesData(sample_star, invert=True, window=False, lazy=True)
    np.testing.assert_array_equal(inverted.real_images(rows).numpy(), -lazy.real_images(rows).numpy())


def test_datadir_and_float16_stacks(tmp_path, sim_high_snr):
    import mrcfile

    star = read_star(sim_high_snr / "particles.star")
    stack_dir = tmp_path / "elsewhere"
    stack_dir.mkdir()
    names = sorted({n.split("@")[1] for n in star["rlnImageName"]})
    for n in names:
        with mrcfile.open(sim_high_snr / n) as src, mrcfile.new(stack_dir / Path(n).name) as dst:
            dst.set_data(src.data.astype(np.float16))
    write_star(star, tmp_path / "moved.star")
    data = TiltSeriesData(tmp_path / "moved.star", datadir=stack_dir)
    ref = TiltSeriesData(sim_high_snr / "particles.star")
    rows = np.arange(0, data.n_images, 97)
    np.testing.assert_allclose(data.real_images(rows).numpy(), ref.real_images(rows).numpy(), atol=2e-3, rtol=1e-2)


def test_one_stack_per_particle_with_few_open_files(tmp_path, sim_high_snr, monkeypatch):
    """Warp can write one stack per particle: thousands of files must not exhaust file handles."""
    import mrcfile

    from tomodrgn_scipion.method.stacks import ImageSource

    star = read_star(sim_high_snr / "particles.star")
    ref = TiltSeriesData(sim_high_snr / "particles.star", window=False, invert=False)
    names = []
    for p, rows in enumerate(ref.star.rows_of_particle):
        with mrcfile.new(tmp_path / f"p{p}.mrcs") as m:
            m.set_data(ref.images.get(rows))
        names += [f"{i + 1}@p{p}.mrcs" for i in range(len(rows))]
    star = star.iloc[np.concatenate(ref.star.rows_of_particle)].reset_index(drop=True)
    star["rlnImageName"] = names
    write_star(star, tmp_path / "per_particle.star")
    monkeypatch.setattr(ImageSource, "MAX_OPEN", 3)
    lazy = TiltSeriesData(tmp_path / "per_particle.star", window=False, invert=False, lazy=True)
    rows = np.arange(0, lazy.n_images, 7)
    got = lazy.real_images(rows).numpy()
    assert len(lazy.images._open_maps()) <= 3
    expected = ref.real_images(np.concatenate(ref.star.rows_of_particle)[rows]).numpy()
    np.testing.assert_array_equal(got, expected)
