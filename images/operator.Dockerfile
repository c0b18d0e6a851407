# The servegraph operator: the control plane only (kopf, kubernetes, pydantic, PyYAML). The
# package goes in with --no-deps and its dependencies from the `operator-image` dependency
# group of pyproject.toml, so the image has no numpy, grpc, aiohttp, tritonclient or
# onnxruntime (the import contracts keep the operator's code from needing them).
#
#   docker build -f images/operator.Dockerfile -t ghcr.io/servegraph/operator:0.1.0 .
#
# Build context: the repository root. Not built in this project's CI (no Docker engine there).

# --- build: the servegraph wheel ---
FROM python:3.12.8-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- run ---
FROM python:3.12.8-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
COPY --from=build /wheels /wheels
COPY pyproject.toml /tmp/servegraph/pyproject.toml
# `pip install --group` needs pip 25.1 or newer.
RUN pip install --no-cache-dir pip==25.3 \
    && pip install --no-cache-dir --no-deps /wheels/servegraph-*.whl \
    && pip install --no-cache-dir --group /tmp/servegraph/pyproject.toml:operator-image \
    && rm -rf /wheels /tmp/servegraph
USER 65532:65532
WORKDIR /tmp
# kopf's liveness endpoint, the operator's metrics.
EXPOSE 8080 9090
ENTRYPOINT ["servegraph"]
CMD ["operator", "--all-namespaces", "--liveness-port", "8080", "--metrics-port", "9090"]
