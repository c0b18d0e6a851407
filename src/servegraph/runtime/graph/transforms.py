"""Transform steps: built once from the config's TransformSteps, applied to every request.

- StandardScaler: ``(x - mean) / scale``; MinMaxScaler: ``(x - min) / (max - min)`` mapped
  onto ``feature_range`` (a constant feature, max == min, maps to the range's low end, as
  in scikit-learn). Parameters are per feature on the tensor's last axis (one value
  broadcasts), inline or from ``params_file``. Floating tensors keep their datatype;
  integer tensors named explicitly become FP32.
- OutlierDetector (``outlier.py``) and DriftDetector (``drift.py``).
- Python: a user class from ``file`` (``class_name``, else the only class there with a
  transform method) with ``transform_input(dict) -> dict`` and/or
  ``transform_output(dict) -> dict`` over name -> numpy array; it runs in a worker thread,
  so slow user code never blocks the event loop. Arrays it is given may be read-only.

A step that cannot be built raises ValueError at start, naming the node and the step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from servegraph.runtime.backends.user_code import import_user_class
from servegraph.runtime.graph.batch import TensorBatch, selected
from servegraph.runtime.graph.config import TransformStep
from servegraph.runtime.graph.datafiles import load_params, load_reference
from servegraph.runtime.graph.drift import DriftDetector
from servegraph.runtime.graph.metrics import GraphMetrics
from servegraph.runtime.graph.outlier import OutlierDetector
from servegraph.runtime.protocol.datatypes import v2_datatype
from servegraph.runtime.protocol.errors import InvalidInput, ModelError, ServegraphError


class Step(Protocol):
    kind: str
    label: str
    blocking: bool
    """Run in a worker thread (user code), rather than on the event loop (fast numpy)."""

    def apply(self, batch: TensorBatch) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class AffineScaler:
    """``y = (x - shift) * factor + offset`` per feature: both scalers are this."""

    blocking = False

    def __init__(
        self, kind: str, label: str, tensors: Sequence[str], shift: np.ndarray, factor: np.ndarray, offset: float
    ) -> None:
        self.kind = kind
        self.label = label
        self.tensors = list(tensors)
        self.shift = shift
        self.factor = factor
        self.offset = offset
        self.rows = 0

    def apply(self, batch: TensorBatch) -> None:
        for name in selected(batch, self.tensors, self.label):
            x = batch.arrays[name]
            width = self.shift.shape[0]
            if width > 1 and (x.ndim == 0 or x.shape[-1] != width):
                raise InvalidInput(
                    f"{self.label}: tensor '{name}' has shape {list(x.shape)}, but the step scales "
                    f"{width} features on the last axis"
                )
            dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
            try:
                scaled = (np.asarray(x, dtype=np.float64) - self.shift) * self.factor + self.offset
            except (TypeError, ValueError):
                raise InvalidInput(f"{self.label} needs numbers in tensor '{name}'") from None
            batch.arrays[name] = scaled.astype(dtype)
            batch.datatypes[name] = v2_datatype(dtype)
            self.rows += x.shape[0] if x.ndim else 1

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.label, "rows": self.rows}


def _vector(step: TransformStep, params: dict[str, np.ndarray], key: str, label: str) -> np.ndarray:
    inline = getattr(step, key)
    value = np.asarray(inline, dtype=np.float64) if inline is not None else params.get(key)
    if value is None:
        raise ValueError(f"{label} needs '{key}' (inline, or in params_file)")
    return np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)


def _scaler(step: TransformStep, label: str, resolve: Callable[[str], Path]) -> AffineScaler:
    params = load_params(resolve(step.params_file)) if step.params_file else {}
    if step.kind == "StandardScaler":
        mean, scale = _vector(step, params, "mean", label), _vector(step, params, "scale", label)
        if mean.shape != scale.shape:
            raise ValueError(f"{label} has {mean.size} means but {scale.size} scales")
        if np.any(scale == 0):
            raise ValueError(f"{label} has a scale of 0 (features {np.flatnonzero(scale == 0).tolist()})")
        return AffineScaler(step.kind, label, step.tensors, mean, 1.0 / scale, 0.0)
    low, high = _vector(step, params, "min", label), _vector(step, params, "max", label)
    if low.shape != high.shape:
        raise ValueError(f"{label} has {low.size} minimums but {high.size} maximums")
    if np.any(high < low):
        raise ValueError(f"{label} has a max below its min")
    lo, hi = step.feature_range
    span = np.where(high > low, high - low, 1.0)
    return AffineScaler(step.kind, label, step.tensors, low, (hi - lo) / span, lo)


class PythonStep:
    """A user's transform class (see the module docstring)."""

    kind = "Python"
    blocking = True

    def __init__(self, label: str, path: Path, class_name: str, stage: str) -> None:
        self.label = label
        self.rows = 0
        cls = _user_class(path, class_name, label)
        method_name = "transform_input" if stage == "input" else "transform_output"
        instance = cls()
        method = getattr(instance, method_name, None)
        if not callable(method):
            raise ValueError(f"{label}: class {cls.__name__} in {path} has no {method_name}() for the {stage} stage")
        self._method: Callable[[dict[str, np.ndarray]], Any] = method

    def apply(self, batch: TensorBatch) -> None:
        try:
            result = self._method(dict(batch.arrays))
        except ServegraphError:
            raise
        except Exception as exc:
            raise ModelError(f"{self.label} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, dict):
            raise ModelError(f"{self.label} must return a dict of name -> array, got {type(result).__name__}")
        arrays: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for name, value in result.items():
            array = np.asarray(value)
            try:
                datatypes[str(name)] = v2_datatype(array.dtype)
            except InvalidInput as exc:
                raise ModelError(f"{self.label} returned '{name}' as {exc.message}") from None
            arrays[str(name)] = array
        batch.arrays, batch.datatypes = arrays, datatypes
        first = next(iter(arrays.values()), None)
        self.rows += first.shape[0] if first is not None and first.ndim else 1

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.label, "rows": self.rows}


