#!/usr/bin/env bash
# Serve TensorBoard on a sweep: every run appears under its directory name, i.e. its overrides.
#   scripts/serve_tensorboard.sh SWEEP_DIR [PORT]
# Listens on 127.0.0.1 (this machine only) at PORT (default 6006; 0 picks a free one). HOST=0.0.0.0
# shares it with the network; on a cluster, prefer `ssh -L 6006:localhost:6006 NODE`.
set -euo pipefail
if [[ $# -lt 1 || ! -d $1 ]]; then
  echo "usage: scripts/serve_tensorboard.sh SWEEP_DIR [PORT]  (SWEEP_DIR: a directory, got '${1:-}')" >&2
  exit 2
fi
exec tensorboard --logdir "$1" --host "${HOST:-127.0.0.1}" --port "${2:-6006}"
