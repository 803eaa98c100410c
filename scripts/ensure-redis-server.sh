#!/usr/bin/env bash
# Make sure a redis-server binary exists (Debian's package when we are root).
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
"$(dirname "$0")/ensure-debian-package.sh" redis-server redis-server
# The package may start a system-wide server; the service runs its own private one instead.
if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
