#!/usr/bin/env bash
# Regenerate docs/tensorboard.png, the README quickstart's picture of TensorBoard: train the
# baseline and the batch-normalized MLP briefly, serve both runs, capture the page headless.
#   scripts/tensorboard_screenshot.sh [STEPS]     (default 300; needs chromium or google-chrome)
# Runs from the repository root with the project's environment active (normlab-train, tensorboard).
set -euo pipefail
steps=${1:-300}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n $browser ]] || { echo "tensorboard_screenshot.sh: no chromium or google-chrome on PATH" >&2; exit 2; }
logdir=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$logdir"' EXIT

for model in baseline_mlp bn_mlp; do
  normlab-train "model=$model" "trainer.max_steps=$steps" ~callbacks.progress trainer.enable_progress_bar=false \
    "hydra.run.dir=$logdir/$model" >/dev/null
done

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tensorboard --logdir "$logdir" --host 127.0.0.1 --port "$port" >"$logdir/tensorboard.log" 2>&1 &
server=$!
for _ in $(seq 120); do  # until it answers
  curl -fs "http://127.0.0.1:$port/data/runs" >/dev/null 2>&1 && break
  sleep 0.5
done

# The Scalars tab, filtered to the quickstart's metrics; the virtual time lets the charts draw.
# (The Time Series tab draws its charts with WebGL, which a headless browser leaves blank.)
url="http://127.0.0.1:$port/#scalars&tagFilter=train%2Floss%7Cval%2Facc%24%7Cgrad_norm%2Fglobal"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,900 \
  --virtual-time-budget=20000 --screenshot="$logdir/full.png" "$url" >/dev/null 2>&1

# A palette PNG: a screenshot of flat colours keeps its look in a fraction of the bytes.
python - "$logdir/full.png" docs/tensorboard.png <<'PY'
import sys
from PIL import Image

Image.open(sys.argv[1]).convert("RGB").quantize(colors=64).save(sys.argv[2], optimize=True)
PY
echo "wrote docs/tensorboard.png ($(du -k docs/tensorboard.png | cut -f1) KiB)"
