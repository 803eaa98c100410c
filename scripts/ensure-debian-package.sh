#!/usr/bin/env bash
# Usage: scripts/ensure-debian-package.sh PROGRAM PACKAGE
# Make sure PROGRAM (a command name or an absolute path) exists: install Debian's PACKAGE when we
# are root and it is missing, else say what to install and fail (tests need it; they never skip).
set -euo pipefail
program=$1 package=$2
present() { if [[ $program == /* ]]; then [ -x "$program" ]; else command -v "$program" >/dev/null 2>&1; fi; }
present && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "$program missing: installing Debian's $package package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  present && exit 0
fi
echo "$program not found: install Debian's $package package (apt-get install $package)" >&2
exit 1
