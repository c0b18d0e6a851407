"""Control-plane tests: the ModelDeployment spec, its validation and its rendering.

Covered: parsing camelCase manifests (single and multi-document YAML) and round-tripping
them; parse errors rewritten to name the node and field (with did-you-mean); every
validation rule, table-driven, each with its message; tensor-signature checks on every
kind of edge; the CRD-friendliness of the models' JSON schema; ``render_graph`` into the
runtime's ``NodeConfig`` for a Weighted router, a Combiner and a transformer chain; and
``write_model_repository`` producing a repository the runtime's own reader reads back
with the spec's overrides applied; ``fetch_model`` fetching http(s):// archives from a
local HTTP server (and refusing path traversal), s3:// and gs:// prefixes and archives from
moto's S3 server and the GCS emulator on 127.0.0.1, and ``servegraph run`` serving both.

Left out: Kubernetes objects (Deployments, Services, ConfigMaps, the CRD itself) and the
kopf handlers, which come with the operator issue; serving the rendered graph, which the
runtime's graph tests and ``servegraph run`` cover; real AWS and GCP buckets (no cloud
access here; the stand-ins speak the same wire protocol to the same client libraries).
"""
