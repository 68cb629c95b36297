# The operator image. Not built on the development machines (no container engine); linted by
# hadolint and checked against manifests/manager/deployment.yaml in tests/unit/test_dockerfile.py.

# --- build: install the package and its pinned dependencies into a virtualenv -------------------
FROM python:3.11.14-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/flag-scheduler
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Bytecode only for what the two workloads import: the image runs with PYTHONDONTWRITEBYTECODE and
# a read-only venv, so a module without it is compiled again at every start (kopf, both kubernetes
# clients, aiohttp, pydantic: 2.2 of the 3.6 CPU-s of the scheduler's imports, before its LIST). The
# client's API classes are imported when first named, so they are named here (CoreV1Api is 4.5 MB of
# source: 0.9 CPU-s of every start without its bytecode).
RUN /opt/flag-scheduler/bin/pip install --no-cache-dir . \
 && /opt/flag-scheduler/bin/pip uninstall --yes pip \
 && find /opt/flag-scheduler -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/flag-scheduler/bin/python -c 'import flag_scheduler.scheduling.handlers, flag_scheduler.serving.flag_server; \
from kubernetes.aio.client import AdmissionregistrationV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi'

# --- runtime: the virtualenv only; no compilers, no pip cache, no source tree ------------------
FROM python:3.11.14-slim-trixie
LABEL org.opencontainers.image.title="flag-scheduler" \
      org.opencontainers.image.description="Kubernetes operator that changes feature flags at scheduled times, exactly once."
ENV PATH=/opt/flag-scheduler/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/flag-scheduler /opt/flag-scheduler
# Numeric, so Kubernetes can verify runAsNonRoot; the same UID/GID as the Deployment.
USER 10001:10001
# health (/healthz: liveness; /readyz on the flag server), ready (the scheduler's /readyz), metrics
# (/metrics); flagd sync (gRPC) and OFREP (HTTP) on the flag server (`flag-scheduler serve`) only
EXPOSE 8080 8081 9090 8015 8016
ENTRYPOINT ["flag-scheduler"]
