"""The LightningModule: a classifier around any network, optimizer and LR scheduler from config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy


class Classifier(L.LightningModule):
    """Cross-entropy classification with accuracy per stage.

    The network, optimizer and scheduler arrive as Hydra configs (``_target_`` mappings), so a
    checkpoint carries everything needed to rebuild the model: ``Classifier.load_from_checkpoint``.

    Args:
        net: config of an ``nn.Module`` mapping inputs to ``num_classes`` logits.
        num_classes: number of classes.
        optimizer: config of a partial optimizer (``_partial_: true``), called with the parameters.
        scheduler: ``None``, or a Lightning LR-scheduler dict whose ``scheduler`` entry is a partial
            scheduler config (called with the optimizer), e.g. ``{scheduler: ..., interval: step}``.
        log_every_n_steps: ``train/loss`` goes to the loggers and the progress bar on every
            optimizer step that is a multiple of this (step 0 included); the training config ties
            it to ``trainer.log_every_n_steps``.

    Logged: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``,
    ``test/loss``, ``test/acc``.
    """

    PENDING_BATCHES = 50  # training batches whose predictions wait for one train_acc update

    def __init__(
        self,
        net: Mapping[str, Any],
        num_classes: int,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        log_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # the entry point writes hparams with real metrics
        self.net: nn.Module = instantiate(net)
        # Inputs are checked by cross_entropy already; the metrics' own checks cost more than a step.
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(3)
        )
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume
        self.train_acc.persistent(True)  # a checkpoint saved after validation resumes the epoch's accuracy
        self._pending: list[tuple[Tensor, Tensor]] = []  # training (predictions, targets) not yet in train_acc
        self._own_call = False  # whether the next training_step is the batch's own (see on_train_batch_start)

    def transfer_batch_to_device(self, batch: tuple[Tensor, Tensor], device: torch.device, dataloader_idx: int) -> Any:
        # Batches are (inputs, targets) pairs: move both directly instead of walking the batch
        # as an arbitrary collection, which a small network would notice in its step time.
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, acc: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        if stage == "train":
            self._pending.append((logits.detach().argmax(dim=1), y))
            if len(self._pending) == self.PENDING_BATCHES:
                self._update_train_acc()
            if self._own_call and self.trainer.global_step % self.hparams.log_every_n_steps == 0:
                self._log_train_loss(loss)
            self._own_call = False
        else:
            acc.update(logits.detach(), y)
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
            self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True)
        return loss

    def _log_train_loss(self, loss: Tensor) -> None:
        # Written through the loggers' public API on this module's own cadence: a `self.log` call
        # costs about as much as a small network's whole step, too much to pay on every step.
        value = loss.detach().item()
        self.log("train/loss", value, prog_bar=True, logger=False)
        for logger in self.loggers:
            logger.log_metrics({"train/loss": value}, step=self.trainer.global_step)

    def _update_train_acc(self) -> None:
        # One metric update for the batches since the last one: the metric's per-call bookkeeping
        # costs a small network a tenth of its step time when paid every step.
        if self._pending:
            preds, targets = zip(*self._pending, strict=True)
            self.train_acc.update(torch.cat(preds), torch.cat(targets))
            self._pending.clear()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Callbacks (the landscape probes) may call training_step again within a batch: only the
        # batch's own call logs.
        self._own_call = True

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def on_validation_start(self) -> None:
        self._update_train_acc()  # checkpoints are written after validation

    def on_train_epoch_end(self) -> None:
        # Logged once an epoch rather than as a Metric object every step: passing a Metric to
        # self.log moves it between devices on each call, which costs more than the step itself.
        self._update_train_acc()
        self.log("train/acc", self.train_acc.compute())
        self.train_acc.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best.update(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        lr_scheduler = dict(self.hparams.scheduler)
        lr_scheduler["scheduler"] = instantiate(lr_scheduler["scheduler"])(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    @torch.no_grad()
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.net(batch[0]).argmax(dim=1)
