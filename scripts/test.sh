#!/usr/bin/env bash
# Set up (first run only) and run every check: ruff, mypy and the whole pytest suite, which
# includes integration tests against the local PostgreSQL and Redis (started here if down).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-packages.sh dataset-fashion-mnist docker-compose chromium
scripts/setup.sh
scripts/services.sh
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
