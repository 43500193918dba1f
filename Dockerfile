# nibble: the API (app.main:app) under uvicorn.  Build: docker build -t nibble .
# Run:   docker run --rm -p 8000:8000 nibble      (settings: -e NIBBLE_API_KEYS=..., see README)
# BASE_IMAGE: another CPython 3.11 image with pip (`python`/`pip` on PATH) where Docker Hub cannot be reached.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/nibble

# The same pinned runtime install as `make run` (pyproject.toml pins every dependency exactly);
# the dev extras (pytest, torch, ...) are not installed in the image.
COPY pyproject.toml README.md ./
COPY quant_core ./quant_core
COPY app ./app
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /srv/nibble --shell /usr/sbin/nologin nibble \
    && mkdir -p /tmp/nibble && chown nibble /tmp/nibble

USER nibble
ENV NIBBLE_TEMP_DIR=/tmp/nibble
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"

# On SIGTERM, in-flight requests get up to 25 s to finish.  Docker's stop timeout is 10 s by default:
# stop with `docker stop -t 30` (compose: stop_grace_period: 30s) to give them the whole grace period.
# The connection limits are SECURITY.md's ("Connections"), the same as `make run` and `nibble serve`.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "25", "--loop", "app.connections:GuardedEventLoop", "--limit-concurrency", "256", "--timeout-keep-alive", "5", "--backlog", "256"]
