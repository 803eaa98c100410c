#!/usr/bin/env bash
# Usage: scripts/ensure-debian-package.sh PROGRAM PACKAGE [PROGRAM PACKAGE ...]
# Make sure each PROGRAM exists: a command name, or an absolute path (a glob pattern without
# spaces is allowed: present when a file matches). When some are missing and we are root, install
# Debian's PACKAGEs for them with one apt-get update and one apt-get install; else say what to
# install and fail (tests need them; they never skip).
set -euo pipefail
if [ $# -lt 2 ] || [ $(($# % 2)) -ne 0 ]; then
  echo "usage: $0 PROGRAM PACKAGE [PROGRAM PACKAGE ...]" >&2
  exit 2
fi

present() {
  if [[ $1 == /* ]]; then
    local match
    for match in $1; do [ -e "$match" ] && return 0; done  # unquoted: the pattern expands
    return 1
  fi
  command -v "$1" >/dev/null 2>&1
}

# The PROGRAM PACKAGE pairs whose PROGRAM is not there, as the two lists missing and packages.
check() {
  missing=() packages=()
  local pairs=("$@") i
  for ((i = 0; i < ${#pairs[@]}; i += 2)); do
    present "${pairs[i]}" || { missing+=("${pairs[i]}"); packages+=("${pairs[i + 1]}"); }
  done
}

check "$@"
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  for i in "${!missing[@]}"; do
    echo "${missing[i]} missing: installing Debian's ${packages[i]} package" >&2
  done
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  check "$@"
  [ ${#missing[@]} -eq 0 ] && exit 0
fi
for i in "${!missing[@]}"; do
  echo "${missing[i]} not found: install Debian's ${packages[i]} package (apt-get install ${packages[i]})" >&2
done
[ ${#missing[@]} -eq 1 ] || echo "all at once: apt-get install ${packages[*]}" >&2
exit 1
