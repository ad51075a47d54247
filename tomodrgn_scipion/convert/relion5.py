"""scipion-em-reliontomo's ``RelionSetOfPseudoSubtomograms`` <-> the method's RELION 5 input, and back.

A ``RelionSetOfPseudoSubtomograms`` (reliontomo's "Extract subtomos", RELION 5 ``relion_tomo_subtomo``)
keeps its metadata in RELION's own files: an optimisation set naming a ``particles.star``
(``data_general``, ``data_optics``, ``data_particles``: one row per particle, ``_rlnTomoParticleName``)
and a ``tomograms.star`` (``data_global`` and one star file per tilt series). A Scipion subset of such a
set has fewer items than its ``particles.star`` has rows, so every conversion here selects rows by
``_rlnTomoParticleName``, never by position, and keeps every other block, column and value as text.

* :func:`optimisation_set_for` writes the method's input for exactly the items of a set;
* :func:`relion_subset` gives reliontomo a subset of the input's own class (its info copied, its items
  cloned) together with a matching optimisation set;
* :func:`relion_items_with` attaches z or cluster labels to clones of the items, matched by name;
* :func:`cluster_coordinates` puts the particles as labelled ``SetOfCoordinates3D`` on the input's
  tomograms.

The star handling below is text based and needs no Scipion; the functions taking sets import reliontomo's
and tomo's classes.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from ..method.errors import InputError

#: RELION 5 labels used here.
PARTICLE_NAME = "rlnTomoParticleName"
TOMO_NAME = "rlnTomoName"
ARE_2D_STACKS = "rlnTomoSubTomosAre2DStacks"
OPT_PARTICLES = "rlnTomoParticlesFile"
OPT_TOMOGRAMS = "rlnTomoTomogramsFile"
OPT_TRAJECTORIES = "rlnTomoTrajectoriesFile"
CENTERED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")

#: Attributes we add to reliontomo's items (and TomoDrgnParticle uses the same names).
Z_ATTR, CLUSTER_ATTR = "_tdZ", "_tdCluster"

REEXTRACT_2D = ("3D pseudo-subtomograms cannot be used: tomoDRGN needs each particle's tilt images. Re-extract "
                "them as 2D stacks with reliontomo's 'Extract subtomos' (input: these particles, 'Write output as "
                "2D stacks?' = Yes) and use its output")

_TOKEN = re.compile(r'"[^"]*"|\'[^\']*\'|\S+')


# ------------------------------------------------------------------------------------------ star text
@dataclass
class StarBlock:
    """One ``data_`` block of a star file, as text.

    Attributes
    ----------
    name : str
        The block name without ``data_`` (``""`` for an unnamed block).
    head : list of str
        Lines from the block's ``data_`` line up to its first value row (``loop_`` and labels included),
        kept verbatim, or the label/value pairs of a block without ``loop_``.
    labels : list of str
        Column labels without the leading ``_`` (loop blocks) or the pair labels (simple blocks).
    rows : list of str
        Value rows of a loop block, verbatim (empty for a simple block).
    tail : list of str
        Lines after the rows up to the next block (blank lines, comments), verbatim.
    loop : bool
        Whether the block is a ``loop_`` table.
    """

    name: str
    head: List[str] = field(default_factory=list)
    labels: List[str] = field(default_factory=list)
    rows: List[str] = field(default_factory=list)
    tail: List[str] = field(default_factory=list)
    loop: bool = False

    def column(self, label: str, source: str = "") -> List[str]:
        """Values of one column of a loop block (quotes kept), one per row."""
        if label not in self.labels:
            raise InputError(f"{source}: block data_{self.name} has no column _{label}")
        i = self.labels.index(label)
        out = []
        for n, row in enumerate(self.rows):
            tokens = _TOKEN.findall(row)
            if len(tokens) != len(self.labels):
                raise InputError(f"{source}: block data_{self.name}, row {n + 1} has {len(tokens)} values for "
                                 f"{len(self.labels)} columns")
            out.append(tokens[i])
        return out

    def value(self, label: str, source: str = "") -> str:
        """The value of a label of a simple block, or of a loop block's only row."""
        if self.loop:
            values = self.column(label, source)
            if len(values) != 1:
                raise InputError(f"{source}: block data_{self.name} has {len(values)} rows, expected one")
            return values[0]
        for line in self.head:
            tokens = _TOKEN.findall(line)
            if len(tokens) >= 2 and tokens[0] == "_" + label:
                return tokens[1]
        raise InputError(f"{source}: block data_{self.name} has no _{label}")


