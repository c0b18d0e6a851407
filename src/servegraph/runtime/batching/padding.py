"""Merging requests into one batch and splitting the answers back (pure functions).

Padding to shape buckets happens here and is undone here, so it never reaches a caller.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from servegraph.runtime.config import ShapeBuckets
from servegraph.runtime.protocol.errors import InvalidInput, ModelError


def padded_shape(
    name: str, shape: tuple[int, ...], buckets: ShapeBuckets | None, model: str
) -> tuple[int, ...]:
    """The shape of one request's input after padding its variable axes to their buckets."""
    if buckets is None or name not in buckets.dims:
        return shape
    padded = list(shape)
    for axis, sizes in buckets.dims[name].items():
        if axis >= len(shape):
            continue
        i = bisect.bisect_left(sizes, shape[axis])
        if i == len(sizes):
            raise InvalidInput(
                f"input '{name}' for model '{model}' has size {shape[axis]} on axis {axis}, "
                f"larger than the largest shape bucket {sizes[-1]}"
            )
        padded[axis] = sizes[i]
    return tuple(padded)


def merge(
    items: Sequence[dict[str, np.ndarray]],
    batch_rows: int,
    item_shapes: dict[str, tuple[int, ...]],
    pad_value: float = 0.0,
) -> dict[str, np.ndarray]:
    """Stack items along axis 0 into ``batch_rows`` rows, padding rows and variable axes.

    ``item_shapes`` holds each input's padded non-batch shape (all items agree on it).
    One allocation per input; a single unpadded item is passed through without a copy.
    """
    rows = sum(next(iter(item.values())).shape[0] for item in items) if items else 0
    merged: dict[str, np.ndarray] = {}
    for name, inner in item_shapes.items():
        first = items[0][name]
        if len(items) == 1 and rows == batch_rows and first.shape[1:] == inner:
            merged[name] = first
            continue
        if rows == batch_rows and all(item[name].shape[1:] == inner for item in items):
            merged[name] = np.concatenate([item[name] for item in items], axis=0)
            continue
        fill = b"" if first.dtype == np.object_ else pad_value
        out = np.full((batch_rows, *inner), fill, dtype=first.dtype)
        offset = 0
        for item in items:
            array = item[name]
            n = array.shape[0]
            out[(slice(offset, offset + n), *(slice(0, d) for d in array.shape[1:]))] = array
            offset += n
        merged[name] = out
    return merged


def split(
    outputs: dict[str, np.ndarray],
    rows: Sequence[int],
    batch_rows: int,
    model: str,
    unpad: Sequence[dict[str, tuple[tuple[int, int], ...]]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Cut a batch's outputs back into one dict per item (views, no copies).

    Every output must have ``batch_rows`` rows: anything else would mis-assign rows to
    callers, so it fails the whole batch. ``unpad[i][output]`` lists (axis, size) pairs to
    cut item i's padded axes back to its own sizes.
    """
    for name, array in outputs.items():
        if not isinstance(array, np.ndarray):
            raise ModelError(f"model '{model}' returned a {type(array).__name__} for output '{name}', expected a numpy array")
        if array.ndim == 0 or array.shape[0] != batch_rows:
            got = array.shape[0] if array.ndim else "a scalar"
            raise ModelError(
                f"model '{model}' returned {got} rows for output '{name}' "
                f"but was given a batch of {batch_rows}"
            )
    results: list[dict[str, np.ndarray]] = []
    offset = 0
    for i, n in enumerate(rows):
        item = {name: array[offset : offset + n] for name, array in outputs.items()}
        if unpad is not None:
            for name, cuts in unpad[i].items():
                if name in item:
                    index: list[slice] = [slice(None)] * item[name].ndim
                    for axis, size in cuts:
                        if axis < len(index):
                            index[axis] = slice(0, size)
                    item[name] = item[name][tuple(index)]
        results.append(item)
        offset += n
    return results
