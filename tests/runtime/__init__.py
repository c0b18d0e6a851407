"""Runtime tests: real servers on 127.0.0.1, called with tritonclient (HTTP, gRPC, sync, aio).

Covered: every v2 endpoint, JSON and binary tensors, BYTES, batching, padding, version
policies and hot pickup, queue bounds, deadlines, every error class, SIGTERM drain,
metrics. Left out: the CUDA execution provider (no GPU on CI) and timing, which the
benchmark in bench/ measures.
"""