@dataclass
class StarText:
    """A star file as blocks of text: writing it unchanged gives the same file."""

    preamble: List[str]
    blocks: List[StarBlock]

    def block(self, name: str, source: str = "") -> StarBlock:
        for b in self.blocks:
            if b.name == name:
                return b
        raise InputError(f"{source}: no data_{name} block")

    def has_block(self, name: str) -> bool:
        return any(b.name == name for b in self.blocks)

    def text(self) -> str:
        lines = list(self.preamble)
        for b in self.blocks:
            lines += b.head + b.rows + b.tail
        return "".join(lines)


def read_star_text(path: str | os.PathLike) -> StarText:
    """Split a star file into its blocks, keeping every line verbatim.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    StarText

    Raises
    ------
    InputError
        One line naming the file when it is missing or has no ``data_`` block.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    preamble: List[str] = []
    blocks: List[StarBlock] = []
    cur: Optional[StarBlock] = None
    state = "pre"  # pre | head | labels | rows | tail
    for line in lines:
        s = line.strip()
        if s.startswith("data_"):
            cur = StarBlock(name=s[5:].split()[0] if len(s) > 5 else "", head=[line])
            blocks.append(cur)
            state = "head"
            continue
        if cur is None:
            preamble.append(line)
            continue
        if state == "head":
            if s == "loop_":
                cur.loop = True
                cur.head.append(line)
                state = "labels"
            elif s.startswith("_"):
                cur.head.append(line)
                cur.labels.append(_TOKEN.findall(s)[0][1:])
            else:
                (cur.head if not cur.labels else cur.tail).append(line)
                if cur.labels and s and not s.startswith("#"):
                    raise InputError(f"{path}: block data_{cur.name}: unexpected line '{s[:40]}'")
                if cur.labels:
                    state = "tail"
        elif state == "labels":
            if s.startswith("_"):
                cur.head.append(line)
                cur.labels.append(_TOKEN.findall(s)[0][1:])
            elif not s or s.startswith("#"):
                cur.head.append(line)
            else:
                cur.rows.append(line)
                state = "rows"
        elif state == "rows":
            if s and not s.startswith("#"):
                cur.rows.append(line)
            else:
                cur.tail.append(line)
                state = "tail"
        else:  # tail
            if s and not s.startswith("#"):
                raise InputError(f"{path}: block data_{cur.name}: a value row after the end of its table")
            cur.tail.append(line)
    if not blocks:
        raise InputError(f"{path}: no data_ block (not a star file)")
    for b in blocks:
        if b.rows and not b.rows[-1].endswith("\n"):
            b.rows[-1] += "\n"
    return StarText(preamble, blocks)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` under a temporary name in the target folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def unquote(token: str) -> str:
    """A star value without surrounding quotes."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return token[1:-1]
    return token


def particle_names(star: StarText, source: str = "") -> List[str]:
    """``_rlnTomoParticleName`` of every row of ``data_particles``, in file order (checked unique)."""
    names = [unquote(v) for v in star.block("particles", source).column(PARTICLE_NAME, source)]
    seen = set()
    for n in names:
        if n in seen:
            raise InputError(f"{source}: block data_particles: particle name {n} appears twice")
        seen.add(n)
    return names


