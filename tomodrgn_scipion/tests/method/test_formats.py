"""Particle tilt-series formats: RELION 3.0, RELION 3.1 (optics), RELION 5 and WarpTools particle series.

The conventions are pinned against independent sources, named in each test:
* RELION 5 source (3dem/relion ver5.0, src/jaz/tomography/tomogram.cpp ``Tomogram::setProjectionMatrix``,
  ``getDepthOffset``/``getCtf``; particle_set.cpp ``getPosition``/``getSubtomogramMatrix``; exp_model.cpp
  ``getTranslationInTiltSeries``), and RELION's own test fixture ``220728_TS_01.star``, which carries
  both ``_rlnTomoXTilt/YTilt/ZRot`` and the RELION 4 matrix ``_rlnTomoProjX/Y/Z`` of the same frames;
* WarpTools source (warpem/warp ``ExportParticlesTiltseries.cs``, ``TiltSeries.GetPositionInAllTilts``) and
  the layout of the WarpTools test files in tomoDRGN's repository (testing/data/warptools_test_*);
* rotations computed with scipy, not with this package.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tomodrgn_scipion.method.backproject import backproject
from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.dataset import TiltSeriesData
from tomodrgn_scipion.method.errors import InputError
from tomodrgn_scipion.method.formats.blocks import read_blocks
from tomodrgn_scipion.method.formats.relion import relion31_tables
from tomodrgn_scipion.method.formats.tomo import _rotations_xyz
from tomodrgn_scipion.method.phantom import two_state_phantom
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.star import StarWriter, TiltSeriesStar, read_star
from tomodrgn_scipion.method.transforms import euler_to_matrix

LAYOUTS = ("relion3", "relion31", "relion5", "warptools")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relion_euler(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix via scipy: E = [Rz(rot) Ry(tilt) Rz(psi)]^T (active rotations)."""
    return Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same simulated particles (tilt axis 85 deg, 3D origins) written in every layout."""
    out = {}
    for lay in LAYOUTS:
        d = tmp_path_factory.mktemp(lay)
        cfg = SimulationConfig(n_particles=24, particles_per_tomogram=12, tilt_max=30, tilt_step=10, snr=20.0,
                               layout=lay, tilt_axis=85.0, tilt_series_geometry=True, shift_std=1.5, seed=4)
        out[lay] = simulate(list(two_state_phantom(16)), d, cfg)["star"]
    return out


# ------------------------------------------------------------------------------------------ conventions
def test_relion5_frame_rotation_matches_relion_fixture():
    """Rz(ZRot) Ry(YTilt) Rx(XTilt) of four frames of RELION's tomography test fixture
    (src/tomography_python_programs/_tests/test_project_directory/tilt_series_metadata/tilt_series/220728_TS_01.star)
    equals the rotation block of the RELION 4 _rlnTomoProjX/Y/Z rows RELION itself wrote for those frames."""
    frames = [  # XTilt, YTilt, ZRot, ProjX[:3], ProjY[:3], ProjZ[:3]
        (0.0, 9.02, 85.267461, (0.0814842382114, -0.996590673923, 0.0129349948257),
         (0.984266480393, 0.0825045183301, 0.156244718125), (-0.156779229641, 0, 0.987633645535)),
        (0.0, 12.02, 85.275607, (0.0805570885151, -0.996602416039, 0.0171523300395),
         (0.974751876037, 0.0823628976941, 0.207545557971), (-0.208253115416, 0, 0.978074967861)),
        (0.0, 6.02, 85.259464, (0.0821878822561, -0.996579170227, 0.00866730163351),
         (0.991083353674, 0.082643635571, 0.104516847672), (-0.104875609279, 0, 0.994485318661)),
        (0.0, 3.02, 85.251530, (0.0826665946624, -0.996567726135, 0.0043613082869),
         (0.995183704614, 0.082781560719, 0.0525037103033), (-0.0526845380664, 0, 0.998611211777)),
    ]
    x, y, z = (np.array([f[i] for f in frames]) for i in range(3))
    ours = _rotations_xyz(x, y, z)
    relion = np.array([[f[3], f[4], f[5]] for f in frames])
    np.testing.assert_allclose(ours, relion, atol=2e-7)  # RELION computes the matrix in single precision
    # and scipy's intrinsic Z-Y-X composition is the same matrix
    np.testing.assert_allclose(ours, Rotation.from_euler("ZYX", np.stack([z, y, x], 1), degrees=True).as_matrix(), atol=1e-12)


def _write_relion5(tmp: Path, *, visible: str = "[1,1,1]", nz: int = 3, two_d: str | None = "1", hand: float = -1.0,
                   with_tomogram: bool = True, tomo_frames: int = 3, pixel2: float | None = None) -> Path:
    """A hand-made RELION 5 particle series: one tilt series of three frames in tilt_series/TS_01.star, one or
    two particles, stacks of ``nz`` slices; returns the optimisation set."""
    frames = "\n".join(f"TS_01_{i}.mrc  0.0  {yt}  85.0  0.0  0.0  {dfu}  {dfu - 400}  30.0  {dose}  1.0"
                       for i, (yt, dfu, dose) in enumerate([(0.0, 30000.0, 3.0), (-10.0, 30100.0, 6.0), (10.0, 29900.0, 9.0)][:tomo_frames]))
    (tmp / "tilt_series").mkdir(parents=True, exist_ok=True)
    (tmp / "tilt_series" / "TS_01.star").write_text(
        "# version 50001\n\ndata_TS_01\n\nloop_\n_rlnMicrographName #1\n_rlnTomoXTilt #2\n_rlnTomoYTilt #3\n_rlnTomoZRot #4\n"
        "_rlnTomoXShiftAngst #5\n_rlnTomoYShiftAngst #6\n_rlnDefocusU #7\n_rlnDefocusV #8\n_rlnDefocusAngle #9\n"
        f"_rlnMicrographPreExposure #10\n_rlnCtfScalefactor #11\n{frames}\n")
    tomo_row = f"TS_01  tilt_series/TS_01.star  300.0  2.7  0.1  {hand}  2.0  2000  2000  1000" if with_tomogram else \
        "TS_99  tilt_series/TS_01.star  300.0  2.7  0.1  -1.0  2.0  2000  2000  1000"
    (tmp / "tomograms.star").write_text(
        "\ndata_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesStarFile #2\n_rlnVoltage #3\n_rlnSphericalAberration #4\n"
        "_rlnAmplitudeContrast #5\n_rlnTomoHand #6\n_rlnTomoTiltSeriesPixelSize #7\n_rlnTomoSizeX #8\n_rlnTomoSizeY #9\n"
        f"_rlnTomoSizeZ #10\n{tomo_row}\n")
    general = "" if two_d is None else f"\ndata_general\n\n_rlnTomoSubTomosAre2DStacks {two_d}\n\n"
    optics_rows = "1 optics1 300.0 2.7 0.1 2.0 1 2 2.0 4.0 16"
    if pixel2 is not None:
        optics_rows += f"\n2 optics2 300.0 2.7 0.1 2.0 1 2 2.0 {pixel2} 16"
    parts = ["TS_01 10.0 80.0 -30.0 40.0 60.0 120.0 1 TS_01/1 {vis} Extract/job010/Subtomograms/TS_01/1_stack2d.mrcs "
             "4.0 -2.0 6.0 120.0 -240.0 80.0"]
    if pixel2 is not None:
        parts.append("TS_01 0.0 0.0 0.0 0.0 0.0 0.0 2 TS_01/2 {vis} Extract/job010/Subtomograms/TS_01/1_stack2d.mrcs "
                     "0.0 0.0 0.0 0.0 0.0 0.0")
    pdir = tmp / "Extract" / "job010"
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / "particles.star").write_text(
        general + "\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n_rlnVoltage #3\n"
        "_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n_rlnTomoTiltSeriesPixelSize #6\n"
        "_rlnCtfDataAreCtfPremultiplied #7\n_rlnImageDimensionality #8\n_rlnTomoSubtomogramBinning #9\n_rlnImagePixelSize #10\n"
        f"_rlnImageSize #11\n{optics_rows}\n\n"
        "data_particles\n\nloop_\n_rlnTomoName #1\n_rlnTomoSubtomogramRot #2\n_rlnTomoSubtomogramTilt #3\n"
        "_rlnTomoSubtomogramPsi #4\n_rlnAngleRot #5\n_rlnAngleTilt #6\n_rlnAnglePsi #7\n_rlnOpticsGroup #8\n"
        "_rlnTomoParticleName #9\n_rlnTomoVisibleFrames #10\n_rlnImageName #11\n_rlnOriginXAngst #12\n_rlnOriginYAngst #13\n"
        "_rlnOriginZAngst #14\n_rlnCenteredCoordinateXAngst #15\n_rlnCenteredCoordinateYAngst #16\n"
        "_rlnCenteredCoordinateZAngst #17\n_rlnClassNumber #18\n" + "\n".join(p.format(vis=visible) + f" {i + 1}" for i, p in enumerate(parts)) + "\n")
    sdir = pdir / "Subtomograms" / "TS_01"
    sdir.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(sdir / "1_stack2d.mrcs", overwrite=True) as m:
        m.set_data((np.arange(nz)[:, None, None] + np.zeros((1, 16, 16))).astype(np.float16))
    (pdir / "optimisation_set.star").write_text(
        "\ndata_\n\n_rlnTomoParticlesFile Extract/job010/particles.star\n_rlnTomoTomogramsFile tomograms.star\n")
    return pdir / "optimisation_set.star"


def test_relion5_pose_shift_defocus_dose_from_relion_formulas(tmp_path):
    """Each image of a RELION 5 particle gets, computed here with scipy from RELION 5's formulas:
    pose A = R_f A_sub A_part (exp_model.cpp / ml_optimiser.cpp), origin [R_f A_sub o]_xy / image pixel
    (Experiment::getTranslationInTiltSeries), defocus + hand * [R_f (X - A_sub o)]_z (Tomogram::getDepthOffset,
    getCtf with slope 1; X the centred coordinate in A), dose = _rlnMicrographPreExposure,
    cos(stage tilt) = R_f[2, 2]; float16 stacks read as float32, relative paths found in the RELION project folder."""
    oset = _write_relion5(tmp_path)
    s = TiltSeriesStar(oset)
    assert s.source == "relion5" and s.n_particles == 1 and s.n_images == 3 and s.particle_ids == ["TS_01/1"]
    assert s.ctf_premultiplied.all() and s.dose_weighted.all() and s.pixel_size == 4.0
    a_sub, a_part = relion_euler(10.0, 80.0, -30.0), relion_euler(40.0, 60.0, 120.0)
    o = np.array([4.0, -2.0, 6.0])
    x = np.array([120.0, -240.0, 80.0])
    for f, (ytilt, dfu, dose) in enumerate([(0.0, 30000.0, 3.0), (-10.0, 30100.0, 6.0), (10.0, 29900.0, 9.0)]):
        r_f = Rotation.from_euler("ZYX", [85.0, ytilt, 0.0], degrees=True).as_matrix()
        pose = euler_to_matrix(*(torch.tensor([v]) for v in s.euler[f]))[0].numpy()
        np.testing.assert_allclose(pose, r_f @ a_sub @ a_part, atol=1e-9)
        np.testing.assert_allclose(s.shifts_px[f], (r_f @ a_sub @ o)[:2] / 4.0, atol=1e-9)
        depth = (r_f @ (x - a_sub @ o))[2]
        np.testing.assert_allclose([s.dfu[f], s.dfv[f]], [dfu - depth, dfu - 400 - depth], atol=1e-6)
        assert s.dose[f] == dose and s.ctf_scalefactor[f] == pytest.approx(r_f[2, 2])
    data = TiltSeriesData(oset, window=False, invert=False)
    np.testing.assert_array_equal(data.images.get(np.arange(3))[:, 0, 0], [0.0, 1.0, 2.0])
    assert data.images.get([0]).dtype == np.float32


def test_visible_frames_select_stack_slices(tmp_path):
    """RELION 5 stacks hold the visible frames only (subtomo.cpp writes getVisibleSlices); WarpTools up to
    2.0.0dev39 wrote every frame (a 37-slice stack for 37 frames in tomoDRGN's WarpTools test data):
    the slice count tells which, and invisible frames are never read."""
    s = TiltSeriesStar(_write_relion5(tmp_path / "visible", visible="[1,0,1]", nz=2))
    assert s.n_images == 2 and [n.split("@")[0] for n in s.image_names] == ["1", "2"]
    np.testing.assert_array_equal(s.dose, [3.0, 9.0])
    s = TiltSeriesStar(_write_relion5(tmp_path / "full", visible="[1,0,1]", nz=3))
    assert [n.split("@")[0] for n in s.image_names] == ["1", "3"]
    with pytest.raises(InputError, match=r"1_stack2d.mrcs: 4 images, but particle TS_01/1 .* has 2 visible frames of 3"):
        TiltSeriesStar(_write_relion5(tmp_path / "bad", visible="[1,0,1]", nz=4))
    with pytest.raises(InputError, match=r"block data_particles: row 1: _rlnTomoVisibleFrames has 2 entries, but tilt series TS_01 has 3 frames"):
        TiltSeriesStar(_write_relion5(tmp_path / "len", visible="[1,1]", nz=2))
    with pytest.raises(InputError, match=r"row 1: column _rlnTomoVisibleFrames has '\[1,x,1\]'"):
        TiltSeriesStar(_write_relion5(tmp_path / "text", visible="[1,x,1]", nz=2))


@pytest.mark.parametrize("case,pattern", [
    ("3d", r"_rlnTomoSubTomosAre2DStacks is 0: these are 3D subtomograms; re-extract them as 2D stacks: RELION 5 "
           r"'Extract subtomos' with 'Write output as 2D stacks\?' = Yes .* WarpTools ts_export_particles --2d"),
    ("no-flag", r"_rlnTomoSubTomosAre2DStacks is absent: these are 3D subtomograms"),
    ("missing-file", r"optimisation_set.star: _rlnTomoTomogramsFile names nowhere/tomograms.star, which is not found"),
    ("unknown-tomogram", r"block data_particles: row 1: tomogram TS_01 is not in .*tomograms.star"),
    ("mixed-pixels", r"block data_particles, row 2: pixel size 5 A, but 4 A on the first image"),
    ("particles-alone", r"particles.star: a particle-series particles.star needs its tomograms.star: .* --tomograms"),
])
def test_particle_series_errors_name_the_file(tmp_path, case, pattern):
    kw = {"3d": {"two_d": "0"}, "no-flag": {"two_d": None}, "unknown-tomogram": {"with_tomogram": False},
          "mixed-pixels": {"pixel2": 5.0}}.get(case, {})
    oset = _write_relion5(tmp_path, **kw)
    if case == "missing-file":
        oset.write_text("data_\n_rlnTomoParticlesFile Extract/job010/particles.star\n_rlnTomoTomogramsFile nowhere/tomograms.star\n")
    path = oset.parent / "particles.star" if case == "particles-alone" else oset
    before = {p: digest(p) for p in tmp_path.rglob("*.star")}
    with pytest.raises(InputError, match=pattern):
        TiltSeriesStar(path)
    assert {p: digest(p) for p in tmp_path.rglob("*.star")} == before


def test_particles_star_with_tomograms_option(tmp_path):
    oset = _write_relion5(tmp_path)
    a = TiltSeriesStar(oset)
    b = TiltSeriesStar(oset.parent / "particles.star", tomograms=tmp_path / "tomograms.star")
    np.testing.assert_array_equal(a.euler, b.euler)
    np.testing.assert_array_equal(a.dfu, b.dfu)
    with pytest.raises(InputError, match="unknown; use auto"):
        TiltSeriesStar(oset, source_software="cistem")
    with pytest.raises(InputError, match="a particle-series file .* not a RELION 3.0 image series"):
        TiltSeriesStar(oset, source_software="relion3")


def test_warptools_legacy_layout_as_in_tomodrgn_test_data(tmp_path):
    """The layout of tomoDRGN's WarpTools test files (testing/data/warptools_test_4-tomos_10-ptcls_box-32_angpix-12*):
    frames in blocks data_<name>.tomostar of the tomograms star (RELION 4 layout) with _rlnTomoProjX/Y/Z/W rows of
    a rotation (zero translation), _rlnCtfScalefactor 0.000 on excluded tilts, coordinates in pixels of the particle
    images from the tomogram corner, stacks holding every frame. The first two ProjX/Y/Z rows are that file's."""
    proj = [("[0.10915412,-0.99366254,0.026835253,0]", "[0.6719484,0.09365405,0.7346526,0]", "[-0.73251,-0.062158454,0.6779126,0]"),
            ("[-0.009121835,-0.9934182,0.11417964,0]", "[0.6927605,0.07606476,0.7171451,0]", "[-0.72111005,0.08564082,0.68750703,0]")]
    frames = "\n".join(f"  {x}  {y}  {z}  [0,0,0,1]  {du}  {dv}  41.271  {sf}  {dose}"
                       for (x, y, z), du, dv, sf, dose in zip(proj, (33350.7, 25170.7), (28632.1, 26181.5), ("0.000", "0.707"), (92.019, 89.462)))
    (tmp_path / "w_tomograms.star").write_text(
        "\ndata_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesName #2\n_rlnTomoFrameCount #3\n_rlnTomoSizeX #4\n"
        "_rlnTomoSizeY #5\n_rlnTomoSizeZ #6\n_rlnTomoHand #7\n_rlnOpticsGroupName #8\n_rlnTomoTiltSeriesPixelSize #9\n"
        "_rlnVoltage #10\n_rlnSphericalAberration #11\n_rlnAmplitudeContrast #12\n_rlnTomoImportFractionalDose #13\n"
        "  Unt_083.tomostar  dummy_tiltseries.mrc  2  4400  6000  1400  -1.0  opticsGroup1  1.66700  300.000  2.700  0.070  2.556\n\n"
        "data_Unt_083.tomostar\n\nloop_\n_rlnTomoProjX #1\n_rlnTomoProjY #2\n_rlnTomoProjZ #3\n_rlnTomoProjW #4\n"
        "_rlnDefocusU #5\n_rlnDefocusV #6\n_rlnDefocusAngle #7\n_rlnCtfScalefactor #8\n_rlnMicrographPreExposure #9\n" + frames + "\n")
    (tmp_path / "w.star").write_text(
        "\ndata_general\n\n_rlnTomoSubTomosAre2DStacks   1\n\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
        "_rlnSphericalAberration #3\n_rlnVoltage #4\n_rlnTomoTiltSeriesPixelSize #5\n_rlnCtfDataAreCtfPremultiplied #6\n"
        "_rlnImageDimensionality #7\n_rlnTomoSubtomogramBinning #8\n_rlnImagePixelSize #9\n_rlnImageSize #10\n_rlnAmplitudeContrast #11\n"
        "  1  opticsGroup1  2.700  300.000  1.66700  1  2  7.19856  12.00000  16  0.070\n\n\ndata_particles\n\nloop_\n"
        "_rlnTomoName #1\n_rlnTomoParticleId #2\n_rlnCoordinateX #3\n_rlnCoordinateY #4\n_rlnCoordinateZ #5\n_rlnAngleRot #6\n"
        "_rlnAngleTilt #7\n_rlnAnglePsi #8\n_rlnTomoParticleName #9\n_rlnOpticsGroup #10\n_rlnImageName #11\n_rlnOriginXAngst #12\n"
        "_rlnOriginYAngst #13\n_rlnOriginZAngst #14\n_rlnTomoVisibleFrames #15\n"
        "  Unt_083.tomostar   1  494.521  564.065   28.146    53.913  104.840   -78.580   Unt_083/1  1  w/Unt_083/Unt_083_12.00A_000001.mrcs  0.0  0.0  0.0  [0,1]\n")
    (tmp_path / "w" / "Unt_083").mkdir(parents=True)
    with mrcfile.new(tmp_path / "w" / "Unt_083" / "Unt_083_12.00A_000001.mrcs", overwrite=True) as m:
        m.set_data(np.stack([np.zeros((16, 16)), np.ones((16, 16))]).astype(np.float16))
    (tmp_path / "w_optimisation_set.star").write_text("\ndata_\n\n_rlnTomoParticlesFile   w.star\n_rlnTomoTomogramsFile   w_tomograms.star\n")
    s = TiltSeriesStar(tmp_path / "w_optimisation_set.star")
    assert s.source == "warptools" and s.n_images == 1 and s.image_names[0].startswith("2@")  # all frames in the stack
    r = np.array([[float(v) for v in row.strip("[]").split(",")[:3]] for row in proj[1]])
    r /= np.linalg.norm(r[2])
    np.testing.assert_allclose(euler_to_matrix(*(torch.tensor([v]) for v in s.euler[0]))[0].numpy(),
                               r @ relion_euler(53.913, 104.840, -78.580), atol=1e-9)
    assert s.ctf_scalefactor[0] == pytest.approx(0.68750703 / np.linalg.norm(r[2] * 0 + np.array([-0.72111005, 0.08564082, 0.68750703])))
    # WarpTools' own depth model: centre of the tomogram 1/2 size x the global pixel size; -hand x depth
    x = np.array([494.521, 564.065, 28.146]) * 12.0 - np.array([4400, 6000, 1400]) * 1.667 / 2
    depth = r[2] @ x
    assert s.dfu[0] == pytest.approx(25170.7 + depth, abs=1e-6)
    assert s.dose[0] == 89.462 and s.pixel_size == 12.0


# ---------------------------------------------------------------------------------- layouts end to end
def test_every_layout_gives_the_same_images_and_geometry(layouts):
    """simulate writes the same particles in each layout; each reader gives back the same pose, origin,
    defocus, dose, tilt and pixels for every tilt image (matched by particle and dose)."""
    ref = None
    for lay, path in layouts.items():
        data = TiltSeriesData(path, window=False)
        s = data.star
        assert s.source == lay
        order = np.lexsort((s.dose, s.particle_index))
        got = {"R": euler_to_matrix(*torch.as_tensor(s.euler[order]).T).numpy(), "shift": s.shifts_px[order],
               "dfu": s.dfu[order], "dfv": s.dfv[order], "dfang": s.dfang[order], "dose": s.dose[order],
               "cos": s.ctf_scalefactor[order], "img": data.images.get(order)}
        if ref is None:
            ref = got
            continue
        tol = {"R": 1e-6, "shift": 1e-4, "dfu": 0.02, "dfv": 0.02, "dfang": 1e-3, "dose": 1e-9, "cos": 1e-6, "img": 0.0}
        for k, t in tol.items():
            np.testing.assert_allclose(got[k], ref[k], atol=t, rtol=0, err_msg=f"{lay}: {k}")


def test_layouts_backproject_to_the_same_map(layouts):
    maps = {lay: backproject(TiltSeriesData(p), pad=2).full for lay, p in layouts.items()}
    for lay in LAYOUTS[1:]:
        assert np.corrcoef(maps[lay].ravel(), maps["relion3"].ravel())[0, 1] > 0.999, lay


@pytest.mark.parametrize("lay", LAYOUTS)
def test_filter_nothing_out_round_trips(layouts, tmp_path, lay):
    """read -> write every particle -> read gives the same rows, blocks and columns (text unchanged)."""
    src = layouts[lay]
    s = TiltSeriesStar(src)
    out = tmp_path / ("all_optimisation_set.star" if lay in ("relion5", "warptools") else "all.star")
    written = s.write_subset(np.arange(s.n_particles), out)
    again = TiltSeriesStar(written[0])
    assert again.source == lay and again.particle_ids == s.particle_ids
    np.testing.assert_array_equal(again.image_names, s.image_names)
    particles_in = src.parent / "particles.star"
    particles_out = written[-1]
    a, b = read_blocks(particles_in), read_blocks(particles_out)
    assert a.names() == b.names()
    for x, y in zip(a.blocks, b.blocks):
        assert x.labels == y.labels and x.rows == y.rows and x.pairs == y.pairs
    if lay in ("relion5", "warptools"):
        # the new optimisation set names the same tomograms.star
        assert read_blocks(written[0]).pairs()["rlnTomoTomogramsFile"] == str((src.parent / read_blocks(src).pairs()["rlnTomoTomogramsFile"]).resolve())


@pytest.mark.parametrize("lay", LAYOUTS)
def test_filter_command_keeps_the_format(layouts, tmp_path, lay):
    src = layouts[lay]
    before = digest(src.parent / "particles.star")
    (tmp_path / "ind.txt").write_text("0\n3\n13\n")
    out = tmp_path / ("sel_optimisation_set.star" if lay in ("relion5", "warptools") else "sel.star")
    assert main(["filter", str(src), "--ind", str(tmp_path / "ind.txt"), "-o", str(out), "--tomogram", "all"]) == 0
    sel = TiltSeriesStar(out)
    full = TiltSeriesStar(src)
    assert sel.source == lay and sel.particle_ids == [full.particle_ids[i] for i in (0, 3, 13)]
    per_tomo = sorted(tmp_path.glob("sel_tomo_*" + ("_optimisation_set.star" if lay in ("relion5", "warptools") else ".star")))
    assert len(per_tomo) == 2 and sum(TiltSeriesStar(p).n_particles for p in per_tomo) == 3
    assert digest(src.parent / "particles.star") == before


def test_premultiplied_images_reconstruct_as_well_as_plain(tmp_path):
    """The same particles exported plain and CTF-premultiplied (RELION 5 layout) back-project to maps that match
    the ground truth equally well, with the default contrast inversion for both."""
    vols = list(two_state_phantom(16))[:1]
    corr = {}
    for pre in (False, True):
        cfg = SimulationConfig(n_particles=60, particles_per_tomogram=30, tilt_max=45, tilt_step=15, snr=2.0, layout="relion5",
                               premultiply=pre, seed=2)
        star = simulate(vols, tmp_path / str(pre), cfg)["star"]
        r = backproject(TiltSeriesData(star), pad=2)
        corr[pre] = np.corrcoef(r.full.ravel(), vols[0].ravel())[0, 1]
    assert corr[True] > 0.9 and corr[True] > corr[False] - 0.02, corr
    # read as plain, the premultiplied images give a much worse map: the flag matters
    star = tmp_path / "True" / "optimisation_set.star"
    wrong = backproject(TiltSeriesData(star, ctf_premultiplied=False), pad=2).full
    assert np.corrcoef(wrong.ravel(), vols[0].ravel())[0, 1] < corr[True] - 0.05


def test_training_gives_the_same_result_in_every_layout(layouts, tmp_path):
    """train_vae on the same particles in each layout: the same loss curve and latent means."""
    z = {}
    for lay in ("relion3", "relion5", "warptools"):
        out = tmp_path / lay
        assert main(["train_vae", str(layouts[lay]), "-o", str(out), "--zdim", "2", "-n", "2", "--seed", "1",
                     "--enc-dim-A", "16", "--enc-dim-B", "16", "--dec-dim", "16", "--device", "cpu"]) == 0
        z[lay] = np.load(out / "z.npy")
    for lay in ("relion5", "warptools"):
        np.testing.assert_allclose(z[lay], z["relion3"], atol=2e-3)


def test_sample_as_relion31_gives_the_same_map(sample_star, tmp_path):
    """The tomoDRGN sample rewritten as RELION 3.1 (optics table, origins in A) back-projects to the map of the
    RELION 3.0 original."""
    df = read_star(sample_star)
    optics, images = relion31_tables(df, box=32)
    assert "rlnDetectorPixelSize" not in images and "rlnOriginXAngst" in images and optics["rlnImagePixelSize"].tolist() == ["13.1"]
    star = tmp_path / "sample31.star"
    from tomodrgn_scipion.method.simulate import _block_text

    w = StarWriter(star, list(images.columns), block="particles", preamble=_block_text("optics", optics))
    w.append(images)
    w.close()
    a = TiltSeriesData(sample_star, invert=False)
    b = TiltSeriesData(star, datadir=sample_star.parent, invert=False)
    assert b.star.source == "relion31"
    ma, mb = backproject(a, pad=2).full, backproject(b, pad=2).full
    assert np.corrcoef(ma.ravel(), mb.ravel())[0, 1] >= 0.9999


def test_relion31_optics_join_and_errors(tmp_path):
    text = ("\ndata_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n"
            "_rlnCtfDataAreCtfPremultiplied\n1 5.0 300 2.7 0.07 0\n2 5.0 300 2.7 0.07 1\n\n"
            "data_particles\n\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnAngleRot\n_rlnAngleTilt\n"
            "_rlnAnglePsi\n_rlnCtfBfactor\n_rlnCtfScalefactor\n_rlnGroupName\n_rlnOpticsGroup\n_rlnOriginXAngst\n_rlnOriginYAngst\n"
            "1@s.mrcs 20000 20000 0 0 90 0 -8 1.0 p1 1 10.0 -5.0\n2@s.mrcs 20000 20000 0 0 90 0 -16 0.9 p1 1 0 0\n"
            "3@s.mrcs 20000 20000 0 0 90 0 -8 1.0 p2 {g} 0 0\n")
    (tmp_path / "a.star").write_text(text.format(g=2))
    s = TiltSeriesStar(tmp_path / "a.star")
    assert s.source == "relion31" and s.pixel_size == 5.0 and s.particle_ids == ["p1", "p2"]
    np.testing.assert_allclose(s.shifts_px[0], [2.0, -1.0])
    np.testing.assert_array_equal(s.ctf_premultiplied, [False, False, True])
    (tmp_path / "b.star").write_text(text.format(g=3))
    with pytest.raises(InputError, match=r"b.star: block data_particles: row 3: optics group 3 is not in data_optics"):
        TiltSeriesStar(tmp_path / "b.star")


def test_cli_overrides_the_premultiplied_flag(layouts, tmp_path, capsys, caplog):
    src = layouts["relion5"]
    assert not TiltSeriesStar(src).ctf_premultiplied.any()
    with caplog.at_level("INFO"):
        assert main(["backproject", str(src), "-o", str(tmp_path / "m.mrc"), "--image-ctf-premultiplied"]) == 0
    assert "(relion5)" in caplog.text and "CTF-premultiplied" in caplog.text
    assert TiltSeriesStar(src, ctf_premultiplied=True).ctf_premultiplied.all()
    assert main(["backproject", str(src), "-o", str(tmp_path / "m.mrc"), "--source-software", "relion3"]) == 2
    assert "not a RELION 3.0 image series" in capsys.readouterr().err


@pytest.mark.parametrize("lay", LAYOUTS)
def test_command_line_chain_in_every_format(layouts, tmp_path, lay):
    """backproject, train_vae, eval_images, analyze and filter by cluster from the command line, in each format;
    analyze's controls include the particle-series columns (one value per particle)."""
    src = str(layouts[lay])
    tiny = ["--enc-dim-A", "8", "--enc-dim-B", "8", "--out-dim-A", "8", "--dec-dim", "8", "--device", "cpu"]
    assert main(["backproject", src, "-o", str(tmp_path / "bp" / "map.mrc")]) == 0
    assert main(["train_vae", src, "-o", str(tmp_path / "vae"), "--zdim", "2", "-n", "1", *tiny]) == 0
    assert main(["eval_images", src, "-w", str(tmp_path / "vae" / "weights.pt"), "-c", str(tmp_path / "vae" / "config.json"),
                 "--out-z", str(tmp_path / "z.npy"), "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), np.load(tmp_path / "vae" / "z.npy"), atol=1e-5)
    assert main(["analyze", str(tmp_path / "vae"), "--ksample", "2", "--skip-vol", "--skip-umap"]) == 0
    controls = (tmp_path / "vae" / "analyze.1" / "controls.csv").read_text()
    if lay in ("relion5", "warptools"):
        assert "_rlnCoordinate" in controls or "_rlnCenteredCoordinate" in controls
    out = tmp_path / ("c0_optimisation_set.star" if lay in ("relion5", "warptools") else "c0.star")
    assert main(["filter", src, "--labels", str(tmp_path / "vae" / "analyze.1" / "kmeans2" / "labels.txt"),
                 "--labels-sel", "0", "-o", str(out)]) == 0
    labels = np.loadtxt(tmp_path / "vae" / "analyze.1" / "kmeans2" / "labels.txt", dtype=int)
    assert TiltSeriesStar(out).n_particles == int((labels == 0).sum())
