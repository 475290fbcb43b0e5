# syntax=docker/dockerfile:1
# broadcast: WHIP/WHEP live broadcast server. Build: docker build -t broadcast:0.1.0 .
# Every runtime dependency (aiortc, av, cryptography, uvloop...) ships manylinux wheels, so
# neither stage needs apt or a compiler.
#
# Base image: python 3.11.14 on Debian 12 (bookworm), slim. The digest is the one published
# for this tag as recorded in several public pinned builds; it could not be checked against
# the registry from the machine this was written on (no registry access). Refresh both
# together: docker buildx imagetools inspect python:3.11.14-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# README.md is the package's readme (hatchling reads it); player/ goes into the wheel.
COPY pyproject.toml README.md ./
COPY broadcast/ broadcast/
COPY player/ player/
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="broadcast" \
      org.opencontainers.image.description="Low-latency WHIP/WHEP live broadcast server: one publisher, many viewers, RTP forwarding" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
# A fixed uid/gid, so Kubernetes' runAsNonRoot can check it and volumes can be chowned.
RUN groupadd --system --gid 10001 broadcast \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin broadcast
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BROADCAST_UDP_PORT=8189
# 8080: HTTP (WHIP, WHEP, /metrics). 8189/udp: media for worker 0; worker i uses
# BROADCAST_UDP_PORT + i, so publish 8189..8189+BROADCAST_WORKERS-1/udp.
# Workers' private HTTP ports (8081...) are for other nodes of the cluster only.
EXPOSE 8080/tcp
EXPOSE 8189/udp
USER 10001:10001
WORKDIR /tmp
# /healthz is liveness only (never depends on Redis); curl is not in the slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
# Exec form: the server is PID 1 and gets SIGTERM itself (first one drains, second exits).
ENTRYPOINT ["broadcast"]
CMD ["serve", "--host", "0.0.0.0"]
