"""The python backend: ``model.py`` holding a user class with ``load()`` and ``predict()``,
or a Triton python model (``TritonPythonModel`` with ``initialize``/``execute``/``finalize``).

The class is the one named in the config parameter ``class_name``, else the only class in
the file that defines ``predict`` (or ``execute``). Before ``load()`` runs it gets two
attributes: ``model_dir`` (the version directory) and ``config`` (the model's ModelConfig).
A Triton model gets Triton's ``initialize(args)`` instead (see ``triton_compat``).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from servegraph.runtime.backends import triton_compat
from servegraph.runtime.backends.user_code import import_user_class, release_user_class
from servegraph.runtime.config import ModelConfig, TensorConfig
from servegraph.runtime.triton_config import to_json


class PythonModel:
    """Adapter from the user's class to the backend protocol."""

    def __init__(self, user_model: Any) -> None:
        self._model = user_model

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._model.predict(inputs)
        if not isinstance(outputs, dict):
            raise TypeError(
                f"predict() must return a dict of output name to array, got {type(outputs).__name__}"
            )
        return outputs

    def unload(self) -> None:
        try:
            unload = getattr(self._model, "unload", None)
            if callable(unload):
                unload()
        finally:
            release_user_class(type(self._model))


def _model_file(config: ModelConfig, version_dir: Path) -> Path:
    return version_dir / (config.default_model_filename or "model.py")


def _user_class(config: ModelConfig, path: Path) -> type:
    if not path.is_file():
        raise FileNotFoundError(f"python backend needs {path.name} in {path.parent}")
    triton_compat.install()  # Triton model files import triton_python_backend_utils at the top
    return import_user_class(
        path, config.parameters.get("class_name", ""), ("predict",), "servegraph_user_model", fallback=("execute",)
    )


_instances: defaultdict[str, itertools.count[int]] = defaultdict(itertools.count)
"""Per model: numbers Triton models' instances as Triton does (``add_sub_0``, ``add_sub_1``)."""


def load(config: ModelConfig, version_dir: Path) -> PythonModel | triton_compat.TritonModel:
    cls = _user_class(config, _model_file(config, version_dir))
    try:
        if triton_compat.is_triton_model(cls):
            triton_model = cls()
            initialize = getattr(triton_model, "initialize", None)
            if callable(initialize):
                initialize(triton_compat.initialize_args(to_json(config), version_dir, next(_instances[config.name])))
            return triton_compat.TritonModel(triton_model, [t.name for t in config.output])
        user_model = cls()
        user_model.model_dir = version_dir
        user_model.config = config
        loader = getattr(user_model, "load", None)
        if callable(loader):
            loader()
        return PythonModel(user_model)
    except BaseException:
        release_user_class(cls)
        raise


def signature(
    config: ModelConfig, version_dir: Path
) -> tuple[list[TensorConfig], list[TensorConfig]] | None:
    """Python models declare their signature in the config; a Triton model may instead
    declare it in ``auto_complete_config``."""
    cls = _user_class(config, _model_file(config, version_dir))
    try:
        auto_complete = getattr(cls, "auto_complete_config", None)
        if not triton_compat.is_triton_model(cls) or not callable(auto_complete):
            return None
        editor = triton_compat.ModelConfigEditor(to_json(config))
        auto_complete(editor)
        completed = editor.as_dict()
    finally:
        release_user_class(cls)
    inputs = [TensorConfig.model_validate(t) for t in completed.get("input", [])]
    outputs = [TensorConfig.model_validate(t) for t in completed.get("output", [])]
    return inputs, outputs
