#!/usr/bin/env bash
# Set up (first run only) and run the main job end to end: the embedded service (SQLite, a
# filesystem broker, a real worker process), a TSLA job on the real `digits` data over HTTP,
# its metrics followed to the end, the checkpoint downloaded, verified and re-evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/tsla demo "$@"
