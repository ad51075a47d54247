"""Viewer of the analyze protocol: the latent space coloured by cluster or by any star column, selection by
drawing, cluster occupancy per tomogram, cluster-centre and PC-traversal volumes, a cluster's particle
images, and the map-back of clusters into a tomogram."""
from __future__ import annotations

import glob
import os

import numpy as np
import pyworkflow.protocol.params as params
from pyworkflow.viewer import View

from ..protocols import TomoDrgnProtAnalyze, TomoDrgnProtSelect
from ..protocols.protocol_base import particle_key
from ..protocols.protocol_select import SELECT_INDICES
from .figures import image_grid, lowest_dose_images, positions_figure
from .latent import COLOR_CLUSTER, LatentSpace
from .selection import SelectionWindow, format_indices
from .viewer_base import TomoDrgnViewerBase, volume_names
from .viewer_train import EMBED_PCA, EMBED_UMAP, EMBEDDINGS, loss_figure

PLOT_SCATTER, PLOT_HEXBIN = 0, 1
MAPBACK_MODES = ["markers", "volumes"]


class TomoDrgnAnalyzeViewer(TomoDrgnViewerBase):
    """Explore an analysis: plots of the latent space, volumes, particle images, selection and map-back."""

    _label = "viewer analyze"
    _targets = [TomoDrgnProtAnalyze]

    #: Wait for the runs that selection by drawing launches (scripts and tests); the GUI does not wait.
    waitForRuns = False

    def _defineParams(self, form) -> None:
        self._latent = None
        form.addSection(label="Latent space")
        form.addParam("embedding", params.EnumParam, choices=EMBEDDINGS, default=EMBED_PCA,
                      display=params.EnumParam.DISPLAY_HLIST, label="Embedding",
                      help="UMAP exists when zdim > 2 (and it was not skipped).")
        line = form.addLine("Principal components", condition=f"embedding == {EMBED_PCA}",
                            help="Axes of the PCA plot (1-based).")
        line.addParam("pcX", params.IntParam, default=1, label="x")
        line.addParam("pcY", params.IntParam, default=2, label="y")
        form.addParam("plotType", params.EnumParam, choices=["scatter", "density (hexbin)"], default=PLOT_SCATTER,
                      display=params.EnumParam.DISPLAY_HLIST, label="Plot")
        form.addParam("colorBy", params.EnumParam, choices=self._colorChoices(), default=0,
                      condition=f"plotType == {PLOT_SCATTER}", label="Colour points by",
                      help="k-means cluster, tomogram, or a star column (per particle; a column that varies across "
                           "tilts gives its value on the lowest-dose tilt).")
        form.addParam("displayLatent", params.LabelParam, label="Show the latent space")
        form.addParam("displayControls", params.LabelParam, label="Star metadata against the latent space",
                      help="Each numeric column over the embedding, ranked by Spearman correlation with its axes: "
                           "a strong one may be a confound (dose, tilt count, defocus) rather than structure.")
        form.addParam("displaySelect", params.LabelParam, label="Select particles by drawing",
                      help="Draw a lasso or a rectangle on the latent plot, then 'Create subset': a select particles "
                           "run is launched with those particles (output set and RELION 3.0 star file).")

        form.addSection(label="Clusters and volumes")
        self._addVolumeDisplayParam(form)
        form.addParam("displayOccupancy", params.LabelParam, label="Cluster occupancy per tomogram")
        form.addParam("displayClusterVolumes", params.LabelParam, label="Cluster-centre volumes")
        form.addParam("pcNumber", params.IntParam, default=1, label="Principal component",
                      help="Of the traversal to show.")
        form.addParam("displayTraversal", params.LabelParam, label="Volumes along the principal component")
        form.addParam("cluster", params.IntParam, default=0, label="Cluster", help="Of the particle images to show.")
        form.addParam("maxImages", params.IntParam, default=16, label="At most (images)")
        form.addParam("displayImages", params.LabelParam, label="Particle images of the cluster (lowest-dose tilt)")

        form.addSection(label="Map back")
        form.addParam("tomogram", params.EnumParam, choices=self._tomograms() or ["(no map-back scripts)"], default=0,
                      label="Tomogram")
        form.addParam("mapbackMode", params.EnumParam, choices=MAPBACK_MODES, default=0,
                      display=params.EnumParam.DISPLAY_HLIST, label="Particles as",
                      help="markers: a sphere per particle coloured by cluster; volumes: its cluster's volume, placed "
                           "and oriented.")
        form.addParam("displayMapback", params.LabelParam, label="Open the tomogram's map-back in ChimeraX",
                      help="Without ChimeraX: the particle positions, coloured by cluster, from the top and the side.")
        form.addSection(label="Training")
        form.addParam("displayLoss", params.LabelParam, label="Loss curves")

    def _getVisualizeDict(self) -> dict:
        return {"displayLatent": self._showLatent, "displayControls": self._showControls,
                "displaySelect": self._showSelect, "displayOccupancy": self._showOccupancy,
                "displayClusterVolumes": self._showClusterVolumes, "displayTraversal": self._showTraversal,
                "displayImages": self._showImages, "displayMapback": self._showMapback, "displayLoss": self._showLoss}

    # --------------------------------------------------------------------------------------------- data
    def _train(self):
        return self.protocol.inputTraining.get()

    def _analysed(self) -> bool:
        return os.path.isfile(self.protocol.kmeansDir("labels.txt"))

    def latentSpace(self) -> LatentSpace:
        """The analysis' latent space (read once per viewer)."""
        if getattr(self, "_latent", None) is None:
            self._latent = LatentSpace.from_analysis(self._train().trainDir(), self._train().inputStar(),
                                                     self.protocol.anaDir(), self.protocol.ksample.get())
        return self._latent

    def _colorChoices(self) -> list[str]:
        if not self._analysed():
            return [COLOR_CLUSTER]
        return self.latentSpace().color_choices()

    def _volumeStar(self):
        star = self.protocol._volumeStar()
        return star if star and os.path.isfile(star) else None

    def _tomograms(self) -> list[str]:
        """Tomograms of the map-back (those of the volume-series star), in star order."""
        star = self._volumeStar()
        if star is None or not os.path.isdir(self.protocol.anaDir("mapback")):
            return []
        from ..method.mapback import read_volume_series

        return list(dict.fromkeys(read_volume_series(star).tomograms))

    def _embedding(self) -> tuple[np.ndarray, str, str, str]:
        kind = EMBEDDINGS[self.embedding.get()]
        latent = self.latentSpace()
        xy, xl, yl = latent.embedding(kind, (self.pcX.get(), self.pcY.get()))
        return xy, xl, yl, kind

    def _checkEmbedding(self) -> list[View] | None:
        if not self._analysed():
            return self.missing("The analysis has not finished: run (or wait for) the analyze protocol.")
        latent = self.latentSpace()
        if self.embedding.get() == EMBED_UMAP and latent.umap is None:
            return self.missing("This analysis has no UMAP (zdim <= 2, or UMAP was skipped): choose PCA.")
        zdim = latent.z.shape[1]
        if self.embedding.get() == EMBED_PCA and not (1 <= self.pcX.get() <= zdim and 1 <= self.pcY.get() <= zdim):
            return self.missing(f"Principal components go from 1 to {zdim} (zdim).")
        return None

    # --------------------------------------------------------------------------------------------- latent
    def latentFigure(self):
        latent = self.latentSpace()
        kind = EMBEDDINGS[self.embedding.get()]
        color = self._colorChoices()[self.colorBy.get()]
        return latent.figure(kind, (self.pcX.get(), self.pcY.get()), color, density=self.plotType.get() == PLOT_HEXBIN)

    def _showLatent(self, _param=None) -> list[View]:
        return self._checkEmbedding() or self.figureView(self.latentFigure(),
                                                         f"{self.protocol.getRunName()}: latent space")

    def _showControls(self, _param=None) -> list[View]:
        if not self._analysed():
            return self.missing("The analysis has not finished: run (or wait for) the analyze protocol.")
        from ..method.cli_analysis import controls_table, figure_controls

        latent = self.latentSpace()
        xy, xl, yl = latent.embedding("PCA")
        axes = {f"PC{i + 1}": latent.pca.coords[:, i] for i in range(min(2, latent.pca.coords.shape[1]))}
        if latent.umap is not None:
            axes.update({"UMAP1": latent.umap[:, 0], "UMAP2": latent.umap[:, 1]})
        rho = controls_table(latent.table, axes)
        return self.figureView(figure_controls(xy, xl, yl, latent.table, rho),
                               f"{self.protocol.getRunName()}: star metadata against the latent space")

    def selectionWindow(self) -> SelectionWindow:
        """The draw-to-select window over the current latent plot (scatter, coloured as chosen)."""
        xy, xl, yl, kind = self._embedding()
        latent = self.latentSpace()
        color = self._colorChoices()[self.colorBy.get()]
        fig = latent.figure(kind, (self.pcX.get(), self.pcY.get()), color,
                            title=f"draw to select ({kind}, epoch {latent.epoch})")
        return SelectionWindow(fig, xy, self.createSelection, f"{self.protocol.getRunName()}: select by drawing",
                               tkParent=self.getTkRoot())

    def _showSelect(self, _param=None) -> list[View]:
        if not self.protocol.hasAttribute("outputParticles"):
            return self.missing("The analysis has no output particles yet: wait for it to finish.")
        return self._checkEmbedding() or [self.selectionWindow()]

    def createSelection(self, rows: np.ndarray, action: str = "keep") -> str:
        """Create and launch a select particles run keeping (or dropping) the particles of ``rows`` (rows of z).

        Returns
        -------
        str
            A message naming the run.
        """
        latent = self.latentSpace()
        parts = self.protocol.outputParticles
        position = {particle_key(p): i for i, p in enumerate(parts.iterItems(orderBy="id"))}
        indices = [position[latent.ids[int(r)]] for r in rows]
        project = self.getProject()
        prot = project.newProtocol(TomoDrgnProtSelect, mode=SELECT_INDICES, indices=format_indices(indices),
                                   action=0 if action == "keep" else 1,
                                   objLabel=f"drawn selection: {action} {len(indices)} particles")
        prot.inputParticles.set(self.protocol)
        prot.inputParticles.setExtended("outputParticles")
        project.launchProtocol(prot, wait=self.waitForRuns)
        self.lastSelection = prot
        return f"Launched '{prot.getRunName()}': {action} {len(indices)} of {parts.getSize()} particles."

    # --------------------------------------------------------------------------------------------- clusters
    def _showOccupancy(self, _param=None) -> list[View]:
        path = self.protocol.kmeansDir("occupancy.csv")
        if not os.path.isfile(path):
            return self.missing("The analysis has not finished: run (or wait for) the analyze protocol.")
        import pandas as pd

        from ..method.cli_analysis import figure_occupancy

        occ = pd.read_csv(path, index_col=0)
        return self.figureView(figure_occupancy(occ), f"{self.protocol.getRunName()}: occupancy")

    def _showClusterVolumes(self, _param=None) -> list[View]:
        paths = sorted(glob.glob(self.protocol.kmeansDir("vol_*.mrc")))
        if not paths:
            return self.missing("No cluster volumes: the analysis has not finished, or ran without volumes.")
        sizes = np.bincount(np.loadtxt(self.protocol.kmeansDir("labels.txt"), dtype=np.int64, ndmin=1).clip(0),
                            minlength=len(paths))
        names = [f"{n} ({int(sizes[i])} particles)" for i, n in enumerate(volume_names(paths, "cluster"))]
        return self.volumeViews(paths, names, f"{self.protocol.getRunName()}: cluster-centre volumes")

    def _showTraversal(self, _param=None) -> list[View]:
        d = self.pcNumber.get()
        paths = sorted(glob.glob(self.protocol.anaDir(f"pc{d}", "vol_*.mrc")))
        if not paths:
            return self.missing(f"No volumes along PC{d}: the analysis traversed {self.protocol.numPcs.get()} "
                                "principal components (or has not finished).")
        vals = np.loadtxt(self.protocol.anaDir(f"pc{d}", "pc_values.txt"), ndmin=1)
        names = [f"PC{d} = {v:.3g}" for v in vals]
        return self.volumeViews(paths, names, f"{self.protocol.getRunName()}: volumes along PC{d}")

    def clusterImagesFigure(self):
        latent = self.latentSpace()
        j = self.cluster.get()
        rows = np.flatnonzero(latent.labels == j)[: max(1, self.maxImages.get())]
        ids = [latent.ids[r] for r in rows]
        parts = self._train().inputParticles.get()
        images, titles = lowest_dose_images(self._train().inputStar(), ids, getattr(parts, "getDataDir", lambda: None)())
        n = int((latent.labels == j).sum())
        return image_grid(list(images), titles, f"cluster {j}: {len(ids)} of its {n} particles, lowest-dose tilt")

    def _showImages(self, _param=None) -> list[View]:
        if not self._analysed():
            return self.missing("The analysis has not finished: run (or wait for) the analyze protocol.")
        k = self.protocol.ksample.get()
        if not 0 <= self.cluster.get() < k:
            return self.missing(f"Clusters are numbered 0 to {k - 1}.")
        return self.figureView(self.clusterImagesFigure(),
                               f"{self.protocol.getRunName()}: particles of cluster {self.cluster.get()}")

    # --------------------------------------------------------------------------------------------- map back
    def mapbackScript(self) -> str:
        from ..method.mapback import _file_names

        tomos = self._tomograms()
        t = tomos[self.tomogram.get()]
        return self.protocol.mapbackDir(MAPBACK_MODES[self.mapbackMode.get()], _file_names(tomos)[t] + ".cxc")

    def mapbackFigure(self):
        """Particle positions of the chosen tomogram, coloured by cluster."""
        from ..method.mapback import read_labels, read_volume_series

        vs = read_volume_series(self._volumeStar())
        labels = read_labels(self.protocol.kmeansDir("labels.txt"), vs.n_particles)
        t = self._tomograms()[self.tomogram.get()]
        members = np.flatnonzero(np.asarray(vs.tomograms, dtype=object) == t)
        return positions_figure(vs.centers_a[members], labels[members], t)

    def _showMapback(self, _param=None) -> list[View]:
        if not self._tomograms():
            return self.missing("No map-back for this analysis: give the volume-series star (the Warp/RELION "
                                "subtomogram star with particle coordinates) in the analyze run's 'Volume-series "
                                "star' field and run it again.")
        from .views import ChimeraXView, chimerax_program

        script = self.mapbackScript()
        if not os.path.isfile(script):
            return self.missing(f"{script} was not written: run the analysis again.")
        program = chimerax_program()
        if program:
            return [ChimeraXView(script, program)]
        fig = self.mapbackFigure()
        fig.supxlabel(f"ChimeraX not found (set CHIMERAX_PATH or put it on PATH); its script is\n{os.path.abspath(script)}",
                      fontsize=7)
        return self.figureView(fig, f"{self.protocol.getRunName()}: map-back")

    # --------------------------------------------------------------------------------------------- training
    def _showLoss(self, _param=None) -> list[View]:
        epoch = self.latentSpace().epoch if self._analysed() else None
        fig = loss_figure(self._train().trainDir(), with_kl=True, epoch=epoch)
        if fig is None:
            return self.missing("The training run has no finished epoch.")
        return self.figureView(fig, f"{self.protocol.getRunName()}: loss (dotted: the analysed epoch)")
