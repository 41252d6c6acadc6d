# smtp-tls-exporter: build a virtualenv with the package in one stage, run it from a slim one.
#   docker build -t smtp-tls-exporter .
#   docker run -p 9465:9465 -v "$PWD/config.yml:/etc/smtp-tls-exporter/config.yml:ro" smtp-tls-exporter
# The HEALTHCHECK asks port 9465: keep it when changing --web.listen-address.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/smtp-tls-exporter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# The uvloop extra: the service's event loop when installed, less CPU per probe.
RUN /opt/smtp-tls-exporter/bin/pip install --no-cache-dir '.[uvloop]'

FROM python:3.11-slim
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin exporter
COPY --from=builder /opt/smtp-tls-exporter /opt/smtp-tls-exporter
COPY config.example.yml /etc/smtp-tls-exporter/config.yml
ENV PATH=/opt/smtp-tls-exporter/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9465
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9465/-/healthy', timeout=4)"]
ENTRYPOINT ["smtp-tls-exporter"]
CMD ["--config.file=/etc/smtp-tls-exporter/config.yml"]
