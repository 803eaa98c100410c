#!/usr/bin/env bash
# Make sure nginx exists (Debian's nginx-light when we are root), for PROXY=nginx and its tests.
set -euo pipefail
command -v nginx >/dev/null 2>&1 && exit 0
"$(dirname "$0")/ensure-debian-package.sh" nginx nginx-light
# The package starts a system-wide nginx on port 80; the service runs its own private one instead.
if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