def subset_particles_star(src: str | os.PathLike, names: Iterable[str], dst: str | os.PathLike) -> int:
    """Write ``src`` with only the ``data_particles`` rows of the given particles.

    Every other block, every column and every value stays as text; rows keep their file order.

    Parameters
    ----------
    src, dst : path-like
        RELION 5 (or WarpTools) ``particles.star`` and the file to write (atomically).
    names : iterable of str
        ``_rlnTomoParticleName`` of the particles to keep.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    InputError
        A name not in ``src``, or no name at all.
    """
    star = read_star_text(src)
    block = star.block("particles", str(src))
    all_names = particle_names(star, str(src))
    wanted = list(dict.fromkeys(names))
    if not wanted:
        raise InputError(f"{src}: no particles to keep")
    present = set(all_names)
    missing = [n for n in wanted if n not in present]
    if missing:
        raise InputError(f"{src}: block data_particles has no particle {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    keep = set(wanted)
    block.rows = [row for row, n in zip(block.rows, all_names) if n in keep]
    write_text_atomic(star.text(), dst)
    return len(block.rows)


def resolve_star_path(value: str, anchor: str | os.PathLike) -> str:
    """Where a path written in a RELION star file points, absolute.

    RELION writes paths relative to its project folder, usually a few levels above the star file: the value
    as it is when absolute, else the first existing of ``<folder>/value`` for the star's folder and each
    folder above it; the value unchanged when none exists.
    """
    name = unquote(value)
    index, sep, path = name.rpartition("@") if "@" in name else ("", "", name)
    if os.path.isabs(path):
        return name
    folder = Path(anchor).resolve().parent
    for base in (folder, *folder.parents):
        if (base / path).exists():
            return f"{index}{sep}{base / path}"
    return name


def with_absolute_paths(src: str | os.PathLike, block_name: str, labels: Sequence[str],
                        dst: str | os.PathLike) -> int:
    """Copy a star file with the paths of some columns made absolute (:func:`resolve_star_path`).

    Rows whose paths change are rewritten with their values separated by tabs; every other line, block and
    value stays as it was.

    Returns
    -------
    int
        Values changed.
    """
    star = read_star_text(src)
    block = star.block(block_name, str(src))
    cols = [block.labels.index(c) for c in labels if c in block.labels]
    changed = 0
    rows = []
    for row in block.rows:
        tokens = _TOKEN.findall(row)
        new = list(tokens)
        for i in cols:
            resolved = resolve_star_path(tokens[i], src)
            if resolved != unquote(tokens[i]):
                new[i] = resolved if not any(ch.isspace() for ch in resolved) else f'"{resolved}"'
                changed += 1
        rows.append(row if new == tokens else "\t".join(new) + "\n")
    block.rows = rows
    write_text_atomic(star.text(), dst)
    return changed


def write_optimisation_set(path: str | os.PathLike, particles: str | os.PathLike, tomograms: str | os.PathLike,
                           trajectories: Optional[str] = None) -> None:
    """Write a RELION 5 optimisation set (an unnamed block of file labels), atomically.

    Parameters
    ----------
    path : path-like
        The ``*_optimisation_set.star`` to write.
    particles, tomograms : path-like
        Its ``_rlnTomoParticlesFile`` and ``_rlnTomoTomogramsFile`` (written as absolute paths).
    trajectories : str, optional
        ``_rlnTomoTrajectoriesFile`` (Bayesian polishing), when the input had one.
    """
    lines = ["# version 50001\n", "\n", "data_\n", "\n",
             f"_{OPT_PARTICLES}   {os.path.abspath(particles)}\n",
             f"_{OPT_TOMOGRAMS}   {os.path.abspath(tomograms)}\n"]
    if trajectories:
        lines.append(f"_{OPT_TRAJECTORIES}   {os.path.abspath(trajectories)}\n")
    lines.append("\n")
    write_text_atomic("".join(lines), path)


def read_optimisation_set(path: str | os.PathLike) -> Dict[str, str]:
    """The files an optimisation set names (label without ``_`` -> path, relative ones resolved from its folder)."""
    star = read_star_text(path)
    out: Dict[str, str] = {}
    base = os.path.dirname(os.path.abspath(path))
    for b in star.blocks:
        for label in b.labels:
            value = unquote(b.value(label, str(path)))
            out[label] = value if os.path.isabs(value) else os.path.join(base, value)
    if OPT_PARTICLES not in out:
        raise InputError(f"{path}: optimisation set without _{OPT_PARTICLES}")
    return out


def are_2d_stacks(particles_star: StarText, source: str = "") -> bool:
    """``_rlnTomoSubTomosAre2DStacks`` of ``data_general`` (False when absent, as RELION 4 wrote them)."""
    if not particles_star.has_block("general"):
        return False
    try:
        return unquote(particles_star.block("general").value(ARE_2D_STACKS, source)) == "1"
    except InputError:
        return False


def tomogram_geometry(tomograms_star: str | os.PathLike) -> Dict[str, tuple]:
    """Size and pixel size of each tilt series of a RELION 5 ``tomograms.star``.

    Returns
    -------
    dict
        ``_rlnTomoName`` -> ((SizeX, SizeY, SizeZ) in px of the tilt series, tilt-series pixel size in A);
        None for the size when ``_rlnTomoSizeX/Y/Z`` are absent.
    """
    source = str(tomograms_star)
    block = read_star_text(source).block("global", source)
    names = [unquote(v) for v in block.column(TOMO_NAME, source)]
    px = [float(v) for v in block.column("rlnTomoTiltSeriesPixelSize", source)]
    if all(f"rlnTomoSize{a}" in block.labels for a in "XYZ"):
        sizes = list(zip(*(map(float, block.column(f"rlnTomoSize{a}", source)) for a in "XYZ")))
    else:
        sizes = [None] * len(names)
    return {n: (sz, p) for n, sz, p in zip(names, sizes, px)}


def particle_positions(particles_star: str | os.PathLike, tomograms_star: Optional[str] = None) -> Dict[str, tuple]:
    """Where each particle is in its tomogram and how it is oriented, from its own row (RELION 5).

    The position is RELION 5's ``X - A_sub o``: ``_rlnCenteredCoordinateX/Y/ZAngst`` (A from the tomogram
    centre; or ``_rlnCoordinateX/Y/Z`` in tilt-series pixels from the corner, with the tomogram size of
    ``tomograms.star``) less the refined origin ``_rlnOriginX/Y/ZAngst`` turned by the subtomogram orientation
    ``A_sub`` (``_rlnTomoSubtomogramRot/Tilt/Psi``); the orientation in the tomogram is ``A_sub A_part``
    (``A_part`` from ``_rlnAngleRot/Tilt/Psi``), RELION's Euler matrices (RELION 5 ``exp_model.cpp``, as the
    method's reader composes them).

    Parameters
    ----------
    particles_star : path-like
    tomograms_star : str, optional
        Needed only for files with ``_rlnCoordinateX/Y/Z`` instead of centred coordinates.

    Returns
    -------
    dict
        ``_rlnTomoParticleName`` -> (tomogram name, position (3,) in A from the tomogram centre, A (3, 3)).
    """
    import torch

    from ..method.transforms import euler_to_matrix

    source = str(particles_star)
    block = read_star_text(source).block("particles", source)
    names = [unquote(v) for v in block.column(PARTICLE_NAME, source)]
    tomos = [unquote(v) for v in block.column(TOMO_NAME, source)]
    n = len(names)

    def numeric(label: str, default: float = 0.0) -> np.ndarray:
        if label not in block.labels:
            return np.full(n, default)
        try:
            return np.array([float(unquote(v)) for v in block.column(label, source)])
        except ValueError:
            raise InputError(f"{source}: block data_particles, column _{label} is not numeric") from None

    def matrices(prefix: str) -> np.ndarray:
        return euler_to_matrix(*(torch.as_tensor(numeric(f"{prefix}{a}")) for a in ("Rot", "Tilt", "Psi"))).numpy()

    if all(c in block.labels for c in CENTERED):
        coord = np.stack([numeric(c) for c in CENTERED], 1)
    elif all(f"rlnCoordinate{a}" in block.labels for a in "XYZ"):
        if tomograms_star is None:
            raise InputError(f"{source}: _rlnCoordinateX/Y/Z need the tomograms.star (tomogram size)")
        geometry = tomogram_geometry(tomograms_star)
        coord = np.stack([numeric(f"rlnCoordinate{a}") for a in "XYZ"], 1)
        for i, t in enumerate(tomos):
            size, px = geometry.get(t, (None, None))
            if size is None:
                raise InputError(f"{tomograms_star}: no _rlnTomoSizeX/Y/Z for tomogram {t}")
            coord[i] = coord[i] * px - np.array(size) * px / 2.0
    else:
        raise InputError(f"{source}: block data_particles has no _rlnCenteredCoordinateX/Y/ZAngst nor "
                         f"_rlnCoordinateX/Y/Z")
    a_sub = matrices("rlnTomoSubtomogram")
    origin = np.stack([numeric(f"rlnOrigin{a}Angst") for a in "XYZ"], 1)
    position = coord - np.einsum("nij,nj->ni", a_sub, origin)
    a_tomo = a_sub @ matrices("rlnAngle")
    out = {name: (t, position[i], a_tomo[i]) for i, (name, t) in enumerate(zip(names, tomos))}
    if len(out) != n:
        particle_names(read_star_text(source), source)  # names the repeated particle
    return out


def volume_series_star(particles_star: str | os.PathLike, tomograms_star: str | os.PathLike,
                       out: str | os.PathLike) -> int:
    """The particles' own positions and orientations as the volume-series star ``mapback`` reads.

    One row per particle of ``data_particles``, in file order (the order the method indexes them):
    ``_rlnMicrographName`` = ``_rlnTomoName``, ``_rlnCoordinateX/Y/Z`` in A from the tomogram's corner with
    ``_rlnPixelSize 1`` (:func:`particle_positions` plus half the tomogram's size, ``_rlnTomoSizeX/Y/Z`` x
    ``_rlnTomoTiltSeriesPixelSize``), and ``_rlnAngleRot/Tilt/Psi`` of the orientation in the tomogram
    ``A_sub A_part``.

    Returns
    -------
    int
        Rows written (atomically).
    """
    import torch

    from ..method.transforms import matrix_to_euler

    geometry = tomogram_geometry(tomograms_star)
    placed = particle_positions(particles_star, str(tomograms_star))
    lines = ["# volume-series star of the particles' positions (tomodrgn-scipion, from a RELION 5 particles.star)\n",
             "\n", "data_particles\n", "\n", "loop_\n"]
    columns = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAngleRot",
               "rlnAngleTilt", "rlnAnglePsi", "rlnPixelSize", "rlnTomoParticleName")
    lines += [f"_{c} #{i + 1}\n" for i, c in enumerate(columns)]
    names = list(placed)
    mats = torch.as_tensor(np.stack([placed[n][2] for n in names]))
    eulers = np.stack([e.numpy() for e in matrix_to_euler(mats)], 1)
    for name, euler in zip(names, eulers):
        tomo, position, _ = placed[name]
        size, px = geometry.get(tomo, (None, None))
        if size is None:
            raise InputError(f"{tomograms_star}: no _rlnTomoSizeX/Y/Z for tomogram {tomo}: its particles cannot be "
                             f"placed")
        corner = position + np.asarray(size) * px / 2.0
        values = [tomo, *(f"{v:.3f}" for v in corner), *(f"{v:.6f}" for v in euler), "1.0", name]
        lines.append(" ".join(values) + "\n")
    lines.append("\n")
    write_text_atomic("".join(lines), out)
    return len(names)


