# The servegraph runtime, GPU: as images/runtime.Dockerfile, with onnxruntime-gpu (CUDA
# execution provider) on NVIDIA's CUDA 12 + cuDNN 9 runtime base, which onnxruntime-gpu 1.20+
# is built against. Model nodes that ask for `gpu` run this image.
#
#   docker build -f images/runtime-gpu.Dockerfile -t ghcr.io/servegraph/runtime-gpu:0.1.0 .
#
# Build context: the repository root. Not built in this project's CI (no Docker engine there).

# --- build: the servegraph wheel (pure Python, so any 3.12 builds it) ---
FROM python:3.12.8-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- run: Ubuntu 24.04's Python 3.12 in a virtualenv ---
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY --from=build /wheels /wheels
# onnx-gpu, never onnx: both provide the `onnxruntime` module.
RUN pip install --no-cache-dir "$(ls /wheels/servegraph-*.whl)[onnx-gpu,s3,gcs]" \
    && rm -rf /wheels
# The examples, so a relative storageUri (examples/graphs/, written for `servegraph run`)
# also serves in a cluster: the operator resolves those here.
COPY examples/graphs /opt/servegraph/examples/graphs
USER 65532:65532
WORKDIR /tmp
EXPOSE 8000 8001 8002
ENTRYPOINT ["servegraph"]
CMD ["serve", "--model-repository", "/models", "--host", "0.0.0.0"]
