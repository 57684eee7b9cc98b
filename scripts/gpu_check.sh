#!/usr/bin/env bash
# On a machine with CUDA: train bn_mlp and bn_cnn with TrainingDiagnostics on the GPU and print the
# step-time overhead at cadence 50 (the default) and 1 (every step), relative to no diagnostics,
# plus the peak GPU memory of each arm. Installs nothing beyond `pip install -e .` when normlab is
# not importable. Exits non-zero when CUDA is missing, training fails or the default cadence costs
# more than 1.05x.   Usage: bash scripts/gpu_check.sh [steps per arm, default 400]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-400}"
python -c "import normlab" 2>/dev/null || pip install -q -e .
PYTHONPATH="scripts${PYTHONPATH:+:$PYTHONPATH}" python - "$STEPS" <<'PY'
import sys, tempfile, time, warnings
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pathlib import Path
from normlab.config import register_schemas
from random_data import RandomDataModule  # scripts/random_data.py
from normlab.diagnostics import TrainingDiagnostics
from normlab.classifier import Classifier

warnings.filterwarnings("ignore")
if not torch.cuda.is_available():
    print("gpu_check: FAIL: no CUDA device"); sys.exit(1)
steps, warmup = int(sys.argv[1]), 60
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {steps} timed steps per arm")
register_schemas()

class Clock(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == warmup:
            torch.cuda.synchronize(); self.start = time.perf_counter()
    def on_train_end(self, trainer, *args):
        torch.cuda.synchronize(); self.seconds = (time.perf_counter() - self.start) / (trainer.global_step - warmup)

def step_ms(net: dict, every: int | None) -> tuple[float, float]:
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    module = Classifier(net=net, num_classes=10, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01})
    data = RandomDataModule(batch_size=128, num_samples=128 * 20)
    clock = Clock()
    callbacks = [clock] + ([TrainingDiagnostics(log_every_n_steps=every, dense_until_step=0)] if every else [])
    with tempfile.TemporaryDirectory() as tmp:
        L.Trainer(max_steps=warmup + steps, accelerator="cuda", devices=1, callbacks=callbacks,
                  logger=L.pytorch.loggers.TensorBoardLogger(tmp, name="", version=""), limit_val_batches=0,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  ).fit(module, datamodule=data)
    return clock.seconds * 1000, torch.cuda.max_memory_allocated() / 2**20

failed = False
with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base=None):
    for model in ("bn_mlp", "bn_cnn"):
        cfg = compose("train", overrides=[f"model={model}", "data=mnist"])
        net = OmegaConf.to_container(cfg.model, resolve=True)
        base, base_mem = step_ms(net, None)
        r50, m50 = step_ms(net, 50)
        r1, m1 = step_ms(net, 1)
        print(f"{model}: {base:.3f} ms/step without diagnostics; overhead @50 {r50 / base:.3f}x, @1 {r1 / base:.3f}x; "
              f"peak GPU memory {base_mem:.0f} / {m50:.0f} / {m1:.0f} MiB (none / @50 / @1)")
        if r50 / base > 1.05:
            print(f"gpu_check: FAIL: {model} default cadence costs {r50 / base:.3f}x (> 1.05x)"); failed = True
print("gpu_check: FAIL" if failed else "gpu_check: OK")
sys.exit(1 if failed else 0)
PY