def _user_class(path: Path, class_name: str, label: str) -> type:
    try:
        return import_user_class(
            path, class_name, ("transform_input", "transform_output"), "servegraph_user_transform"
        )
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


def build_steps(
    node: str,
    stage: str,
    steps: Sequence[TransformStep],
    resolve: Callable[[str], Path],
    metrics: GraphMetrics,
) -> list[Step]:
    """The steps of one stage ("input" or "output"), in order."""
    built: list[Step] = []
    for index, step in enumerate(steps, start=1):
        label = f"{stage} step {index} ({step.kind}) of node '{node}'"
        try:
            built.append(_build_one(node, stage, step, label, resolve, metrics))
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if label in message else f"{label}: {message}") from exc
    return built


def _build_one(
    node: str, stage: str, step: TransformStep, label: str, resolve: Callable[[str], Path], metrics: GraphMetrics
) -> Step:
    match step.kind:
        case "StandardScaler" | "MinMaxScaler":
            return _scaler(step, label, resolve)
        case "OutlierDetector":
            reference = load_reference(resolve(step.reference_file)) if step.reference_file else None
            return OutlierDetector(
                label, node, step.tensors, step.method, step.threshold, metrics,
                reference=reference, mean=step.mean, scale=step.scale,
            )  # fmt: skip
        case "DriftDetector":
            if not step.reference_file:
                raise ValueError("DriftDetector needs reference_file")
            return DriftDetector(
                label, node, step.tensors, load_reference(resolve(step.reference_file)),
                step.window, step.p_value_threshold, metrics,
            )  # fmt: skip
        case "Python":
            if not step.file:
                raise ValueError("a Python step needs 'file'")
            return PythonStep(label, resolve(step.file), step.class_name, stage)
    raise ValueError(f"unknown step kind {step.kind!r}")


async def run_steps(steps: Sequence[Step], batch: TensorBatch) -> None:
    for step in steps:
        if step.blocking:
            await asyncio.to_thread(step.apply, batch)
        else:
            step.apply(batch)
