"""The Combiner role: fan out to every child at once and merge their outputs.

``combine()`` is the merge, pure numpy, one output tensor at a time (every output of the
first child that answered; the other children must return it too):

- Mean, WeightedMean: element-wise (weights renormalised over the children that answered).
  Floating outputs keep their datatype; integer outputs are averaged as FP64.
- Max: element-wise maximum, in the outputs' common datatype.
- Concat: along ``concat_axis`` (>= 1: the batch axis 0 never), in the children's order.
- MajorityVote, per row:
  * integer, BOOL and BYTES outputs are labels: each element is the value most children
    returned;
  * floating outputs are scores over classes on the last axis: each child votes for its
    argmax, and the output is the winning class index as INT64 with the last axis of size
    1 (``[n, k]`` scores become ``[n, 1]`` labels).
  Ties go to the smallest value (class index), as scikit-learn's hard voting does.

With ``on_child_failure: Fail`` the first failure fails the request (the error names the
child) and the other calls are cancelled. With ``Skip`` every child gets until the deadline,
and the request is answered when at least ``quorum`` children did; the response parameter
``servegraph.skipped`` lists the children left out. ``servegraph.route`` lists the children
whose answers were merged, joined with "+".
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np

from servegraph.runtime.graph.client import ChildAnswer
from servegraph.runtime.graph.config import CombinerSettings, NodeConfig, TensorSignature
from servegraph.runtime.graph.node import GraphNode, Signature
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol import parameters as params
from servegraph.runtime.protocol.datatypes import v2_datatype
from servegraph.runtime.protocol.errors import (
    ChildBusy,
    ChildCallError,
    ChildFailed,
    ModelError,
    ServegraphError,
)
from servegraph.runtime.protocol.types import InferRequest, InferResponse

METHODS = ("Mean", "WeightedMean", "MajorityVote", "Concat", "Max")


def combine(
    method: str,
    outputs_by_child: Mapping[str, Mapping[str, np.ndarray]],
    weights: Mapping[str, float] | None = None,
    concat_axis: int = 1,
) -> dict[str, np.ndarray]:
    """Merge the children's outputs (children in call order); ValueError names what does not fit."""
    if method not in METHODS:
        raise ValueError(f"unknown combine method {method!r}; expected one of {', '.join(METHODS)}")
    children = list(outputs_by_child)
    if not children:
        raise ValueError("no child answered")
    first = children[0]
    merged: dict[str, np.ndarray] = {}
    for name in outputs_by_child[first]:
        arrays = []
        for child in children:
            array = outputs_by_child[child].get(name)
            if array is None:
                raise ValueError(f"child '{child}' did not return output '{name}', which child '{first}' did")
            arrays.append(np.asarray(array))
        merged[name] = _combine_one(method, name, children, arrays, weights or {}, concat_axis)
    return merged


def _combine_one(
    method: str,
    name: str,
    children: list[str],
    arrays: list[np.ndarray],
    weights: Mapping[str, float],
    concat_axis: int,
) -> np.ndarray:
    if method == "Concat":
        return _concat(name, children, arrays, concat_axis)
    shapes = {child: list(a.shape) for child, a in zip(children, arrays)}
    if len({tuple(s) for s in shapes.values()}) > 1:
        raise ValueError(f"output '{name}' has different shapes across children: {shapes}")
    if method == "MajorityVote":
        return _vote(arrays)
    if any(a.dtype.kind in "OSU" for a in arrays):
        raise ValueError(f"output '{name}' holds BYTES, and {method} needs numbers")
    stacked = np.stack(arrays)
    if method == "Max":
        largest: np.ndarray = stacked.max(axis=0)
        return largest
    if method == "Mean":
        w = np.ones(len(arrays))
    else:
        missing = [c for c in children if c not in weights]
        if missing:
            raise ValueError(f"WeightedMean has no weight for {missing}")
        w = np.array([weights[c] for c in children], dtype=np.float64)
        if w.sum() <= 0:
            raise ValueError(f"WeightedMean weights of {children} add up to {w.sum()}")
    mean = np.tensordot(w / w.sum(), stacked.astype(np.float64), axes=1)
    floating = all(a.dtype.kind == "f" for a in arrays)
    return mean.astype(np.result_type(*arrays) if floating else np.float64)


def _concat(name: str, children: list[str], arrays: list[np.ndarray], axis: int) -> np.ndarray:
    for child, array in zip(children, arrays):
        if not 1 <= axis < array.ndim:
            raise ValueError(
                f"output '{name}' of child '{child}' has shape {list(array.shape)}: no axis {axis} to concatenate on"
            )
    dtypes = {child: str(a.dtype) for child, a in zip(children, arrays)}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"output '{name}' has different datatypes across children: {dtypes}")
    try:
        return np.concatenate(arrays, axis=axis)
    except ValueError as exc:
        shapes = {child: list(a.shape) for child, a in zip(children, arrays)}
        raise ValueError(f"output '{name}' cannot be concatenated on axis {axis}: shapes {shapes}") from exc


def _vote(arrays: list[np.ndarray]) -> np.ndarray:
    """The most common value per element across children; ties to the smallest."""
    if arrays[0].dtype.kind == "f":
        if arrays[0].ndim < 1 or arrays[0].shape[-1] == 0:
            raise ValueError("MajorityVote over scores needs a class axis")
        labels = np.stack([a.argmax(axis=-1) for a in arrays]).astype(np.int64)
        return _most_common(labels)[..., None]
    return _most_common(np.stack(arrays))