# ------------------------------------------------------------------------------------------ reliontomo sets
def is_relion_set(obj: object) -> bool:
    """Whether ``obj`` is a reliontomo ``RelionSetOfPseudoSubtomograms``."""
    from reliontomo.objects import RelionSetOfPseudoSubtomograms

    return isinstance(obj, RelionSetOfPseudoSubtomograms)


def item_names(pset) -> List[str]:
    """``_rlnTomoParticleName`` of every item of a ``RelionSetOfPseudoSubtomograms``, in set order."""
    return [p.getRelionParticleName() for p in pset.iterItems(orderBy="id")]


def validate_relion_set(pset) -> List[str]:
    """Form errors for a ``RelionSetOfPseudoSubtomograms`` as our particle input (empty when fine)."""
    errors = []
    if not pset.are2dStacks():
        errors.append(REEXTRACT_2D + ".")
    star = pset.getParticlesStar()
    if not star or not os.path.isfile(star):
        errors.append(f"The particle set's particles.star is missing: {star}")
    tomos = pset.getTomogramsStar()
    if not tomos or not os.path.isfile(tomos):
        errors.append(f"The particle set's tomograms.star is missing: {tomos}")
    return errors


def optimisation_set_for(pset, out_dir: str | os.PathLike, stem: str = "particles") -> str:
    """Write the method's input for exactly the items of a ``RelionSetOfPseudoSubtomograms``.

    Parameters
    ----------
    pset : reliontomo.objects.RelionSetOfPseudoSubtomograms
        2D-stack particles (``are2dStacks()``).
    out_dir : path-like
        Where ``<stem>.star`` (the set's ``particles.star`` restricted to its items by
        ``_rlnTomoParticleName``, every block and column kept) and ``<stem>_optimisation_set.star`` (naming it
        and the set's own ``tomograms.star`` and trajectories) are written.
    stem : str
        File name stem.

    Returns
    -------
    str
        Path of the optimisation set.

    Raises
    ------
    InputError
        3D pseudo-subtomograms (with how to re-extract them), missing files, items not in the star file.
    """
    errors = validate_relion_set(pset)
    if errors:
        raise InputError(errors[0])
    out_dir = Path(out_dir)
    particles = out_dir / f"{stem}.star"
    subset_particles_star(pset.getParticlesStar(), item_names(pset), particles)
    opt = out_dir / f"{stem}_optimisation_set.star"
    write_optimisation_set(opt, particles, pset.getTomogramsStar(), pset.getTrajectoriesStar() or None)
    return str(opt)


