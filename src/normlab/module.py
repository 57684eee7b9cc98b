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

    Logged: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``,
    ``test/loss``, ``test/acc``.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        num_classes: int,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = instantiate(net)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, acc) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        acc.update(logits.detach(), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

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
