"""Viewers of the training protocols: loss curves, the latent space of the latest checkpoint and the
convergence check (train VAE), the loss and the map (train homogeneous). They read the training folder, so
they also work while the run is still going."""
from __future__ import annotations

import os

import pyworkflow.protocol.params as params
from pyworkflow.viewer import View

from ..method.analysis import read_loss
from ..method.errors import InputError
from ..protocols import TomoDrgnProtTrainNN, TomoDrgnProtTrainVAE
from .latent import COLOR_NONE, COLOR_TOMOGRAM, LatentSpace
from .viewer_base import TomoDrgnViewerBase
from .views import BackgroundView

EMBED_PCA, EMBED_UMAP = 0, 1
EMBEDDINGS = ["PCA", "UMAP"]


def loss_figure(train_dir: str, with_kl: bool, epoch: int | None = None):
    """Loss per epoch of a training folder (None before the first epoch); ``epoch`` (default: the last) is
    marked dotted when the KL panel is drawn."""
    from pathlib import Path

    from ..method import plots
    from ..method.cli_analysis import figure_loss

    loss = read_loss(Path(train_dir))
    if not len(loss["epoch"]):
        return None
    last = int(loss["epoch"][-1])
    if with_kl:
        fig = figure_loss(loss, last if epoch is None else epoch)
    else:
        fig, (ax,) = plots.new_figure(1, panel_size=(5.0, 3.5))
        plots.lines(ax, loss["epoch"], {"reconstruction": loss["recon"]}, "epoch", "reconstruction loss (MSE)")
    fig.suptitle(f"loss per epoch ({last} epochs so far)")
    return fig