def relion_items_with(pset, out, values: Mapping[str, Dict[str, object]], keep_missing: bool = False) -> int:
    """Fill ``out`` with clones of the items of ``pset``, each given attributes matched by particle name.

    Parameters
    ----------
    pset : RelionSetOfPseudoSubtomograms
    out : RelionSetOfPseudoSubtomograms
        An empty set of the same class; its info is copied from ``pset``.
    values : mapping
        ``_rlnTomoParticleName`` -> {attribute: value}: ``_tdZ`` (sequence of float) and/or ``_tdCluster`` (int).
    keep_missing : bool
        Keep items without values (with ``_tdCluster`` -1 when clusters are given); by default they are left out.

    Returns
    -------
    int
        Items without values.
    """
    from pyworkflow.object import CsvList, Integer

    out.copyInfo(pset)
    missing = 0
    attrs = sorted({a for v in values.values() for a in v})
    for p in pset.iterItems(orderBy="id"):
        v = values.get(p.getRelionParticleName())
        if v is None:
            missing += 1
            if not keep_missing:
                continue
            v = {CLUSTER_ATTR: -1} if CLUSTER_ATTR in attrs else {}
        q = p.clone()
        for a in attrs:
            if a == Z_ATTR:
                z = CsvList(pType=float)
                z.set([float(x) for x in v.get(Z_ATTR, [])])
                setattr(q, Z_ATTR, z)
            elif a == CLUSTER_ATTR:
                setattr(q, CLUSTER_ATTR, Integer(int(v.get(CLUSTER_ATTR, -1))))
            else:
                raise ValueError(f"unknown attribute {a}")
        out.append(q)
    return missing


