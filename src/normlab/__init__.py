"""normlab: a Lightning + Hydra template with training-stability diagnostics.

Subpackages: ``models`` (MLP, CNN), ``data`` (in-memory datamodules), ``diagnostics`` (callbacks
that stream layer statistics to TensorBoard), ``report`` (sweep reports); modules ``module``
(the Classifier LightningModule), ``config`` (schemas), ``train`` and ``evaluate`` (entry points).
"""

__version__ = "0.1.0"
