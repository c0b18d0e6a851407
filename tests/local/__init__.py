"""The local target: ``servegraph run`` and what it writes and fetches.

Covered: ``write_model_repository`` producing a repository the runtime's own reader reads
back with the spec's overrides applied; ``fetch_model`` fetching http(s):// archives from a
local HTTP server (and refusing path traversal), s3:// and gs:// prefixes and archives from
moto's S3 server and the GCS emulator on 127.0.0.1; and ``servegraph run`` serving them.
``servegraph run`` healing (test_runner.py): a killed node restarted with doubling backoff
while the graph serves, a model whose load raises failing the start at once, user errors
as one message and exit 1, nodes dying with a SIGKILLed runner and its folder cleaned.

Left out: real AWS and GCP buckets (no cloud access here; the stand-ins speak the same wire
protocol to the same client libraries).
"""
