#!/usr/bin/env bash
# Installs the machine-level tools Governor's local stack and tests use, when they are missing:
# redis-server (the Redis of the local stack), promtool (Prometheus rule checks),
# docker-compose (offline validation of docker-compose.yml) and openssl (the secured-broker
# test makes its CA with it). Java 17 and Maven must be present.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v openssl >/dev/null || need+=(openssl)
# the console's browser tests (tests/integration/console) drive it headless
command -v chromium >/dev/null || need+=(chromium)

for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is required (Java 17+ and Maven)" >&2; exit 1; }
done

if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${need[*]}"
  # Debian starts services on install; the local stack runs its own, so keep them stopped
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ -z "$created_policy" ] || $sudo rm -f /usr/sbin/policy-rc.d
fi
echo "setup: redis-server $(redis-server --version | awk '{print $3}'), $(promtool --version 2>&1 | head -1)"
