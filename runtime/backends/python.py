"""The python backend: ``model.py`` holding a user class with ``load()`` and ``predict()``.

The class is the one named in the config parameter ``class_name``, else the only class in
the file that defines ``predict``. Before ``load()`` runs it gets two attributes:
``model_dir`` (the version directory) and ``config`` (the model's ModelConfig).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np

from servegraph.runtime.config import ModelConfig, TensorConfig


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
        unload = getattr(self._model, "unload", None)
        if callable(unload):
            unload()


def _model_file(config: ModelConfig, version_dir: Path) -> Path:
    return version_dir / (config.default_model_filename or "model.py")


def _user_class(config: ModelConfig, path: Path) -> type:
    if not path.is_file():
        raise FileNotFoundError(f"python backend needs {path.name} in {path.parent}")
    # A unique module name per file, so two versions of one model never share a module.
    module_name = f"servegraph_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    wanted = config.parameters.get("class_name")
    if wanted:
        cls = getattr(module, wanted, None)
        if not inspect.isclass(cls):
            raise AttributeError(f"{path.name} has no class {wanted!r}")
        return cls
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and obj.__module__ == module_name and callable(getattr(obj, "predict", None))
    ]
    if len(candidates) != 1:
        names = [c.__name__ for c in candidates]
        raise AttributeError(
            f"{path.name} must define exactly one class with predict() (found {names}); "
            "or name it with the parameter class_name"
        )
    return candidates[0]


def load(config: ModelConfig, version_dir: Path) -> PythonModel:
    cls = _user_class(config, _model_file(config, version_dir))
    user_model = cls()
    user_model.model_dir = version_dir
    user_model.config = config
    loader = getattr(user_model, "load", None)
    if callable(loader):
        loader()
    return PythonModel(user_model)


def signature(
    config: ModelConfig, version_dir: Path
) -> tuple[list[TensorConfig], list[TensorConfig]] | None:
    """Python models declare their signature in the config only."""
    return None
