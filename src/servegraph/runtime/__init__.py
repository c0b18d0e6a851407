"""The data plane: an Open Inference Protocol (KServe v2) server with dynamic batching.

Layers, each importing only the ones below it (import-linter's "Runtime layers" contract
in pyproject.toml, run by ``make test``): protocol (types, codecs, errors; no I/O)
<- config, triton_config, stats, metrics <- batching, backends, storage <- model, servable
<- repository, graph <- dataplane <- servers (rest, grpc) <- server <- cli.
"""
