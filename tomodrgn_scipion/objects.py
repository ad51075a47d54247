"""Scipion objects of the plugin: particle tilt series as a set of sub-tomograms.

A tomoDRGN particle is a series of 2D tilt images, not a 3D volume; it is still a sub-tomogram in
the sense of scipion-em-tomo (one particle of one tomogram), which is how RELION's plugin models its
pseudo-subtomograms too. Subclassing :class:`tomo.objects.SubTomogram` and
:class:`tomo.objects.SetOfSubTomograms` lets tomo's generic tools (subsets, filters by tomogram,
summaries) work on our sets. The tilt images themselves stay in the RELION 3.0 image-series star file
kept with the set (``getStar()``): every item records its rows in that file, so no column is ever
lost, and exports restrict that file to the particles of the set.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from pyworkflow.object import Boolean, CsvList, Integer, String
from tomo.objects import SetOfSubTomograms, SubTomogram


class TomoDrgnParticle(SubTomogram):
    """One particle: the tilt images sharing one ``_rlnGroupName``.

    Attributes (persisted)
    ----------------------
    _tdParticleId : ``_rlnGroupName``, e.g. ``000_000012``.
    _tdTomoId : its tomogram (also the sub-tomogram's volume name).
    _tdNumTilts : number of tilt images.
    _tdRows : 0-based row numbers of its tilt images in the set's star file.
    _tdZ : its latent vector after training (empty before).
    _tdCluster : its cluster after analysis (k-means label; None before).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._tdParticleId = String()
        self._tdTomoId = String()
        self._tdNumTilts = Integer()
        self._tdRows = CsvList(pType=int)
        self._tdZ = CsvList(pType=float)
        self._tdCluster = Integer()

    def getParticleId(self) -> str:
        return self._tdParticleId.get()

    def setParticleId(self, value: str) -> None:
        self._tdParticleId.set(value)

    def getTomoId(self) -> str:
        return self._tdTomoId.get()

    def setTomoId(self, value: str) -> None:
        self._tdTomoId.set(value)
        self.setVolName(value)

    def getNumTilts(self) -> int:
        return self._tdNumTilts.get()

    def getRows(self) -> list[int]:
        return list(self._tdRows)

    def setRows(self, rows: Iterable[int]) -> None:
        self._tdRows.set([int(r) for r in rows])
        self._tdNumTilts.set(len(self._tdRows))

    def hasZ(self) -> bool:
        return len(self._tdZ) > 0

    def getZ(self) -> np.ndarray:
        """Latent vector, float32, shape (zdim,) (empty before training)."""
        return np.asarray(list(self._tdZ), dtype=np.float32)

    def setZ(self, z: Iterable[float]) -> None:
        self._tdZ.set([float(v) for v in z])

    def getCluster(self) -> int | None:
        """k-means cluster of the analysis that made this set (None before analysis)."""
        return self._tdCluster.get()

    def setCluster(self, label: int) -> None:
        self._tdCluster.set(int(label))


class TomoDrgnParticles(SetOfSubTomograms):
    """Particle tilt series: one :class:`TomoDrgnParticle` per particle.

    Set attributes: the star file with every tilt image (``_tdStar``), a second folder where its
    stacks are found (``_tdDataDir``), whether the images are protein-dark (``_tdProteinDark``,
    i.e. read with ``--uninvert-data``), and the latent dimension once z is attached (``_tdZDim``).
    Acquisition: voltage, Cs, amplitude contrast, dose per tilt (``dosePerFrame``) and the largest
    cumulative dose (``accumDose``).
    """

    ITEM_TYPE = TomoDrgnParticle

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._tdStar = String()
        self._tdDataDir = String()
        self._tdProteinDark = Boolean(False)
        self._tdZDim = Integer(0)

    def getStar(self) -> str:
        return self._tdStar.get()

    def setStar(self, path: str) -> None:
        self._tdStar.set(str(path))

    def getDataDir(self) -> str | None:
        return self._tdDataDir.get() or None

    def setDataDir(self, path: str | None) -> None:
        self._tdDataDir.set(str(path) if path else None)

    def isProteinDark(self) -> bool:
        return bool(self._tdProteinDark.get())

    def setProteinDark(self, value: bool) -> None:
        self._tdProteinDark.set(bool(value))

    def getZDim(self) -> int:
        return int(self._tdZDim.get() or 0)

    def setZDim(self, value: int) -> None:
        self._tdZDim.set(int(value))

    def copyInfo(self, other) -> None:
        """Sampling rate, acquisition, and the star file, data folder, contrast and zdim."""
        super().copyInfo(other)
        if isinstance(other, TomoDrgnParticles):
            self.copyAttributes(other, "_tdStar", "_tdDataDir", "_tdProteinDark", "_tdZDim")

    def getParticleIds(self) -> list[str]:
        """``_rlnGroupName`` of every item, in set order."""
        return [p.getParticleId() for p in self.iterItems(orderBy="id")]

    def __str__(self) -> str:
        return f"{self.getSize()} particle tilt series, {self.getSamplingRate():g} A/px"
