#!/usr/bin/env bash
# Make sure KEDA's schemas are here for tests/repo/test_kubernetes.py: the npm package @kubernetes-models/keda
# (ScaledObject, TriggerAuthentication ... with .validate(), generated from KEDA's API), in .node/ (git-ignored).
# Quick when that version is already installed.
set -euo pipefail
VERSION=2.0.0  # KEDA 2.19's API
DIR="$(cd "$(dirname "$0")/.." && pwd)/.node"
if grep -qs "\"version\": \"$VERSION\"" "$DIR/node_modules/@kubernetes-models/keda/package.json"; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "node and npm not found: install Node.js 20 or later (its npm installs @kubernetes-models/keda)" >&2
  exit 1
fi
# The package asks for Node.js 22 and runs on 20 (the tests run it there): npm's engine warning is left out.
npm install --prefix "$DIR" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
  "@kubernetes-models/keda@$VERSION"
