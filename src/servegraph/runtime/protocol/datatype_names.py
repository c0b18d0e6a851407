"""The Open Inference Protocol's datatype names, as plain data (no numpy).

The config schema validates against these, and the operator's image, which has no numpy,
imports the config schema; ``protocol.datatypes`` pairs each name with its numpy dtype.
"""

from __future__ import annotations

DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
"""Every v2 datatype servegraph serves (BF16 has no numpy dtype and is refused)."""
