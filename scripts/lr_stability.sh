#!/usr/bin/env bash
# Baseline vs BN over a learning-rate grid with 3 seeds on digits; reduced budget:
#   scripts/lr_stability.sh optimizer.lr=0.03,0.3,3,30 seed=0,1 trainer.max_steps=300
# Details: conf/experiment/lr_stability.yaml. Arguments are Hydra overrides; SWEEP_DIR picks the folder.
exec "$(dirname "$0")/run_experiment.sh" lr_stability "$@"
