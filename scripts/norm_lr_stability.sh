#!/usr/bin/env bash
# Details and the reduced budget: conf/experiment/norm_lr_stability.yaml. Arguments are Hydra overrides;
# SWEEP_DIR picks the folder. The report (with its figure) is written beside the runs.
exec "$(dirname "$0")/run_experiment.sh" norm_lr_stability "$@"
