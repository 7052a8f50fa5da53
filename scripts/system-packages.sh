#!/usr/bin/env bash
# Install the Debian packages named as arguments, only those not installed yet (noninteractive,
# with sudo when not root). scripts/test.sh names what the tests need: the real Fashion-MNIST
# files, docker-compose (to validate docker-compose.yml without a Docker engine), chromium (the
# dashboard tests), PostgreSQL and Redis (the integration tests) and g++ (the fused kernel).
set -euo pipefail
missing=()
for package in "$@"; do
  # `dpkg -s` also succeeds for a removed package whose configuration files remain: ask for
  # "installed" itself.
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
