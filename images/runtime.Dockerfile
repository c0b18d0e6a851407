# The servegraph runtime, CPU: the Open Inference Protocol server and graph nodes (router,
# combiner, transformer), with onnxruntime and the s3:// and gs:// fetchers.
#
#   docker build -f images/runtime.Dockerfile -t ghcr.io/servegraph/runtime:0.1.0 .
#
# Build context: the repository root. Not built in this project's CI (no Docker engine there).

# --- build: the servegraph wheel only; its dependencies come as wheels from the index ---
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
RUN pip install --no-cache-dir "$(ls /wheels/servegraph-*.whl)[onnx,s3,gcs]" \
    && rm -rf /wheels
# The examples, so a ModelDeployment with a relative storageUri (as examples/graphs/ has,
# written for `servegraph run`) also serves in a cluster: the operator resolves those here.
COPY examples/graphs /opt/servegraph/examples/graphs
# A numeric non-root user, so "runAsNonRoot" can be verified by the kubelet (PSS restricted).
USER 65532:65532
WORKDIR /tmp
# http, grpc, metrics (Triton's ports).
EXPOSE 8000 8001 8002
ENTRYPOINT ["servegraph"]
CMD ["serve", "--model-repository", "/models", "--host", "0.0.0.0"]
