"""The example graphs in examples/graphs, served by `servegraph run`'s engine (one real
process per node on 127.0.0.1) and called through the entrypoint with tritonclient;
answers are checked against computing the same graph by hand in numpy.

Left out: Kubernetes (no cluster here) and timing.
"""
