#!/usr/bin/env bash
# Run an experiment's sweep (conf/experiment/NAME.yaml), then write its report.
#   scripts/run_experiment.sh NAME [OVERRIDE ...]
# Overrides go to normlab-train, e.g. the reduced budget in the experiment's header. The sweep
# lands in $SWEEP_DIR (default outputs/sweeps/NAME/<time>); the report is SWEEP_DIR/report.md.
set -euo pipefail
name=${1:?usage: scripts/run_experiment.sh NAME [OVERRIDE ...]}
shift
sweep=${SWEEP_DIR:-outputs/sweeps/$name/$(date +%Y-%m-%d_%H-%M-%S)}
normlab-train experiment="$name" hydra.sweep.dir="$sweep" "$@"
normlab-report "$sweep"
