#!/usr/bin/env bash
# Ioffe & Szegedy's Figure 1 on MNIST (data/mnist); reduced budget on the offline digits:
#   scripts/ioffe2015_mnist.sh data=digits trainer.max_steps=2000
# Details: conf/experiment/ioffe2015_mnist.yaml. Arguments are Hydra overrides; SWEEP_DIR picks the folder.
exec "$(dirname "$0")/run_experiment.sh" ioffe2015_mnist "$@"
