"""The data plane: an Open Inference Protocol (KServe v2) server with dynamic batching.

Layers, each importing only the ones below it (enforced by import-linter):
protocol (types, codecs, errors; no I/O) <- config <- batching, backends <- model
<- repository <- dataplane <- servers (rest, grpc) <- server <- cli.
"""
