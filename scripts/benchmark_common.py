"""What the benchmarks share: the template's training loop stripped to what they time.

Imported by the ``benchmark_*.py`` scripts beside it (Python puts a script's own folder on the path).
"""

from __future__ import annotations

import tempfile

import lightning as L


def fit_bare(module: L.LightningModule, datamodule: L.LightningDataModule, steps: int, callbacks: list) -> None:
    """Train ``steps`` steps on the CPU: TensorBoard logging every 50 steps into a temporary folder,
    no validation, checkpoints, progress bar or model summary."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            logger=L.pytorch.loggers.TensorBoardLogger(tmp, name="", version=""),
            callbacks=callbacks,
            log_every_n_steps=50,
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=datamodule)
