#!/usr/bin/env bash
# Usage: scripts/build-images.sh
# Build the service's images from the Dockerfile: the API's (target api, no torch), the worker's (target worker)
# and the torch-free ONNX worker's (target worker-onnx), which docker-compose.yml runs. Settings, from the
# environment:
#   API_IMAGE          name of the API image          (imgcls-api:latest)
#   WORKER_IMAGE       name of the worker image       (imgcls-worker:latest)
#   WORKER_ONNX_IMAGE  name of the ONNX worker image  (imgcls-worker-onnx:latest)
#   BASE_IMAGE         the Python 3.11 image they start from (python:3.11-slim-bookworm; e.g. a private mirror's)
#   PIP_CA             a CA bundle pip must trust, behind a TLS-inspecting proxy: a build secret, in no layer
set -euo pipefail
cd "$(dirname "$0")/.."
API_IMAGE=${API_IMAGE:-imgcls-api:latest}
WORKER_IMAGE=${WORKER_IMAGE:-imgcls-worker:latest}
WORKER_ONNX_IMAGE=${WORKER_ONNX_IMAGE:-imgcls-worker-onnx:latest}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}

# The Dockerfile's secret mount needs BuildKit: a docker client with its buildx plugin, else Debian docker.io's
# own 20.10 client, which has BuildKit built in (a newer client on PATH without buildx cannot build with it).
if docker buildx version >/dev/null 2>&1; then
  build=(docker buildx build --load)
elif [ -x /usr/bin/docker ]; then
  build=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
else
  build=(env DOCKER_BUILDKIT=1 docker build)
fi
secret=()
if [ -n "${PIP_CA:-}" ]; then secret=(--secret "id=pip_ca,src=$PIP_CA"); fi

declare -A images=([api]=$API_IMAGE [worker]=$WORKER_IMAGE [worker-onnx]=$WORKER_ONNX_IMAGE)
for target in api worker worker-onnx; do
  "${build[@]}" --progress=plain --build-arg "BASE_IMAGE=$BASE_IMAGE" "${secret[@]}" --target "$target" \
    -t "${images[$target]}" .
done
