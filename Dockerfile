# webhook-dispatcher: the daemon in a container. Build and run (see README.md, "Container"):
#   docker build -t webhook-dispatcher .
#   docker run --rm -e DISPATCHER_DATABASE_URL=postgresql://... webhook-dispatcher migrate
#   docker run -d -e DISPATCHER_DATABASE_URL=postgresql://... -p 127.0.0.1:9464:9464 webhook-dispatcher
# The entry point is `dispatcher`, its default command `run`: the image runs `dispatcher run`.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
# --build-arg EXTRAS=otel adds OpenTelemetry tracing (docs/operations.md, "Tracing").
ARG EXTRAS=""
RUN python -m venv /opt/webhook-dispatcher \
    && /opt/webhook-dispatcher/bin/pip install --no-cache-dir --disable-pip-version-check \
        ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
RUN groupadd --system --gid 10001 dispatcher \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dispatcher
COPY --from=build /opt/webhook-dispatcher /opt/webhook-dispatcher
ENV PATH=/opt/webhook-dispatcher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DISPATCHER_METRICS_ADDRESS=0.0.0.0:9464 \
    DISPATCHER_LOG_FORMAT=json
USER 10001:10001
EXPOSE 9464
# /readyz: 200 once the pool is open, the schema current and LISTEN established; 503 otherwise.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('DISPATCHER_METRICS_ADDRESS', ':9464').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]
# SIGTERM (docker stop) drains in-flight attempts for DISPATCHER_SHUTDOWN_GRACE seconds (25 by
# default): give `docker stop -t` / stop_grace_period more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dispatcher"]
CMD ["run"]
