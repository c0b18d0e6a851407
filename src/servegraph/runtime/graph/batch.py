"""The tensors that flow through a transformer's steps, and how a step picks its own.

``annotations`` are tensors a step adds to the final response without sending them on to
the child (an input-stage OutlierDetector's scores and flags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from servegraph.runtime.protocol.errors import InvalidInput

FLOAT_DATATYPES = ("FP16", "FP32", "FP64")


@dataclass(slots=True)
class TensorBatch:
    arrays: dict[str, np.ndarray]
    datatypes: dict[str, str]
    annotations: dict[str, np.ndarray] = field(default_factory=dict)
    annotation_types: dict[str, str] = field(default_factory=dict)

    def annotate(self, name: str, array: np.ndarray, datatype: str) -> None:
        self.annotations[name] = array
        self.annotation_types[name] = datatype


def selected(batch: TensorBatch, names: Sequence[str], label: str) -> list[str]:
    """The tensors a step works on: those it names, else every floating-point one."""
    if names:
        missing = [n for n in names if n not in batch.arrays]
        if missing:
            raise InvalidInput(f"{label} needs tensor(s) {missing}; it was given {sorted(batch.arrays)}")
        return list(names)
    found = [n for n, t in batch.datatypes.items() if t in FLOAT_DATATYPES]
    if not found:
        raise InvalidInput(f"{label} found no floating-point tensor among {sorted(batch.arrays)}")
    return found


def feature_rows(batch: TensorBatch, names: Sequence[str], label: str) -> np.ndarray:
    """The named tensors as one float64 matrix: a row per batch item, their features side by side."""
    parts = []
    rows = None
    for name in names:
        array = batch.arrays[name]
        if array.ndim == 0:
            raise InvalidInput(f"{label} needs a batch axis on tensor '{name}', got a scalar")
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidInput(f"{label}: tensors {list(names)} disagree on the batch size")
        try:
            parts.append(np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1))
        except (TypeError, ValueError):
            raise InvalidInput(f"{label} needs numbers in tensor '{name}' ({batch.datatypes[name]})") from None
    return parts[0] if len(parts) == 1 else np.hstack(parts)


def feature_names(batch: TensorBatch, names: Sequence[str]) -> list[str]:
    """``TENSOR[i]`` for every column of ``feature_rows``."""
    out: list[str] = []
    for name in names:
        array = batch.arrays[name]
        width = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
        out.extend(f"{name}[{i}]" for i in range(width))
    return out
