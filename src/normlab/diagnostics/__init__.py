"""Training diagnostics: callbacks that measure what happens inside a run, for any LightningModule
and any logger. ``TrainingDiagnostics`` bundles the first four."""

from normlab.diagnostics.activations import ActivationStatistics
from normlab.diagnostics.divergence_monitor import DivergenceMonitor
from normlab.diagnostics.landscape import LandscapeProbes
from normlab.diagnostics.parameter_health import ParameterHealth
from normlab.diagnostics.run_summary import RunSummaryWriter
from normlab.diagnostics.training_diagnostics import TrainingDiagnostics

__all__ = [
    "ActivationStatistics",
    "DivergenceMonitor",
    "LandscapeProbes",
    "ParameterHealth",
    "RunSummaryWriter",
    "TrainingDiagnostics",
]
