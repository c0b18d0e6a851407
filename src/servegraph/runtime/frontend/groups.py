"""Alike requests that reach a worker in one event-loop turn cross the link as one request.

With front-end workers the model process does, per request, what a one-process server does
minus the wire: a link message, a task, the data plane, the batcher's queue entry, stats and
an answer. On a GPU node that per-request walk fills the model process's one core long
before the GPU is busy (about 10k requests/s measured on an H200 node). So a worker sends
the requests of one loop turn that only differ in their rows (same model and version, same
inputs with the same dtypes and inner shapes, same requested outputs, no parameters that
reach the model process) as one request of their rows concatenated, and splits the answer.
The model process then walks once per group; its batcher still forms the batches, and its
statistics still count each request (``InferRequest.requests``).

A group is only ever an optimisation: the model process takes one only for a model whose
batcher merges rows and only up to the rows it allows (``Servable.group_rows``); it answers
``REGROUP`` for anything else, and for any failure of a group, so that every caller gets the
verdict their own request earns, and the worker then sends the members one by one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from servegraph.runtime.protocol.types import InferRequest

GroupKey = Hashable

_FIXED_SIZE_KINDS = frozenset("biufc")
_ENCODING_ONLY = frozenset(("binary_data_output",))
"""Request parameters only the worker's REST encoder reads (so alike requests may differ in none else)."""
_PLAIN = (bool, int, float, str)


def group_key(request: InferRequest) -> tuple[GroupKey, int] | None:
    """What requests must share to travel as one, and this one's rows; None when it must
    travel alone (a deadline of its own, parameters the model process reads, tensors that are
    not fixed-size arrays with a batch dimension). Headers are not compared: a worker whose
    model process reads them (a graph node's) does not group at all."""
    if request.deadline is not None:
        return None
    if request.parameters and not _ENCODING_ONLY.issuperset(request.parameters):
        return None
    if any(request.input_parameters.values()):
        return None
    rows = -1
    inputs = []
    for name, array in request.inputs.items():
        if array.ndim == 0 or array.dtype.kind not in _FIXED_SIZE_KINDS:
            return None
        if rows < 0:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            return None
        inputs.append((name, array.dtype.str, array.shape[1:], request.datatypes.get(name)))
    if rows < 1:
        return None
    outputs: tuple[Hashable, ...] | None = None
    if request.outputs is not None:
        wanted = []
        for output in request.outputs:
            params = output.parameters
            if params and not all(isinstance(v, _PLAIN) for v in params.values()):
                return None
            wanted.append((output.name, output.binary, tuple(sorted(params.items())) if params else ()))
        outputs = tuple(wanted)
    key = (request.model_name, request.model_version, tuple(inputs), outputs, request.binary_output_default)
    return key, rows


def merge(requests: Sequence[InferRequest]) -> dict[str, np.ndarray]:
    """The members' inputs, their rows concatenated in order (members share a ``group_key``)."""
    return {name: np.concatenate([r.inputs[name] for r in requests]) for name in requests[0].inputs}


def split(outputs: dict[str, np.ndarray], counts: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Each member's rows of a group's outputs, as views, in the members' order."""
    total = sum(counts)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(f"output '{name}' has shape {list(array.shape)}, not {total} rows for the group")
    shares: list[dict[str, np.ndarray]] = []
    start = 0
    for count in counts:
        end = start + count
        shares.append({name: array[start:end] for name, array in outputs.items()})
        start = end
    return shares
