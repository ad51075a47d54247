"""Shared fixtures: the external sample (skipped when absent) and small simulated data sets."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
# ../shared beside the checkout, as laid out for developers and CI; TOMODRGN_SAMPLE_DIR overrides.
SAMPLE = Path(os.environ.get("TOMODRGN_SAMPLE_DIR", REPO.parent / "shared" / "data" / "tomodrgn-sample-10076"))
SAMPLE_STAR = SAMPLE / "10076_both_32_sim.star"


@pytest.fixture(scope="session")
def sample_star() -> Path:
    """The tomoDRGN sample star file from ../shared (skip when it is not there)."""
    if not SAMPLE_STAR.is_file():
        pytest.skip(f"external sample not found at {SAMPLE}")
    return SAMPLE_STAR


@pytest.fixture(scope="session")
def sample_truth(sample_star: Path) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth volumes D and E of the sample."""
    from tomodrgn_scipion.method.stacks import read_volume

    return read_volume(SAMPLE / "10076_classD_32.mrc")[0], read_volume(SAMPLE / "10076_classE_32.mrc")[0]


@pytest.fixture(scope="session")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    """The built-in two-state phantom at box 32."""
    from tomodrgn_scipion.method.phantom import two_state_phantom

    return two_state_phantom(32)


@pytest.fixture(scope="session")
def sim_high_snr(tmp_path_factory: pytest.TempPathFactory, phantom) -> Path:
    """Folder of a simulated, nearly noise-free, single-state set (protein-light, 41 tilts)."""
    from tomodrgn_scipion.method.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("sim_high_snr")
    simulate([phantom[0]], out, SimulationConfig(n_particles=40, particles_per_tomogram=20, snr=100.0, seed=3))
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a simulated data set to a scratch folder (tests then corrupt the copy)."""
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def two_state(tmp_path_factory) -> Path:
    """64 particles of the two-state phantom at box 16, 11 tilts each, SNR 1, protein-light."""
    from tomodrgn_scipion.method.phantom import two_state_phantom
    from tomodrgn_scipion.method.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("two_state")
    simulate(list(two_state_phantom(16)), out, SimulationConfig(
        n_particles=64, particles_per_tomogram=16, tilt_max=45.0, tilt_step=9.0, snr=1.0, seed=11))
    return out


@pytest.fixture(scope="session")
def learnable(tmp_path_factory) -> Path:
    """400 particles of the two-state phantom at box 16, 11 tilts each, SNR 3: enough particles in random
    orientations for the encoder to learn the states in a dozen epochs."""
    from tomodrgn_scipion.method.phantom import two_state_phantom
    from tomodrgn_scipion.method.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("learnable")
    simulate(list(two_state_phantom(16)), out, SimulationConfig(
        n_particles=400, particles_per_tomogram=16, tilt_max=45.0, tilt_step=9.0, snr=3.0, seed=11))
    return out
