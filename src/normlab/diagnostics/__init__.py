"""Training diagnostics: callbacks that measure what happens inside a run."""

from normlab.diagnostics.callback import TrainingDiagnostics
from normlab.diagnostics.landscape import LandscapeProbes

__all__ = ["LandscapeProbes", "TrainingDiagnostics"]