class TomoDrgnTrainVAEViewer(TomoDrgnViewerBase):
    """Loss and KL per epoch, the latent space of the latest checkpoint, and whether training converged."""

    _label = "viewer train VAE"
    _targets = [TomoDrgnProtTrainVAE]

    def _defineParams(self, form) -> None:
        form.addSection(label="Training")
        form.addParam("displayLoss", params.LabelParam, label="Loss curves",
                      help="Reconstruction loss and KL divergence per epoch (updated while the run goes on).")
        form.addParam("embedding", params.EnumParam, choices=EMBEDDINGS, default=EMBED_PCA,
                      display=params.EnumParam.DISPLAY_HLIST, label="Latent space as",
                      help="UMAP needs zdim > 2; it is computed once per checkpoint (tens of seconds) and kept.")
        self._colors = self._colorChoices()
        form.addParam("colorBy", params.EnumParam, choices=self._colors, default=0,
                      label="Colour points by", help="The tomogram, or a star column (per particle; a column that varies "
                                                     "across tilts gives its value on the lowest-dose tilt).")
        form.addParam("displayLatent", params.LabelParam, label="Latent space of the latest checkpoint")
        form.addParam("displayConvergence", params.LabelParam, label="Convergence",
                      help="convergence_vae: volumes at anchor particles, z and loss compared between checkpoints, "
                           "with the verdict line. Takes a few seconds to minutes.")

    def _getVisualizeDict(self) -> dict:
        return {"displayLoss": self._showLoss, "displayLatent": self._showLatent,
                "displayConvergence": self._showConvergence}

    # --------------------------------------------------------------------------------------------- helpers
    def _colorChoices(self) -> list[str]:
        star = self.protocol.inputStar()
        if not os.path.isfile(star):
            return [COLOR_TOMOGRAM, COLOR_NONE]
        from ..method.analysis import per_particle_table
        from ..method.star import TiltSeriesStar

        cols = [c for c in per_particle_table(TiltSeriesStar(star)).columns if c != "tomogram"]
        return [COLOR_TOMOGRAM, *cols, COLOR_NONE]

    def _hasCheckpoint(self) -> bool:
        from ..protocols.protocol_analyze import latest_epoch

        return latest_epoch(self.protocol.trainDir()) > 0

    # --------------------------------------------------------------------------------------------- views
    def _showLoss(self, _param=None) -> list[View]:
        fig = loss_figure(self.protocol.trainDir(), with_kl=True)
        if fig is None:
            return self.missing("No epoch has finished yet: the loss appears after the first epoch.")
        return self.figureView(fig, f"{self.protocol.getRunName()}: loss")

    def latentSpace(self) -> LatentSpace:
        want_umap = self.embedding.get() == EMBED_UMAP
        return LatentSpace.from_training(self.protocol.trainDir(), self.protocol.inputStar(),
                                         umap_cache=self.viewerDir("umap") if want_umap else None)

    def _showLatent(self, _param=None) -> list[View]:
        if not self._hasCheckpoint():
            return self.missing("The run has no checkpoint with z yet: the latent space appears after the first "
                                "checkpoint.")
        kind = EMBEDDINGS[self.embedding.get()]
        if kind == "PCA":
            return self._latentViews(kind)
        # a UMAP takes tens of seconds the first time: off the GUI thread
        return [BackgroundView(lambda: self._latentViews(kind), f"{self.protocol.getRunName()}: UMAP",
                               "computing the UMAP of the latest checkpoint's z (kept for the next time)",
                               tkParent=self.getTkRoot())]

    def _latentViews(self, kind: str) -> list[View]:
        latent = self.latentSpace()
        if kind == "UMAP" and latent.umap is None:
            return self.missing("UMAP needs zdim > 2 and umap-learn: showing nothing. Choose PCA.")
        color = self._colors[self.colorBy.get()]
        fig = latent.figure(kind, color=color)
        return self.figureView(fig, f"{self.protocol.getRunName()}: latent space, epoch {latent.epoch}")

    def convergence(self):
        """Run ``convergence_vae`` on the training folder (into ``extra/viewer/convergence``)."""
        import argparse

        from ..method.convergence import add_convergence_vae, evaluate

        p = argparse.ArgumentParser()
        add_convergence_vae(p)
        a = p.parse_args([self.protocol.trainDir(), "-o", self.viewerDir("convergence"),
                          "--device", "cpu"])
        return evaluate(a)[0]

    def _showConvergence(self, _param=None) -> list[View]:
        """``convergence_vae`` renders volumes at every examined checkpoint (seconds to minutes): off the GUI
        thread, with a progress line."""
        if not self._hasCheckpoint():
            return self.missing("The run has no checkpoint yet: convergence compares checkpoints.")
        return [BackgroundView(self._convergenceViews, f"{self.protocol.getRunName()}: convergence",
                               "convergence_vae: comparing the checkpoints", tkParent=self.getTkRoot())]

    def _convergenceViews(self) -> list[View]:
        from ..method.convergence import plot_convergence

        try:
            r = self.convergence()
        except InputError as exc:
            return self.missing(f"{exc}")
        views = self.figureView(plot_convergence(r), f"{self.protocol.getRunName()}: convergence")
        return views + [self.infoMessage(r.line, "Convergence")]


class TomoDrgnTrainNNViewer(TomoDrgnViewerBase):
    """The loss per epoch and the homogeneous map."""

    _label = "viewer train homogeneous"
    _targets = [TomoDrgnProtTrainNN]

    def _defineParams(self, form) -> None:
        form.addSection(label="Results")
        form.addParam("displayLoss", params.LabelParam, label="Loss curve")
        self._addVolumeDisplayParam(form)
        form.addParam("displayMap", params.LabelParam, label="Map")

    def _getVisualizeDict(self) -> dict:
        return {"displayLoss": self._showLoss, "displayMap": self._showMap}

    def _showLoss(self, _param=None) -> list[View]:
        fig = loss_figure(self.protocol.trainDir(), with_kl=False)
        if fig is None:
            return self.missing("No epoch has finished yet: the loss appears after the first epoch.")
        return self.figureView(fig, f"{self.protocol.getRunName()}: loss")

    def _showMap(self, _param=None) -> list[View]:
        path = self.protocol.trainDir("reconstruct.mrc")
        if not os.path.isfile(path):
            return self.missing("The map is written when training finishes.")
        return self.volumeViews([path], ["homogeneous map"], f"{self.protocol.getRunName()}: map")