def item_z(item) -> Optional[np.ndarray]:
    """z of a reliontomo item or a TomoDrgnParticle (float32, shape (zdim,)), None without one."""
    z = getattr(item, Z_ATTR, None)
    if z is None or len(z) == 0:
        return None
    return np.asarray(list(z), dtype=np.float32)


def item_cluster(item) -> Optional[int]:
    """Cluster label of a reliontomo item or a TomoDrgnParticle, None without one."""
    c = getattr(item, CLUSTER_ATTR, None)
    return None if c is None or c.get() is None else int(c.get())


def relion_subset(pset, keep: Sequence[str], out, star_dir: str | os.PathLike) -> str:
    """A ``RelionSetOfPseudoSubtomograms`` of the given particles, for reliontomo's protocols.

    The input's info is copied and its items cloned (with every attribute, z and cluster included); its
    files are replaced by a ``particles.star`` with the kept rows (every block and column as in the input's)
    and an optimisation set naming it with the input's ``tomograms.star`` and trajectories.

    Parameters
    ----------
    pset : RelionSetOfPseudoSubtomograms
    keep : sequence of str
        ``_rlnTomoParticleName`` of the particles to keep (each must be an item of ``pset``).
    out : RelionSetOfPseudoSubtomograms
        An empty set.
    star_dir : path-like
        Folder for ``particles.star`` and ``optimisation_set.star``.

    Returns
    -------
    str
        The optimisation set written.
    """
    wanted = set(keep)
    items = item_names(pset)  # (Scipion reuses one item object while iterating: keep names, clone below)
    present = set(items)
    unknown = [n for n in keep if n not in present]
    if unknown:
        raise InputError(f"particle {unknown[0]} is not in the input set")
    if not wanted:
        raise InputError("no particle selected")
    star_dir = Path(star_dir)
    particles = star_dir / "particles.star"
    n = subset_particles_star(pset.getParticlesStar(), [x for x in items if x in wanted], particles)
    opt = star_dir / "optimisation_set.star"
    write_optimisation_set(opt, particles, pset.getTomogramsStar(), pset.getTrajectoriesStar() or None)
    out.copyInfo(pset)
    out.filesMaster = str(opt)  # reliontomo reads it: particles, tomograms, trajectories and the optics table
    out.setNReParticles(n)
    for p in pset.iterItems(orderBy="id"):
        if p.getRelionParticleName() in wanted:
            out.append(p.clone())
    return str(opt)


