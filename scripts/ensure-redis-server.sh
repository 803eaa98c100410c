#!/usr/bin/env bash
# Make sure a redis-server binary exists: install Debian's package when we are root, else say what to install.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server missing: installing Debian's redis-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package may start a system-wide server; the service runs its own private one instead.
  if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
  command -v redis-server >/dev/null 2>&1 && exit 0
fi
echo "redis-server not found: install Debian's redis-server package (apt-get install redis-server)" >&2
exit 1
