"""Protocol-neutral types, datatype tables, errors and the REST/gRPC codecs (no I/O)."""
