#!/usr/bin/env bash
# Set up (first run only) and run the main job: TSLA on the real `digits` data set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=runs/demo-$(date +%Y%m%d-%H%M%S)
.venv/bin/tsla train --preset digits --method tsla --switch-epoch 6 --epochs 10 --seed 0 --out "$out"
echo "metrics: $out/metrics.jsonl   checkpoints: $out/checkpoints/"
