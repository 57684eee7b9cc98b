#!/usr/bin/env bash
# Baseline vs BN from N(0, std) initialisations of growing std, on digits; reduced budget:
#   scripts/bad_init.sh model.init_std=0.1,1,3 seed=0,1 trainer.max_steps=400
# Details: conf/experiment/bad_init.yaml. Arguments are Hydra overrides; SWEEP_DIR picks the folder.
exec "$(dirname "$0")/run_experiment.sh" bad_init "$@"
