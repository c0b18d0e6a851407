"""What a backend is, and how one is found by name.

A backend module exposes ``load(config, version_dir) -> LoadedModel``. Adding a backend is
adding one module and one line to ``BACKEND_MODULES``; modules are imported lazily so a
server without onnxruntime still serves python models.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from servegraph.runtime.config import ModelConfig, TensorConfig

BACKEND_MODULES: dict[str, str] = {
    "python": "servegraph.runtime.backends.python",
    "onnxruntime": "servegraph.runtime.backends.onnx",
}

PLATFORMS: dict[str, str] = {"python": "python", "onnxruntime": "onnxruntime_onnx"}
"""The ``platform`` string model metadata reports, as Triton names it."""


class LoadedModel(Protocol):
    """One instance of a model version, ready to run batches (called from worker threads)."""

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def unload(self) -> None: ...


class BackendModule(Protocol):
    def load(self, config: ModelConfig, version_dir: Path) -> LoadedModel: ...

    def signature(
        self, config: ModelConfig, version_dir: Path
    ) -> tuple[list[TensorConfig], list[TensorConfig]] | None: ...


def backend_module(name: str) -> BackendModule:
    """The module implementing backend ``name`` (ValueError for an unknown one)."""
    try:
        module_name = BACKEND_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_MODULES)}") from None
    return importlib.import_module(module_name)
