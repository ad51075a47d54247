"""Bad input over every command that reads user files, as a table.

Every case runs the real command line (in this process) on a copy of one small workspace (a simulated
data set, a trained VAE run, a trained homogeneous run and the usual side files), spoilt by the case. For
every case it checks what the README promises:

- exit status 2 and exactly one line on stderr, without a traceback, holding the words the case expects;
- every file of the workspace has the checksum it had before the command ran (inputs are never modified);
- no output of the case exists under its final name, and no temporary file is left anywhere.

The rows of physically impossible star values (``FORMAT_CASES``) run through the same checks; suspicious values
get one warning and the command goes on.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mrcfile
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.training import LOCK_NAME

SMALL_VAE = ["--zdim", "2", "-n", "2", "--enc-layers-A", "1", "--enc-dim-A", "8", "--out-dim-A", "4",
             "--enc-layers-B", "1", "--enc-dim-B", "8", "--dec-layers", "1", "--dec-dim", "8", "--seed", "0"]
SMALL_NN = ["-n", "1", "--layers", "1", "--dim", "8"]
TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The workspace every case copies: data/, run/ (train_vae, 2 epochs), nn/ (train_nn) and side files."""
    from tomodrgn_scipion.method.phantom import two_state_phantom
    from tomodrgn_scipion.method.simulate import SimulationConfig, simulate

    ws = tmp_path_factory.mktemp("matrix")
    simulate(list(two_state_phantom(16)), ws / "data", SimulationConfig(
        n_particles=8, particles_per_tomogram=4, tilt_max=6.0, tilt_step=3.0, snr=1.0, seed=5))
    star = str(ws / "data" / "particles.star")
    assert main(["train_vae", star, "-o", str(ws / "run"), *SMALL_VAE]) == 0
    assert main(["train_nn", star, "-o", str(ws / "nn"), *SMALL_NN]) == 0
    (ws / "run" / LOCK_NAME).unlink()
    (ws / "nn" / LOCK_NAME).unlink()
    (ws / "ind.txt").write_text("0\n2\n3\n")
    (ws / "labels.txt").write_text("".join(f"{i % 2}\n" for i in range(8)))
    (ws / "z.txt").write_text("0.1 0.2\n-0.3 0.4\n")
    (ws / "dir.mrc").mkdir()
    (ws / "afile").write_text("a file where a folder is expected\n")
    return ws


@pytest.fixture
def ws(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "ws", symlinks=True))


def digest(ws: Path) -> dict[str, str]:
    """Checksum of every file of the workspace (lock files are the one thing a refused run may leave)."""
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ws.rglob("*")) if p.is_file() and p.name != LOCK_NAME and not p.is_symlink()}


# ------------------------------------------------------------------------------------------- spoilers
def star_lines(ws: Path, fn: Callable[[list[str]], list[str]], name: str = "data/particles.star") -> None:
    path = ws / name
    path.write_text("\n".join(fn(path.read_text().split("\n"))))


def first_row(lines: list[str]) -> int:
    return next(i for i, l in enumerate(lines) if len(l.split()) >= 3 and not l.startswith("_"))


def drop_field(lines: list[str]) -> list[str]:
    i = first_row(lines) + 3
    lines[i] = "\t".join(lines[i].split("\t")[:-1])
    return lines


def add_field(lines: list[str]) -> list[str]:
    i = first_row(lines) + 1
    lines[i] += "\t7"
    return lines


def duplicate_label(lines: list[str]) -> list[str]:
    i = next(i for i, l in enumerate(lines) if l.startswith("_rlnVoltage"))
    lines[i] = "_rlnMagnification #3"
    return lines


def open_quote(lines: list[str]) -> list[str]:
    i = first_row(lines) + 2
    f = lines[i].split("\t")
    f[10] = "'" + f[10]
    lines[i] = "\t".join(f)
    return lines


def rows_after_blank(lines: list[str]) -> list[str]:
    lines.insert(first_row(lines) + 5, "")
    return lines


STACK = "data/stacks/tomo_000.mrcs"


def rewrite_stack(ws: Path, data: np.ndarray, name: str = STACK) -> None:
    with mrcfile.new(ws / name, overwrite=True) as m:
        m.set_data(data.astype(np.float32))


def stack_data(ws: Path, name: str = STACK) -> np.ndarray:
    with mrcfile.open(ws / name, permissive=True) as m:
        return m.data.copy()


def set_mode(ws: Path, mode: int, name: str = STACK) -> None:
    with open(ws / name, "r+b") as fh:  # MRC header word 4: the mode
        fh.seek(12)
        fh.write(np.int32(mode).tobytes())


def truncate(ws: Path, nbytes: int, name: str = STACK) -> None:
    path = ws / name
    os.truncate(path, nbytes if nbytes >= 0 else path.stat().st_size + nbytes)


