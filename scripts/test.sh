#!/usr/bin/env bash
# Set up (first run only) and run every check: ruff, mypy and the whole pytest suite, which
# includes integration tests against the local PostgreSQL and Redis (started here if down).
# On a fresh Debian it first installs what the tests use (see system-packages.sh) and sets up
# PostgreSQL's role and database for them (see services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-packages.sh dataset-fashion-mnist docker-compose chromium postgresql redis-server g++
scripts/setup.sh
scripts/services.sh
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
