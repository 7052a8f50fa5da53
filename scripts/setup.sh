#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv and install the project into it.
# Re-running is cheap: pip runs again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  # A fresh Debian may lack python3, and has no `venv` module for its python3 without
  # python3-venv (ensurepip lives there); a python of its own (pyenv, python.org) has both.
  if ! command -v "$python" >/dev/null; then
    scripts/system-packages.sh python3 python3-venv
  elif ! "$python" -c "import ensurepip" 2>/dev/null; then
    scripts/system-packages.sh python3-venv
  fi
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

stamp=.venv/.tsla-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the project and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" >"$stamp"
fi
