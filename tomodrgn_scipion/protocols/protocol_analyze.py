"""Analyse a trained latent space with ``tomodrgn-scipion analyze``: k-means classes as volumes, the
particles with their cluster, PCA/UMAP and traversal files and plots for the viewers; optionally the
k-means clusters mapped back into the tomograms (``tomodrgn-scipion mapback``, ChimeraX scripts)."""
from __future__ import annotations

import os

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import SetOfVolumes, Volume
from pyworkflow.object import CsvList, Integer, String

from ..constants import CITE_TOMODRGN
from ..convert.relion5 import CLUSTER_ATTR, cluster_coordinates, is_relion_set, relion_items_with
from ..objects import TomoDrgnParticles
from .protocol_base import TomoDrgnProtBase


def star_particle_ids(star: str) -> list[str]:
    """``_rlnGroupName`` values of a star file in order of first appearance (the particle index order)."""
    from ..method.star import read_star

    return list(dict.fromkeys(read_star(star)["rlnGroupName"].astype(str)))


def training_particle_ids(train) -> list[str]:
    """Particle names of a train VAE run's input, in the order the method indexes them (the rows of
    labels.txt): the method's own reading of the star it trained on, in any format (``_rlnGroupName`` or
    ``_rlnTomoParticleName``, in order of first appearance)."""
    from ..method.star import TiltSeriesStar

    return list(TiltSeriesStar(train.inputStar()).particle_ids)


def latest_epoch(train_dir: str) -> int:
    """The last epoch with both ``weights.E.pt`` and ``z.E.npy`` in a train_vae folder (0 when none)."""
    import re

    found = [int(m.group(1)) for f in os.listdir(train_dir) if (m := re.match(r"weights\.(\d+)\.pt$", f))] \
        if os.path.isdir(train_dir) else []
    found = [e for e in found if os.path.isfile(os.path.join(train_dir, f"z.{e}.npy"))]
    return max(found, default=0)


