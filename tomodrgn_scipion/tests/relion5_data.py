"""Small hand-written RELION 5 files as reliontomo's "Extract subtomos" (``relion_tomo_subtomo --stack2d``)
leaves them after a refinement: an optimisation set, ``particles.star`` (``data_general`` with
``_rlnTomoSubTomosAre2DStacks 1``, ``data_optics``, ``data_particles`` with the columns reliontomo's
writer knows, ``particles2dStarFields``), ``tomograms.star`` (``data_global``) with one star file per tilt
series (the columns of reliontomo's ``Writer.ts2Star``), 2D stacks (one slice per visible frame) and the
tomograms (MRC) that Scipion's tomogram import reads.

Column names and layout follow RELION 5's own labels (``relion_refine --print_metadata_labels``, as listed
in reliontomo's ``convert50_tomo`` docstrings) and the particle-series layout upstream tomoDRGN reads
(``TomoParticlesStarfileStarHeaders.relion``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import mrcfile
import numpy as np

PARTICLE_COLUMNS = [
    "rlnTomoName", "rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi", "rlnAngleRot",
    "rlnAngleTilt", "rlnAnglePsi", "rlnAngleTiltPrior", "rlnAnglePsiPrior", "rlnOpticsGroup", "rlnTomoParticleName",
    "rlnTomoVisibleFrames", "rlnImageName", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst",
    "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst", "rlnGroupNumber",
    "rlnClassNumber", "rlnNormCorrection", "rlnRandomSubset", "rlnLogLikeliContribution",
    "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples"]
OPTICS_COLUMNS = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnSphericalAberration", "rlnVoltage",
                  "rlnTomoTiltSeriesPixelSize", "rlnCtfDataAreCtfPremultiplied", "rlnImageDimensionality",
                  "rlnTomoSubtomogramBinning", "rlnImagePixelSize", "rlnImageSize", "rlnAmplitudeContrast"]
GLOBAL_COLUMNS = ["rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                  "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnOpticsGroupName", "rlnTomoTiltSeriesPixelSize",
                  "rlnTomoTiltSeriesStarFile", "rlnEtomoDirectiveFile", "rlnTomoTomogramBinning", "rlnTomoSizeX",
                  "rlnTomoSizeY", "rlnTomoSizeZ", "rlnTomoReconstructedTomogram"]
TILT_COLUMNS = ["rlnMicrographMovieName", "rlnTomoTiltMovieFrameCount", "rlnTomoNominalStageTiltAngle",
                "rlnTomoNominalTiltAxisAngle", "rlnMicrographPreExposure", "rlnTomoNominalDefocus",
                "rlnCtfPowerSpectrum", "rlnMicrographNameEven", "rlnMicrographNameOdd", "rlnMicrographName",
                "rlnMicrographMetadata", "rlnAccumMotionTotal", "rlnAccumMotionEarly", "rlnAccumMotionLate",
                "rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle",
                "rlnCtfFigureOfMerit", "rlnCtfMaxResolution", "rlnCtfIceRingDensity", "rlnTomoXTilt", "rlnTomoYTilt",
                "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst", "rlnCtfScalefactor"]

TS_PIXEL = 1.35      # A, tilt series
BINNING = 4.0        # particles at 5.4 A/px
BOX = 16             # px
TOMO_SIZE = (1000, 1000, 250)  # px of the tilt series (rlnTomoSizeX/Y/Z)
TOMO_BIN = 10.0      # tomograms reconstructed at 13.5 A/px: 100 x 100 x 25


def _loop(name: str, columns: List[str], rows: List[List[str]]) -> str:
    """A RELION-style loop block (labels numbered, values right-aligned)."""
    out = ["# version 50001\n", "\n", f"data_{name}\n", "\n", "loop_ \n"]
    out += [f"_{c} #{i + 1} \n" for i, c in enumerate(columns)]
    out += ["".join(f"{v:>13} " for v in row).rstrip() + " \n" for row in rows]
    out.append(" \n\n")
    return "".join(out)


def write_relion5_set(root: Path, n_particles: int = 12, n_tilts: int = 9, tomograms=("TS_01", "TS_02"),
                      seed: int = 0) -> Dict[str, object]:
    """Write the files of one RELION 5 2D-stack particle set under ``root``.

    Parameters
    ----------
    root : Path
        Folder (created); image and star paths inside the files are absolute.
    n_particles : int
        Particles, spread over the tomograms in turn.
    n_tilts : int
        Tilts per tilt series (dose-symmetric, 3 e/A^2 each, 6 degree steps).
    tomograms : sequence of str
        Tilt-series names.
    seed : int

    Returns
    -------
    dict
        ``optimisation_set``, ``particles``, ``tomograms`` (paths), ``tomogram_files`` (MRC per name),
        ``names`` (particle names in file order), ``rows`` (name -> {column: value text}).
    """
    rng = np.random.default_rng(seed)
    root = Path(root).resolve()
    (root / "tilt_series").mkdir(parents=True, exist_ok=True)
    tilts = np.array(sorted(range(-(n_tilts // 2), n_tilts - n_tilts // 2), key=lambda k: (abs(k), k))) * 6.0
    global_rows, tomo_files = [], {}
    for t in tomograms:
        ts_star = root / "tilt_series" / f"{t}.star"
        rows = []
        for order, angle in enumerate(tilts):
            df = 30000.0 + 200.0 * order
            rows.append(["FileNotFound", "8", f"{angle:.5f}", "85.000000", f"{3.0 * order:.6f}", "-4.00000",
                         "FileNotFound", "FileNotFound", "FileNotFound", f"{order + 1}@{root}/tilt_series/{t}.mrcs",
                         "FileNotFound", "0.000000", "0.000000", "0.000000", "FileNotFound", f"{df:.6f}",
                         f"{df - 150.0:.6f}", "150.000000", "45.000000", "0.000000", "6.500000", "0.020000",
                         "0.000000", f"{angle:.6f}", "85.000000", f"{rng.normal(0, 5):.6f}",
                         f"{rng.normal(0, 5):.6f}", f"{np.cos(np.radians(angle)):.6f}"])
        ts_star.write_text(_loop(t, TILT_COLUMNS, rows))
        tomo = root / "tomograms" / f"{t}.mrc"
        tomo.parent.mkdir(exist_ok=True)
        shape = tuple(int(s / TOMO_BIN) for s in TOMO_SIZE[::-1])
        with mrcfile.new(tomo, overwrite=True) as m:
            m.set_data(np.zeros(shape, np.float32))
            m.voxel_size = TS_PIXEL * TOMO_BIN
        tomo_files[t] = str(tomo)
        global_rows.append([t, "300.000000", "2.700000", "0.100000", f"{TS_PIXEL / 2:.6f}", "-1.000000", "optics1",
                            f"{TS_PIXEL:.6f}", str(ts_star), f"{root}/tilt_series/{t}.edf", f"{TOMO_BIN:.6f}",
                            str(TOMO_SIZE[0]), str(TOMO_SIZE[1]), str(TOMO_SIZE[2]), str(tomo)])
    tomograms_star = root / "tomograms.star"
    tomograms_star.write_text(_loop("global", GLOBAL_COLUMNS, global_rows))

    names, rows, by_name = [], [], {}
    counter = {t: 0 for t in tomograms}
    for i in range(n_particles):
        t = tomograms[i % len(tomograms)]
        counter[t] += 1
        name = f"{t}/{counter[t]}"
        visible = np.ones(n_tilts, dtype=int)
        if i % 3 == 1:
            visible[-1] = 0  # the highest tilt is off the edge for some particles
        stack = root / "Subtomograms" / t / f"{counter[t]}_stack2d.mrcs"
        stack.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(stack, overwrite=True) as m:
            m.set_data(rng.normal(size=(int(visible.sum()), BOX, BOX)).astype(np.float32))
            m.voxel_size = TS_PIXEL * BINNING
        xyz = rng.uniform(-1, 1, 3) * np.array(TOMO_SIZE) * TS_PIXEL * 0.4
        row = [t, f"{rng.uniform(-180, 180):.6f}", f"{rng.uniform(0, 180):.6f}", f"{rng.uniform(-180, 180):.6f}",
               f"{rng.uniform(-180, 180):.6f}", "90.000000", f"{rng.uniform(-180, 180):.6f}", "90.000000", "0.000000",
               "1", name, "[" + ",".join(str(v) for v in visible) + "]", str(stack),
               f"{rng.normal(0, 2):.6f}", f"{rng.normal(0, 2):.6f}", f"{rng.normal(0, 2):.6f}",
               f"{xyz[0]:.6f}", f"{xyz[1]:.6f}", f"{xyz[2]:.6f}", "1", "1", "1.000000", str(1 + i % 2),
               f"{3.9e6 + i:.6e}", f"{rng.uniform(0.2, 0.6):.6f}", str(8 + i % 5)]
        names.append(name)
        rows.append(row)
        by_name[name] = dict(zip(PARTICLE_COLUMNS, row))
    optics = [["1", "optics1", "2.700000", "300.000000", f"{TS_PIXEL:.6f}", "1", "2", f"{BINNING:.6f}",
               f"{TS_PIXEL * BINNING:.6f}", str(BOX), "0.100000"]]
    particles = root / "particles.star"
    particles.write_text("# version 50001\n\ndata_general\n\n_rlnTomoSubTomosAre2DStacks                       1\n \n\n"
                         + _loop("optics", OPTICS_COLUMNS, optics) + _loop("particles", PARTICLE_COLUMNS, rows))
    opt = root / "optimisation_set.star"
    opt.write_text(f"# version 50001\n\ndata_\n\n_rlnTomoTomogramsFile   {tomograms_star}\n"
                   f"_rlnTomoParticlesFile   {particles}\n\n")
    return {"optimisation_set": str(opt), "particles": str(particles), "tomograms": str(tomograms_star),
            "tomogram_files": tomo_files, "names": names, "rows": by_name}