def place_coordinates(particles_star: str, tomograms, tomograms_star: Optional[str] = None):
    """One Scipion ``Coordinate3D`` per particle of a RELION 5 ``particles.star``, in file order.

    Each is placed from the particle's own row (:func:`particle_positions`): its position, divided by the
    tomogram's pixel size, in Scipion's centre-origin convention, and its orientation in the tomogram
    (RELION's ``A``, stored as reliontomo stores a coordinate's: ``A^-1`` with ``TR_RELION``) on the tomogram whose tilt-series id is
    its ``_rlnTomoName``.

    Parameters
    ----------
    particles_star : str
    tomograms : tomo.objects.SetOfTomograms
    tomograms_star : str, optional
        For files with ``_rlnCoordinateX/Y/Z``.

    Yields
    ------
    (Coordinate3D, str)
        The coordinate (group id 1) and the particle name.

    Raises
    ------
    InputError
        A particle whose tomogram is not in ``tomograms``.
    """
    from tomo.constants import SCIPION, TR_RELION
    from tomo.objects import Coordinate3D

    tomo_of = {t.getTsId(): t.clone() for t in tomograms}
    for name, (tomo_id, position, a) in particle_positions(particles_star, tomograms_star).items():
        tomo = tomo_of.get(tomo_id)
        if tomo is None:
            raise InputError(f"{particles_star}: particle {name} is in tomogram {tomo_id}, which is not among the "
                             f"tomograms ({', '.join(sorted(tomo_of))})")
        c = Coordinate3D()
        c.setVolume(tomo)
        px = tomo.getSamplingRate()
        c.setX(float(position[0]) / px, SCIPION)
        c.setY(float(position[1]) / px, SCIPION)
        c.setZ(float(position[2]) / px, SCIPION)
        m = np.eye(4)
        m[:3, :3] = a.T  # reliontomo's TR_RELION matrix of a coordinate is the inverse of RELION's A
        c.setMatrix(m, convention=TR_RELION)
        c.setGroupId(1)
        yield c, name


def cluster_coordinates(pset, labels: Mapping[str, int], out) -> Dict[int, int]:
    """The particles as coordinates on the input's tomograms, labelled by cluster.

    Each coordinate is placed from the particle's own row of the set's ``particles.star``, matched by
    ``_rlnTomoParticleName`` (:func:`place_coordinates`). Its group id is the cluster + 1 (Scipion's tomogram
    viewers colour by group) and it carries ``_tdCluster``.

    Parameters
    ----------
    pset : RelionSetOfPseudoSubtomograms
        With coordinates (``getCoordinates3D()``) whose tomograms (precedents) are the particles'.
    labels : mapping
        ``_rlnTomoParticleName`` -> cluster (>= 0); particles without a label are left out.
    out : tomo.objects.SetOfCoordinates3D
        An empty set; it gets the input's tomograms as precedents, their pixel size and the particles' box.

    Returns
    -------
    dict
        cluster -> number of coordinates.
    """
    from pyworkflow.object import Integer

    coords = pset.getCoordinates3D()
    if coords is None:
        raise InputError("the particle set has no coordinates, so no tomograms to map the clusters onto")
    tomos = coords.getPrecedents()
    out.setPrecedents(tomos)
    out.setSamplingRate(tomos.getSamplingRate())
    out.setBoxSize(coords.getBoxSize())
    counts: Dict[int, int] = {}
    for c, name in place_coordinates(pset.getParticlesStar(), tomos, pset.getTomogramsStar()):
        label = labels.get(name)
        if label is None or label < 0:
            continue
        c.setGroupId(int(label) + 1)
        setattr(c, CLUSTER_ATTR, Integer(int(label)))
        out.append(c)
        counts[int(label)] = counts.get(int(label), 0) + 1
    return counts
