"""Select particles by cluster or by index and export them in their own format: a RELION 3.0 star file (all
original columns) for our particle sets; for scipion-em-reliontomo's pseudo-subtomograms, a set of that class
(the input's info copied, its items cloned) with a RELION 5 optimisation set of the kept rows, ready for
reliontomo's refinement, classification, reconstruction and re-extraction."""
from __future__ import annotations

import os

import numpy as np
import pyworkflow.protocol.params as params

from ..constants import CITE_TOMODRGN
from ..objects import TomoDrgnParticles
from .protocol_base import PARTICLE_CLASSES, TomoDrgnProtBase, particle_cluster

SELECT_CLUSTERS, SELECT_INDICES = 0, 1


def parse_int_list(text: str) -> list[int]:
    """``"0 2, 5-7"`` -> ``[0, 2, 5, 6, 7]``; a ValueError naming the bad item otherwise."""
    out: list[int] = []
    for item in text.replace(",", " ").split():
        if "-" in item[1:]:
            a, b = item.split("-", 1) if not item.startswith("-") else (item, "")
            if not (a.lstrip("-").isdigit() and b.isdigit()) or int(b) < int(a):
                raise ValueError(f"'{item}' is not a number or a range a-b")
            out += list(range(int(a), int(b) + 1))
        elif item.lstrip("-").isdigit():
            out.append(int(item))
        else:
            raise ValueError(f"'{item}' is not a number or a range a-b")
    return out


