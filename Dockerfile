# The rh_agents demo workload, as run by docker-compose.yml (service "demo").
#   docker build -t rh-agents-demo:local .
#   docker run --rm -p 127.0.0.1:9464:9464 rh-agents-demo:local
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the library (and its dependencies) from the source tree.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rh_agents ./rh_agents
RUN pip install . \
    && useradd --create-home --uid 10001 rh

# Run unprivileged, in a directory the demo may write its state to.
USER rh
WORKDIR /home/rh

# Traces go to Jaeger over OTLP/HTTP; override both for another collector or name.
ENV OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318 \
    OTEL_SERVICE_NAME=rh-agents-demo

# Prometheus metrics (OpenMetrics, with exemplars) on /metrics.
EXPOSE 9464

HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=3)"]

CMD ["python", "-m", "rh_agents.demo", "--serve", "--metrics-port", "9464", "--metrics-addr", "0.0.0.0"]
