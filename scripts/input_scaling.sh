#!/usr/bin/env bash
# Raw vs normalised vs standardised inputs, baseline vs BN, on the synthetic data; reduced budget:
#   scripts/input_scaling.sh seed=0,1 trainer.max_steps=400
# Details: conf/experiment/input_scaling.yaml. Arguments are Hydra overrides; SWEEP_DIR picks the folder.
exec "$(dirname "$0")/run_experiment.sh" input_scaling "$@"