class TomoDrgnProtAnalyze(TomoDrgnProtBase):
    """Explore the latent space of a trained VAE: PCA (and UMAP when zdim > 2), k-means clusters with a
    volume at each centre, volumes along the first principal components, cluster occupancy per tomogram,
    star-file metadata against the embedding ("controls") and the loss curves."""

    _label = "analyze"
    _possibleOutputs = {"outputVolumes": SetOfVolumes, "outputParticles": TomoDrgnParticles}

    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("inputTraining", params.PointerParam, pointerClass="TomoDrgnProtTrainVAE", important=True,
                      label="Trained VAE", help="A finished (or running: its latest checkpoint) train VAE run.")
        form.addParam("epoch", params.IntParam, default=-1, label="Epoch",
                      help="Checkpoint to analyse (1 = after the first epoch); -1: the latest.")
        form.addParam("ksample", params.IntParam, default=20, validators=[params.Positive],
                      label="k-means clusters", help="--ksample: a volume is generated at each cluster centre.")
        form.addParam("numPcs", params.IntParam, default=2, label="Principal components to traverse",
                      help="--pc: volumes along each at the 5th..95th percentiles.")
        form.addParam("nPerPc", params.IntParam, default=10, label="Volumes per component", help="--n-per-pc")
        form.addParam("skipUmap", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label="Skip UMAP?", help="UMAP runs when zdim > 2 (it takes most of the time).")
        form.addParam("seed", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED, label="Random seed",
                      help="Of k-means and UMAP.")
        form.addParam("volumeStar", params.PathParam, allowsNull=True, label="Volume-series star (map-back)",
                      help="Optional. The Warp/RELION subtomogram (volume-series) star with the particle coordinates "
                           "in the tomograms (_rlnCoordinateX/Y/Z, _rlnMicrographName, _rlnAngleRot/Tilt/Psi), one "
                           "row per particle: the same particles, in the same order and tomograms, as the training "
                           "star (all of them: after a selection of particles, select the same rows of this star). "
                           "When given, a ChimeraX script per tomogram (mapback) places every particle coloured "
                           "by its k-means cluster: as markers, and as its cluster's volume. For reliontomo's "
                           "particles leave it empty: their own positions and orientations are used.")
        self._addVolumeParams(form)
        self._addGpuParams(form)

    # ------------------------------------------------------------------------------------ paths
    def anaDir(self, *parts: str) -> str:
        """The ``analyze`` output folder of this run."""
        return self._getExtraPath("analyze", *parts)

    def kmeansDir(self, *parts: str) -> str:
        return self.anaDir(f"kmeans{self.ksample.get()}", *parts)

    def mapbackDir(self, *parts: str) -> str:
        """The map-back scripts: ``markers/<tomogram>.cxc`` and ``volumes/<tomogram>.cxc``, each folder
        with its ``mapback_summary.txt``."""
        return self.anaDir("mapback", *parts)

    def _volumeStar(self) -> str:
        """The volume-series star, or "" when map-back is off: the form's, else for reliontomo particles the
        one written from their own positions and orientations (when their tomograms.star gives the sizes)."""
        given = (self.volumeStar.get() or "").strip()
        if given or not self._relionInput():
            return given
        return self._getExtraPath("particles_volumes.star")

    def _relionInput(self) -> bool:
        train = self._train()
        return train is not None and train.isRelionInput()

    def _train(self):
        return self.inputTraining.get()

    # ------------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.analyzeStep)
        if self._volumeStar():
            self._insertFunctionStep(self.mapbackStep, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def analyzeStep(self) -> None:
        args: list[object] = [self._train().trainDir(), "--epoch", self.epoch.get(), "--ksample", self.ksample.get(),
                              "-o", self.anaDir(), "--pc", self.numPcs.get(), "--n-per-pc", self.nPerPc.get(),
                              "--seed", self.seed.get(), *self._deviceArgs()]
        if self.skipUmap:
            args.append("--skip-umap")
        self._runCli("analyze", [*args, *self._volumeArgs()])

    def mapbackStep(self) -> None:
        """The k-means labels in the tomograms: one script of markers, one of placed cluster volumes."""
        if not (self.volumeStar.get() or "").strip():  # reliontomo particles: from their own rows, same order
            from ..convert.relion5 import volume_series_star

            train = self._train()
            volume_series_star(train.particlesStar(), train.inputParticles.get().getTomogramsStar(),
                               self._volumeStar())
            common: list[object] = [os.path.abspath(self._volumeStar()), "--labels", self.kmeansDir("labels.txt")]
        else:
            common = [os.path.abspath(self._volumeStar()), "--labels", self.kmeansDir("labels.txt"),
                      "--particles", self._train().inputStar()]
        self._runCli("mapback", [*common, "-o", self.mapbackDir("markers"), "--mode", "markers"])
        self._runCli("mapback", [*common, "-o", self.mapbackDir("volumes"), "--mode", "volumes",
                                 "--vols-dir", self.kmeansDir()])

    def createOutputStep(self) -> None:
        from ..method.stacks import read_volume

        train = self._train()
        labels = np.loadtxt(self.kmeansDir("labels.txt"), dtype=np.int64, ndmin=1)
        centers = np.loadtxt(self.kmeansDir("centers.txt"), ndmin=2)
        centers_ind = np.loadtxt(self.kmeansDir("centers_ind.txt"), dtype=np.int64, ndmin=1)
        ids = training_particle_ids(train)
        if len(ids) != len(labels):
            raise ValueError(f"{self.kmeansDir('labels.txt')}: {len(labels)} labels for {len(ids)} particles")
        label_of = dict(zip(ids, labels.tolist()))
        sizes = np.bincount(labels[labels >= 0], minlength=len(centers))

        vols = self._createSetOfVolumes()
        pixel = None
        for i, z in enumerate(centers):
            path = self.kmeansDir(f"vol_{i:03d}.mrc")
            if pixel is None:
                pixel = read_volume(path)[1]
            v = Volume(location=path)
            v.setSamplingRate(pixel)
            v.setObjComment(f"cluster {i}: {int(sizes[i])} particles")
            v._tdZ = CsvList(pType=float)
            v._tdZ.set([float(x) for x in z])
            v._tdCluster = Integer(i)
            v._tdClusterSize = Integer(int(sizes[i]))
            v._tdCenterParticle = String(ids[int(centers_ind[i])])
            vols.append(v)
        vols.setSamplingRate(pixel)

        parts = train.outputParticles
        outputs = {"outputVolumes": vols}
        if is_relion_set(parts):  # the input's own class, each item with its cluster, matched by particle name
            from reliontomo.constants import PSUBTOMOS_SQLITE
            from reliontomo.objects import RelionSetOfPseudoSubtomograms
            from tomo.objects import SetOfCoordinates3D

            out = RelionSetOfPseudoSubtomograms.create(self._getPath(), template=PSUBTOMOS_SQLITE)
            relion_items_with(parts, out, {n: {CLUSTER_ATTR: c} for n, c in label_of.items()}, keep_missing=True)
            if parts.getCoordinates3D() is not None:  # the clusters on the particles' tomograms
                coords = SetOfCoordinates3D.create(self._getPath(), template="coordinates%s.sqlite",
                                                   suffix="Clusters")
                cluster_coordinates(parts, label_of, coords)
                outputs["outputCoordinates"] = coords
        else:
            out = self._createParticleSet()
            out.copyInfo(parts)
            for p in parts.iterItems(orderBy="id"):
                q = p.clone()
                q.setCluster(label_of.get(p.getParticleId(), -1))
                out.append(q)
        outputs["outputParticles"] = out
        self._defineOutputs(**outputs)
        for o in outputs.values():
            self._defineSourceRelation(parts, o)

    # ------------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        train = self._train()
        if train is None:
            return ["Choose a train VAE run."]
        errors = []
        if latest_epoch(train.trainDir()) == 0:
            errors.append("The training run has no checkpoint yet.")
        elif self.epoch.get() != -1 and not os.path.isfile(train.trainDir(f"weights.{self.epoch.get()}.pt")):
            errors.append(f"The training run has no checkpoint for epoch {self.epoch.get()}.")
        if not train.hasAttribute("outputParticles"):
            errors.append("The training run has no output particles yet: wait for it to finish.")
        if self.numPcs.get() > train.zdim.get():
            errors.append(f"Only {train.zdim.get()} principal components exist (zdim).")
        if (self.volumeStar.get() or "").strip() and not os.path.isfile(self._volumeStar()):
            errors.append(f"Volume-series star not found: {self._volumeStar()}")
        return errors + self._gpuErrors()

    def _summary(self) -> list[str]:
        path = self.anaDir("summary.txt")
        if not os.path.isfile(path):
            return ["Not analysed yet."]
        lines = [line for line in open(path).read().splitlines() if line.strip()]
        if os.path.isdir(self.mapbackDir("markers")):
            lines.append(f"Map-back ChimeraX scripts (one per tomogram): {self.mapbackDir('markers')} (markers), "
                         f"{self.mapbackDir('volumes')} (cluster volumes)")
        return lines

    def _methods(self) -> list[str]:
        if not self.hasAttribute("outputVolumes"):
            return []
        return [f"The latent space was analysed with PCA, UMAP and k-means ({self.ksample.get()} clusters), and "
                f"volumes were generated at the cluster centres and along the principal components [{CITE_TOMODRGN}]."]