class TomoDrgnProtSelect(TomoDrgnProtBase):
    """Keep (or drop) whole particles, by k-means cluster of an analysis or by particle index, giving a new
    particle set and a RELION 3.0 star file with every tilt row and column of those particles, unchanged."""

    _label = "select particles"
    _possibleOutputs = {"outputParticles": TomoDrgnParticles}

    def _defineParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass=PARTICLE_CLASSES, important=True,
                      label="Particles", help="Particle tilt series, or reliontomo's pseudo-subtomograms; for "
                                              "selection by cluster, the output particles of an analyze run (each "
                                              "carries its cluster). The output is of the input's class.")
        form.addParam("mode", params.EnumParam, choices=["by cluster", "by particle index"], default=SELECT_CLUSTERS,
                      display=params.EnumParam.DISPLAY_HLIST, label="Select")
        form.addParam("clusters", params.StringParam, default="", condition=f"mode == {SELECT_CLUSTERS}",
                      label="Clusters", help="k-means labels, e.g. '0 2 5-7'.")
        form.addParam("indices", params.TextParam, default="", condition=f"mode == {SELECT_INDICES}",
                      label="Particle indices", help="0-based positions of particles in the input set, in order "
                                                     "(e.g. '0 3 10-19'); or give a file below.")
        form.addParam("indexFile", params.PathParam, allowsNull=True, condition=f"mode == {SELECT_INDICES}",
                      label="Index file", help="One 0-based index per line (.txt), or .npy (pickles, .pkl, are not read: they can run code).")
        form.addParam("action", params.EnumParam, choices=["keep", "drop"], default=0,
                      display=params.EnumParam.DISPLAY_HLIST, label="Selected particles are",
                      help="keep: the output holds them; drop: it holds all the others.")

    # ------------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.selectStep, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def exportedStar(self) -> str:
        from ..convert.particles import particle_star_name

        return self._getExtraPath(particle_star_name(self.inputParticles.get(), "selected_particles"))

    def _sourceStar(self) -> str:
        from ..convert.particles import particle_star_name

        return self._getExtraPath(particle_star_name(self.inputParticles.get(), "input_particles"))

    def selectedNamesFile(self) -> str:
        """The ``_rlnTomoParticleName`` of each kept particle, one a line (reliontomo input)."""
        return self._getExtraPath("selected_names.txt")

    def _isRelion(self) -> bool:
        from ..convert.relion5 import is_relion_set

        return is_relion_set(self.inputParticles.get())

    def selectStep(self) -> None:
        from ..convert.particles import star_from_particles

        parts = self.inputParticles.get()
        if self._isRelion():
            self._selectRelion(parts)
            return
        star_from_particles(parts, self._sourceStar())
        args: list[object] = [self._sourceStar(), "-o", self.exportedStar(), "--action",
                              ["keep", "drop"][self.action.get()]]
        if self.mode.get() == SELECT_CLUSTERS:
            labels = [p.getCluster() if p.getCluster() is not None else -1 for p in parts.iterItems(orderBy="id")]
            np.savetxt(self._getExtraPath("labels.txt"), labels, fmt="%d")
            args += ["--labels", self._getExtraPath("labels.txt"), "--labels-sel", *parse_int_list(self.clusters.get())]
        else:
            args += ["--ind", self._indexFile()]
        self._runCli("filter", args)

    def _selectRelion(self, parts) -> None:
        """The chosen particles by name, with the command line's rules (``filter``'s index and label checks)."""
        from pathlib import Path

        from ..convert.relion5 import item_cluster, write_text_atomic
        from ..method.cli_analysis import select_particles

        # values, not items: Scipion reuses one item object while iterating
        names = [p.getRelionParticleName() for p in parts.iterItems(orderBy="id")]
        action = ["keep", "drop"][self.action.get()]
        if self.mode.get() == SELECT_CLUSTERS:
            labels = [item_cluster(p) for p in parts.iterItems(orderBy="id")]
            np.savetxt(self._getExtraPath("labels.txt"), [-1 if c is None else c for c in labels], fmt="%d")
            chosen = select_particles(len(names), labels=Path(self._getExtraPath("labels.txt")),
                                      labels_sel=parse_int_list(self.clusters.get()), action=action)
        else:
            chosen = select_particles(len(names), ind=Path(self._indexFile()), action=action)
        if len(chosen) == 0:
            raise ValueError("the selection keeps no particle")
        write_text_atomic("".join(names[int(i)] + "\n" for i in chosen),
                          self.selectedNamesFile())

    def _indexFile(self) -> str:
        if self.indices.get() and self.indices.get().strip():
            path = self._getExtraPath("indices.txt")
            np.savetxt(path, parse_int_list(self.indices.get()), fmt="%d")
            return path
        return os.path.abspath(self.indexFile.get())

    def createOutputStep(self) -> None:
        from ..method.star import TiltSeriesStar

        if self._isRelion():
            self._createRelionOutput()
            return
        kept = set(TiltSeriesStar(self.exportedStar()).particle_ids)
        parts = self.inputParticles.get()
        out = self._createParticleSet()
        out.copyInfo(parts)
        # the exported star becomes the set's own: its rows are renumbered for the selected particles
        out.setStar(os.path.abspath(self.exportedStar()))
        rows = TiltSeriesStar(self.exportedStar())
        row_of = dict(zip(rows.particle_ids, rows.rows_of_particle))
        for p in parts.iterItems(orderBy="id"):
            if p.getParticleId() in kept:
                q = p.clone()
                q.setRows(row_of[p.getParticleId()])
                out.append(q)
        self._defineOutputs(outputParticles=out)
        self._defineSourceRelation(parts, out)

    def _createRelionOutput(self) -> None:
        """A ``RelionSetOfPseudoSubtomograms`` of the kept particles with its own optimisation set."""
        from reliontomo.constants import PSUBTOMOS_SQLITE
        from reliontomo.objects import RelionSetOfPseudoSubtomograms

        from ..convert.relion5 import relion_subset

        parts = self.inputParticles.get()
        names = open(self.selectedNamesFile()).read().split()
        out = RelionSetOfPseudoSubtomograms.create(self._getPath(), template=PSUBTOMOS_SQLITE)
        relion_subset(parts, names, out, self._getExtraPath())
        self._defineOutputs(outputParticles=out)
        self._defineSourceRelation(parts, out)

    def exportedOptimisationSet(self) -> str:
        """The optimisation set of a reliontomo selection (for RELION 5 / M outside Scipion)."""
        return self._getExtraPath("optimisation_set.star")

    # ------------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        parts = self.inputParticles.get()
        if parts is None:
            return ["Choose the particles."]
        errors = []
        try:
            if self.mode.get() == SELECT_CLUSTERS:
                chosen = parse_int_list(self.clusters.get() or "")
                if not chosen:
                    errors.append("Give the clusters to select.")
                elif particle_cluster(parts.getFirstItem()) is None:
                    errors.append("These particles have no clusters: use the output particles of an analyze run.")
            else:
                if not (self.indices.get() or "").strip() and not self.indexFile.get():
                    errors.append("Give particle indices or an index file.")
                elif (self.indices.get() or "").strip():
                    bad = [i for i in parse_int_list(self.indices.get()) if not 0 <= i < parts.getSize()]
                    if bad:
                        errors.append(f"Particle index {bad[0]} is out of range 0..{parts.getSize() - 1}.")
                elif not os.path.isfile(self.indexFile.get()):
                    errors.append(f"{self.indexFile.get()}: index file not found")
        except ValueError as exc:
            errors.append(str(exc))
        return errors

    def _summary(self) -> list[str]:
        if not self.hasAttribute("outputParticles"):
            return ["Not run yet."]
        exported = (f"RELION 5 optimisation set: {self.exportedOptimisationSet()}" if self._isRelion()
                    else f"RELION 3.0 star file: {self.exportedStar()}")
        return [f"{self.outputParticles.getSize()} of {self.inputParticles.get().getSize()} particles "
                f"({['kept', 'dropped'][self.action.get()]} by {['cluster', 'index'][self.mode.get()]}).", exported]

    def _methods(self) -> list[str]:
        if not self.hasAttribute("outputParticles"):
            return []
        return [f"{self.outputParticles.getSize()} particles were selected from the tomoDRGN-style analysis "
                f"[{CITE_TOMODRGN}] and exported as a {'RELION 5 optimisation set' if self._isRelion() else 'RELION 3.0 star file'}."]
