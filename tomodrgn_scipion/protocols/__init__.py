"""Scipion protocols of scipion-em-tomodrgn. Thin: each converts Scipion objects, runs one
``tomodrgn-scipion`` command through ``runJob`` and registers the outputs."""
from .protocol_analyze import TomoDrgnProtAnalyze
from .protocol_backproject import TomoDrgnProtBackproject
from .protocol_base import TomoDrgnProtBase
from .protocol_generate import TomoDrgnProtGenerateVolumes
from .protocol_import import TomoDrgnProtImportParticles
from .protocol_import_relion import TomoDrgnProtImportRelionParticles
from .protocol_select import TomoDrgnProtSelect
from .protocol_train import TomoDrgnProtTrainNN, TomoDrgnProtTrainVAE

__all__ = ["TomoDrgnProtBase", "TomoDrgnProtImportParticles", "TomoDrgnProtImportRelionParticles", "TomoDrgnProtTrainVAE", "TomoDrgnProtTrainNN",
           "TomoDrgnProtAnalyze", "TomoDrgnProtSelect",
           "TomoDrgnProtBackproject", "TomoDrgnProtGenerateVolumes"]