def stack_named_mrc(ws: Path) -> None:
    (ws / STACK).rename(ws / STACK[:-1])
    star_lines(ws, lambda ls: [l.replace("tomo_000.mrcs", "tomo_000.mrc") for l in ls])


def nan_pixel(ws: Path, name: str = STACK) -> None:
    d = stack_data(ws, name)
    d[2, 5, 5] = np.nan
    rewrite_stack(ws, d, name)


def evil_pickle(ws: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {ws / 'PWNED'}",))

    (ws / "ind.pkl").write_bytes(pickle.dumps(Evil()))


def write_file(ws: Path, name: str, text: str) -> None:
    (ws / name).parent.mkdir(parents=True, exist_ok=True)
    (ws / name).write_text(text)


def corrupt_bytes(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff" * 20)


def checkpoint_without(ws: Path, key: str, name: str = "run/weights.2.pt") -> None:
    ck = torch.load(ws / name, weights_only=True)
    del ck[key]
    torch.save(ck, ws / name)


def checkpoint_wrong_weights(ws: Path, name: str = "run/weights.2.pt") -> None:
    ck = torch.load(ws / name, weights_only=True)
    ck["model"] = {k: v[..., :1] if v.ndim else v for k, v in ck["model"].items()}
    torch.save(ck, ws / name)


def link(ws: Path, target: str, name: str, hard: bool = False) -> None:
    (ws / name).parent.mkdir(parents=True, exist_ok=True)
    if hard:
        os.link(ws / target, ws / name)
    else:
        os.symlink(ws / target, ws / name)


def hold_lock(ws: Path, folder: str) -> subprocess.Popen:
    """Another process holding the training lock of ``folder`` (as a running train_vae does)."""
    (ws / folder).mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws / folder / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes beyond ``nbytes`` fail with EFBIG (the disk-full path, without a full disk)."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def small_tmpfs(ws: Path, kib: int, read_only: bool = False):
    """A real full disk: a tmpfs of ``kib`` KiB at ws/full, or a read-only one (skips where mounting is not
    allowed; as root, permissions do not stop writes, a read-only file system does)."""
    mnt = ws / "full"
    mnt.mkdir()
    opts = f"size={kib}k" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    argv: list[str]
    words: list[str]
    prep: Callable[[Path], object] | None = None
    outputs: list[str] = field(default_factory=list)
    around: Callable[[Path], contextlib.AbstractContextManager] | None = None


S = "{ws}/data/particles.star"
BP_OUT = ["out/map.mrc", "out/map_half1.mrc", "out/map_half2.mrc", "out/map_filtered.mrc", "out/map_fsc.csv", "out/map_fsc.png"]
BP = ["backproject", S, "-o", "{ws}/out/map.mrc"]
TV = ["train_vae", S, "-o", "{ws}/out/run", *SMALL_VAE]
TV_OUT = ["out/run/weights.pt", "out/run/z.npy", "out/run/weights.1.pt", "out/run/config.json", "out/run/loss.csv"]
TN = ["train_nn", S, "-o", "{ws}/out/nn", *SMALL_NN]
TN_OUT = ["out/nn/weights.pt", "out/nn/reconstruct.mrc", "out/nn/config.json"]
EV = ["eval_vol", "-w", "{ws}/run/weights.pt", "-c", "{ws}/run/config.json", "-o", "{ws}/out/vols"]
EV_OUT = ["out/vols/vol_000.mrc", "out/vols/vol_001.mrc"]
EI = ["eval_images", S, "-w", "{ws}/run/weights.pt", "-c", "{ws}/run/config.json"]
EI_OUT = ["out/z.npy", "out/z_particle_ids.txt"]
AN = ["analyze", "{ws}/run", "--ksample", "2", "--pc", "1", "--n-per-pc", "2", "-o", "{ws}/out/ana"]
AN_OUT = ["out/ana/z_pca.npy", "out/ana/summary.txt", "out/ana/kmeans2/labels.txt", "out/ana/z_pca.png"]
FI = ["filter", S, "-o", "{ws}/out/sel.star"]
FI_OUT = ["out/sel.star"]
MB = ["mapback", "{ws}/data/particles_volumes.star", "--labels", "{ws}/labels.txt", "-o", "{ws}/out/mb"]
MB_OUT = ["out/mb/mapback_summary.txt"]
CV = ["convergence_vae", "{ws}/run", "--epoch-interval", "1", "--n-vols", "2", "-o", "{ws}/out/conv"]
CV_OUT = ["out/conv/convergence.csv", "out/conv/convergence.png"]
SI = ["simulate", "-o", "{ws}/out/sim", "-n", "2", "--phantom-box", "8", "--tilt-max", "3"]
SI_OUT = ["out/sim/particles.star"]
VA = ["analyze_volumes", "{ws}/vols", "-o", "{ws}/out/va"]
DS = ["downsample", S, "-D", "8", "-o", "{ws}/out/ds.star"]
DS_OUT = ["out/ds.star", "out/ds_stacks/tomo_000.mrcs", "out/ds_stacks/tomo_001.mrcs"]


def three_volumes(ws: Path, bad: np.ndarray | None = None) -> None:
    (ws / "vols").mkdir()
    for i in range(3):
        with mrcfile.new(ws / "vols" / f"vol_{i:03d}.mrc") as m:
            m.set_data(np.random.default_rng(i).normal(size=(8, 8, 8)).astype(np.float32) if i or bad is None else bad)


CASES = [
    # ---------------------------------------------------------------- outputs onto inputs (the first rows of the issue)
    Case("filter_onto_its_input_star", ["filter", S, "--ind", "{ws}/ind.txt", "-o", S], ["particles.star", "would replace the input"]),
    Case("filter_onto_input_through_symlink", FI + ["--ind", "{ws}/ind.txt"], ["would replace the input", "particles.star"],
         prep=lambda w: link(w, "data/particles.star", "out/sel.star")),
    Case("filter_onto_input_through_hard_link", FI + ["--ind", "{ws}/ind.txt"], ["would replace the input"],
         prep=lambda w: link(w, "data/particles.star", "out/sel.star", hard=True)),
    Case("filter_per_tomogram_file_onto_input", FI + ["--ind", "{ws}/ind.txt", "--tomogram", "all"], ["sel_tomo_000.star", "would replace the input"],
         prep=lambda w: link(w, "data/particles.star", "out/sel_tomo_000.star", hard=True), outputs=FI_OUT),
    Case("backproject_onto_input_stack_named_mrc", ["backproject", S, "-o", "{ws}/data/stacks/tomo_000.mrc"], ["tomo_000.mrc", "would replace the input"],
         prep=lambda w: stack_named_mrc(w)),
    Case("backproject_half_map_onto_input_stack", BP, ["map_half1.mrc", "would replace the input", "tomo_001.mrcs"],
         prep=lambda w: link(w, "data/stacks/tomo_001.mrcs", "out/map_half1.mrc"), outputs=["out/map.mrc"]),
    Case("backproject_onto_the_star", ["backproject", S, "-o", "{ws}/data/particles.mrc"], ["would replace the input"],
         prep=lambda w: link(w, "data/particles.star", "data/particles.mrc", hard=True)),
    Case("eval_images_out_z_is_the_star", EI + ["--out-z", S], ["particles.star", "would replace the input"]),
    Case("eval_images_out_zlogvar_is_the_config", EI + ["--out-z", "{ws}/out/z.npy", "--out-zlogvar", "{ws}/run/config.json"],
         ["config.json", "would replace the input"], outputs=EI_OUT),
    Case("eval_images_out_z_is_the_weights", EI + ["--out-z", "{ws}/run/weights.pt"], ["would replace the input"]),
    Case("eval_images_z_and_zlogvar_the_same", EI + ["--out-z", "{ws}/out/z.npy", "--out-zlogvar", "{ws}/out/z.npy"],
         ["the same file"], outputs=EI_OUT),
    Case("eval_vol_volume_onto_config", EV + ["-z", "0", "0", "--prefix", "config"], ["would replace the input"],
         prep=lambda w: link(w, "run/config.json", "out/vols/config000.mrc", hard=True)),
    Case("eval_vol_prefix_leaves_outdir", EV + ["-z", "0", "0", "--prefix", "../../escape"], ["--prefix", "plain file-name prefix"]),
    Case("eval_vol_prefix_with_folder", EV + ["-z", "0", "0", "--prefix", "sub/vol_"], ["--prefix"]),
    Case("train_vae_ind_file_inside_outdir", ["train_vae", S, "-o", "{ws}/out/run", "--ind", "{ws}/out/run/particle_ids.txt", *SMALL_VAE],
         ["particle_ids.txt", "would replace the input"], prep=lambda w: write_file(w, "out/run/particle_ids.txt", "0\n1\n2\n"),
         outputs=["out/run/config.json", "out/run/weights.1.pt"]),
    Case("downsample_onto_its_input_star", ["downsample", S, "-D", "8", "-o", S], ["particles.star", "would replace the input"]),
    Case("downsample_stacks_onto_the_input_stacks", DS + ["--stack-dir", "{ws}/data/stacks"], ["tomo_000.mrcs", "would replace the input"],
         outputs=DS_OUT),
    # ---------------------------------------------------------------- OS errors on writing
    Case("downsample_stack_dir_under_a_file", DS + ["--stack-dir", "{ws}/afile/stacks"], ["afile", "cannot write"], outputs=DS_OUT),
    Case("backproject_output_under_a_file", ["backproject", S, "-o", "{ws}/afile/map.mrc"], ["afile", "cannot write", "a file is in the way"]),
    Case("backproject_output_is_a_folder", ["backproject", S, "-o", "{ws}/dir.mrc"], ["dir.mrc", "the path is a folder"]),
    Case("backproject_file_size_limit", BP, ["cannot write", "map"], outputs=BP_OUT, around=lambda w: file_size_limit(12000)),
    Case("backproject_disk_full", ["backproject", S, "-o", "{ws}/full/map.mrc"], ["no space left on the device"],
         outputs=[o.replace("out/", "full/") for o in BP_OUT], around=lambda w: small_tmpfs(w, 40)),
    Case("backproject_read_only_file_system", ["backproject", S, "-o", "{ws}/full/map.mrc"], ["full/map.mrc", "read-only file system"],
         outputs=[o.replace("out/", "full/") for o in BP_OUT], around=lambda w: small_tmpfs(w, 64, read_only=True)),
    Case("simulate_disk_full_while_streaming_stacks", ["simulate", "-o", "{ws}/full/sim", "-n", "40", "--particles-per-tomogram", "20"],
         ["tomo_000.mrcs", "no space left on the device"], outputs=["full/sim/particles.star", "full/sim/volumes/vol_000.mrc"],
         around=lambda w: small_tmpfs(w, 512)),
    Case("train_vae_outdir_is_a_file", ["train_vae", S, "-o", S, *SMALL_VAE], ["particles.star", "must be a folder"]),
    Case("train_vae_outdir_under_a_file", ["train_vae", S, "-o", "{ws}/afile/run", *SMALL_VAE], ["cannot write"]),
    Case("train_nn_outdir_is_a_file", ["train_nn", S, "-o", "{ws}/afile", *SMALL_NN], ["afile", "must be a folder"]),
    Case("eval_vol_outdir_is_a_file", ["eval_vol", "-w", "{ws}/run/weights.pt", "-c", "{ws}/run/config.json", "-o", "{ws}/afile", "-z", "0", "0"],
         ["cannot write"]),
    Case("analyze_outdir_is_a_file", AN[:-1] + ["{ws}/afile"], ["cannot write"]),
    Case("filter_output_is_a_folder", ["filter", S, "--ind", "{ws}/ind.txt", "-o", "{ws}/dir.star"], ["the path is a folder"],
         prep=lambda w: (w / "dir.star").mkdir()),
    Case("simulate_outdir_is_a_file", ["simulate", "-o", "{ws}/afile", "-n", "2", "--phantom-box", "8"], ["afile", "cannot write"]),
    # ---------------------------------------------------------------- star syntax (the format layer's physical checks are reserved)
    Case("duplicated_column_label", BP, ["line 7", "_rlnMagnification appears a second time"], prep=lambda w: star_lines(w, duplicate_label), outputs=BP_OUT),
    Case("row_with_a_field_fewer", BP, ["too few"], prep=lambda w: star_lines(w, drop_field), outputs=BP_OUT),
    Case("row_with_a_field_more", TV, ["too many"], prep=lambda w: star_lines(w, add_field), outputs=TV_OUT),
    Case("open_quote_in_a_row", EI + ["--out-z", "{ws}/out/z.npy"], ["not closed"], prep=lambda w: star_lines(w, open_quote), outputs=EI_OUT),
    Case("rows_after_a_blank_line", FI + ["--ind", "{ws}/ind.txt"], ["after the blank line"], prep=lambda w: star_lines(w, rows_after_blank), outputs=FI_OUT),
    Case("volume_star_short_row", MB, ["particles_volumes.star", "too few"],
         prep=lambda w: star_lines(w, drop_field, "data/particles_volumes.star"),
         outputs=MB_OUT),
    # ---------------------------------------------------------------- stacks
    Case("truncated_stack", BP, ["tomo_000.mrcs: truncated:", "bytes, but the header"], prep=lambda w: truncate(w, -100), outputs=BP_OUT),
    Case("zero_length_stack", TV, ["tomo_000.mrcs", "not a readable MRC file"], prep=lambda w: truncate(w, 0), outputs=TV_OUT),
    Case("float32_stack_header_says_int16", BP, ["tomo_000.mrcs", "int16", "does not match"], prep=lambda w: set_mode(w, 1), outputs=BP_OUT),
    Case("complex_mode_stack", BP, ["MRC mode 4", "complex"], prep=lambda w: set_mode(w, 4), outputs=BP_OUT),
    Case("non_square_stack", BP, ["square"], prep=lambda w: rewrite_stack(w, np.zeros((20, 16, 14))), outputs=BP_OUT),
    Case("odd_box_stack", TN, ["odd"], prep=lambda w: rewrite_stack(w, np.zeros((20, 15, 15))), outputs=TN_OUT),
    Case("mixed_boxes", EI + ["--out-z", "{ws}/out/z.npy"], ["differs"], prep=lambda w: rewrite_stack(w, np.zeros((20, 18, 18))), outputs=EI_OUT),
    Case("nan_pixel_backproject", BP, ["tomo_000.mrcs", "image 3", "NaN"], prep=nan_pixel, outputs=BP_OUT),
    Case("nan_pixel_backproject_lazy", BP + ["--lazy"], ["NaN"], prep=nan_pixel, outputs=BP_OUT),
    Case("nan_pixel_train_vae", TV, ["NaN"], prep=nan_pixel, outputs=TV_OUT),
    Case("nan_pixel_eval_images", EI + ["--out-z", "{ws}/out/z.npy"], ["NaN"], prep=nan_pixel, outputs=EI_OUT),
    Case("nan_pixel_downsample_second_stack", DS + ["-b", "3"], ["tomo_001.mrcs", "image 3", "NaN"],
         prep=lambda w: nan_pixel(w, "data/stacks/tomo_001.mrcs"), outputs=DS_OUT),
    # ---------------------------------------------------------------- index and label files
    Case("pickle_index_is_not_unpickled", BP + ["--ind", "{ws}/ind.pkl"], ["ind.pkl", "not read", ".npy"], prep=evil_pickle, outputs=BP_OUT),
    Case("pickle_index_filter", FI + ["--ind", "{ws}/ind.pkl"], ["ind.pkl", "not read"], prep=evil_pickle, outputs=FI_OUT),
    Case("index_not_whole", TV + ["--ind", "{ws}/i.txt"], ["i.txt", "row 2", "1.5", "not a whole number"], prep=lambda w: (w / "i.txt").write_text("0\n1.5\n3\n"), outputs=TV_OUT),
    Case("index_repeated", BP + ["--ind", "{ws}/i.txt"], ["row 3", "repeats row 1"], prep=lambda w: (w / "i.txt").write_text("1\n2\n1\n"), outputs=BP_OUT),
    Case("index_out_of_range", EI + ["--out-z", "{ws}/out/z.npy", "--ind", "{ws}/i.txt"], ["out of range"], prep=lambda w: (w / "i.txt").write_text("0\n8\n"), outputs=EI_OUT),
    Case("first_negative", TN + ["--first", "-2"], ["--first -2"], outputs=TN_OUT),
    Case("index_npy_of_text", BP + ["--ind", "{ws}/i.npy"], ["must be numbers"], prep=lambda w: np.save(w / "i.npy", np.array(["a", "b"])), outputs=BP_OUT),
    Case("labels_wrong_length_filter", FI + ["--labels", "{ws}/l.txt", "--labels-sel", "0"], ["l.txt", "7 labels", "8 particles"],
         prep=lambda w: (w / "l.txt").write_text("0\n" * 7), outputs=FI_OUT),
    Case("labels_wrong_length_mapback", ["mapback", "{ws}/data/particles_volumes.star", "--labels", "{ws}/l.txt", "-o", "{ws}/out/mb"], ["l.txt"],
         prep=lambda w: (w / "l.txt").write_text("0\n" * 5), outputs=MB_OUT),
    Case("labels_not_whole", FI + ["--labels", "{ws}/l.txt", "--labels-sel", "0"], ["not a whole number"],
         prep=lambda w: (w / "l.txt").write_text("0\n0.5\n" * 4), outputs=FI_OUT),
    Case("unknown_label_selected", FI + ["--labels", "{ws}/labels.txt", "--labels-sel", "7"], ["--labels-sel 7"], outputs=FI_OUT),
    # ---------------------------------------------------------------- latent points, options
    Case("eval_vol_z_infinite", EV + ["-z", "inf", "0"], ["-z inf", "not a finite number"], outputs=EV_OUT),
    Case("eval_vol_lowpass_nan", EV + ["-z", "0", "0", "--lowpass", "nan"], ["--lowpass nan"], outputs=EV_OUT),
    Case("eval_vol_z_wrong_dimension", EV + ["-z", "0", "0", "0"], ["zdim 2", "3 values"], outputs=EV_OUT),
    Case("eval_vol_zfile_wrong_dimension", EV + ["--zfile", "{ws}/z3.txt"], ["z3.txt", "shape (1, 3)"], prep=lambda w: (w / "z3.txt").write_text("1 2 3\n"), outputs=EV_OUT),
    Case("eval_vol_zfile_nan", EV + ["--zfile", "{ws}/zn.txt"], ["zn.txt", "row 2"], prep=lambda w: (w / "zn.txt").write_text("0 0\nnan 1\n"), outputs=EV_OUT),
    Case("eval_vol_z_for_homogeneous_model", ["eval_vol", "-w", "{ws}/nn/weights.pt", "-c", "{ws}/nn/config.json", "-o", "{ws}/out/vols", "-z", "0"],
         ["takes no latent points"], outputs=EV_OUT),
    Case("train_vae_wd_nan", TV + ["--wd", "nan"], ["--wd nan"], outputs=TV_OUT),
    Case("train_vae_window_inverted", TV + ["--window-r", "0.9", "0.5"], ["--window-r 0.9 0.5"], outputs=TV_OUT),
    Case("backproject_threads_negative", ["--threads", "-2"] + BP, ["--threads -2"], outputs=BP_OUT),
    Case("simulate_voltage_zero", SI + ["--voltage", "0"], ["--voltage 0"], outputs=SI_OUT),
    Case("downsample_odd_box", DS[:3] + ["7"] + DS[4:], ["-D 7", "even"], outputs=DS_OUT),
    Case("downsample_box_not_smaller", DS[:3] + ["16"] + DS[4:], ["-D 16", "smaller than the images' box of 16"], outputs=DS_OUT),
    Case("simulate_defocus_range_inverted", SI + ["--defocus-min", "30000", "--defocus-max", "10000"], ["--defocus-max 10000"], outputs=SI_OUT),
    Case("simulate_volume_not_mrc", ["simulate", "-o", "{ws}/out/sim", "--volumes", "{ws}/z.txt"], ["z.txt", "not a readable MRC file"], outputs=SI_OUT),
    # ---------------------------------------------------------------- checkpoints, configs, runs
    Case("checkpoint_of_another_architecture", ["train_vae", S, "-o", "{ws}/out/run", "--load", "{ws}/run/weights.1.pt",
                                                *SMALL_VAE[:-6], "--dec-layers", "2", "--dec-dim", "8", "--seed", "0"],
         ["weights.1.pt", "different architecture", "dec-layers"], outputs=TV_OUT),
    Case("eval_vol_weights_and_config_of_other_runs", ["eval_vol", "-w", "{ws}/nn/weights.pt", "-c", "{ws}/run/config.json", "-o", "{ws}/out/vols", "-z", "0", "0"],
         ["different architecture"], outputs=EV_OUT),
    Case("corrupt_checkpoint", EV + ["-z", "0", "0"], ["weights.pt", "not a tomodrgn-scipion checkpoint"], prep=lambda w: corrupt_bytes(w / "run/weights.pt"), outputs=EV_OUT),
    Case("checkpoint_without_optimizer", ["train_vae", S, "-o", "{ws}/run", "--load", "latest", *SMALL_VAE[:2], "-n", "3", *SMALL_VAE[4:]],
         ["weights.2.pt", "missing optimizer"], prep=lambda w: checkpoint_without(w, "optimizer"), outputs=["run/weights.3.pt"]),
    Case("checkpoint_weights_do_not_fit", AN, ["weights.2.pt", "do not fit"], prep=checkpoint_wrong_weights, outputs=AN_OUT),
    Case("config_not_json", EV + ["-z", "0", "0"], ["config.json", "not a JSON config"], prep=lambda w: corrupt_bytes(w / "run/config.json"), outputs=EV_OUT),
    Case("eval_images_with_homogeneous_model", ["eval_images", S, "-w", "{ws}/nn/weights.pt", "-c", "{ws}/nn/config.json", "--out-z", "{ws}/out/z.npy"],
         ["has no encoder"], outputs=EI_OUT),
    Case("resume_with_another_star_selection", ["train_vae", S, "-o", "{ws}/run", "--load", "latest", "--ind", "{ws}/ind.txt", *SMALL_VAE[:2], "-n", "3", *SMALL_VAE[4:]],
         ["particle_ids.txt", "trained on 8 particles", "selects 3"], outputs=["run/weights.3.pt"]),
    Case("resume_latest_without_checkpoints", TV + ["--load", "latest"], ["no checkpoint"], outputs=TV_OUT),
    Case("resume_with_corrupt_loss_csv", ["train_vae", S, "-o", "{ws}/run", "--load", "latest", *SMALL_VAE[:2], "-n", "3", *SMALL_VAE[4:]],
         ["loss.csv", "line 3"], prep=lambda w: (w / "run/loss.csv").write_text((w / "run/loss.csv").read_text().replace("\n2,", "\ntwo,")),
         outputs=["run/weights.3.pt"]),
    Case("second_run_into_a_locked_folder", TV, ["another training run", "pid"], around=lambda w: _locked(w, "out/run"), outputs=TV_OUT),
    Case("second_train_nn_into_a_locked_folder", TN, ["another training run"], around=lambda w: _locked(w, "out/nn"), outputs=TN_OUT),
    Case("analyze_corrupt_z", AN, ["z.2.npy", "not a readable .npy"], prep=lambda w: corrupt_bytes(w / "run/z.2.npy"), outputs=AN_OUT),
    Case("analyze_z_wrong_length", AN, ["z.2.npy", "particle_ids.txt"], prep=lambda w: np.save(w / "run/z.2.npy", np.zeros((5, 2), np.float32)), outputs=AN_OUT),
    Case("analyze_corrupt_loss_csv", AN, ["loss.csv", "line 2"], prep=lambda w: (w / "run/loss.csv").write_text("epoch,recon,kl,total\nx,1,2,3\n"), outputs=AN_OUT),
    Case("analyze_missing_epoch", AN + ["--epoch", "9"], ["no checkpoint weights.9.pt"], outputs=AN_OUT),
    Case("analyze_not_a_run", ["analyze", "{ws}/data", "-o", "{ws}/out/ana"], ["config"], outputs=AN_OUT),
    Case("convergence_corrupt_z", CV, ["z.1.npy"], prep=lambda w: corrupt_bytes(w / "run/z.1.npy"), outputs=CV_OUT),
    Case("convergence_corrupt_loss_csv", CV, ["loss.csv"], prep=lambda w: (w / "run/loss.csv").write_text("epoch,recon\n1,zz\n"), outputs=CV_OUT),
    Case("convergence_checkpoint_keys", CV, ["weights.", "missing norm"], prep=lambda w: checkpoint_without(w, "norm", "run/weights.1.pt"), outputs=CV_OUT),
    Case("convergence_no_run", ["convergence_vae", "{ws}/data", "-o", "{ws}/out/conv"], ["data"], outputs=CV_OUT),
    Case("mapback_particles_star_mismatch", MB + ["--particles", "{ws}/p6.star"], ["p6.star"],
         prep=lambda w: main(["filter", str(w / "data/particles.star"), "--ind", str(w / "ind.txt"), "-o", str(w / "p6.star")]), outputs=MB_OUT),
    Case("analyze_volumes_nan_volume", VA, ["vol_000.mrc"], prep=lambda w: three_volumes(w, np.full((8, 8, 8), np.nan, np.float32)),
         outputs=["out/va/volume_pca.txt"]),
    Case("analyze_volumes_shapes_differ", VA, ["vol_000.mrc"], prep=lambda w: three_volumes(w, np.zeros((6, 6, 6), np.float32)),
         outputs=["out/va/volume_pca.txt"]),
]


@contextlib.contextmanager
def _locked(ws: Path, folder: str):
    proc = hold_lock(ws, folder)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, ws: Path, capsys):
    if case.prep is not None:
        case.prep(ws)
    argv = [a.format(ws=ws) for a in case.argv]
    with case.around(ws) if case.around else contextlib.nullcontext():
        before = digest(ws)
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        after = digest(ws)
        left = [o for o in case.outputs if (ws / o).exists() and o not in before]
        temps = [str(p) for p in ws.rglob(".*") if TMP_RE.match(p.name)]
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in case.words:
        assert w in lines[0], lines[0]
    assert after == before, "an input changed"
    assert not left, f"outputs left under their final names: {left}"
    assert not temps, f"temporary files left: {temps}"
    assert not (ws / "PWNED").exists()


def test_every_command_that_reads_user_files_is_covered():
    from tomodrgn_scipion.method.cli import COMMANDS

    covered = {c.argv[c.argv[0] == "--threads" and 2 or 0] for c in CASES}
    assert set(COMMANDS) - {"pc_traversal", "graph_traversal"} <= covered
    assert len(CASES) + len(FORMAT_CASES) >= 100


def set_value(ws: Path, column: str, value: str, row: int = 0) -> None:
    """Write ``value`` into ``column`` of one row of data/particles.star (every other text kept)."""
    from tomodrgn_scipion.method.star import read_star, write_star

    df = read_star(ws / "data/particles.star")
    df.loc[row, column] = value
    write_star(df, ws / "data/particles.star")


def cut_inside_last_group_name(ws: Path) -> None:
    path = ws / "data/particles.star"
    text = path.read_text().rstrip("\n")
    path.write_text(text[:-3])


def drop_column(ws: Path, column: str) -> None:
    from tomodrgn_scipion.method.star import read_star, write_star

    df = read_star(ws / "data/particles.star")
    write_star(df.drop(columns=[column]), ws / "data/particles.star")


#: Rows of issue 15 that belong to the format layer (tomodrgn_scipion/method/formats, star.TiltSeriesStar).
FORMAT_CASES = [
    Case("negative_dose", BP, ["row 2", "_rlnCtfBfactor", "dose -1", "outside [0, inf]"],
         prep=lambda w: set_value(w, "rlnCtfBfactor", "4.0", 1), outputs=BP_OUT),
    Case("cos_tilt_above_1", BP, ["row 1", "_rlnCtfScalefactor", "cos(stage tilt) 1.5", "outside (0, 1]"],
         prep=lambda w: set_value(w, "rlnCtfScalefactor", "1.5"), outputs=BP_OUT),
    Case("cos_tilt_zero", TV, ["row 3", "_rlnCtfScalefactor", "cos(stage tilt) 0"],
         prep=lambda w: set_value(w, "rlnCtfScalefactor", "0.000", 2), outputs=TV_OUT),
    Case("cos_tilt_negative", FI + ["--ind", "{ws}/ind.txt"], ["_rlnCtfScalefactor", "-0.5"],
         prep=lambda w: set_value(w, "rlnCtfScalefactor", "-0.5"), outputs=FI_OUT),
    Case("pixel_size_zero", BP, ["row 1", "_rlnDetectorPixelSize", "0, outside (0, inf]"],
         prep=lambda w: set_value(w, "rlnDetectorPixelSize", "0.0"), outputs=BP_OUT),
    Case("pixel_size_negative", EI + ["--out-z", "{ws}/out/z.npy"], ["_rlnDetectorPixelSize", "-6"],
         prep=lambda w: set_value(w, "rlnDetectorPixelSize", "-6.0"), outputs=EI_OUT),
    Case("voltage_zero", TN, ["row 1", "_rlnVoltage", "0, outside (0, inf]"],
         prep=lambda w: set_value(w, "rlnVoltage", "0"), outputs=TN_OUT),
    Case("voltage_negative", BP, ["_rlnVoltage", "-300"], prep=lambda w: set_value(w, "rlnVoltage", "-300"), outputs=BP_OUT),
    Case("short_last_row_inside_group_name", BP, ["the last", "no line end", "cut short"],
         prep=cut_inside_last_group_name, outputs=BP_OUT),
    Case("origin_x_without_origin_y", BP, ["_rlnOriginX is there but _rlnOriginY is missing"],
         prep=lambda w: drop_column(w, "rlnOriginY"), outputs=BP_OUT),
]


@pytest.mark.parametrize("case", FORMAT_CASES, ids=[c.name for c in FORMAT_CASES])
def test_bad_values(case: Case, ws: Path, capsys):
    test_bad_input(case, ws, capsys)


@pytest.mark.parametrize("spoil,words", [
    (lambda w: set_value(w, "rlnDefocusU", "-500.0", 4), "1 tilt image(s) have a negative (over-focus) defocus, the first at row 5"),
    (lambda w: set_value(w, "rlnImageName", "1@stacks/tomo_000.mrcs", 1), "1 tilt image(s) are listed more than once, the first 1@stacks/tomo_000.mrcs"),
    (lambda w: set_value(w, "rlnGroupName", "lonely", 0), "1 of 9 particle(s) have a single tilt image"),
])
def test_suspicious_values_warn_once_and_go_on(ws: Path, capsys, caplog, spoil, words):
    """Odd but possible values: one warning line with a count, and the command runs."""
    spoil(ws)
    with caplog.at_level("WARNING"):
        assert main(BP[:1] + [a.format(ws=ws) for a in BP[1:]]) == 0, capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and words in warnings[0], warnings


def test_eval_images_writes_exactly_the_paths_asked_for(ws: Path, capsys):
    """``--out-z`` without ``.npy`` is written under that very name (numpy.save would append ``.npy``)."""
    code = main(["eval_images", str(ws / "data/particles.star"), "-w", str(ws / "run/weights.pt"), "-c",
                 str(ws / "run/config.json"), "--out-z", str(ws / "out/zmeans"), "--out-zlogvar", str(ws / "out/lv.bin")])
    assert code == 0, capsys.readouterr().err
    z = np.load(ws / "out/zmeans")
    assert z.shape == (8, 2) and np.load(ws / "out/lv.bin").shape == (8, 2)
    assert sorted(p.name for p in (ws / "out").iterdir()) == ["lv.bin", "zmeans", "zmeans_particle_ids.txt"]


def test_resuming_from_the_final_weights_may_rewrite_them(ws: Path, capsys):
    """``--load OUTDIR/weights.pt`` with more epochs continues the run and rewrites its final files (the
    checkpoint being continued is the run's own, not an input to protect)."""
    argv = ["train_vae", str(ws / "data/particles.star"), "-o", str(ws / "run"), "--load", str(ws / "run/weights.pt"),
            *SMALL_VAE[:2], "-n", "3", *SMALL_VAE[4:]]
    assert main(argv) == 0, capsys.readouterr().err
    assert torch.load(ws / "run/weights.pt", weights_only=True)["epoch"] == 3
