"""Control-plane tests: the ModelDeployment spec, its validation and its rendering.

Covered: parsing camelCase manifests (single and multi-document YAML) and round-tripping
them; parse errors rewritten to name the node and field (with did-you-mean); every
validation rule, table-driven, each with its message; tensor-signature checks on every
kind of edge; the CRD-friendliness of the models' JSON schema; ``render_graph`` into the
runtime's ``NodeConfig`` for a Weighted router, a Combiner and a transformer chain; the
generated CRD and spec reference (test_crd.py, with apiserver.py standing in for the API
server's schema, list-map and CEL checks).

Left out: serving the rendered graph, which the runtime's graph tests and tests/local cover.
"""