def _most_common(stacked: np.ndarray) -> np.ndarray:
    values = np.unique(stacked)  # sorted: the first maximum below is the smallest value
    counts = np.stack([(stacked == v).sum(axis=0) for v in values])
    return np.asarray(values[counts.argmax(axis=0)], dtype=stacked.dtype).reshape(stacked.shape[1:])


class CombinerNode(GraphNode):
    role = "combiner"

    def __init__(self, config: NodeConfig, metrics: ServerMetrics, **options: Any) -> None:
        super().__init__(config, metrics, **options)
        if config.combiner is None:
            raise ValueError(f"node '{config.node}' is a combiner without combiner settings")
        self.settings: CombinerSettings = config.combiner
        s = self.settings
        if s.method == "WeightedMean":
            missing = [c for c in self.children if c not in s.weights]
            unknown = sorted(set(s.weights) - set(self.children))
            if missing or unknown:
                raise ValueError(
                    f"combiner '{self.node}' (WeightedMean) needs a weight for each child {self.children}; "
                    f"missing {missing}, unknown {unknown}"
                )
            if any(w < 0 for w in s.weights.values()) or sum(s.weights.values()) <= 0:
                raise ValueError(f"combiner '{self.node}' has weights {s.weights}: they must be >= 0 and add up to more than 0")
        if s.on_child_failure == "Skip" and s.quorum > len(self.children):
            raise ValueError(
                f"combiner '{self.node}' has quorum {s.quorum} but only {len(self.children)} children"
            )
        self.skipped = dict.fromkeys(self.children, 0)
        self.short_of_quorum = 0

    async def _infer(self, request: InferRequest) -> InferResponse:
        tasks = {
            child: asyncio.get_running_loop().create_task(self.call(child, request)) for child in self.children
        }
        try:
            if self.settings.on_child_failure == "Fail":
                answers, failures = await self._all_or_first_failure(tasks)
            else:
                answers, failures = await self._all_that_answer(tasks)
        finally:
            pending = [t for t in tasks.values() if not t.done()]
            for task in pending:
                task.cancel()
            # Retrieve every outcome, so no failure is left "never retrieved" in the log.
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        try:
            outputs = combine(
                self.settings.method,
                {child: answer.outputs for child, answer in answers.items()},
                self.settings.weights,
                self.settings.concat_axis,
            )
        except ValueError as exc:
            raise ModelError(f"node '{self.node}' cannot combine its children's outputs: {exc}") from None
        datatypes = {name: v2_datatype(array.dtype) for name, array in outputs.items()}
        route = "+".join(params.join_route(c, a.parameters.get(params.ROUTE)) for c, a in answers.items())
        parameters = {params.ROUTE: route}
        if failures:
            parameters[params.SKIPPED] = ",".join(failures)
        first = next(iter(answers.values()))
        return self.response(request, outputs, datatypes, request_id=request.id or first.id, parameters=parameters)

    async def _all_or_first_failure(
        self, tasks: dict[str, asyncio.Task[ChildAnswer]]
    ) -> tuple[dict[str, ChildAnswer], dict[str, ServegraphError]]:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks.values():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return {child: task.result() for child, task in tasks.items()}, {}

    async def _all_that_answer(
        self, tasks: dict[str, asyncio.Task[ChildAnswer]]
    ) -> tuple[dict[str, ChildAnswer], dict[str, ServegraphError]]:
        await asyncio.wait(tasks.values())
        answers: dict[str, ChildAnswer] = {}
        failures: dict[str, ServegraphError] = {}
        for child, task in tasks.items():
            error = task.exception()
            if error is None:
                answers[child] = task.result()
            elif isinstance(error, ServegraphError):
                failures[child] = error
            else:
                raise error
        for child in failures:
            self.skipped[child] += 1
        quorum = self.settings.quorum
        if len(answers) < quorum:
            self.short_of_quorum += 1
            first_child, first = next(iter(failures.items()))
            message = (
                f"node '{self.node}' got answers from {len(answers)} of {len(tasks)} children, fewer than "
                f"its quorum of {quorum}: " + "; ".join(e.message for e in failures.values())
            )
            if isinstance(first, ChildBusy):  # backpressure keeps its retry hint
                raise ChildBusy(message, first.retry_after, child=first_child)
            kind: type[ChildCallError] = type(first) if isinstance(first, ChildCallError) else ChildFailed
            raise kind(message, child=first_child)
        return answers, failures

    def derive_outputs(self, outputs: Signature) -> Signature:
        """The merged outputs' signature from one child's: what each method does to it."""
        method, axis = self.settings.method, self.settings.concat_axis
        derived = []
        for t in outputs:
            datatype, shape = t.datatype, list(t.shape)
            floating = datatype in ("FP16", "FP32", "FP64", "BF16")
            if method == "MajorityVote" and floating:
                datatype, shape = "INT64", shape[:-1] + [1]
            elif method == "Concat" and 1 <= axis < len(shape):
                shape[axis] = -1
            elif method in ("Mean", "WeightedMean") and not floating:
                datatype = "FP64"
            derived.append(TensorSignature(name=t.name, datatype=datatype, shape=shape))
        return derived

    def role_extras(self) -> dict[str, Any]:
        s = self.settings
        return {
            "method": s.method,
            "on_child_failure": s.on_child_failure,
            "quorum": s.quorum if s.on_child_failure == "Skip" else len(self.children),
            "skipped": self.skipped,
            "short_of_quorum": self.short_of_quorum,
        }
