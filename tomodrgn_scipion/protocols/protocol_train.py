"""Train the VAE (heterogeneity) or the decoder alone (homogeneous) with ``tomodrgn-scipion``."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pwem.objects import Volume

from .. import Plugin
from ..constants import CITE_TOMODRGN
from ..objects import TomoDrgnParticles
from .protocol_base import (PARTICLE_CLASSES, TomoDrgnProtBase, add_relion_contrast_param, input_errors,
                            relion_or_own_args, visible_devices)

PE_TYPES = ["geom_lowf", "geom_ft", "geom_full", "geom_nohighf", "linear_lowf", "gaussian", "none"]
POOLING = ["concatenate", "max", "mean", "median", "set_attention"]
#: Choices of "Load images" and their options of the command (auto: none, the command decides).
LOAD_AUTO, LOAD_MEMORY, LOAD_DISK = 0, 1, 2
LOAD_CHOICES = ["auto", "in memory", "stream from disk"]
LOAD_FLAGS = {LOAD_AUTO: [], LOAD_MEMORY: ["--no-lazy"], LOAD_DISK: ["--lazy"]}


def legacy_load_choice(lazy: object) -> int:
    """"Load images" of a run saved with the former Yes/No ``lazy`` (a Boolean, or its stored text): what
    that run did, stream from disk or in memory."""
    return LOAD_DISK if str(lazy).strip().lower() in ("true", "1") else LOAD_MEMORY


class LegacyLazyParam(params.DeprecatedParam):
    """The Yes/No "Read images from disk as needed?" (``lazy``) of runs saved before "Load images": loading
    such a run from its project sets "Load images" (:func:`legacy_load_choice`)."""

    def __init__(self, prot) -> None:
        super().__init__("loadImages", prot)

    def set(self, value, cleanExtended: bool = False) -> None:
        if value is not None:
            super().set(legacy_load_choice(value))


class TomoDrgnProtTrainBase(TomoDrgnProtBase):
    """Shared form, conversion and command of the two training protocols."""

    _label = None
    COMMAND = ""
    TRAIN_DIR = "train"

    # ------------------------------------------------------------------------------------ form
    def _defineInputParams(self, form) -> None:
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass=PARTICLE_CLASSES, important=True,
                      label="Particle tilt series",
                      help="From our import protocol or a selection of them, or reliontomo's 2D-stack "
                           "pseudo-subtomograms (\"Extract subtomos\" with \"Write output as 2D stacks?\" = Yes); "
                           "3D pseudo-subtomograms must be re-extracted as 2D stacks first.")
        add_relion_contrast_param(form)
        form.addParam("continueRun", params.PointerParam, pointerClass=self.getClassName(), allowsNull=True,
                      label="Continue from a previous run (optional)",
                      help="Resume that run's training from its last checkpoint (same particles and network) "
                           "up to the number of epochs given here.")

    def _defineTrainingParams(self, form) -> None:
        form.addSection(label="Training")
        form.addParam("numEpochs", params.IntParam, default=20, validators=[params.Positive],
                      label="Epochs", help="Passes through all particles (-n).")
        form.addParam("batchSize", params.IntParam, default=1, validators=[params.Positive],
                      label="Batch size (particles)",
                      help="Particles per optimiser step (-b), over all GPUs: with several, each takes its share, "
                           "so the result does not depend on their number. Scale the learning rate with it.")
        form.addParam("learningRate", params.FloatParam, default=2e-4, label="Learning rate", help="--lr (AdamW).")
        form.addParam("weightDecay", params.FloatParam, default=0.0, expertLevel=params.LEVEL_ADVANCED,
                      label="Weight decay", help="--wd")
        form.addParam("seed", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED, label="Random seed",
                      help="Same seed, data and device give the same result.")
        form.addParam("checkpoint", params.IntParam, default=1, expertLevel=params.LEVEL_ADVANCED,
                      label="Checkpoint every N epochs", help="weights.E.pt and z.E.npy (0: only the last).")
        line = form.addLine("Loss weighting", expertLevel=params.LEVEL_ADVANCED,
                            help="tomoDRGN's --recon-dose-weight, --recon-tilt-weight and --l-dose-mask.")
        line.addParam("doseWeight", params.BooleanParam, default=False, label="dose")
        line.addParam("tiltWeight", params.BooleanParam, default=False, label="tilt")
        line.addParam("doseMask", params.BooleanParam, default=False, label="dose mask")
        self.lazy = LegacyLazyParam(self)
        form.addParam("loadImages", params.EnumParam, choices=LOAD_CHOICES, default=LOAD_AUTO,
                      display=params.EnumParam.DISPLAY_HLIST, expertLevel=params.LEVEL_ADVANCED,
                      label="Load images",
                      help="auto: in memory when the preprocessed images take at most half the free memory of "
                           "the training device (GPU, or the computer's), else streamed from disk; the log says "
                           "which and why. In memory (--no-lazy): fastest. Stream from disk (--lazy): for data "
                           "larger than memory.")
        form.addParam("numWorkers", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label="Loader threads", help="Background threads preparing batches (--num-workers).")
        form.addParam("noAmp", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label="No mixed precision on GPU?", help="--no-amp")
        form.addParam("extraParams", params.StringParam, default="", expertLevel=params.LEVEL_ADVANCED,
                      label="Extra command-line options", help="Appended to the tomodrgn-scipion command.")

    def _defineDecoderParams(self, form) -> None:
        form.addSection(label="Decoder")
        form.addParam("decLayers", params.IntParam, default=3, label="Hidden layers", help="--dec-layers")
        form.addParam("decDim", params.IntParam, default=256, label="Nodes per layer", help="--dec-dim")
        form.addParam("peType", params.EnumParam, choices=PE_TYPES, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label="Positional encoding", help="--pe-type")

    def processImportDict(self, importDict: dict, importDir: str) -> dict:
        """A workflow file exported before "Load images" gives the Yes/No ``lazy``: it sets "Load images"."""
        importDict = super().processImportDict(importDict, importDir)
        if "lazy" in importDict and "loadImages" not in importDict:
            importDict = {**importDict, "loadImages": legacy_load_choice(importDict["lazy"])}
        return importDict

    # ------------------------------------------------------------------------------------ paths
    def trainDir(self, *parts: str) -> str:
        """The ``tomodrgn-scipion`` output folder of this run."""
        return self._getExtraPath(self.TRAIN_DIR, *parts)

    def inputStar(self) -> str:
        """What the command reads: the optimisation set of reliontomo particles, else our set's star file in its
        own format."""
        if self.isRelionInput():
            return self._getExtraPath("particles_optimisation_set.star")
        from ..convert.particles import particle_star_name

        return self._getExtraPath(particle_star_name(self.inputParticles.get(), "particles"))

    def particlesStar(self) -> str:
        """The star file with one entry per particle, in the order the method indexes them."""
        return self._getExtraPath("particles.star")

    def isRelionInput(self) -> bool:
        from ..convert.relion5 import is_relion_set

        return is_relion_set(self.inputParticles.get())

    # ------------------------------------------------------------------------------------ steps
    def _insertAllSteps(self) -> None:
        self._insertFunctionStep(self.convertInputStep, needsGPU=False)
        self._insertFunctionStep(self.trainStep)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertInputStep(self) -> None:
        from ..convert.particles import star_from_particles
        from ..convert.relion5 import optimisation_set_for

        if self.isRelionInput():
            optimisation_set_for(self.inputParticles.get(), self._getExtraPath(), stem="particles")
        else:
            star_from_particles(self.inputParticles.get(), self.inputStar())
        prev = self.continueRun.get()
        if prev is not None and not os.path.isdir(self.trainDir()):
            shutil.copytree(prev.trainDir(), self.trainDir())

    def _commonArgs(self) -> list[object]:
        parts = self.inputParticles.get()
        args: list[object] = [self.inputStar(), "-o", self.trainDir(), "-n", self.numEpochs.get(),
                              "-b", self.batchSize.get(), "--lr", self.learningRate.get(), "--wd", self.weightDecay.get(),
                              "--seed", self.seed.get(), "--checkpoint", self.checkpoint.get(),
                              "--num-workers", self.numWorkers.get(),
                              "--dec-layers", self.decLayers.get(), "--dec-dim", self.decDim.get(),
                              "--pe-type", PE_TYPES[self.peType.get()], *LOAD_FLAGS[self.loadImages.get()]]
        args += relion_or_own_args(self, parts)
        for flag, on in (("--recon-dose-weight", self.doseWeight), ("--recon-tilt-weight", self.tiltWeight),
                         ("--l-dose-mask", self.doseMask), ("--no-amp", self.noAmp)):
            if on.get():
                args.append(flag)
        if self.continueRun.get() is not None:
            args += ["--load", "latest"]
        return args

    def _trainDevice(self) -> "tuple[list[object], pwutils.Environ]":
        """Device options and environment of the training command.

        CPU: ``--device cpu``. One GPU: ``--device auto:N`` as the other protocols. Several: one process per
        GPU, ``--num-gpus N --device cuda``, the processes using cuda:0..N-1 of ``CUDA_VISIBLE_DEVICES``, set
        to the listed GPUs (:func:`visible_devices`). Under a queue the variable is the queue engine's: it sets
        it in the job for the GPU_COUNT GPUs it booked (with Scipion's "queue for jobs", the job is not even
        this process), so it is left alone.
        """
        env = self._environ()
        gpus = self.gpuIds() if self.usesGpu() else []
        if len(gpus) < 2:
            return self._deviceArgs(), env
        if not self.useQueue():
            env["CUDA_VISIBLE_DEVICES"] = visible_devices(gpus, env.get("CUDA_VISIBLE_DEVICES"))
        return ["--num-gpus", len(gpus), "--device", "cuda"], env

    def trainCommand(self) -> "tuple[str, list[object], pwutils.Environ]":
        """The program, arguments and environment of the training step."""
        import shlex

        device, env = self._trainDevice()
        args = [*self._commonArgs(), *device, *self._specificArgs(), *shlex.split(self.extraParams.get() or "")]
        return Plugin.getProgram(self.COMMAND), args, env

    def trainStep(self) -> None:
        _, args, env = self.trainCommand()
        self._runCli(self.COMMAND, args, env=env)

    def _specificArgs(self) -> list[object]:
        return []

    # ------------------------------------------------------------------------------------ info
    def _validate(self) -> list[str]:
        errors = input_errors(self.inputParticles.get())
        prev = self.continueRun.get()
        if prev is not None:
            if not os.path.isdir(prev.trainDir()):
                errors.append(f"The run to continue has no training folder ({prev.trainDir()}).")
            elif prev.numEpochs.get() >= self.numEpochs.get():
                errors.append(f"The run to continue already trained {prev.numEpochs.get()} epochs: ask for more.")
        if self.learningRate.get() is None or self.learningRate.get() <= 0:
            errors.append("The learning rate must be > 0.")
        gpu_errors = self._gpuErrors(several=True)
        if not gpu_errors and self.usesGpu() and not self.useQueue():
            gpus = len(self.getGpuList())
            if gpus > 1 and (self.batchSize.get() or 0) < gpus:
                errors.append(f"Batch size {self.batchSize.get()}: the batch is shared by the {gpus} GPUs, so it "
                              f"must be at least {gpus}.")
        return errors + gpu_errors

    def _trainingSummary(self) -> list[str]:
        loss = self.trainDir("loss.csv")
        if not os.path.isfile(loss):
            return ["Training not started yet."]
        rows = np.atleast_1d(np.genfromtxt(loss, delimiter=",", names=True))
        if rows.size == 0:
            return ["Training started, no epoch finished yet."]
        last = rows[-1]
        return [f"{int(last['epoch'])} of {self.numEpochs.get()} epochs: reconstruction loss {last['recon']:.5f}, "
                f"{float(np.mean(rows['seconds'])):.1f} s per epoch"]


class TomoDrgnProtTrainVAE(TomoDrgnProtTrainBase):
    """Learn structural heterogeneity: a variational auto-encoder over each particle's tilt series gives it a
    latent vector z; the decoder renders the structure at any z. Output: the particles with their z."""

    _label = "train VAE"
    _possibleOutputs = {"outputParticles": TomoDrgnParticles}
    COMMAND = "train_vae"

    def _defineParams(self, form) -> None:
        self._defineInputParams(form)
        form.addParam("zdim", params.IntParam, default=8, validators=[params.Positive], label="Latent dimension",
                      help="Dimension of z (--zdim); tomoDRGN users typically start with 8.")
        form.addParam("ntilts", params.IntParam, default=0, label="Tilts per particle for the encoder",
                      help="--ntilts: the lowest-dose tilts encoded; particles with fewer are dropped. 0: the "
                           "smallest number of tilts in the data.")
        form.addParam("beta", params.StringParam, default="", expertLevel=params.LEVEL_ADVANCED,
                      label="KL weight (beta)", help="A number, linear:START:END:EPOCHS or cyclic:MAX:PERIOD; "
                                                      "empty: 1/zdim.")
        self._defineTrainingParams(form)
        form.addSection(label="Encoder")
        form.addParam("encLayersA", params.IntParam, default=3, label="Per-tilt hidden layers", help="--enc-layers-A")
        form.addParam("encDimA", params.IntParam, default=256, label="Per-tilt nodes per layer", help="--enc-dim-A")
        form.addParam("outDimA", params.IntParam, default=128, label="Per-tilt output size", help="--out-dim-A")
        form.addParam("encLayersB", params.IntParam, default=3, label="Pooled hidden layers", help="--enc-layers-B")
        form.addParam("encDimB", params.IntParam, default=256, label="Pooled nodes per layer", help="--enc-dim-B")
        form.addParam("pooling", params.EnumParam, choices=POOLING, default=0, label="Pooling of tilts",
                      help="--pooling-function")
        self._defineDecoderParams(form)
        self._addGpuParams(form, several=True)

    def _specificArgs(self) -> list[object]:
        args: list[object] = ["--zdim", self.zdim.get(), "--enc-layers-A", self.encLayersA.get(),
                              "--enc-dim-A", self.encDimA.get(), "--out-dim-A", self.outDimA.get(),
                              "--enc-layers-B", self.encLayersB.get(), "--enc-dim-B", self.encDimB.get(),
                              "--pooling-function", POOLING[self.pooling.get()]]
        if self.ntilts.get():
            args += ["--ntilts", self.ntilts.get()]
        if self.beta.get():
            args += ["--beta", self.beta.get()]
        return args

    def createOutputStep(self) -> None:
        from ..convert.particles import particles_with_z
        from ..convert.relion5 import Z_ATTR, relion_items_with

        z = np.load(self.trainDir("z.npy"))
        ids = open(self.trainDir("particle_ids.txt")).read().split()
        if self.isRelionInput():  # the input's own class, each item with its z, matched by particle name
            from reliontomo.constants import PSUBTOMOS_SQLITE
            from reliontomo.objects import RelionSetOfPseudoSubtomograms

            if z.ndim != 2 or len(z) != len(ids):
                raise ValueError(f"z has shape {z.shape} for {len(ids)} particle ids")
            out = RelionSetOfPseudoSubtomograms.create(self._getPath(), template=PSUBTOMOS_SQLITE)
            missing = relion_items_with(self.inputParticles.get(), out, {i: {Z_ATTR: v} for i, v in zip(ids, z)})
        else:
            out = self._createParticleSet()
            missing = particles_with_z(self.inputParticles.get(), out, z, ids)
        if missing:
            self.info(f"{missing} particles have no z (fewer tilts than --ntilts) and are not in the output")
        self._defineOutputs(outputParticles=out)
        self._defineSourceRelation(self.inputParticles, out)

    def _summary(self) -> list[str]:
        lines = self._trainingSummary()
        if self.hasAttribute("outputParticles"):
            lines.append(f"{self.outputParticles.getSize()} particles with z (zdim {self.zdim.get()}).")
        return lines

    def _methods(self) -> list[str]:
        return [f"Structural heterogeneity was learned with a tomoDRGN-style variational auto-encoder [{CITE_TOMODRGN}] "
                f"(latent dimension {self.zdim.get()}, {self.numEpochs.get()} epochs, encoder {self.encLayersA.get()}x"
                f"{self.encDimA.get()} per tilt and {self.encLayersB.get()}x{self.encDimB.get()} pooled, decoder "
                f"{self.decLayers.get()}x{self.decDim.get()})."]


class TomoDrgnProtTrainNN(TomoDrgnProtTrainBase):
    """Homogeneous reconstruction with the decoder alone (no latent variable): one consensus volume."""

    _label = "train homogeneous"
    _possibleOutputs = {"outputVolume": Volume}
    COMMAND = "train_nn"

    def _defineParams(self, form) -> None:
        self._defineInputParams(form)
        self._defineTrainingParams(form)
        self._defineDecoderParams(form)
        self._addGpuParams(form, several=True)

    def createOutputStep(self) -> None:
        vol = Volume()
        vol.setFileName(self.trainDir("reconstruct.mrc"))
        vol.setSamplingRate(self.inputParticles.get().getSamplingRate())
        self._defineOutputs(outputVolume=vol)
        self._defineSourceRelation(self.inputParticles, vol)

    def _summary(self) -> list[str]:
        return self._trainingSummary()

    def _methods(self) -> list[str]:
        return [f"A homogeneous reconstruction was trained with the tomoDRGN decoder [{CITE_TOMODRGN}] "
                f"({self.decLayers.get()}x{self.decDim.get()}, {self.numEpochs.get()} epochs)."]
