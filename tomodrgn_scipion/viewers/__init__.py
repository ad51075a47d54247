"""Scipion viewers ("Analyze Results") of every protocol of the plugin. Scipion finds them here."""
from .viewer_analyze import TomoDrgnAnalyzeViewer
from .viewer_maps import TomoDrgnBackprojectViewer, TomoDrgnGenerateViewer
from .viewer_particles import TomoDrgnParticlesViewer
from .viewer_train import TomoDrgnTrainNNViewer, TomoDrgnTrainVAEViewer

__all__ = ["TomoDrgnAnalyzeViewer", "TomoDrgnBackprojectViewer", "TomoDrgnGenerateViewer", "TomoDrgnParticlesViewer",
           "TomoDrgnTrainNNViewer", "TomoDrgnTrainVAEViewer"]
